//! The API's error answer: `{"error":{"code":"…","message":"…"}}` with the SPEC's
//! status codes.
//!
//! Every failure of every route ends here. Internal causes (a Redis or archive error, a bug) are
//! logged once where they are converted and never shown to the client.

use std::borrow::Cow;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::WWW_AUTHENTICATE;

use logstream_core::batch::BatchError;

use crate::archive::ArchiveError;
use crate::auth::jwt::JwtError;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401, answered with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 for a job: also the answer for someone else's job.
    pub fn job_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "job not found")
    }

    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 413.
    pub fn too_large(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    /// 503: Redis (or another backend) cannot be reached; worth retrying.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: the cause has been logged; the client learns nothing internal.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "redis unavailable");
                crate::metrics::count(crate::metrics::Counter::RedisErrors, 1);
                Self::unavailable("log store unavailable, retry later")
            }
            StoreError::Redis(_) | StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "store failure");
                Self::internal()
            }
        }
    }
}

impl From<ArchiveError> for ApiError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Unavailable { .. } => {
                tracing::warn!(error = %e, "archive unavailable");
                Self::unavailable("log archive unavailable, retry later")
            }
            ArchiveError::Refused { .. } | ArchiveError::Io { .. } | ArchiveError::Corrupt(_) => {
                tracing::error!(error = %e, "archive failure");
                Self::internal()
            }
        }
    }
}

impl From<crate::log::LogError> for ApiError {
    fn from(e: crate::log::LogError) -> Self {
        match e {
            crate::log::LogError::Store(e) => e.into(),
            crate::log::LogError::Archive(e) => e.into(),
            e @ crate::log::LogError::Unlisted { .. } => {
                tracing::warn!(error = %e, "archived entries unlisted");
                Self::unavailable(
                    "part of this log is being restored from its archive, retry later",
                )
            }
        }
    }
}

impl From<JwtError> for ApiError {
    fn from(e: JwtError) -> Self {
        match e {
            JwtError::KeysUnavailable(cause) => {
                tracing::warn!(error = %cause, "JWKS unavailable");
                Self::unavailable("token keys unavailable, retry later")
            }
            other => Self::unauthorized(other.to_string()),
        }
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(serde::Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A refused ingest body: 413 for one too large, 400 for the rest, with the batch
/// parser's code and message.
impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        let status = if e.too_large() {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        Self::new(status, e.code(), e.to_string())
    }
}
