//! What `/proc` says about processes and this boot: enough to tell a live process from a dead
//! one and a process from a later one that reuses its PID (the start time, in clock ticks since
//! boot, is part of a process's identity), and a reboot from a restart (the boot id).

use rustix::process::{Pid, Signal};

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Whether `pid` is a live process (not a zombie).
#[cfg(test)]
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| *state != "Z"))
}

/// When `pid` started, in clock ticks since boot (field 22 of `/proc/<pid>/stat`); `None` for a
/// process that is gone or a zombie.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    if fields.first().is_some_and(|state| state == "Z") {
        return None;
    }
    // The fields here start at field 3 (state).
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `ticks` (not a later one reusing the pid).
pub fn same_process(pid: i32, ticks: u64) -> bool {
    ticks != 0 && start_ticks(pid) == Some(ticks)
}

/// `/proc/<pid>/stat` from field 3 (state) on: the command name in parentheses may contain
/// spaces, so the split starts after its closing parenthesis.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// A signal by the name the shim protocol and the operator use (`TERM`, `KILL`, `INT`, `HUP`).
pub fn signal_named(name: &str) -> Result<Signal, String> {
    match name.trim_start_matches("SIG") {
        "TERM" => Ok(Signal::TERM),
        "KILL" => Ok(Signal::KILL),
        "INT" => Ok(Signal::INT),
        "HUP" => Ok(Signal::HUP),
        "QUIT" => Ok(Signal::QUIT),
        other => Err(format!(
            "unknown signal {other:?} (expected TERM, KILL, INT, HUP or QUIT)"
        )),
    }
}

/// Sends `signal` to the process group led by `pid` (every server leads its own group).
pub fn signal_group(pid: i32, signal: Signal) -> std::io::Result<()> {
    rustix::process::kill_process_group(signalable(pid)?, signal).map_err(std::io::Error::from)
}

/// Sends `signal` to the single process `pid`.
pub fn signal_process(pid: i32, signal: Signal) -> std::io::Result<()> {
    rustix::process::kill_process(signalable(pid)?, signal).map_err(std::io::Error::from)
}

/// `pid` as a process the daemon may signal: never 0, 1 or a negative number (every process,
/// init, a group by accident).
fn signalable(pid: i32) -> std::io::Result<Pid> {
    Pid::from_raw(pid)
        .filter(|p| p.as_raw_nonzero().get() > 1)
        .ok_or_else(|| std::io::Error::other(format!("refusing to signal pid {pid}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_told_apart_from_its_pid_reused() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let ticks = start_ticks(pid).expect("a live child has a start time");
        assert!(alive(pid));
        assert!(same_process(pid, ticks));
        assert!(!same_process(pid, ticks + 1));
        signal_process(pid, signal_named("KILL").unwrap()).unwrap();
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(start_ticks(pid).is_none());
        assert!(boot_id().is_some_and(|b| !b.is_empty()));
        assert!(signal_named("STOP").is_err());
        assert!(signal_group(1, Signal::TERM).is_err());
    }
}
