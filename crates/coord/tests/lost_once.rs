//! A lost lease is reported exactly once, however many ways the loss is noticed. Own test binary:
//! it installs a process-wide metrics recorder to count losses.

mod common;

use std::sync::Arc;

use common::{Env, fast_timing, wait_past_ttl};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use prexor_coord::{LeaseKeeper, ManualClock};
use prexor_domain::Scope;
use tokio_util::sync::CancellationToken;

fn losses(snapshotter: &metrics_util::debugging::Snapshotter) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "prexor_lease_losses_total")
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn the_lost_notification_fires_exactly_once() -> anyhow::Result<()> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

    let env = Env::new("lost-once").await?;
    let clock = Arc::new(ManualClock::new());
    let leases = env.leases("a").with_clock(clock.clone());
    let lease = leases
        .acquire(&Scope::Group("once".into()))
        .await?
        .expect("free");
    let lost = lease.lost();
    let shutdown = CancellationToken::new();
    let (keeper, task) = LeaseKeeper::start(leases.clone(), "group", shutdown.clone());
    keeper.insert(lease.clone());

    // The lease is lost three ways: self-fencing deadline, refused renewals, and expiry.
    clock.advance(fast_timing().self_fence_after * 2);
    tokio::time::timeout(fast_timing().ttl * 5, lost.cancelled()).await?;
    wait_past_ttl().await;
    assert!(!leases.renew(&lease).await?);
    assert!(!leases.renew(&lease).await?);
    assert_eq!(losses(&snapshotter), 1, "one lease, one loss");
    assert!(keeper.is_empty());

    shutdown.cancel();
    task.await?;
    Ok(())
}
