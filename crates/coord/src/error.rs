use std::time::Duration;

use prexor_store::StoreError;

/// Why a coordination operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("Valkey at {uri} could not be reached: {reason}")]
    Connect { uri: String, reason: String },
    #[error("Valkey did not answer within {timeout:?} while {op}")]
    Timeout { op: String, timeout: Duration },
    #[error("Valkey failed while {op}: {source}")]
    Valkey {
        op: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Valkey returned an unexpected reply while {op}: {detail}")]
    Protocol { op: String, detail: String },
    #[error("{0}")]
    Refused(String),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
}

impl CoordError {
    /// True when the coordination store could not be reached or did not answer in time.
    pub fn is_unavailable(&self) -> bool {
        match self {
            CoordError::Connect { .. } | CoordError::Timeout { .. } => true,
            CoordError::Valkey { source, .. } => {
                source.is_io_error() || source.is_connection_dropped() || source.is_timeout()
            }
            CoordError::Store(err) => err.is_unavailable(),
            _ => false,
        }
    }

    /// What this means to a client (see [`prexor_store::StoreError::code`]).
    pub fn code(&self) -> prexor_proto::ErrorCode {
        match self {
            CoordError::Store(err) => err.code(),
            _ if self.is_unavailable() => prexor_proto::ErrorCode::Unavailable,
            CoordError::Refused(_) => prexor_proto::ErrorCode::Conflict,
            _ => prexor_proto::ErrorCode::Internal,
        }
    }
}
