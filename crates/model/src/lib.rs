//! The schema home (docs/architecture.md, "Where the data lives"): every MongoDB collection's
//! name, the records written to it and the states they move through, one module per area. No
//! service spells a collection name or a state string itself; it names them from here.
//!
//! Collections owned by a mechanism rather than by an area stay with that mechanism and are
//! re-exported here so this crate lists them all: fences and blobs (`prexor-store`).

#[macro_use]
mod state;
pub mod access;
pub mod backup;
pub mod cluster;
pub mod groups;
pub mod instances;
pub mod nodes;
pub mod pki;
mod record;
pub mod workflows;

pub use record::{UnreadableRecord, decode, decode_each, decode_each_raw, decode_raw, raw_id};
pub use state::UnknownState;
