//! Recording what a daemon reports: at least once, in order per instance, acknowledged only once
//! durable (docs/daemon-protocol.md, "Reports").
//!
//! Each session has a [`Reporter`]: one queue per instance, worked by its own task, so a report
//! stuck behind a locked document (a frozen scheduler's open transaction holds it until the
//! transaction times out) delays that instance only. A transient store error is retried with
//! backoff and jitter for as long as this gateway owns the node; only a lost ownership ends the
//! retries, and then the daemon sends its unacknowledged reports to the new owner.
//!
//! A report is stored under the node's ownership fence, keyed by instance, and only where it
//! belongs: in the instance's record when the instance is placed on this node with this plan,
//! otherwise in `stray_instances` (a node speaks only for itself). Reports carry the daemon's
//! `(epoch, seq)`; a lower seq never overwrites a higher one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{Bson, Document, doc};
use prexor_coord::Lease;
use prexor_domain::limits::{CONSOLE_LINE_MAX, cap_tail, cut_line};
use prexor_domain::{now_ms, validate_name};
use prexor_proto::v1::gateway_message::Body as Down;
use prexor_proto::v1::{GatewayMessage, InstanceReport, InstanceState, ReportAck};
use prexor_store::{Store, StoreError, Write};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

use prexor_model::instances::{InstanceState as State, REPORTED_LIVE};

use crate::sessions::{CRASHES, INSTANCES, STRAYS};

const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What became of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written to the instance's record.
    Stored,
    /// Written to `stray_instances` (not placed on this node with this plan).
    Stray,
    /// A newer report of the same instance is stored already: nothing to write.
    Superseded,
    /// It can never be stored (a malformed instance id): acknowledged so the daemon forgets it.
    Refused,
}

impl Recorded {
    fn label(self) -> &'static str {
        match self {
            Recorded::Stored => "stored",
            Recorded::Stray => "stray",
            Recorded::Superseded => "superseded",
            Recorded::Refused => "refused",
        }
    }
}

/// The node-scoped context every write of one session shares.
pub struct Recorder {
    pub store: Store,
    pub node_id: String,
    /// The daemon's report epoch (Hello.report_epoch).
    pub epoch: String,
    pub lease: Lease,
}

/// `writes` under the node's ownership `lease`: refused at once (as stale) when the lease is no
/// longer valid here, and by MongoDB when a newer owner has written.
pub async fn write_owned(
    store: &Store,
    lease: &Lease,
    writes: Vec<Write>,
) -> Result<(), StoreError> {
    if !lease.is_valid() {
        return Err(StoreError::StaleFence {
            scope: lease.scope().to_string(),
            token: lease.token(),
            mark: 0,
        });
    }
    store.fenced_write(&lease.fence(), writes).await.map(|_| ())
}

/// Runs `attempt` until it succeeds, retrying every error but a stale fence with backoff and
/// jitter; `None` once the lease is lost or `closed` is cancelled (the write is then the next
/// owner's to make).
pub async fn until_stored<T, F, Fut>(
    lease: &Lease,
    closed: &CancellationToken,
    node: &str,
    what: &str,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut wait = RETRY_FIRST;
    let mut failures: u32 = 0;
    loop {
        if closed.is_cancelled() || !lease.is_valid() {
            return None;
        }
        let err = match attempt().await {
            Ok(done) => {
                if failures > 0 {
                    tracing::info!(%node, failures, "{what} is stored after all");
                }
                return Some(done);
            }
            Err(StoreError::StaleFence { .. }) => return None,
            Err(err) => err,
        };
        failures += 1;
        let kind = if err.is_transient() {
            "transient"
        } else {
            "error"
        };
        metrics::counter!("prexor_gateway_store_retries_total", "kind" => kind).increment(1);
        // Said once, then every 20th failure: a locked document can take a minute.
        if failures == 1 || failures.is_multiple_of(20) {
            tracing::warn!(%node, failures, error = %err, "{what} is not stored yet; retrying while this gateway owns the node");
        }
        let jittered = wait.mul_f64(rand::random_range(0.5..1.0));
        let lost = lease.lost();
        tokio::select! {
            _ = closed.cancelled() => return None,
            _ = lost.cancelled() => return None,
            _ = tokio::time::sleep(jittered) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

impl Recorder {
    async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        write_owned(&self.store, &self.lease, writes).await
    }

    /// Stores one report where it belongs. `force` (a full inventory the gateway asked for)
    /// rewrites a report of the same seq too, repairing a record someone else changed.
    pub async fn record(
        &self,
        report: &InstanceReport,
        force: bool,
    ) -> Result<Recorded, StoreError> {
        let id = &report.instance_id;
        if validate_name(id).is_err() {
            tracing::warn!(node = %self.node_id, instance = %id, "a report for an invalid instance id; refused");
            return Ok(Recorded::Refused);
        }
        prexor_serve::failpoint::fail("gateway.report-write").map_err(|what| {
            StoreError::Timeout {
                op: what.to_string(),
                timeout: Duration::ZERO,
            }
        })?;
        loop {
            let current = self
                .store
                .bounded(
                    "reading an instance record",
                    self.store
                        .documents(INSTANCES)
                        .find_one(doc! { "_id": id })
                        .projection(doc! {
                            "planHash": 1, "nodeId": 1, "group": 1,
                            "reported.seq": 1, "reported.epoch": 1,
                        }),
                )
                .await?;
            let placed = current.as_ref().filter(|d| {
                d.get_str("nodeId") == Ok(self.node_id.as_str())
                    && d.get_str("planHash") == Ok(report.plan_hash.as_str())
            });
            let outcome = match placed {
                Some(record) => self.record_placed(report, record, force).await,
                None => {
                    let group = current
                        .as_ref()
                        .and_then(|d| d.get_str("group").ok())
                        .unwrap_or(&report.group);
                    self.record_stray(report, group, force).await
                }
            };
            match outcome {
                // The scheduler re-planned the instance, or a newer report landed meanwhile:
                // classify it again.
                Err(StoreError::Precondition { .. }) => continue,
                other => return other,
            }
        }
    }

    /// The report of an instance placed here with this plan: into its record, unless a newer
    /// one is there; a crash also gets its crash record.
    async fn record_placed(
        &self,
        report: &InstanceReport,
        record: &Document,
        force: bool,
    ) -> Result<Recorded, StoreError> {
        let stored = record.get_document("reported").ok();
        let same_epoch = stored.and_then(|r| r.get_str("epoch").ok()) == Some(&self.epoch);
        let stored_seq = stored
            .and_then(|r| r.get_i64("seq").ok())
            .unwrap_or_default() as u64;
        let newer_stored = report.seq != 0
            && same_epoch
            && (stored_seq > report.seq || (stored_seq == report.seq && !force));
        let group = record.get_str("group").unwrap_or_default();
        let crash = crash_write(&self.node_id, group, report);
        if newer_stored {
            // Nothing to update; a crash record still goes in (once per plan).
            if let Some(crash) = crash {
                self.write(vec![crash]).await?;
            }
            return Ok(Recorded::Superseded);
        }
        let mut filter = doc! {
            "_id": &report.instance_id,
            "nodeId": &self.node_id,
            "planHash": &report.plan_hash,
        };
        filter.extend(self.order_filter(report, force));
        let mut writes = vec![
            Write::update_one(
                INSTANCES,
                filter,
                doc! { "$set": { "reported": self.reported_doc(report) } },
            )
            .require_match(),
        ];
        writes.extend(crash);
        self.write(writes).await?;
        Ok(Recorded::Stored)
    }

    /// A report about an instance not placed on this node with this plan (an older plan, one
    /// that was placed elsewhere since, or one the control plane never placed): recorded as a
    /// stray of this node for the group's scheduler to stop; no instance record is created.
    async fn record_stray(
        &self,
        report: &InstanceReport,
        group: &str,
        force: bool,
    ) -> Result<Recorded, StoreError> {
        let mut filter = doc! { "_id": format!("{}@{}", report.instance_id, self.node_id) };
        filter.extend(self.order_filter(report, force));
        let written = self
            .write(vec![
                Write::update_one(
                    STRAYS,
                    filter,
                    doc! { "$set": {
                        "instanceId": &report.instance_id,
                        "group": group,
                        "nodeId": &self.node_id,
                        "reported": self.reported_doc(report),
                    } },
                )
                .upsert(),
            ])
            .await;
        match written {
            Ok(()) => Ok(Recorded::Stray),
            // The upsert met the existing record with a newer report.
            Err(err) if err.is_duplicate_key() => Ok(Recorded::Superseded),
            Err(err) => Err(err),
        }
    }

    /// Matches a stored report older than `report` (or of another epoch, or none at all).
    fn order_filter(&self, report: &InstanceReport, force: bool) -> Document {
        if report.seq == 0 {
            return doc! {};
        }
        let seq = report.seq as i64;
        let older = if force {
            doc! { "reported.seq": { "$lte": seq } }
        } else {
            doc! { "reported.seq": { "$lt": seq } }
        };
        doc! { "$or": [
            { "reported.epoch": { "$ne": &self.epoch } },
            { "reported.seq": { "$exists": false } },
            older,
        ] }
    }

    /// What the daemon said about an instance, as stored under `reported`.
    fn reported_doc(&self, report: &InstanceReport) -> Document {
        doc! {
            "state": report.state().as_str_name(),
            "pid": report.pid,
            "port": i64::from(report.port),
            "planHash": &report.plan_hash,
            "nodeId": &self.node_id,
            "exitCode": report.exit_code.map(Bson::Int32).unwrap_or(Bson::Null),
            "detail": cut_line(&report.detail, CONSOLE_LINE_MAX),
            "atMs": report.at_unix_ms,
            "receivedAtMs": now_ms(),
            "seq": report.seq as i64,
            "epoch": &self.epoch,
        }
    }

    /// The instances MongoDB holds as live on this node: the current plan's report in each
    /// instance record, and the strays of this node.
    async fn live_in_store(&self) -> Result<Vec<Live>, StoreError> {
        let live: Vec<&str> = REPORTED_LIVE.iter().map(|s| s.as_str()).collect();
        let live_states = doc! { "$in": live };
        let (instances, strays) = tokio::try_join!(
            self.store.find_projected(
                INSTANCES,
                "reading what this node reported",
                doc! { "reported.nodeId": &self.node_id, "reported.state": live_states.clone() },
                doc! { "planHash": 1, "reported": 1 },
            ),
            self.store.find_projected(
                STRAYS,
                "reading this node's strays",
                doc! { "nodeId": &self.node_id, "reported.state": live_states },
                doc! { "instanceId": 1, "reported": 1 },
            ),
        )?;
        let entry = |doc: &Document, id_field: &str, stray: bool| -> Option<Live> {
            let reported = doc.get_document("reported").ok()?;
            let plan = reported.get_str("planHash").ok()?;
            // An instance record's report of an older plan is not the instance's any more.
            if !stray && doc.get_str("planHash") != Ok(plan) {
                return None;
            }
            Some(Live {
                instance: doc.get_str(id_field).ok()?.to_owned(),
                plan: plan.to_owned(),
                state: reported.get_str("state").ok()?.to_owned(),
                stray,
            })
        };
        Ok(instances
            .iter()
            .filter_map(|d| entry(d, "_id", false))
            .chain(strays.iter().filter_map(|d| entry(d, "instanceId", true)))
            .collect())
    }

    /// Whether the daemon's inventory digest matches what MongoDB holds from this node.
    pub async fn digest_matches(&self, digest: &str) -> Result<bool, StoreError> {
        let live = self.live_in_store().await?;
        let ours = prexor_domain::inventory_digest(
            live.iter()
                .map(|l| (l.instance.as_str(), l.plan.as_str(), l.state.as_str())),
        );
        Ok(ours == digest)
    }

    /// After a full inventory: what MongoDB holds as live on this node but the node does not
    /// run under that plan is recorded as ended (an instance CRASHED, a stray STOPPED), so
    /// nobody waits for a report that will never come.
    pub async fn settle_missing(&self, inventory: &[InstanceReport]) -> Result<usize, StoreError> {
        let known: HashSet<(&str, &str)> = inventory
            .iter()
            .map(|r| (r.instance_id.as_str(), r.plan_hash.as_str()))
            .collect();
        let mut settled = 0;
        for live in self.live_in_store().await? {
            if known.contains(&(live.instance.as_str(), live.plan.as_str())) {
                continue;
            }
            let detail = format!(
                "node {} does not run it (not in its inventory; it was {})",
                self.node_id, live.state
            );
            let (collection, id, state) = if live.stray {
                (
                    STRAYS,
                    format!("{}@{}", live.instance, self.node_id),
                    State::Stopped.as_str(),
                )
            } else {
                (INSTANCES, live.instance.clone(), State::Crashed.as_str())
            };
            // Only while the record still says what was read: a report landing meanwhile wins.
            let write = Write::update_one(
                collection,
                doc! { "_id": id, "reported.nodeId": &self.node_id, "reported.planHash": &live.plan, "reported.state": &live.state },
                doc! { "$set": {
                    "reported.state": state, "reported.pid": 0, "reported.detail": &detail,
                    "reported.atMs": now_ms(), "reported.receivedAtMs": now_ms(),
                } },
            );
            self.write(vec![write]).await?;
            tracing::warn!(node = %self.node_id, instance = %live.instance, plan = %live.plan, "recorded as ended: {detail}");
            settled += 1;
        }
        Ok(settled)
    }
}

/// An instance MongoDB holds as live on a node.
struct Live {
    instance: String,
    plan: String,
    state: String,
    /// From `stray_instances` rather than the instance's record.
    stray: bool,
}

/// The crash record of a CRASHED report of a placed instance: one per instance and plan (a
/// plan crashes once; the same crash reported again changes nothing), timed by this gateway's
/// clock when it first arrives, so neither a node's clock nor a forged date moves a group's
/// crash-loop window. The group comes from the instance's record, not from the node.
fn crash_write(node_id: &str, group: &str, report: &InstanceReport) -> Option<Write> {
    (report.state() == InstanceState::Crashed).then(|| {
        Write::update_one(
            CRASHES,
            doc! { "_id": format!("{}@{}", report.instance_id, report.plan_hash) },
            doc! { "$setOnInsert": {
                "instanceId": &report.instance_id,
                "nodeId": node_id,
                "group": group,
                "planHash": &report.plan_hash,
                "exitCode": report.exit_code.map(Bson::Int32).unwrap_or(Bson::Null),
                "logTail": cap_tail(&report.log_tail),
                "detail": cut_line(&report.detail, CONSOLE_LINE_MAX),
                "atMs": now_ms(),
                "reportedAtMs": report.at_unix_ms,
            } },
        )
        .upsert()
    })
}

/// One session's report queues.
pub struct Reporter {
    recorder: Arc<Recorder>,
    /// Per instance, the reports waiting (`force`, report); a key exists while a task works it.
    queues: Mutex<HashMap<String, VecDeque<(bool, InstanceReport)>>>,
    /// Seqs queued or being written (a report sent again meanwhile is not queued twice).
    in_flight: Mutex<HashSet<u64>>,
    busy: AtomicUsize,
    /// Reports queued so far (a digest compared while this moved is not conclusive).
    submitted: AtomicUsize,
    acks: mpsc::Sender<Result<GatewayMessage, Status>>,
    closed: CancellationToken,
}

impl Reporter {
    pub fn new(
        recorder: Recorder,
        acks: mpsc::Sender<Result<GatewayMessage, Status>>,
        closed: CancellationToken,
    ) -> Arc<Reporter> {
        Arc::new(Reporter {
            recorder: Arc::new(recorder),
            queues: Mutex::default(),
            in_flight: Mutex::default(),
            busy: AtomicUsize::new(0),
            submitted: AtomicUsize::new(0),
            acks,
            closed,
        })
    }

    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// No report queued or being written.
    pub fn is_idle(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0
    }

    pub fn submitted(&self) -> usize {
        self.submitted.load(Ordering::SeqCst)
    }

    /// Queues `report` behind the instance's earlier ones.
    pub fn submit(self: &Arc<Self>, report: InstanceReport, force: bool) {
        if report.seq != 0
            && !self
                .in_flight
                .lock()
                .expect("in-flight lock")
                .insert(report.seq)
        {
            return;
        }
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.submitted.fetch_add(1, Ordering::SeqCst);
        let id = report.instance_id.clone();
        let mut queues = self.queues.lock().expect("report queues lock");
        match queues.get_mut(&id) {
            Some(queue) => queue.push_back((force, report)),
            None => {
                queues.insert(id.clone(), VecDeque::from([(force, report)]));
                tokio::spawn(self.clone().work(id));
            }
        }
    }

    /// Writes the instance's reports one after the other until its queue is empty.
    async fn work(self: Arc<Self>, id: String) {
        loop {
            let next = {
                let mut queues = self.queues.lock().expect("report queues lock");
                match queues.get_mut(&id).and_then(VecDeque::pop_front) {
                    Some(next) => next,
                    None => {
                        queues.remove(&id);
                        return;
                    }
                }
            };
            let (force, report) = next;
            let outcome = self.store(&report, force).await;
            self.in_flight
                .lock()
                .expect("in-flight lock")
                .remove(&report.seq);
            self.busy.fetch_sub(1, Ordering::SeqCst);
            let Some(recorded) = outcome else {
                // Ownership is gone: the daemon sends what is unacknowledged to the new owner.
                let dropped = self
                    .queues
                    .lock()
                    .expect("report queues lock")
                    .remove(&id)
                    .map_or(0, |q| q.len());
                self.busy.fetch_sub(dropped, Ordering::SeqCst);
                return;
            };
            metrics::counter!("prexor_gateway_reports_total", "outcome" => recorded.label())
                .increment(1);
            if report.seq != 0 {
                let _ = self
                    .acks
                    .send(Ok(GatewayMessage {
                        body: Some(Down::ReportAck(ReportAck {
                            seqs: vec![report.seq],
                        })),
                        traceparent: String::new(),
                    }))
                    .await;
            }
        }
    }

    /// Records `report`, retrying every failure but a lost ownership; `None` once the node is
    /// no longer this gateway's (or the session ended).
    async fn store(&self, report: &InstanceReport, force: bool) -> Option<Recorded> {
        let what = format!(
            "report {} about {} ({})",
            report.seq,
            report.instance_id,
            report.state().as_str_name()
        );
        let recorder = &self.recorder;
        // In the trace of the command the report answers (docs/observability.md, "Traces").
        let span = tracing::info_span!(
            parent: None,
            "gateway.report",
            node = %recorder.node_id,
            instance = %report.instance_id,
            state = report.state().as_str_name(),
            seq = report.seq,
        );
        prexor_telemetry::trace::adopt(
            &span,
            prexor_telemetry::trace::from_traceparent(&report.traceparent),
        );
        until_stored(
            &recorder.lease,
            &self.closed,
            &recorder.node_id,
            &what,
            || recorder.record(report, force),
        )
        .instrument(span)
        .await
    }
}
