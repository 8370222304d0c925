//! Every PrexorCloud protobuf, compiled once. `proto/prexor/v1/*.proto` is the only place a
//! message or service is defined. [`ErrorCode`] is the one error code both the REST API and the
//! gRPC services answer with.

mod error;

pub use error::ErrorCode;

/// Version 1 of the PrexorCloud protocols (package `prexor.v1`).
pub mod v1 {
    tonic::include_proto!("prexor.v1");
}

impl v1::Command {
    /// The action's name (`start`, `stop`, `kill`, `console`, `shutdown`, `query`, `capture`; `none`), for
    /// logs and spans.
    pub fn action_name(&self) -> &'static str {
        use v1::command::Action;
        match &self.action {
            Some(Action::Start(_)) => "start",
            Some(Action::Stop(_)) => "stop",
            Some(Action::Kill(_)) => "kill",
            Some(Action::Console(_)) => "console",
            Some(Action::Shutdown(_)) => "shutdown",
            Some(Action::Query(_)) => "query",
            Some(Action::Capture(_)) => "capture",
            None => "none",
        }
    }
}
