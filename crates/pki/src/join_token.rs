//! The join token format: `pxj1.<node id>.<secret>.<CA fingerprint>`, handed to an operator
//! once and redeemed by a daemon. Where tokens are stored (only as hashes) is the model crate's
//! `pki` module.

use prexor_domain::{hex, is_sha256_hex, sha256_hex};

const TOKEN_PREFIX: &str = "pxj1";

/// A join token that is not of the form `pxj1.<node id>.<secret>.<CA fingerprint>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the join token is malformed (expected pxj1.<node id>.<secret>.<CA fingerprint>)")]
pub struct MalformedJoinToken;

/// A join token as handed to an operator: `pxj1.<node id>.<secret>.<CA fingerprint>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub node_id: String,
    secret: String,
    pub ca_fingerprint: String,
}

impl JoinToken {
    pub fn parse(token: &str) -> Result<JoinToken, MalformedJoinToken> {
        let parts: Vec<&str> = token.trim().split('.').collect();
        match parts.as_slice() {
            [prefix, node, secret, fingerprint]
                if *prefix == TOKEN_PREFIX
                    && !node.is_empty()
                    && is_sha256_hex(secret)
                    && is_sha256_hex(fingerprint) =>
            {
                Ok(JoinToken {
                    node_id: node.to_string(),
                    secret: secret.to_string(),
                    ca_fingerprint: fingerprint.to_ascii_lowercase(),
                })
            }
            _ => Err(MalformedJoinToken),
        }
    }

    /// A fresh token for `node_id` in the cluster whose CA has `ca_fingerprint`.
    pub fn generate(node_id: &str, ca_fingerprint: &str) -> JoinToken {
        JoinToken {
            node_id: node_id.to_owned(),
            secret: hex(&rand::random::<[u8; 32]>()),
            ca_fingerprint: ca_fingerprint.to_owned(),
        }
    }

    /// The key the token is stored under: only this hash of its secret is ever stored.
    pub fn hash(&self) -> String {
        // Join tokens are stored only as this hash.
        sha256_hex(self.secret.as_bytes())
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.node_id, self.secret, self.ca_fingerprint
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_back_and_reject_garbage() {
        let token = JoinToken {
            node_id: "node-1".into(),
            secret: "ab".repeat(32),
            ca_fingerprint: "cd".repeat(32),
        };
        assert_eq!(JoinToken::parse(&token.to_string()).unwrap(), token);
        for bad in [
            "",
            "pxj1.node-1",
            &format!("pxj2.node-1.{}.{}", "ab".repeat(32), "cd".repeat(32)),
            &format!("pxj1..{}.{}", "ab".repeat(32), "cd".repeat(32)),
            &format!("pxj1.node-1.{}.{}", "zz".repeat(32), "cd".repeat(32)),
        ] {
            assert!(
                matches!(JoinToken::parse(bad), Err(MalformedJoinToken)),
                "{bad}"
            );
        }
    }
}
