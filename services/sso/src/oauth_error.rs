//! The OAuth 2.0 error answer (RFC 6749 §5.2) the token, introspection and revocation
//! endpoints give, and how service and database errors become one.

use std::time::Duration;

use sipmba_runtime::ServiceError;

/// RFC 6749 §5.2 error codes (and `slow_down` for throttling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorCode {
    /// Malformed request.
    InvalidRequest,
    /// Client authentication failed.
    InvalidClient,
    /// The grant (password, refresh token) is invalid, expired, revoked or reused.
    InvalidGrant,
    /// The client may not use this grant type.
    UnauthorizedClient,
    /// Unknown grant type.
    UnsupportedGrantType,
    /// A requested scope is unknown or not allowed.
    InvalidScope,
    /// Too many failed attempts; retry later.
    SlowDown,
    /// Unexpected failure.
    ServerError,
    /// A dependency is down; retry later.
    TemporarilyUnavailable,
}

impl OAuthErrorCode {
    /// The code as written in an error body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::SlowDown => "slow_down",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// An OAuth error: a code, a description a person can act on, and when to retry.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    /// The RFC 6749 code.
    pub code: OAuthErrorCode,
    /// What went wrong (never a secret).
    pub description: String,
    /// For `slow_down` and `temporarily_unavailable`.
    pub retry_after: Option<Duration>,
}

impl OAuthError {
    pub(crate) fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidRequest, description)
    }

    pub(crate) fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidGrant, description)
    }

    pub(crate) fn invalid_client() -> Self {
        Self::new(
            OAuthErrorCode::InvalidClient,
            "unknown client or wrong client secret",
        )
    }

    pub(crate) fn slow_down(retry_after: Duration) -> Self {
        Self {
            code: OAuthErrorCode::SlowDown,
            description: format!(
                "too many failed attempts; try again in {} s",
                retry_after.as_secs().max(1)
            ),
            retry_after: Some(retry_after),
        }
    }
}

impl From<ServiceError> for OAuthError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Unavailable(detail) => {
                tracing::warn!(%detail, "dependency unavailable");
                Self {
                    code: OAuthErrorCode::TemporarilyUnavailable,
                    description: "a dependency of sso is unavailable; retry shortly".into(),
                    retry_after: Some(Duration::from_secs(2)),
                }
            }
            ServiceError::InvalidArgument(msg) => Self::invalid_request(msg),
            other => {
                tracing::error!(detail = %other, "sso internal error");
                Self::new(
                    OAuthErrorCode::ServerError,
                    "internal error; the server log has the details",
                )
            }
        }
    }
}

impl From<sea_orm::DbErr> for OAuthError {
    fn from(e: sea_orm::DbErr) -> Self {
        ServiceError::from(e).into()
    }
}
