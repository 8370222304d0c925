//! Gateway sessions and node daemons with real processes: commands reach a node through any
//! gateway, server processes survive the owning gateway's death, a paused gateway that wakes up
//! closes its stale stream and cannot write, and stale fencing tokens are refused, also after a
//! daemon restart; certificates rotating under load keep every daemon stream open.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use mongodb::bson::{Document, doc};
use prexor_acceptance::{
    Cluster, Fleet, Proc, binary, count_docs, find_doc, find_one, free_port, nodes_with,
    refused_call, reported_state, scenario_tests, stop_all, tar_gz, wait_doc, wait_state,
};
use prexor_coord::{ConsoleStreams, ValkeyBackend};
use prexor_proto::v1::command::Action;
use prexor_proto::v1::node_commands_client::NodeCommandsClient;
use prexor_proto::v1::{
    AckResult, Command, CommandAck, CompositionPlan, ConsoleInput, NodeCommandReply,
    NodeCommandRequest, PlanFile, StartInstance, StopInstance, TemplateLayer,
};
use tonic::Code;
use tonic::transport::Channel;

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);

struct Stack {
    ca: Proc,
    gateways: Vec<Proc>,
    daemon: Proc,
    /// Which of `gateways` owns node-1's session, and with which token.
    owner_index: usize,
    token: i64,
}

async fn stack(cluster: &Cluster) -> anyhow::Result<Stack> {
    stack_with(cluster, "").await
}

/// [`stack`] with `ca_keys` added to the CA's `[ca]` table.
async fn stack_with(cluster: &Cluster, ca_keys: &str) -> anyhow::Result<Stack> {
    let Fleet {
        ca,
        gateways,
        mut daemons,
    } = nodes_with(cluster, &["node-1"], ca_keys).await?;
    let daemon = daemons.remove(0);
    let node = wait_state(cluster, "nodes", "node-1", "ONLINE").await?;
    let (owner, token) = owner_of(&node);
    let owner_index = gateways
        .iter()
        .position(|g| g.name == owner)
        .context("the owner is one of this test's gateways")?;
    Ok(Stack {
        ca,
        gateways,
        daemon,
        owner_index,
        token,
    })
}

async fn node_doc(cluster: &Cluster, node: &str) -> anyhow::Result<Document> {
    find_doc(cluster, "nodes", node)
        .await?
        .with_context(|| format!("no nodes record for {node}"))
}

fn owner_of(doc: &Document) -> (String, i64) {
    (
        doc.get_str("gateway").unwrap_or_default().to_string(),
        doc.get_i64("ownershipToken").unwrap_or_default(),
    )
}

/// Waits until node-1 is owned by `gateway` with a token above `token`; its record.
async fn owned_by(
    cluster: &Cluster,
    gateway: &str,
    token: i64,
    what: &str,
) -> anyhow::Result<Document> {
    wait_doc(cluster, "nodes", "node-1", what, |d| {
        let (owner, new_token) = owner_of(d);
        owner == gateway && new_token > token
    })
    .await
}

/// Waits until node-1 reported `state` for `instance`; its record.
async fn wait_reported(cluster: &Cluster, instance: &str, state: &str) -> anyhow::Result<Document> {
    wait_doc(cluster, "instances", instance, state, |d| {
        reported_state(d) == state
    })
    .await
}

async fn commands(
    cluster: &Cluster,
    gateway: &Proc,
) -> anyhow::Result<NodeCommandsClient<Channel>> {
    Ok(NodeCommandsClient::new(
        cluster.internal_channel(gateway).await?,
    ))
}

fn command(id: &str, scope: &str, token: u64, action: Action) -> Command {
    Command {
        command_id: id.to_string(),
        scope: scope.to_string(),
        fence_token: token,
        action: Some(action),
    }
}

fn start(instance: &str, port: u16, extra: &[&str]) -> anyhow::Result<Action> {
    let server = binary("prexor-fakeserver")?;
    let mut argv = vec![
        server.display().to_string(),
        "--port".to_string(),
        "{port}".to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Ok(Action::Start(StartInstance {
        plan: Some(CompositionPlan {
            instance_id: instance.to_string(),
            group: "lobby".into(),
            plan_hash: format!("plan-{instance}-1"),
            command: argv,
            env: Default::default(),
            port: u32::from(port),
            memory_mb: 512,
            files: vec![PlanFile {
                path: "server.properties".into(),
                content: "server-port={port}\nmotd={instance} on {node}\n".into(),
            }],
            layers: Vec::new(),
            config_rules: Vec::new(),
            variables: Default::default(),
            prepare_only: false,
        }),
    }))
}

async fn send(
    client: &mut NodeCommandsClient<Channel>,
    node: &str,
    command: Command,
) -> Result<NodeCommandReply, tonic::Status> {
    client
        .send(NodeCommandRequest {
            node_id: node.to_string(),
            command: Some(command),
            timeout_ms: 10_000,
            forwarded: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A command for node-1 under `group:lobby` with `token`.
async fn lobby(
    client: &mut NodeCommandsClient<Channel>,
    id: &str,
    token: u64,
    action: Action,
) -> Result<NodeCommandReply, tonic::Status> {
    send(client, "node-1", command(id, "group:lobby", token, action)).await
}

fn ack(reply: &NodeCommandReply) -> anyhow::Result<&CommandAck> {
    reply.ack.as_ref().context("reply without ack")
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Records `instance` as placed on node-1 under the plan [`start`] sends, as a scheduler does
/// before dispatching: a node's reports land only in the records of instances placed on it.
async fn placed(cluster: &Cluster, instance: &str) -> anyhow::Result<()> {
    placed_with_layers(cluster, instance, &[]).await
}

/// [`placed`], with a persisted plan naming template `layers`: a gateway serves a node only
/// the layers its current plans name.
async fn placed_with_layers(
    cluster: &Cluster,
    instance: &str,
    layers: &[&str],
) -> anyhow::Result<()> {
    let db = cluster.stores.mongo().await?;
    let plan_hash = format!("plan-{instance}-1");
    db.collection::<Document>("instances")
        .insert_one(doc! {
            "_id": instance, "group": "lobby", "nodeId": "node-1",
            "planHash": &plan_hash, "state": "SCHEDULED",
        })
        .await?;
    let layers: Vec<Document> = layers.iter().map(|h| doc! { "hash": *h }).collect();
    db.collection::<Document>("instance_plans")
        .insert_one(doc! { "_id": instance, "planHash": &plan_hash, "plan": { "layers": layers } })
        .await?;
    Ok(())
}

async fn console_contains(cluster: &Cluster, instance: &str, needle: &str) -> anyhow::Result<()> {
    let backend = ValkeyBackend::connect(&cluster.stores.valkey_url, Duration::from_secs(2))?;
    let streams = ConsoleStreams::new(backend, cluster.stores.namespace.clone());
    let mut last = Vec::new();
    for _ in 0..100 {
        last = streams.tail(instance, 50).await?;
        if last.iter().any(|l| l.line.contains(needle)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("console of {instance} never showed {needle:?}: {last:?}")
}

async fn commands_and_failover(cluster: &Cluster) -> anyhow::Result<()> {
    let Stack {
        mut ca,
        mut gateways,
        mut daemon,
        owner_index,
        token,
    } = stack(cluster).await?;
    let other_index = 1 - owner_index;

    // A command sent to the gateway that does not hold the stream is forwarded and acked.
    let mut via_other = commands(cluster, &gateways[other_index]).await?;
    for instance in ["lobby-1", "lobby-2", "lobby-3"] {
        placed(cluster, instance).await?;
    }
    let port = free_port();
    let reply = lobby(&mut via_other, "c1", 1, start("lobby-1", port, &[])?).await?;
    let started = ack(&reply)?;
    ensure!(started.result() == AckResult::Done, "{started:?}");
    ensure!(
        reply.handled_by == gateways[owner_index].name,
        "handled by the owner: {reply:?}"
    );
    let pid = started.pid;
    ensure!(pid > 0 && pid_alive(pid));
    wait_reported(cluster, "lobby-1", "RUNNING").await?;
    let properties = cluster.dir.join("node-1-servers/lobby-1/server.properties");
    let written = std::fs::read_to_string(&properties)?;
    ensure!(
        written.contains(&format!("server-port={port}")) && written.contains("lobby-1 on node-1"),
        "placeholders substituted: {written}"
    );

    // Console round trip: input through the non-owner, output in the instance's Valkey stream.
    let reply = lobby(
        &mut via_other,
        "c2",
        1,
        Action::Console(ConsoleInput {
            instance_id: "lobby-1".into(),
            line: "say hello from the console".into(),
        }),
    )
    .await?;
    ensure!(ack(&reply)?.result() == AckResult::Done);
    console_contains(cluster, "lobby-1", "[Server] hello from the console").await?;

    // The same start again: acknowledged with the current state, no second process.
    let reply = lobby(&mut via_other, "c3", 1, start("lobby-1", port, &[])?).await?;
    let again = ack(&reply)?;
    ensure!(
        again.result() == AckResult::Already && again.pid == pid,
        "{again:?}"
    );
    // A lower token for the scope is refused.
    let reply = lobby(&mut via_other, "c4", 0, start("lobby-9", free_port(), &[])?).await?;
    ensure!(ack(&reply)?.result() == AckResult::StaleFence, "{reply:?}");

    // kill -9 the owning gateway: the daemon moves to the other one, the server keeps running.
    let killed_at = Instant::now();
    gateways[owner_index].signal(libc::SIGKILL);
    let survivor = &gateways[other_index].name;
    let moved = owned_by(cluster, survivor, token, "owned by the survivor").await?;
    eprintln!(
        "node-1 moved to {} (token {} -> {}) {:?} after the kill",
        owner_of(&moved).0,
        token,
        owner_of(&moved).1,
        killed_at.elapsed()
    );
    ensure!(pid_alive(pid), "the server process survived the gateway");
    let instance = wait_doc(cluster, "instances", "lobby-1", "still running", |d| {
        reported_state(d) == "RUNNING"
    })
    .await?;
    ensure!(
        instance
            .get_document("reported")
            .ok()
            .and_then(|r| r.get_i32("pid").ok())
            == Some(pid),
        "same pid after the failover: {instance:?}"
    );

    // Through the survivor: graceful stop.
    let mut via_survivor = commands(cluster, &gateways[other_index]).await?;
    let reply = lobby(
        &mut via_survivor,
        "c5",
        2,
        Action::Stop(StopInstance {
            instance_id: "lobby-1".into(),
            grace_period_ms: 5000,
            stop_command: String::new(),
            plan_hash: String::new(),
        }),
    )
    .await?;
    ensure!(ack(&reply)?.result() == AckResult::Done, "{reply:?}");
    let stopped = wait_reported(cluster, "lobby-1", "STOPPED").await?;
    let reported = stopped.get_document("reported")?;
    ensure!(reported.get_i32("exitCode") == Ok(0), "{stopped:?}");
    ensure!(
        !pid_alive(pid)
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(" Z "))
    );

    // A crash is reported with its exit code and log tail.
    let reply = lobby(
        &mut via_survivor,
        "c6",
        2,
        start("lobby-2", free_port(), &["--crash-after", "300"])?,
    )
    .await?;
    ensure!(ack(&reply)?.result() == AckResult::Done, "{reply:?}");
    let crash = wait_reported(cluster, "lobby-2", "CRASHED").await?;
    ensure!(crash.get_document("reported")?.get_i32("exitCode") == Ok(3));
    let record = find_one(cluster, "crashes", doc! { "instanceId": "lobby-2" })
        .await?
        .context("a crash record")?;
    let tail = record.get_array("logTail")?;
    ensure!(
        tail.iter()
            .any(|l| l.as_str().is_some_and(|s| s.contains("simulated crash"))),
        "{record:?}"
    );

    // A server that ignores `stop` is killed after its grace period.
    let reply = lobby(
        &mut via_survivor,
        "c7",
        2,
        start("lobby-3", free_port(), &[])?,
    )
    .await?;
    let hung_pid = ack(&reply)?.pid;
    wait_reported(cluster, "lobby-3", "RUNNING").await?;
    lobby(
        &mut via_survivor,
        "c8",
        2,
        Action::Console(ConsoleInput {
            instance_id: "lobby-3".into(),
            line: "hang-on-stop".into(),
        }),
    )
    .await?;
    console_contains(cluster, "lobby-3", "stop will be ignored").await?;
    lobby(
        &mut via_survivor,
        "c9",
        2,
        Action::Stop(StopInstance {
            instance_id: "lobby-3".into(),
            grace_period_ms: 500,
            stop_command: String::new(),
            plan_hash: String::new(),
        }),
    )
    .await?;
    let killed = wait_reported(cluster, "lobby-3", "STOPPED").await?;
    let detail = killed
        .get_document("reported")?
        .get_str("detail")?
        .to_string();
    ensure!(detail.contains("killed after"), "{detail}");
    ensure!(hung_pid > 0);

    // Bad input gets a clear answer.
    let unknown_node = command("c10", "group:lobby", 2, start("x-1", free_port(), &[])?);
    let call = send(&mut via_survivor, "node-unknown", unknown_node).await;
    refused_call(call, Code::FailedPrecondition, "offline")?;
    let no_id = command("", "group:lobby", 2, start("x-1", free_port(), &[])?);
    let call = send(&mut via_survivor, "node-1", no_id).await;
    refused_call(call, Code::InvalidArgument, "")?;
    let mut escaping = start("x-2", free_port(), &[])?;
    if let Action::Start(StartInstance { plan: Some(plan) }) = &mut escaping {
        plan.files[0].path = "../../escape.txt".into();
    }
    let reply = lobby(&mut via_survivor, "c11", 2, escaping).await?;
    let refused = ack(&reply)?;
    ensure!(
        refused.result() == AckResult::Permanent && refused.message.contains("relative path"),
        "{refused:?}"
    );

    // Template layers: fetched through the gateway once, cached by hash, unpacked in order (a
    // later layer overwrites), placeholders substituted in configuration files.
    let store = cluster.store().await?;
    let base = store
        .put_blob(&tar_gz(&[
            ("config/server.yml", "port: {port}\nname: {instance}\n"),
            ("plugins/hello.txt", "base layer\n"),
        ])?)
        .await?;
    let overlay = store
        .put_blob(&tar_gz(&[("plugins/hello.txt", "overlay layer\n")])?)
        .await?;
    let layered_port = free_port();
    placed_with_layers(cluster, "lobby-5", &[&base, &overlay]).await?;
    let mut layered = start("lobby-5", layered_port, &[])?;
    if let Action::Start(StartInstance { plan: Some(plan) }) = &mut layered {
        plan.layers = vec![
            TemplateLayer {
                hash: base.clone(),
                name: "base".into(),
            },
            TemplateLayer {
                hash: overlay.clone(),
                name: "overlay".into(),
            },
        ];
    }
    let reply = lobby(&mut via_survivor, "c13", 2, layered).await?;
    ensure!(ack(&reply)?.result() == AckResult::Done, "{reply:?}");
    let instance_dir = cluster.dir.join("node-1-servers/lobby-5");
    let config = std::fs::read_to_string(instance_dir.join("config/server.yml"))?;
    ensure!(
        config == format!("port: {layered_port}\nname: lobby-5\n"),
        "{config}"
    );
    ensure!(std::fs::read_to_string(instance_dir.join("plugins/hello.txt"))? == "overlay layer\n");
    ensure!(
        cluster
            .dir
            .join(format!("node-1/cache/layers/{base}.tar.gz"))
            .is_file()
    );
    let gone = "ab".repeat(32);
    placed_with_layers(cluster, "lobby-6", &[&gone]).await?;
    let mut missing = start("lobby-6", free_port(), &[])?;
    if let Action::Start(StartInstance { plan: Some(plan) }) = &mut missing {
        plan.layers = vec![TemplateLayer {
            hash: gone.clone(),
            name: "gone".into(),
        }];
    }
    let reply = lobby(&mut via_survivor, "c14", 2, missing).await?;
    let refused = ack(&reply)?;
    ensure!(
        refused.result() == AckResult::Permanent
            && refused.message.contains("not in the cluster store"),
        "{refused:?}"
    );

    // The daemon restarts: the fencing marks survive on disk.
    daemon.stop(EXIT_WITHIN).await?;
    wait_state(cluster, "nodes", "node-1", "OFFLINE").await?;
    let ports: Vec<String> = gateways
        .iter()
        .filter_map(|g| g.daemon_port.clone())
        .collect();
    let mut restarted = cluster.daemon(
        "daemon-1b",
        "node-1",
        "node-1",
        &[&ports[other_index]],
        None,
        &[],
    )?;
    restarted.wait_ready(READY_WITHIN).await?;
    let reply = lobby(
        &mut via_survivor,
        "c12",
        1,
        start("lobby-4", free_port(), &[])?,
    )
    .await?;
    ensure!(
        ack(&reply)?.result() == AckResult::StaleFence,
        "stale after a restart: {reply:?}"
    );

    restarted.stop(EXIT_WITHIN).await?;
    gateways[other_index].stop(EXIT_WITHIN).await?;
    ca.stop(EXIT_WITHIN).await?;
    Ok(())
}

async fn paused_gateway(cluster: &Cluster) -> anyhow::Result<()> {
    let mut stack = stack(cluster).await?;
    let (owner_index, token) = (stack.owner_index, stack.token);
    let other = stack.gateways[1 - owner_index].name.clone();

    // Pause the owner well past the lease TTL (2 s here): the daemon moves, the other gateway
    // takes the node with a higher token.
    stack.gateways[owner_index].signal(libc::SIGSTOP);
    owned_by(cluster, &other, token, "owned by the other gateway").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.gateways[owner_index].signal(libc::SIGCONT);

    // The woken gateway notices it lost the node and closes its stale stream; nothing it writes
    // under the old token lands.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = stack.gateways[owner_index].log_text();
        if log.contains("lost ownership of the node") || log.contains("node session ended") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the woken gateway never closed its session:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node = node_doc(cluster, "node-1").await?;
    ensure!(owner_of(&node).0 == other, "{node:?}");
    ensure!(
        node.get_str("state") == Ok("ONLINE"),
        "the stale gateway's write was rejected: {node:?}"
    );
    ensure!(stack.daemon.get("/readyz").await?.0 == 200);

    stop_all(
        [&mut stack.daemon]
            .into_iter()
            .chain(&mut stack.gateways)
            .chain([&mut stack.ca]),
        EXIT_WITHIN,
    )
    .await
}

/// How many certificates the CA has issued to `subject` (a replica or node id).
async fn issued_to(cluster: &Cluster, subject: &str) -> anyhow::Result<u64> {
    count_docs(cluster, "certificates", doc! { "subject": subject }).await
}

async fn rotation_under_load(cluster: &Cluster) -> anyhow::Result<()> {
    // 30 s certificates: every gateway's daemon-port and internal certificates and the node's
    // certificate are renewed every 20 s while commands flow.
    let mut stack = stack_with(
        cluster,
        "serviceCertValidity = \"30s\"\nnodeCertValidity = \"30s\"\n",
    )
    .await?;
    let (owner_index, token) = (stack.owner_index, stack.token);
    let mut clients = [
        commands(cluster, &stack.gateways[owner_index]).await?,
        commands(cluster, &stack.gateways[1 - owner_index]).await?,
    ];
    placed(cluster, "lobby-1").await?;
    let reply = lobby(
        &mut clients[0],
        "start",
        1,
        start("lobby-1", free_port(), &[])?,
    )
    .await?;
    ensure!(ack(&reply)?.result() == AckResult::Done, "{reply:?}");

    let subjects = [
        stack.gateways[0].name.clone(),
        stack.gateways[1].name.clone(),
        "node-1".to_string(),
    ];
    let mut before = Vec::new();
    for subject in &subjects {
        before.push(issued_to(cluster, subject).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(65);
    let mut sent = 0;
    while Instant::now() < deadline {
        // Alternately through the owner and through the other gateway (forwarded over the
        // gateways' own internal mTLS).
        let client = &mut clients[sent % 2];
        let reply = lobby(
            client,
            &format!("console-{sent}"),
            1,
            Action::Console(ConsoleInput {
                instance_id: "lobby-1".into(),
                line: format!("say rotation {sent}"),
            }),
        )
        .await
        .with_context(|| format!("command {sent} failed during rotation"))?;
        ensure!(
            ack(&reply)?.result() == AckResult::Done,
            "command {sent}: {reply:?}"
        );
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each gateway renewed its daemon-port and its internal certificate at least twice, the
    // node its certificate at least twice.
    for (subject, before) in subjects.iter().zip(before) {
        let after = issued_to(cluster, subject).await?;
        let wanted = if subject == "node-1" { 2 } else { 4 };
        ensure!(
            after >= before + wanted,
            "{subject}: {before} certificates issued before the load, {after} after"
        );
    }
    // The same session throughout: same owner, same ownership token, no reconnect.
    let (owner, now_token) = owner_of(&node_doc(cluster, "node-1").await?);
    ensure!(
        owner == stack.gateways[owner_index].name && now_token == token,
        "the session moved or was re-opened: {owner} token {now_token} (was {} token {token})",
        stack.gateways[owner_index].name
    );
    ensure!(
        !stack.daemon.log_text().contains("session ended")
            && !stack.daemon.log_text().contains("reconnecting"),
        "the daemon's stream was interrupted:\n{}",
        stack.daemon.log_text()
    );
    let (_, metrics) = stack.gateways[owner_index].get("/metrics").await?;
    ensure!(
        ["internal", "daemon-port"].iter().all(|purpose| {
            prexor_testkit::metric(
                &metrics,
                &format!("prexor_tls_certificate_expiry_timestamp_seconds{{use=\"{purpose}\"}}"),
            )
            .is_some()
        }),
        "expiry metrics: {metrics}"
    );
    let mut all: Vec<&mut Proc> = stack.gateways.iter_mut().collect();
    all.push(&mut stack.daemon);
    all.push(&mut stack.ca);
    stop_all(all, EXIT_WITHIN).await
}

scenario_tests! {
    commands_reach_the_node_through_any_gateway_and_servers_survive_a_gateway_kill: commands_and_failover,
    a_paused_gateway_that_wakes_up_closes_its_stale_session: paused_gateway,
    certificates_rotating_under_load_keep_every_daemon_stream_open: rotation_under_load,
}
