//! Internal mTLS for a tool (the acceptance suite, benchmarks) acting as a service replica.

use prexor_pki::ServiceNames;
use prexor_pki::internal::InternalTls;
use prexor_serve::signer::{SignerClient, issue_service_certificate};

/// Internal mTLS as service replica `kind`/`replica_id`: trusts the cluster CA published in
/// `store` and obtains a certificate the way a replica obtains its first one (the service
/// enrolment secret, a CA replica from `registry`).
pub async fn enrol_internal_tls(
    store: &prexor_store::Store,
    registry: prexor_coord::Registry,
    kind: &str,
    replica_id: &str,
) -> anyhow::Result<InternalTls> {
    let internal = InternalTls::new()?;
    let ca = prexor_model::pki::published_ca(store)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the cluster has no CA yet"))?;
    internal.trust.set(&ca.certificate.pem)?;
    let secret = prexor_model::pki::service_enrolment_secret(store).await?;
    let signer = SignerClient::new(registry, internal.peers.clone(), &secret)?;
    let names = ServiceNames {
        dns: vec!["localhost".into()],
        ips: vec![std::net::Ipv4Addr::LOCALHOST.into()],
    };
    let (key, _) = issue_service_certificate(&signer, kind, replica_id, &names).await?;
    internal.slot.set(key);
    Ok(internal)
}
