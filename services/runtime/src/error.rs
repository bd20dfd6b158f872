//! The one place where service errors become gRPC statuses.

use tonic::{Code, Status};

/// A service-level error: a small set of codes, each with a message a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; the message says which field and why.
    #[error("{0}")]
    InvalidArgument(String),
    /// The object does not exist or the caller may not know it exists.
    #[error("{0}")]
    NotFound(String),
    /// The object to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the system is not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller is known and the object visible, but the action is not allowed.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller's identity is not (or no longer) acceptable.
    #[error("{0}")]
    Unauthenticated(String),
    /// A limit is reached; the status carries `google.rpc.RetryInfo` with `retry_after`.
    #[error("{message}")]
    ResourceExhausted {
        /// What limit, and what to do.
        message: String,
        /// When a retry may succeed.
        retry_after: std::time::Duration,
    },
    /// A dependency (database, broker) is not reachable right now; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a storage failure; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Shorthand for [`ServiceError::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    /// Shorthand for [`ServiceError::NotFound`].
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match &e {
            ServiceError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error; the server log has the details")
            }
            ServiceError::Unavailable(detail) => {
                tracing::warn!(%detail, "dependency unavailable");
                Status::unavailable(e.to_string())
            }
            ServiceError::ResourceExhausted {
                message,
                retry_after,
            } => exhausted(message, *retry_after),
            _ => Status::new(e.code(), e.to_string()),
        }
    }
}

/// RESOURCE_EXHAUSTED with `message` and a `google.rpc.RetryInfo` detail saying when to retry.
pub fn exhausted(message: &str, retry_after: std::time::Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    // Whole milliseconds, rounded up, so that a client waiting exactly this long is not early.
    let wait = std::time::Duration::from_millis(
        u64::try_from(retry_after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
    );
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(wait)),
    )
}

impl From<sipmba_auth::NoPrincipal> for ServiceError {
    fn from(e: sipmba_auth::NoPrincipal) -> Self {
        ServiceError::Unauthenticated(e.to_string())
    }
}

impl From<sea_orm::DbErr> for ServiceError {
    fn from(e: sea_orm::DbErr) -> Self {
        use sea_orm::DbErr;
        match e {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => {
                ServiceError::Unavailable(format!("database unavailable: {e}"))
            }
            other => ServiceError::Internal(format!("database: {other}")),
        }
    }
}

/// Result of service operations.
pub type ServiceResult<T> = Result<T, ServiceError>;
