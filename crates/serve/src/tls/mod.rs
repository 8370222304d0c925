//! TLS for a replica's listeners: a server certificate issued by the cluster CA to this replica
//! and renewed at two thirds of its lifetime (or files an operator provides, re-read when they
//! change), swapped in without restarting the listener or dropping established connections;
//! and the accept loop that hands finished handshakes to the HTTP or gRPC server.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prexor_pki::ServiceNames;
use prexor_pki::tls::{CertSlot, certified_key};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;

#[cfg(feature = "cluster")]
mod keep;
#[cfg(feature = "cluster")]
pub use keep::{Wanted, keep_certificate};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry interval while no CA replica can sign (or the files cannot be read).
const RETRY: Duration = Duration::from_secs(3);
/// How often operator-provided certificate files are checked for a change.
const FILE_CHECK: Duration = Duration::from_secs(10);

/// The names in a replica's certificate: its advertised host, loopback, and any extra names
/// (a load balancer's, say).
pub fn certificate_names(advertise_host: &str, extra: &[String]) -> ServiceNames {
    let mut names = ServiceNames::default();
    let all = [advertise_host, "localhost", "127.0.0.1"]
        .into_iter()
        .chain(extra.iter().map(String::as_str));
    for name in all {
        match name.parse::<IpAddr>() {
            Ok(ip) if !names.ips.contains(&ip) => names.ips.push(ip),
            Ok(_) => {}
            Err(_) if !names.dns.iter().any(|d| d == name) => names.dns.push(name.to_string()),
            Err(_) => {}
        }
    }
    names
}

/// Where a listener's certificate stands: its expiry (Unix seconds), or why there is none.
pub type CertState = Arc<Mutex<Result<i64, String>>>;

/// A fresh state, with a readiness check `check` that fails until a certificate is in place.
pub fn cert_state(readiness: &Readiness, check: &str, what: &'static str) -> CertState {
    let state = new_cert_state();
    require_certificate(readiness, check, what, &state);
    state
}

/// A fresh state: no certificate yet.
pub fn new_cert_state() -> CertState {
    Arc::new(Mutex::new(Err("not requested yet".into())))
}

/// A readiness check `check` that fails until `state` has a certificate in place.
pub fn require_certificate(
    readiness: &Readiness,
    check: &str,
    what: &'static str,
    state: &CertState,
) {
    let probe = state.clone();
    readiness.add(check, move || {
        let state = probe.clone();
        async move {
            match &*state.lock().expect("cert state lock") {
                Ok(_) => Ok(()),
                Err(reason) => Err(format!("no certificate for {what}: {reason}")),
            }
        }
    });
}

fn installed(
    slot: &CertSlot,
    state: &CertState,
    purpose: &'static str,
    key: Arc<rustls::sign::CertifiedKey>,
    not_after: i64,
) {
    slot.set(key);
    *state.lock().expect("cert state lock") = Ok(not_after);
    certificate_expiry(purpose, not_after);
}

/// Exports when the certificate used for `purpose` (`internal`, `daemon-port`, `api`, `node`)
/// expires: `prexor_tls_certificate_expiry_timestamp_seconds{use}`, in Unix seconds.
pub fn certificate_expiry(purpose: &'static str, not_after: i64) {
    metrics::gauge!("prexor_tls_certificate_expiry_timestamp_seconds", "use" => purpose)
        .set(not_after as f64);
}

/// Records why no (new) certificate could be installed. A certificate already in place stays in
/// use until it expires, so only a listener that never had one reports the reason.
fn not_installed(state: &CertState, reason: String) {
    let mut current = state.lock().expect("cert state lock");
    if current.is_err() {
        *current = Err(reason);
    }
}

/// Serves the certificate and key an operator provides (PEM files), re-reading them whenever
/// either file changes: replace the files, and new connections get the new certificate.
pub async fn watch_files(
    cert: PathBuf,
    key: PathBuf,
    slot: Arc<CertSlot>,
    state: CertState,
    purpose: &'static str,
    shutdown: CancellationToken,
) {
    let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut loaded: Option<(Option<SystemTime>, Option<SystemTime>)> = None;
    loop {
        let stamp = (modified(&cert), modified(&key));
        if loaded != Some(stamp) {
            match load_files(&cert, &key) {
                Ok((certified, not_after)) => {
                    installed(&slot, &state, purpose, certified, not_after);
                    tracing::info!(cert = %cert.display(), not_after, "certificate loaded from files");
                    loaded = Some(stamp);
                }
                Err(reason) => {
                    tracing::warn!("{reason}");
                    not_installed(&state, reason.to_string());
                }
            }
        }
        let wait = if loaded.is_some() { FILE_CHECK } else { RETRY };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Why operator-provided certificate files cannot be served.
#[derive(Debug, thiserror::Error)]
enum CertFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{cert} with {key}: {source}")]
    Pair {
        cert: String,
        key: String,
        source: prexor_pki::PkiError,
    },
    #[error("{0} holds no certificate")]
    Empty(String),
    #[error("{cert}: {source}")]
    Leaf {
        cert: String,
        source: prexor_pki::PkiError,
    },
}

fn load_files(
    cert: &PathBuf,
    key: &PathBuf,
) -> Result<(Arc<rustls::sign::CertifiedKey>, i64), CertFileError> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|source| CertFileError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let (chain, key_pem) = (read(cert)?, read(key)?);
    let certified = certified_key(&chain, &key_pem).map_err(|source| CertFileError::Pair {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        source,
    })?;
    let leaf = certified
        .cert
        .first()
        .ok_or_else(|| CertFileError::Empty(cert.display().to_string()))?;
    let info =
        prexor_pki::CertInfo::parse(leaf.as_ref()).map_err(|source| CertFileError::Leaf {
            cert: cert.display().to_string(),
            source,
        })?;
    Ok((certified, info.not_after))
}

/// Accepts TCP connections on `listener` and performs each TLS handshake on its own task
/// (bounded in time), so a slow or silent client holds up nobody; finished handshakes come out
/// of the returned channel until `stop` is cancelled. `what` names the listener in logs.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
    what: &'static str,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "{what}: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(err)) => {
                        metrics::counter!("prexor_tls_handshake_failures_total", "listener" => what)
                            .increment(1);
                        tracing::info!(%peer, error = %err, "{what}: TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "{what}: TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// Serves gRPC `routes` on `listener` behind TLS with `config` until `stop` is cancelled (the
/// internal port, the gateway's daemon port), every call counted and timed
/// ([`crate::red::GrpcMetricsLayer`]). `what` names the listener in logs and metrics.
pub async fn serve_grpc(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    routes: tonic::service::Routes,
    stop: CancellationToken,
    what: &'static str,
) -> Result<(), tonic::transport::Error> {
    let connections = incoming(listener, config, stop.clone(), what);
    let incoming = futures::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(connections),
        |(tls, _peer)| Ok::<_, std::io::Error>(tls),
    );
    tonic::transport::Server::builder()
        .layer(crate::red::GrpcMetricsLayer::server())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

/// An HTTPS listener for `axum::serve`.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        stop: CancellationToken,
        what: &'static str,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        Ok(TlsListener {
            connections: incoming(listener, config, stop, what),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutting down): no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The HTTPS server configuration of a listener whose certificate comes from `slot`.
pub fn https_server(slot: Arc<CertSlot>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(prexor_pki::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deduplicated_and_split_into_dns_and_ip() {
        let names = certificate_names(
            "controller-1",
            &[
                "127.0.0.1".into(),
                "lb.example.net".into(),
                "10.0.0.5".into(),
            ],
        );
        assert_eq!(names.dns, ["controller-1", "localhost", "lb.example.net"]);
        assert_eq!(names.ips.len(), 2);
    }
}
