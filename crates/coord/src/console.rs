//! Server console output in Valkey: one bounded stream per instance (`<ns>console:<instance>`),
//! written by the gateway that holds the node's session, read by any api replica.

use redis::streams::StreamRangeReply;

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
        let mut lines: Vec<ConsoleLine> = reply
            .ids
            .into_iter()
            .map(|entry| ConsoleLine {
                line: entry.get::<String>("l").unwrap_or_default(),
                id: entry.id,
            })
            .collect();
        lines.reverse();
        Ok(lines)
    }

    /// A reader that waits for new lines (its own connection, since it blocks).
    pub async fn follower(&self) -> Result<ConsoleFollower, CoordError> {
        Ok(ConsoleFollower {
            conn: self.backend.dedicated().await?,
            streams: self.clone(),
        })
    }
}

/// Follows one or more consoles as they grow.
pub struct ConsoleFollower {
    conn: redis::aio::MultiplexedConnection,
    streams: ConsoleStreams,
}

impl ConsoleFollower {
    /// Lines after `after` (a line id; `$` for "from now"), waiting up to `block` for some.
    pub async fn next_lines(
        &mut self,
        instance: &str,
        after: &str,
        block: std::time::Duration,
    ) -> Result<Vec<ConsoleLine>, CoordError> {
        let key = self.streams.key(instance);
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(after);
        let reply: Option<redis::streams::StreamReadReply> = match tokio::time::timeout(
            block + self.streams.backend.timeout(),
            xread.query_async(&mut self.conn),
        )
        .await
        {
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
                    timeout: block + self.streams.backend.timeout(),
                });
            }
        };
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|entry| ConsoleLine {
                line: entry.get::<String>("l").unwrap_or_default(),
                id: entry.id,
            })
            .collect())
    }
}
