//! `prexor-api`: the stateless REST API. Any replica answers any request; everything it uses
//! lives in MongoDB or Valkey.

mod error;
mod system;

use std::process::ExitCode;

use axum::Router;
use prexor_config::ApiConfig;
use prexor_serve::{Parts, Service};

fn main() -> ExitCode {
    prexor_serve::launch(
        |config: &ApiConfig| &config.common.telemetry,
        |config: ApiConfig| prexor_serve::run(config.common, None, build),
    )
}

async fn build(service: Service) -> Result<Parts, prexor_serve::BoxError> {
    let api = Router::new().nest("/api/v1", system::routes(service));
    Ok(Parts {
        http: Some(api.fallback(error::not_found)),
        ..Parts::default()
    })
}
