//! Every PrexorCloud protobuf, compiled once. `proto/prexor/v1/*.proto` is the only place a
//! message or service is defined. [`ErrorCode`] is the one error code both the REST API and the
//! gRPC services answer with.

mod error;

pub use error::ErrorCode;

/// Version 1 of the PrexorCloud protocols (package `prexor.v1`).
pub mod v1 {
    tonic::include_proto!("prexor.v1");
}
