//! Harness for the multi-process acceptance suite: starts the real PrexorCloud binaries against
//! real backing servers, waits on their readiness endpoints, signals them, and prints every
//! process's log when a test fails.
//!
//! - [`scenario_tests!`]: tests that each run a scenario on a fresh [`Cluster`];
//! - [`Cluster`]: one test's stores, directory and processes (`cluster.rs`), with internal gRPC
//!   helpers;
//! - [`Proc`]: one running process (launched by `prexor-testkit`), and stopping, readiness and
//!   lease helpers (`procs.rs`);
//! - [`Rest`]: REST on an api replica through `prexor-client`, every call answering its status
//!   and body, and event streams (`rest.rs`);
//! - [`Fleet`], [`Operators`] and both as a [`System`]: CA, gateways, daemons, api and schedulers
//!   started together, and how a scenario ends with them (`fleet.rs`);
//! - waiting on, reading and counting MongoDB records (`records.rs`); group specs, groups,
//!   deployments and archives (`fixtures.rs`); what every scenario ends with (`invariants.rs`); a TCP fault proxy
//!   ([`fault`]);
//! - the Prometheus tools and a real [`Prometheus`] server scraping a test's processes
//!   (`prometheus.rs`).

mod cluster;
pub mod fault;
mod fixtures;
mod fleet;
mod invariants;
mod procs;
mod prometheus;
mod records;
mod rest;

pub use cluster::*;
pub use fixtures::*;
pub use fleet::*;
pub use invariants::*;
pub use prexor_testkit::{TestStores, bin_dir, binary, free_port};
pub use procs::*;
pub use prometheus::*;
pub use records::*;
pub use rest::*;

/// Declares tests, each `test: scenario`: the test runs `scenario(&cluster)` on a fresh
/// [`Cluster`] (its directory and database named after the scenario) and unwraps the result while
/// that cluster still lives, so that a failure prints every process's log.
#[macro_export]
macro_rules! scenario_tests {
    ($($test:ident: $scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                let cluster = $crate::Cluster::new(stringify!($scenario)).unwrap();
                $scenario(&cluster).await.unwrap();
            }
        )+
    };
}
