//! `prexor-gateway`: holds daemon gRPC sessions and node-ownership records.

use std::process::ExitCode;

use prexor_config::GatewayConfig;
use prexor_serve::{Parts, Service};

fn main() -> ExitCode {
    prexor_serve::launch(
        |config: &GatewayConfig| &config.common.telemetry,
        |config: GatewayConfig| prexor_serve::run(config.common, Some(config.grpc.listen), build),
    )
}

async fn build(_service: Service) -> Result<Parts, prexor_serve::BoxError> {
    Ok(Parts::default())
}
