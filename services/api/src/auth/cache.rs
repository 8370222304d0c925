//! The resolved caller (session or API token → user → permissions), kept per replica for a
//! moment (`api.callerCacheTtl`, 2 s by default) so that a busy client costs no store reads per
//! request. Every change that could end or narrow a caller — a logout, a change of a user, a
//! role or an API token, a restore — clears it on the replica that made the change at once and
//! publishes [`ACCESS_CHANGED`] on the event stream, which every api replica follows and clears
//! its own on. A resolution that was running while the cache was cleared is not kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prexor_coord::StoredEvent;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::principal::{Credential, Principal};

/// The event that clears every replica's cache (not shown on `GET /events`).
pub const ACCESS_CHANGED: &str = "ACCESS_CHANGED";

/// Callers kept at most; past it, the expired ones go, or all.
const MAX_CALLERS: usize = 10_000;

/// Resolved callers by bearer token.
pub struct CallerCache {
    ttl: Duration,
    state: Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    /// Counts the clears: a resolution is kept only if none came since it started.
    generation: u64,
    callers: HashMap<String, (Principal, Instant)>,
}

impl CallerCache {
    /// Keeps each caller for `ttl` (zero: keeps none).
    pub fn new(ttl: Duration) -> CallerCache {
        CallerCache {
            ttl,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The caller behind `bearer`, resolved less than the TTL ago, unless its credential has
    /// expired since.
    pub fn get(&self, bearer: &str) -> Option<Principal> {
        let state = self.state();
        let (who, at) = state.callers.get(bearer)?;
        (at.elapsed() < self.ttl && !expired(who)).then(|| who.clone())
    }

    /// Where a resolution starts: pass it to [`CallerCache::keep`].
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Keeps `who` for `bearer`, unless the cache was cleared since `generation` (what was
    /// resolved may be what the clear was about).
    pub fn keep(&self, generation: u64, bearer: &str, who: &Principal) {
        if self.ttl.is_zero() {
            return;
        }
        let mut state = self.state();
        if state.generation != generation {
            return;
        }
        if state.callers.len() >= MAX_CALLERS {
            let ttl = self.ttl;
            state.callers.retain(|_, (_, at)| at.elapsed() < ttl);
            if state.callers.len() >= MAX_CALLERS {
                state.callers.clear();
            }
        }
        state
            .callers
            .insert(bearer.to_owned(), (who.clone(), Instant::now()));
    }

    /// Forgets every caller.
    pub fn clear(&self) {
        let mut state = self.state();
        state.generation += 1;
        state.callers.clear();
    }

    /// Clears the cache on every [`ACCESS_CHANGED`] of `events` (and when some may have been
    /// missed), until `stop`.
    pub async fn follow(
        &self,
        mut events: Receiver<std::sync::Arc<StoredEvent>>,
        stop: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = events.recv() => event,
            };
            match event {
                Ok(event) if event.event.kind != ACCESS_CHANGED => {}
                Ok(_) | Err(RecvError::Lagged(_)) => self.clear(),
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// Whether `who`'s credential has expired (its session or API token).
fn expired(who: &Principal) -> bool {
    match &who.credential {
        Credential::Session {
            expires_at_secs, ..
        } => *expires_at_secs <= prexor_domain::now_secs().max(0) as u64,
        Credential::Token {
            expires_at_ms: Some(at),
            ..
        } => *at <= prexor_domain::now_ms(),
        Credential::Token { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prexor_coord::EventLog;

    use super::*;

    fn session(user: &str, expires_at_secs: u64) -> Principal {
        Principal {
            user: user.to_owned(),
            user_id: format!("{user}-id"),
            permissions: vec!["*".to_owned()],
            credential: Credential::Session {
                id: format!("{user}-session"),
                expires_at_secs,
                issued_at_ms: 0,
            },
        }
    }

    fn later() -> u64 {
        prexor_domain::now_secs() as u64 + 3600
    }

    #[test]
    fn a_caller_is_kept_for_the_ttl_while_its_credential_lasts() {
        let cache = CallerCache::new(Duration::from_millis(100));
        cache.keep(cache.generation(), "a", &session("ann", later()));
        cache.keep(cache.generation(), "b", &session("bob", 1));
        assert_eq!(cache.get("a").map(|w| w.user).as_deref(), Some("ann"));
        assert!(cache.get("b").is_none(), "an expired session is not served");
        std::thread::sleep(Duration::from_millis(120));
        assert!(cache.get("a").is_none(), "kept past the TTL");
        let off = CallerCache::new(Duration::ZERO);
        off.keep(off.generation(), "a", &session("ann", later()));
        assert!(off.get("a").is_none());
    }

    #[test]
    fn a_resolution_overtaken_by_a_clear_is_not_kept() {
        let cache = CallerCache::new(Duration::from_secs(60));
        let started = cache.generation();
        cache.clear();
        cache.keep(started, "a", &session("ann", later()));
        assert!(cache.get("a").is_none());
    }

    /// Two replicas following one event stream: a change on either clears both at once, long
    /// before the TTL would.
    #[tokio::test]
    async fn an_access_change_clears_every_replica() {
        let events = EventLog::local("api-1");
        let stop = CancellationToken::new();
        let replicas = [
            Arc::new(CallerCache::new(Duration::from_secs(3600))),
            Arc::new(CallerCache::new(Duration::from_secs(3600))),
        ];
        for cache in &replicas {
            cache.keep(cache.generation(), "a", &session("ann", later()));
            let (cache, live, stop) = (cache.clone(), events.subscribe(), stop.clone());
            tokio::spawn(async move { cache.follow(live, stop).await });
        }
        events
            .publish("GROUP_CREATED", "lobby", serde_json::json!({}))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            replicas.iter().all(|c| c.get("a").is_some()),
            "other events keep it"
        );
        events
            .publish(ACCESS_CHANGED, "ann", serde_json::json!({}))
            .await;
        let deadline = Instant::now() + Duration::from_secs(1);
        while replicas.iter().any(|c| c.get("a").is_some()) {
            assert!(
                Instant::now() < deadline,
                "a replica still serves the old caller"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
    }
}
