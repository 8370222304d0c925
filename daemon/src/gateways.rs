//! Reaching the gateways listed in `daemon.gateways`.

use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness check: at least one configured gateway answers grpc.health.v1 with SERVING.
pub async fn any_serving(gateways: &[String]) -> Result<(), String> {
    let mut reasons = Vec::new();
    for gateway in gateways {
        match probe(gateway).await {
            Ok(()) => return Ok(()),
            Err(reason) => reasons.push(format!("{gateway}: {reason}")),
        }
    }
    Err(format!("no gateway is serving ({})", reasons.join("; ")))
}

async fn probe(gateway: &str) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("http://{gateway}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
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
