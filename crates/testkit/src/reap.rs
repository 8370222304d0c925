//! Ending every process a test caused, not only those it started: daemons start shims that
//! outlive them by design, and shims start servers. Each such process names the test's
//! directory on its command line (a shim's run directory) or works in it (a server's instance
//! directory), so a sweep over `/proc` finds them all.

use std::path::{Path, PathBuf};

/// A process found by [`under`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub pid: i32,
    pub command: String,
}

/// Every process (but this one) whose command line names a path below `dir`, or whose working
/// directory is below it.
pub fn under(dir: &Path) -> Vec<Found> {
    // The kernel names working directories by their resolved path.
    let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let needle = dir.display().to_string();
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let proc_dir = entry.path();
        let command = std::fs::read(proc_dir.join("cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let cwd: Option<PathBuf> = std::fs::read_link(proc_dir.join("cwd")).ok();
        let zombie = std::fs::read_to_string(proc_dir.join("stat"))
            .ok()
            .and_then(|stat| {
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().next().map(|state| state == "Z")
            })
            .unwrap_or(true);
        if zombie || command.is_empty() {
            continue;
        }
        let works_below = cwd.is_some_and(|cwd| cwd.starts_with(dir) || cwd.starts_with(&resolved));
        if command.contains(&needle) || works_below {
            found.push(Found { pid, command });
        }
    }
    found
}

/// SIGKILLs every process [`under`] `dir` until none is left (a shim killed mid-way may not
/// start anything new, but a sweep or two more costs nothing); what was killed.
pub fn kill_under(dir: &Path) -> Vec<Found> {
    let mut killed = Vec::new();
    for _ in 0..20 {
        let found = under(dir);
        if found.is_empty() {
            break;
        }
        for process in found {
            crate::signal(process.pid as u32, libc::SIGKILL);
            if !killed.contains(&process) {
                killed.push(process);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_working_below_the_directory_is_found_and_killed() {
        let dir = std::env::temp_dir().join(format!("prexor-reap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .current_dir(&dir)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let seen = (0..100).any(|_| {
            let found = under(&dir).iter().any(|f| f.pid == pid);
            if !found {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            found
        });
        assert!(seen, "{pid} works in {}", dir.display());
        let killed = kill_under(&dir);
        assert!(killed.iter().any(|f| f.pid == pid), "{killed:?}");
        child.wait().unwrap();
        assert!(under(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
