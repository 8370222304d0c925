//! The server processes of this host: one per instance, each under its own shim
//! ([`crate::shim`]), started from its composition plan ([`crate::launch`]) and adopted again
//! after a daemon restart ([`crate::supervise`]), with console in/out, graceful stop (console
//! `stop`, then SIGKILL of its whole tree after the grace period) and crash detection (not asked
//! to stop and a non-zero exit). Every state change becomes a numbered report in the [`Outbox`],
//! kept until a gateway acknowledges it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prexor_domain::limits::{LOG_TAIL_LINES, cap_tail};
use prexor_domain::now_ms;
use prexor_proto::v1::{
    AckResult, CommandAck, CompositionPlan, ConsoleInput, InstanceReport, InstanceState,
    KillInstance, QueryInstance, StopInstance,
};
use tokio::sync::mpsc;

use crate::isolation::{Isolation, ServerUser};
use crate::layers::{LayerCache, LayerError};
use crate::outbox::Outbox;
use crate::shim::client::ShimClient;

/// One line of a server's output, for the session to forward (best effort: the console is a
/// bounded stream; a crash report carries the tail durably).
#[derive(Debug)]
pub struct ConsoleLine {
    pub instance_id: String,
    pub line: String,
}

#[derive(Clone)]
pub struct Instances {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// `<dataDir>/run`: one private run directory per started server.
    pub(crate) run_root: PathBuf,
    pub(crate) isolation: Isolation,
    /// `<dataDir>/processes.log`: every server process launch and exit, one JSON line each.
    journal: PathBuf,
    pub(crate) node_id: String,
    pub(crate) layers: LayerCache,
    table: Mutex<HashMap<String, Instance>>,
    outbox: Arc<Outbox>,
    console: mpsc::Sender<ConsoleLine>,
    pub(crate) boot_id: Option<String>,
}

pub(crate) struct Instance {
    pub(crate) plan: CompositionPlan,
    pub(crate) state: InstanceState,
    pub(crate) pid: i32,
    pub(crate) exit_code: Option<i32>,
    pub(crate) detail: String,
    pub(crate) tail: VecDeque<String>,
    pub(crate) stop_requested: bool,
    at_ms: i64,
    /// The seq of the instance's latest report.
    seq: u64,
    /// The shim supervising the process, while it runs.
    pub(crate) shim: Option<ShimClient>,
    /// The lease scope and fencing token the process was started under.
    pub(crate) fence: (String, u64),
    /// The user the process runs as (`daemon.runAs`), held while it runs.
    pub(crate) user: Option<ServerUser>,
    /// The trace context (`traceparent`) of the last command that acted on it: its reports go
    /// out in that trace (docs/observability.md, "Traces").
    pub(crate) trace: String,
}

pub(crate) fn ack(
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
        plan_hash: String::new(),
        exit_code: None,
    }
}

/// The instance holds its port here: a process runs (or is being prepared or stopped), or its
/// directory is prepared for a start (PREPARED).
pub(crate) fn is_active(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Preparing
            | InstanceState::Prepared
            | InstanceState::Starting
            | InstanceState::Running
            | InstanceState::Stopping
    )
}

impl Instance {
    pub(crate) fn new(plan: CompositionPlan, state: InstanceState) -> Instance {
        Instance {
            plan,
            state,
            pid: 0,
            exit_code: None,
            detail: String::new(),
            tail: VecDeque::new(),
            stop_requested: false,
            at_ms: now_ms(),
            seq: 0,
            shim: None,
            fence: (String::new(), 0),
            user: None,
            trace: String::new(),
        }
    }

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
                cap_tail(&self.tail.iter().cloned().collect::<Vec<_>>())
            } else {
                Vec::new()
            },
            at_unix_ms: self.at_ms,
            detail: self.detail.clone(),
            seq: self.seq,
            fence_scope: self.fence.0.clone(),
            fence_token: self.fence.1,
            traceparent: self.trace.clone(),
        }
    }

    /// An ack naming what the node knows of this instance.
    fn ack(&self, result: AckResult, message: impl Into<String>) -> CommandAck {
        CommandAck {
            plan_hash: self.plan.plan_hash.clone(),
            exit_code: self.exit_code,
            ..ack(result, self.state, self.pid, message)
        }
    }
}

impl Instances {
    pub fn new(
        data_dir: &Path,
        node_id: &str,
        outbox: Arc<Outbox>,
        console: mpsc::Sender<ConsoleLine>,
        layers: LayerCache,
        isolation: Isolation,
    ) -> Instances {
        Instances {
            inner: Arc::new(Inner {
                run_root: data_dir.join("run"),
                isolation,
                journal: data_dir.join("processes.log"),
                node_id: node_id.to_string(),
                layers,
                table: Mutex::new(HashMap::new()),
                outbox,
                console,
                boot_id: crate::procfs::boot_id(),
            }),
        }
    }

    /// Appends `entry` to the process journal (one `O_APPEND` write per line, so concurrent
    /// entries never interleave). Operators read it as the host's record of what ran; the
    /// acceptance suite reads it as evidence that no instance ever ran twice, and a restarted
    /// daemon reports the exits it finds on its return there too.
    pub(crate) fn journal(&self, entry: serde_json::Value) {
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

    pub(crate) fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        self.inner.table.lock().expect("instances lock")
    }

    /// Every instance's latest report (the inventory sent with each new session and on request).
    pub fn inventory(&self) -> Vec<InstanceReport> {
        let table = self.table();
        let mut reports: Vec<InstanceReport> = table.iter().map(|(id, i)| i.report(id)).collect();
        reports.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        reports
    }

    /// The digest of the instances with a live process
    /// ([`prexor_domain::inventory_digest`]).
    pub fn digest(&self) -> String {
        let table = self.table();
        prexor_domain::inventory_digest(table.iter().filter(|(_, i)| is_active(i.state)).map(
            |(id, i)| {
                (
                    id.as_str(),
                    i.plan.plan_hash.as_str(),
                    i.state.as_str_name(),
                )
            },
        ))
    }

    /// Ids of instances with a live process.
    pub fn active(&self) -> Vec<String> {
        self.table()
            .iter()
            .filter(|(_, i)| is_active(i.state))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Changes the instance and records the change as a report (in the outbox, on disk, before
    /// anything else can see the new state).
    pub(crate) fn transition(&self, id: &str, update: impl FnOnce(&mut Instance)) {
        let state = {
            let mut table = self.table();
            let Some(instance) = table.get_mut(id) else {
                return;
            };
            update(instance);
            instance.at_ms = now_ms();
            instance.seq = self.inner.outbox.push(instance.report(id));
            instance.state
        };
        metrics::counter!("prexor_daemon_instance_transitions_total", "state" => state.as_str_name())
            .increment(1);
    }

    /// Starts `plan` under the fence (`scope`, `token`) of its command; with `prepare_only`,
    /// prepares its directory and stops there (PREPARED) until a start of the same plan without
    /// it takes the instance.
    pub async fn start(&self, plan: CompositionPlan, fence: (String, u64)) -> CommandAck {
        if let Err(reason) = crate::launch::check_plan(&plan) {
            return ack(AckResult::Permanent, InstanceState::Unspecified, 0, reason);
        }
        let id = plan.instance_id.clone();
        let taken = {
            let mut table = self.table();
            match table.get_mut(&id) {
                Some(existing) if is_active(existing.state) => {
                    if existing.plan.plan_hash != plan.plan_hash {
                        return existing.ack(
                            AckResult::Permanent,
                            format!(
                                "instance {id} runs plan {}; stop it before starting plan {}",
                                existing.plan.plan_hash, plan.plan_hash
                            ),
                        );
                    }
                    if existing.state != InstanceState::Prepared || plan.prepare_only {
                        return existing
                            .ack(AckResult::Already, "the instance already has this plan");
                    }
                    if let Some(refused) = port_held(&plan) {
                        return refused;
                    }
                    // Taken from the warm pool: started from its prepared directory (PREPARING
                    // again until its process runs, as a start that prepares is).
                    existing.plan = plan.clone();
                    existing.fence = fence.clone();
                    existing.trace = prexor_telemetry::trace::current_traceparent();
                    existing.state = InstanceState::Preparing;
                    existing.detail = "starting from its prepared directory".into();
                    true
                }
                _ => false,
            }
        };
        if taken {
            self.transition(&id, |_| {});
            return self.started(&id, &plan, self.start_prepared(&plan).await);
        }
        {
            let mut table = self.table();
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
            if let Some(refused) = port_held(&plan) {
                return refused;
            }
            let mut instance = Instance::new(plan.clone(), InstanceState::Preparing);
            instance.fence = fence;
            instance.trace = prexor_telemetry::trace::current_traceparent();
            table.insert(id.clone(), instance);
        }
        self.transition(&id, |_| {});
        if plan.prepare_only {
            let prepared = self.prepare(&plan).await.map(|()| {
                self.transition(&id, |i| {
                    i.state = InstanceState::Prepared;
                    i.detail = "prepared; starts when taken from the warm pool".into();
                });
                0
            });
            return self.started(&id, &plan, prepared);
        }
        let launched = self.launch(&plan).await;
        self.started(&id, &plan, launched)
    }

    /// The answer to the start of `plan` (instance `id`) from how its launch went: a failure is
    /// recorded (a permanent one ends the instance, a transient one forgets the attempt).
    fn started(
        &self,
        id: &str,
        plan: &CompositionPlan,
        launched: Result<i32, LayerError>,
    ) -> CommandAck {
        let id = id.to_string();
        match launched {
            Ok(pid) => {
                let state = self.table().get(&id).map(|i| i.state);
                let mut done = ack(
                    AckResult::Done,
                    state.unwrap_or(InstanceState::Starting),
                    pid,
                    if state == Some(InstanceState::Prepared) {
                        "prepared"
                    } else {
                        "started"
                    },
                );
                done.plan_hash = plan.plan_hash.clone();
                done
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

    /// Keeps `line` in the instance's tail and hands it to the session.
    pub(crate) fn console_line(&self, id: &str, line: String) {
        if let Some(instance) = self.table().get_mut(id) {
            if instance.tail.len() == LOG_TAIL_LINES {
                instance.tail.pop_front();
            }
            instance.tail.push_back(line.clone());
        }
        let sent = self.inner.console.try_send(ConsoleLine {
            instance_id: id.to_string(),
            line,
        });
        if sent.is_err() {
            metrics::counter!("prexor_daemon_console_lines_dropped_total").increment(1);
        }
    }

    pub async fn stop(&self, request: StopInstance) -> CommandAck {
        let id = request.instance_id.clone();
        let (shim, pid) = {
            let mut table = self.table();
            let Some(instance) = table.get_mut(&id) else {
                return not_here(&id);
            };
            if let Some(other) = other_plan(instance, &request.plan_hash) {
                return other;
            }
            if !is_active(instance.state) || instance.stop_requested {
                return instance.ack(AckResult::Already, "already stopped or stopping");
            }
            instance.stop_requested = true;
            instance.trace = prexor_telemetry::trace::current_traceparent();
            (instance.shim.clone(), instance.pid)
        };
        if let Some(ended) = self.end_prepared(&id) {
            return ended;
        }
        self.transition(&id, |i| {
            i.state = InstanceState::Stopping;
            i.detail = "stop requested".into();
        });
        let command = if request.stop_command.is_empty() {
            "stop"
        } else {
            request.stop_command.as_str()
        };
        if let Some(shim) = &shim
            && let Err(err) = shim.input(command).await
        {
            tracing::warn!(instance = %id, "cannot type {command:?} into the console ({err}); the grace period ends in a kill");
        }
        let grace = Duration::from_millis(u64::from(request.grace_period_ms.max(1)));
        let this = self.clone();
        let grace_id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still_running = this
                .table()
                .get(&grace_id)
                .is_some_and(|i| i.state == InstanceState::Stopping);
            if still_running {
                tracing::warn!(instance = %grace_id, ?grace, "did not stop within its grace period; killing it");
                this.transition(&grace_id, |i| {
                    i.detail = format!("killed after the {grace:?} grace period");
                });
                this.kill_tree(&grace_id, shim.as_ref()).await;
            }
        });
        let mut done = ack(AckResult::Done, InstanceState::Stopping, pid, "stopping");
        done.plan_hash = self.plan_hash_of(&id);
        done
    }

    /// SIGKILLs the instance's whole process tree through its shim.
    async fn kill_tree(&self, id: &str, shim: Option<&ShimClient>) {
        let Some(shim) = shim else { return };
        if let Err(err) = shim.signal("KILL", true).await {
            tracing::warn!(instance = %id, "cannot kill: {err}");
        }
    }

    pub async fn kill(&self, request: KillInstance) -> CommandAck {
        let id = request.instance_id;
        let (shim, plan_hash) = {
            let mut table = self.table();
            if let Some(other) = table
                .get(&id)
                .and_then(|i| other_plan(i, &request.plan_hash))
            {
                return other;
            }
            match table.get_mut(&id) {
                Some(instance) if is_active(instance.state) => {
                    instance.stop_requested = true;
                    instance.detail = "killed on request".into();
                    instance.trace = prexor_telemetry::trace::current_traceparent();
                    (instance.shim.clone(), instance.plan.plan_hash.clone())
                }
                Some(instance) => return instance.ack(AckResult::Already, "not running"),
                None => return not_here(&id),
            }
        };
        if let Some(ended) = self.end_prepared(&id) {
            return ended;
        }
        self.kill_tree(&id, shim.as_ref()).await;
        let mut done = ack(AckResult::Done, InstanceState::Stopping, 0, "killed");
        done.plan_hash = plan_hash;
        done
    }

    /// A PREPARED instance asked to stop: nothing runs, so it ends at once (its directory
    /// stays, as a stopped server's does). `None` when the instance is not PREPARED.
    fn end_prepared(&self, id: &str) -> Option<CommandAck> {
        if self.table().get(id)?.state != InstanceState::Prepared {
            return None;
        }
        self.transition(id, |i| {
            i.state = InstanceState::Stopped;
            i.detail = "prepared, never started; stopped".into();
        });
        let mut done = ack(AckResult::Done, InstanceState::Stopped, 0, "stopped");
        done.plan_hash = self.plan_hash_of(id);
        Some(done)
    }

    /// What this node knows about the instance, changing nothing.
    pub fn query(&self, request: QueryInstance) -> CommandAck {
        match self.table().get(&request.instance_id) {
            Some(instance) => instance.ack(AckResult::Done, instance.detail.clone()),
            None => ack(
                AckResult::Done,
                InstanceState::Unspecified,
                0,
                format!("instance {} is not on this node", request.instance_id),
            ),
        }
    }

    fn plan_hash_of(&self, id: &str) -> String {
        self.table()
            .get(id)
            .map(|i| i.plan.plan_hash.clone())
            .unwrap_or_default()
    }

    pub async fn console(&self, request: ConsoleInput) -> CommandAck {
        let (shim, state, pid) = {
            let table = self.table();
            match table.get(&request.instance_id) {
                Some(i) => (i.shim.clone(), i.state, i.pid),
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
        let Some(shim) = shim.filter(|_| is_active(state)) else {
            return ack(
                AckResult::Permanent,
                state,
                pid,
                "the instance is not running",
            );
        };
        match shim.input(&request.line).await {
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

/// The refusal of a start whose port a process outside PrexorCloud holds on this host (the
/// scheduler places it elsewhere), or `None` when the port is free.
fn port_held(plan: &CompositionPlan) -> Option<CommandAck> {
    if plan.port == 0 || std::net::TcpListener::bind(("0.0.0.0", plan.port as u16)).is_ok() {
        return None;
    }
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
    Some(refused)
}

/// The answer to a stop or kill for `plan` when the instance runs (or ran) another plan here:
/// left alone.
fn other_plan(instance: &Instance, plan: &str) -> Option<CommandAck> {
    (!plan.is_empty() && instance.plan.plan_hash != plan).then(|| {
        instance.ack(
            AckResult::Already,
            format!(
                "the instance runs plan {} here, not {plan}; left alone",
                instance.plan.plan_hash
            ),
        )
    })
}

/// The answer to a stop or kill of an instance this node does not know: nothing runs.
fn not_here(id: &str) -> CommandAck {
    ack(
        AckResult::Already,
        InstanceState::Stopped,
        0,
        format!("instance {id} is not on this node"),
    )
}
