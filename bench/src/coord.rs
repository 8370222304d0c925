//! Leases and fencing next to the raw floors measured in the same run.

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::doc;
use prexor_coord::{Leases, ValkeyBackend};
use prexor_domain::{LeaseTiming, Scope};
use prexor_store::Write;

use crate::Servers;
use crate::report::{Metric, Samples};

pub async fn run(servers: &Servers, n: usize) -> anyhow::Result<()> {
    let floors = crate::stack::run(servers, n).await?;
    let store = servers.store().await?;
    let backend = ValkeyBackend::connect(&servers.valkey_url, Duration::from_secs(5))?;
    let timing = LeaseTiming::from_evaluation_interval(Duration::from_secs(15));
    let leases = Leases::new(
        Arc::new(backend),
        store.clone(),
        "bench",
        servers.namespace.clone(),
        timing,
    );

    let held = leases
        .acquire(&Scope::Group("bench-renew".into()))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the benchmark scope is held by someone else"))?;
    let renew = Samples::measure(n, |_| {
        let leases = leases.clone();
        let held = held.clone();
        async move {
            anyhow::ensure!(leases.renew(&held).await?, "renewal refused");
            Ok(())
        }
    })
    .await?;
    Metric::against(
        "lease_renew_p50",
        renew.percentile(50.0),
        &floors.valkey_set_get_p50,
        "<= 1.5x valkey_set_get_p50",
    )
    .print();
    Metric::against(
        "lease_renew_p95",
        renew.percentile(95.0),
        &floors.valkey_set_get_p95,
        "<= 1.5x valkey_set_get_p95",
    )
    .print();

    let acquire = Samples::measure(n, |i| {
        let leases = leases.clone();
        async move {
            let lease = leases
                .acquire(&Scope::Group(format!("bench-free-{i}")))
                .await?
                .ok_or_else(|| anyhow::anyhow!("a fresh scope was held"))?;
            leases.release(&lease).await?;
            Ok(())
        }
    })
    .await?;
    Metric::against(
        "lease_acquire_free_p50",
        acquire.percentile(50.0),
        &floors.valkey_set_get_p50,
        "mint (MongoDB) + acquire (Valkey) + fence raise (MongoDB)",
    )
    .print();
    Metric::against(
        "lease_acquire_free_p95",
        acquire.percentile(95.0),
        &floors.valkey_set_get_p95,
        "mint (MongoDB) + acquire (Valkey) + fence raise (MongoDB)",
    )
    .print();

    let fence = held.fence();
    let fenced = Samples::measure(n, |i| {
        let store = store.clone();
        let fence = fence.clone();
        async move {
            store
                .fenced_write(
                    &fence,
                    vec![
                        Write::update_one(
                            "bench_fenced",
                            doc! { "_id": (i % 50) as i64 },
                            doc! { "$inc": { "v": 1_i64 } },
                        )
                        .upsert(),
                    ],
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    Metric::against(
        "fenced_write_p50",
        fenced.percentile(50.0),
        &floors.mongo_update_p50,
        "<= 2x mongo_update_p50",
    )
    .print();
    Metric::against(
        "fenced_write_p95",
        fenced.percentile(95.0),
        &floors.mongo_update_p95,
        "<= 2x mongo_update_p95",
    )
    .print();
    // The same against a bare transaction of the update: what the fence check adds.
    Metric::against(
        "fenced_write_vs_transaction_p50",
        fenced.percentile(50.0),
        &floors.mongo_transaction_p50,
        "the fence check rides in the same bulkWrite: ~1x a bare transaction",
    )
    .print();
    // ...and against a bare transaction updating two documents in one bulkWrite, which is what
    // a fenced write is on the wire: what the store's code around it costs.
    Metric::against(
        "fenced_write_vs_two_update_transaction_p50",
        fenced.percentile(50.0),
        &floors.mongo_transaction_two_p50,
        "the fence document and the write in one bulkWrite, then the commit: ~1x",
    )
    .print();
    leases.release(&held).await?;
    Ok(())
}
