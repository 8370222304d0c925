//! What every PrexorCloud service process does around its own work:
//!
//! - [`launch`]: parse `--config`, load and validate the configuration (every problem reported at
//!   once, exit code 2), install logging/tracing/metrics, run, exit 0 after a clean stop.
//! - [`run`]: bind the HTTP and gRPC ports, serve `/healthz`, `/readyz`, `/metrics` and
//!   tonic-health from the first moment, connect to MongoDB and the coordination store (waiting,
//!   not crashing, while they are unreachable), register the replica and heartbeat it, hand a
//!   [`Service`] to the service's own code, and on SIGTERM stop gracefully: unready first, then the
//!   service's tasks (which release their leases), then deregistration, then the servers.
//!
//! Every HTTP request and gRPC call a process serves or makes is counted and timed ([`red`]) and
//! traced ([`trace`]).
//!
//! Without the `cluster` feature (the daemon) only what needs no store is built: [`launch`],
//! [`serve_ops`], [`Readiness`], [`bind`], [`stop_on_signals`], the TLS listeners and the request
//! metrics, so the daemon links neither the MongoDB nor the Redis driver.

pub mod failpoint;
#[cfg(feature = "cluster")]
mod grpc;
#[cfg(feature = "cluster")]
pub mod guard;
#[cfg(feature = "cluster")]
mod internal;
mod launch;
#[cfg(feature = "cluster")]
mod nodes;
mod ops;
mod probe;
mod process;
mod readiness;
pub mod red;
#[cfg(feature = "cluster")]
mod runtime;
#[cfg(feature = "cluster")]
pub mod signer;
mod systemd;
pub mod tls;
pub mod trace;

pub use launch::{ServiceArgs, launch, launch_with};
#[cfg(feature = "cluster")]
pub use nodes::{Gateways, SendError};
pub use ops::{Identity, serve_ops};
pub use probe::probe;
pub use process::{BindError, bind, stop_on_signals};
pub use readiness::{CheckResult, Readiness, ReadinessReport};
pub use red::{GrpcMetricsLayer, MeteredChannel, metered};
#[cfg(feature = "cluster")]
pub use runtime::{BoxError, Parts, ServeError, Service, run, run_tls};
pub use systemd::notify_systemd;
