//! Servers a previous run of this daemon started and that still run (they outlive the daemon on
//! purpose): found in the process journal (`<dataDir>/processes.log`, a launch without an exit)
//! and checked in `/proc` (same boot, a live process that started when the launch was
//! journaled, so a reused PID is never mistaken for a server). The daemon reports them and can
//! stop them by signal; their console is not reachable any more.

use std::collections::BTreeMap;
use std::path::Path;

/// A live server from a previous daemon run.
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    pub instance: String,
    pub group: String,
    pub plan_hash: String,
    pub pid: i32,
    pub port: u32,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    event: String,
    #[serde(default)]
    at_ms: i64,
    instance: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    plan_hash: String,
    pid: i32,
    #[serde(default)]
    port: u32,
    #[serde(default)]
    boot_id: String,
}

/// How far the kernel's start time of a process may be from the journaled launch time.
const START_SLACK_MS: i64 = 5_000;

/// The journal's launches without an exit whose process is still the one launched.
pub fn find(journal: &Path) -> Vec<Orphan> {
    let Ok(text) = std::fs::read_to_string(journal) else {
        return Vec::new();
    };
    let boot = boot_id();
    let mut open: BTreeMap<i32, Entry> = BTreeMap::new();
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<Entry>(line) else {
            continue;
        };
        match entry.event.as_str() {
            "launch" => {
                open.insert(entry.pid, entry);
            }
            _ => {
                open.remove(&entry.pid);
            }
        }
    }
    // The newest launch per instance only: an older open launch of the same instance is a
    // process whose exit was not journaled (the daemon died first).
    let mut newest: BTreeMap<String, Entry> = BTreeMap::new();
    for entry in open.into_values() {
        if newest
            .get(&entry.instance)
            .is_none_or(|seen| seen.at_ms < entry.at_ms)
        {
            newest.insert(entry.instance.clone(), entry);
        }
    }
    newest
        .into_values()
        .filter(|e| e.boot_id.is_empty() || Some(&e.boot_id) == boot.as_ref())
        .filter(|e| started_at_ms(e.pid).is_some_and(|at| (at - e.at_ms).abs() <= START_SLACK_MS))
        .map(|e| Orphan {
            instance: e.instance,
            group: e.group,
            plan_hash: e.plan_hash,
            pid: e.pid,
            port: e.port,
        })
        .collect()
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| *state != "Z"))
}

/// When `pid` started (Unix ms), from `/proc/<pid>/stat` and the boot time.
fn started_at_ms(pid: i32) -> Option<i64> {
    let fields = stat_fields(pid)?;
    if fields.first() == Some(&"Z".to_string()) {
        return None;
    }
    // Field 22 (starttime, in clock ticks since boot); the fields here start at field 3.
    let ticks: i64 = fields.get(19)?.parse().ok()?;
    let boot_secs: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // USER_HZ is 100 on every Linux architecture the daemon runs on.
    Some(boot_secs * 1000 + ticks * 10)
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

/// Sends `signal` (`TERM`, `KILL`) to the process group of `pid` (every server runs in its own
/// group, led by itself).
pub fn signal_group(pid: i32, signal: &str) -> Result<(), String> {
    if pid <= 1 {
        return Err(format!("refusing to signal pid {pid}"));
    }
    let status = std::process::Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pid}")])
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -s {signal} -{pid} failed ({status})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_unexited_launches_of_this_boot_are_orphans() {
        let dir = std::env::temp_dir().join(format!("prexor-orphans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let journal = dir.join("processes.log");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let now = prexor_domain::now_ms();
        let boot = boot_id().unwrap();
        let lines = [
            // Ended: not an orphan.
            serde_json::json!({"event":"launch","atMs":now - 60_000,"instance":"g-1","group":"g","planHash":"p0","pid":999_999,"port":1}),
            serde_json::json!({"event":"exit","atMs":now - 50_000,"instance":"g-1","planHash":"p0","pid":999_999,"code":0}),
            // Live, launched now, this boot: an orphan.
            serde_json::json!({"event":"launch","atMs":now,"instance":"g-2","group":"g","planHash":"p2","pid":pid,"port":25566,"bootId":boot}),
            // The same pid journaled long ago (a reused PID): not this process.
            serde_json::json!({"event":"launch","atMs":now - 3_600_000,"instance":"g-3","group":"g","planHash":"p3","pid":std::process::id(),"port":3}),
            // Another boot.
            serde_json::json!({"event":"launch","atMs":now,"instance":"g-4","group":"g","planHash":"p4","pid":std::process::id(),"port":4,"bootId":"elsewhere"}),
        ];
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&journal, text + "not json\n").unwrap();
        let found = find(&journal);
        assert_eq!(
            found,
            [Orphan {
                instance: "g-2".into(),
                group: "g".into(),
                plan_hash: "p2".into(),
                pid,
                port: 25566,
            }]
        );
        assert!(alive(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(pid));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
