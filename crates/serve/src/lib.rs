//! What every PrexorCloud service process does around its own work:
//!
//! - [`launch`]: parse `--config`, load and validate the configuration (every problem reported at
//!   once, exit code 2), install logging/tracing/metrics, run, exit 0 after a clean stop.
//! - [`run`]: bind the HTTP and gRPC ports, serve `/healthz`, `/readyz`, `/metrics` and
//!   tonic-health from the first moment, connect to MongoDB and the coordination store (waiting,
//!   not crashing, while they are unreachable), register the replica and heartbeat it, hand a
//!   [`Service`] to the service's own code, and on SIGTERM stop gracefully: unready first, then the
//!   service's tasks (which release their leases), then deregistration, then the servers.

pub mod failpoint;
mod grpc;
pub mod guard;
mod internal;
mod launch;
mod nodes;
mod ops;
mod readiness;
mod runtime;
pub mod tls;

pub use launch::{ServiceArgs, launch, launch_with};
pub use nodes::{Gateways, SendError};
pub use ops::{Identity, serve_ops};
pub use readiness::{CheckResult, Readiness, ReadinessReport};
pub use runtime::{BoxError, Parts, ServeError, Service, bind, run, run_tls, stop_on_signals};
