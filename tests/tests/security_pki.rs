//! Certificates that no longer stand stop working at once (docs/security.md): a revoked node
//! certificate closes the live session within seconds and is refused at the next handshake; a
//! renewed one revokes its predecessor once the node uses it, while the session it runs on
//! carries on; a deleted node cannot come back; internal ports refuse a revoked service
//! certificate, and a replica's renewal revokes the certificate it replaced.

use std::time::Duration;

use anyhow::{Context, ensure};
use mongodb::bson::{Document, doc};
use prexor_acceptance::{
    Cluster, Operators, Proc, find_doc, grpc_health, nodes_with, operators, scenario_tests,
    stop_all, wait_doc, wait_state,
};
use prexor_model::pki as records;
use prexor_pki::{CertInfo, pem_to_der};
use prexor_testkit::eventually;

const WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// The serial of the certificate node `node`'s daemon holds now (`<dir>/<node>/certs/node.crt`).
fn node_serial(cluster: &Cluster, node: &str) -> anyhow::Result<String> {
    let pem = std::fs::read_to_string(cluster.dir.join(node).join("certs/node.crt"))?;
    Ok(CertInfo::parse(&pem_to_der(&pem, "CERTIFICATE")?)?.serial)
}

async fn certificate(cluster: &Cluster, serial: &str) -> anyhow::Result<Document> {
    find_doc(cluster, "certificates", serial)
        .await?
        .with_context(|| format!("no certificate {serial} in the ledger"))
}

/// `daemon` is turned away at a handshake (`what`) because its certificate was revoked, and is
/// not connected (`why`).
async fn refused_as_revoked(daemon: &Proc, what: &str, why: &str) -> anyhow::Result<()> {
    eventually(what, WITHIN, async || {
        Ok(daemon.log_text().contains("was revoked").then_some(()))
    })
    .await?;
    ensure!(daemon.get("/readyz").await?.0 != 200, "{why}");
    Ok(())
}

async fn revocation(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes_with(
        cluster,
        &["node-1", "node-2"],
        "nodeCertValidity = \"30s\"\nserviceCertValidity = \"30s\"\n",
    )
    .await?;
    let Operators { mut api, rest, .. } = operators(cluster, 0).await?;
    let store = cluster.store().await?;

    // Revoked while connected: the session ends within seconds, and reconnecting is refused.
    let serial = node_serial(cluster, "node-1")?;
    ensure!(records::revoke(&store, &serial, "compromised (test)").await?);
    wait_doc(cluster, "nodes", "node-1", "no longer online", |d| {
        d.get_str("state") != Ok("ONLINE")
    })
    .await?;
    refused_as_revoked(
        &fleet.daemons[0],
        "node-1 refused at its next handshake",
        "a node with a revoked certificate is not connected",
    )
    .await?;

    // A renewal: node-2 renews (30 s certificates renew at 20 s); once it uses the new
    // certificate (here: at its next connection), the old one is revoked as superseded.
    let before = node_serial(cluster, "node-2")?;
    let renewed = eventually("node-2 renewing its certificate", WITHIN, async || {
        let now = node_serial(cluster, "node-2")?;
        Ok((now != before).then_some(now))
    })
    .await?;
    ensure!(
        fleet.daemons[1].get("/readyz").await?.0 == 200,
        "the session survives the renewal"
    );
    let mut old_daemon = fleet.daemons.remove(1);
    old_daemon.stop(EXIT_WITHIN).await?;
    let mut again = fleet.start_daemon(cluster, "daemon-node-2-b", "node-2", None)?;
    again.wait_ready(WITHIN).await?;
    let old = certificate(cluster, &before).await?;
    ensure!(
        old.get_str("superseded_by") == Ok(renewed.as_str())
            && old.get_i64("revoked_at_ms").is_ok_and(|at| at > 0),
        "the replaced certificate is revoked, superseded by the new one: {old:?}"
    );

    // A deleted node cannot come back.
    again.stop(EXIT_WITHIN).await?;
    wait_state(cluster, "nodes", "node-2", "OFFLINE").await?;
    let (status, body) = rest.delete("/nodes/node-2").await?;
    ensure!(status == 204, "deleting node-2: {status} {body}");
    let back = fleet.start_daemon(cluster, "daemon-node-2-c", "node-2", None)?;
    refused_as_revoked(
        &back,
        "the deleted node refused",
        "a deleted node stays out",
    )
    .await?;

    // An internal port refuses a revoked service certificate (new connections).
    let registry = cluster.registry(Duration::from_secs(15))?;
    let probe = prexor_testkit::enrol_internal_tls(&store, registry, "api", "probe")
        .await
        .map_err(anyhow::Error::msg)?;
    let leaf = probe.slot.leaf().context("the probe's certificate")?;
    let probe_serial = CertInfo::parse(leaf.as_ref())?.serial;
    ensure!(records::revoke(&store, &probe_serial, "test").await?);
    // Gateways re-read the revoked service certificates every 5 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let address = fleet.gateways[0].grpc.as_deref().context("gateway port")?;
    let refused = grpc_health(probe.peers.get(address)?).await;
    ensure!(
        refused.is_err(),
        "a revoked service certificate was accepted"
    );
    let trusted = cluster.internal_channel(&fleet.gateways[0]).await?;
    ensure!(
        grpc_health(trusted).await? == "SERVING",
        "other certificates still work"
    );

    // Replicas renew their certificates too (30 s ones at 20 s): each renewal revokes the
    // certificate it replaced, once the new one is in place, and the replica carries on.
    let superseded = eventually("a gateway renewal revoking its predecessor", WITHIN, async || {
        let found = store
            .find_all(
                "certificates",
                "test",
                doc! { "kind": "gateway", "subject": "gateway-1", "superseded_by": { "$exists": true } },
            )
            .await?;
        Ok(found.into_iter().next())
    })
    .await?;
    ensure!(
        superseded.get_i64("revoked_at_ms").is_ok_and(|at| at > 0),
        "the replaced gateway certificate is revoked: {superseded:?}"
    );
    // Its successors (renewed again, perhaps) lead to one that stands.
    let mut successor = certificate(cluster, superseded.get_str("superseded_by")?).await?;
    while let Ok(next) = successor.get_str("superseded_by") {
        successor = certificate(cluster, next).await?;
    }
    ensure!(
        successor.get("revoked_at_ms") == Some(&mongodb::bson::Bson::Null),
        "the newest certificate stands: {successor:?}"
    );
    let fresh = cluster.internal_channel(&fleet.gateways[0]).await?;
    ensure!(
        grpc_health(fresh).await? == "SERVING",
        "the renewed gateway still serves"
    );

    drop(back);
    stop_all([&mut api], EXIT_WITHIN).await?;
    fleet.daemons.truncate(0);
    stop_all(
        fleet.gateways.iter_mut().chain([&mut fleet.ca]),
        EXIT_WITHIN,
    )
    .await
}

/// A bootstrap whose publish answered with an error although the CA was published (the answer
/// got lost) keeps the key: the cluster never ends with a CA and no key anywhere.
async fn lost_publish_answer(cluster: &Cluster) -> anyhow::Result<()> {
    let switch = cluster.dir.join("publish-answer.lost");
    std::fs::write(&switch, b"")?;
    let armed = format!("ca.after-publish=fail-while:{}", switch.display());
    let mut ca = cluster.service_with_extra_and_env(
        "ca",
        "ca-1",
        &cluster.ca_extra("ca-1"),
        &[("PREXORCLOUD_FAILPOINTS", &armed)],
    )?;
    ca.wait_ready(WITHIN).await?;
    ensure!(
        cluster.dir.join("ca-1/certs/ca/ca.key").exists(),
        "the CA key is in place:\n{}",
        ca.log_text()
    );
    ensure!(
        ca.log_text()
            .contains("the cluster has this CA: keeping its key"),
        "{}",
        ca.log_text()
    );
    // It signs: a gateway gets its certificates and becomes ready.
    let mut gateway = cluster.service("gateway", "gateway-1", "")?;
    gateway.wait_ready(WITHIN).await?;
    stop_all([&mut gateway, &mut ca], EXIT_WITHIN).await
}

/// The CA gives a replica a certificate only for its own names, not another replica's host.
async fn foreign_names(cluster: &Cluster) -> anyhow::Result<()> {
    let mut ca = cluster.service("ca", "ca-1", &cluster.ca_extra("ca-1"))?;
    ca.wait_ready(WITHIN).await?;
    let store = cluster.store().await?;
    let registry = cluster.registry(Duration::from_secs(60))?;
    // A gateway on another host, as the registry knows it.
    registry
        .heartbeat(&prexor_coord::ReplicaRecord {
            kind: prexor_domain::ServiceKind::Gateway,
            id: "gateway-elsewhere".into(),
            version: "test".into(),
            profile: "production".into(),
            http_address: "gw.elsewhere.example:9091".into(),
            grpc_address: Some("gw.elsewhere.example:9090".into()),
            started_at_ms: prexor_domain::now_ms(),
            ready: true,
            leases_held: 0,
            heartbeat_age_ms: 0,
            notes: Vec::new(),
            clock_skew_ms: None,
            coordination: None,
        })
        .await?;
    let internal = prexor_pki::internal::InternalTls::new()?;
    let ca_pem = records::published_ca(&store)
        .await?
        .context("the CA")?
        .certificate
        .pem;
    internal.trust.set(&ca_pem)?;
    let secret = records::service_enrolment_secret(&store).await?;
    let signer =
        prexor_serve::signer::SignerClient::new(registry, internal.peers.clone(), &secret)?;
    let names = |dns: &str| prexor_pki::ServiceNames {
        dns: vec![dns.to_owned()],
        ips: Vec::new(),
    };
    let refused = prexor_serve::signer::issue_service_certificate(
        &signer,
        "api",
        "intruder",
        &names("gw.elsewhere.example"),
    )
    .await;
    ensure!(
        refused.as_ref().err().is_some_and(|e| e
            .to_string()
            .contains("is the host of gateway replica gateway-elsewhere")),
        "a certificate for another replica's host: {:?}",
        refused.map(|_| ())
    );
    prexor_serve::signer::issue_service_certificate(
        &signer,
        "api",
        "intruder",
        &names("api.intruder.example"),
    )
    .await?;
    ca.stop(EXIT_WITHIN).await
}

scenario_tests! {
    certificates_that_no_longer_stand_stop_working: revocation,
    a_bootstrap_whose_publish_answer_is_lost_keeps_the_ca_key: lost_publish_answer,
    a_replica_gets_no_certificate_for_another_replicas_host: foreign_names,
}
