//! What the daemon and a shim say to each other: the start spec the daemon writes before it
//! starts a shim, the exit file a shim leaves, and the JSON lines spoken over the shim's socket.
//!
//! The protocol is versioned: every connection starts with `Hello {protocol}` naming the newest
//! version the client speaks, and the shim answers with the version it will use (the lower of
//! the two). A daemon therefore talks to shims started by an older daemon binary, and fields
//! added later are optional (`#[serde(default)]`) so older peers ignore them.
//! `docs/daemon-protocol.md` describes it for operators.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The newest protocol version this binary speaks.
pub const PROTOCOL: u32 = 1;

/// Everything a shim needs to start its server, written by the daemon to `<run dir>/spec.json`
/// before the shim starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub instance_id: String,
    /// argv, placeholders already substituted.
    pub argv: Vec<String>,
    /// The server's working directory (its instance directory).
    pub cwd: PathBuf,
    /// The server's whole environment (nothing of the daemon's is inherited).
    pub env: BTreeMap<String, String>,
    /// The user and group the server runs as (`daemon.runAs`); the shim's own when unset.
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// The size at which `console.log` is rotated to `console.log.1`.
    pub log_max_bytes: u64,
    /// The cgroup the server is placed in (created with its limits by the daemon).
    #[serde(default)]
    pub cgroup: Option<crate::cgroup::Cgroup>,
}

/// How the server ended, as the shim saw it; also the content of `<run dir>/exit.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    /// The exit code, or 128 + the signal that ended it.
    pub code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    pub at_ms: i64,
    /// In words: "exited with code 1", "killed by signal 9", "killed by the kernel: out of
    /// memory (limit 512 MiB)", "could not be started: …".
    pub reason: String,
    /// Killed by the kernel's out-of-memory killer (its cgroup counted an OOM kill).
    #[serde(default)]
    pub oom: bool,
}

/// What a shim knows now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub shim_pid: i32,
    /// The server's pid and its start time (clock ticks since boot); 0 when it never started.
    pub server_pid: i32,
    #[serde(default)]
    pub server_start_ticks: u64,
    /// The number the next console line will get (lines are numbered from 1).
    pub next_line: u64,
    /// Set once the server ended.
    #[serde(default)]
    pub exit: Option<Exit>,
}

/// One request line from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// First on every connection.
    Hello {
        protocol: u32,
    },
    Status,
    /// Subscribes, then answers with the status, the kept lines numbered `from` and later, every
    /// new line as it comes, and the exit. Subscribing comes first, so no exit slips between the
    /// status and the stream.
    Attach {
        from: u64,
    },
    /// A console line for the server's stdin (a newline is added).
    Input {
        line: String,
    },
    /// A signal (`TERM`, `KILL`, `INT`, `HUP`, `QUIT`) for the server's process group, or with
    /// `tree` for every process of its cgroup as well.
    Signal {
        signal: String,
        #[serde(default)]
        tree: bool,
    },
    /// Answers with the exit once the server ended.
    Wait,
}

/// One answer line from a shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Reply {
    Hello { protocol: u32, version: String },
    Status(Status),
    Line { n: u64, text: String },
    Exited(Exit),
    Done,
    Error { message: String },
}

/// The files of one instance's run directory (`<dataDir>/run/<instance>/`, private to the
/// daemon): the spec, the shim's socket and diagnostics, the server's console log and its exit.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn spec(&self) -> PathBuf {
        self.0.join("spec.json")
    }
    pub fn socket(&self) -> PathBuf {
        self.0.join("sock")
    }
    pub fn exit(&self) -> PathBuf {
        self.0.join("exit.json")
    }
    pub fn console_log(&self) -> PathBuf {
        self.0.join("console.log")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.0.join("shim.log")
    }
    pub fn record(&self) -> PathBuf {
        self.0.join("record.json")
    }
    /// The number of the last console line the daemon passed on (kept about once a second), so
    /// that an adopting daemon replays only what may not have reached the cluster.
    pub fn cursor(&self) -> PathBuf {
        self.0.join("cursor")
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Writes `value` as JSON to `path` so that a reader sees the old file or the new one, never a
/// part: a temporary file beside it, synced, then renamed over it.
pub fn write_atomically(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads a JSON file written by [`write_atomically`]; `None` when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_tagged_json_lines() {
        let request: Request = serde_json::from_str(r#"{"op":"signal","signal":"TERM"}"#).unwrap();
        assert_eq!(
            request,
            Request::Signal {
                signal: "TERM".into(),
                tree: false
            }
        );
        let line = serde_json::to_string(&Reply::Line {
            n: 7,
            text: "Done".into(),
        })
        .unwrap();
        assert_eq!(line, r#"{"event":"line","n":7,"text":"Done"}"#);
        // An op from a newer daemon is an error the shim can name, not a crash.
        assert!(serde_json::from_str::<Request>(r#"{"op":"resize","cols":80}"#).is_err());
        // A status from a shim that knows fields this binary does not: still read.
        let status: Status =
            serde_json::from_str(r#"{"shimPid":5,"serverPid":6,"nextLine":1,"futureField":true}"#)
                .unwrap();
        assert_eq!(status.server_pid, 6);
        assert!(status.exit.is_none());
    }
}
