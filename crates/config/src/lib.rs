//! Configuration for every PrexorCloud process: one typed struct per service, loaded from a TOML
//! file plus `PREXOR_*` environment overrides, and validated at boot with every problem reported
//! at once, each naming its key.
//!
//! Keys are camelCase, as in the operator documentation (`scheduler.evaluationIntervalSeconds`).
//! An environment variable sets a key by upper-snake-casing each segment and joining segments with
//! `__`: `PREXOR_SCHEDULER__EVALUATION_INTERVAL_SECONDS=5`, `PREXOR_MONGO__URI=...`.

mod common;
mod daemon;
mod reader;
mod services;

pub use common::{
    CommonConfig, DEFAULT_NAMESPACE, HttpConfig, LogFormat, MongoConfig, TelemetryConfig,
    ValkeyConfig,
};
pub use daemon::{DEFAULT_UID_RANGE, RunAs, ServerIsolation};
pub use reader::{ConfigError, Problem, Reader, env_var_for, load};
pub use services::{
    ApiConfig, ApiTls, CaConfig, DaemonConfig, GatewayConfig, GrpcConfig, IpNetwork, NetworkError,
    ReadyEndpoint, SchedulerConfig, ServiceConfig, UploadLimits,
};
