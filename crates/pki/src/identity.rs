//! Who a certificate speaks for, and reading that back from a peer's certificate.

use std::fmt;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{PkiError, fingerprint};

const NODE_URI: &str = "urn:prexor:node:";
const SERVICE_URI: &str = "urn:prexor:service:";

/// The identity a PrexorCloud certificate carries: a node (daemon, client certificate) or a
/// service replica (server and client certificate for internal gRPC and the daemon port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Node(String),
    Service { kind: String, replica: String },
}

impl Identity {
    /// The certificate's subject common name.
    pub fn common_name(&self) -> String {
        match self {
            Identity::Node(id) => id.clone(),
            Identity::Service { kind, replica } => format!("{kind}/{replica}"),
        }
    }

    /// The URI subject alternative name that marks the identity's kind.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{NODE_URI}{id}"),
            Identity::Service { kind, replica } => format!("{SERVICE_URI}{kind}:{replica}"),
        }
    }

    fn from_uri(uri: &str) -> Option<Identity> {
        if let Some(id) = uri.strip_prefix(NODE_URI) {
            return Some(Identity::Node(id.to_string()));
        }
        let rest = uri.strip_prefix(SERVICE_URI)?;
        let (kind, replica) = rest.split_once(':')?;
        Some(Identity::Service {
            kind: kind.to_string(),
            replica: replica.to_string(),
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Service { kind, replica } => write!(f, "{kind} replica {replica}"),
        }
    }
}

/// What a presented certificate says, read from its DER (the chain itself is verified by TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The PrexorCloud identity from the URI SAN; `None` for a certificate that is not ours.
    pub identity: Option<Identity>,
    pub common_name: Option<String>,
    /// Lower-case hex, no separators: the key of the revocation list.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
    pub not_before: i64,
    pub fingerprint: String,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<CertInfo, PkiError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| PkiError::BadCertificate(format!("not an X.509 certificate: {e}")))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let identity = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|name| match name {
                    GeneralName::URI(uri) => Identity::from_uri(uri),
                    _ => None,
                })
            });
        Ok(CertInfo {
            identity,
            common_name,
            serial: serial_hex(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
            not_before: cert.validity().not_before.timestamp(),
            fingerprint: fingerprint(der),
        })
    }
}

/// Serial numbers are compared as lower-case hex without leading zero bytes.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let trimmed: &[u8] = match raw.iter().position(|b| *b != 0) {
        Some(first) => &raw[first..],
        None => &[0],
    };
    prexor_domain::hex(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri() {
        for identity in [
            Identity::Node("node-1".into()),
            Identity::Service {
                kind: "gateway".into(),
                replica: "gateway-a1".into(),
            },
        ] {
            assert_eq!(Identity::from_uri(&identity.uri()), Some(identity));
        }
        assert_eq!(Identity::from_uri("urn:other:node:x"), None);
        assert_eq!(Identity::from_uri("urn:prexor:service:gateway"), None);
    }

    #[test]
    fn serials_drop_leading_zero_bytes() {
        assert_eq!(serial_hex(&[0, 0x1a, 0x02]), "1a02");
        assert_eq!(serial_hex(&[0]), "00");
    }
}
