//! The vocabulary every PrexorCloud crate shares: what a service is, what a lease scope is, how
//! leases are timed, which names are valid, and where an instance is placed (a pure decision).

pub mod canary;
pub mod config_rules;
mod digest;
mod group;
mod lease_timing;
mod lifecycle;
pub mod limits;
pub mod load;
mod name;
pub mod paths;
mod permission;
pub mod placement;
mod redact;
mod scope;
mod service;
mod time;
pub mod variables;

pub use digest::{StreamHash, fnv1a, hex, inventory_digest, is_sha256_hex, sha256_hex};
pub use group::{
    ConfigChange, ConfigFormat, ConfigRule, ConfigValue, DynamicScaling, FieldProblem, GroupSpec,
    LoadMetric, LoadSignal, PortRange, ScalingMode, SetKey, TemplateRef, TextReplace, Variable,
    VariableType, WarmPool,
};
pub use lease_timing::LeaseTiming;
pub use lifecycle::InstanceState;
pub use name::{NameError, validate_name};
pub use permission::permission_allows;
pub use redact::redact_uri;
pub use scope::{Scope, ScopeKind, ScopeParseError};
pub use service::{Profile, ServiceKind};
pub use time::{now_ms, now_secs};

/// The version every PrexorCloud binary reports (workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
