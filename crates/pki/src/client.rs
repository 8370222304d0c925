//! Reaching a CA replica that can sign: every `ca` replica in the registry is tried in turn
//! (ready ones first), with bounded timeouts, until one holding the key answers.

use std::time::Duration;

use prexor_coord::Registry;
use prexor_domain::ServiceKind;
use prexor_proto::PeerChannels;
use prexor_proto::v1::ca_signer_client::CaSignerClient;
use prexor_proto::v1::{SignNodeCsrRequest, SignServiceCsrRequest, SignedCertificate};
use tonic::transport::Channel;
use tonic::{Code, Status};

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
}

/// Finds a signing CA replica through the registry and keeps channels to them.
#[derive(Clone, Debug)]
pub struct SignerClient {
    registry: Registry,
    channels: PeerChannels,
}

impl SignerClient {
    pub fn new(registry: Registry) -> SignerClient {
        SignerClient {
            registry,
            channels: PeerChannels::default(),
        }
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
            let request = request.clone();
            async move { client.sign_node_csr(request).await }
        })
        .await
    }

    pub async fn sign_service(
        &self,
        request: SignServiceCsrRequest,
    ) -> Result<SignedCertificate, SignerError> {
        self.first_signer(|mut client| {
            let request = request.clone();
            async move { client.sign_service_csr(request).await }
        })
        .await
    }

    async fn first_signer<F, Fut>(&self, call: F) -> Result<SignedCertificate, SignerError>
    where
        F: Fn(CaSignerClient<Channel>) -> Fut,
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
            let outcome =
                tokio::time::timeout(CALL_TIMEOUT, call(CaSignerClient::new(channel))).await;
            match outcome {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if status.code() == Code::InvalidArgument => {
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
