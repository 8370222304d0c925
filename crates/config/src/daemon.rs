//! How the daemon keeps servers apart from itself and from each other (`daemon.runAs`,
//! `daemon.serversDir`, cgroup limits, console logs). See `docs/daemon-protocol.md`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::reader::Reader;

/// The users servers run as (`daemon.runAs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// `"daemon"`: the daemon's own user (no isolation from the daemon's files).
    Daemon,
    /// `"minecraft"`, `"1001"` or `"1001:1001"`: every server as this one user.
    User { uid: u32, gid: u32 },
    /// `"200000-200999"`: each running server as its own uid (and gid) from the range, so
    /// servers cannot read each other's directories either.
    Range { first: u32, last: u32 },
}

/// Used when the daemon runs as root and `daemon.runAs` is unset.
pub const DEFAULT_UID_RANGE: RunAs = RunAs::Range {
    first: 200_000,
    last: 200_999,
};

impl FromStr for RunAs {
    type Err = String;

    fn from_str(s: &str) -> Result<RunAs, String> {
        let s = s.trim();
        let number = |n: &str| {
            n.trim()
                .parse::<u32>()
                .map_err(|_| format!("{n:?} is not a user id"))
        };
        if s == "daemon" {
            return Ok(RunAs::Daemon);
        }
        if let Some((first, last)) = s.split_once('-')
            && first.chars().all(|c| c.is_ascii_digit())
        {
            let (first, last) = (number(first)?, number(last)?);
            if first == 0 || last < first {
                return Err(format!(
                    "{s:?}: a uid range is \"FIRST-LAST\" with 0 < FIRST <= LAST"
                ));
            }
            return Ok(RunAs::Range { first, last });
        }
        let (user, group) = match s.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (s, None),
        };
        let (uid, primary) = if user.chars().all(|c| c.is_ascii_digit()) && !user.is_empty() {
            let uid = number(user)?;
            (uid, uid)
        } else {
            lookup_user(user)?
        };
        if uid == 0 {
            return Err(format!(
                "{s:?} is root; servers must run as an unprivileged user"
            ));
        }
        let gid = group.map(number).transpose()?.unwrap_or(primary);
        Ok(RunAs::User { uid, gid })
    }
}

/// A user's uid and primary gid from `/etc/passwd`.
fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("cannot read /etc/passwd to find user {name:?}: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == name)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| {
            format!("no user {name:?} in /etc/passwd (give a name, a uid, \"uid:gid\" or a range \"200000-200999\")")
        })
}

/// The daemon's rules for the servers it runs.
#[derive(Debug, Clone)]
pub struct ServerIsolation {
    /// `daemon.serversDir` (default `<dataDir>-servers`): the instances' working directories,
    /// apart from the daemon's private `dataDir`.
    pub servers_dir: PathBuf,
    /// `daemon.runAs`; unset: [`DEFAULT_UID_RANGE`] when the daemon runs as root, else the
    /// daemon's own user.
    pub run_as: Option<RunAs>,
    /// `daemon.cgroups` (default true): one cgroup per server with its memory limit where the
    /// host allows it.
    pub cgroups: bool,
    /// `daemon.memoryOverheadPercent` (default 20): a server's memory limit is its group's
    /// `memoryMb` plus this much (a JVM uses more than its heap).
    pub memory_overhead_percent: u32,
    /// `daemon.cpuQuotaPercent`: optional CPU limit per server, in percent of one core.
    pub cpu_quota_percent: Option<u32>,
    /// `daemon.consoleLogMb` (default 10): a server's console log is rotated at this size
    /// (one older file is kept).
    pub console_log_bytes: u64,
}

impl ServerIsolation {
    pub(crate) fn read(r: &mut Reader, data_dir: &Path) -> ServerIsolation {
        let default_servers = {
            let mut name = data_dir.as_os_str().to_owned();
            name.push("-servers");
            PathBuf::from(name)
        };
        let servers_dir: PathBuf = r.get_or("daemon.serversDir", default_servers);
        if servers_dir.starts_with(data_dir) {
            r.problem(
                "daemon.serversDir",
                format!(
                    "{} is inside daemon.dataDir; servers must not be able to reach the node's key",
                    servers_dir.display()
                ),
            );
        }
        let cpu_quota_percent: Option<u32> = r.get("daemon.cpuQuotaPercent");
        if cpu_quota_percent == Some(0) {
            r.problem(
                "daemon.cpuQuotaPercent",
                "must be above 0 (100 = one core); leave it unset for no limit",
            );
        }
        let console_mb: u64 = r.get_or("daemon.consoleLogMb", 10);
        if console_mb == 0 {
            r.problem("daemon.consoleLogMb", "must be at least 1");
        }
        ServerIsolation {
            servers_dir,
            run_as: r.parse("daemon.runAs"),
            cgroups: r.get_or("daemon.cgroups", true),
            memory_overhead_percent: r.get_or("daemon.memoryOverheadPercent", 20),
            cpu_quota_percent,
            console_log_bytes: console_mb.max(1) * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_takes_names_ids_pairs_and_ranges() {
        assert_eq!("daemon".parse(), Ok(RunAs::Daemon));
        assert_eq!(
            "1001".parse(),
            Ok(RunAs::User {
                uid: 1001,
                gid: 1001
            })
        );
        assert_eq!("1001:50".parse(), Ok(RunAs::User { uid: 1001, gid: 50 }));
        assert_eq!(
            "200000-200999".parse(),
            Ok(RunAs::Range {
                first: 200_000,
                last: 200_999
            })
        );
        assert!(matches!("nobody".parse(), Ok(RunAs::User { .. })));
        for bad in ["0", "root", "5-2", "0-10", "no-such-user", "12:x"] {
            let err = bad.parse::<RunAs>().unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }
}
