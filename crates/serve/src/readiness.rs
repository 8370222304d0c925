use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Whether this replica should receive traffic, and why not.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    checks: RwLock<Vec<(String, CheckFn)>>,
    phase: Mutex<Option<String>>,
    draining: AtomicBool,
    cache: tokio::sync::Mutex<Option<(Instant, ReadinessReport)>>,
}

/// The answer of `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReadinessReport {
    pub ready: bool,
    pub checks: Vec<CheckResult>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Repeated `/readyz` probes within this window reuse one evaluation instead of hitting the stores.
const CACHE_FOR: Duration = Duration::from_millis(500);
/// Bound on each check, so `/readyz` always answers promptly.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

impl Readiness {
    pub fn new() -> Readiness {
        Readiness {
            inner: Arc::new(Inner {
                checks: RwLock::new(Vec::new()),
                phase: Mutex::new(Some("starting".into())),
                draining: AtomicBool::new(false),
                cache: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Adds a named check; `Err(reason)` makes the replica unready with that reason.
    pub fn add<F, Fut>(&self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        self.inner
            .checks
            .write()
            .expect("readiness lock")
            .push((name.to_owned(), check));
    }

    /// While starting: what the replica is waiting for (reported as the reason it is unready).
    pub fn set_phase(&self, phase: Option<String>) {
        *self.inner.phase.lock().expect("readiness lock") = phase;
    }

    /// From now on the replica is unready: it is shutting down.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub async fn report(&self) -> ReadinessReport {
        let mut cache = self.inner.cache.lock().await;
        if let Some((at, report)) = cache.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return report.clone();
        }
        let report = self.evaluate().await;
        *cache = Some((Instant::now(), report.clone()));
        report
    }

    async fn evaluate(&self) -> ReadinessReport {
        let mut checks = Vec::new();
        if self.inner.draining.load(Ordering::SeqCst) {
            checks.push(CheckResult {
                name: "lifecycle".into(),
                ok: false,
                detail: "shutting down".into(),
            });
        } else if let Some(phase) = self.inner.phase.lock().expect("readiness lock").clone() {
            checks.push(CheckResult {
                name: "lifecycle".into(),
                ok: false,
                detail: phase,
            });
        }
        let registered: Vec<(String, CheckFn)> =
            self.inner.checks.read().expect("readiness lock").clone();
        let results =
            futures::future::join_all(registered.into_iter().map(|(name, check)| async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
                };
                CheckResult {
                    name,
                    ok: outcome.is_ok(),
                    detail: outcome.err().unwrap_or_default(),
                }
            }))
            .await;
        checks.extend(results);
        ReadinessReport {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unready_until_started_and_every_failed_check_is_named() {
        let readiness = Readiness::new();
        readiness.add("mongo", || async { Ok(()) });
        readiness.add("valkey", || async { Err("connection refused".to_owned()) });
        let report = readiness.evaluate().await;
        assert!(!report.ready);
        let failed: Vec<_> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| (c.name.as_str(), c.detail.as_str()))
            .collect();
        assert_eq!(
            failed,
            [("lifecycle", "starting"), ("valkey", "connection refused")]
        );

        readiness.set_phase(None);
        let readiness_ok = Readiness::new();
        readiness_ok.set_phase(None);
        readiness_ok.add("mongo", || async { Ok(()) });
        assert!(readiness_ok.evaluate().await.ready);
        readiness_ok.set_draining();
        let report = readiness_ok.evaluate().await;
        assert!(!report.ready);
        assert_eq!(report.checks[0].detail, "shutting down");
    }
}
