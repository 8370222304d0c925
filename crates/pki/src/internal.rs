//! Internal mTLS: every replica's internal gRPC port (and every call a replica makes to a peer's)
//! runs over TLS with a service certificate the cluster CA issued to that replica
//! (`urn:prexor:service:<kind>:<replica>`). A handshake presenting anything else — a node
//! (daemon) certificate, a certificate of another CA — is refused. A client without a
//! certificate may connect (so that a replica can obtain its first certificate, and probes can
//! read health), but calls that act on the cluster require a service certificate
//! ([`caller`]).
//!
//! The trust anchor is the cluster CA certificate published in MongoDB; it is set once known
//! ([`Trust`]), so listeners can start before the CA exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DistinguishedName, ServerConfig, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

use crate::tls::{CertSlot, connector, provider, provider_signature_checks, roots};
use crate::{CertInfo, Identity, PkiError};

/// Bound on connecting to a peer; each call sets its own deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The request metadata carrying the cluster's service enrolment secret: how a replica without
/// a certificate yet asks the CA for its first one.
pub const ENROLMENT_HEADER: &str = "x-prexor-service-enrolment";

struct Verifiers {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

/// The cluster CA as the trust anchor of internal connections; unset until the CA certificate
/// is known, and until then every handshake is refused.
#[derive(Default)]
pub struct Trust {
    verifiers: RwLock<Option<Arc<Verifiers>>>,
    /// Serials of revoked service certificates, refused at every handshake (kept current by
    /// the replica from MongoDB).
    revoked: RwLock<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("set", &self.is_set())
            .finish()
    }
}

impl Trust {
    /// Trusts the CA certificate(s) in `ca_pem`.
    pub fn set(&self, ca_pem: &str) -> Result<(), PkiError> {
        let roots = roots(ca_pem)?;
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls(format!("client verifier: {e}")))?;
        let server = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| PkiError::Tls(format!("server verifier: {e}")))?;
        *self.verifiers.write().expect("trust lock") = Some(Arc::new(Verifiers { client, server }));
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.verifiers.read().expect("trust lock").is_some()
    }

    /// Replaces the set of revoked service certificate serials.
    pub fn set_revoked(&self, serials: std::collections::HashSet<String>) {
        *self.revoked.write().expect("revoked lock") = serials;
    }

    /// Only service identities pass, and none revoked; the chain itself has been verified
    /// already.
    fn require_service(
        &self,
        end_entity: &CertificateDer<'_>,
        side: &str,
    ) -> Result<(), rustls::Error> {
        let info = CertInfo::parse(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(format!("unreadable {side} certificate: {e}")))?;
        match info.identity {
            Some(Identity::Service { .. }) => {}
            Some(other) => {
                return Err(rustls::Error::General(format!(
                    "the {side} certificate belongs to {other}; internal gRPC ports accept only service certificates of the cluster"
                )));
            }
            None => {
                return Err(rustls::Error::General(format!(
                    "the {side} certificate carries no PrexorCloud service identity"
                )));
            }
        }
        if self
            .revoked
            .read()
            .expect("revoked lock")
            .contains(&info.serial)
        {
            return Err(rustls::Error::General(format!(
                "the {side} certificate {} was revoked",
                info.serial
            )));
        }
        Ok(())
    }

    fn get(&self) -> Result<Arc<Verifiers>, rustls::Error> {
        self.verifiers
            .read()
            .expect("trust lock")
            .clone()
            .ok_or_else(|| {
                rustls::Error::General(
                    "the cluster CA certificate is not known yet (no CA in MongoDB)".into(),
                )
            })
    }
}

#[derive(Debug)]
struct ServiceClients {
    trust: Arc<Trust>,
}

impl ClientCertVerifier for ServiceClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified =
            self.trust
                .get()?
                .client
                .verify_client_cert(end_entity, intermediates, now)?;
        self.trust.require_service(end_entity, "client")?;
        Ok(verified)
    }

    provider_signature_checks!();
}

#[derive(Debug)]
struct ServiceServers {
    trust: Arc<Trust>,
}

impl ServerCertVerifier for ServiceServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.trust.get()?.server.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.trust.require_service(end_entity, "server")?;
        Ok(verified)
    }

    provider_signature_checks!();
}

/// A replica presents its current service certificate as a client too (none before it has one).
#[derive(Debug)]
struct SlotClientCert(Arc<CertSlot>);

impl ResolvesClientCert for SlotClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }

    fn has_certs(&self) -> bool {
        self.0.is_set()
    }
}

/// The server side of an internal gRPC port: this replica's certificate from `slot`; client
/// certificates must be service certificates of the cluster (or absent).
pub fn server_config(trust: Arc<Trust>, slot: Arc<CertSlot>) -> Result<ServerConfig, PkiError> {
    let slot: Arc<dyn ResolvesServerCert> = slot;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(format!("protocol versions: {e}")))?
        .with_client_cert_verifier(Arc::new(ServiceClients { trust }))
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // A resumed session keeps the identity of the first handshake; every connection proves its
    // current certificate instead.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The client side of calls to peers: the peer must present a service certificate of the
/// cluster valid for the address dialled; this replica presents its own from `slot`.
pub fn client_config(trust: Arc<Trust>, slot: Arc<CertSlot>) -> Result<ClientConfig, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(format!("protocol versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServiceServers { trust }))
        .with_client_cert_resolver(Arc::new(SlotClientCert(slot)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Who made a call on an internal port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A replica presenting its service certificate (verified by the handshake).
    Service { kind: String, replica: String },
    /// No certificate.
    Anonymous,
}

/// The caller of `request`: its service identity when it presented a certificate.
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    let identity = request
        .peer_certs()
        .and_then(|chain| chain.first().cloned())
        .and_then(|leaf| CertInfo::parse(leaf.as_ref()).ok())
        .and_then(|info| info.identity);
    match identity {
        Some(Identity::Service { kind, replica }) => Caller::Service { kind, replica },
        _ => Caller::Anonymous,
    }
}

/// Requires a service certificate on a call that acts on the cluster.
pub fn require_service_caller<T>(
    request: &tonic::Request<T>,
) -> Result<(String, String), tonic::Status> {
    match caller(request) {
        Caller::Service { kind, replica } => Ok((kind, replica)),
        Caller::Anonymous => Err(tonic::Status::unauthenticated(
            "this internal call requires a service certificate of the cluster (mTLS); none was presented",
        )),
    }
}

/// Channels to peers' internal gRPC ports (`host:port`, mTLS), one per address, connected
/// lazily and shared by every call to that peer. The client certificate is part of the
/// handshake, so when this replica's certificate changes (first issued, renewed) new calls use
/// new connections; calls in flight finish on the old ones.
#[derive(Clone)]
pub struct PeerChannels {
    config: Arc<ClientConfig>,
    slot: Arc<CertSlot>,
    channels: Arc<Mutex<(u64, HashMap<String, Channel>)>>,
}

impl std::fmt::Debug for PeerChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannels").finish_non_exhaustive()
    }
}

impl PeerChannels {
    /// Channels presenting the certificate in `slot` with `config` ([`client_config`]).
    pub fn new(config: ClientConfig, slot: Arc<CertSlot>) -> PeerChannels {
        PeerChannels {
            config: Arc::new(config),
            slot,
            channels: Arc::default(),
        }
    }

    /// The channel to `address`; an address that is not `host:port` is an error naming it.
    pub fn get(&self, address: &str) -> Result<Channel, PkiError> {
        let mut guard = self.channels.lock().expect("peer channels lock");
        let (generation, channels) = &mut *guard;
        let current = self.slot.generation();
        if *generation != current {
            channels.clear();
            *generation = current;
        }
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let bad = |reason: String| PkiError::BadPeerAddress {
            address: address.to_owned(),
            reason,
        };
        let service = connector(address, self.config.clone()).map_err(|e| bad(e.to_string()))?;
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            // A frozen or black-holed peer is noticed within about 5 s and its calls fail
            // (callers then try another replica), instead of waiting on a dead connection.
            .http2_keep_alive_interval(std::time::Duration::from_secs(2))
            .keep_alive_timeout(std::time::Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(service);
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

/// One replica's side of internal mTLS: the trust anchor, its certificate slot and the channels
/// to its peers (which present that certificate).
#[derive(Debug, Clone)]
pub struct InternalTls {
    pub trust: Arc<Trust>,
    pub slot: Arc<CertSlot>,
    pub peers: PeerChannels,
}

impl InternalTls {
    pub fn new() -> Result<InternalTls, PkiError> {
        let trust = Arc::new(Trust::default());
        let slot = Arc::new(CertSlot::default());
        let peers = PeerChannels::new(client_config(trust.clone(), slot.clone())?, slot.clone());
        Ok(InternalTls { trust, slot, peers })
    }

    pub fn server_config(&self) -> Result<ServerConfig, PkiError> {
        server_config(self.trust.clone(), self.slot.clone())
    }
}
