//! Coordination for PrexorCloud replicas (ARCHITECTURE.md, "Leases and fencing").
//!
//! - [`Leases`] acquires, takes over, renews and releases leases. Each acquisition mints a fencing
//!   token from MongoDB (so tokens only grow, even if Valkey loses every key) and raises the scope's
//!   fence mark before the holder reads the scope's state.
//! - [`Lease`] is the holder's handle: scope, token, the [`prexor_store::Fence`] to write with,
//!   `is_valid()` against the local self-fencing deadline, and a lost-notification.
//! - [`LeaseKeeper`] renews a set of leases in one round trip per interval and fences them off
//!   locally when renewals stop succeeding.
//! - [`Registry`] records every running replica (kind, id, version, addresses, heartbeat).
//!
//! Backends: [`ValkeyBackend`] (production: each operation is one atomic Lua script judged by the
//! Valkey clock) and [`LocalBackend`] (development profile without Valkey: in-process, one writer).

mod backend;
mod clock;
mod console;
mod error;
mod keeper;
mod lease;
mod local;
mod metrics;
mod registry;
mod valkey;

pub use backend::{Acquired, LeaseBackend};
pub use clock::{Clock, ManualClock, SystemClock};
pub use console::{CONSOLE_LINES_KEPT, ConsoleLine, ConsoleStreams};
pub use error::CoordError;
pub use keeper::LeaseKeeper;
pub use lease::{Lease, LeaseHolder, Leases};
pub use local::LocalBackend;
pub use registry::{DevClaim, Registry, ReplicaRecord};
pub use valkey::ValkeyBackend;
