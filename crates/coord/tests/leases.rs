//! Leases and fencing against real Valkey and MongoDB-wire servers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Env, fast_timing, wait_past_ttl};
use prexor_coord::{LeaseBackend, LeaseKeeper, Leases, LocalBackend, ManualClock, ValkeyBackend};
use prexor_domain::Scope;
use prexor_store::bson::doc;
use prexor_store::{StoreError, Write};
use prexor_testkit::ValkeyServer;
use tokio_util::sync::CancellationToken;

fn group(name: &str) -> Scope {
    Scope::Group(name.to_owned())
}

#[tokio::test]
async fn eight_contenders_get_exactly_one_holder_and_tokens_grow_across_handoffs()
-> anyhow::Result<()> {
    let env = Env::new("contenders").await?;
    let scope = group("lobby");
    let contenders: Vec<Leases> = (0..8)
        .map(|i| env.leases(&format!("replica-{i}")))
        .collect();
    let attempts = contenders.iter().map(|l| l.acquire(&scope));
    let results = futures::future::try_join_all(attempts).await?;
    let winners: Vec<_> = results.into_iter().flatten().collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one of eight contenders holds the lease"
    );
    let a = winners.into_iter().next().unwrap();
    let holders = contenders[0].holders(std::slice::from_ref(&scope)).await?;
    assert_eq!(holders[0].as_ref().map(|h| h.token), Some(a.token()));

    // Hand-off A -> B -> C: each release lets the next acquire, with a higher token each time.
    let (b_leases, c_leases) = (env.leases("b"), env.leases("c"));
    assert!(b_leases.acquire(&scope).await?.is_none(), "held by A");
    let a_leases = contenders
        .iter()
        .find(|l| l.holder() == holders[0].as_ref().unwrap().holder)
        .unwrap();
    assert!(a_leases.release(&a).await?);
    let b = b_leases
        .acquire(&scope)
        .await?
        .expect("free after A released");
    assert!(b_leases.release(&b).await?);
    let c = c_leases
        .acquire(&scope)
        .await?
        .expect("free after B released");
    assert!(
        a.token() < b.token() && b.token() < c.token(),
        "{} {} {}",
        a.token(),
        b.token(),
        c.token()
    );
    assert_eq!(env.store.fence_mark(&scope.to_string()).await?, c.token());
    // The lease key is exactly where the operator page says.
    let mut raw = env.stores.valkey().await?;
    let value: Option<String> = redis::cmd("GET")
        .arg(format!("{}lease:group:lobby", env.stores.namespace))
        .query_async(&mut raw)
        .await?;
    assert_eq!(value, Some(format!("c|{}", c.token())));
    Ok(())
}

#[tokio::test]
async fn a_paused_holder_loses_its_lease_and_its_late_writes() -> anyhow::Result<()> {
    let env = Env::new("paused").await?;
    let scope = group("survival");
    let clock = Arc::new(ManualClock::new());
    let a_leases = env.leases("a").with_clock(clock.clone());
    let a = a_leases.acquire(&scope).await?.expect("free");
    let lost = a.lost();
    assert!(a.is_valid());
    env.store
        .fenced_write(
            &a.fence(),
            vec![Write::insert(
                "instances",
                doc! { "_id": "survival-1", "by": "a" },
            )],
        )
        .await?;

    // A "pauses": no renewals past the TTL. Its own clock says the self-fencing deadline passed.
    clock.advance(fast_timing().self_fence_after);
    assert!(
        !a.is_valid(),
        "self-fenced before the store expired the lease"
    );
    wait_past_ttl().await;
    let b = env
        .leases("b")
        .acquire(&scope)
        .await?
        .expect("expired, so B gets it");
    assert!(b.token() > a.token());

    // A wakes up: its renewal is refused, its lost-notification fires, its write is rejected.
    assert!(!a_leases.renew(&a).await?);
    assert!(lost.is_cancelled());
    let err = env
        .store
        .fenced_write(
            &a.fence(),
            vec![Write::update_one(
                "instances",
                doc! { "_id": "survival-1" },
                doc! { "$set": { "by": "a-late" } },
            )],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleFence { .. }), "{err}");
    let doc = env
        .store
        .documents("instances")
        .find_one(doc! { "_id": "survival-1" })
        .await?
        .unwrap();
    assert_eq!(doc.get_str("by")?, "a");
    Ok(())
}

#[tokio::test]
async fn a_flushed_valkey_never_reuses_a_token() -> anyhow::Result<()> {
    let env = Env::new("flushed").await?;
    let scope = Scope::drain("node-1");
    let a = env.leases("a").acquire(&scope).await?.expect("free");
    // Every key of this test disappears, as with FLUSHALL on a Valkey without persistence.
    let mut raw = env.stores.valkey().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", env.stores.namespace))
        .query_async(&mut raw)
        .await?;
    let _: () = redis::cmd("DEL").arg(keys).query_async(&mut raw).await?;

    let b = env
        .leases("b")
        .acquire(&scope)
        .await?
        .expect("the key is gone");
    assert!(
        b.token() > a.token(),
        "tokens come from MongoDB, not Valkey"
    );
    let err = env
        .store
        .fenced_write(
            &a.fence(),
            vec![Write::insert("intents", doc! { "_id": "late" })],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleFence { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_restarted_valkey_never_reuses_a_token() -> anyhow::Result<()> {
    let env = Env::new("restarted").await?;
    let mut server = ValkeyServer::start()?;
    let backend: Arc<dyn LeaseBackend> = Arc::new(ValkeyBackend::connect(
        &server.url(),
        Duration::from_secs(2),
    )?);
    let scope = Scope::PlatformModule;
    let a_leases = env.leases_on("a", backend.clone());
    let a = a_leases.acquire(&scope).await?.expect("free");

    server.restart()?;
    // The connection manager reconnects on its own; the first command may see the old socket die.
    let b_leases = env.leases_on("b", backend.clone());
    let mut b = None;
    for _ in 0..50 {
        match b_leases.acquire(&scope).await {
            Ok(Some(lease)) => {
                b = Some(lease);
                break;
            }
            Ok(None) => panic!("the restarted Valkey has no keys, so the lease must be free"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let b = b.expect("Valkey came back");
    assert!(b.token() > a.token());
    assert!(!a_leases.renew(&a).await?, "A's key died with the restart");
    let err = env
        .store
        .fenced_write(
            &a.fence(),
            vec![Write::insert("modules", doc! { "_id": "late" })],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleFence { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn release_by_a_non_holder_is_a_no_op_and_renewal_after_expiry_fails() -> anyhow::Result<()> {
    let env = Env::new("release").await?;
    let scope = group("bedwars");
    let a_leases = env.leases("a");
    let a = a_leases.acquire(&scope).await?.expect("free");
    wait_past_ttl().await;
    assert!(
        !a_leases.renew(&a).await?,
        "renewing an expired lease fails"
    );
    assert!(a.is_lost());

    let b_leases = env.leases("b");
    let b = b_leases.acquire(&scope).await?.expect("expired");
    assert!(
        !a_leases.release(&a).await?,
        "A's release must not delete B's lease"
    );
    let holders = b_leases.holders(std::slice::from_ref(&scope)).await?;
    assert_eq!(
        holders[0].as_ref().map(|h| (h.holder.as_str(), h.token)),
        Some(("b", b.token()))
    );
    assert!(b_leases.renew(&b).await?);
    Ok(())
}

#[tokio::test]
async fn a_take_over_deposes_the_previous_holder_at_once() -> anyhow::Result<()> {
    let env = Env::new("takeover").await?;
    let scope = Scope::Node("node-1".into());
    let (gw_a, gw_b) = (env.leases("gateway-a"), env.leases("gateway-b"));
    let a = gw_a.acquire(&scope).await?.expect("free");
    let b = gw_b.take_over(&scope).await?;
    assert!(b.token() > a.token());
    assert!(!gw_a.renew(&a).await?, "A must notice at its next renewal");
    assert!(a.lost().is_cancelled());
    let err = env
        .store
        .fenced_write(
            &a.fence(),
            vec![Write::insert("nodes", doc! { "_id": "node-1" })],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleFence { .. }), "{err}");
    assert!(gw_b.renew(&b).await?);
    Ok(())
}

#[tokio::test]
async fn no_write_of_the_old_holder_lands_after_the_new_holder_fenced_in() -> anyhow::Result<()> {
    let env = Env::new("race").await?;
    let scope = group("race");
    let a = env.leases("a").acquire(&scope).await?.expect("free");
    let applied = Arc::new(AtomicU64::new(0));
    let writer = {
        let store = env.store.clone();
        let fence = a.fence();
        let applied = applied.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let write = Write::insert(
                    "log",
                    doc! { "_id": format!("a-{i}"), "token": fence.token as i64 },
                );
                match store.fenced_write(&fence, vec![write]).await {
                    Ok(_) => {
                        applied.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(StoreError::StaleFence { .. }) => return,
                    Err(err) => panic!("unexpected: {err}"),
                }
            }
        })
    };
    while applied.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // B takes the scope while A is writing; after B's acquisition returns, B reads the scope.
    let b = env.leases("b").take_over(&scope).await?;
    let seen_by_b = env
        .store
        .documents("log")
        .count_documents(doc! { "token": a.token() as i64 })
        .await?;
    writer.await?;
    let total = env
        .store
        .documents("log")
        .count_documents(doc! { "token": a.token() as i64 })
        .await?;
    assert_eq!(
        seen_by_b, total,
        "a write of the old holder landed after the new holder fenced in"
    );
    assert_eq!(total, applied.load(Ordering::SeqCst));
    assert!(b.token() > a.token());
    Ok(())
}

#[tokio::test]
async fn the_keeper_renews_and_releases_everything_on_shutdown() -> anyhow::Result<()> {
    let env = Env::new("keeper").await?;
    let leases = env.leases("scheduler-1");
    let shutdown = CancellationToken::new();
    let (keeper, task) = LeaseKeeper::start(leases.clone(), "group", shutdown.clone());
    let scopes: Vec<Scope> = (0..5).map(|i| group(&format!("g{i}"))).collect();
    for scope in &scopes {
        keeper.insert(leases.acquire(scope).await?.expect("free"));
    }
    // Kept well past the TTL: the keeper renewed them.
    tokio::time::sleep(fast_timing().ttl * 3).await;
    assert_eq!(keeper.len(), 5);
    assert!(keeper.held().iter().all(|l| l.is_valid()));
    let other = env.leases("scheduler-2");
    assert!(other.acquire(&scopes[0]).await?.is_none());

    shutdown.cancel();
    task.await?;
    let holders = other.holders(&scopes).await?;
    assert!(
        holders.iter().all(Option::is_none),
        "graceful stop released every lease: {holders:?}"
    );
    assert!(
        other.acquire(&scopes[0]).await?.is_some(),
        "a peer takes over at once"
    );
    Ok(())
}

#[tokio::test]
async fn a_holder_cut_off_from_valkey_fences_itself_before_the_ttl() -> anyhow::Result<()> {
    let env = Env::new("partition").await?;
    let server = ValkeyServer::start()?;
    let backend = ValkeyBackend::connect(&server.url(), Duration::from_millis(300))?;
    let leases = env.leases_on("cut-off", Arc::new(backend));
    let shutdown = CancellationToken::new();
    let (keeper, _task) = LeaseKeeper::start(leases.clone(), "group", shutdown.clone());
    let lease = leases.acquire(&group("island")).await?.expect("free");
    let lost = lease.lost();
    keeper.insert(lease.clone());
    tokio::time::sleep(fast_timing().renew_interval * 2).await;
    assert!(lease.is_valid());

    server.pause();
    tokio::time::timeout(Duration::from_secs(10), lost.cancelled())
        .await
        .expect("the lease must be fenced off when renewals stop succeeding");
    assert!(!lease.is_valid());
    assert!(keeper.is_empty());
    server.resume();
    shutdown.cancel();
    Ok(())
}

#[tokio::test]
async fn the_in_process_backend_has_the_same_semantics() -> anyhow::Result<()> {
    let env = Env::new("local").await?;
    let backend: Arc<dyn LeaseBackend> = Arc::new(LocalBackend::new());
    let (a_leases, b_leases) = (
        env.leases_on("a", backend.clone()),
        env.leases_on("b", backend),
    );
    let scope = group("dev");
    let a = a_leases.acquire(&scope).await?.expect("free");
    assert!(b_leases.acquire(&scope).await?.is_none());
    assert!(a_leases.renew(&a).await?);
    wait_past_ttl().await;
    assert!(!a_leases.renew(&a).await?);
    let b = b_leases.acquire(&scope).await?.expect("expired");
    assert!(b.token() > a.token());
    assert!(
        !a_leases.release(&a).await?,
        "A's release must not delete B's lease"
    );
    assert!(b_leases.renew(&b).await?);
    let err = env
        .store
        .fenced_write(&a.fence(), vec![Write::insert("x", doc! {})])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleFence { .. }), "{err}");
    Ok(())
}
