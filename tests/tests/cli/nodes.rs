//! Nodes: `list`, `get`, `cordon`, `uncordon`; a `join-token` a second daemon enrols with;
//! `drain --wait`, `undrain`, and an open drain cancelled under a waiting `drain --wait`.

use std::process::Stdio;

use anyhow::{Context, ensure};
use mongodb::bson::doc;
use prexor_acceptance::{
    Cluster, find_docs, get_doc, live_instances, reported_state, wait_doc, wait_state,
};

use crate::{READY_WITHIN, Stack};

/// Operates node-1, enrols node-2 (its daemon joins the fleet) and drains node-1 onto it.
pub async fn nodes_and_drains(cluster: &Cluster, stack: &mut Stack) -> anyhow::Result<()> {
    let Stack {
        fleet,
        scheduler,
        ctl,
        rest,
        ..
    } = stack;

    // ---- nodes list, get, cordon, uncordon.
    let listed = ctl.json(&["nodes", "list"])?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(1)
            && listed[0]["id"] == "node-1"
            && listed[0]["state"] == "ONLINE",
        "{listed}"
    );
    ctl.says(&["nodes", "list"], &["node-1", "ONLINE"])?;
    let shown = ctl.yaml(&["nodes", "get", "node-1"])?;
    ensure!(
        shown["id"] == "node-1" && shown["labels"]["zone"] == "test" && shown["cordoned"] == false,
        "{shown}"
    );
    ctl.says(&["nodes", "cordon", "node-1"], &["node node-1 cordoned"])?;
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(node["cordoned"] == true, "{node}");
    ctl.ok(&["nodes", "uncordon", "node-1"])?;
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(node["cordoned"] == false, "{node}");

    // ---- nodes join-token: a second daemon enrols with it.
    let token = ctl.ok(&["nodes", "join-token", "node-2", "--ttl", "10m"])?;
    let token = token.trim().to_owned();
    let parsed =
        prexor_pki::JoinToken::parse(&token).with_context(|| format!("a join token: {token:?}"))?;
    ensure!(parsed.node_id == "node-2", "{parsed:?}");
    let stored = find_docs(cluster, "join_tokens", doc! { "node_id": "node-2" }).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    ensure!(
        stored.len() == 1
            && stored[0]
                .get_i64("expires_at_ms")
                .is_ok_and(|at| { at > now + 9 * 60_000 && at <= now + 10 * 60_000 }),
        "{stored:?}"
    );
    let json_token = ctl.json(&["nodes", "join-token", "node-3", "--ttl", "5m"])?;
    ensure!(
        json_token["nodeId"] == "node-3"
            && json_token["token"]
                .as_str()
                .is_some_and(|t| t.starts_with("pxj1.node-3.")),
        "{json_token}"
    );
    let mut second_daemon = fleet.start_daemon(cluster, "daemon-node-2", "node-2", Some(&token))?;
    second_daemon.wait_ready(READY_WITHIN).await?;
    fleet.daemons.push(second_daemon);
    wait_state(cluster, "nodes", "node-2", "ONLINE").await?;
    let used = find_docs(cluster, "join_tokens", doc! { "node_id": "node-2" }).await?;
    ensure!(
        used.len() == 1 && used[0].get_i64("used_at_ms").is_ok(),
        "the token was redeemed: {used:?}"
    );

    // ---- nodes drain --wait: node-1 ends empty and cordoned, lobby-1 runs on node-2.
    ctl.says(
        &["nodes", "drain", "node-1", "--timeout", "30s", "--wait"],
        &["drain of node-1: DONE"],
    )?;
    let drain = get_doc(cluster, "node_drains", "node-1").await?;
    ensure!(
        drain.get_str("state") == Ok("DONE") && drain.get_i64("timeoutMs") == Ok(30_000),
        "{drain:?}"
    );
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(
        node["cordoned"] == true && node["drain"]["state"] == "DONE",
        "{node}"
    );
    let left = live_instances(cluster, doc! { "nodeId": "node-1" }).await?;
    ensure!(left.is_empty(), "still on node-1: {left:?}");
    wait_doc(cluster, "instances", "lobby-1", "RUNNING on node-2", |d| {
        d.get_str("state") == Ok("RUNNING")
            && reported_state(d) == "RUNNING"
            && d.get_str("nodeId") == Ok("node-2")
    })
    .await?;
    ctl.says(&["nodes", "undrain", "node-1"], &["uncordoned"])?;
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(node["cordoned"] == false, "{node}");
    // An open drain is cancelled by undrain, and `drain --wait` then fails. The scheduler is
    // held still (SIGSTOP, well under the lease TTL) so the drain cannot finish first.
    scheduler.signal(libc::SIGSTOP);
    let waiting = ctl.start(
        &["nodes", "drain", "node-1", "--timeout", "30s", "--wait"],
        Stdio::null(),
    );
    let cancelled = async {
        let waiting = waiting?;
        wait_doc(cluster, "node_drains", "node-1", "PENDING again", |d| {
            d.get_str("state") == Ok("PENDING")
        })
        .await?;
        let out = ctl.ok(&["nodes", "undrain", "node-1"])?;
        anyhow::Ok((waiting, out))
    }
    .await;
    scheduler.signal(libc::SIGCONT);
    let (waiting, out) = cancelled?;
    ensure!(out.contains("drain cancelled"), "{out}");
    let waited = waiting.wait_with_output()?;
    let waited_out = String::from_utf8_lossy(&waited.stdout);
    ensure!(
        !waited.status.success() && waited_out.contains("drain of node-1: CANCELLED"),
        "drain --wait of a cancelled drain: {} {waited_out}{}",
        waited.status,
        String::from_utf8_lossy(&waited.stderr)
    );
    let drain = get_doc(cluster, "node_drains", "node-1").await?;
    ensure!(
        drain.get_str("state") == Ok("CANCELLED") && drain.get_str("cancelledBy") == Ok("admin"),
        "{drain:?}"
    );
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(node["cordoned"] == false, "{node}");
    Ok(())
}
