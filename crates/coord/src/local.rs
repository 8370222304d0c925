use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::backend::{Acquired, LeaseBackend};
use crate::error::CoordError;

/// In-process leases for the development profile without Valkey. Only meaningful while a single
/// replica of each service runs against the database, which the development profile enforces
/// (see [`crate::DevClaim`]).
#[derive(Debug, Default)]
pub struct LocalBackend {
    entries: Mutex<HashMap<String, (String, Instant)>>,
}

impl LocalBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_live<T>(&self, f: impl FnOnce(&mut HashMap<String, (String, Instant)>) -> T) -> T {
        let mut entries = self.entries.lock().expect("local lease table lock");
        let now = Instant::now();
        entries.retain(|_, (_, expires)| *expires > now);
        f(&mut entries)
    }
}

#[async_trait]
impl LeaseBackend for LocalBackend {
    async fn acquire(&self, key: &str, value: &str, ttl: Duration) -> Result<Acquired, CoordError> {
        Ok(self.with_live(|entries| match entries.get(key) {
            Some((current, _)) => Acquired::HeldBy(current.clone()),
            None => {
                entries.insert(key.to_owned(), (value.to_owned(), Instant::now() + ttl));
                Acquired::Yes
            }
        }))
    }

    async fn take_over(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, CoordError> {
        Ok(self.with_live(|entries| {
            entries
                .insert(key.to_owned(), (value.to_owned(), Instant::now() + ttl))
                .map(|(previous, _)| previous)
        }))
    }

    async fn renew_many(
        &self,
        leases: &[(String, String)],
        ttl: Duration,
    ) -> Result<Vec<bool>, CoordError> {
        Ok(self.with_live(|entries| {
            leases
                .iter()
                .map(|(key, value)| match entries.get_mut(key) {
                    Some((current, expires)) if current == value => {
                        *expires = Instant::now() + ttl;
                        true
                    }
                    _ => false,
                })
                .collect()
        }))
    }

    async fn release(&self, key: &str, value: &str) -> Result<bool, CoordError> {
        Ok(self.with_live(|entries| match entries.get(key) {
            Some((current, _)) if current == value => {
                entries.remove(key);
                true
            }
            _ => false,
        }))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, CoordError> {
        Ok(self.with_live(|entries| {
            keys.iter()
                .map(|k| entries.get(k).map(|(v, _)| v.clone()))
                .collect()
        }))
    }

    async fn ping(&self) -> Result<(), CoordError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "in-process (development profile, single writer)".to_owned()
    }
}
