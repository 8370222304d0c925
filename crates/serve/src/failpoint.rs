//! Crash, pause and error points for the acceptance suite: with
//! `PREXORCLOUD_FAILPOINTS=name[=action][,…]` (not a `PREXOR_*` variable: those are configuration
//! keys) in its environment, a process reaching a named point either dies (`abort`, the default:
//! as abruptly as SIGKILL) or stops itself (`stop`: SIGSTOP, once — a "GC pause" at exactly that
//! moment, until the test sends SIGCONT). Tests use them to hit a replica between two steps,
//! e.g. after a plan is persisted and before it is dispatched. An error point ([`fail`]) armed
//! with `fail-while:PATH` makes its operation fail while the file PATH exists, so a test decides
//! when a store write starts and stops failing. Unset (always, in production) a point costs one
//! lookup in an empty list.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Abort,
    Stop,
    /// [`fail`] reports an error while this file exists.
    FailWhile(std::path::PathBuf),
}

fn armed() -> &'static [(String, Action, AtomicBool)] {
    static ARMED: OnceLock<Vec<(String, Action, AtomicBool)>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("PREXORCLOUD_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|point| {
                let (name, action) = match point.split_once('=') {
                    Some((name, "stop")) => (name, Action::Stop),
                    Some((name, action)) => match action.strip_prefix("fail-while:") {
                        Some(path) => (name, Action::FailWhile(path.into())),
                        None => (name, Action::Abort),
                    },
                    None => (point, Action::Abort),
                };
                (name.to_owned(), action, AtomicBool::new(false))
            })
            .collect()
    })
}

/// An armed error point that fired.
#[derive(Debug, Clone, thiserror::Error)]
#[error("failpoint {name} (while {path} exists)")]
pub struct Injected {
    pub name: String,
    pub path: String,
}

/// An error point: `Err` (naming the point) while it is armed with `fail-while:PATH` and PATH
/// exists; `Ok` otherwise.
pub fn fail(name: &str) -> Result<(), Injected> {
    for (point, action, _) in armed() {
        if point == name
            && let Action::FailWhile(path) = action
            && path.exists()
        {
            return Err(Injected {
                name: name.to_owned(),
                path: path.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Dies or pauses here if `name` is armed.
pub fn hit(name: &str) {
    for (point, action, fired) in armed() {
        if point != name {
            continue;
        }
        match action {
            Action::Abort => {
                tracing::error!(failpoint = name, "failpoint reached: aborting");
                std::process::abort();
            }
            Action::FailWhile(_) => {}
            Action::Stop => {
                if !fired.swap(true, Ordering::SeqCst) {
                    tracing::warn!(failpoint = name, "failpoint reached: stopping (SIGSTOP)");
                    // kill(1) rather than an unsafe raise(2): the stop is delivered while the
                    // child is being waited for, so this thread stops before it goes on.
                    let stopped = std::process::Command::new("kill")
                        .args(["-STOP", &std::process::id().to_string()])
                        .status();
                    if !stopped.as_ref().is_ok_and(|s| s.success()) {
                        tracing::error!(
                            failpoint = name,
                            "could not stop this process: {stopped:?}"
                        );
                    }
                    tracing::warn!(failpoint = name, "resumed after the failpoint's stop");
                }
            }
        }
    }
}
