use std::time::Duration;

/// What can go wrong talking to MongoDB, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("MongoDB URI {uri} is invalid: {reason}")]
    BadUri { uri: String, reason: String },
    #[error(
        "MongoDB did not answer within {timeout:?} while {op}; check that it is running and reachable"
    )]
    Timeout { op: String, timeout: Duration },
    #[error("MongoDB failed while {op}: {source}")]
    Mongo {
        op: String,
        #[source]
        source: mongodb::error::Error,
    },
    /// The writer's lease was taken over: a higher token has acquired or written this scope.
    #[error(
        "stale fencing token {token} for scope {scope}: the scope's mark is {mark}, so another replica holds it now; this write was not applied"
    )]
    StaleFence {
        scope: String,
        token: u64,
        mark: u64,
    },
    /// A write declared with `require_match` matched nothing; the whole fenced write was undone.
    #[error(
        "{what}: the document it requires is not there (or no longer matches); nothing was written"
    )]
    Precondition { what: String },
    #[error("{what} is not allowed in a fenced write: {reason}")]
    BadWrite { what: String, reason: String },
}

impl StoreError {
    pub(crate) fn mongo(op: impl Into<String>, source: mongodb::error::Error) -> Self {
        StoreError::Mongo {
            op: op.into(),
            source,
        }
    }

    /// The refusal a [`crate::Store::transaction`] body returned with
    /// `mongodb::error::Error::custom`, if this is one.
    pub fn custom<T: 'static>(&self) -> Option<&T> {
        match self {
            StoreError::Mongo { source, .. } => source.get_custom::<T>(),
            _ => None,
        }
    }

    /// True when a write was refused because a document with the same unique key exists.
    pub fn is_duplicate_key(&self) -> bool {
        matches!(self, StoreError::Mongo { source, .. } if server_code(source) == Some(11000))
    }

    /// True when the store could not be reached or did not answer: the caller may retry later,
    /// and an API maps it to 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Timeout { .. } => true,
            StoreError::Mongo { source, .. } => matches!(
                *source.kind,
                mongodb::error::ErrorKind::ServerSelection { .. }
                    | mongodb::error::ErrorKind::Io(_)
                    | mongodb::error::ErrorKind::ConnectionPoolCleared { .. }
            ),
            _ => false,
        }
    }

    /// What this means to a client: unreachable (retry, any replica), a change refused because
    /// someone else changed what it relied on (read again), or a fault.
    pub fn code(&self) -> prexor_proto::ErrorCode {
        use prexor_proto::ErrorCode;
        match self {
            _ if self.is_unavailable() => ErrorCode::Unavailable,
            StoreError::StaleFence { .. } | StoreError::Precondition { .. } => ErrorCode::Conflict,
            _ if self.is_duplicate_key() => ErrorCode::Conflict,
            _ => ErrorCode::Internal,
        }
    }
}

/// Server error codes that say "try again": write conflicts, a primary stepping down or shutting
/// down, a transaction aborted underneath, a time limit.
const TRANSIENT_CODES: [i32; 11] = [
    112,   // WriteConflict
    189,   // PrimarySteppedDown
    91,    // ShutdownInProgress
    10107, // NotWritablePrimary
    13435, // NotPrimaryNoSecondaryOk
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    251,   // NoSuchTransaction
    50,    // MaxTimeMSExpired
    262,   // ExceededTimeLimit
    24,    // LockTimeout
];

impl StoreError {
    /// True for errors that pass by themselves: unavailable or slow stores, write conflicts
    /// (another writer's open transaction), transient transaction errors, elections. A caller
    /// that must not lose what it writes retries these.
    pub fn is_transient(&self) -> bool {
        if self.is_unavailable() {
            return true;
        }
        match self {
            StoreError::Mongo { source, .. } => {
                source.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
                    || source.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
                    || server_code(source).is_some_and(|c| TRANSIENT_CODES.contains(&c))
            }
            _ => false,
        }
    }
}

/// The server's error code, for command and write errors.
pub(crate) fn server_code(err: &mongodb::error::Error) -> Option<i32> {
    match &*err.kind {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
            Some(w.code)
        }
        mongodb::error::ErrorKind::BulkWrite(b) => b
            .write_errors
            .iter()
            .min_by_key(|(i, _)| **i)
            .map(|(_, w)| w.code),
        _ => None,
    }
}
