//! Domain events (group created, instance state changed, node online, lease moved, ...) in one
//! bounded Valkey stream (`<ns>events`), written by whichever replica made the change and read by
//! every api replica, which fans them out to its SSE clients. The stream id is the event id, so a
//! client that reconnects with `Last-Event-ID` is replayed what it missed while it is still in the
//! stream. Events are notifications: the durable state they describe is in MongoDB.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::streams::{StreamRangeReply, StreamReadReply};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{CoordError, ValkeyBackend};

/// Events kept for replay (approximately; Valkey trims in whole nodes).
pub const EVENTS_KEPT: usize = 10_000;
const FAN_OUT_CAPACITY: usize = 4096;
const READ_BLOCK: Duration = Duration::from_secs(5);

/// One domain event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `GROUP_CREATED`, `INSTANCE_STATE_CHANGED`, `NODE_ONLINE`, `LEASE_ACQUIRED`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// What it is about: a group name, instance id, node id or lease scope.
    pub subject: String,
    pub at_ms: i64,
    /// The replica that made the change.
    pub by: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// An event with its id (`<ms>-<seq>`, increasing).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub id: String,
    pub event: Event,
}

/// What a replay found after a given id.
#[derive(Debug, Default)]
pub struct Replay {
    pub events: Vec<StoredEvent>,
    /// Events after the given id were already trimmed: the client missed some and should re-read
    /// the state it follows.
    pub gap: bool,
}

/// Orders stream ids (`<ms>-<seq>`); malformed ids order first.
pub fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[derive(Clone)]
pub struct EventLog {
    origin: String,
    fan_out: broadcast::Sender<Arc<StoredEvent>>,
    backing: Backing,
}

#[derive(Clone)]
enum Backing {
    Valkey {
        backend: Box<ValkeyBackend>,
        key: String,
    },
    Local(Arc<Mutex<LocalLog>>),
}

#[derive(Default)]
struct LocalLog {
    last: (u64, u64),
    events: VecDeque<StoredEvent>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("origin", &self.origin)
            .finish()
    }
}

impl EventLog {
    /// Events in Valkey under `namespace`, published as `origin` (the replica id).
    pub fn valkey(backend: ValkeyBackend, namespace: &str, origin: &str) -> EventLog {
        EventLog {
            origin: origin.to_owned(),
            fan_out: broadcast::channel(FAN_OUT_CAPACITY).0,
            backing: Backing::Valkey {
                backend: Box::new(backend),
                key: format!("{namespace}events"),
            },
        }
    }

    /// In-process events for the development profile without Valkey (one replica).
    pub fn local(origin: &str) -> EventLog {
        EventLog {
            origin: origin.to_owned(),
            fan_out: broadcast::channel(FAN_OUT_CAPACITY).0,
            backing: Backing::Local(Arc::default()),
        }
    }

    /// Publishes an event. A failure is logged, not returned: the change it describes is already
    /// durable, and readers re-read state after a gap.
    pub async fn publish(&self, kind: &str, subject: &str, data: serde_json::Value) {
        let event = Event {
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            at_ms: prexor_domain::now_ms(),
            by: self.origin.clone(),
            data,
        };
        if let Err(err) = self.append(&event).await {
            tracing::warn!(kind, subject, error = %err, "event not published");
        }
    }

    async fn append(&self, event: &Event) -> Result<(), CoordError> {
        let json = serde_json::to_string(event).expect("events serialize");
        match &self.backing {
            Backing::Valkey { backend, key } => {
                let mut conn = backend.conn();
                backend
                    .bounded(
                        "publishing an event",
                        redis::cmd("XADD")
                            .arg(key)
                            .arg("MAXLEN")
                            .arg("~")
                            .arg(EVENTS_KEPT)
                            .arg("*")
                            .arg("e")
                            .arg(json)
                            .query_async::<String>(&mut conn),
                    )
                    .await?;
            }
            Backing::Local(log) => {
                let stored = {
                    let mut log = log.lock().expect("event log lock");
                    let now = prexor_domain::now_ms().max(0) as u64;
                    log.last = if now > log.last.0 {
                        (now, 0)
                    } else {
                        (log.last.0, log.last.1 + 1)
                    };
                    let stored = StoredEvent {
                        id: format!("{}-{}", log.last.0, log.last.1),
                        event: event.clone(),
                    };
                    log.events.push_back(stored.clone());
                    while log.events.len() > EVENTS_KEPT {
                        log.events.pop_front();
                    }
                    stored
                };
                let _ = self.fan_out.send(Arc::new(stored));
            }
        }
        Ok(())
    }

    /// Live events from now on (see [`EventLog::follow`] for the Valkey backing).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.fan_out.subscribe()
    }

    /// Up to `limit` events after `after` (an event id), oldest first.
    pub async fn since(&self, after: &str, limit: usize) -> Result<Replay, CoordError> {
        let after_key = id_key(after);
        match &self.backing {
            Backing::Valkey { backend, key } => {
                let mut conn = backend.conn();
                let (first, page): (StreamRangeReply, StreamRangeReply) = backend
                    .bounded(
                        "replaying events",
                        redis::pipe()
                            .cmd("XRANGE")
                            .arg(key)
                            .arg("-")
                            .arg("+")
                            .arg("COUNT")
                            .arg(1)
                            .cmd("XRANGE")
                            .arg(key)
                            .arg(format!("({}-{}", after_key.0, after_key.1))
                            .arg("+")
                            .arg("COUNT")
                            .arg(limit)
                            .query_async(&mut conn),
                    )
                    .await?;
                let gap = first
                    .ids
                    .first()
                    .is_some_and(|oldest| id_key(&oldest.id) > after_key);
                Ok(Replay {
                    events: page.ids.into_iter().filter_map(decode).collect(),
                    gap,
                })
            }
            Backing::Local(log) => {
                let log = log.lock().expect("event log lock");
                let gap = log
                    .events
                    .front()
                    .is_some_and(|oldest| id_key(&oldest.id) > after_key);
                Ok(Replay {
                    events: log
                        .events
                        .iter()
                        .filter(|e| id_key(&e.id) > after_key)
                        .take(limit)
                        .cloned()
                        .collect(),
                    gap,
                })
            }
        }
    }

    /// Reads the Valkey stream as it grows and fans every event out to [`EventLog::subscribe`]rs,
    /// until `stop`. Resumes from the last id read after a Valkey failure, so a blip loses
    /// nothing that is still in the stream. Nothing to do for the local backing.
    pub async fn follow(&self, stop: CancellationToken) {
        let Backing::Valkey { backend, key } = &self.backing else {
            return;
        };
        let mut last = "$".to_owned();
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let mut conn = match backend.dedicated().await {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot follow events; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if last == "$" {
                // Start at the current end, remembered as a concrete id so that a reconnect
                // resumes from there rather than from whatever the end is by then.
                let newest: Result<StreamRangeReply, _> = redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await;
                match newest {
                    Ok(reply) => {
                        last = reply
                            .ids
                            .first()
                            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read the event stream; retrying");
                        continue;
                    }
                }
            }
            loop {
                let mut xread = redis::cmd("XREAD");
                xread
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(READ_BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(&last);
                let read = tokio::select! {
                    () = stop.cancelled() => return,
                    read = tokio::time::timeout(
                        READ_BLOCK + backend.timeout(),
                        xread.query_async::<Option<StreamReadReply>>(&mut conn),
                    ) => read,
                };
                match read {
                    Ok(Ok(reply)) => {
                        backoff = Duration::from_millis(100);
                        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                            last = entry.id.clone();
                            if let Some(stored) = decode(entry) {
                                let _ = self.fan_out.send(Arc::new(stored));
                            }
                        }
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "reading events failed; reconnecting");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!("reading events timed out; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

fn decode(entry: redis::streams::StreamId) -> Option<StoredEvent> {
    let json: String = entry.get("e")?;
    let event = serde_json::from_str(&json).ok()?;
    Some(StoredEvent {
        id: entry.id,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_log_replays_after_an_id_and_reports_gaps() {
        let log = EventLog::local("api-1");
        let mut live = log.subscribe();
        for n in 0..3 {
            log.publish("GROUP_CREATED", &format!("g{n}"), serde_json::json!({}))
                .await;
        }
        let first = live.recv().await.unwrap();
        assert_eq!(first.event.subject, "g0");
        let replay = log.since(&first.id, 10).await.unwrap();
        let subjects: Vec<_> = replay
            .events
            .iter()
            .map(|e| e.event.subject.as_str())
            .collect();
        assert_eq!(subjects, ["g1", "g2"]);
        assert!(!replay.gap);
        assert!(log.since("0-0", 10).await.unwrap().gap);
    }

    #[test]
    fn ids_order_numerically() {
        assert!(id_key("10-0") > id_key("9-5"));
        assert!(id_key("10-2") > id_key("10-1"));
        assert_eq!(id_key("junk"), (0, 0));
    }
}
