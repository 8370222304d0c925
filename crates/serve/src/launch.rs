use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use prexor_config::ServiceConfig;

/// The command line every service binary takes.
#[derive(Debug, Parser)]
pub struct ServiceArgs {
    /// Configuration file (TOML). Every key can also be set by a PREXOR_* environment variable,
    /// e.g. PREXOR_MONGO__URI or PREXOR_SCHEDULER__EVALUATION_INTERVAL_SECONDS.
    #[arg(long, short, env = "PREXOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print the problems (if any) and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Ask this process's own /readyz (its http.listen, on loopback) and exit 0 when it is
    /// ready, 1 with the reason otherwise: for container healthchecks.
    #[arg(long, conflicts_with = "check_config")]
    pub probe: bool,
}

/// Runs a service binary: parses the command line, loads and validates `C` (exit code 2 with
/// every problem listed), installs telemetry, then drives `body` on a multi-threaded runtime.
/// Exit code 0 after a clean stop, 1 when `body` fails.
pub fn launch<C, F, Fut, E>(
    telemetry: impl FnOnce(&C) -> &prexor_config::TelemetryConfig,
    body: F,
) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    launch_with(ServiceArgs::parse(), telemetry, body)
}

/// [`launch`] with the command line already parsed, for services with flags of their own (they
/// flatten [`ServiceArgs`] into their own parser).
pub fn launch_with<C, F, Fut, E>(
    args: ServiceArgs,
    telemetry: impl FnOnce(&C) -> &prexor_config::TelemetryConfig,
    body: F,
) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let config = match prexor_config::load::<C>(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    // One TLS crypto provider for every client that does not pick its own (Valkey over TLS).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.probe {
        return crate::probe(config.ready_endpoint());
    }
    let telemetry_config = telemetry(&config).clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = match prexor_telemetry::Telemetry::init(&telemetry_config) {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("{err}");
                return ExitCode::from(2);
            }
        };
        let outcome = body(config).await;
        let code = match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!("{err}");
                ExitCode::FAILURE
            }
        };
        telemetry.shutdown();
        code
    })
}
