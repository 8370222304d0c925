//! What every PrexorCloud process does, daemon included: listen, and stop gracefully on a signal.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A listener that could not be opened, naming the configuration key.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {key} = {addr}: {source} (is another process using the port?)")]
pub struct BindError {
    pub key: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Cancels `token` on SIGTERM or SIGINT; a second signal exits at once.
pub fn stop_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop this process with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down gracefully"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down gracefully"),
        }
        token.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal received; exiting without finishing the graceful shutdown");
        std::process::exit(130);
    });
}

/// Binds a listener, naming the configuration key in the error.
pub async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { key, addr, source })
}
