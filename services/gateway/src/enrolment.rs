//! `prexor.v1.NodeEnrolment` on the daemon port, and the node-identity check every daemon call
//! goes through.

use std::sync::Arc;

use prexor_domain::validate_name;
use prexor_model::pki::{self as records, JoinError};
use prexor_pki::JoinToken;
use prexor_pki::{CaCertificate, CertInfo, Identity};
use prexor_proto::v1::node_enrolment_server::NodeEnrolment;
use prexor_proto::v1::{EnrolRequest, EnrolResponse, RenewRequest, SignedCertificate};
use prexor_serve::signer::{SignerClient, SignerError};
use prexor_store::Store;
use rustls::pki_types::CertificateDer;
use tonic::{Request, Response, Status};

pub struct Enrolment {
    pub store: Store,
    pub signer: SignerClient,
    pub ca: CaCertificate,
}

/// The node a daemon call comes from: its client certificate (already verified against the
/// cluster CA by TLS) must be a node certificate for `node_id` whose serial is not revoked.
pub async fn authorize_node(
    store: &Store,
    peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    node_id: &str,
) -> Result<CertInfo, Status> {
    let Some(chain) = peer_certs else {
        return Err(Status::unauthenticated(
            "no client certificate: a node must present its certificate (enrol with a join token first)",
        ));
    };
    let Some(leaf) = chain.first() else {
        return Err(Status::unauthenticated("empty client certificate chain"));
    };
    let info = CertInfo::parse(leaf.as_ref())
        .map_err(|e| Status::permission_denied(format!("unreadable client certificate: {e}")))?;
    match &info.identity {
        Some(Identity::Node(id)) if id == node_id => {}
        Some(Identity::Node(id)) => {
            return Err(Status::permission_denied(format!(
                "the client certificate is for node {id}, but the call is for node {node_id}"
            )));
        }
        Some(other) => {
            return Err(Status::permission_denied(format!(
                "the client certificate belongs to {other}; the daemon port accepts only node certificates"
            )));
        }
        None => {
            return Err(Status::permission_denied(
                "the client certificate carries no PrexorCloud node identity",
            ));
        }
    }
    // Also revokes the node's older certificates once it uses a renewed one.
    let revoked = records::admit_node_certificate(store, node_id, &info.serial)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    if let Some(reason) = revoked {
        metrics::counter!("prexor_gateway_revoked_certificates_refused_total").increment(1);
        return Err(Status::permission_denied(format!(
            "the certificate {} of node {node_id} was revoked ({reason}); enrol the node again with a new join token",
            info.serial
        )));
    }
    Ok(info)
}

fn join_status(err: JoinError) -> Status {
    err.code().status(err.to_string())
}

fn signer_status(err: SignerError) -> Status {
    err.code().status(err.to_string())
}

impl Enrolment {
    fn response(&self, signed: SignedCertificate) -> EnrolResponse {
        // The chain is the node certificate followed by the CA; the daemon stores them apart.
        let certificate_pem = signed
            .chain_pem
            .strip_suffix(self.ca.pem.as_str())
            .unwrap_or(&signed.chain_pem)
            .to_string();
        EnrolResponse {
            certificate_pem,
            ca_pem: self.ca.pem.clone(),
            serial: signed.serial,
            not_after_unix: signed.not_after_unix,
        }
    }
}

#[tonic::async_trait]
impl NodeEnrolment for Enrolment {
    async fn enrol(
        &self,
        request: Request<EnrolRequest>,
    ) -> Result<Response<EnrolResponse>, Status> {
        let request = request.into_inner();
        validate_name(&request.node_id)
            .map_err(|e| Status::invalid_argument(format!("node id {:?}: {e}", request.node_id)))?;
        let token = JoinToken::parse(&request.join_token).map_err(|e| join_status(e.into()))?;
        if token.ca_fingerprint != self.ca.fingerprint {
            return Err(Status::permission_denied(format!(
                "the join token was made for the cluster CA {}, but this cluster's CA is {}",
                token.ca_fingerprint, self.ca.fingerprint
            )));
        }
        let claim = records::claim_join_token(&self.store, &token, &request.node_id)
            .await
            .map_err(join_status)?;
        let signed = match self
            .signer
            .sign_node(&request.node_id, &request.csr_pem)
            .await
        {
            Ok(signed) => signed,
            Err(err) => {
                // Nothing was issued: the token stays redeemable.
                if let Err(e) = records::release_join_token(&self.store, claim).await {
                    tracing::warn!(error = %e, "could not release a join token claim; it lapses by itself");
                }
                metrics::counter!("prexor_gateway_enrolments_total", "outcome" => "failed")
                    .increment(1);
                return Err(signer_status(err));
            }
        };
        records::complete_join_token(&self.store, claim, &signed.serial)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        metrics::counter!("prexor_gateway_enrolments_total", "outcome" => "enrolled").increment(1);
        tracing::info!(node = %request.node_id, serial = %signed.serial, "node enrolled");
        Ok(Response::new(self.response(signed)))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<EnrolResponse>, Status> {
        let node_id = request.get_ref().node_id.clone();
        authorize_node(&self.store, request.peer_certs(), &node_id).await?;
        let signed = self
            .signer
            .sign_node(&node_id, &request.get_ref().csr_pem)
            .await
            .map_err(signer_status)?;
        tracing::info!(node = %node_id, serial = %signed.serial, "node certificate renewed");
        Ok(Response::new(self.response(signed)))
    }
}
