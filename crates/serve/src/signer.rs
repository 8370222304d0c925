//! Reaching a CA replica that can sign: every `ca` replica in the registry is tried in turn
//! (ready ones first), with bounded timeouts, until one holding the key answers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::red::MeteredChannel;
use prexor_coord::Registry;
use prexor_domain::ServiceKind;
use prexor_proto::v1::ca_signer_client::CaSignerClient;
use prexor_proto::v1::{SignNodeCsrRequest, SignServiceCsrRequest, SignedCertificate};
use tonic::{Code, Status};

use prexor_pki::internal::{ENROLMENT_HEADER, PeerChannels};
use prexor_pki::tls::certified_key;
use prexor_pki::{Identity, KeyAndCsr, ServiceNames};
use rustls::sign::CertifiedKey;

/// One signing call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no certificate was issued.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// No reachable CA replica holds the key (the API answers 503 with this message).
    #[error(
        "the CA private key is not present on any reachable signer ({tried}); copy the CA bundle to a CA host and restart its prexor-ca (docs/ca.md, \"CA private key location\")"
    )]
    NoSigner { tried: String },
    /// The CA refused the request itself (CSR does not match the identity, bad names).
    #[error("{0}")]
    Refused(String),
    /// The key, CSR or the returned chain could not be made or read.
    #[error(transparent)]
    Pki(#[from] prexor_pki::PkiError),
}

impl SignerError {
    pub fn code(&self) -> prexor_proto::ErrorCode {
        match self {
            SignerError::NoSigner { .. } => prexor_proto::ErrorCode::NoCaKey,
            SignerError::Refused(_) | SignerError::Pki(_) => prexor_proto::ErrorCode::BadRequest,
        }
    }
}

/// Signs this replica's service certificate: a CA replica over the network ([`SignerClient`]),
/// or, on a CA replica holding the key, the key itself.
#[tonic::async_trait]
pub trait ServiceSigner: Send + Sync {
    async fn sign_service(
        &self,
        request: SignServiceCsrRequest,
    ) -> Result<SignedCertificate, SignerError>;
}

/// Finds a signing CA replica through the registry and keeps channels to them (mTLS). Calls
/// carry the service enrolment secret, so a replica without a certificate yet can get its
/// first one.
#[derive(Clone, Debug)]
pub struct SignerClient {
    registry: Registry,
    channels: PeerChannels,
    enrolment: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl SignerClient {
    /// `enrolment_secret`: [`prexor_model::pki::service_enrolment_secret`].
    pub fn new(
        registry: Registry,
        channels: PeerChannels,
        enrolment_secret: &str,
    ) -> Result<SignerClient, prexor_pki::PkiError> {
        let enrolment = enrolment_secret.parse().map_err(|_| {
            prexor_pki::PkiError::Tls("the service enrolment secret is not valid metadata".into())
        })?;
        Ok(SignerClient {
            registry,
            channels,
            enrolment,
        })
    }

    pub async fn sign_node(
        &self,
        node_id: &str,
        csr_pem: &str,
    ) -> Result<SignedCertificate, SignerError> {
        let request = SignNodeCsrRequest {
            node_id: node_id.to_string(),
            csr_pem: csr_pem.to_string(),
        };
        self.first_signer(|mut client| {
            let request = self.call(request.clone());
            async move { client.sign_node_csr(request).await }
        })
        .await
    }

    fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert(ENROLMENT_HEADER, self.enrolment.clone());
        request
    }

    async fn first_signer<F, Fut>(&self, call: F) -> Result<SignedCertificate, SignerError>
    where
        F: Fn(CaSignerClient<MeteredChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<SignedCertificate>, Status>>,
    {
        let mut replicas = self
            .registry
            .list(Some(ServiceKind::Ca))
            .await
            .map_err(|e| SignerError::NoSigner {
                tried: format!("the replica registry is unreachable: {e}"),
            })?;
        replicas.sort_by_key(|r| !r.ready);
        let mut tried = Vec::new();
        for replica in replicas {
            let Some(address) = replica.grpc_address.clone() else {
                continue;
            };
            let channel = match self.channels.get(&address) {
                Ok(channel) => channel,
                Err(e) => {
                    tried.push(format!("{}: {e}", replica.id));
                    continue;
                }
            };
            let outcome = tokio::time::timeout(
                CALL_TIMEOUT,
                call(CaSignerClient::new(crate::red::metered(channel))),
            )
            .await;
            match outcome {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status))
                    if matches!(
                        status.code(),
                        Code::InvalidArgument | Code::PermissionDenied
                    ) =>
                {
                    return Err(SignerError::Refused(status.message().to_string()));
                }
                Ok(Err(status)) => {
                    tried.push(format!("{}: {}", replica.id, status.message()));
                }
                Err(_) => tried.push(format!("{}: no answer within {CALL_TIMEOUT:?}", replica.id)),
            }
        }
        if tried.is_empty() {
            tried.push("no prexor-ca replica is registered".into());
        }
        Err(SignerError::NoSigner {
            tried: tried.join("; "),
        })
    }
}

#[tonic::async_trait]
impl ServiceSigner for SignerClient {
    async fn sign_service(
        &self,
        request: SignServiceCsrRequest,
    ) -> Result<SignedCertificate, SignerError> {
        self.first_signer(|mut client| {
            let request = self.call(request.clone());
            async move { client.sign_service_csr(request).await }
        })
        .await
    }
}

/// A new key pair and a certificate for service replica `kind`/`replica_id` valid for `names`,
/// signed by `signer`: the key and chain ready for rustls, and its expiry (Unix seconds).
pub async fn issue_service_certificate(
    signer: &dyn ServiceSigner,
    kind: &str,
    replica_id: &str,
    names: &ServiceNames,
) -> Result<(Arc<CertifiedKey>, i64), SignerError> {
    let identity = Identity::Service {
        kind: kind.into(),
        replica: replica_id.to_string(),
    };
    let request = KeyAndCsr::new(&identity, names)?;
    let signed = signer
        .sign_service(SignServiceCsrRequest {
            service: kind.into(),
            replica_id: replica_id.to_string(),
            csr_pem: request.csr_pem,
            dns_names: names.dns.clone(),
            ip_addresses: names.ips.iter().map(IpAddr::to_string).collect(),
        })
        .await?;
    let key = certified_key(&signed.chain_pem, &request.key_pem)?;
    Ok((key, signed.not_after_unix))
}
