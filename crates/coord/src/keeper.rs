use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prexor_domain::Scope;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::lease::{Lease, Leases};
use crate::metrics;

/// Keeps a set of leases alive: renews all of them in one round trip every
/// `coordination.renewInterval`, fences off (marks lost) any whose renewal is refused or whose
/// self-fencing deadline passes, and releases every one of them on shutdown.
#[derive(Clone, Debug)]
pub struct LeaseKeeper {
    inner: Arc<KeeperInner>,
}

#[derive(Debug)]
struct KeeperInner {
    leases: Leases,
    held: Mutex<BTreeMap<Scope, Lease>>,
    changed: Notify,
    /// The metrics label of what this keeper holds (`group`, `node`, ...), or `mixed`.
    kind: &'static str,
}

impl LeaseKeeper {
    /// Starts the renewal loop. When `shutdown` is cancelled the loop releases every lease it
    /// holds and ends; await the handle to know the releases went out.
    pub fn start(
        leases: Leases,
        kind: &'static str,
        shutdown: CancellationToken,
    ) -> (LeaseKeeper, JoinHandle<()>) {
        let keeper = LeaseKeeper {
            inner: Arc::new(KeeperInner {
                leases,
                held: Mutex::new(BTreeMap::new()),
                changed: Notify::new(),
                kind,
            }),
        };
        metrics::keeper_started(kind);
        let task = tokio::spawn(keeper.clone().run(shutdown));
        (keeper, task)
    }

    /// Keeps `lease` alive from now on. A lease for a scope already kept replaces the old one.
    pub fn insert(&self, lease: Lease) {
        self.lock().insert(lease.scope().clone(), lease);
        // A lease just taken is as fresh as a renewed one.
        metrics::renewed(self.inner.kind);
        self.publish();
        self.inner.changed.notify_one();
    }

    /// The live lease for `scope`, if this keeper holds one.
    pub fn get(&self, scope: &Scope) -> Option<Lease> {
        self.lock().get(scope).filter(|l| !l.is_lost()).cloned()
    }

    /// Every live lease held.
    pub fn held(&self) -> Vec<Lease> {
        self.lock()
            .values()
            .filter(|l| !l.is_lost())
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().values().filter(|l| !l.is_lost()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops keeping `scope` and releases its lease (a no-op if another replica has it now).
    pub async fn release(&self, scope: &Scope) {
        let lease = self.lock().remove(scope);
        self.publish();
        if let Some(lease) = lease {
            self.release_lease(&lease).await;
        }
    }

    /// Releases every lease held (graceful stop: peers take the work on their next tick).
    pub async fn release_all(&self) {
        let leases: Vec<Lease> = std::mem::take(&mut *self.lock()).into_values().collect();
        self.publish();
        let releases = leases.iter().map(|l| self.release_lease(l));
        futures::future::join_all(releases).await;
        if !leases.is_empty() {
            tracing::info!(count = leases.len(), "released every held lease");
        }
    }

    async fn release_lease(&self, lease: &Lease) {
        if let Err(err) = self.inner.leases.release(lease).await {
            tracing::warn!(scope = %lease.scope(), error = %err, "could not release lease; it expires after its TTL");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Scope, Lease>> {
        self.inner.held.lock().expect("keeper lock")
    }

    fn publish(&self) {
        metrics::held(self.inner.kind, self.len());
    }

    async fn run(self, shutdown: CancellationToken) {
        let interval = self.inner.leases.timing().renew_interval;
        let mut next_renewal = tokio::time::Instant::now() + interval;
        loop {
            let wake = self.next_deadline().map_or(next_renewal, |deadline| {
                let until = deadline.saturating_duration_since(self.inner.leases.now());
                next_renewal.min(tokio::time::Instant::now() + until)
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.inner.changed.notified() => continue,
                _ = tokio::time::sleep_until(wake) => {}
            }
            // Deadlines first: a holder waking from a pause must not renew a lease it already had
            // to give up; its view of the scope may be stale.
            self.fence_off_expired().await;
            if tokio::time::Instant::now() >= next_renewal {
                next_renewal = tokio::time::Instant::now() + interval;
                self.renew_once().await;
            }
        }
        self.release_all().await;
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.lock()
            .values()
            .filter(|l| !l.is_lost())
            .map(Lease::valid_until)
            .min()
    }

    async fn renew_once(&self) {
        let leases = self.held();
        if leases.is_empty() {
            return;
        }
        match self.inner.leases.renew_many(&leases).await {
            Ok(renewed) if renewed.iter().any(|ok| *ok) => metrics::renewed(self.inner.kind),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(count = leases.len(), error = %err, "renewing leases failed; they stay valid until their self-fencing deadline");
            }
        }
        self.drop_lost();
    }

    /// Marks leases whose deadline passed as lost and gives their keys back, in case the store
    /// still holds them for us: a peer can take the scope without waiting out the TTL.
    async fn fence_off_expired(&self) {
        let expired: Vec<Lease> = self
            .lock()
            .values()
            .filter(|l| l.expire_if_due())
            .cloned()
            .collect();
        self.drop_lost();
        for lease in expired {
            self.release_lease(&lease).await;
        }
    }

    fn drop_lost(&self) {
        self.lock().retain(|_, lease| !lease.is_lost());
        self.publish();
    }
}
