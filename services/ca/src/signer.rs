//! `prexor.v1.CaSigner`: signs node and service CSRs for exactly the identity requested.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prexor_domain::{ServiceKind, validate_name};
use prexor_model::pki as records;
use prexor_pki::internal::{Caller, ENROLMENT_HEADER, caller, require_service_caller};
use prexor_pki::{IssuedCertificate, PkiError, ServiceNames};
use prexor_proto::v1::ca_signer_server::CaSigner;
use prexor_proto::v1::{
    CaCertificateInfo, GetCaCertificateRequest, SignNodeCsrRequest, SignServiceCsrRequest,
    SignedCertificate,
};
use prexor_serve::signer::{ServiceSigner, SignerError};
use prexor_store::Store;
use tonic::{Request, Response, Status};

use crate::authority::Authority;

pub struct Signer {
    pub authority: Arc<Authority>,
    /// Whose host is whose: a replica gets no certificate for another replica's host.
    pub registry: prexor_coord::Registry,
    /// [`records::service_enrolment_secret`].
    pub enrolment_secret: String,
    pub store: Store,
    pub replica_id: String,
    pub node_validity: Duration,
    pub service_validity: Duration,
}

/// The CA signs a service certificate for a caller presenting the cluster's service enrolment
/// secret (a replica that can read MongoDB; how it gets its first certificate), or renews the
/// certificate of the replica that presents it; node certificates only for callers presenting
/// a service certificate (the gateways that admitted the node).
fn has_enrolment_secret<T>(request: &Request<T>, secret: &str) -> bool {
    request
        .metadata()
        .get(ENROLMENT_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|presented| {
            prexor_domain::sha256_hex(presented.as_bytes())
                == prexor_domain::sha256_hex(secret.as_bytes())
        })
}

impl Signer {
    async fn sign_service_request(
        &self,
        request: SignServiceCsrRequest,
    ) -> Result<SignedCertificate, Status> {
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
        self.refuse_foreign_names(kind, &request.replica_id, &request.dns_names, &ips)
            .await?;
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
        self.finish("service", issued)
            .await
            .map(Response::into_inner)
    }

    /// The names of a service certificate are the caller's to ask for only as far as they are
    /// not another replica's host: a name (or address) that another registered replica
    /// advertises, and the requesting replica does not, is refused. Loopback names are every
    /// replica's.
    async fn refuse_foreign_names(
        &self,
        kind: ServiceKind,
        replica: &str,
        dns: &[String],
        ips: &[IpAddr],
    ) -> Result<(), Status> {
        let replicas = self.registry.list(None).await.map_err(|e| {
            Status::unavailable(format!(
                "cannot read the replica registry to check the names: {e}"
            ))
        })?;
        let host_of = |address: &str| -> String {
            address
                .rsplit_once(':')
                .map_or(address, |(host, _)| host)
                .trim_matches(['[', ']'])
                .to_ascii_lowercase()
        };
        let hosts = |r: &prexor_coord::ReplicaRecord| -> Vec<String> {
            [Some(r.http_address.as_str()), r.grpc_address.as_deref()]
                .into_iter()
                .flatten()
                .map(host_of)
                .collect()
        };
        let own: Vec<String> = replicas
            .iter()
            .filter(|r| r.kind == kind && r.id == replica)
            .flat_map(hosts)
            .collect();
        let requested = dns
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .chain(ips.iter().map(|ip| ip.to_string()));
        for name in requested {
            let loopback =
                name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback || own.contains(&name) {
                continue;
            }
            if let Some(other) = replicas
                .iter()
                .filter(|r| !(r.kind == kind && r.id == replica))
                .find(|r| hosts(r).contains(&name))
            {
                metrics::counter!("prexor_ca_signatures_total", "kind" => "service", "outcome" => "refused")
                    .increment(1);
                return Err(Status::permission_denied(format!(
                    "{name} is the host of {} replica {}, not of {kind} replica {replica}; a replica gets certificates only for its own names",
                    other.kind, other.id
                )));
            }
        }
        Ok(())
    }

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
        require_service_caller(&request)?;
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
        if !has_enrolment_secret(&request, &self.enrolment_secret) {
            match caller(&request) {
                Caller::Service { kind, replica }
                    if kind == request.get_ref().service
                        && replica == request.get_ref().replica_id => {}
                Caller::Service { kind, replica } => {
                    return Err(Status::permission_denied(format!(
                        "{kind} replica {replica} may renew only its own certificate, not {}/{}",
                        request.get_ref().service,
                        request.get_ref().replica_id
                    )));
                }
                Caller::Anonymous => {
                    return Err(Status::permission_denied(
                        "a service certificate is issued only to a caller presenting the cluster's service enrolment secret or its current certificate",
                    ));
                }
            }
        }
        self.sign_service_request(request.into_inner())
            .await
            .map(Response::new)
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

/// The CA replica's own internal certificate, signed with the key it holds.
#[tonic::async_trait]
impl ServiceSigner for Signer {
    async fn sign_service(
        &self,
        request: SignServiceCsrRequest,
    ) -> Result<SignedCertificate, SignerError> {
        self.sign_service_request(request)
            .await
            .map_err(|status| SignerError::Refused(status.message().to_string()))
    }
}
