//! Short-lived shared state that must be seen by every replica but need not survive a Valkey
//! restart: login-failure counters and lockouts, rate-limit windows, JWT revocations
//! (docs/architecture.md, "State"). Valkey in production; in-process for the development profile
//! without Valkey (one replica, enforced by [`crate::DevClaim`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;

use crate::{CoordError, ValkeyBackend};

/// `INCR key`, giving a new key its expiry: a fixed window counter in one round trip.
static INCR_WINDOW: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n",
    )
});

#[derive(Clone, Debug)]
pub enum Ephemeral {
    Valkey {
        backend: Box<ValkeyBackend>,
        namespace: String,
    },
    Local(Arc<Mutex<HashMap<String, (i64, Instant)>>>),
}

fn ttl_ms(ttl: Duration) -> u64 {
    ttl.as_millis().max(1) as u64
}

impl Ephemeral {
    pub fn valkey(backend: ValkeyBackend, namespace: &str) -> Ephemeral {
        Ephemeral::Valkey {
            backend: Box::new(backend),
            namespace: namespace.to_owned(),
        }
    }

    pub fn local() -> Ephemeral {
        Ephemeral::Local(Arc::default())
    }

    fn key(namespace: &str, key: &str) -> String {
        format!("{namespace}{key}")
    }

    fn with_local<T>(
        table: &Mutex<HashMap<String, (i64, Instant)>>,
        f: impl FnOnce(&mut HashMap<String, (i64, Instant)>) -> T,
    ) -> T {
        let mut table = table.lock().expect("ephemeral table lock");
        let now = Instant::now();
        table.retain(|_, (_, expires)| *expires > now);
        f(&mut table)
    }

    /// Adds one to the counter `key`, which expires `window` after its first increment; the
    /// new count.
    pub async fn incr_window(&self, key: &str, window: Duration) -> Result<i64, CoordError> {
        match self {
            Ephemeral::Valkey { backend, namespace } => {
                let mut conn = backend.conn();
                backend
                    .bounded(
                        "counting in a window",
                        INCR_WINDOW
                            .key(Self::key(namespace, key))
                            .arg(ttl_ms(window))
                            .invoke_async(&mut conn),
                    )
                    .await
            }
            Ephemeral::Local(table) => Ok(Self::with_local(table, |t| {
                let entry = t
                    .entry(key.to_owned())
                    .or_insert((0, Instant::now() + window));
                entry.0 += 1;
                entry.0
            })),
        }
    }

    /// Sets `key` (to 1) for `ttl`.
    pub async fn set_for(&self, key: &str, ttl: Duration) -> Result<(), CoordError> {
        match self {
            Ephemeral::Valkey { backend, namespace } => {
                let mut conn = backend.conn();
                backend
                    .bounded(
                        "setting a flag",
                        redis::cmd("SET")
                            .arg(Self::key(namespace, key))
                            .arg(1)
                            .arg("PX")
                            .arg(ttl_ms(ttl))
                            .query_async::<()>(&mut conn),
                    )
                    .await
            }
            Ephemeral::Local(table) => {
                Self::with_local(table, |t| {
                    t.insert(key.to_owned(), (1, Instant::now() + ttl))
                });
                Ok(())
            }
        }
    }

    /// How long `key` still lives (`None`: absent).
    pub async fn remaining(&self, key: &str) -> Result<Option<Duration>, CoordError> {
        match self {
            Ephemeral::Valkey { backend, namespace } => {
                let mut conn = backend.conn();
                let ms: i64 = backend
                    .bounded(
                        "reading a flag",
                        redis::cmd("PTTL")
                            .arg(Self::key(namespace, key))
                            .query_async(&mut conn),
                    )
                    .await?;
                // -2: absent; -1: no expiry (never set so by us, but treat it as present).
                Ok(match ms {
                    -2 => None,
                    -1 => Some(Duration::MAX),
                    ms => Some(Duration::from_millis(ms.max(0) as u64)),
                })
            }
            Ephemeral::Local(table) => Ok(Self::with_local(table, |t| {
                t.get(key)
                    .map(|(_, expires)| expires.saturating_duration_since(Instant::now()))
            })),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), CoordError> {
        match self {
            Ephemeral::Valkey { backend, namespace } => {
                let mut conn = backend.conn();
                backend
                    .bounded(
                        "deleting a flag",
                        redis::cmd("DEL")
                            .arg(Self::key(namespace, key))
                            .query_async::<()>(&mut conn),
                    )
                    .await
            }
            Ephemeral::Local(table) => {
                Self::with_local(table, |t| t.remove(key));
                Ok(())
            }
        }
    }
}
