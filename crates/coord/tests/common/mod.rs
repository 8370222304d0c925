//! Shared setup for the coordination tests: real Valkey and MongoDB-wire servers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use prexor_coord::{LeaseBackend, Leases, ValkeyBackend};
use prexor_domain::LeaseTiming;
use prexor_store::Store;
use prexor_testkit::TestStores;

/// Short leases so expiry can be waited out in tests.
pub fn fast_timing() -> LeaseTiming {
    LeaseTiming {
        ttl: Duration::from_millis(800),
        renew_interval: Duration::from_millis(150),
        self_fence_after: Duration::from_millis(600),
    }
}

pub struct Env {
    pub stores: TestStores,
    pub store: Store,
    pub valkey: ValkeyBackend,
}

impl Env {
    pub async fn new(test: &str) -> anyhow::Result<Env> {
        let stores = TestStores::new(test)?;
        let store = stores.store(test).await?;
        let valkey = ValkeyBackend::connect(&stores.valkey_url, Duration::from_secs(2))?;
        Ok(Env {
            stores,
            store,
            valkey,
        })
    }

    /// Leases for replica `holder` on the shared Valkey.
    pub fn leases(&self, holder: &str) -> Leases {
        self.leases_on(holder, Arc::new(self.valkey.clone()))
    }

    pub fn leases_on(&self, holder: &str, backend: Arc<dyn LeaseBackend>) -> Leases {
        Leases::new(
            backend,
            self.store.clone(),
            holder,
            self.stores.namespace.clone(),
            fast_timing(),
        )
    }
}

/// Waits out a lease TTL (plus margin) so the store expires it.
pub async fn wait_past_ttl() {
    tokio::time::sleep(fast_timing().ttl + Duration::from_millis(300)).await;
}
