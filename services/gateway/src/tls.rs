//! The daemon port: the gateway's own certificate (issued by the cluster CA, renewed before
//! expiry without restarting the listener) and the TLS accept loop in front of tonic.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prexor_domain::now_secs;
use prexor_pki::client::SignerClient;
use prexor_pki::tls::{CertSlot, certified_key};
use prexor_pki::{Identity, KeyAndCsr, ServiceNames};
use prexor_proto::v1::SignServiceCsrRequest;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long a TLS handshake on the daemon port may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retry interval while no CA replica can sign.
const RETRY: Duration = Duration::from_secs(3);

/// The names in the gateway's certificate: its advertised host, loopback, and `gateway.tlsNames`.
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

/// Where obtaining the certificate stands, for readiness.
pub type CertState = Arc<Mutex<Result<i64, String>>>;

/// Obtains the gateway's certificate from a CA replica and renews it at two thirds of its
/// lifetime, swapping it into `slot` (established connections are unaffected).
pub async fn keep_certificate(
    signer: SignerClient,
    replica_id: String,
    names: ServiceNames,
    slot: Arc<CertSlot>,
    state: CertState,
    shutdown: CancellationToken,
) {
    loop {
        let wait = match obtain(&signer, &replica_id, &names).await {
            Ok((key, not_after)) => {
                slot.set(key);
                *state.lock().expect("cert state lock") = Ok(not_after);
                metrics::gauge!("prexor_tls_certificate_not_after_seconds", "use" => "daemon-port")
                    .set(not_after as f64);
                tracing::info!(
                    not_after,
                    "daemon-port certificate issued by the cluster CA"
                );
                let remaining = (not_after - now_secs()).max(0) as u64;
                Duration::from_secs((remaining * 2 / 3).max(5))
            }
            Err(reason) => {
                tracing::warn!("no daemon-port certificate yet: {reason}");
                *state.lock().expect("cert state lock") = Err(reason);
                RETRY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn obtain(
    signer: &SignerClient,
    replica_id: &str,
    names: &ServiceNames,
) -> Result<(Arc<rustls::sign::CertifiedKey>, i64), String> {
    let identity = Identity::Service {
        kind: "gateway".into(),
        replica: replica_id.to_string(),
    };
    let request = KeyAndCsr::new(&identity, names).map_err(|e| e.to_string())?;
    let signed = signer
        .sign_service(SignServiceCsrRequest {
            service: "gateway".into(),
            replica_id: replica_id.to_string(),
            csr_pem: request.csr_pem,
            dns_names: names.dns.clone(),
            ip_addresses: names.ips.iter().map(IpAddr::to_string).collect(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let key = certified_key(&signed.chain_pem, &request.key_pem).map_err(|e| e.to_string())?;
    Ok((key, signed.not_after_unix))
}

/// Serves `routes` on the daemon port behind TLS until `stop` is cancelled. Each handshake runs
/// on its own task (bounded), so a slow or silent client holds up nobody.
pub async fn serve(
    listener: TcpListener,
    config: rustls::ServerConfig,
    routes: tonic::service::Routes,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let accept_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = accept_stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "daemon port: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // gRPC sends small frames both ways: never wait for Nagle.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(err)) => {
                        metrics::counter!("prexor_gateway_tls_handshake_failures_total")
                            .increment(1);
                        tracing::info!(%peer, error = %err, "daemon port: TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "daemon port: TLS handshake timed out"),
                }
            });
        }
    });
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            stop.cancelled(),
        )
        .await
}
