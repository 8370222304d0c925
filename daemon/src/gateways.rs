//! Reaching the gateways listed in `daemon.gateways` (their daemon ports, mTLS).

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::identity::NodeIdentity;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness check: at least one configured gateway accepts this node's certificate and answers
/// grpc.health.v1 with SERVING.
pub async fn any_serving(gateways: &[String], identity: &NodeIdentity) -> Result<(), String> {
    let tls = identity.client_config()?;
    let mut reasons = Vec::new();
    for gateway in gateways {
        match probe(gateway, tls.clone()).await {
            Ok(()) => return Ok(()),
            Err(reason) => reasons.push(format!("{gateway}: {reason}")),
        }
    }
    Err(format!("no gateway is serving ({})", reasons.join("; ")))
}

async fn probe(gateway: &str, tls: rustls::ClientConfig) -> Result<(), String> {
    let channel = prexor_pki::tls::connect(gateway, tls, PROBE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| e.message().to_owned())?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("reports {}", other.as_str_name())),
    }
}
