//! SHA-256 as PrexorCloud writes it everywhere (blob ids, certificate fingerprints, token
//! hashes): lower-case hex.

use sha2::{Digest, Sha256};

/// `bytes` as lower-case hex, two characters each.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, lower-case hex (64 characters).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hash = StreamHash::default();
    hash.update(bytes);
    hash.finish()
}

/// SHA-256 of content that arrives in pieces (an upload, a blob read chunk by chunk), with its
/// length; [`StreamHash::finish`] gives the same hex as [`sha256_hex`] of the whole.
#[derive(Default, Clone)]
pub struct StreamHash {
    hash: Sha256,
    len: u64,
}

impl StreamHash {
    pub fn update(&mut self, piece: &[u8]) {
        self.hash.update(piece);
        self.len += piece.len() as u64;
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> String {
        hex(&self.hash.finalize())
    }
}

/// The inventory digest a daemon sends and a gateway recomputes from MongoDB (see
/// docs/daemon-protocol.md, "Reports"): SHA-256 over the sorted lines
/// `<instance> <plan hash> <state>` of the instances with a live process, one per line.
pub fn inventory_digest<'a>(live: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> String {
    let mut lines: Vec<String> = live
        .into_iter()
        .map(|(instance, plan, state)| format!("{instance} {plan} {state}\n"))
        .collect();
    lines.sort();
    sha256_hex(lines.concat().as_bytes())
}

/// Whether `s` has the shape of a SHA-256 in hex (64 hex digits).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// FNV-1a (64 bit) of `text`: a stable, fast, non-cryptographic hash, the same on every replica
/// and across restarts (spreading ports and work by name).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
    }

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

    #[test]
    fn the_inventory_digest_ignores_order_and_sees_every_field() {
        let a = inventory_digest([("g-1", "p1", "RUNNING"), ("g-2", "p2", "STARTING")]);
        let b = inventory_digest([("g-2", "p2", "STARTING"), ("g-1", "p1", "RUNNING")]);
        assert_eq!(a, b);
        assert_ne!(a, inventory_digest([("g-1", "p1", "RUNNING")]));
        assert_ne!(
            a,
            inventory_digest([("g-1", "p1", "RUNNING"), ("g-2", "p2", "RUNNING")])
        );
        assert_eq!(inventory_digest([]), sha256_hex(b""));
    }
}
