//! The node's one session: a bidirectional stream to one gateway at a time. On any break the
//! daemon reconnects to the next gateway with jittered backoff and sends its full inventory; the
//! gateway that accepts it becomes the node's owner. Reports come from the [`Outbox`] and are
//! sent again until acknowledged (docs/daemon-protocol.md, "Reports").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prexor_domain::now_ms;
use prexor_proto::v1::daemon_message::Body as Up;
use prexor_proto::v1::gateway_message::Body as Down;
use prexor_proto::v1::node_session_client::NodeSessionClient;
use prexor_proto::v1::{
    AckResult, Command, CommandAck, ConsoleLines, DaemonMessage, Goodbye, Heartbeat, Hello,
    HostResources, InstanceState, Inventory, command::Action,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::fences::Fences;
use crate::identity::NodeIdentity;
use crate::instances::{ConsoleLine, Instances, ack};
use crate::outbox::Outbox;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// A report not acknowledged this long after it was sent is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(10);

/// Where the session stands, for readiness and logs.
#[derive(Clone, Default)]
pub struct SessionStatus {
    inner: Arc<Mutex<Status>>,
}

#[derive(Default)]
struct Status {
    connected: Option<(String, u64)>,
    last_error: Option<String>,
}

impl SessionStatus {
    /// Readiness check: connected to a gateway that owns this node.
    pub fn check(&self) -> Result<(), String> {
        let status = self.inner.lock().expect("session status lock");
        match (&status.connected, &status.last_error) {
            (Some(_), _) => Ok(()),
            (None, Some(err)) => Err(format!("not connected to any gateway: {err}")),
            (None, None) => Err("connecting to a gateway".into()),
        }
    }

    fn set(&self, connected: Option<(String, u64)>, error: Option<String>) {
        let mut status = self.inner.lock().expect("session status lock");
        status.connected = connected;
        if error.is_some() {
            status.last_error = error;
        }
    }
}

pub struct Session {
    pub node_id: String,
    pub version: &'static str,
    pub labels: std::collections::BTreeMap<String, String>,
    /// How servers are kept apart on this node, for its status.
    pub isolation: prexor_proto::v1::NodeIsolation,
    pub memory_mb: Option<u64>,
    pub gateways: Vec<String>,
    pub max_backoff: Duration,
    pub identity: NodeIdentity,
    pub instances: Instances,
    pub fences: Arc<Fences>,
    pub outbox: Arc<Outbox>,
    pub status: SessionStatus,
    /// Cancelled by a ShutdownNode command once every instance has stopped.
    pub shutdown: CancellationToken,
}

impl Session {
    /// Runs until `stop`; `console` carries the servers' output.
    pub async fn run(self, mut console: mpsc::Receiver<ConsoleLine>, stop: CancellationToken) {
        let mut attempt: u32 = 0;
        let mut next = rand::random_range(0..self.gateways.len().max(1));
        loop {
            if stop.is_cancelled() {
                return;
            }
            let gateway = self.gateways[next % self.gateways.len()].clone();
            next += 1;
            let mut established = false;
            match self
                .session(&gateway, &mut console, &stop, &mut established)
                .await
            {
                Ok(()) => return,
                Err(err) => {
                    metrics::counter!("prexor_daemon_session_breaks_total").increment(1);
                    tracing::warn!(%gateway, "session ended: {err}");
                    self.status.set(None, Some(format!("{gateway}: {err}")));
                }
            }
            if established {
                // A session that was up broke (its gateway went away): the next gateway at once,
                // and the backoff starts over; it applies only to attempts that fail to connect.
                attempt = 0;
                continue;
            }
            attempt = attempt.saturating_add(1);
            // Full jitter: spreads many daemons reconnecting after a gateway died.
            let ceiling = Duration::from_millis(200)
                .saturating_mul(2u32.saturating_pow(attempt.min(10)))
                .min(self.max_backoff);
            let delay = ceiling.mul_f64(rand::random_range(0.25..1.0));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One session with `gateway`; `Ok` only when stopped on purpose. `established` is set once
    /// the gateway welcomed the daemon.
    async fn session(
        &self,
        gateway: &str,
        console: &mut mpsc::Receiver<ConsoleLine>,
        stop: &CancellationToken,
        established: &mut bool,
    ) -> Result<(), String> {
        let tls = self.identity.client_config()?;
        let channel = prexor_pki::tls::connect(gateway, tls, CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let (up, up_rx) = mpsc::channel::<DaemonMessage>(256);
        let hello = Hello {
            node_id: self.node_id.clone(),
            version: self.version.to_string(),
            resources: Some(self.resources()),
            labels: self.labels.clone().into_iter().collect(),
            inventory: self.instances.inventory(),
            report_epoch: self.outbox.epoch(),
            host_id: host_id(),
            isolation: Some(self.isolation.clone()),
        };
        send(&up, Up::Hello(hello)).await?;
        let mut inbound = NodeSessionClient::new(prexor_serve::metered(channel))
            .open(tokio_stream::wrappers::ReceiverStream::new(up_rx))
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(message))) => match message.body {
                Some(Down::Welcome(welcome)) => welcome,
                other => return Err(format!("expected a welcome, got {other:?}")),
            },
            Ok(Ok(None)) => return Err("the gateway closed the stream".into()),
            Ok(Err(status)) => return Err(status.message().to_string()),
            Err(_) => return Err(format!("no welcome within {WELCOME_TIMEOUT:?}")),
        };
        tracing::info!(
            %gateway,
            owner = %welcome.gateway_replica,
            token = welcome.ownership_token,
            "session established"
        );
        *established = true;
        self.status.set(
            Some((welcome.gateway_replica.clone(), welcome.ownership_token)),
            None,
        );
        let mut heartbeat = tokio::time::interval(Duration::from_millis(u64::from(
            welcome.heartbeat_interval_ms.clamp(200, 60_000),
        )));
        heartbeat.tick().await;
        // Reports sent on this stream and when; every unacknowledged one goes out again now.
        let mut sent: HashMap<u64, Instant> = HashMap::new();
        self.send_reports(&up, &mut sent, true).await?;
        let mut resend = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = send(&up, Up::Goodbye(Goodbye { reason: "the daemon is stopping".into() })).await;
                    // Give the gateway a moment to record it before the stream closes.
                    drop(up);
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    }).await;
                    return Ok(());
                }
                _ = heartbeat.tick() => {
                    // The digest only means something once every report is acknowledged.
                    let inventory_digest = if self.outbox.is_empty() {
                        self.instances.digest()
                    } else {
                        String::new()
                    };
                    send(&up, Up::Heartbeat(Heartbeat {
                        sent_at_unix_ms: now_ms(),
                        resources: Some(self.resources()),
                        inventory_digest,
                    })).await?;
                }
                _ = self.outbox.changed() => {
                    self.send_reports(&up, &mut sent, false).await?;
                }
                _ = resend.tick() => {
                    self.send_reports(&up, &mut sent, false).await?;
                }
                Some(line) = console.recv() => {
                    send(&up, Up::Console(ConsoleLines {
                        instance_id: line.instance_id,
                        lines: vec![line.line],
                    })).await?;
                }
                message = inbound.message() => {
                    let message = match message {
                        Ok(Some(message)) => message,
                        Ok(None) => return Err("the gateway closed the stream".into()),
                        Err(status) => return Err(status.message().to_string()),
                    };
                    match message.body {
                        Some(Down::Command(command)) => {
                            let up = up.clone();
                            let handler = self.handler();
                            let span = command_span(&command, &message.traceparent);
                            tokio::spawn(async move {
                                let ack = handler.handle(command).await;
                                tracing::Span::current()
                                    .record("result", ack.result().as_str_name());
                                let _ = send(&up, Up::Ack(ack)).await;
                            }.instrument(span));
                        }
                        Some(Down::ReportAck(acked)) => {
                            self.outbox.ack(&acked.seqs);
                            for seq in &acked.seqs {
                                sent.remove(seq);
                            }
                        }
                        Some(Down::InventoryRequest(request)) => {
                            tracing::info!(reason = %request.reason, "the gateway asked for the full inventory");
                            send(&up, Up::Inventory(Inventory {
                                reports: self.instances.inventory(),
                            })).await?;
                        }
                        Some(Down::Welcome(_)) | None => {}
                    }
                }
            }
        }
    }

    /// Sends the pending reports not sent on this stream yet, and (unless `all`) again those
    /// sent longer than [`RESEND_AFTER`] ago; `all` sends every pending one.
    async fn send_reports(
        &self,
        up: &mpsc::Sender<DaemonMessage>,
        sent: &mut HashMap<u64, Instant>,
        all: bool,
    ) -> Result<(), String> {
        let pending = self.outbox.pending();
        sent.retain(|seq, _| pending.iter().any(|r| r.seq == *seq));
        for report in pending {
            let due = match sent.get(&report.seq) {
                None => true,
                Some(at) => all || at.elapsed() >= RESEND_AFTER,
            };
            if !due {
                continue;
            }
            if sent.insert(report.seq, Instant::now()).is_some() || all {
                metrics::counter!("prexor_daemon_reports_resent_total").increment(1);
            }
            send(up, Up::Instance(report)).await?;
        }
        Ok(())
    }

    fn handler(&self) -> Handler {
        Handler {
            instances: self.instances.clone(),
            fences: self.fences.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    fn resources(&self) -> HostResources {
        let (total, available) = memory_mb();
        HostResources {
            memory_total_mb: total,
            memory_allocatable_mb: self.memory_mb.unwrap_or(total),
            memory_available_mb: available,
            cpu_cores: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            load_average_1m: load_average(),
        }
    }
}

/// The span `daemon.command` of one command, a child of the span that delivered it (its
/// `traceparent`; docs/observability.md, "Traces").
fn command_span(command: &Command, traceparent: &str) -> tracing::Span {
    let instance = match &command.action {
        Some(Action::Start(start)) => start.plan.as_ref().map(|p| p.instance_id.as_str()),
        Some(Action::Stop(stop)) => Some(stop.instance_id.as_str()),
        Some(Action::Kill(kill)) => Some(kill.instance_id.as_str()),
        Some(Action::Console(input)) => Some(input.instance_id.as_str()),
        Some(Action::Query(query)) => Some(query.instance_id.as_str()),
        Some(Action::Capture(capture)) => Some(capture.instance_id.as_str()),
        Some(Action::Shutdown(_)) | None => None,
    };
    let span = tracing::info_span!(
        parent: None,
        "daemon.command",
        otel.name = %format_args!("daemon.{}", command.action_name()),
        command_id = %command.command_id,
        action = command.action_name(),
        scope = %command.scope,
        token = command.fence_token,
        instance = instance.unwrap_or_default(),
        result = tracing::field::Empty,
    );
    prexor_telemetry::trace::adopt(
        &span,
        prexor_telemetry::trace::from_traceparent(traceparent),
    );
    span
}

async fn send(up: &mpsc::Sender<DaemonMessage>, body: Up) -> Result<(), String> {
    up.send(DaemonMessage { body: Some(body) })
        .await
        .map_err(|_| "the stream to the gateway is closed".to_string())
}

/// Carries out one command: fence check first, then the action.
#[derive(Clone)]
pub struct Handler {
    instances: Instances,
    fences: Arc<Fences>,
    shutdown: CancellationToken,
}

impl Handler {
    pub async fn handle(&self, command: Command) -> CommandAck {
        let mut ack = self.run(&command).await;
        ack.command_id = command.command_id;
        ack
    }

    async fn run(&self, command: &Command) -> CommandAck {
        let refuse = |result: AckResult, message: String| {
            ack(result, InstanceState::Unspecified, 0, message)
        };
        if command.scope.is_empty() {
            return refuse(
                AckResult::Permanent,
                "the command carries no lease scope".into(),
            );
        }
        match self.fences.admit(&command.scope, command.fence_token) {
            Ok(Ok(())) => {}
            Ok(Err(stale)) => {
                metrics::counter!("prexor_daemon_stale_commands_total").increment(1);
                return refuse(
                    AckResult::StaleFence,
                    format!(
                        "stale fencing token {} for {}: this node has already accepted token {}",
                        command.fence_token, command.scope, stale.highest
                    ),
                );
            }
            Err(err) => {
                let mut ack = refuse(
                    AckResult::Transient,
                    format!("cannot record the fencing token: {err}"),
                );
                ack.retry_after_ms = 1000;
                return ack;
            }
        }
        match command.action.clone() {
            Some(Action::Start(start)) => match start.plan {
                Some(plan) => {
                    let fence = (command.scope.clone(), command.fence_token);
                    self.instances.start(plan, fence).await
                }
                None => refuse(AckResult::Permanent, "start without a plan".into()),
            },
            Some(Action::Stop(stop)) => self.instances.stop(stop).await,
            Some(Action::Kill(kill)) => self.instances.kill(kill).await,
            Some(Action::Console(input)) => self.instances.console(input).await,
            Some(Action::Shutdown(shutdown)) => self.shutdown_node(shutdown.grace_period_ms).await,
            Some(Action::Query(query)) => self.instances.query(query),
            Some(Action::Capture(capture)) => self.instances.capture(capture).await,
            None => refuse(
                AckResult::Permanent,
                "the command has no action this daemon knows (newer control plane?)".into(),
            ),
        }
    }
}

impl Handler {
    /// Stops every instance (console stop, SIGKILL after the grace period), then stops the
    /// daemon; acknowledged at once.
    async fn shutdown_node(&self, grace_ms: u32) -> CommandAck {
        let active = self.instances.active();
        for id in &active {
            self.instances
                .stop(prexor_proto::v1::StopInstance {
                    instance_id: id.clone(),
                    grace_period_ms: grace_ms,
                    stop_command: String::new(),
                    plan_hash: String::new(),
                })
                .await;
        }
        let instances = self.instances.clone();
        let shutdown = self.shutdown.clone();
        let bound = Duration::from_millis(u64::from(grace_ms)) + Duration::from_secs(5);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(bound, async {
                while !instances.active().is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
            tracing::info!("node shutdown requested by the control plane: stopping the daemon");
            shutdown.cancel();
        });
        ack(
            AckResult::Done,
            InstanceState::Unspecified,
            0,
            format!("stopping {} instance(s), then the daemon", active.len()),
        )
    }
}

/// This host's identity: `/etc/machine-id`, else this boot's id.
fn host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(crate::procfs::boot_id)
        .unwrap_or_default()
}

/// (total, available) memory in MiB from /proc/meminfo.
fn memory_mb() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
