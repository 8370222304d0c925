//! SHA-256 as PrexorCloud writes it everywhere (blob ids, certificate fingerprints, token
//! hashes): lower-case hex.

use sha2::{Digest, Sha256};

/// SHA-256 of `bytes`, lower-case hex (64 characters).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `s` has the shape of a SHA-256 in hex (64 hex digits).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_lower_case_hex_of_the_right_shape() {
        let empty = sha256_hex(b"");
        assert_eq!(
            empty,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(is_sha256_hex(&empty));
        assert!(is_sha256_hex(&empty.to_ascii_uppercase()));
        assert!(!is_sha256_hex(&empty[1..]));
        assert!(!is_sha256_hex(&"zz".repeat(32)));
    }
}
