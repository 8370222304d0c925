//! `prexor.v1.NodeSession`: daemon streams. The gateway that accepts a node's stream takes the
//! node's ownership lease (`<ns>node:<id>`, with a fresh fencing token), records what the daemon
//! reports under that token, and closes the stream the moment it loses the lease. Decisions
//! (crash handling after a disconnect, healing) belong to the scheduler.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use mongodb::bson::{Bson, Document, doc};
use prexor_coord::{ConsoleStreams, EventLog, Lease, LeaseKeeper, Leases};
use prexor_domain::{Scope, now_ms, validate_name};
use prexor_proto::v1::daemon_message::Body as Up;
use prexor_proto::v1::gateway_message::Body as Down;
use prexor_proto::v1::node_session_server::NodeSession;
use prexor_proto::v1::{
    Command, CommandAck, DaemonMessage, GatewayMessage, Hello, HostResources, InstanceReport,
    InstanceState, Welcome,
};
use prexor_store::{Store, StoreError, Write};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::enrolment::authorize_node;

/// How long a daemon has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The heartbeat interval asked of daemons; three missed heartbeats end the session.
const HEARTBEAT: Duration = Duration::from_secs(2);

pub const NODES: &str = "nodes";
pub use prexor_store::INSTANCES;
pub const CRASHES: &str = "crashes";
pub const STRAYS: &str = "stray_instances";

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
}

/// Why a command got no ack.
pub enum DeliveryError {
    Closed,
    Timeout,
}

impl SessionHandle {
    /// Sends `command` down the stream and waits for the daemon's ack.
    pub async fn deliver(
        &self,
        command: Command,
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

/// What the daemon said about an instance, as stored under `reported`.
fn reported_doc(node_id: &str, report: &InstanceReport) -> Document {
    doc! {
        "state": report.state().as_str_name(),
        "pid": report.pid,
        "port": i64::from(report.port),
        "planHash": &report.plan_hash,
        "nodeId": node_id,
        "exitCode": report.exit_code.map(Bson::Int32).unwrap_or(Bson::Null),
        "detail": &report.detail,
        "atMs": report.at_unix_ms,
    }
}

/// The crash record of a CRASHED report, keyed by instance and time: the same crash reported
/// again (a new session's inventory) is recorded once.
fn crash_write(node_id: &str, report: &InstanceReport) -> Option<Write> {
    (report.state() == InstanceState::Crashed).then(|| {
        Write::update_one(
            CRASHES,
            doc! { "_id": format!("{}@{}", report.instance_id, report.at_unix_ms) },
            doc! { "$set": {
                "instanceId": &report.instance_id,
                "nodeId": node_id,
                "group": &report.group,
                "planHash": &report.plan_hash,
                "exitCode": report.exit_code.map(Bson::Int32).unwrap_or(Bson::Null),
                "logTail": report.log_tail.clone(),
                "detail": &report.detail,
                "atMs": report.at_unix_ms,
            } },
        )
        .upsert()
    })
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
        if !lease.is_valid() {
            return Err(StoreError::StaleFence {
                scope: lease.scope().to_string(),
                token: lease.token(),
                mark: 0,
            });
        }
        self.inner
            .store
            .fenced_write(&lease.fence(), writes)
            .await
            .map(|_| ())
    }

    /// Records one instance report. A report about the instance's current plan (or about an
    /// instance the control plane never placed) goes into its record; a report about an older
    /// plan (a node that was cut off while its instance was placed elsewhere) goes to
    /// `stray_instances`, where the group's scheduler finds it and stops the process.
    async fn record_report(
        &self,
        lease: &Lease,
        node_id: &str,
        report: &InstanceReport,
    ) -> Result<(), StoreError> {
        let id = &report.instance_id;
        for _ in 0..3 {
            let current = self
                .inner
                .store
                .bounded(
                    "reading an instance record",
                    self.inner
                        .store
                        .documents(INSTANCES)
                        .find_one(doc! { "_id": id })
                        .projection(doc! { "planHash": 1, "nodeId": 1 }),
                )
                .await?;
            let reported = reported_doc(node_id, report);
            let plan = current
                .as_ref()
                .map(|d| d.get_str("planHash").ok().map(str::to_string));
            let node = current
                .as_ref()
                .and_then(|d| d.get_str("nodeId").ok().map(str::to_string));
            let mut writes = vec![match plan {
                None => Write::update_one(
                    INSTANCES,
                    doc! { "_id": id },
                    doc! {
                        "$set": { "reported": reported },
                        "$setOnInsert": { "group": &report.group, "nodeId": node_id },
                    },
                )
                .upsert(),
                Some(None) => Write::update_one(
                    INSTANCES,
                    doc! { "_id": id, "planHash": { "$exists": false } },
                    doc! { "$set": { "reported": reported } },
                )
                .require_match(),
                Some(Some(hash))
                    if hash == report.plan_hash && node.as_deref().is_none_or(|n| n == node_id) =>
                {
                    Write::update_one(
                        INSTANCES,
                        doc! { "_id": id, "planHash": &hash },
                        doc! { "$set": { "reported": reported } },
                    )
                    .require_match()
                }
                Some(Some(_)) => Write::update_one(
                    STRAYS,
                    doc! { "_id": format!("{id}@{node_id}") },
                    doc! { "$set": {
                        "instanceId": id,
                        "group": &report.group,
                        "nodeId": node_id,
                        "reported": reported,
                    } },
                )
                .upsert(),
            }];
            writes.extend(crash_write(node_id, report));
            match self.write(lease, writes).await {
                // The scheduler re-planned the instance meanwhile: classify it again.
                Err(StoreError::Precondition { .. }) => continue,
                other => return other,
            }
        }
        Ok(())
    }

    /// Accepts a stream whose Hello came from `node_id` (authorised), taking ownership.
    async fn accept(
        &self,
        hello: Hello,
        inbound: Streaming<DaemonMessage>,
    ) -> Result<mpsc::Receiver<Result<GatewayMessage, Status>>, Status> {
        let node_id = hello.node_id.clone();
        if let Err(reason) = self.inner.guard.allow_mutations() {
            return Err(Status::unavailable(format!(
                "this gateway cannot own nodes now ({reason}); connect to another gateway"
            )));
        }
        let scope = Scope::Node(node_id.clone());
        let lease = self.inner.leases.take_over(&scope).await.map_err(|e| {
            Status::unavailable(format!("cannot take ownership of node {node_id}: {e}"))
        })?;
        self.inner.keeper.insert(lease.clone());

        let writes = vec![
            Write::update_one(
                NODES,
                doc! { "_id": &node_id },
                doc! { "$set": {
                    "state": "ONLINE",
                    "gateway": &self.inner.replica_id,
                    "ownershipToken": lease.token() as i64,
                    "version": &hello.version,
                    "labels": hello.labels.iter().map(|(k, v)| (k.clone(), Bson::String(v.clone()))).collect::<Document>(),
                    "resources": hello.resources.as_ref().map(resources_doc).map(Bson::Document).unwrap_or(Bson::Null),
                    "connectedAtMs": now_ms(),
                    "lastHeartbeatMs": now_ms(),
                } },
            )
            .upsert(),
        ];
        let mut recorded = self.write(&lease, writes).await;
        for report in &hello.inventory {
            if recorded.is_err() {
                break;
            }
            recorded = self.record_report(&lease, &node_id, report).await;
        }
        if let Err(err) = recorded {
            self.inner.keeper.release(&scope).await;
            return Err(match err {
                StoreError::StaleFence { .. } => Status::aborted(format!(
                    "another gateway took node {node_id} while this one was accepting it; reconnect"
                )),
                other => Status::unavailable(other.to_string()),
            });
        }
        self.inner
            .events
            .publish(
                "NODE_ONLINE",
                &node_id,
                serde_json::json!({ "gateway": &self.inner.replica_id }),
            )
            .await;

        let (outbox, rx) = mpsc::channel(256);
        let handle = SessionHandle {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            lease: lease.clone(),
            outbox: outbox.clone(),
            pending: Arc::default(),
            closed: CancellationToken::new(),
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
            }))
            .await;
        tracing::info!(node = %node_id, token = lease.token(), instances = hello.inventory.len(), "node session accepted; this gateway owns the node");
        tokio::spawn(self.clone().serve(node_id, handle, inbound));
        Ok(rx)
    }

    /// Reads the daemon's messages until the stream ends, the lease is lost, a newer session
    /// replaces this one, or the gateway stops.
    async fn serve(
        self,
        node_id: String,
        handle: SessionHandle,
        mut inbound: Streaming<DaemonMessage>,
    ) {
        let lost = handle.lease.lost();
        let mut goodbye = false;
        let end = loop {
            let next = tokio::select! {
                _ = lost.cancelled() => break "lost",
                _ = handle.closed.cancelled() => break "replaced",
                _ = self.inner.shutdown.cancelled() => break "gateway stopping",
                next = tokio::time::timeout(HEARTBEAT * 3, inbound.message()) => next,
            };
            let message = match next {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => break "closed by the daemon",
                Ok(Err(_)) => break "broken",
                Err(_) => break "silent for three heartbeats",
            };
            let result = match message.body {
                Some(Up::Heartbeat(heartbeat)) => {
                    let mut set = doc! { "lastHeartbeatMs": now_ms(), "state": "ONLINE" };
                    if let Some(resources) = &heartbeat.resources {
                        set.insert("resources", resources_doc(resources));
                    }
                    self.write(
                        &handle.lease,
                        vec![Write::update_one(
                            NODES,
                            doc! { "_id": &node_id },
                            doc! { "$set": set },
                        )],
                    )
                    .await
                }
                Some(Up::Instance(report)) => {
                    self.record_report(&handle.lease, &node_id, &report).await
                }
                Some(Up::Console(console)) => {
                    if let Some(streams) = &self.inner.console
                        && let Err(err) = streams.append(&console.instance_id, &console.lines).await
                    {
                        tracing::debug!(error = %err, "console lines not stored");
                    }
                    Ok(())
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
                    Ok(())
                }
                Some(Up::Goodbye(_)) => {
                    goodbye = true;
                    Ok(())
                }
                Some(Up::Hello(_)) | None => Ok(()),
            };
            match result {
                Ok(()) => {}
                Err(StoreError::StaleFence { .. }) => break "lost",
                Err(err) => {
                    tracing::warn!(node = %node_id, error = %err, "could not record a daemon report");
                }
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
            let state = if goodbye { "OFFLINE" } else { "UNREACHABLE" };
            let write = Write::update_one(
                NODES,
                doc! { "_id": &node_id },
                doc! { "$set": { "state": state, "disconnectedAtMs": now_ms() } },
            );
            match self.write(&handle.lease, vec![write]).await {
                Ok(()) => {
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
                Err(err) => {
                    tracing::warn!(node = %node_id, error = %err, "could not record the node's disconnection");
                }
            }
            self.inner
                .keeper
                .release(&handle.lease.scope().clone())
                .await;
            tracing::info!(node = %node_id, reason = end, state, "node session ended");
        } else {
            tracing::info!(node = %node_id, "node session replaced by a newer one on this gateway");
        }
        handle.closed.cancel();
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
        authorize_node(&self.inner.store, certs, &hello.node_id).await?;
        let rx = self.accept(hello, inbound).await?;
        let shutdown = self.inner.shutdown.clone();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .take_until(async move { shutdown.cancelled().await });
        Ok(Response::new(Box::pin(stream)))
    }
}
