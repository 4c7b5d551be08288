//! The one error type of the API: `{"error": {"code", "message"}}` with a fitting status.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::lifecycle::LifecycleError;
use crate::tenancy::{MissingScope, TenancyError};

/// An API error.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (throttled requests).
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with its status, code and message.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 `too_many_failures`: this address failed to authenticate too often; it may
    /// try again after `secs` (also sent as `Retry-After`).
    pub(crate) fn throttled(message: impl Into<String>, secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_failures", message);
        e.retry_after = Some(secs);
        e
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The message, for the audit log.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// 404.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 400.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 403 `forbidden`: the token may not do this, whatever its scopes.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The same error with another status.
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let message = e.to_string();
        match e {
            LifecycleError::NotFound(_)
            | LifecycleError::NoProvider(_)
            | LifecycleError::NoTemplate(_) => Self::not_found(message),
            LifecycleError::Invalid(_) => Self::bad_request(message),
            LifecycleError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            LifecycleError::Unauthorized(_) => Self::unauthorized(message),
            LifecycleError::StoppedOnPurpose(_) => {
                Self::new(StatusCode::CONFLICT, "stopped", message)
            }
            LifecycleError::QuotaExceeded { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
            }
            LifecycleError::TooManyConnections(_) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                message,
            ),
            LifecycleError::Store(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", message)
            }
            LifecycleError::Internal(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
            }
        }
    }
}

impl From<MissingScope> for ApiError {
    fn from(e: MissingScope) -> Self {
        Self::new(StatusCode::FORBIDDEN, "missing_scope", e.to_string())
    }
}

impl From<TenancyError> for ApiError {
    fn from(e: TenancyError) -> Self {
        let message = e.to_string();
        match e {
            TenancyError::Invalid(_) => Self::bad_request(message),
            TenancyError::NotFound(_) => Self::not_found(message),
            TenancyError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            TenancyError::Io { .. } | TenancyError::File { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", message)
            }
        }
    }
}
