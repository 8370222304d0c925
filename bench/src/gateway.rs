//! Node commands and gateway failover with real processes: a CA, two gateways, one enrolled
//! daemon running a fake server.
//!
//! - command round trip (console input, acked by the daemon) through the gateway that does NOT
//!   hold the node's stream, next to the same command through the owner;
//! - reconnect time: SIGKILL the owning gateway, time until the node is owned (recorded ONLINE
//!   under a new token) by the other one; median over several kills.

use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use prexor_pki::internal::InternalTls;
use prexor_proto::v1::command::Action;
use prexor_proto::v1::node_commands_client::NodeCommandsClient;
use prexor_proto::v1::{
    AckResult, Command, CompositionPlan, ConsoleInput, NodeCommandRequest, StartInstance,
};
use prexor_store::Store;
use tonic::transport::Channel;

use crate::Servers;
use crate::procs::{NodeFleet, Proc, READY_WITHIN, Scratch, binary, print_rss};
use crate::report::{Metric, Samples};

const NODE: &str = "bench-node";

fn client(internal: &InternalTls, gateway: &Proc) -> anyhow::Result<NodeCommandsClient<Channel>> {
    let channel = internal
        .peers
        .get(
            gateway
                .grpc
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("no internal gRPC port"))?,
        )
        .map_err(anyhow::Error::msg)?;
    Ok(NodeCommandsClient::new(channel))
}

fn command(id: String, action: Action) -> NodeCommandRequest {
    NodeCommandRequest {
        node_id: NODE.into(),
        command: Some(Command {
            command_id: id,
            scope: "group:bench".into(),
            fence_token: 1,
            action: Some(action),
        }),
        timeout_ms: 10_000,
        forwarded: false,
    }
}

/// (owner replica id, ownership token) of the node, once it is ONLINE.
async fn owner(store: &Store) -> anyhow::Result<Option<(String, i64)>> {
    let node = store
        .documents("nodes")
        .find_one(doc! { "_id": NODE, "state": "ONLINE" })
        .await?;
    Ok(node.map(|n: Document| {
        (
            n.get_str("gateway").unwrap_or_default().to_string(),
            n.get_i64("ownershipToken").unwrap_or_default(),
        )
    }))
}

pub async fn run(servers: &Servers, n: usize, kills: usize) -> anyhow::Result<()> {
    let dir = Scratch::new("gateway")?;
    let store = servers.store().await?;
    let mut fleet = NodeFleet::start(servers, &dir.0, NODE, &[]).await?;
    let gateways = &mut fleet.gateways;

    let names: Vec<String> = gateways.iter().map(|g| g.name.clone()).collect();
    let owner_of = |name: &str| names.iter().position(|g| g == name);
    let (first_owner, _) = wait_owner(&store, None).await?;
    let owner_index = owner_of(&first_owner).ok_or_else(|| anyhow::anyhow!("unknown owner"))?;
    let internal = servers.internal().await?;
    let mut via_owner = client(&internal, &gateways[owner_index])?;
    let via_other = client(&internal, &gateways[1 - owner_index])?;

    let server = binary("prexor-fakeserver")?;
    let port = prexor_testkit::free_port();
    let start = Action::Start(StartInstance {
        plan: Some(CompositionPlan {
            instance_id: "bench-1".into(),
            group: "bench".into(),
            plan_hash: "bench-plan-1".into(),
            command: vec![
                server.display().to_string(),
                "--port".into(),
                "{port}".into(),
            ],
            env: Default::default(),
            port: u32::from(port),
            memory_mb: 256,
            files: Vec::new(),
            layers: Vec::new(),
            config_rules: Vec::new(),
            variables: Default::default(),
            prepare_only: false,
        }),
    });
    let ack = via_owner
        .send(command("bench-start".into(), start))
        .await?
        .into_inner()
        .ack
        .ok_or_else(|| anyhow::anyhow!("no ack"))?;
    anyhow::ensure!(ack.result() == AckResult::Done, "start failed: {ack:?}");

    let console = |i: usize| {
        Action::Console(ConsoleInput {
            instance_id: "bench-1".into(),
            line: format!("echo {i}"),
        })
    };
    let direct = Samples::measure(n, |i| {
        let mut client = via_owner.clone();
        let request = command(format!("direct-{i}"), console(i));
        async move {
            let ack = client.send(request).await?.into_inner().ack;
            anyhow::ensure!(ack.is_some_and(|a| a.result() == AckResult::Done));
            Ok(())
        }
    })
    .await?;
    let forwarded = Samples::measure(n, |i| {
        let mut client = via_other.clone();
        let request = command(format!("forwarded-{i}"), console(i));
        async move {
            let ack = client.send(request).await?.into_inner().ack;
            anyhow::ensure!(ack.is_some_and(|a| a.result() == AckResult::Done));
            Ok(())
        }
    })
    .await?;
    let direct_p50 = Metric::floor("node_command_via_owner_p50", direct.percentile(50.0));
    let direct_p95 = Metric::floor("node_command_via_owner_p95", direct.percentile(95.0));
    direct_p50.print();
    direct_p95.print();
    Metric::against(
        "node_command_via_other_gateway_p50",
        forwarded.percentile(50.0),
        &direct_p50,
        "one extra internal gRPC hop; no published target",
    )
    .print();
    Metric::against(
        "node_command_via_other_gateway_p95",
        forwarded.percentile(95.0),
        &direct_p95,
        "one extra internal gRPC hop; no published target",
    )
    .print();

    for gateway in gateways.iter() {
        print_rss(
            gateway,
            &format!("{} RSS with one node session", gateway.name),
            "PrexorCloud sizes ~1 GiB heap + 1 MiB per instance per controller",
        )?;
    }

    // Failover: kill the owner, time until the other gateway owns the node.
    let mut times = Vec::new();
    for _ in 0..kills {
        let (before, token) = wait_owner(&store, None).await?;
        let index = owner_of(&before).ok_or_else(|| anyhow::anyhow!("unknown owner"))?;
        let killed_at = Instant::now();
        gateways[index].kill();
        wait_owner(&store, Some((before.as_str(), token))).await?;
        times.push(killed_at.elapsed().as_secs_f64() * 1000.0);
        gateways[index].restart(READY_WITHIN).await?;
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mut reconnect = Metric::floor("daemon_reconnect_after_gateway_kill_p50", median);
    reconnect.target = Some(format!(
        "median of {kills} SIGKILLs (min {:.0} ms, max {:.0} ms); bounded by the daemon noticing (HTTP/2 keep-alive) and its backoff",
        times[0],
        times[times.len() - 1]
    ));
    reconnect.print();
    Ok(())
}

/// Waits until the node is ONLINE under an owner other than `not` (any owner when `None`).
async fn wait_owner(store: &Store, not: Option<(&str, i64)>) -> anyhow::Result<(String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((owner, token)) = owner(store).await?
            && not.is_none_or(|(old, old_token)| owner != old && token > old_token)
        {
            return Ok((owner, token));
        }
        anyhow::ensure!(Instant::now() < deadline, "the node never got a new owner");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
