//! Keeping a replica's certificate: issued by a CA replica, renewed, and the replaced one
//! revoked in the ledger.

use std::sync::Arc;
use std::time::Duration;

use prexor_domain::now_secs;
use prexor_pki::ServiceNames;
use prexor_pki::tls::CertSlot;
use tokio_util::sync::CancellationToken;

use super::{CertState, RETRY, installed, not_installed};
use crate::signer::{ServiceSigner, issue_service_certificate};

/// The certificate a replica asks the CA for.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The service kind (`api`, `gateway`, ...).
    pub kind: &'static str,
    pub replica_id: String,
    pub names: ServiceNames,
}

/// The serial of a certificate chain's leaf.
fn leaf_serial(key: &rustls::sign::CertifiedKey) -> Option<String> {
    let leaf = key.cert.first()?;
    prexor_pki::CertInfo::parse(leaf.as_ref())
        .ok()
        .map(|info| info.serial)
}

/// Obtains this replica's certificate ([`Wanted`]) from a CA replica and renews it at two
/// thirds of its lifetime, swapping it into `slot`; once the renewed one is in place, the one
/// it replaced is revoked in the ledger (`store`), so a renewal leaves one valid certificate per
/// use. `purpose` labels the expiry metric (`prexor_tls_certificate_expiry_timestamp_seconds{use}`).
pub async fn keep_certificate(
    signer: Arc<dyn ServiceSigner>,
    store: prexor_store::Store,
    wanted: Wanted,
    slot: Arc<CertSlot>,
    state: CertState,
    purpose: &'static str,
    shutdown: CancellationToken,
) {
    // A replaced certificate not yet revoked (MongoDB did not answer): (old, new).
    let mut replaced: Option<(String, String)> = None;
    loop {
        let mut wait = match issue_service_certificate(
            signer.as_ref(),
            wanted.kind,
            &wanted.replica_id,
            &wanted.names,
        )
        .await
        {
            Ok((key, not_after)) => {
                let due = key
                    .cert
                    .first()
                    .and_then(|leaf| prexor_pki::CertInfo::parse(leaf.as_ref()).ok())
                    .map_or(not_after, |info| prexor_pki::renewal_due(&info));
                let old = slot.current().and_then(|k| leaf_serial(&k));
                let new = leaf_serial(&key);
                installed(&slot, &state, purpose, key, not_after);
                tracing::info!(not_after, purpose, "certificate issued by the cluster CA");
                if let (Some(old), Some(new)) = (old, new)
                    && old != new
                {
                    replaced = Some((old, new));
                }
                Duration::from_secs((due - now_secs()).max(5) as u64)
            }
            Err(reason) => {
                tracing::warn!(purpose, "no certificate yet: {reason}");
                not_installed(&state, reason.to_string());
                RETRY
            }
        };
        if let Some((old, new)) = &replaced {
            match prexor_model::pki::supersede(&store, old, new).await {
                Ok(()) => replaced = None,
                Err(err) => {
                    tracing::warn!(purpose, %old, "the replaced certificate is not revoked yet, retrying: {err}");
                    wait = wait.min(RETRY);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
