//! The cluster CA: generating it, loading it from its key bundle, and signing CSRs for exactly the
//! identity they were requested for.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls::pki_types::CertificateSigningRequestDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{CertInfo, Identity};
use crate::{PkiError, pem_to_der};

/// How long a freshly generated cluster CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Issued certificates are valid from slightly in the past, for hosts whose clocks lag.
const BACKDATE: Duration = Duration::from_secs(300);

/// When a certificate issued by the cluster CA is due for renewal (Unix seconds): two thirds
/// into its lifetime as issued (the back-dating of `not_before` does not count).
pub fn renewal_due(info: &CertInfo) -> i64 {
    let issued_at = (info.not_before + BACKDATE.as_secs() as i64).min(info.not_after);
    issued_at + (info.not_after - issued_at) * 2 / 3
}

/// The public half of the cluster CA, as published in MongoDB and pinned by daemons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    pub pem: String,
    pub der: Vec<u8>,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    pub not_after: i64,
}

impl CaCertificate {
    pub fn from_pem(pem: &str) -> Result<CaCertificate, PkiError> {
        let der = pem_to_der(pem, "CERTIFICATE")?;
        let info = CertInfo::parse(&der)?;
        Ok(CaCertificate {
            pem: pem.to_string(),
            fingerprint: info.fingerprint,
            not_after: info.not_after,
            der,
        })
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub pem: String,
    pub info: CertInfo,
    pub identity: Identity,
}

/// What a service certificate may be used as (its names besides the identity URI).
#[derive(Debug, Clone, Default)]
pub struct ServiceNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// The signing CA: certificate plus private key. Only `prexor-ca` ever constructs one from the
/// key on disk.
pub struct CertificateAuthority {
    certificate: CaCertificate,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.certificate.fingerprint)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new CA (ECDSA P-256). Returns the authority and its private key as PKCS#8 PEM, which the
    /// caller writes (mode 0600) before the certificate is published.
    pub fn generate(cluster_name: &str) -> Result<(CertificateAuthority, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("PrexorCloud cluster CA ({cluster_name})"),
        );
        dn.push(DnType::OrganizationName, "PrexorCloud");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(sign_err)?;
        let key_pem = key.serialize_pem();
        let certificate = CaCertificate::from_pem(&cert.pem())?;
        Ok((
            CertificateAuthority {
                certificate,
                issuer: Issuer::new(params, key),
            },
            key_pem,
        ))
    }

    /// Loads the CA from its certificate and private key, checking that they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, PkiError> {
        let certificate = CaCertificate::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::BadKey(format!("not a PKCS#8 private key: {e}")))?;
        let (_, cert) = X509Certificate::from_der(&certificate.der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch {
                fingerprint: certificate.fingerprint,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&certificate.der.clone().into(), key)
            .map_err(|e| PkiError::BadCertificate(format!("not a usable CA certificate: {e}")))?;
        Ok(CertificateAuthority {
            certificate,
            issuer,
        })
    }

    pub fn certificate(&self) -> &CaCertificate {
        &self.certificate
    }

    /// Signs a node's CSR: the CSR's subject must be exactly the node id (and any names it asks
    /// for must be that node's). The certificate is a client certificate with CN = node id and
    /// the URI SAN `urn:prexor:node:<id>`.
    pub fn sign_node(
        &self,
        node_id: &str,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        let identity = Identity::Node(node_id.to_string());
        let csr = parse_csr(csr_pem)?;
        check_subject(&csr, &identity)?;
        for san in &csr.params.subject_alt_names {
            if *san != SanType::URI(ia5(&identity.uri())?) {
                return Err(PkiError::CsrMismatch(format!(
                    "the CSR asks for the name {} which is not node {node_id}'s",
                    describe_san(san)
                )));
            }
        }
        self.issue(
            &csr,
            identity,
            &ServiceNames::default(),
            &[ExtendedKeyUsagePurpose::ClientAuth],
            validity,
        )
    }

    /// Signs a service replica's CSR for the names it serves under. The CSR must ask for exactly
    /// this identity, and for no name outside `names`.
    pub fn sign_service(
        &self,
        kind: &str,
        replica: &str,
        names: &ServiceNames,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        let identity = Identity::Service {
            kind: kind.to_string(),
            replica: replica.to_string(),
        };
        let csr = parse_csr(csr_pem)?;
        check_subject(&csr, &identity)?;
        let allowed = service_sans(&identity, names)?;
        if let Some(extra) = csr
            .params
            .subject_alt_names
            .iter()
            .find(|san| !allowed.contains(san))
        {
            return Err(PkiError::CsrMismatch(format!(
                "the CSR asks for the name {} which was not requested for {identity}",
                describe_san(extra)
            )));
        }
        self.issue(
            &csr,
            identity,
            names,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            validity,
        )
    }

    fn issue(
        &self,
        csr: &CertificateSigningRequestParams,
        identity: Identity,
        names: &ServiceNames,
        usages: &[ExtendedKeyUsagePurpose],
        validity: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        // Nothing from the CSR but its (verified) public key and the checked subject is used.
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.common_name());
        params.distinguished_name = dn;
        params.subject_alt_names = service_sans(&identity, names)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(sign_err)?;
        let info = CertInfo::parse(cert.der())?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            info,
            identity,
        })
    }
}

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, PkiError> {
    let der = pem_to_der(csr_pem, "CERTIFICATE REQUEST")?;
    CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
        .map_err(|e| PkiError::BadCsr(e.to_string()))
}

fn check_subject(
    csr: &CertificateSigningRequestParams,
    identity: &Identity,
) -> Result<(), PkiError> {
    let expected = identity.common_name();
    let cn = match csr.params.distinguished_name.get(&DnType::CommonName) {
        Some(DnValue::Utf8String(s)) => s.clone(),
        Some(DnValue::PrintableString(s)) => s.as_str().to_string(),
        Some(DnValue::Ia5String(s)) => s.as_str().to_string(),
        Some(DnValue::TeletexString(s)) => s.as_str().to_string(),
        Some(_) => {
            return Err(PkiError::CsrMismatch(format!(
                "the CSR's subject common name uses an unsupported string type; it must be {expected:?}"
            )));
        }
        None => {
            return Err(PkiError::CsrMismatch(format!(
                "the CSR has no subject common name; it must be {expected:?}"
            )));
        }
    };
    if cn != expected {
        return Err(PkiError::CsrMismatch(format!(
            "the CSR's subject is {cn:?} but it was requested for {identity} (expected {expected:?})"
        )));
    }
    if matches!(csr.params.is_ca, IsCa::Ca(_)) {
        return Err(PkiError::CsrMismatch(
            "the CSR asks for a CA certificate".into(),
        ));
    }
    Ok(())
}

fn service_sans(identity: &Identity, names: &ServiceNames) -> Result<Vec<SanType>, PkiError> {
    let mut sans = vec![SanType::URI(ia5(&identity.uri())?)];
    for dns in &names.dns {
        sans.push(SanType::DnsName(ia5(dns)?));
    }
    sans.extend(names.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(sans)
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    rcgen::string::Ia5String::try_from(s)
        .map_err(|_| PkiError::CsrMismatch(format!("{s:?} is not a valid certificate name")))
}

fn describe_san(san: &SanType) -> String {
    match san {
        SanType::DnsName(s) => format!("DNS:{}", s.as_str()),
        SanType::URI(s) => format!("URI:{}", s.as_str()),
        SanType::Rfc822Name(s) => format!("email:{}", s.as_str()),
        SanType::IpAddress(ip) => format!("IP:{ip}"),
        other => format!("{other:?}"),
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so its hex form is stable.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn sign_err(e: rcgen::Error) -> PkiError {
    PkiError::Signing(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyAndCsr;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn node_csr(id: &str) -> String {
        KeyAndCsr::new(&Identity::Node(id.into()), &ServiceNames::default())
            .unwrap()
            .csr_pem
    }

    #[test]
    fn signs_a_node_csr_for_exactly_that_node() {
        let (ca, _) = CertificateAuthority::generate("test").unwrap();
        let issued = ca
            .sign_node("node-1", &node_csr("node-1"), 90 * DAY)
            .unwrap();
        assert_eq!(issued.info.identity, Some(Identity::Node("node-1".into())));
        assert_eq!(issued.info.common_name.as_deref(), Some("node-1"));
        let lifetime = issued.info.not_after - issued.info.not_before;
        assert!(
            (90 * 86400..=90 * 86400 + 600).contains(&lifetime),
            "{lifetime}"
        );
        assert_eq!(issued.info.serial.len(), 32);

        let err = ca
            .sign_node("node-2", &node_csr("node-1"), DAY)
            .unwrap_err();
        assert!(err.to_string().contains("\"node-1\""), "{err}");
        let service = KeyAndCsr::new(
            &Identity::Service {
                kind: "gateway".into(),
                replica: "g1".into(),
            },
            &ServiceNames::default(),
        )
        .unwrap();
        assert!(ca.sign_node("node-1", &service.csr_pem, DAY).is_err());
        let err = ca.sign_node("node-1", "garbage", DAY).unwrap_err();
        assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
    }

    #[test]
    fn a_node_csr_asking_for_other_names_is_refused() {
        let (ca, _) = CertificateAuthority::generate("test").unwrap();
        let names = ServiceNames {
            dns: vec!["gateway.example".into()],
            ips: vec![],
        };
        let csr = KeyAndCsr::new(&Identity::Node("node-1".into()), &names).unwrap();
        let err = ca.sign_node("node-1", &csr.csr_pem, DAY).unwrap_err();
        assert!(err.to_string().contains("DNS:gateway.example"), "{err}");
    }

    #[test]
    fn service_csrs_are_limited_to_the_requested_names() {
        let (ca, _) = CertificateAuthority::generate("test").unwrap();
        let identity = Identity::Service {
            kind: "gateway".into(),
            replica: "g1".into(),
        };
        let names = ServiceNames {
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
        };
        let csr = KeyAndCsr::new(&identity, &names).unwrap();
        let issued = ca
            .sign_service("gateway", "g1", &names, &csr.csr_pem, DAY)
            .unwrap();
        assert_eq!(issued.info.identity, Some(identity));
        let err = ca
            .sign_service("gateway", "g1", &ServiceNames::default(), &csr.csr_pem, DAY)
            .unwrap_err();
        assert!(err.to_string().contains("DNS:localhost"), "{err}");
    }

    #[test]
    fn loading_checks_that_key_and_certificate_belong_together() {
        let (ca, key) = CertificateAuthority::generate("a").unwrap();
        let (other, other_key) = CertificateAuthority::generate("b").unwrap();
        let loaded = CertificateAuthority::from_pem(&ca.certificate().pem, &key).unwrap();
        assert_eq!(loaded.certificate(), ca.certificate());
        // The reloaded CA signs certificates that chain to the same certificate.
        let issued = loaded.sign_node("n", &node_csr("n"), DAY).unwrap();
        assert!(!issued.pem.is_empty());
        let err = CertificateAuthority::from_pem(&ca.certificate().pem, &other_key).unwrap_err();
        assert!(
            err.to_string().contains(&ca.certificate().fingerprint),
            "{err}"
        );
        assert_ne!(
            other.certificate().fingerprint,
            ca.certificate().fingerprint
        );
    }
}
