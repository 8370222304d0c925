//! Crash points for the acceptance suite: with `PREXORCLOUD_FAILPOINTS=name[,name…]` (not a
//! `PREXOR_*` variable: those are configuration keys) in its
//! environment a process dies (abort, as abruptly as SIGKILL) when it reaches a named point, so
//! a test can kill a replica at an exact moment — e.g. after a plan is persisted and before it is
//! dispatched. Unset (always, in production) a point costs one lookup in an empty list.

use std::sync::OnceLock;

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("PREXORCLOUD_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// Dies here if `name` is armed.
pub fn hit(name: &str) {
    if armed().iter().any(|p| p == name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting");
        std::process::abort();
    }
}
