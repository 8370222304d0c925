//! One error code for every boundary: the REST API's `code` field and HTTP status, and the gRPC
//! status code of the internal and daemon protocols, so a failure means the same thing wherever
//! it surfaces (docs/architecture.md, "Errors").

use tonic::Code;

/// What went wrong, independent of the protocol that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed (not JSON, wrong types).
    BadRequest,
    /// Well-formed, but fields are invalid (details name them).
    ValidationFailed,
    /// Not signed in, or the credential is no longer valid.
    Unauthorized,
    /// Signed in, without the permission.
    Forbidden,
    NotFound,
    /// The target changed or is in a state that refuses this (including a write refused by its
    /// fencing token or precondition): read again and retry.
    Conflict,
    /// The cluster has no CA yet.
    NoCa,
    /// A backup belongs to another cluster.
    OtherCluster,
    /// A backup or its contents would not be accepted as an API write.
    BackupInvalid,
    /// A backup archive does not match its manifest.
    BackupCorrupt,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// Too many requests from this client; retry after the indicated time.
    RateLimited,
    /// Too many failed sign-ins for this user; retry after the indicated time.
    LockedOut,
    /// Too many open event streams for this caller.
    TooManyStreams,
    /// A store or peer needed to answer is unreachable: retry (any replica).
    Unavailable,
    /// No reachable CA replica holds the key.
    NoCaKey,
    /// Something behind the answering replica (a node, through a gateway) did not answer in time.
    Timeout,
    Internal,
}

impl ErrorCode {
    /// The name in REST error bodies (`{"code": "NOT_FOUND", ...}`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::ValidationFailed => "VALIDATION_FAILED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::NoCa => "NO_CA",
            ErrorCode::OtherCluster => "OTHER_CLUSTER",
            ErrorCode::BackupInvalid => "BACKUP_INVALID",
            ErrorCode::BackupCorrupt => "BACKUP_CORRUPT",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::LockedOut => "LOCKED_OUT",
            ErrorCode::TooManyStreams => "TOO_MANY_STREAMS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::NoCaKey => "NO_CA_KEY",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status a REST answer carries.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::ValidationFailed => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict | ErrorCode::NoCa | ErrorCode::OtherCluster => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::BackupInvalid | ErrorCode::BackupCorrupt => 422,
            ErrorCode::RateLimited | ErrorCode::LockedOut | ErrorCode::TooManyStreams => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable | ErrorCode::NoCaKey => 503,
            ErrorCode::Timeout => 504,
        }
    }

    /// The gRPC status code a gRPC answer carries.
    pub const fn grpc_code(self) -> Code {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::ValidationFailed
            | ErrorCode::BackupInvalid
            | ErrorCode::BackupCorrupt => Code::InvalidArgument,
            ErrorCode::Unauthorized => Code::Unauthenticated,
            ErrorCode::Forbidden => Code::PermissionDenied,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::Conflict => Code::Aborted,
            ErrorCode::NoCa | ErrorCode::OtherCluster => Code::FailedPrecondition,
            ErrorCode::PayloadTooLarge
            | ErrorCode::RateLimited
            | ErrorCode::LockedOut
            | ErrorCode::TooManyStreams => Code::ResourceExhausted,
            ErrorCode::UnsupportedMediaType => Code::InvalidArgument,
            ErrorCode::Unavailable | ErrorCode::NoCaKey => Code::Unavailable,
            ErrorCode::Timeout => Code::DeadlineExceeded,
            ErrorCode::Internal => Code::Internal,
        }
    }

    /// A gRPC status with this code and `message`.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), message)
    }

    /// The code a peer's gRPC status stands for, when it crosses into a REST answer.
    pub fn from_grpc(code: Code) -> ErrorCode {
        match code {
            Code::InvalidArgument | Code::OutOfRange => ErrorCode::BadRequest,
            Code::Unauthenticated => ErrorCode::Unauthorized,
            Code::PermissionDenied => ErrorCode::Forbidden,
            Code::NotFound => ErrorCode::NotFound,
            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => ErrorCode::Conflict,
            Code::ResourceExhausted => ErrorCode::RateLimited,
            Code::Unavailable | Code::Cancelled => ErrorCode::Unavailable,
            Code::DeadlineExceeded => ErrorCode::Timeout,
            Code::Ok | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
                ErrorCode::Internal
            }
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 19] = [
        ErrorCode::BadRequest,
        ErrorCode::ValidationFailed,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::NoCa,
        ErrorCode::OtherCluster,
        ErrorCode::BackupInvalid,
        ErrorCode::BackupCorrupt,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::LockedOut,
        ErrorCode::TooManyStreams,
        ErrorCode::Unavailable,
        ErrorCode::NoCaKey,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    #[test]
    fn every_code_has_a_distinct_name_and_an_error_status() {
        let names: std::collections::HashSet<_> = ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ALL.len());
        for code in ALL {
            assert!(code.http_status() >= 400, "{code}");
            assert_ne!(code.grpc_code(), Code::Ok, "{code}");
        }
    }

    #[test]
    fn the_grpc_code_means_the_same_class_after_a_round_trip() {
        for code in ALL {
            let back = ErrorCode::from_grpc(code.grpc_code());
            assert_eq!(
                back.http_status() / 100,
                code.http_status() / 100,
                "{code} -> {:?} -> {back}",
                code.grpc_code()
            );
        }
    }
}
