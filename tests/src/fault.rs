//! A TCP fault proxy between one chosen replica and a backing server (Valkey or MongoDB): it
//! passes traffic through until told to black-hole it (bytes are swallowed, connections stay
//! open: a network partition), reset it (every connection closed, new ones refused), or delay
//! it. Healing closes the connections that lived through the fault — as a real partition's
//! timeouts would — and passes new ones again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// Swallow every byte both ways; connections stay open, new ones are accepted and stall.
    BlackHole,
    /// Close every connection; refuse new ones (accepted and closed at once).
    Reset,
    /// Hold every chunk this long before passing it on.
    Delay(Duration),
}

pub struct FaultProxy {
    port: u16,
    fault: watch::Sender<Fault>,
    /// Bumped to close every open connection.
    generation: watch::Sender<u64>,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (fault, fault_rx) = watch::channel(Fault::None);
        let (generation, generation_rx) = watch::channel(0u64);
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *fault_rx.borrow() == Fault::Reset {
                    drop(client);
                    continue;
                }
                let conn = tokio::spawn(connection(
                    client,
                    target,
                    fault_rx.clone(),
                    generation_rx.clone(),
                ));
                let mut open = tracked.lock().expect("connections lock");
                open.retain(|c| !c.is_finished());
                open.push(conn);
            }
        });
        Ok(FaultProxy {
            port,
            fault,
            generation,
            accept,
            connections,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Applies `fault` from now on. Resetting, and healing (`Fault::None`) after any fault,
    /// close every open connection.
    pub fn set(&self, fault: Fault) {
        let was = *self.fault.borrow();
        self.fault.send_replace(fault);
        if fault == Fault::Reset || (fault == Fault::None && was != Fault::None) {
            self.generation.send_modify(|g| *g += 1);
            for conn in self.connections.lock().expect("connections lock").drain(..) {
                conn.abort();
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for conn in self.connections.lock().expect("connections lock").drain(..) {
            conn.abort();
        }
    }
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut fault: watch::Receiver<Fault>,
    mut generation: watch::Receiver<u64>,
) {
    let born = *generation.borrow_and_update();
    // A black-holed connection attempt stalls like a SYN into the void.
    while *fault.borrow_and_update() == Fault::BlackHole {
        if fault.changed().await.is_err() {
            return;
        }
    }
    if *generation.borrow() != born {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, fault.clone()) => {}
        _ = pump(server_read, client_write, fault.clone()) => {}
        _ = generation.changed() => {}
    }
}

/// Copies `from` to `to`, chunk by chunk, applying the current fault to each chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = *fault.borrow();
        match current {
            Fault::None => {}
            Fault::BlackHole => continue,
            Fault::Reset => return,
            Fault::Delay(by) => tokio::time::sleep(by).await,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn passes_black_holes_resets_and_heals() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let short = Duration::from_millis(300);
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut a, short).await.as_deref(),
            Some(&b"ping"[..])
        );

        proxy.set(Fault::BlackHole);
        assert_eq!(round_trip(&mut a, short).await, None, "swallowed");

        proxy.set(Fault::None);
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut b, short).await.as_deref(),
            Some(&b"ping"[..])
        );
        let mut buf = [0u8; 8];
        let closed = tokio::time::timeout(short, a.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the black-holed connection is closed on healing"
        );

        proxy.set(Fault::Reset);
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut c, short).await, None, "refused");

        proxy.set(Fault::Delay(Duration::from_millis(200)));
        let mut d = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = std::time::Instant::now();
        assert!(round_trip(&mut d, Duration::from_secs(2)).await.is_some());
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "delayed both ways"
        );
    }
}
