//! This replica's internal certificate: once the cluster CA certificate is published in
//! MongoDB it becomes the trust anchor of internal mTLS, and a service certificate for this
//! replica (`<kind>/<replica id>`, valid for its advertised host and loopback) is obtained and
//! renewed at two thirds of its lifetime ([`crate::tls::keep_certificate`]).

use std::sync::Arc;
use std::time::Duration;

use crate::signer::ServiceSigner;

use crate::Service;
use crate::tls::{CertState, Wanted, certificate_names, keep_certificate};

/// How often MongoDB is asked for the CA certificate while the cluster has none.
const CA_POLL: Duration = Duration::from_secs(1);

/// How often a replica re-reads the revoked service certificates its internal port refuses.
const REVOCATIONS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps the internal port's list of revoked service certificates current.
pub(crate) async fn keep_revocations(service: Service) {
    loop {
        match prexor_model::pki::revoked_service_serials(&service.store).await {
            Ok(serials) => service.internal.trust.set_revoked(serials),
            Err(err) => {
                tracing::debug!(error = %err, "revoked service certificates not read (the last list stays)")
            }
        }
        tokio::select! {
            _ = service.shutdown.cancelled() => return,
            _ = tokio::time::sleep(REVOCATIONS_EVERY) => {}
        }
    }
}

pub(crate) async fn keep_internal_certificate(
    service: Service,
    signer: Arc<dyn ServiceSigner>,
    state: CertState,
) {
    let mut waiting_logged = false;
    loop {
        match prexor_model::pki::published_ca(&service.store).await {
            Ok(Some(ca)) => match service.internal.trust.set(&ca.certificate.pem) {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "the cluster CA certificate cannot be used");
                    *state.lock().expect("cert state lock") =
                        Err(format!("the cluster CA certificate cannot be used: {err}"));
                }
            },
            Ok(None) => {
                if !waiting_logged {
                    tracing::info!(
                        "internal mTLS waits for the cluster CA certificate (start a prexor-ca)"
                    );
                    waiting_logged = true;
                }
                *state.lock().expect("cert state lock") =
                    Err("the cluster has no CA yet (start a prexor-ca)".into());
            }
            Err(err) => {
                *state.lock().expect("cert state lock") =
                    Err(format!("cannot read the cluster CA certificate: {err}"));
            }
        }
        tokio::select! {
            _ = service.shutdown.cancelled() => return,
            _ = tokio::time::sleep(CA_POLL) => {}
        }
    }
    let config = &service.config;
    let wanted = Wanted {
        kind: config.kind.as_str(),
        replica_id: config.replica_id.clone(),
        names: certificate_names(&config.advertise_host, &[]),
    };
    keep_certificate(
        signer,
        service.store.clone(),
        wanted,
        service.internal.slot.clone(),
        state,
        "internal",
        service.shutdown.clone(),
    )
    .await;
}
