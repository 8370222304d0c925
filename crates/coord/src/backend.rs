use std::time::Duration;

use async_trait::async_trait;

use crate::error::CoordError;

/// What an acquisition attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The key was free (or expired) and now holds our value.
    Yes,
    /// Someone holds it; their value.
    HeldBy(String),
}

/// Atomic lease primitives over a key-value store with store-side expiry. Values are opaque to
/// the backend; every operation compares the full value, so a holder can only renew or release
/// what it set itself.
#[async_trait]
pub trait LeaseBackend: Send + Sync + std::fmt::Debug {
    /// Sets `key = value` with expiry `ttl` if the key is absent.
    async fn acquire(&self, key: &str, value: &str, ttl: Duration) -> Result<Acquired, CoordError>;
    /// Sets `key = value` with expiry `ttl` whatever it held; returns the previous value.
    async fn take_over(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, CoordError>;
    /// For each `(key, value)`: extends the expiry to `ttl` if the key still holds `value`.
    async fn renew_many(
        &self,
        leases: &[(String, String)],
        ttl: Duration,
    ) -> Result<Vec<bool>, CoordError>;
    /// Deletes `key` if it holds `value`; a non-holder's release is a no-op (`false`).
    async fn release(&self, key: &str, value: &str) -> Result<bool, CoordError>;
    /// Current values of `keys` (absent or expired → `None`).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, CoordError>;
    /// Round trip to the store: the readiness check.
    async fn ping(&self) -> Result<(), CoordError>;
    /// Human description for logs and status, without credentials.
    fn describe(&self) -> String;
}
