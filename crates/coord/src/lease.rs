use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prexor_domain::{LeaseTiming, Scope};
use prexor_store::{Fence, Store};
use tokio_util::sync::CancellationToken;

use crate::backend::{Acquired, LeaseBackend};
use crate::clock::{Clock, SystemClock};
use crate::error::CoordError;
use crate::metrics;

/// Who holds a scope, as recorded in the coordination store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The holder's replica id.
    pub holder: String,
    pub token: u64,
}

impl LeaseHolder {
    fn parse(value: &str) -> Option<LeaseHolder> {
        let (holder, token) = value.rsplit_once('|')?;
        Some(LeaseHolder {
            holder: holder.to_owned(),
            token: token.parse().ok()?,
        })
    }
}

/// Acquires, renews and releases leases for one replica (the holder).
#[derive(Clone, Debug)]
pub struct Leases {
    inner: Arc<LeasesInner>,
}

#[derive(Debug)]
struct LeasesInner {
    backend: Arc<dyn LeaseBackend>,
    store: Store,
    holder: String,
    namespace: String,
    timing: LeaseTiming,
    clock: Arc<dyn Clock>,
}

impl Leases {
    /// `holder` is this replica's id; `namespace` prefixes every key (`prexor:v1:`).
    pub fn new(
        backend: Arc<dyn LeaseBackend>,
        store: Store,
        holder: impl Into<String>,
        namespace: impl Into<String>,
        timing: LeaseTiming,
    ) -> Leases {
        Leases {
            inner: Arc::new(LeasesInner {
                backend,
                store,
                holder: holder.into(),
                namespace: namespace.into(),
                timing,
                clock: Arc::new(SystemClock),
            }),
        }
    }

    /// The same leases with another clock for the self-fencing deadline (tests).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Leases {
        let inner = &self.inner;
        Leases {
            inner: Arc::new(LeasesInner {
                backend: inner.backend.clone(),
                store: inner.store.clone(),
                holder: inner.holder.clone(),
                namespace: inner.namespace.clone(),
                timing: inner.timing,
                clock,
            }),
        }
    }

    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    pub fn timing(&self) -> LeaseTiming {
        self.inner.timing
    }

    pub fn backend(&self) -> &Arc<dyn LeaseBackend> {
        &self.inner.backend
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// "Now" on the clock the self-fencing deadlines are measured with.
    pub(crate) fn now(&self) -> Instant {
        self.inner.clock.now()
    }

    pub fn key(&self, scope: &Scope) -> String {
        scope.lease_key(&self.inner.namespace)
    }

    /// Acquires `scope` if nobody holds it. `Ok(None)` means another replica holds it (or a
    /// higher token has already marked it, in which case the scope is left free again).
    #[tracing::instrument(
        name = "lease.acquire",
        skip_all,
        fields(scope = %scope, token = tracing::field::Empty, acquired = tracing::field::Empty)
    )]
    pub async fn acquire(&self, scope: &Scope) -> Result<Option<Lease>, CoordError> {
        let token = self.inner.store.mint_token(&scope.to_string()).await?;
        tracing::Span::current().record("token", token);
        let key = self.key(scope);
        let value = format!("{}|{token}", self.inner.holder);
        let sent_at = self.inner.clock.now();
        match self
            .inner
            .backend
            .acquire(&key, &value, self.inner.timing.ttl)
            .await?
        {
            Acquired::Yes => {}
            Acquired::HeldBy(_) => {
                metrics::contended(scope);
                tracing::Span::current().record("acquired", false);
                return Ok(None);
            }
        }
        let lease = self.new_lease(scope.clone(), key, value, token, sent_at);
        let fenced = self.fence_in(lease).await;
        tracing::Span::current().record("acquired", matches!(fenced, Ok(Some(_))));
        fenced
    }

    /// Takes `scope` whether or not someone holds it (a daemon that moved to this gateway moves
    /// its node's ownership here). The previous holder's renewals and fenced writes fail from now.
    #[tracing::instrument(
        name = "lease.take_over",
        skip_all,
        fields(scope = %scope, token = tracing::field::Empty)
    )]
    pub async fn take_over(&self, scope: &Scope) -> Result<Lease, CoordError> {
        let token = self.inner.store.mint_token(&scope.to_string()).await?;
        tracing::Span::current().record("token", token);
        let key = self.key(scope);
        let value = format!("{}|{token}", self.inner.holder);
        let sent_at = self.inner.clock.now();
        let previous = self
            .inner
            .backend
            .take_over(&key, &value, self.inner.timing.ttl)
            .await?;
        if previous.is_some() {
            metrics::contended(scope);
        }
        let lease = self.new_lease(scope.clone(), key, value, token, sent_at);
        self.fence_in(lease).await?.ok_or_else(|| {
            CoordError::Refused(format!(
                "taking over {scope}: a newer token already owns the scope; try again"
            ))
        })
    }

    /// Raises the scope's fence mark to the new lease's token before anyone reads the scope's
    /// state under it, so the previous holder's late writes are rejected from here on.
    async fn fence_in(&self, lease: Lease) -> Result<Option<Lease>, CoordError> {
        match self.inner.store.raise_fence(&lease.fence()).await {
            Ok(true) => {
                metrics::acquired(lease.scope());
                tracing::debug!(scope = %lease.scope(), token = lease.token(), "lease acquired");
                Ok(Some(lease))
            }
            Ok(false) => {
                // A slower acquisition with a lower token got the key after a faster, higher one
                // had already marked the scope: that token can never write, so give the key back.
                metrics::stale_acquisition(lease.scope());
                self.release(&lease).await?;
                Ok(None)
            }
            Err(err) => {
                if let Err(release_err) = self.release(&lease).await {
                    tracing::warn!(scope = %lease.scope(), error = %release_err, "could not release a lease whose fence could not be raised; it expires after its TTL");
                }
                Err(err.into())
            }
        }
    }

    fn new_lease(
        &self,
        scope: Scope,
        key: String,
        value: String,
        token: u64,
        sent_at: Instant,
    ) -> Lease {
        Lease {
            inner: Arc::new(LeaseInner {
                scope,
                key,
                value,
                token,
                self_fence_after: self.inner.timing.self_fence_after,
                valid_until: Mutex::new(sent_at + self.inner.timing.self_fence_after),
                lost: CancellationToken::new(),
                ended: AtomicBool::new(false),
                backend: self.inner.backend.clone(),
                clock: self.inner.clock.clone(),
            }),
        }
    }

    /// Renews one lease; `false` (and the lease is marked lost) when the store refused.
    pub async fn renew(&self, lease: &Lease) -> Result<bool, CoordError> {
        Ok(self.renew_many(std::slice::from_ref(lease)).await?[0])
    }

    /// Renews every lease in one round trip (per 512). Each renewed lease's self-fencing deadline
    /// moves to the send time plus `selfFenceAfter`; each refused one is marked lost. On an error
    /// nothing is marked: the deadlines run out on their own.
    #[tracing::instrument(
        level = "debug",
        name = "lease.renew",
        skip_all,
        fields(leases = leases.len())
    )]
    pub async fn renew_many(&self, leases: &[Lease]) -> Result<Vec<bool>, CoordError> {
        let pairs: Vec<(String, String)> = leases
            .iter()
            .map(|l| (l.inner.key.clone(), l.inner.value.clone()))
            .collect();
        let sent_at = self.inner.clock.now();
        let result = self
            .inner
            .backend
            .renew_many(&pairs, self.inner.timing.ttl)
            .await;
        let renewed = match result {
            Ok(renewed) => renewed,
            Err(err) => {
                leases.iter().for_each(|l| metrics::renew_failed(l.scope()));
                return Err(err);
            }
        };
        for (lease, ok) in leases.iter().zip(&renewed) {
            if *ok {
                lease.renewed(sent_at);
            } else {
                metrics::renew_failed(lease.scope());
                lease.mark_lost(
                    "refused",
                    "the store refused the renewal: the lease expired or another replica took it over",
                );
            }
        }
        Ok(renewed)
    }

    /// Releases the lease if it is still ours (a no-op otherwise) and ends it locally.
    #[tracing::instrument(
        name = "lease.release",
        skip_all,
        fields(scope = %lease.scope(), token = lease.token())
    )]
    pub async fn release(&self, lease: &Lease) -> Result<bool, CoordError> {
        lease.end();
        self.inner
            .backend
            .release(&lease.inner.key, &lease.inner.value)
            .await
    }

    /// Who holds each scope right now, per the coordination store.
    pub async fn holders(&self, scopes: &[Scope]) -> Result<Vec<Option<LeaseHolder>>, CoordError> {
        let keys: Vec<String> = scopes.iter().map(|s| self.key(s)).collect();
        let values = self.inner.backend.get_many(&keys).await?;
        Ok(values
            .into_iter()
            .map(|v| v.as_deref().and_then(LeaseHolder::parse))
            .collect())
    }
}

/// A held lease. Clones share state. Dropping the last clone of a lease that was neither
/// released nor lost releases it in the background.
#[derive(Clone, Debug)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

#[derive(Debug)]
struct LeaseInner {
    scope: Scope,
    key: String,
    value: String,
    token: u64,
    self_fence_after: Duration,
    valid_until: Mutex<Instant>,
    lost: CancellationToken,
    ended: AtomicBool,
    backend: Arc<dyn LeaseBackend>,
    clock: Arc<dyn Clock>,
}

impl Lease {
    pub fn scope(&self) -> &Scope {
        &self.inner.scope
    }

    pub fn token(&self) -> u64 {
        self.inner.token
    }

    /// What to pass to [`Store::fenced_write`] and to daemon commands.
    pub fn fence(&self) -> Fence {
        Fence::new(self.inner.scope.to_string(), self.inner.token)
    }

    /// True while the lease is neither lost nor released and its last successful renewal (by
    /// send time) is younger than `coordination.selfFenceAfter`. Check it before every mutation;
    /// the fence catches what this check cannot (a pause between the check and the write).
    pub fn is_valid(&self) -> bool {
        !self.inner.lost.is_cancelled() && self.inner.clock.now() < self.valid_until()
    }

    /// The local self-fencing deadline.
    pub fn valid_until(&self) -> Instant {
        *self.inner.valid_until.lock().expect("lease deadline lock")
    }

    /// Cancelled once, when the lease is lost, released or self-fenced: stop the work it guards.
    pub fn lost(&self) -> CancellationToken {
        self.inner.lost.clone()
    }

    pub fn is_lost(&self) -> bool {
        self.inner.lost.is_cancelled()
    }

    fn renewed(&self, sent_at: Instant) {
        if self.is_lost() {
            return;
        }
        let mut until = self.inner.valid_until.lock().expect("lease deadline lock");
        *until = (*until).max(sent_at + self.inner.self_fence_after);
    }

    /// Marks the lease lost; returns `true` the first (and only) time.
    pub(crate) fn mark_lost(&self, reason: &'static str, detail: &str) -> bool {
        if self.inner.ended.swap(true, Ordering::SeqCst) {
            return false;
        }
        metrics::lost(self.scope(), reason);
        tracing::warn!(scope = %self.scope(), token = self.token(), reason, "{detail}; lease lost, stopping the work it guards");
        self.inner.lost.cancel();
        true
    }

    /// Self-fences the lease if its deadline has passed; returns `true` if it did so now.
    pub(crate) fn expire_if_due(&self) -> bool {
        !self.is_lost()
            && self.inner.clock.now() >= self.valid_until()
            && self.mark_lost(
                "self-fenced",
                "no successful renewal within coordination.selfFenceAfter",
            )
    }

    fn end(&self) {
        self.inner.ended.store(true, Ordering::SeqCst);
        self.inner.lost.cancel();
    }
}

impl Drop for LeaseInner {
    fn drop(&mut self) {
        if self.ended.load(Ordering::SeqCst) {
            return;
        }
        self.lost.cancel();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = self.backend.clone();
        let key = std::mem::take(&mut self.key);
        let value = std::mem::take(&mut self.value);
        runtime.spawn(async move {
            if let Err(err) = backend.release(&key, &value).await {
                tracing::debug!(%key, error = %err, "releasing a dropped lease failed; it expires after its TTL");
            }
        });
    }
}
