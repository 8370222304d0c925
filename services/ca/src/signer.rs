//! `prexor.v1.CaSigner`: signs node and service CSRs for exactly the identity requested.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prexor_domain::{ServiceKind, validate_name};
use prexor_pki::records;
use prexor_pki::{IssuedCertificate, PkiError, ServiceNames};
use prexor_proto::v1::ca_signer_server::CaSigner;
use prexor_proto::v1::{
    CaCertificateInfo, GetCaCertificateRequest, SignNodeCsrRequest, SignServiceCsrRequest,
    SignedCertificate,
};
use prexor_store::Store;
use tonic::{Request, Response, Status};

use crate::authority::Authority;

pub struct Signer {
    pub authority: Arc<Authority>,
    pub store: Store,
    pub replica_id: String,
    pub node_validity: Duration,
    pub service_validity: Duration,
}

/// Only callers on this host reach the signer until internal mTLS carries service identities.
fn authorize<T>(request: &Request<T>) -> Result<(), Status> {
    match request.remote_addr() {
        Some(addr) if addr.ip().is_loopback() => Ok(()),
        Some(addr) => Err(Status::permission_denied(format!(
            "the CA signer accepts calls only from its own host (loopback); {addr} is not local"
        ))),
        None => Err(Status::permission_denied(
            "the CA signer could not tell where this call came from",
        )),
    }
}

impl Signer {
    fn ca(&self) -> Result<&prexor_pki::CertificateAuthority, Status> {
        self.authority
            .signer
            .as_ref()
            .map_err(|reason| Status::failed_precondition(reason.clone()))
    }

    async fn finish(
        &self,
        kind: &'static str,
        issued: Result<IssuedCertificate, PkiError>,
    ) -> Result<Response<SignedCertificate>, Status> {
        let issued = match issued {
            Ok(issued) => issued,
            Err(err) => {
                metrics::counter!("prexor_ca_signatures_total", "kind" => kind, "outcome" => "refused")
                    .increment(1);
                return Err(Status::invalid_argument(err.to_string()));
            }
        };
        records::record_issued(&self.store, &issued, &self.replica_id)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        metrics::counter!("prexor_ca_signatures_total", "kind" => kind, "outcome" => "signed")
            .increment(1);
        tracing::info!(
            identity = %issued.identity,
            serial = %issued.info.serial,
            not_after = issued.info.not_after,
            "issued a certificate"
        );
        Ok(Response::new(SignedCertificate {
            chain_pem: format!("{}{}", issued.pem, self.authority.certificate.pem),
            serial: issued.info.serial,
            not_after_unix: issued.info.not_after,
            ca_fingerprint: self.authority.certificate.fingerprint.clone(),
        }))
    }
}

#[tonic::async_trait]
impl CaSigner for Signer {
    async fn sign_node_csr(
        &self,
        request: Request<SignNodeCsrRequest>,
    ) -> Result<Response<SignedCertificate>, Status> {
        authorize(&request)?;
        let request = request.into_inner();
        validate_name(&request.node_id)
            .map_err(|e| Status::invalid_argument(format!("node id {:?}: {e}", request.node_id)))?;
        let ca = self.ca()?;
        let issued = ca.sign_node(&request.node_id, &request.csr_pem, self.node_validity);
        self.finish("node", issued).await
    }

    async fn sign_service_csr(
        &self,
        request: Request<SignServiceCsrRequest>,
    ) -> Result<Response<SignedCertificate>, Status> {
        authorize(&request)?;
        let request = request.into_inner();
        let kind: ServiceKind = request.service.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "service {:?} is not one of api, gateway, scheduler, ca",
                request.service
            ))
        })?;
        if request.replica_id.is_empty() || request.replica_id.contains(['/', ':']) {
            return Err(Status::invalid_argument(format!(
                "replica id {:?} must be non-empty and contain no '/' or ':'",
                request.replica_id
            )));
        }
        let ips = request
            .ip_addresses
            .iter()
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|_| Status::invalid_argument(format!("{ip:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let names = ServiceNames {
            dns: request.dns_names,
            ips,
        };
        let ca = self.ca()?;
        let issued = ca.sign_service(
            &kind.to_string(),
            &request.replica_id,
            &names,
            &request.csr_pem,
            self.service_validity,
        );
        self.finish("service", issued).await
    }

    async fn get_ca_certificate(
        &self,
        _request: Request<GetCaCertificateRequest>,
    ) -> Result<Response<CaCertificateInfo>, Status> {
        let certificate = &self.authority.certificate;
        Ok(Response::new(CaCertificateInfo {
            certificate_pem: certificate.pem.clone(),
            fingerprint: certificate.fingerprint.clone(),
            not_after_unix: certificate.not_after,
            can_sign: self.authority.signer.is_ok(),
            signing_detail: self
                .authority
                .signer
                .as_ref()
                .err()
                .cloned()
                .unwrap_or_default(),
        }))
    }
}
