//! The daemon port: TLS (certificate from the cluster CA, see [`prexor_serve::tls`]) in front of
//! tonic.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `routes` on the daemon port behind TLS until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: rustls::ServerConfig,
    routes: tonic::service::Routes,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let connections =
        prexor_serve::tls::incoming(listener, Arc::new(config), stop.clone(), "daemon port");
    let incoming = futures::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(connections),
        |(tls, _peer)| Ok::<_, std::io::Error>(tls),
    );
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop.cancelled())
        .await
}
