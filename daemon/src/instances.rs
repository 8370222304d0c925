//! The server processes of this host: one child process per instance, started from its
//! composition plan, with console in/out, graceful stop (console `stop`, then SIGKILL after the
//! grace period) and crash detection (not asked to stop and a non-zero exit).

use std::collections::{HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prexor_domain::now_ms;
use prexor_proto::v1::{
    AckResult, CommandAck, CompositionPlan, ConsoleInput, InstanceReport, InstanceState,
    KillInstance, StopInstance,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{Notify, mpsc};

use crate::layers::{self, LayerCache, LayerError};

/// Output lines kept per instance for crash reports.
const LOG_TAIL: usize = 50;
/// How long an instance may take to open its port (or print `Done (`) before it counts as
/// running anyway.
const STARTUP_PROBE: Duration = Duration::from_secs(120);

/// What the instances tell the session (forwarded to the gateway when connected).
#[derive(Debug)]
pub enum Event {
    Report(InstanceReport),
    Console { instance_id: String, line: String },
}

#[derive(Clone)]
pub struct Instances {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// `<dataDir>/processes.log`: every server process launch and exit, one JSON line each.
    journal: PathBuf,
    node_id: String,
    layers: LayerCache,
    table: Mutex<HashMap<String, Instance>>,
    events: mpsc::Sender<Event>,
}

struct Instance {
    plan: CompositionPlan,
    state: InstanceState,
    pid: i32,
    exit_code: Option<i32>,
    detail: String,
    tail: VecDeque<String>,
    stdin: Option<Arc<tokio::sync::Mutex<ChildStdin>>>,
    stop_requested: bool,
    kill: Arc<Notify>,
    at_ms: i64,
}

fn ack(
    result: AckResult,
    state: InstanceState,
    pid: i32,
    message: impl Into<String>,
) -> CommandAck {
    CommandAck {
        command_id: String::new(),
        result: result as i32,
        actual_state: state as i32,
        message: message.into(),
        retry_after_ms: 0,
        pid,
    }
}

fn is_active(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Preparing
            | InstanceState::Starting
            | InstanceState::Running
            | InstanceState::Stopping
    )
}

impl Instance {
    fn report(&self, id: &str) -> InstanceReport {
        InstanceReport {
            instance_id: id.to_string(),
            group: self.plan.group.clone(),
            state: self.state as i32,
            pid: self.pid,
            port: self.plan.port,
            plan_hash: self.plan.plan_hash.clone(),
            exit_code: self.exit_code,
            log_tail: if self.state == InstanceState::Crashed {
                self.tail.iter().cloned().collect()
            } else {
                Vec::new()
            },
            at_unix_ms: self.at_ms,
            detail: self.detail.clone(),
        }
    }
}

impl Instances {
    pub fn new(
        data_dir: &Path,
        node_id: &str,
        events: mpsc::Sender<Event>,
        layers: LayerCache,
    ) -> Instances {
        Instances {
            inner: Arc::new(Inner {
                dir: data_dir.join("instances"),
                journal: data_dir.join("processes.log"),
                node_id: node_id.to_string(),
                layers,
                table: Mutex::new(HashMap::new()),
                events,
            }),
        }
    }

    /// Appends `entry` to the process journal (one `O_APPEND` write per line, so concurrent
    /// entries never interleave). Operators read it as the host's record of what ran; the
    /// acceptance suite reads it as evidence that no instance ever ran twice.
    fn journal(&self, entry: serde_json::Value) {
        use std::io::Write;
        let line = format!("{entry}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.inner.journal)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(err) = written {
            tracing::warn!(journal = %self.inner.journal.display(), "cannot append to the process journal: {err}");
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        self.inner.table.lock().expect("instances lock")
    }

    /// Every instance's current report (the inventory sent with each new session).
    pub fn inventory(&self) -> Vec<InstanceReport> {
        let table = self.table();
        let mut reports: Vec<InstanceReport> = table.iter().map(|(id, i)| i.report(id)).collect();
        reports.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        reports
    }

    /// Ids of instances with a live process.
    pub fn active(&self) -> Vec<String> {
        self.table()
            .iter()
            .filter(|(_, i)| is_active(i.state))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Sets the state (and detail) and emits the report.
    fn transition(&self, id: &str, update: impl FnOnce(&mut Instance)) {
        let report = {
            let mut table = self.table();
            let Some(instance) = table.get_mut(id) else {
                return;
            };
            update(instance);
            instance.at_ms = now_ms();
            instance.report(id)
        };
        metrics::counter!("prexor_daemon_instance_transitions_total", "state" => report.state().as_str_name())
            .increment(1);
        // A full queue (no gateway for a long time) drops reports: the inventory carries the
        // latest state on the next session.
        let _ = self.inner.events.try_send(Event::Report(report));
    }

    pub async fn start(&self, plan: CompositionPlan) -> CommandAck {
        if let Err(reason) = check_plan(&plan) {
            return ack(AckResult::Permanent, InstanceState::Unspecified, 0, reason);
        }
        let id = plan.instance_id.clone();
        {
            let mut table = self.table();
            if let Some(existing) = table.get(&id)
                && is_active(existing.state)
            {
                return if existing.plan.plan_hash == plan.plan_hash {
                    ack(
                        AckResult::Already,
                        existing.state,
                        existing.pid,
                        "the instance already runs this plan",
                    )
                } else {
                    ack(
                        AckResult::Permanent,
                        existing.state,
                        existing.pid,
                        format!(
                            "instance {id} runs plan {}; stop it before starting plan {}",
                            existing.plan.plan_hash, plan.plan_hash
                        ),
                    )
                };
            }
            if plan.port != 0
                && let Some((other, _)) = table.iter().find(|(other, i)| {
                    **other != id && is_active(i.state) && i.plan.port == plan.port
                })
            {
                return ack(
                    AckResult::Permanent,
                    InstanceState::Unspecified,
                    0,
                    format!(
                        "port {} is used by instance {other} on this node",
                        plan.port
                    ),
                );
            }
            if plan.port != 0 && std::net::TcpListener::bind(("0.0.0.0", plan.port as u16)).is_err()
            {
                let mut refused = ack(
                    AckResult::Transient,
                    InstanceState::Unspecified,
                    0,
                    format!(
                        "port {} is in use on this host by another process",
                        plan.port
                    ),
                );
                refused.retry_after_ms = 5000;
                return refused;
            }
            table.insert(
                id.clone(),
                Instance {
                    plan: plan.clone(),
                    state: InstanceState::Preparing,
                    pid: 0,
                    exit_code: None,
                    detail: String::new(),
                    tail: VecDeque::new(),
                    stdin: None,
                    stop_requested: false,
                    kill: Arc::new(Notify::new()),
                    at_ms: now_ms(),
                },
            );
        }
        self.transition(&id, |_| {});

        match self.spawn(&plan).await {
            Ok(pid) => {
                let state = self.table().get(&id).map(|i| i.state);
                ack(
                    AckResult::Done,
                    state.unwrap_or(InstanceState::Starting),
                    pid,
                    "started",
                )
            }
            Err(LayerError::Permanent(reason)) => {
                self.transition(&id, |i| {
                    i.state = InstanceState::Crashed;
                    i.detail = reason.clone();
                });
                ack(AckResult::Permanent, InstanceState::Crashed, 0, reason)
            }
            Err(LayerError::Transient(reason)) => {
                // Nothing started: forget the attempt so that a retry starts afresh.
                self.transition(&id, |i| {
                    i.state = InstanceState::Stopped;
                    i.detail = format!("not started: {reason}");
                });
                self.table().remove(&id);
                let mut refused = ack(AckResult::Transient, InstanceState::Stopped, 0, reason);
                refused.retry_after_ms = 3000;
                refused
            }
        }
    }

    async fn spawn(&self, plan: &CompositionPlan) -> Result<i32, LayerError> {
        let id = plan.instance_id.clone();
        let dir = self.inner.dir.join(&id);
        let substitute = |s: &str| {
            s.replace("{port}", &plan.port.to_string())
                .replace("{instance}", &id)
                .replace("{group}", &plan.group)
                .replace("{node}", &self.inner.node_id)
                .replace("{memory}", &plan.memory_mb.to_string())
        };
        let permanent = LayerError::Permanent;
        std::fs::create_dir_all(&dir)
            .map_err(|e| permanent(format!("cannot create {}: {e}", dir.display())))?;
        for layer in &plan.layers {
            let archive = self.inner.layers.archive(&layer.hash).await?;
            let dest = dir.clone();
            let name = if layer.name.is_empty() {
                layer.hash.clone()
            } else {
                layer.name.clone()
            };
            tokio::task::spawn_blocking(move || layers::unpack(&archive, &dest))
                .await
                .map_err(|e| permanent(e.to_string()))?
                .map_err(|e| permanent(format!("template layer {name}: {e}")))?;
        }
        if !plan.layers.is_empty() {
            substitute_tree(&dir, &substitute).map_err(permanent)?;
        }
        for file in &plan.files {
            let path = dir.join(&file.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| permanent(format!("cannot create {}: {e}", parent.display())))?;
            }
            std::fs::write(&path, substitute(&file.content))
                .map_err(|e| permanent(format!("cannot write {}: {e}", path.display())))?;
        }
        let argv: Vec<String> = plan.command.iter().map(|a| substitute(a)).collect();
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(&dir)
            .env("SERVER_PORT", plan.port.to_string())
            .env("PREXOR_INSTANCE_ID", &id)
            .env("PREXOR_GROUP", &plan.group)
            .env("PREXOR_NODE_ID", &self.inner.node_id)
            .envs(plan.env.iter().map(|(k, v)| (k.clone(), substitute(v))))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a signal to the daemon's group does not reach servers.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command
            .spawn()
            .map_err(|e| permanent(format!("cannot start {:?}: {e}", argv[0])))?;
        let pid = child.id().map(|p| p as i32).unwrap_or_default();
        let stdin = child
            .stdin
            .take()
            .map(|s| Arc::new(tokio::sync::Mutex::new(s)));
        let kill = {
            let mut table = self.table();
            let instance = table
                .get_mut(&id)
                .ok_or_else(|| permanent("instance vanished".into()))?;
            instance.pid = pid;
            instance.stdin = stdin;
            instance.kill.clone()
        };
        self.transition(&id, |i| {
            i.state = InstanceState::Starting;
            i.detail = format!("started {}", argv.join(" "));
        });
        tracing::info!(instance = %id, pid, port = plan.port, "instance started");
        self.journal(serde_json::json!({
            "event": "launch", "atMs": now_ms(), "instance": &id, "group": &plan.group,
            "planHash": &plan.plan_hash, "pid": pid, "port": plan.port,
        }));

        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let ready_tx = Arc::new(Mutex::new(Some(ready_tx)));
        for output in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let this = self.clone();
            let id = id.clone();
            let ready_tx = ready_tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(output).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("Done (")
                        && let Some(tx) = ready_tx.lock().expect("ready lock").take()
                    {
                        let _ = tx.send(());
                    }
                    this.console_line(&id, line);
                }
            });
        }
        // RUNNING once the server says so or its port accepts connections.
        let this = self.clone();
        let port = plan.port;
        let ready_id = id.clone();
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
                    _ = ready_rx => {}
                    _ = probe => {}
                }
            })
            .await;
            this.transition(&ready_id, |i| {
                if i.state == InstanceState::Starting {
                    i.state = InstanceState::Running;
                }
            });
        });
        // Exit: STOPPED when asked to stop (or a clean exit), CRASHED otherwise.
        let this = self.clone();
        let plan_hash = plan.plan_hash.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill.notified() => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let (code, how) = match status {
                Ok(status) => match (
                    status.code(),
                    std::os::unix::process::ExitStatusExt::signal(&status),
                ) {
                    (Some(code), _) => (code, format!("exited with code {code}")),
                    (None, Some(signal)) => (128 + signal, format!("killed by signal {signal}")),
                    (None, None) => (-1, "ended".to_string()),
                },
                Err(err) => (-1, format!("could not be waited for: {err}")),
            };
            this.transition(&id, |i| {
                i.exit_code = Some(code);
                i.stdin = None;
                i.pid = 0;
                if i.stop_requested || code == 0 {
                    i.state = InstanceState::Stopped;
                    if i.detail.is_empty() || !i.detail.starts_with("killed after") {
                        i.detail = how.clone();
                    }
                } else {
                    i.state = InstanceState::Crashed;
                    i.detail = how.clone();
                }
            });
            tracing::info!(instance = %id, code, "instance ended: {how}");
            this.journal(serde_json::json!({
                "event": "exit", "atMs": now_ms(), "instance": &id, "planHash": plan_hash,
                "pid": pid, "code": code,
            }));
        });
        Ok(pid)
    }

    fn console_line(&self, id: &str, line: String) {
        if let Some(instance) = self.table().get_mut(id) {
            if instance.tail.len() == LOG_TAIL {
                instance.tail.pop_front();
            }
            instance.tail.push_back(line.clone());
        }
        let _ = self.inner.events.try_send(Event::Console {
            instance_id: id.to_string(),
            line,
        });
    }

    pub async fn stop(&self, request: StopInstance) -> CommandAck {
        let id = request.instance_id.clone();
        let (stdin, kill, state, pid) = {
            let mut table = self.table();
            let Some(instance) = table.get_mut(&id) else {
                return ack(
                    AckResult::Already,
                    InstanceState::Stopped,
                    0,
                    format!("instance {id} is not on this node"),
                );
            };
            if !is_active(instance.state) || instance.stop_requested {
                return ack(
                    AckResult::Already,
                    instance.state,
                    instance.pid,
                    "already stopped or stopping",
                );
            }
            instance.stop_requested = true;
            (
                instance.stdin.clone(),
                instance.kill.clone(),
                instance.state,
                instance.pid,
            )
        };
        let _ = state;
        self.transition(&id, |i| {
            i.state = InstanceState::Stopping;
            i.detail = "stop requested".into();
        });
        let command = if request.stop_command.is_empty() {
            "stop".to_string()
        } else {
            request.stop_command.clone()
        };
        if let Some(stdin) = stdin {
            let mut stdin = stdin.lock().await;
            let _ = stdin.write_all(format!("{command}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
        let grace = Duration::from_millis(u64::from(request.grace_period_ms.max(1)));
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still_running = this
                .table()
                .get(&id)
                .is_some_and(|i| i.state == InstanceState::Stopping);
            if still_running {
                tracing::warn!(instance = %id, ?grace, "did not stop within its grace period; killing it");
                this.transition(&id, |i| {
                    i.detail = format!("killed after the {grace:?} grace period");
                });
                kill.notify_one();
            }
        });
        ack(AckResult::Done, InstanceState::Stopping, pid, "stopping")
    }

    pub async fn kill(&self, request: KillInstance) -> CommandAck {
        let id = request.instance_id;
        let kill = {
            let mut table = self.table();
            match table.get_mut(&id) {
                Some(instance) if is_active(instance.state) => {
                    instance.stop_requested = true;
                    instance.detail = "killed on request".into();
                    instance.kill.clone()
                }
                Some(instance) => {
                    return ack(AckResult::Already, instance.state, 0, "not running");
                }
                None => {
                    return ack(
                        AckResult::Already,
                        InstanceState::Stopped,
                        0,
                        format!("instance {id} is not on this node"),
                    );
                }
            }
        };
        kill.notify_one();
        ack(AckResult::Done, InstanceState::Stopping, 0, "killed")
    }

    pub async fn console(&self, request: ConsoleInput) -> CommandAck {
        let (stdin, state, pid) = {
            let table = self.table();
            match table.get(&request.instance_id) {
                Some(i) => (i.stdin.clone(), i.state, i.pid),
                None => {
                    return ack(
                        AckResult::Permanent,
                        InstanceState::Unspecified,
                        0,
                        format!("instance {} is not on this node", request.instance_id),
                    );
                }
            }
        };
        let Some(stdin) = stdin.filter(|_| is_active(state)) else {
            return ack(
                AckResult::Permanent,
                state,
                pid,
                "the instance is not running",
            );
        };
        let mut stdin = stdin.lock().await;
        let written = async {
            stdin.write_all(request.line.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
            stdin.flush().await
        }
        .await;
        match written {
            Ok(()) => ack(AckResult::Done, state, pid, "sent"),
            Err(err) => ack(
                AckResult::Permanent,
                state,
                pid,
                format!("the console is closed: {err}"),
            ),
        }
    }
}

/// Substitutes placeholders in the configuration files (by extension, under 1 MiB) below `dir`.
fn substitute_tree(dir: &Path, substitute: &dyn Fn(&str) -> String) -> Result<(), String> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file()
                && meta.len() < 1024 * 1024
                && layers::is_config_file(&path)
                && let Ok(text) = std::fs::read_to_string(&path)
            {
                let replaced = substitute(&text);
                if replaced != text {
                    std::fs::write(&path, replaced)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Refuses plans that can never run, naming the problem.
fn check_plan(plan: &CompositionPlan) -> Result<(), String> {
    prexor_domain::validate_name(&plan.instance_id)
        .map_err(|e| format!("instance id {:?}: {e}", plan.instance_id))?;
    if plan.plan_hash.is_empty() {
        return Err("the plan has no hash".into());
    }
    if plan.command.first().is_none_or(|c| c.is_empty()) {
        return Err("the plan has no command".into());
    }
    if plan.port > u32::from(u16::MAX) {
        return Err(format!("port {} is not a TCP port", plan.port));
    }
    for file in &plan.files {
        let path = Path::new(&file.path);
        let escapes = path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if file.path.is_empty() || escapes {
            return Err(format!(
                "plan file {:?} must be a relative path inside the instance directory",
                file.path
            ));
        }
    }
    Ok(())
}
