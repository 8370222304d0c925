//! rustls configurations for the daemon port: the gateway's server side (cluster-CA client
//! certificates, optional so that enrolment works before a node has one), the daemon's client
//! side (trusting the cluster CA, or during enrolment only a CA with a pinned fingerprint), and a
//! certificate slot that can be swapped without restarting the listener.

use std::sync::{Arc, LazyLock, RwLock};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, client::WebPkiServerVerifier};

use crate::{PkiError, fingerprint, pem_certificates};

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// The one crypto provider every PrexorCloud TLS endpoint uses (built once, shared).
pub fn provider() -> Arc<CryptoProvider> {
    PROVIDER.clone()
}

/// The handshake signature checks of a rustls certificate verifier, which every PrexorCloud
/// verifier delegates to the one provider's algorithms: expands to the three trait methods.
macro_rules! provider_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &$crate::tls::provider().signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &$crate::tls::provider().signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            $crate::tls::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use provider_signature_checks;

fn tls_err(what: &str) -> impl Fn(rustls::Error) -> PkiError + '_ {
    move |e| PkiError::Tls(format!("{what}: {e}"))
}

pub(crate) fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certificates(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| PkiError::BadCertificate(format!("unusable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain with its private key, ready for rustls.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, PkiError> {
    let chain = pem_certificates(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::BadKey(format!("not a PEM private key: {e}")))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(tls_err("certificate and key do not match"))?;
    Ok(Arc::new(certified))
}

/// The server certificate of a listener, replaceable while it runs (renewal, rotation). Until a
/// certificate is set, handshakes are refused.
#[derive(Debug, Default)]
pub struct CertSlot {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    generation: std::sync::atomic::AtomicU64,
}

impl CertSlot {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().expect("cert slot lock") = Some(key);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Changes whenever a certificate is set: connections made with an older one (as a client)
    /// should be replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_set(&self) -> bool {
        self.current.read().expect("cert slot lock").is_some()
    }

    /// The current certificate and key, if any.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().expect("cert slot lock").clone()
    }

    /// The DER of the current leaf certificate.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        let current = self.current.read().expect("cert slot lock");
        current.as_ref().and_then(|k| k.cert.first().cloned())
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// The daemon port: the server certificate comes from `slot`; a client certificate, when
/// presented, must chain to the cluster CA and carry client-auth usage. It is optional at the
/// TLS layer only so that a node without a certificate can enrol; every other call checks the
/// peer's identity itself.
pub fn daemon_port_server(ca_pem: &str, slot: Arc<CertSlot>) -> Result<ServerConfig, PkiError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A daemon's connection to a gateway: the gateway must present a certificate from the cluster
/// CA for the address dialled; the daemon presents its node certificate.
pub fn daemon_client(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, PkiError> {
    let chain = pem_certificates(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::BadKey(format!("not a PEM private key: {e}")))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("protocol versions"))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err("node certificate and key do not match"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Enrolment: the daemon does not have the CA certificate yet, only its fingerprint (from the
/// join token). The gateway sends its chain including the CA; the CA in it must have exactly
/// that fingerprint, and the gateway certificate must be valid under it for the address dialled.
pub fn enrolment_client(ca_fingerprint: &str) -> Result<ClientConfig, PkiError> {
    let verifier = Arc::new(PinnedCa {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("protocol versions"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| fingerprint(c.as_ref()) == self.fingerprint)
        else {
            return Err(rustls::Error::General(format!(
                "the gateway did not present the cluster CA with fingerprint {} (wrong cluster, or a join token of another cluster?)",
                self.fingerprint
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    provider_signature_checks!();
}

/// A gRPC channel to `address` (`host:port`) over TLS with `config` (the daemon side of the
/// daemon port). The server certificate must be valid for `host`. `timeout` bounds connecting;
/// calls set their own deadlines (a session stream has none).
pub async fn connect(
    address: &str,
    config: ClientConfig,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, PkiError> {
    let service = connector(address, Arc::new(config))?;
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| PkiError::Tls(format!("{address}: {e}")))?
        .connect_timeout(timeout)
        // A gateway that stops answering (paused, cut off) is noticed within seconds, even on
        // a long-lived stream with nothing to send.
        .http2_keep_alive_interval(std::time::Duration::from_secs(2))
        .keep_alive_timeout(std::time::Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect_with_connector(service)
        .await
        .map_err(|e| PkiError::Tls(format!("cannot connect to {address}: {}", source_chain(&e))))
}

/// Connects to one `host:port` over TCP and TLS, verifying the server certificate for `host`:
/// the connector of a tonic endpoint.
#[derive(Clone)]
pub(crate) struct TlsDialer {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    target: String,
}

type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower::Service<tonic::transport::Uri> for TlsDialer {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<TlsIo, std::io::Error>> + Send + 'static>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::transport::Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&dialer.target).await?;
            tcp.set_nodelay(true)?;
            let tls = dialer.connector.connect(dialer.server_name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

pub(crate) fn connector(address: &str, config: Arc<ClientConfig>) -> Result<TlsDialer, PkiError> {
    let (host, _) = address
        .rsplit_once(':')
        .ok_or_else(|| PkiError::Tls(format!("{address:?} is not host:port")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| PkiError::Tls(format!("{host:?} is not a valid server name")))?;
    Ok(TlsDialer {
        connector: tokio_rustls::TlsConnector::from(config),
        server_name,
        target: address.to_string(),
    })
}

/// An error with its causes (`a: b: c`), so TLS alerts reach the message.
pub fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}
