//! A node speaks only for itself, and the cluster's record follows each node's inventory.
//!
//! A forging node (the test, holding a real node certificate for node-2) reports about an
//! instance placed on node-1, about one never placed, and console lines for node-1's instance:
//! none of it reaches node-1's records. Three crash reports of its own instance dated a year
//! ahead count as one crash, timed by the gateway, and do not pause the group. A server
//! printing a megabyte without a newline is cut to a line and the session survives. When a
//! record differs from what the node runs (changed behind the gateways' backs), the inventory
//! digest notices and the full inventory repairs it. A node's layer streams to it, at most
//! `gateway.maxBlobFetches` fetches at once per gateway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use mongodb::bson::{Document, doc};
use prexor_acceptance::{
    Cluster, Proc, control_with_env, group_doc, invariants, random_bytes, reported_state, running,
    scenario_tests, wait_doc,
};
use prexor_coord::{ConsoleStreams, ValkeyBackend};
use prexor_domain::limits::{CONSOLE_LINE_MAX, CUT_MARK};
use prexor_pki::{Identity, KeyAndCsr, ServiceNames};
use prexor_proto::v1::daemon_message::Body as Up;
use prexor_proto::v1::gateway_message::Body as Down;
use prexor_proto::v1::node_commands_client::NodeCommandsClient;
use prexor_proto::v1::node_content_client::NodeContentClient;
use prexor_proto::v1::node_session_client::NodeSessionClient;
use prexor_proto::v1::{
    AckResult, Command, CommandAck, CompositionPlan, ConsoleInput, ConsoleLines, DaemonMessage,
    FetchBlobRequest, Heartbeat, Hello, HostResources, InstanceReport, InstanceState,
    NodeCommandRequest, command::Action,
};
use prexor_testkit::eventually;
use tokio::sync::mpsc;

const READY_WITHIN: Duration = Duration::from_secs(60);
const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;

/// The test acting as node `node` on `gateway`'s daemon port: it acks every command (and hands
/// start plans to the test) and sends what the test tells it to.
struct ForgedNode {
    channel: tonic::transport::Channel,
    up: mpsc::Sender<DaemonMessage>,
    plans: mpsc::Receiver<CompositionPlan>,
    acked: mpsc::Receiver<u64>,
    seq: u64,
}

impl ForgedNode {
    async fn connect(cluster: &Cluster, gateway: &Proc, node: &str) -> anyhow::Result<ForgedNode> {
        let ca = cluster.ca_from_disk("ca-1")?;
        let key = KeyAndCsr::new(&Identity::Node(node.into()), &ServiceNames::default())?;
        let cert = ca.sign_node(node, &key.csr_pem, Duration::from_secs(3600))?;
        let tls = prexor_pki::tls::daemon_client(&ca.certificate().pem, &cert.pem, &key.key_pem)?;
        let address = gateway.daemon_port.as_deref().context("a daemon port")?;
        let channel = prexor_pki::tls::connect(address, tls, Duration::from_secs(5)).await?;
        let (up, up_rx) = mpsc::channel::<DaemonMessage>(64);
        let resources = HostResources {
            memory_total_mb: 8192,
            memory_allocatable_mb: 8192,
            memory_available_mb: 8192,
            cpu_cores: 2,
            load_average_1m: 0.0,
        };
        up.send(DaemonMessage {
            body: Some(Up::Hello(Hello {
                node_id: node.into(),
                version: "forged".into(),
                resources: Some(resources),
                labels: HashMap::from([("zone".to_string(), "forge".to_string())]),
                inventory: Vec::new(),
                report_epoch: "forged-epoch".into(),
                host_id: "forged-host".into(),
                isolation: None,
            })),
        })
        .await?;
        let mut inbound = NodeSessionClient::new(channel.clone())
            .open(tokio_stream::wrappers::ReceiverStream::new(up_rx))
            .await?
            .into_inner();
        match inbound.message().await?.and_then(|m| m.body) {
            Some(Down::Welcome(_)) => {}
            other => bail!("expected a welcome, got {other:?}"),
        }
        let (plans_tx, plans) = mpsc::channel(16);
        let (acked_tx, acked) = mpsc::channel(256);
        let replies = up.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                match message.body {
                    Some(Down::Command(command)) => {
                        if let Some(Action::Start(start)) = &command.action
                            && let Some(plan) = &start.plan
                        {
                            let _ = plans_tx.send(plan.clone()).await;
                        }
                        let ack = CommandAck {
                            command_id: command.command_id,
                            result: AckResult::Done as i32,
                            ..CommandAck::default()
                        };
                        let _ = replies
                            .send(DaemonMessage {
                                body: Some(Up::Ack(ack)),
                            })
                            .await;
                    }
                    Some(Down::ReportAck(ack)) => {
                        for seq in ack.seqs {
                            let _ = acked_tx.send(seq).await;
                        }
                    }
                    _ => {}
                }
            }
        });
        let beats = up.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let beat = DaemonMessage {
                    body: Some(Up::Heartbeat(Heartbeat {
                        sent_at_unix_ms: prexor_domain::now_ms(),
                        resources: Some(resources),
                        inventory_digest: String::new(),
                    })),
                };
                if beats.send(beat).await.is_err() {
                    return;
                }
            }
        });
        Ok(ForgedNode {
            channel,
            up,
            plans,
            acked,
            seq: 0,
        })
    }

    /// Sends a report and waits for the gateway to acknowledge it (stored, or put aside).
    async fn report(
        &mut self,
        instance: &str,
        group: &str,
        plan: &str,
        state: InstanceState,
        at_ms: i64,
    ) -> anyhow::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let report = InstanceReport {
            instance_id: instance.into(),
            group: group.into(),
            state: state as i32,
            pid: 4242,
            port: 25565,
            plan_hash: plan.into(),
            exit_code: (state == InstanceState::Crashed).then_some(1),
            log_tail: vec!["forged".into()],
            at_unix_ms: at_ms,
            detail: "forged".into(),
            seq,
            ..InstanceReport::default()
        };
        self.up
            .send(DaemonMessage {
                body: Some(Up::Instance(report)),
            })
            .await?;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.acked.recv()).await {
                Ok(Some(acked)) if acked == seq => return Ok(()),
                Ok(Some(_)) => {}
                _ => bail!("report {seq} about {instance} was never acknowledged"),
            }
        }
    }

    async fn console(&self, instance: &str, line: String) -> anyhow::Result<()> {
        self.up
            .send(DaemonMessage {
                body: Some(Up::Console(ConsoleLines {
                    instance_id: instance.into(),
                    lines: vec![line],
                })),
            })
            .await?;
        Ok(())
    }

    async fn next_plan(&mut self) -> anyhow::Result<CompositionPlan> {
        tokio::time::timeout(READY_WITHIN, self.plans.recv())
            .await
            .context("no plan dispatched to the forged node")?
            .context("the forged node's stream ended")
    }
}

/// A group of fake servers on the nodes labelled `zone = <zone>`.
fn group_in(name: &str, zone: &str) -> anyhow::Result<Document> {
    let mut group = group_doc(name, 1, &[])?;
    group
        .get_document_mut("spec")?
        .insert("affinity", doc! { "zone": zone });
    Ok(group)
}

async fn console_lines(cluster: &Cluster, instance: &str) -> anyhow::Result<Vec<String>> {
    let backend = ValkeyBackend::connect(&cluster.stores.valkey_url, Duration::from_secs(2))?;
    let streams = ConsoleStreams::new(backend, cluster.stores.namespace.clone());
    Ok(streams
        .tail(instance, 200)
        .await?
        .into_iter()
        .map(|l| l.line)
        .collect())
}

async fn speaks_for_itself(cluster: &Cluster) -> anyhow::Result<()> {
    // One layer fetch at a time per gateway.
    let mut fleet = control_with_env(cluster, &[("PREXOR_GATEWAY__MAX_BLOB_FETCHES", "1")]).await?;
    fleet.enrol(cluster, "node-1").await?;
    let mut scheduler = cluster.service("scheduler", "scheduler-1", "")?;
    scheduler.wait_ready(READY_WITHIN).await?;
    // h's servers get a 12 MiB layer (bigger than what HTTP/2 buffers for a reader that waits).
    let layer = random_bytes(12 << 20);
    let layer_hash = cluster.store().await?.put_blob(&layer).await?;
    let mut h = group_in("h", "forge")?;
    h.get_document_mut("spec")?.insert(
        "templates",
        vec![doc! { "hash": &layer_hash, "name": "big" }],
    );
    let db = cluster.stores.mongo().await?;
    db.collection::<Document>("groups")
        .insert_many([group_in("g", "test")?, h])
        .await?;
    let g1 = running(cluster, &["g-1"]).await?.remove(0);
    let g1_plan = g1.get_str("planHash")?.to_owned();

    // node-2, forged: it gets h-1 and runs it (as far as the cluster can tell).
    let mut forged = ForgedNode::connect(cluster, &fleet.gateways[0], "node-2").await?;
    let h1 = forged.next_plan().await?;
    let now = prexor_domain::now_ms();
    forged
        .report("h-1", "h", &h1.plan_hash, InstanceState::Running, now)
        .await?;
    running(cluster, &["h-1"]).await?;

    // Reports about another node's instance and about one never placed are put aside as
    // strays of node-2; console lines for another node's instance are refused.
    forged
        .report("g-1", "g", &g1_plan, InstanceState::Crashed, now)
        .await?;
    forged
        .report("ghost-1", "g", "made-up", InstanceState::Running, now)
        .await?;
    forged.console("g-1", "forged console line".into()).await?;
    let g1_now = wait_doc(cluster, "instances", "g-1", "present", |_| true).await?;
    let reported = g1_now.get_document("reported")?;
    ensure!(
        reported.get_str("nodeId") == Ok("node-1") && reported_state(&g1_now) == "RUNNING",
        "node-2's report changed g-1's record: {g1_now:?}"
    );
    wait_doc(cluster, "stray_instances", "g-1@node-2", "recorded", |_| {
        true
    })
    .await?;
    wait_doc(
        cluster,
        "stray_instances",
        "ghost-1@node-2",
        "recorded",
        |_| true,
    )
    .await?;
    ensure!(
        db.collection::<Document>("instances")
            .find_one(doc! { "_id": "ghost-1" })
            .await?
            .is_none(),
        "a node's report created an instance record"
    );
    ensure!(
        db.collection::<Document>("crashes")
            .count_documents(doc! { "instanceId": "g-1" })
            .await?
            == 0,
        "a stray's crash was recorded as g-1's"
    );

    // node-2's own instance "crashes" three times, dated a year ahead: one crash, at the
    // gateway's time; the group is placed again, not paused.
    for _ in 0..3 {
        forged
            .report(
                "h-1",
                "h",
                &h1.plan_hash,
                InstanceState::Crashed,
                now + YEAR_MS,
            )
            .await?;
    }
    let again = forged.next_plan().await?;
    ensure!(again.plan_hash != h1.plan_hash, "h-1 was placed again");
    forged
        .report(
            "h-1",
            "h",
            &again.plan_hash,
            InstanceState::Running,
            prexor_domain::now_ms(),
        )
        .await?;
    let crashes: Vec<Document> = cluster
        .store()
        .await?
        .find_all("crashes", "test", doc! { "instanceId": "h-1" })
        .await?;
    ensure!(crashes.len() == 1, "one crash per plan: {crashes:?}");
    let at = crashes[0].get_i64("atMs")?;
    ensure!(
        at >= now - 60_000 && at <= prexor_domain::now_ms(),
        "the crash is timed by the gateway, not the node: {crashes:?}"
    );
    let state = db
        .collection::<Document>("group_state")
        .find_one(doc! { "_id": "h" })
        .await?;
    ensure!(
        state
            .as_ref()
            .is_none_or(|s| s.get_i64("pausedUntilMs").is_err()),
        "the group was paused: {state:?}"
    );

    // Its layer streams to it, one fetch at a time: a second fetch while the first is still
    // being read is refused as busy, and goes through once the first is given up.
    ensure!(
        h1.layers.iter().any(|l| l.hash == layer_hash),
        "h-1's plan names its layer: {h1:?}"
    );
    let fetch = || {
        let channel = forged.channel.clone();
        let hash = layer_hash.clone();
        async move {
            NodeContentClient::new(channel)
                .fetch_blob(FetchBlobRequest {
                    node_id: "node-2".into(),
                    hash,
                })
                .await
        }
    };
    let mut held = fetch().await?.into_inner();
    let first = held.message().await?.context("a first chunk")?;
    ensure!(
        layer.starts_with(&first.data),
        "the first chunk is the layer's"
    );
    let busy = fetch().await;
    ensure!(
        busy.as_ref()
            .err()
            .is_some_and(|s| s.code() == tonic::Code::ResourceExhausted),
        "a second fetch past gateway.maxBlobFetches was not refused as busy: {:?}",
        busy.map(|_| ())
    );
    drop(held);
    let fetched = eventually(
        "a fetch once the first was given up",
        READY_WITHIN,
        async || {
            let mut stream = match fetch().await {
                Ok(response) => response.into_inner(),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => return Ok(None),
                Err(status) => bail!("fetching the layer: {status}"),
            };
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await? {
                bytes.extend_from_slice(&chunk.data);
            }
            Ok(Some(bytes))
        },
    )
    .await?;
    ensure!(
        prexor_domain::sha256_hex(&fetched) == layer_hash,
        "the streamed layer differs ({} bytes)",
        fetched.len()
    );

    // A node is served only the layers its current plans name: not any blob of the store.
    let elsewhere = cluster.store().await?.put_blob(b"not for node-2").await?;
    let refused = NodeContentClient::new(forged.channel.clone())
        .fetch_blob(FetchBlobRequest {
            node_id: "node-2".into(),
            hash: elsewhere,
        })
        .await;
    ensure!(
        refused
            .as_ref()
            .err()
            .is_some_and(|s| s.code() == tonic::Code::PermissionDenied),
        "a blob no plan of node-2 names was served: {:?}",
        refused.map(|_| ())
    );

    // A console line of a megabyte from node-2 is cut by the gateway.
    forged.console("h-1", "y".repeat(1 << 20)).await?;
    let cut = eventually(
        "the forged long line in h-1's console",
        READY_WITHIN,
        async || {
            Ok(console_lines(cluster, "h-1")
                .await?
                .into_iter()
                .find(|l| l.starts_with("yyy")))
        },
    )
    .await?;
    ensure!(
        cut.len() <= CONSOLE_LINE_MAX && cut.ends_with(CUT_MARK),
        "{} bytes",
        cut.len()
    );
    ensure!(
        !console_lines(cluster, "g-1")
            .await?
            .iter()
            .any(|l| l.contains("forged console line")),
        "node-2's console line reached g-1's console"
    );

    // node-1's server prints a megabyte without a newline: cut, and the session goes on.
    let node_before = wait_doc(cluster, "nodes", "node-1", "online", |_| true).await?;
    let channel = cluster.internal_channel(&fleet.gateways[1]).await?;
    let mut commands = NodeCommandsClient::new(channel);
    let mark = prexor_acceptance::fence_mark(cluster, "group:g").await?;
    for (id, line) in [
        ("blob", "blob 1048576".to_string()),
        ("after", "echo after the blob".into()),
    ] {
        let reply = commands
            .send(NodeCommandRequest {
                node_id: "node-1".into(),
                command: Some(Command {
                    command_id: format!("console-{id}"),
                    scope: "group:g".into(),
                    fence_token: mark as u64,
                    action: Some(Action::Console(ConsoleInput {
                        instance_id: "g-1".into(),
                        line,
                    })),
                }),
                timeout_ms: 10_000,
                forwarded: false,
            })
            .await?
            .into_inner();
        ensure!(
            reply
                .ack
                .as_ref()
                .is_some_and(|a| a.result() == AckResult::Done),
            "{reply:?}"
        );
    }
    let lines = eventually("the line after the blob", READY_WITHIN, async || {
        let lines = console_lines(cluster, "g-1").await?;
        Ok(lines.iter().any(|l| l == "after the blob").then_some(lines))
    })
    .await?;
    let blob = lines
        .iter()
        .find(|l| l.starts_with("xxx"))
        .context("the blob line")?;
    ensure!(
        blob.len() == CONSOLE_LINE_MAX && blob.ends_with(CUT_MARK),
        "{} bytes",
        blob.len()
    );
    let node_after = wait_doc(cluster, "nodes", "node-1", "online", |_| true).await?;
    ensure!(
        node_after.get_i64("ownershipToken")? == node_before.get_i64("ownershipToken")?,
        "node-1's session was re-opened"
    );

    // Records changed behind the gateways' backs (as a restore might): the digest differs, the
    // full inventory repairs g-1's report and ends a stray node-1 never ran.
    db.collection::<Document>("instances")
        .update_one(
            doc! { "_id": "g-1" },
            doc! { "$set": { "reported.state": "STARTING" } },
        )
        .await?;
    db.collection::<Document>("stray_instances")
        .insert_one(doc! {
            "_id": "phantom-1@node-1", "instanceId": "phantom-1", "group": "g", "nodeId": "node-1",
            "reported": { "state": "RUNNING", "planHash": "p-phantom", "nodeId": "node-1" },
        })
        .await?;
    wait_doc(
        cluster,
        "instances",
        "g-1",
        "RUNNING again by report",
        |d| reported_state(d) == "RUNNING",
    )
    .await?;
    eventually("the phantom stray to end", READY_WITHIN, async || {
        let left = db
            .collection::<Document>("stray_instances")
            .find_one(doc! { "_id": "phantom-1@node-1", "reported.state": "RUNNING" })
            .await?;
        Ok(left.is_none().then_some(()))
    })
    .await?;
    let mut mismatches = 0.0;
    for gateway in &fleet.gateways {
        mismatches += gateway
            .metric("prexor_gateway_inventory_mismatches_total")
            .await?;
    }
    ensure!(mismatches >= 1.0, "the digest noticed the difference");

    drop(forged);
    invariants(cluster, &["node-1"]).await?;
    fleet.stop_with(&mut scheduler).await
}

scenario_tests! {
    a_node_speaks_only_for_itself_and_the_record_follows_its_inventory: speaks_for_itself,
}
