//! The daemon's record of one started server (`<dataDir>/run/<instance>/record.json`), written
//! by write-temp-then-rename before each step of a start and updated as the shim and the server
//! come up: what a restarted daemon needs to find, verify and adopt them
//! ([`crate::supervise`]). Removed once the server's end is reported durably.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::isolation::ServerUser;
use crate::shim::protocol::{self, RunDir};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub instance_id: String,
    pub group: String,
    pub plan_hash: String,
    pub port: u32,
    pub memory_mb: u64,
    /// The lease scope and fencing token of the start command.
    pub fence_scope: String,
    pub fence_token: u64,
    /// The boot the server was started in: after a reboot nothing is adopted.
    pub boot_id: String,
    /// The shim and the server, with their start times (clock ticks since boot) so that a
    /// reused pid is never taken for them; 0 until known.
    pub shim_pid: i32,
    pub shim_start_ticks: u64,
    pub server_pid: i32,
    pub server_start_ticks: u64,
    pub socket: PathBuf,
    #[serde(default)]
    pub user: Option<ServerUser>,
    #[serde(default)]
    pub cgroup: Option<Cgroup>,
    pub started_at_ms: i64,
}

impl Record {
    pub fn save(&self, run: &RunDir) -> std::io::Result<()> {
        protocol::write_atomically(&run.record(), self)
    }
}

/// The run directories of `<dataDir>/run` that hold a record, with their records (a record
/// that cannot be read is named in the log and left for the operator).
pub fn all(run_root: &Path) -> Vec<(RunDir, Record)> {
    let Ok(entries) = std::fs::read_dir(run_root) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let run = RunDir(entry.path());
        match protocol::read_json::<Record>(&run.record()) {
            Ok(Some(record)) => found.push((run, record)),
            Ok(None) => {}
            Err(err) => {
                tracing::error!(dir = %run.path().display(), "cannot read an instance record: {err}")
            }
        }
    }
    found.sort_by(|a, b| a.1.instance_id.cmp(&b.1.instance_id));
    found
}
