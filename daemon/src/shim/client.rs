//! The daemon's side of a shim's socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::protocol::{PROTOCOL, Reply, Request, Status};

/// How long one request may take (a shim answers at once; only `Wait` and `Attach` last).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ShimClient {
    socket: PathBuf,
}

/// One connection, greeted.
pub struct Connection {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
    /// The protocol version both sides use on it.
    pub protocol: u32,
}

impl Connection {
    async fn send(&mut self, request: &Request) -> Result<(), String> {
        let mut line = serde_json::to_vec(request).expect("requests serialize");
        line.push(b'\n');
        self.write
            .write_all(&line)
            .await
            .map_err(|e| format!("the shim's socket closed: {e}"))
    }

    /// The next reply; `None` once the shim hung up.
    pub async fn next(&mut self) -> Result<Option<Reply>, String> {
        match self.lines.next_line().await {
            Ok(Some(line)) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| format!("the shim sent {line:?}: {e}")),
            Ok(None) => Ok(None),
            Err(err) => Err(format!("reading from the shim: {err}")),
        }
    }
}

impl ShimClient {
    pub fn new(socket: &Path) -> ShimClient {
        ShimClient {
            socket: socket.to_path_buf(),
        }
    }

    /// Connects and says hello; an error when no shim listens (it ended, or never started).
    pub async fn connect(&self) -> Result<Connection, String> {
        let greet = async {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| format!("no shim at {}: {e}", self.socket.display()))?;
            let (read, write) = stream.into_split();
            let mut connection = Connection {
                lines: BufReader::new(read).lines(),
                write,
                protocol: 0,
            };
            connection
                .send(&Request::Hello { protocol: PROTOCOL })
                .await?;
            match connection.next().await? {
                Some(Reply::Hello { protocol, .. }) if (1..=PROTOCOL).contains(&protocol) => {
                    connection.protocol = protocol;
                    Ok(connection)
                }
                other => Err(format!("the shim did not greet: {other:?}")),
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, greet)
            .await
            .map_err(|_| format!("the shim at {} did not answer", self.socket.display()))?
    }

    async fn call(&self, request: Request) -> Result<Reply, String> {
        let mut connection = self.connect().await?;
        let exchange = async {
            connection.send(&request).await?;
            connection
                .next()
                .await?
                .ok_or_else(|| "the shim hung up".to_string())
        };
        match tokio::time::timeout(CALL_TIMEOUT, exchange).await {
            Ok(Ok(Reply::Error { message })) => Err(message),
            Ok(reply) => reply,
            Err(_) => Err("the shim did not answer in time".into()),
        }
    }

    pub async fn status(&self) -> Result<Status, String> {
        match self.call(Request::Status).await? {
            Reply::Status(status) => Ok(status),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Types `line` into the server's console.
    pub async fn input(&self, line: &str) -> Result<(), String> {
        self.call(Request::Input {
            line: line.to_string(),
        })
        .await
        .map(drop)
    }

    /// Signals the server's process group (`tree`: its whole cgroup as well).
    pub async fn signal(&self, signal: &str, tree: bool) -> Result<(), String> {
        self.call(Request::Signal {
            signal: signal.to_string(),
            tree,
        })
        .await
        .map(drop)
    }

    /// Subscribes to the server's output from line `from`: the connection answers with the
    /// status first, then lines, then the exit.
    pub async fn attach(&self, from: u64) -> Result<Connection, String> {
        let mut connection = self.connect().await?;
        connection.send(&Request::Attach { from }).await?;
        Ok(connection)
    }

    /// Waits for the server to end (tests and tools; the daemon learns of exits by attaching).
    #[cfg(test)]
    pub async fn wait(&self) -> Result<super::protocol::Exit, String> {
        let mut connection = self.connect().await?;
        connection.send(&Request::Wait).await?;
        match connection.next().await? {
            Some(Reply::Exited(exit)) => Ok(exit),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }
}
