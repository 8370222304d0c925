//! `prexor-ca`: the isolated signer, the only process that holds the cluster CA private key.

use std::process::ExitCode;

use prexor_config::CaConfig;
use prexor_serve::{Parts, Service};

fn main() -> ExitCode {
    prexor_serve::launch(
        |config: &CaConfig| &config.common.telemetry,
        |config: CaConfig| prexor_serve::run(config.common, Some(config.grpc.listen), build),
    )
}

async fn build(_service: Service) -> Result<Parts, prexor_serve::BoxError> {
    Ok(Parts::default())
}
