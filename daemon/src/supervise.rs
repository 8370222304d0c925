//! The daemon's side of the shims: starting a server under a new shim, following it (console
//! lines, readiness, exit), and adopting the shims a previous run of the daemon left behind.
//!
//! Before each step of a start the instance's [`Record`] is written (write-temp-then-rename),
//! so a daemon killed at any point finds on its return either a live shim to adopt or the
//! evidence of how its server ended. Adoption verifies the shim's and the server's pids with
//! their start times (a reused pid is never adopted) and the boot id (after a reboot nothing is
//! adopted), subscribes before it reads the status (no exit slips through) and replays the last
//! console lines. `docs/daemon-protocol.md` describes it for operators.

use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use prexor_domain::limits::LOG_TAIL_LINES;
use prexor_domain::now_ms;
use prexor_proto::v1::{CompositionPlan, InstanceState};
use tokio::process::Command;
use tokio::sync::oneshot;

use crate::instances::{Instance, Instances, is_active};
use crate::isolation::ServerUser;
use crate::layers::LayerError;
use crate::procfs;
use crate::record::{self, Record};
use crate::shim::client::ShimClient;
use crate::shim::console;
use crate::shim::protocol::{self, Exit, Reply, RunDir, Spec, Status};

/// How many console lines an adopting daemon replays from a shim when it does not know how far
/// its predecessor got.
const REPLAY_LINES: u64 = 200;
/// How often the console cursor is saved.
const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// How long a new shim may take to start its server.
const SHIM_START: Duration = Duration::from_secs(10);
/// How long an instance may take to open its port (or print `Done (`) before it counts as
/// running anyway.
const STARTUP_PROBE: Duration = Duration::from_secs(120);
/// A Unix socket path must fit in `sun_path` (108 bytes with its terminating NUL).
const SOCKET_PATH_MAX: usize = 107;

impl Instances {
    /// Starts the prepared server `plan` (its directory `dir`, `argv`, `env`) under a new shim;
    /// its pid once the shim started it.
    pub(crate) async fn start_shim(
        &self,
        plan: &CompositionPlan,
        dir: std::path::PathBuf,
        argv: Vec<String>,
        env: std::collections::BTreeMap<String, String>,
    ) -> Result<i32, LayerError> {
        let inner = &self.inner;
        let id = plan.instance_id.clone();
        let permanent = LayerError::Permanent;
        // The user is chosen and held under one lock: two starts never pick the same one.
        let (user, fence) = {
            let mut table = self.table();
            let taken: Vec<ServerUser> = table
                .iter()
                .filter(|(other, i)| **other != id && is_active(i.state))
                .filter_map(|(_, i)| i.user)
                .collect();
            let user = inner
                .isolation
                .user_for(&taken)
                .map_err(LayerError::Transient)?;
            let instance = table
                .get_mut(&id)
                .ok_or_else(|| permanent("instance vanished".into()))?;
            instance.user = user;
            (user, instance.fence.clone())
        };
        inner.isolation.hand_over(&dir, user).map_err(permanent)?;
        let run = RunDir(inner.run_root.join(&id));
        if run.socket().as_os_str().len() > SOCKET_PATH_MAX {
            return Err(permanent(format!(
                "{} is too long for a Unix socket ({SOCKET_PATH_MAX} bytes at most): use a shorter daemon.dataDir",
                run.socket().display()
            )));
        }
        let _ = std::fs::remove_dir_all(run.path());
        private_dir(run.path())
            .map_err(|e| permanent(format!("cannot create {}: {e}", run.path().display())))?;
        let cgroup = inner
            .isolation
            .cgroup_for(&id, plan.memory_mb)
            .map_err(permanent)?;
        let spec = Spec {
            instance_id: id.clone(),
            argv: argv.clone(),
            cwd: dir,
            env,
            uid: user.map(|u| u.uid),
            gid: user.map(|u| u.gid),
            log_max_bytes: inner.isolation.console_log_bytes,
            cgroup: cgroup.clone(),
        };
        let mut record = Record {
            instance_id: id.clone(),
            group: plan.group.clone(),
            plan_hash: plan.plan_hash.clone(),
            port: plan.port,
            memory_mb: plan.memory_mb,
            fence_scope: fence.0,
            fence_token: fence.1,
            boot_id: inner.boot_id.clone().unwrap_or_default(),
            shim_pid: 0,
            shim_start_ticks: 0,
            server_pid: 0,
            server_start_ticks: 0,
            socket: run.socket(),
            user,
            cgroup,
            started_at_ms: now_ms(),
        };
        let write = |record: &Record| {
            record
                .save(&run)
                .map_err(|e| LayerError::Transient(format!("cannot record the start: {e}")))
        };
        protocol::write_atomically(&run.spec(), &spec)
            .map_err(|e| LayerError::Transient(format!("cannot write the shim's spec: {e}")))?;
        write(&record)?;

        let shim_log = std::fs::File::create(run.shim_log())
            .map_err(|e| LayerError::Transient(format!("cannot create the shim's log: {e}")))?;
        // The running binary itself (`/proc/self/exe` stays valid when the file is replaced by
        // an upgrade), with nothing of the daemon's environment.
        let mut shim = Command::new("/proc/self/exe")
            .arg0("prexor-daemon")
            .arg("shim")
            .arg(run.path())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(shim_log)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| LayerError::Transient(format!("cannot start the shim: {e}")))?;
        record.shim_pid = shim.id().map_or(0, |p| p as i32);
        record.shim_start_ticks = procfs::start_ticks(record.shim_pid).unwrap_or(0);
        // Reaped by this daemon while it lives; by init after.
        tokio::spawn(async move {
            let _ = shim.wait().await;
        });
        write(&record)?;

        let client = ShimClient::new(&run.socket());
        let status = match first_status(&client).await {
            Ok(status) => status,
            Err(err) => {
                let _ = procfs::signal_process(record.shim_pid, rustix::process::Signal::KILL);
                let _ = std::fs::remove_file(run.record());
                let log = console::tail(&run.shim_log(), 5).join(" / ");
                return Err(permanent(format!("its shim did not start: {err} ({log})")));
            }
        };
        if status.server_pid == 0 {
            let _ = std::fs::remove_file(run.record());
            let reason = status.exit.map(|e| e.reason).unwrap_or_default();
            return Err(permanent(reason));
        }
        let pid = status.server_pid;
        record.server_pid = pid;
        record.server_start_ticks = status.server_start_ticks;
        write(&record)?;
        self.journal(serde_json::json!({
            "event": "launch", "atMs": now_ms(), "instance": &id, "group": &plan.group,
            "planHash": &plan.plan_hash, "pid": pid, "port": plan.port,
            "bootId": &record.boot_id, "shimPid": record.shim_pid,
        }));
        {
            let mut table = self.table();
            let instance = table
                .get_mut(&id)
                .ok_or_else(|| permanent("instance vanished".into()))?;
            instance.pid = pid;
            instance.shim = Some(client.clone());
        }
        self.transition(&id, |i| {
            i.state = InstanceState::Starting;
            i.detail = format!("started {}", argv.join(" "));
        });
        tracing::info!(instance = %id, pid, shim = record.shim_pid, port = plan.port, "instance started");
        let (ready_tx, ready_rx) = oneshot::channel();
        self.probe_ready(id.clone(), plan.port, ready_rx);
        self.watch(id, client, 1, &record, run, Some(ready_tx));
        Ok(pid)
    }

    /// RUNNING once the server says so (`Done (`) or its port accepts connections.
    fn probe_ready(&self, id: String, port: u32, said_done: oneshot::Receiver<()>) {
        let this = self.clone();
        tokio::spawn(async move {
            let probe = async {
                if port == 0 {
                    return std::future::pending::<()>().await;
                }
                loop {
                    if tokio::net::TcpStream::connect(("127.0.0.1", port as u16))
                        .await
                        .is_ok()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            let _ = tokio::time::timeout(STARTUP_PROBE, async {
                tokio::select! {
                    _ = said_done => {}
                    _ = probe => {}
                }
            })
            .await;
            this.transition(&id, |i| {
                if i.state == InstanceState::Starting {
                    i.state = InstanceState::Running;
                }
            });
        });
    }

    /// Follows a shim from console line `from` until its server ended: lines go to the
    /// session, the exit becomes the instance's report. A lost connection is attached again
    /// from the last line seen; a shim that is gone is judged by its exit file.
    fn watch(
        &self,
        id: String,
        client: ShimClient,
        mut from: u64,
        record: &Record,
        run: RunDir,
        ready: Option<oneshot::Sender<()>>,
    ) {
        let this = self.clone();
        let shim = (record.shim_pid, record.shim_start_ticks);
        let server = (record.server_pid, record.server_start_ticks);
        let ready = Mutex::new(ready);
        tokio::spawn(async move {
            let mut saved = tokio::time::Instant::now();
            loop {
                if let Ok(mut connection) = client.attach(from).await {
                    while let Ok(Some(reply)) = connection.next().await {
                        match reply {
                            Reply::Line { n, text } => {
                                from = n + 1;
                                if saved.elapsed() >= CURSOR_EVERY {
                                    saved = tokio::time::Instant::now();
                                    let _ = std::fs::write(run.cursor(), n.to_string());
                                }
                                if text.contains("Done (")
                                    && let Some(tx) = ready.lock().expect("ready lock").take()
                                {
                                    let _ = tx.send(());
                                }
                                this.console_line(&id, text);
                            }
                            Reply::Exited(exit) => {
                                this.ended(&id, exit, &run);
                                return;
                            }
                            _ => {}
                        }
                    }
                }
                if let Some(exit) = gone(&run, shim, server).await {
                    this.ended(&id, exit, &run);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// Records the end of `id`'s process: its report (with the tail of its console), the
    /// journal entry, then the record and exit file go (the report is durable in the outbox).
    pub(crate) fn ended(&self, id: &str, exit: Exit, run: &RunDir) {
        let (pid, plan_hash, followed) = {
            let table = self.table();
            let Some(instance) = table.get(id) else {
                return;
            };
            let followed = !instance.tail.is_empty();
            (instance.pid, instance.plan.plan_hash.clone(), followed)
        };
        // The console log is read only when this daemon saw none of the output (it adopted the
        // instance after its shim was gone): it can be twice `daemon.consoleLogMb`.
        let tail = if followed {
            Vec::new()
        } else {
            console::tail(&run.console_log(), LOG_TAIL_LINES)
        };
        self.transition(id, |i| {
            i.exit_code = Some(exit.code);
            i.pid = 0;
            i.shim = None;
            i.user = None;
            if i.tail.is_empty() {
                i.tail = tail.into();
            }
            if (i.stop_requested || exit.code == 0) && !exit.oom {
                i.state = InstanceState::Stopped;
                if !i.detail.starts_with("killed after") {
                    i.detail = exit.reason.clone();
                }
            } else {
                i.state = InstanceState::Crashed;
                i.detail = exit.reason.clone();
            }
        });
        tracing::info!(instance = %id, code = exit.code, "instance ended: {}", exit.reason);
        self.journal(serde_json::json!({
            "event": "exit", "atMs": exit.at_ms, "instance": id, "planHash": plan_hash,
            "pid": pid, "code": exit.code,
        }));
        if let Some(Record {
            cgroup: Some(cgroup),
            ..
        }) = protocol::read_json::<Record>(&run.record()).ok().flatten()
        {
            tokio::task::spawn_blocking(move || cgroup.remove());
        }
        let _ = std::fs::remove_file(run.record());
        let _ = std::fs::remove_file(run.exit());
    }

    /// Takes in every server a previous run of this daemon started: live shims are adopted
    /// (same pids, their console replayed), servers that ended meanwhile are reported with
    /// their exit code and console tail.
    pub async fn adopt(&self) {
        let boot = self.inner.boot_id.clone().unwrap_or_default();
        for (run, record) in record::all(&self.inner.run_root) {
            let id = record.instance_id.clone();
            let plan = CompositionPlan {
                instance_id: id.clone(),
                group: record.group.clone(),
                plan_hash: record.plan_hash.clone(),
                port: record.port,
                memory_mb: record.memory_mb,
                ..CompositionPlan::default()
            };
            let mut instance = Instance::new(plan, InstanceState::Running);
            instance.fence = (record.fence_scope.clone(), record.fence_token);
            instance.pid = record.server_pid;
            if record.boot_id != boot {
                self.table().insert(id.clone(), instance);
                let exit = unknown_exit("the host restarted while the server ran");
                self.ended(&id, exit, &run);
                continue;
            }
            let client = ShimClient::new(&record.socket);
            let mut answer = client.status().await;
            // A live shim that does not answer at once (the host is busy): a few more tries.
            for _ in 0..10 {
                if answer.is_ok() || !procfs::same_process(record.shim_pid, record.shim_start_ticks)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                answer = client.status().await;
            }
            match answer {
                Ok(status) if verified(&record, &status) => {
                    instance.pid = status.server_pid;
                    instance.user = record.user;
                    instance.shim = Some(client.clone());
                    self.table().insert(id.clone(), instance);
                    self.transition(&id, |i| {
                        i.detail =
                            format!("adopted after a daemon restart (pid {})", status.server_pid);
                    });
                    tracing::info!(instance = %id, pid = status.server_pid, shim = status.shim_pid, "adopted a running server");
                    let from = replay_from(&run, &status);
                    let mut record = record;
                    record.server_pid = status.server_pid;
                    self.watch(id, client, from, &record, run, None);
                }
                other => {
                    if let Ok(status) = other {
                        tracing::error!(instance = %id, ?status, "the shim at {} is not the one recorded; not adopting it", record.socket.display());
                    }
                    self.table().insert(id.clone(), instance);
                    let shim = (record.shim_pid, record.shim_start_ticks);
                    let server = (record.server_pid, record.server_start_ticks);
                    let exit = gone(&run, shim, server).await.unwrap_or_else(|| {
                        unknown_exit("its shim did not answer after the daemon restarted")
                    });
                    self.ended(&id, exit, &run);
                }
            }
        }
    }
}

/// Where an adopting daemon attaches: after the last line its predecessor passed on (give or
/// take a second of lines), or the last [`REPLAY_LINES`] when that is unknown.
fn replay_from(run: &RunDir, status: &Status) -> u64 {
    let cursor = std::fs::read_to_string(run.cursor())
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|n| *n < status.next_line);
    match cursor {
        Some(n) => n + 1,
        None => status.next_line.saturating_sub(REPLAY_LINES).max(1),
    }
}

/// The shim's status once it started its server (or failed to).
async fn first_status(client: &ShimClient) -> Result<Status, String> {
    let deadline = tokio::time::Instant::now() + SHIM_START;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match client.status().await {
            Ok(status) if status.server_pid != 0 || status.exit.is_some() => return Ok(status),
            Ok(_) => {}
            Err(err) => last = err,
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("no answer within {SHIM_START:?} ({last})"))
}

/// Whether the live shim answering is the one the record names, supervising the recorded
/// server (pids and start times).
fn verified(record: &Record, status: &Status) -> bool {
    let shim = record.shim_pid == 0
        || (status.shim_pid == record.shim_pid
            && (record.shim_start_ticks == 0
                || procfs::same_process(record.shim_pid, record.shim_start_ticks)));
    let server = record.server_pid == 0
        || (status.server_pid == record.server_pid
            && (record.server_start_ticks == 0
                || status.server_start_ticks == record.server_start_ticks));
    shim && server
}

/// When the shim no longer answers: the exit it recorded, or (once the shim process is gone
/// without one) an unknown exit, after killing a server it left behind. `None` while the shim
/// process still lives (it is busy or restarting its socket: attach again).
async fn gone(run: &RunDir, shim: (i32, u64), server: (i32, u64)) -> Option<Exit> {
    if let Ok(Some(exit)) = protocol::read_json::<Exit>(&run.exit()) {
        return Some(exit);
    }
    if procfs::same_process(shim.0, shim.1) {
        return None;
    }
    // The shim may have written its exit file just before it went.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Ok(Some(exit)) = protocol::read_json::<Exit>(&run.exit()) {
        return Some(exit);
    }
    if procfs::same_process(server.0, server.1) {
        tracing::warn!(pid = server.0, "a server outlived its shim; killing it");
        let _ = procfs::signal_group(server.0, rustix::process::Signal::KILL);
    }
    Some(unknown_exit("its shim ended unexpectedly"))
}

fn unknown_exit(why: &str) -> Exit {
    Exit {
        code: -1,
        signal: None,
        at_ms: now_ms(),
        reason: format!("{why}; exit code unknown"),
        oom: false,
    }
}

fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
