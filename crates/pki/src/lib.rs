//! Certificates for PrexorCloud: the cluster CA ([`CertificateAuthority`], used only by
//! `prexor-ca`), key pairs and CSRs generated where the key will live ([`KeyAndCsr`]), the
//! identities certificates carry ([`Identity`], [`CertInfo`]), and the rustls configurations
//! for the daemon port ([`tls`]).

mod ca;
mod identity;
pub mod internal;
mod join_token;
pub mod tls;

use std::io::Write;
use std::path::Path;

pub use ca::{
    CA_VALIDITY, CaCertificate, CertificateAuthority, IssuedCertificate, ServiceNames, renewal_due,
};
pub use identity::{CertInfo, Identity};
pub use join_token::{JoinToken, MalformedJoinToken};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("malformed certificate: {0}")]
    BadCertificate(String),
    #[error("malformed private key: {0}")]
    BadKey(String),
    #[error("malformed certificate signing request: {0}")]
    BadCsr(String),
    #[error("CSR refused: {0}")]
    CsrMismatch(String),
    #[error(
        "the private key does not belong to the CA certificate {fingerprint} (is this the key bundle of another cluster?)"
    )]
    KeyMismatch { fingerprint: String },
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("{0}")]
    Tls(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} has mode {mode:o}; a private key must not be readable by others (chmod 600 {path})"
    )]
    KeyReadable { path: String, mode: u32 },
    #[error("bad peer address {address}: {reason}")]
    BadPeerAddress { address: String, reason: String },
}

/// SHA-256 of a DER certificate, lower-case hex: what join tokens carry and operators compare.
pub fn fingerprint(der: &[u8]) -> String {
    prexor_domain::sha256_hex(der)
}

/// The DER of the first PEM block labelled `label` (`CERTIFICATE` or `CERTIFICATE REQUEST`).
pub fn pem_to_der(pem: &str, label: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
    let describe = |e: rustls::pki_types::pem::Error| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("no PEM block labelled {label}"),
        other => format!("not valid PEM: {other}"),
    };
    if label == "CERTIFICATE REQUEST" {
        CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map(|der| der.as_ref().to_vec())
            .map_err(|e| PkiError::BadCsr(describe(e)))
    } else {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .map(|der| der.as_ref().to_vec())
            .map_err(|e| PkiError::BadCertificate(describe(e)))
    }
}

/// Every certificate in a PEM bundle, as DER.
pub fn pem_certificates(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PkiError> {
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadCertificate(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::BadCertificate(
            "no PEM block labelled CERTIFICATE".into(),
        ));
    }
    Ok(certs)
}

/// A fresh key pair (ECDSA P-256) and a CSR for `identity`, made where the key will live: the
/// private key never travels.
pub struct KeyAndCsr {
    pub key_pem: String,
    pub csr_pem: String,
}

impl KeyAndCsr {
    pub fn new(identity: &Identity, names: &ServiceNames) -> Result<KeyAndCsr, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::Signing(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.common_name());
        params.distinguished_name = dn;
        let uri = identity.uri();
        params.subject_alt_names =
            vec![SanType::URI(uri.as_str().try_into().map_err(|_| {
                PkiError::Signing(format!("{uri:?} is not a valid name"))
            })?)];
        for dns in &names.dns {
            params.subject_alt_names.push(SanType::DnsName(
                dns.as_str()
                    .try_into()
                    .map_err(|_| PkiError::Signing(format!("{dns:?} is not a valid DNS name")))?,
            ));
        }
        params
            .subject_alt_names
            .extend(names.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let csr = params
            .serialize_request(&key)
            .map_err(|e| PkiError::Signing(e.to_string()))?;
        Ok(KeyAndCsr {
            key_pem: key.serialize_pem(),
            csr_pem: csr.pem().map_err(|e| PkiError::Signing(e.to_string()))?,
        })
    }
}

/// Writes a secret file (private key) with mode 0600, atomically: a temporary file in the same
/// directory, synced, then renamed over `path`.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Refuses a private key file that anyone but its owner can read (like ssh does).
pub fn check_private_mode(path: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyReadable {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}
