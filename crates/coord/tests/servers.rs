//! The same lease and registry semantics on Valkey 9 and on Redis 7 (no `SET IFEQ`, no
//! Valkey-only commands).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Env, wait_past_ttl};
use prexor_coord::{Acquired, LeaseBackend, Registry, ReplicaRecord, ValkeyBackend};
use prexor_domain::{Scope, ServiceKind};
use prexor_testkit::{Flavor, ValkeyServer};

async fn semantics(flavor: Flavor) -> anyhow::Result<()> {
    let env = Env::new(&format!("servers-{flavor:?}")).await?;
    let server = ValkeyServer::start_flavor(flavor)?;
    let valkey = ValkeyBackend::connect(&server.url(), Duration::from_secs(2))?;
    let backend: Arc<dyn LeaseBackend> = Arc::new(valkey.clone());
    let (a_leases, b_leases) = (
        env.leases_on("a", backend.clone()),
        env.leases_on("b", backend),
    );

    let scope = Scope::Group("lobby".into());
    let a = a_leases.acquire(&scope).await?.expect("free");
    assert!(
        b_leases.acquire(&scope).await?.is_none(),
        "{flavor:?}: exclusive"
    );
    let b = b_leases.take_over(&scope).await?;
    assert!(b.token() > a.token(), "{flavor:?}");
    assert!(!a_leases.renew(&a).await?, "{flavor:?}: A was taken over");
    assert!(b_leases.renew(&b).await?, "{flavor:?}");

    // Renewing more leases than one script call carries (512), with one stolen in the second
    // batch: exactly that one fails.
    let ttl = Duration::from_secs(30);
    let batch: Vec<(String, String)> = (0..600)
        .map(|i| {
            (
                format!("{}batch:{i}", env.stores.namespace),
                format!("a|{i}"),
            )
        })
        .collect();
    for (key, value) in &batch {
        assert!(matches!(
            valkey.acquire(key, value, ttl).await?,
            Acquired::Yes
        ));
    }
    valkey.take_over(&batch[550].0, "b|1", ttl).await?;
    let renewed = valkey.renew_many(&batch, ttl).await?;
    assert_eq!(renewed.len(), 600);
    let failed: Vec<usize> = (0..600).filter(|i| !renewed[*i]).collect();
    assert_eq!(
        failed,
        vec![550],
        "{flavor:?}: only the stolen lease fails to renew"
    );

    let c = a_leases
        .acquire(&Scope::PlatformModule)
        .await?
        .expect("free");
    wait_past_ttl().await;
    assert!(
        !a_leases.renew(&c).await?,
        "{flavor:?}: renewal after expiry fails"
    );
    let d = b_leases
        .acquire(&Scope::PlatformModule)
        .await?
        .expect("expired");
    assert!(
        !a_leases.release(&c).await?,
        "{flavor:?}: a non-holder's release is a no-op"
    );
    assert!(b_leases.renew(&d).await?);

    let registry = Registry::Valkey {
        backend: valkey,
        namespace: env.stores.namespace.clone(),
        ttl: Duration::from_secs(5),
    };
    let record = ReplicaRecord {
        kind: ServiceKind::Gateway,
        id: "gateway-1".into(),
        version: "0.1.0".into(),
        profile: "production".into(),
        http_address: "127.0.0.1:9091".into(),
        grpc_address: Some("127.0.0.1:9090".into()),
        started_at_ms: 1,
        ready: true,
        leases_held: 0,
        heartbeat_age_ms: 0,
        clock_skew_ms: None,
        coordination: None,
        notes: vec!["no signing key".into()],
    };
    registry.heartbeat(&record).await?;
    let listed = registry.list(Some(ServiceKind::Gateway)).await?;
    assert_eq!(listed.len(), 1, "{flavor:?}");
    assert_eq!(listed[0].grpc_address, record.grpc_address);
    assert_eq!(listed[0].notes, record.notes);
    Ok(())
}

#[tokio::test]
async fn leases_and_registry_on_valkey_9() -> anyhow::Result<()> {
    semantics(Flavor::Valkey).await
}

#[tokio::test]
async fn leases_and_registry_on_redis_7() -> anyhow::Result<()> {
    semantics(Flavor::Redis7).await
}
