use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where lease arithmetic gets "now" from. Lease *expiry* is judged by the coordination store's
/// clock; this clock only drives the holder's own self-fencing deadline, so tests can move it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Instant;
}

/// The process's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (plus real time elapsed), for tests of self-fencing.
#[derive(Debug)]
pub struct ManualClock {
    skew: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> Self {
        ManualClock {
            skew: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves this clock forward by `by`, as if the process had been paused that long.
    pub fn advance(&self, by: Duration) {
        *self.skew.lock().expect("clock lock") += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        Instant::now() + *self.skew.lock().expect("clock lock")
    }
}
