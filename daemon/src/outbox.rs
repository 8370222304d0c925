//! The daemon's unacknowledged reports, numbered and kept on disk until a gateway says they are
//! durably stored (docs/daemon-protocol.md, "Reports"). A daemon restart keeps them; the session
//! sends them again after a timeout and after every reconnect, to whichever gateway owns the
//! node by then.
//!
//! `<dataDir>/reports.log` is an append-only log of records `[u32 length][u8 kind][payload]`:
//! a header (next seq, epoch), reports (seq + protobuf) and acks (seqs). A torn last record (the
//! daemon died mid-write) is ignored. The log is rewritten with only what is pending once it
//! holds mostly acknowledged records.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prexor_proto::v1::{InstanceReport, InstanceState};
use prost::Message;
use tokio::sync::Notify;

/// More unacknowledged reports than this (a node cut off for very long with thousands of
/// distinct crashes) and the oldest go; the inventory still carries every instance's state.
const MAX_PENDING: usize = 10_000;

const HEADER: u8 = 0;
const REPORT: u8 = 1;
const ACK: u8 = 2;

pub struct Outbox {
    path: PathBuf,
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    epoch: String,
    next_seq: u64,
    pending: BTreeMap<u64, InstanceReport>,
    /// Append handle on the log; `None` after a write failed (reports are then kept in memory
    /// only, until the next rewrite succeeds).
    file: Option<std::fs::File>,
    /// Records in the log since it was last rewritten.
    records: usize,
}

impl Outbox {
    /// Opens `<dataDir>/reports.log` (created with a new epoch when absent).
    pub fn open(data_dir: &Path) -> anyhow::Result<Outbox> {
        let path = data_dir.join("reports.log");
        let mut state = State {
            epoch: String::new(),
            next_seq: 1,
            pending: BTreeMap::new(),
            file: None,
            records: 0,
        };
        match std::fs::read(&path) {
            Ok(bytes) => replay(&bytes, &mut state, &path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => anyhow::bail!("cannot read {}: {err}", path.display()),
        }
        if state.epoch.is_empty() {
            state.epoch = format!("{:032x}", rand::random::<u128>());
        }
        let outbox = Outbox {
            path,
            state: Mutex::new(state),
            changed: Notify::new(),
        };
        {
            let mut state = outbox.state.lock().expect("outbox lock");
            outbox
                .rewrite(&mut state)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", outbox.path.display()))?;
            metrics::gauge!("prexor_daemon_reports_pending").set(state.pending.len() as f64);
        }
        Ok(outbox)
    }

    pub fn epoch(&self) -> String {
        self.lock().epoch.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock")
    }

    /// Numbers `report`, keeps it (on disk first) until acknowledged, and wakes the session.
    /// Pending reports it supersedes (the same instance and plan, not a crash) are forgotten.
    pub fn push(&self, mut report: InstanceReport) -> u64 {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        report.seq = seq;
        let superseded: Vec<u64> = state
            .pending
            .iter()
            .filter(|(_, r)| {
                r.instance_id == report.instance_id
                    && r.plan_hash == report.plan_hash
                    && r.state() != InstanceState::Crashed
            })
            .map(|(seq, _)| *seq)
            .collect();
        let mut record = seq.to_le_bytes().to_vec();
        record.extend(report.encode_to_vec());
        self.append(&mut state, REPORT, &record);
        state.pending.insert(seq, report);
        let mut dropped = superseded;
        while state.pending.len() - dropped.len() > MAX_PENDING {
            let oldest = state
                .pending
                .keys()
                .find(|s| !dropped.contains(s))
                .copied()
                .expect("more pending than dropped");
            tracing::error!(
                seq = oldest,
                "more than {MAX_PENDING} reports are unacknowledged: forgetting the oldest (the inventory still carries every instance's state)"
            );
            metrics::counter!("prexor_daemon_reports_overflowed_total").increment(1);
            dropped.push(oldest);
        }
        if !dropped.is_empty() {
            self.forget(&mut state, &dropped);
        }
        metrics::gauge!("prexor_daemon_reports_pending").set(state.pending.len() as f64);
        drop(state);
        // One consumer (the session): a permit is kept when it is not waiting right now.
        self.changed.notify_one();
        seq
    }

    /// The gateway stored (or found superseded) these reports.
    pub fn ack(&self, seqs: &[u64]) {
        let mut state = self.lock();
        let known: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| state.pending.contains_key(s))
            .collect();
        if known.is_empty() {
            return;
        }
        self.forget(&mut state, &known);
        metrics::gauge!("prexor_daemon_reports_pending").set(state.pending.len() as f64);
    }

    /// Every unacknowledged report, oldest first.
    pub fn pending(&self) -> Vec<InstanceReport> {
        self.lock().pending.values().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().pending.is_empty()
    }

    /// Resolves after the next [`Outbox::push`].
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn forget(&self, state: &mut State, seqs: &[u64]) {
        for seq in seqs {
            state.pending.remove(seq);
        }
        if state.pending.is_empty() || state.records > 2 * state.pending.len() + 256 {
            if let Err(err) = self.rewrite(state) {
                tracing::error!(path = %self.path.display(), "cannot rewrite the report log: {err}");
            }
        } else {
            let record: Vec<u8> = seqs.iter().flat_map(|s| s.to_le_bytes()).collect();
            self.append(state, ACK, &record);
        }
    }

    fn append(&self, state: &mut State, kind: u8, payload: &[u8]) {
        let Some(file) = state.file.as_mut() else {
            return;
        };
        if let Err(err) = file.write_all(&frame(kind, payload)) {
            // Kept in memory: delivered as long as this process lives; the next rewrite puts it
            // on disk again.
            tracing::error!(path = %self.path.display(), "cannot append to the report log: {err}");
            metrics::counter!("prexor_daemon_report_log_errors_total").increment(1);
            state.file = None;
            return;
        }
        state.records += 1;
    }

    /// Writes the header and the pending reports to a new log and renames it into place.
    fn rewrite(&self, state: &mut State) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        let mut header = state.next_seq.to_le_bytes().to_vec();
        header.extend(state.epoch.as_bytes());
        bytes.extend(frame(HEADER, &header));
        for (seq, report) in &state.pending {
            let mut record = seq.to_le_bytes().to_vec();
            record.extend(report.encode_to_vec());
            bytes.extend(frame(REPORT, &record));
        }
        let temp = self.path.with_extension("log.tmp");
        std::fs::write(&temp, &bytes)?;
        std::fs::rename(&temp, &self.path)?;
        state.file = Some(std::fs::OpenOptions::new().append(true).open(&self.path)?);
        state.records = 1 + state.pending.len();
        Ok(())
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.len() + 5);
    bytes.extend(((payload.len() + 1) as u32).to_le_bytes());
    bytes.push(kind);
    bytes.extend(payload);
    bytes
}

/// Reads the log into `state`, stopping at a torn or unreadable record.
fn replay(bytes: &[u8], state: &mut State, path: &Path) {
    let mut at = 0;
    let mut max_seq = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(record) = bytes.get(at + 4..at + 4 + len).filter(|r| !r.is_empty()) else {
            tracing::warn!(path = %path.display(), offset = at, "the report log ends in a torn record; ignoring it");
            break;
        };
        at += 4 + len;
        let (kind, payload) = (record[0], &record[1..]);
        let seq_of = |p: &[u8]| {
            p.get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
        };
        match (kind, seq_of(payload)) {
            (HEADER, Some(next)) => {
                state.next_seq = state.next_seq.max(next);
                state.epoch = String::from_utf8_lossy(&payload[8..]).into_owned();
            }
            (REPORT, Some(seq)) => match InstanceReport::decode(&payload[8..]) {
                Ok(report) => {
                    max_seq = max_seq.max(seq);
                    state.pending.insert(seq, report);
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), seq, "unreadable report in the report log ({err}); skipping it");
                }
            },
            (ACK, _) => {
                for seq in payload.chunks_exact(8) {
                    state
                        .pending
                        .remove(&u64::from_le_bytes(seq.try_into().expect("8")));
                }
            }
            _ => {
                tracing::warn!(path = %path.display(), offset = at, kind, "unknown record in the report log; reading stops here");
                break;
            }
        }
    }
    // One past the last seq read, plus one: a torn last record may have held the next seq, and
    // a seq is never given to two reports.
    state.next_seq = state.next_seq.max(max_seq + 2);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(instance: &str, plan: &str, state: InstanceState) -> InstanceReport {
        InstanceReport {
            instance_id: instance.into(),
            plan_hash: plan.into(),
            state: state as i32,
            ..InstanceReport::default()
        }
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "prexor-outbox-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn seqs(outbox: &Outbox) -> Vec<u64> {
        outbox.pending().iter().map(|r| r.seq).collect()
    }

    #[test]
    fn pending_reports_survive_a_restart_in_order_and_seqs_keep_growing() {
        let dir = dir("restart");
        let outbox = Outbox::open(&dir).unwrap();
        let epoch = outbox.epoch();
        let a = outbox.push(report("g-1", "p1", InstanceState::Running));
        let b = outbox.push(report("g-2", "p2", InstanceState::Running));
        let c = outbox.push(report("g-3", "p3", InstanceState::Starting));
        outbox.ack(&[b]);
        drop(outbox);
        let reopened = Outbox::open(&dir).unwrap();
        assert_eq!(reopened.epoch(), epoch);
        assert_eq!(seqs(&reopened), [a, c]);
        let d = reopened.push(report("g-4", "p4", InstanceState::Running));
        assert!(d > c);
        reopened.ack(&[a, c, d]);
        assert!(reopened.is_empty());
        drop(reopened);
        let again = Outbox::open(&dir).unwrap();
        assert!(again.is_empty());
        assert!(again.push(report("g-5", "p5", InstanceState::Running)) > d);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_newer_report_of_the_same_plan_supersedes_all_but_crashes() {
        let dir = dir("supersede");
        let outbox = Outbox::open(&dir).unwrap();
        outbox.push(report("g-1", "p1", InstanceState::Starting));
        let crash = outbox.push(report("g-1", "p0", InstanceState::Crashed));
        let other_plan = outbox.push(report("g-1", "p2", InstanceState::Running));
        let running = outbox.push(report("g-1", "p1", InstanceState::Running));
        assert_eq!(seqs(&outbox), [crash, other_plan, running]);
        let crashed = outbox.push(report("g-1", "p1", InstanceState::Crashed));
        let after = outbox.push(report("g-1", "p1", InstanceState::Stopped));
        assert_eq!(seqs(&outbox), [crash, other_plan, crashed, after]);
        drop(outbox);
        assert_eq!(
            seqs(&Outbox::open(&dir).unwrap()),
            [crash, other_plan, crashed, after]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_record_is_ignored() {
        let dir = dir("torn");
        let outbox = Outbox::open(&dir).unwrap();
        let a = outbox.push(report("g-1", "p1", InstanceState::Running));
        outbox.push(report("g-2", "p2", InstanceState::Running));
        drop(outbox);
        let path = dir.join("reports.log");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let reopened = Outbox::open(&dir).unwrap();
        assert_eq!(seqs(&reopened), [a]);
        assert!(reopened.push(report("g-3", "p3", InstanceState::Running)) > a + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_is_compacted_as_reports_are_acknowledged() {
        let dir = dir("compact");
        let outbox = Outbox::open(&dir).unwrap();
        let keep = outbox.push(report("keep", "p", InstanceState::Running));
        for i in 0..2000 {
            let seq = outbox.push(report(&format!("g-{i}"), "p", InstanceState::Running));
            outbox.ack(&[seq]);
        }
        let size = std::fs::metadata(dir.join("reports.log")).unwrap().len();
        assert!(size < 64 * 1024, "log of {size} bytes");
        drop(outbox);
        assert_eq!(seqs(&Outbox::open(&dir).unwrap()), [keep]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
