//! The replica registry (Valkey and MongoDB backends) and the development single-writer claim.

mod common;

use std::time::Duration;

use common::Env;
use prexor_coord::{CoordError, DevClaim, Registry, ReplicaRecord};
use prexor_domain::ServiceKind;

fn record(kind: ServiceKind, id: &str) -> ReplicaRecord {
    ReplicaRecord {
        kind,
        id: id.to_owned(),
        version: "0.1.0".into(),
        profile: "production".into(),
        http_address: "127.0.0.1:8080".into(),
        grpc_address: None,
        started_at_ms: 1,
        ready: true,
        leases_held: 3,
        heartbeat_age_ms: 0,
        clock_skew_ms: None,
        coordination: None,
        notes: Vec::new(),
    }
}

async fn registries(test: &str) -> anyhow::Result<(Env, Vec<Registry>)> {
    let env = Env::new(test).await?;
    let ttl = Duration::from_millis(700);
    let registries = vec![
        Registry::Valkey {
            backend: env.valkey.clone(),
            namespace: env.stores.namespace.clone(),
            ttl,
        },
        Registry::Mongo {
            store: env.store.clone(),
            ttl,
        },
    ];
    Ok((env, registries))
}

#[tokio::test]
async fn replicas_are_listed_while_they_heartbeat() -> anyhow::Result<()> {
    let (_env, registries) = registries("registry").await?;
    for registry in registries {
        let api = record(ServiceKind::Api, "api-1");
        let s1 = record(ServiceKind::Scheduler, "scheduler-1");
        let s2 = record(ServiceKind::Scheduler, "scheduler-2");
        for r in [&api, &s1, &s2] {
            registry.heartbeat(r).await?;
        }
        let all = registry.list(None).await?;
        let ids: Vec<_> = all.iter().map(|r| (r.kind, r.id.as_str())).collect();
        assert_eq!(
            ids,
            [
                (ServiceKind::Api, "api-1"),
                (ServiceKind::Scheduler, "scheduler-1"),
                (ServiceKind::Scheduler, "scheduler-2")
            ],
            "{registry:?}"
        );
        assert_eq!(all[0].leases_held, 3);
        assert!(all.iter().all(|r| r.heartbeat_age_ms < 700));

        registry
            .deregister(ServiceKind::Scheduler, "scheduler-2")
            .await?;
        assert_eq!(registry.list(Some(ServiceKind::Scheduler)).await?.len(), 1);

        // scheduler-1 stops heartbeating (crashed); api-1 keeps going.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            registry.heartbeat(&api).await?;
        }
        let live = registry.list(None).await?;
        assert_eq!(live.len(), 1, "{registry:?}: {live:?}");
        assert_eq!(live[0].id, "api-1");
    }
    Ok(())
}

#[tokio::test]
async fn the_development_profile_allows_one_writer_per_service() -> anyhow::Result<()> {
    let env = Env::new("devclaim").await?;
    let ttl = Duration::from_millis(600);
    let first = DevClaim::claim(&env.store, ServiceKind::Scheduler, "scheduler-a", ttl).await?;
    let err = DevClaim::claim(&env.store, ServiceKind::Scheduler, "scheduler-b", ttl)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, CoordError::Refused(_)), "{message}");
    assert!(
        message.contains("scheduler-a") && message.contains(&env.stores.database),
        "{message}"
    );
    assert!(
        message.contains("runtime.profile = \"production\""),
        "{message}"
    );
    // Other services are independent.
    DevClaim::claim(&env.store, ServiceKind::Api, "api-a", ttl).await?;

    // The first replica dies (stops refreshing); after the TTL the slot can be taken.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let second = DevClaim::claim(&env.store, ServiceKind::Scheduler, "scheduler-b", ttl).await?;
    assert!(
        matches!(first.refresh().await, Err(CoordError::Refused(_))),
        "the old writer must learn it lost the slot"
    );
    second.release().await?;
    DevClaim::claim(&env.store, ServiceKind::Scheduler, "scheduler-c", ttl).await?;
    Ok(())
}
