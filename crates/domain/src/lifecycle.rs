//! The scheduler's instance lifecycle: a forward-only state machine.
//!
//! ```text
//! SCHEDULED → PREPARING → PREPARED → STARTING → RUNNING → DRAINING → STOPPING → STOPPED
//!      └──────────┴───────────┴──────────┴──────────┴──────────┴─────────┴────→ CRASHED / STOPPED
//! ```
//!
//! SCHEDULED: placed (node, port, memory reserved; plan persisted), not yet accepted by the node.
//! PREPARING: the node accepted the plan and prepares its directory (templates, modules, files).
//! PREPARED: the directory is ready and nothing runs yet (a warm-pool instance waiting to be
//! taken; `docs/scheduling.md`, "Warm pool"); a start command moves it on.
//! STARTING: the process runs, not yet ready. RUNNING: ready. DRAINING: being taken out of service
//! (scale-down, node drain) while players are still online; stopped when they left or the group's
//! `drainSeconds` passed. STOPPING: the stop command was accepted. STOPPED / CRASHED: ended.
//! A state may be skipped (a fast server goes SCHEDULED → RUNNING), never revisited.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceState {
    Scheduled,
    Preparing,
    Prepared,
    Starting,
    Running,
    Draining,
    Stopping,
    Stopped,
    Crashed,
}

impl InstanceState {
    pub const ALL: [InstanceState; 9] = [
        InstanceState::Scheduled,
        InstanceState::Preparing,
        InstanceState::Prepared,
        InstanceState::Starting,
        InstanceState::Running,
        InstanceState::Draining,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::Crashed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            InstanceState::Scheduled => "SCHEDULED",
            InstanceState::Preparing => "PREPARING",
            InstanceState::Prepared => "PREPARED",
            InstanceState::Starting => "STARTING",
            InstanceState::Running => "RUNNING",
            InstanceState::Draining => "DRAINING",
            InstanceState::Stopping => "STOPPING",
            InstanceState::Stopped => "STOPPED",
            InstanceState::Crashed => "CRASHED",
        }
    }

    pub fn parse(s: &str) -> Option<InstanceState> {
        InstanceState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// STOPPED or CRASHED: nothing follows.
    pub fn is_terminal(self) -> bool {
        matches!(self, InstanceState::Stopped | InstanceState::Crashed)
    }

    /// Whether the lifecycle allows `self → next`: forward only, DRAINING only from RUNNING,
    /// and either end from any live state.
    pub fn may_become(self, next: InstanceState) -> bool {
        use InstanceState::*;
        if self.is_terminal() || self == next {
            return false;
        }
        match next {
            Stopped | Crashed => true,
            Draining => self == Running,
            Stopping => true,
            _ => self < next && next <= Running,
        }
    }

    /// Every state from which `next` may be entered (for a write that checks it atomically).
    pub fn predecessors(next: InstanceState) -> Vec<&'static str> {
        InstanceState::ALL
            .into_iter()
            .filter(|from| from.may_become(next))
            .map(InstanceState::as_str)
            .collect()
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::InstanceState::{self, *};

    #[test]
    fn names_round_trip() {
        for state in InstanceState::ALL {
            assert_eq!(InstanceState::parse(state.as_str()), Some(state));
        }
        assert_eq!(InstanceState::parse("running"), None);
    }

    #[test]
    fn no_backward_arcs_and_no_way_out_of_an_end() {
        for from in InstanceState::ALL {
            for to in InstanceState::ALL {
                if from.may_become(to) {
                    assert!(from < to, "{from} → {to} goes backwards");
                    assert!(!from.is_terminal(), "{from} is an end");
                }
            }
        }
    }

    #[test]
    fn the_arcs_the_scheduler_uses() {
        for (from, to) in [
            (Scheduled, Preparing),
            (Scheduled, Running),
            (Preparing, Starting),
            (Preparing, Prepared),
            (Prepared, Starting),
            (Prepared, Running),
            (Prepared, Stopping),
            (Starting, Running),
            (Running, Draining),
            (Draining, Stopping),
            (Scheduled, Stopping),
            (Draining, Crashed),
            (Preparing, Crashed),
        ] {
            assert!(from.may_become(to), "{from} → {to}");
        }
        for (from, to) in [
            (Running, Starting),
            (Starting, Draining),
            (Starting, Prepared),
            (Prepared, Draining),
            (Stopping, Draining),
            (Stopping, Running),
            (Stopped, Scheduled),
            (Crashed, Stopped),
        ] {
            assert!(!from.may_become(to), "{from} → {to}");
        }
        assert_eq!(InstanceState::predecessors(Draining), vec!["RUNNING"]);
    }
}
