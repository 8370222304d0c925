//! Faults on the feedback path: rolling deployments while the group's holder freezes at seeded
//! random moments (each freeze outlasting the lease, so a peer takes over mid-rollout, possibly
//! while the frozen one holds a transaction open), and a gateway frozen while the schedulers
//! send through it.

use std::time::Duration;

use anyhow::{Context, ensure};
use prexor_acceptance::{
    Cluster, create_group, deploy_one_by_one, group_doc, insert_group, invariants, nodes, plan_of,
    process_journal, reported_state, running, scenario_tests, spec_of, system, wait_doc,
    wait_holder, wait_state, with_version,
};
use rand::{Rng, SeedableRng};

const READY_WITHIN: Duration = Duration::from_secs(60);
const WEB: [&str; 4] = ["web-1", "web-2", "web-3", "web-4"];
/// Freezes of the group's holder, spread over rollouts two at a time.
const FREEZES: usize = 20;
const FREEZES_PER_ROLLOUT: usize = 2;

async fn rollouts_with_freezes(cluster: &Cluster) -> anyhow::Result<()> {
    let system = system(cluster, &["node-1", "node-2"], 2).await?;
    let rest = system.rest.clone();
    let base = spec_of("web", 4, &[])?;
    create_group(&rest, "web", base.clone()).await?;
    running(cluster, &WEB).await?;

    let seed: u64 = std::env::var("PREXOR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_130);
    eprintln!("freezing the holder at moments drawn with seed {seed} (PREXOR_TEST_SEED)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut windows = Vec::new();
    for round in 1..=FREEZES / FREEZES_PER_ROLLOUT {
        let from = prexor_domain::now_ms();
        let spec = with_version(&base, &round.to_string());
        let (id, _) = deploy_one_by_one(&rest, "web", spec).await?;
        for _ in 0..FREEZES_PER_ROLLOUT {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..4000))).await;
            let frozen =
                wait_holder(&system.schedulers, "group:web", Duration::from_secs(20)).await?;
            // Past the 2 s lease TTL: the peer takes the group over while this one is stopped.
            let pause = Duration::from_millis(rng.random_range(2500..5000));
            system.schedulers[frozen].signal(libc::SIGSTOP);
            tokio::time::sleep(pause).await;
            system.schedulers[frozen].signal(libc::SIGCONT);
        }
        wait_state(cluster, "deployments", &id, "DONE")
            .await
            .with_context(|| format!("rollout {round} (seed {seed})"))?;
        windows.push((round, from, prexor_domain::now_ms()));
    }

    // Each rollout restarted each instance at most once, and the last one left every instance
    // RUNNING the last version.
    let journal = process_journal(cluster, &["node-1", "node-2"])?;
    for (round, from, to) in &windows {
        for instance in WEB {
            let launches = journal
                .iter()
                .filter(|e| e.event == "launch" && e.instance == instance)
                .filter(|e| e.at_ms >= *from && e.at_ms <= *to)
                .count();
            ensure!(
                launches <= 1,
                "rollout {round} started {instance} {launches} times (seed {seed})"
            );
        }
    }
    let last_version = (FREEZES / FREEZES_PER_ROLLOUT).to_string();
    for instance in &running(cluster, &WEB).await? {
        let plan = plan_of(cluster, instance).await?;
        ensure!(
            plan.get_document("env")?.get_str("VERSION") == Ok(last_version.as_str()),
            "{instance:?} is not on version {last_version}: {plan:?}"
        );
    }
    system.finish(cluster, 0).await
}

async fn frozen_gateway(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    let mut scheduler = cluster.service("scheduler", "scheduler-1", "")?;
    scheduler.wait_ready(READY_WITHIN).await?;
    insert_group(cluster, group_doc("g", 2, &[])?).await?;
    let before = running(cluster, &["g-1", "g-2"]).await?;
    let node = wait_doc(cluster, "nodes", "node-1", "owned", |d| {
        d.get_str("state") == Ok("ONLINE")
    })
    .await?;
    let owner = node.get_str("gateway")?.to_owned();
    let frozen = fleet
        .gateways
        .iter()
        .position(|g| g.name != owner)
        .context("a gateway that does not own node-1")?;

    // The gateway that does not hold node-1's session freezes; it stays in the replica list
    // (its registration has not expired yet), so the scheduler still sends through it.
    fleet.gateways[frozen].signal(libc::SIGSTOP);
    let killed_plan = before[0].get_str("planHash")?.to_owned();
    let pid = before[0].get_document("reported")?.get_i32("pid")?;
    prexor_testkit::signal(pid as u32, libc::SIGKILL);
    wait_doc(cluster, "instances", "g-1", "reported CRASHED", |d| {
        d.get_str("planHash") == Ok(killed_plan.as_str()) && reported_state(d) == "CRASHED"
    })
    .await?;
    let ticks_at_crash = scheduler.metric("prexor_scheduler_ticks_total").await?;
    let replaced = wait_doc(cluster, "instances", "g-1", "replaced and RUNNING", |d| {
        d.get_str("planHash").is_ok_and(|p| p != killed_plan)
            && d.get_str("state") == Ok("RUNNING")
            && reported_state(d) == "RUNNING"
    })
    .await?;
    let ticks = scheduler.metric("prexor_scheduler_ticks_total").await? - ticks_at_crash;
    // Replaced within two ticks of the crash (at most one of which waited out a deadline on
    // the frozen gateway), plus the tick that records RUNNING and the one already under way
    // when the crash landed.
    ensure!(
        ticks <= 4.0,
        "{ticks} ticks from the crash to the replacement RUNNING: {replaced:?}"
    );
    fleet.gateways[frozen].signal(libc::SIGCONT);
    invariants(cluster, &["node-1"]).await?;
    fleet.stop_with(&mut scheduler).await
}

scenario_tests! {
    rollouts_complete_while_the_groups_holder_freezes_at_random_moments: rollouts_with_freezes,
    a_server_killed_while_a_gateway_is_frozen_is_replaced_within_two_ticks: frozen_gateway,
}
