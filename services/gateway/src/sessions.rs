//! `prexor.v1.NodeSession`: daemon streams. The gateway that accepts a node's stream takes the
//! node's ownership lease (`<ns>node:<id>`, with a fresh fencing token), records what the daemon
//! reports under that token ([`crate::reports`]), and closes the stream the moment it loses the
//! lease. Decisions (crash handling after a disconnect, healing) belong to the scheduler.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use mongodb::bson::{Bson, Document, doc};
use prexor_coord::{ConsoleStreams, EventLog, Lease, LeaseKeeper, Leases};
use prexor_domain::limits::{CONSOLE_BATCH_MAX, CONSOLE_LINE_MAX, cut_line};
use prexor_domain::{Scope, now_ms, validate_name};
use prexor_proto::v1::daemon_message::Body as Up;
use prexor_proto::v1::gateway_message::Body as Down;
use prexor_proto::v1::node_session_server::NodeSession;
use prexor_proto::v1::{
    Command, CommandAck, ConsoleLines, DaemonMessage, GatewayMessage, Hello, HostResources,
    InventoryRequest, Welcome,
};
use prexor_store::{Store, StoreError, Write};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::enrolment::authorize_node;
use crate::reports::{Recorder, Reporter, until_stored};

/// How long a daemon has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The heartbeat interval asked of daemons; three missed heartbeats end the session.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How often a daemon's inventory digest is compared with MongoDB.
const DIGEST_EVERY: Duration = Duration::from_secs(5);
/// At most one full inventory asked for per this long.
const INVENTORY_EVERY: Duration = Duration::from_secs(15);
/// How long a console line's instance stays known as placed (or not) on the node.
const PLACEMENT_CACHE: Duration = Duration::from_secs(10);
/// How often live sessions are checked against the revocation list.
const REVOCATION_CHECK: Duration = Duration::from_secs(3);
/// How long a session's end is retried into the node record before the lease is let go.
const DISCONNECT_RECORD_WITHIN: Duration = Duration::from_secs(30);

pub use prexor_model::instances::CRASHES;
pub use prexor_model::instances::INSTANCES;
pub use prexor_model::instances::STRAYS;
pub use prexor_model::nodes::NODES;
use prexor_model::nodes::NodeState;

/// The sessions this gateway holds, by node id.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    leases: Leases,
    keeper: LeaseKeeper,
    console: Option<ConsoleStreams>,
    events: EventLog,
    guard: prexor_serve::guard::StoreGuard,
    replica_id: String,
    live: Mutex<HashMap<String, SessionHandle>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
}

/// A live session: where to send commands and who waits for which ack.
#[derive(Clone)]
pub struct SessionHandle {
    id: u64,
    pub lease: Lease,
    outbox: mpsc::Sender<Result<GatewayMessage, Status>>,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<CommandAck>>>>,
    closed: CancellationToken,
    /// The serial of the node certificate the session was opened with.
    serial: String,
    /// Cancelled when that certificate is revoked (not merely renewed).
    revoked: CancellationToken,
}

/// Why a command got no ack.
pub enum DeliveryError {
    Closed,
    Timeout,
}

impl SessionHandle {
    /// Sends `command` down the stream and waits for the daemon's ack.
    /// Its span `gateway.deliver` goes down with the command (`GatewayMessage.traceparent`), so
    /// that the daemon's span for it continues the trace.
    pub async fn deliver(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandAck, DeliveryError> {
        let span = tracing::info_span!(
            "gateway.deliver",
            command_id = %command.command_id,
            action = command.action_name(),
            token = self.lease.token(),
        );
        let traceparent = prexor_telemetry::trace::traceparent(&span).unwrap_or_default();
        self.deliver_traced(command, traceparent, timeout)
            .instrument(span)
            .await
    }

    async fn deliver_traced(
        &self,
        command: Command,
        traceparent: String,
        timeout: Duration,
    ) -> Result<CommandAck, DeliveryError> {
        let (tx, rx) = oneshot::channel();
        let id = command.command_id.clone();
        self.pending
            .lock()
            .expect("pending lock")
            .insert(id.clone(), tx);
        let sent = self
            .outbox
            .send(Ok(GatewayMessage {
                body: Some(Down::Command(command)),
                traceparent,
            }))
            .await;
        if sent.is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(DeliveryError::Closed);
        }
        let outcome = tokio::time::timeout(timeout, rx).await;
        self.pending.lock().expect("pending lock").remove(&id);
        match outcome {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(_)) => Err(DeliveryError::Closed),
            Err(_) => Err(DeliveryError::Timeout),
        }
    }
}

fn resources_doc(r: &HostResources) -> Document {
    doc! {
        "memoryTotalMb": r.memory_total_mb as i64,
        "memoryAllocatableMb": r.memory_allocatable_mb as i64,
        "memoryAvailableMb": r.memory_available_mb as i64,
        "cpuCores": i64::from(r.cpu_cores),
        "loadAverage1m": r.load_average_1m,
    }
}

impl Sessions {
    pub fn new(
        service: &prexor_serve::Service,
        keeper: LeaseKeeper,
        console: Option<ConsoleStreams>,
    ) -> Sessions {
        Sessions {
            inner: Arc::new(Inner {
                store: service.store.clone(),
                leases: service.leases.clone(),
                keeper,
                console,
                events: service.events.clone(),
                guard: service.guard.clone(),
                replica_id: service.config.replica_id.clone(),
                live: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shutdown: service.shutdown.clone(),
            }),
        }
    }

    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    pub fn leases(&self) -> &Leases {
        &self.inner.leases
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The live session of `node_id` on this gateway, if it still owns the node.
    pub fn get(&self, node_id: &str) -> Option<SessionHandle> {
        let live = self.inner.live.lock().expect("sessions lock");
        live.get(node_id)
            .filter(|s| s.lease.is_valid() && !s.closed.is_cancelled())
            .cloned()
    }

    pub fn count(&self) -> usize {
        self.inner.live.lock().expect("sessions lock").len()
    }

    async fn write(&self, lease: &Lease, writes: Vec<Write>) -> Result<(), StoreError> {
        crate::reports::write_owned(&self.inner.store, lease, writes).await
    }

    /// Accepts a stream whose Hello came from `node_id` (authorised), taking ownership.
    async fn accept(
        &self,
        hello: Hello,
        inbound: Streaming<DaemonMessage>,
        serial: String,
    ) -> Result<mpsc::Receiver<Result<GatewayMessage, Status>>, Status> {
        let node_id = hello.node_id.clone();
        if let Err(reason) = self.inner.guard.allow_mutations() {
            return Err(Status::unavailable(format!(
                "this gateway cannot own nodes now ({reason}); connect to another gateway"
            )));
        }
        let scope = Scope::node(node_id.clone());
        let lease = self.inner.leases.take_over(&scope).await.map_err(|e| {
            Status::unavailable(format!("cannot take ownership of node {node_id}: {e}"))
        })?;
        self.inner.keeper.insert(lease.clone());

        let (outbox, rx) = mpsc::channel(256);
        let handle = SessionHandle {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            lease: lease.clone(),
            outbox: outbox.clone(),
            pending: Arc::default(),
            closed: CancellationToken::new(),
            serial,
            revoked: CancellationToken::new(),
        };
        if let Some(previous) = self
            .inner
            .live
            .lock()
            .expect("sessions lock")
            .insert(node_id.clone(), handle.clone())
        {
            previous.closed.cancel();
        }
        metrics::gauge!("prexor_gateway_sessions").set(self.count() as f64);
        let _ = outbox
            .send(Ok(GatewayMessage {
                body: Some(Down::Welcome(Welcome {
                    gateway_replica: self.inner.replica_id.clone(),
                    ownership_token: lease.token(),
                    heartbeat_interval_ms: HEARTBEAT.as_millis() as u32,
                })),
                traceparent: String::new(),
            }))
            .await;
        tracing::info!(node = %node_id, token = lease.token(), instances = hello.inventory.len(), "node session accepted; this gateway owns the node");
        let reporter = Reporter::new(
            Recorder {
                store: self.inner.store.clone(),
                node_id: node_id.clone(),
                epoch: hello.report_epoch.clone(),
                lease: lease.clone(),
            },
            outbox,
            handle.closed.clone(),
        );
        // The node record first, then the inventory, both retried while this gateway owns the
        // node: a locked document delays them, never refuses the session.
        tokio::spawn(self.clone().record_online(hello.clone(), handle.clone()));
        for report in hello.inventory {
            reporter.submit(report, false);
        }
        tokio::spawn(self.clone().serve(node_id, handle, reporter, inbound));
        Ok(rx)
    }

    /// Records the node ONLINE under this session's token and announces it.
    async fn record_online(self, hello: Hello, handle: SessionHandle) {
        let node_id = &hello.node_id;
        let write = || {
            let writes = vec![
                Write::update_one(
                    NODES,
                    doc! { "_id": node_id },
                    doc! { "$set": {
                        "state": NodeState::Online,
                        "gateway": &self.inner.replica_id,
                        "ownershipToken": handle.lease.token() as i64,
                        "version": &hello.version,
                        "hostId": &hello.host_id,
                        "labels": hello.labels.iter().map(|(k, v)| (k.clone(), Bson::String(v.clone()))).collect::<Document>(),
                        "resources": hello.resources.as_ref().map(resources_doc).map(Bson::Document).unwrap_or(Bson::Null),
                        "isolation": hello.isolation.as_ref().map(|i| Bson::Document(doc! {
                            "runAs": &i.run_as, "limits": &i.limits, "resourceLimits": i.resource_limits,
                        })).unwrap_or(Bson::Null),
                        "connectedAtMs": now_ms(),
                        "lastHeartbeatMs": now_ms(),
                    } },
                )
                .upsert(),
            ];
            self.write(&handle.lease, writes)
        };
        let recorded = until_stored(
            &handle.lease,
            &handle.closed,
            node_id,
            "the node record",
            write,
        )
        .await;
        if recorded.is_some() {
            self.inner
                .events
                .publish(
                    "NODE_ONLINE",
                    node_id,
                    serde_json::json!({ "gateway": &self.inner.replica_id }),
                )
                .await;
        }
    }

    /// Reads the daemon's messages until the stream ends, the lease is lost, a newer session
    /// replaces this one, or the gateway stops.
    async fn serve(
        self,
        node_id: String,
        handle: SessionHandle,
        reporter: Arc<Reporter>,
        mut inbound: Streaming<DaemonMessage>,
    ) {
        let lost = handle.lease.lost();
        let mut goodbye = false;
        let console = self.console_task(&node_id, &handle);
        let heartbeat_writing = Arc::new(AtomicBool::new(false));
        let digest = Arc::new(DigestCheck::default());
        let end = loop {
            let next = tokio::select! {
                _ = lost.cancelled() => break "lost",
                _ = handle.closed.cancelled() => break "replaced",
                _ = handle.revoked.cancelled() => break "certificate revoked",
                _ = self.inner.shutdown.cancelled() => break "gateway stopping",
                next = tokio::time::timeout(HEARTBEAT * 3, inbound.message()) => next,
            };
            let message = match next {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => break "closed by the daemon",
                Ok(Err(_)) => break "broken",
                Err(_) => break "silent for three heartbeats",
            };
            match message.body {
                Some(Up::Heartbeat(heartbeat)) => {
                    // Written beside the stream, one at a time: a slow store never holds up
                    // acks and reports, and a skipped heartbeat is replaced by the next one.
                    if !heartbeat_writing.swap(true, Ordering::SeqCst) {
                        let (this, node, lease, busy) = (
                            self.clone(),
                            node_id.clone(),
                            handle.lease.clone(),
                            heartbeat_writing.clone(),
                        );
                        tokio::spawn(async move {
                            this.record_heartbeat(&node, &lease, heartbeat.resources.as_ref())
                                .await;
                            busy.store(false, Ordering::SeqCst);
                        });
                    }
                    if !heartbeat.inventory_digest.is_empty() {
                        digest.clone().check(
                            &reporter,
                            heartbeat.inventory_digest,
                            handle.outbox.clone(),
                        );
                    }
                }
                Some(Up::Instance(report)) => reporter.submit(report, false),
                Some(Up::Inventory(inventory)) => {
                    for report in &inventory.reports {
                        reporter.submit(report.clone(), true);
                    }
                    let recorder = reporter.recorder().clone();
                    let closed = handle.closed.clone();
                    tokio::spawn(async move {
                        let settle = || recorder.settle_missing(&inventory.reports);
                        until_stored(
                            &recorder.lease,
                            &closed,
                            &recorder.node_id,
                            "the inventory's reconciliation",
                            settle,
                        )
                        .await;
                    });
                }
                Some(Up::Console(lines)) => {
                    if console.try_send(lines).is_err() {
                        metrics::counter!("prexor_gateway_console_lines_dropped_total")
                            .increment(1);
                    }
                }
                Some(Up::Ack(ack)) => {
                    let waiter = handle
                        .pending
                        .lock()
                        .expect("pending lock")
                        .remove(&ack.command_id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(ack);
                    }
                }
                Some(Up::Goodbye(_)) => goodbye = true,
                Some(Up::Hello(_)) | None => {}
            }
        };

        // Whoever owns the node now decides what it is; this gateway only closes its stream.
        let still_current = {
            let mut live = self.inner.live.lock().expect("sessions lock");
            let current = live.get(&node_id).is_some_and(|s| s.id == handle.id);
            if current {
                live.remove(&node_id);
            }
            current
        };
        metrics::gauge!("prexor_gateway_sessions").set(self.count() as f64);
        handle.pending.lock().expect("pending lock").clear();
        if end == "gateway stopping" {
            // The keeper releases the node's lease; the daemon reconnects to another gateway.
            tracing::info!(node = %node_id, "closing the node session: this gateway is stopping");
        } else if end == "lost" || !handle.lease.is_valid() {
            // Paused, cut off or taken over: whoever owns the node now records it; nothing is
            // written under this token any more.
            metrics::counter!("prexor_gateway_sessions_lost_total").increment(1);
            tracing::warn!(node = %node_id, token = handle.lease.token(), reason = end, "lost ownership of the node to another gateway; closing the stream");
            let _ = handle.outbox.try_send(Err(Status::aborted(format!(
                "this gateway no longer owns node {node_id}; reconnect"
            ))));
        } else if still_current {
            let state = if goodbye {
                NodeState::Offline
            } else {
                NodeState::Unreachable
            };
            let at = now_ms();
            let write = || {
                self.write(
                    &handle.lease,
                    vec![Write::update_one(
                        NODES,
                        doc! { "_id": &node_id },
                        doc! { "$set": { "state": state, "disconnectedAtMs": at } },
                    )],
                )
            };
            // Retried for a while (the lease is still held meanwhile); a node that comes back
            // is recorded ONLINE by whichever gateway accepts it.
            let never = CancellationToken::new();
            let recorded = tokio::time::timeout(
                DISCONNECT_RECORD_WITHIN,
                until_stored(
                    &handle.lease,
                    &never,
                    &node_id,
                    "the node's disconnection",
                    write,
                ),
            )
            .await;
            match recorded {
                Ok(Some(())) => {
                    let kind = if goodbye {
                        "NODE_OFFLINE"
                    } else {
                        "NODE_UNREACHABLE"
                    };
                    self.inner
                        .events
                        .publish(kind, &node_id, serde_json::json!({ "reason": end }))
                        .await;
                }
                _ => {
                    tracing::warn!(node = %node_id, "could not record the node's disconnection within {DISCONNECT_RECORD_WITHIN:?}");
                }
            }
            self.inner
                .keeper
                .release(&handle.lease.scope().clone())
                .await;
            tracing::info!(node = %node_id, reason = end, %state, "node session ended");
        } else {
            tracing::info!(node = %node_id, "node session replaced by a newer one on this gateway");
        }
        handle.closed.cancel();
    }
}

impl Sessions {
    /// Ends, within [`REVOCATION_CHECK`], every session whose node certificate was revoked
    /// (one renewed by the node since still stands); the node is then refused at its next
    /// handshake. Runs until the gateway stops.
    pub async fn close_revoked(self) {
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(REVOCATION_CHECK) => {}
            }
            let live: Vec<(String, SessionHandle)> = self
                .inner
                .live
                .lock()
                .expect("sessions lock")
                .iter()
                .map(|(node, handle)| (node.clone(), handle.clone()))
                .collect();
            let serials: Vec<String> = live.iter().map(|(_, h)| h.serial.clone()).collect();
            let fallen = match prexor_model::pki::fallen(&self.inner.store, &serials).await {
                Ok(fallen) => fallen,
                Err(err) => {
                    tracing::debug!(error = %err, "the revocation list was not read (checked again shortly)");
                    continue;
                }
            };
            for (serial, reason) in fallen {
                for (node, handle) in live.iter().filter(|(_, h)| h.serial == serial) {
                    tracing::warn!(%node, %serial, %reason, "the node's certificate was revoked: closing its session");
                    metrics::counter!("prexor_gateway_sessions_revoked_total").increment(1);
                    let _ = handle
                        .outbox
                        .try_send(Err(Status::permission_denied(format!(
                            "the certificate {serial} of node {node} was revoked ({reason})"
                        ))));
                    handle.revoked.cancel();
                }
            }
        }
    }

    /// The node's heartbeat: last seen now, ONLINE, its resources.
    async fn record_heartbeat(
        &self,
        node_id: &str,
        lease: &Lease,
        resources: Option<&HostResources>,
    ) {
        let mut set = doc! { "lastHeartbeatMs": now_ms(), "state": NodeState::Online };
        if let Some(resources) = resources {
            set.insert("resources", resources_doc(resources));
        }
        let write = Write::update_one(NODES, doc! { "_id": node_id }, doc! { "$set": set });
        if let Err(err) = self.write(lease, vec![write]).await {
            tracing::debug!(node = %node_id, error = %err, "heartbeat not recorded (the next one will be)");
        }
    }

    /// The session's console writer: lines of instances placed on this node go to their
    /// Valkey streams, cut to size; lines of anything else are refused.
    fn console_task(&self, node_id: &str, handle: &SessionHandle) -> mpsc::Sender<ConsoleLines> {
        let (tx, mut rx) = mpsc::channel::<ConsoleLines>(1024);
        let (this, node_id, closed) = (self.clone(), node_id.to_owned(), handle.closed.clone());
        tokio::spawn(async move {
            let mut placed: HashMap<String, (bool, Instant)> = HashMap::new();
            loop {
                let batch = tokio::select! {
                    _ = closed.cancelled() => return,
                    batch = rx.recv() => match batch {
                        Some(batch) => batch,
                        None => return,
                    },
                };
                let Some(streams) = &this.inner.console else {
                    continue;
                };
                let id = batch.instance_id;
                let fresh = placed
                    .get(&id)
                    .is_some_and(|(_, at)| at.elapsed() < PLACEMENT_CACHE);
                if !fresh {
                    let here = this.placed_on(&id, &node_id).await;
                    placed.insert(id.clone(), (here, Instant::now()));
                }
                if !placed.get(&id).is_some_and(|(here, _)| *here) {
                    metrics::counter!("prexor_gateway_console_refused_total").increment(1);
                    tracing::debug!(node = %node_id, instance = %id, "console lines of an instance not placed on this node; refused");
                    continue;
                }
                let lines: Vec<String> = batch
                    .lines
                    .iter()
                    .take(CONSOLE_BATCH_MAX)
                    .map(|l| cut_line(l, CONSOLE_LINE_MAX))
                    .collect();
                if let Err(err) = streams.append(&id, &lines).await {
                    tracing::debug!(error = %err, "console lines not stored");
                }
            }
        });
        tx
    }

    /// Whether instance `id` is placed on `node_id` (its record names the node).
    async fn placed_on(&self, id: &str, node_id: &str) -> bool {
        if validate_name(id).is_err() {
            return false;
        }
        let found = self
            .inner
            .store
            .bounded(
                "reading an instance's node",
                self.inner
                    .store
                    .documents(INSTANCES)
                    .find_one(doc! { "_id": id, "nodeId": node_id })
                    .projection(doc! { "_id": 1 }),
            )
            .await;
        matches!(found, Ok(Some(_)))
    }
}

/// Compares a daemon's inventory digest with MongoDB every [`DIGEST_EVERY`] and asks for the
/// full inventory (at most every [`INVENTORY_EVERY`]) when they differ.
#[derive(Default)]
struct DigestCheck {
    running: AtomicBool,
    /// When the digest was last compared, and when an inventory was last asked for.
    last: Mutex<(Option<Instant>, Option<Instant>)>,
}

impl DigestCheck {
    fn check(
        self: Arc<Self>,
        reporter: &Arc<Reporter>,
        digest: String,
        outbox: mpsc::Sender<Result<GatewayMessage, Status>>,
    ) {
        // Only when every report received is stored: then MongoDB must say what the digest says.
        if !reporter.is_idle() {
            return;
        }
        {
            let mut last = self.last.lock().expect("digest lock");
            if last.0.is_some_and(|at| at.elapsed() < DIGEST_EVERY) {
                return;
            }
            last.0 = Some(Instant::now());
        }
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let submitted = reporter.submitted();
        let reporter = reporter.clone();
        tokio::spawn(async move {
            let outcome = reporter.recorder().digest_matches(&digest).await;
            self.running.store(false, Ordering::SeqCst);
            let node = &reporter.recorder().node_id;
            match outcome {
                Ok(true) => {}
                // A report arrived while MongoDB was read: not comparable, next time.
                Ok(false) if reporter.submitted() != submitted || !reporter.is_idle() => {}
                Ok(false) => {
                    metrics::counter!("prexor_gateway_inventory_mismatches_total").increment(1);
                    let due = {
                        let mut last = self.last.lock().expect("digest lock");
                        let due = last.1.is_none_or(|at| at.elapsed() >= INVENTORY_EVERY);
                        if due {
                            last.1 = Some(Instant::now());
                        }
                        due
                    };
                    if due {
                        tracing::warn!(%node, "the node's inventory differs from what MongoDB holds; asking for the full inventory");
                        let _ = outbox
                            .send(Ok(GatewayMessage {
                                body: Some(Down::InventoryRequest(InventoryRequest {
                                    reason:
                                        "the inventory digest differs from the cluster's record"
                                            .into(),
                                })),
                                traceparent: String::new(),
                            }))
                            .await;
                    }
                }
                Err(err) => {
                    tracing::debug!(%node, error = %err, "inventory digest not compared");
                }
            }
        });
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<GatewayMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeSession for Sessions {
    type OpenStream = OutStream;

    async fn open(
        &self,
        request: Request<Streaming<DaemonMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let certs = request.peer_certs();
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(DaemonMessage {
                body: Some(Up::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ));
            }
            Ok(Ok(None)) => return Err(Status::cancelled("the daemon closed the stream")),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no Hello within {HELLO_TIMEOUT:?}"
                )));
            }
        };
        validate_name(&hello.node_id)
            .map_err(|e| Status::invalid_argument(format!("node id {:?}: {e}", hello.node_id)))?;
        let certificate = authorize_node(&self.inner.store, certs, &hello.node_id).await?;
        let rx = self.accept(hello, inbound, certificate.serial).await?;
        let shutdown = self.inner.shutdown.clone();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .take_until(async move { shutdown.cancelled().await });
        Ok(Response::new(Box::pin(stream)))
    }
}
