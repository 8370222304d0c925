//! Coordination for PrexorCloud replicas (docs/architecture.md, "Leases and fencing").
//!
//! - [`Leases`] acquires, takes over, renews and releases leases. Each acquisition mints a fencing
//!   token from MongoDB (so tokens only grow, even if Valkey loses every key) and raises the scope's
//!   fence mark before the holder reads the scope's state.
//! - [`Lease`] is the holder's handle: scope, token, the [`prexor_store::Fence`] to write with,
//!   `is_valid()` against the local self-fencing deadline, and a lost-notification.
//! - [`LeaseKeeper`] renews a set of leases in one round trip per interval and fences them off
//!   locally when renewals stop succeeding.
//! - [`Registry`] records every running replica (kind, id, version, addresses, heartbeat).
//! - [`EventLog`] carries domain events from every replica to every api replica; [`Ephemeral`]
//!   holds short-lived shared state (lockouts, rate windows, revocations); [`ConsoleStreams`]
//!   holds server console output.
//!
//! Backends: [`ValkeyBackend`] (production: each operation is one atomic Lua script judged by the
//! Valkey clock) and [`LocalBackend`] (development profile without Valkey: in-process, one writer).

mod backend;
mod clock;
mod console;
mod ephemeral;
mod error;
mod events;
mod keeper;
mod lease;
mod local;
mod metrics;
mod registry;
mod valkey;

pub use backend::{Acquired, LeaseBackend};
pub use clock::{Clock, ManualClock, SystemClock};
pub use console::{CONSOLE_LINES_KEPT, ConsoleHub, ConsoleLine, ConsoleStreams, ConsoleWatch};
pub use ephemeral::Ephemeral;
pub use error::CoordError;
pub use events::{EVENTS_KEPT, Event, EventLog, Replay, StoredEvent, id_key};
pub use keeper::LeaseKeeper;
pub use lease::{Lease, LeaseHolder, Leases};
pub use local::LocalBackend;
pub use registry::{DevClaim, Registry, ReplicaRecord};
pub use valkey::{ValkeyBackend, ValkeyTls};
