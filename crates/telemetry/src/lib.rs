//! Logs, traces and metrics for every PrexorCloud process.
//!
//! - Logs: `tracing`, human-readable or JSON (`telemetry.logFormat`), filtered by
//!   `telemetry.logLevel` or `RUST_LOG`.
//! - Traces: `tracing` spans exported over OTLP/gRPC when the standard
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, with W3C trace context carried between processes
//!   ([`trace`]; docs/observability.md, "Traces").
//! - Metrics: the `metrics` facade, rendered in Prometheus text format by [`Telemetry::render`]
//!   (each service serves it on `/metrics`), with the process's `service` and `replica` labels on
//!   every series, histograms with [`BUCKETS`] and the standard `process_*` metrics
//!   (docs/observability.md, "Metrics").

mod process;
mod recorder;
pub mod trace;

pub use process::release_free_memory;
pub use recorder::{BUCKETS, UPKEEP_EVERY, prometheus};

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prexor_config::{LogFormat, TelemetryConfig};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.logLevel {level:?} is not a valid filter: {reason}")]
    BadFilter { level: String, reason: String },
    #[error("cannot create the OTLP exporter for OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: {reason}")]
    Otlp { endpoint: String, reason: String },
    #[error("logging was already initialised in this process")]
    AlreadyInitialised,
}

/// Handles to the process's telemetry pipelines. Call [`Telemetry::shutdown`] before exit so
/// buffered spans are flushed.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

static REPLICA: OnceLock<String> = OnceLock::new();

/// This process's replica id (`replica` of its metrics, `replica` of its request spans); empty
/// before [`Telemetry::init`].
pub fn replica() -> &'static str {
    REPLICA.get().map_or("", String::as_str)
}

impl Telemetry {
    /// Installs logging, optional OTLP tracing and the Prometheus recorder (labelled with
    /// `config.service` and `config.replica`).
    pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
        let filter = match std::env::var("RUST_LOG") {
            Ok(env) if !env.trim().is_empty() => {
                EnvFilter::try_new(&env).map_err(|e| TelemetryError::BadFilter {
                    level: env.clone(),
                    reason: e.to_string(),
                })?
            }
            _ => EnvFilter::try_new(&config.log_level).map_err(|e| TelemetryError::BadFilter {
                level: config.log_level.clone(),
                reason: e.to_string(),
            })?,
        };
        let fmt_layer = match config.log_format {
            LogFormat::Human => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_writer(std::io::stderr)
                .boxed(),
        };

        let tracer_provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Ok(endpoint) if !endpoint.trim().is_empty() => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build()
                    .map_err(|e| TelemetryError::Otlp {
                        endpoint: endpoint.clone(),
                        reason: e.to_string(),
                    })?;
                Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(
                            Resource::builder()
                                .with_service_name(config.service_name.clone())
                                .with_attribute(KeyValue::new(
                                    "service.instance.id",
                                    config.replica.clone(),
                                ))
                                .with_attribute(KeyValue::new(
                                    "service.version",
                                    env!("CARGO_PKG_VERSION"),
                                ))
                                .build(),
                        )
                        .build(),
                )
            }
            _ => None,
        };
        let otel_layer = tracer_provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer().with_tracer(provider.tracer(config.service_name.clone()))
        });

        // W3C trace context in and out of every process (crate::trace).
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let _ = REPLICA.set(config.replica.clone());
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt_layer)
            .with(otel_layer)
            .try_init()
            .map_err(|_| TelemetryError::AlreadyInitialised)?;
        recorder::install(&[("service", &config.service), ("replica", &config.replica)]);
        metrics::gauge!("prexor_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Ok(Telemetry { tracer_provider })
    }

    /// Prometheus text exposition of every metric recorded in this process, the process metrics
    /// read just before.
    pub fn render() -> String {
        process::record();
        prometheus().render()
    }

    /// Flushes and stops the trace exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {err}");
        }
    }
}
