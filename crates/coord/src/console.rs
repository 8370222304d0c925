//! Server console output in Valkey: one bounded stream per instance (`<ns>console:<instance>`),
//! written by the gateway that holds the node's session, read by any api replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::streams::StreamRangeReply;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{CoordError, ValkeyBackend};

/// Lines kept per instance (approximately; Valkey trims in whole nodes).
pub const CONSOLE_LINES_KEPT: usize = 2000;

#[derive(Clone, Debug)]
pub struct ConsoleStreams {
    backend: ValkeyBackend,
    namespace: String,
}

/// One console line with its stream id (`<ms>-<seq>`), for resuming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleLine {
    pub id: String,
    pub line: String,
}

impl From<redis::streams::StreamId> for ConsoleLine {
    fn from(entry: redis::streams::StreamId) -> ConsoleLine {
        ConsoleLine {
            line: entry.get::<String>("l").unwrap_or_default(),
            id: entry.id,
        }
    }
}

impl ConsoleStreams {
    pub fn new(backend: ValkeyBackend, namespace: impl Into<String>) -> ConsoleStreams {
        ConsoleStreams {
            backend,
            namespace: namespace.into(),
        }
    }

    fn key(&self, instance: &str) -> String {
        format!("{}console:{instance}", self.namespace)
    }

    /// Appends lines in one round trip, trimming the stream to about [`CONSOLE_LINES_KEPT`].
    pub async fn append(&self, instance: &str, lines: &[String]) -> Result<(), CoordError> {
        if lines.is_empty() {
            return Ok(());
        }
        let key = self.key(instance);
        let mut pipe = redis::pipe();
        for line in lines {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(CONSOLE_LINES_KEPT)
                .arg("*")
                .arg("l")
                .arg(line)
                .ignore();
        }
        let mut conn = self.backend.conn();
        self.backend
            .bounded("appending console lines", pipe.query_async::<()>(&mut conn))
            .await
    }

    /// The last `count` lines, oldest first.
    pub async fn tail(&self, instance: &str, count: usize) -> Result<Vec<ConsoleLine>, CoordError> {
        let mut conn = self.backend.conn();
        let reply: StreamRangeReply = self
            .backend
            .bounded(
                "reading console lines",
                redis::cmd("XREVRANGE")
                    .arg(self.key(instance))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn),
            )
            .await?;
        let mut lines: Vec<ConsoleLine> = reply.ids.into_iter().map(ConsoleLine::from).collect();
        lines.reverse();
        Ok(lines)
    }

    /// The id of the newest line (`0-0` for an empty or absent stream).
    async fn last_id(&self, instance: &str) -> Result<String, CoordError> {
        Ok(self
            .tail(instance, 1)
            .await?
            .pop()
            .map_or_else(|| "0-0".to_owned(), |l| l.id))
    }
}

/// How long the hub's read blocks; a new watcher waits at most this long for its first line.
const HUB_BLOCK: Duration = Duration::from_secs(1);
/// Lines a watcher may lag behind before it is dropped (it sees its stream end).
const WATCHER_BUFFER: usize = 1024;

/// Every console followed on one replica, through one connection: a single blocking `XREAD`
/// over every watched stream, its lines handed to the watchers. However many people watch
/// consoles, the replica holds one Valkey connection for it, so viewers cannot use up Valkey's
/// clients and starve the coordination traffic.
#[derive(Clone)]
pub struct ConsoleHub {
    inner: Arc<Hub>,
}

struct Hub {
    streams: ConsoleStreams,
    watched: Mutex<HashMap<String, Watched>>,
    changed: Notify,
    next_id: AtomicU64,
}

struct Watched {
    /// The id of the last line read from the stream.
    cursor: String,
    watchers: Vec<(u64, mpsc::Sender<ConsoleLine>)>,
}

/// One watcher's lines; dropping it stops the watching.
pub struct ConsoleWatch {
    hub: ConsoleHub,
    instance: String,
    id: u64,
    pub lines: mpsc::Receiver<ConsoleLine>,
}

impl Drop for ConsoleWatch {
    fn drop(&mut self) {
        let mut watched = self.hub.inner.watched.lock().expect("console hub lock");
        if let Some(entry) = watched.get_mut(&self.instance) {
            entry.watchers.retain(|(id, _)| *id != self.id);
            if entry.watchers.is_empty() {
                watched.remove(&self.instance);
            }
        }
    }
}

impl ConsoleHub {
    /// Starts the hub's reader (on its own connection); it stops with `stop`.
    pub fn start(streams: ConsoleStreams, stop: CancellationToken) -> ConsoleHub {
        let hub = ConsoleHub {
            inner: Arc::new(Hub {
                streams,
                watched: Mutex::default(),
                changed: Notify::new(),
                next_id: AtomicU64::new(1),
            }),
        };
        tokio::spawn(hub.clone().run(stop));
        hub
    }

    /// Every line of `instance`'s console appended from now on (read the history with
    /// [`ConsoleStreams::tail`] after this: lines both in it and here are to be skipped by id).
    pub async fn watch(&self, instance: &str) -> Result<ConsoleWatch, CoordError> {
        let needs_cursor = !self
            .inner
            .watched
            .lock()
            .expect("console hub lock")
            .contains_key(instance);
        let cursor = if needs_cursor {
            self.inner.streams.last_id(instance).await?
        } else {
            String::new()
        };
        let (tx, lines) = mpsc::channel(WATCHER_BUFFER);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .watched
            .lock()
            .expect("console hub lock")
            .entry(instance.to_owned())
            .or_insert_with(|| Watched {
                cursor,
                watchers: Vec::new(),
            })
            .watchers
            .push((id, tx));
        self.inner.changed.notify_one();
        Ok(ConsoleWatch {
            hub: self.clone(),
            instance: instance.to_owned(),
            id,
            lines,
        })
    }

    /// Consoles watched right now.
    pub fn watched(&self) -> usize {
        self.inner.watched.lock().expect("console hub lock").len()
    }

    async fn run(self, stop: CancellationToken) {
        let mut conn = None;
        loop {
            let cursors: Vec<(String, String)> = self
                .inner
                .watched
                .lock()
                .expect("console hub lock")
                .iter()
                .map(|(instance, w)| (instance.clone(), w.cursor.clone()))
                .collect();
            if cursors.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.inner.changed.notified() => continue,
                }
            }
            if conn.is_none() {
                match self.inner.streams.backend.dedicated().await {
                    Ok(fresh) => conn = Some(fresh),
                    Err(err) => {
                        tracing::warn!(error = %err, "console hub: no Valkey connection; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(HUB_BLOCK) => continue,
                        }
                    }
                }
            }
            let read = self.read(conn.as_mut().expect("connected"), &cursors);
            let reply = tokio::select! {
                _ = stop.cancelled() => return,
                // A new console to watch: read again with it.
                _ = self.inner.changed.notified() => continue,
                reply = read => reply,
            };
            match reply {
                Ok(lines) => self.deliver(lines),
                Err(err) => {
                    tracing::warn!(error = %err, "console hub: reading failed; reconnecting");
                    conn = None;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(HUB_BLOCK) => {}
                    }
                }
            }
        }
    }

    /// One blocking read over every watched stream: the new lines per instance.
    async fn read(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        cursors: &[(String, String)],
    ) -> Result<Vec<(String, Vec<ConsoleLine>)>, CoordError> {
        let streams = &self.inner.streams;
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(HUB_BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for (instance, _) in cursors {
            xread.arg(streams.key(instance));
        }
        for (_, cursor) in cursors {
            xread.arg(cursor);
        }
        let bound = HUB_BLOCK + streams.backend.timeout();
        let reply: Option<redis::streams::StreamReadReply> =
            match tokio::time::timeout(bound, xread.query_async(conn)).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(source)) => {
                    return Err(CoordError::Valkey {
                        op: "following console lines".into(),
                        source,
                    });
                }
                Err(_) => {
                    return Err(CoordError::Timeout {
                        op: "following console lines".into(),
                        timeout: bound,
                    });
                }
            };
        let prefix = streams.key("");
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .map(|key| {
                let instance = key.key.strip_prefix(&prefix).unwrap_or(&key.key).to_owned();
                (
                    instance,
                    key.ids.into_iter().map(ConsoleLine::from).collect(),
                )
            })
            .collect())
    }

    /// Hands the lines to each console's watchers; one that cannot keep up is dropped.
    fn deliver(&self, read: Vec<(String, Vec<ConsoleLine>)>) {
        let mut watched = self.inner.watched.lock().expect("console hub lock");
        for (instance, lines) in read {
            let Some(entry) = watched.get_mut(&instance) else {
                continue;
            };
            if let Some(last) = lines.last() {
                entry.cursor = last.id.clone();
            }
            entry
                .watchers
                .retain(|(_, tx)| lines.iter().all(|line| tx.try_send(line.clone()).is_ok()));
            if entry.watchers.is_empty() {
                watched.remove(&instance);
            }
        }
    }
}
