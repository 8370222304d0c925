//! `prexor-scheduler`: places, scales, drains and heals instances under group, workflow and
//! platform-module leases.

use std::process::ExitCode;

use prexor_config::SchedulerConfig;
use prexor_serve::{Parts, Service};

fn main() -> ExitCode {
    prexor_serve::launch(
        |config: &SchedulerConfig| &config.common.telemetry,
        |config: SchedulerConfig| prexor_serve::run(config.common, Some(config.grpc.listen), build),
    )
}

async fn build(_service: Service) -> Result<Parts, prexor_serve::BoxError> {
    Ok(Parts::default())
}
