//! HTTP plumbing every function's router shares: extractors whose rejections are the
//! SPEC's JSON errors, viewer authentication, and [`finish`], which adds the JSON 404
//! and 405 answers, the body limit and CORS to a set of routes.
//!
//! Function libraries expose bare `routes(state)` so `logstream dev` can merge several
//! of them before calling [`finish`] once (axum refuses to merge two routers that both
//! have a fallback).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, CorsLayer};

use logstream_core::ids::JobId;

use crate::auth::jwt::{Viewer, ViewerAuth};
use crate::auth::pipeline::bearer;

pub mod error;
pub mod lambda;

pub use error::ApiError;

pub use logstream_core::batch::MAX_BODY_BYTES;

/// The `{id}` of a job route, validated: a bad id is a 400, never a Redis key.
#[derive(Debug, Clone)]
pub struct JobPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                ApiError::bad_request("invalid_job_id", "missing or malformed job id in the path")
            })?;
        JobId::parse(&raw)
            .map(JobPath)
            .map_err(|e| ApiError::bad_request("invalid_job_id", e.to_string()))
    }
}

/// The request body, at most [`MAX_BODY_BYTES`] (413 beyond).
#[derive(Debug, Clone)]
pub struct BodyBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for BodyBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::too_large(
                    "body_too_large",
                    format!("request body exceeds {MAX_BODY_BYTES} bytes"),
                ))
            }
            Err(rejection) => Err(ApiError::bad_request("bad_body", rejection.body_text())),
        }
    }
}

/// Query parameters; a malformed query is a 400.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
}

/// Parses a JSON body. Invalid UTF-8 becomes U+FFFD first (the SPEC's rule for log
/// text) rather than failing the batch; syntax errors and type errors are 400s that
/// say where.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    logstream_core::batch::parse_json(body).map_err(ApiError::from)
}

/// The viewer's JWT: `Authorization: Bearer …`, or `?access_token=` because a
/// browser's EventSource cannot set headers.
pub fn viewer_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(token) = bearer(headers) {
        return Some(token.to_owned());
    }
    query_param(uri, "access_token").filter(|t| !t.is_empty())
}

/// One query parameter, decoded.
pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let Query(mut map) = Query::<HashMap<String, String>>::try_from_uri(uri).ok()?;
    map.remove(name)
}

/// Authenticates the viewer of a request: 401 without a valid token, 503 when the
/// signing keys cannot be fetched.
pub async fn authenticate_viewer(
    auth: &ViewerAuth,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Viewer, ApiError> {
    let token =
        viewer_token(headers, uri).ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    Ok(auth.verify(&token).await?)
}

/// [`authenticate_viewer`] for the read routes of `job`, which also take a share link
/// of that job (`crate::auth::share`): verified with the deployment's secret, then
/// checked against the job's share generation (one Redis `GET`, only for share
/// tokens). A link of another job is answered like a job that does not exist (404);
/// an expired or revoked one, or one this deployment did not sign, is 401.
pub async fn authenticate_reader(
    auth: &ViewerAuth,
    store: &crate::store::LogStore,
    job: &logstream_core::ids::JobId,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Viewer, ApiError> {
    let token =
        viewer_token(headers, uri).ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    verify_reader(auth, store, job, &token).await
}

/// [`authenticate_reader`] for a token already taken from the request (the WebSocket
/// `$connect`'s query).
pub async fn verify_reader(
    auth: &ViewerAuth,
    store: &crate::store::LogStore,
    job: &logstream_core::ids::JobId,
    token: &str,
) -> Result<Viewer, ApiError> {
    if !token.trim().starts_with(crate::auth::share::PREFIX) {
        return Ok(auth.verify(token).await?);
    }
    let signer = auth
        .share_signer()
        .ok_or_else(|| ApiError::unauthorized("share links are not enabled here"))?;
    let now = logstream_core::model::now_ms() / 1000;
    let grant = signer
        .verify(token.trim(), now)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    if &grant.job != job {
        return Err(ApiError::job_not_found());
    }
    match store.share_generation(job).await? {
        Some(generation) if generation == grant.generation => {}
        Some(_) => return Err(ApiError::unauthorized("share link revoked")),
        // No record: the job was deleted (its links went with it, and its reads are
        // 404 for everyone), or the record was lost, which ends every link.
        None if store.tombstone(job).await?.is_some() => return Err(ApiError::job_not_found()),
        None => return Err(ApiError::unauthorized("share link no longer valid")),
    }
    Ok(Viewer {
        user: String::new(),
        expires_at_ms: Some(grant.expires_at.saturating_mul(1000)),
        org: None,
        share: Some(grant),
    })
}

/// The OpenAPI 3.1 document of every route (`docs/openapi.json`), served by every
/// function at `GET /openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON,
    )
}

/// Adds `GET /openapi.json`, the JSON 404 and 405 answers, the body limit and CORS to
/// `routes`.
pub fn finish(routes: Router, cors_origins: &[HeaderValue]) -> Router {
    let router = routes
        .route("/openapi.json", axum::routing::get(openapi))
        // After each answer, the metric line when one is due (`crate::metrics`).
        .layer(axum::middleware::map_response(
            |response: axum::response::Response| async move {
                crate::metrics::flush_if_due();
                response
            },
        ))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    if cors_origins.is_empty() {
        router
    } else {
        router.layer(cors(cors_origins))
    }
}

/// Longest request target (path and query) answered; longer is 414. A viewer token in
/// `?access_token=` is a few kB at most.
pub const MAX_URI_BYTES: usize = 16 * 1024;

/// A request whose head was too large to route, marked by the server that read it
/// (`logstream dev` reads the head of a connection's first request itself, because
/// hyper answers a target over 64 KiB with a bare 414 before any router sees it). Its
/// request carries `/` as its target and this mark; [`finish`]'s routers answer it
/// with the JSON error and CORS headers like any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversized {
    /// The request target is over [`MAX_URI_BYTES`]: 414.
    Uri,
    /// The request head is over the server's limit: 431.
    Headers,
}

async fn refuse_oversized(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    let mark = request.extensions().get::<Oversized>().copied();
    match mark {
        Some(Oversized::Headers) => ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request's headers are too large",
        )
        .into_response(),
        Some(Oversized::Uri) => uri_too_long().into_response(),
        None if target > MAX_URI_BYTES => uri_too_long().into_response(),
        None => next.run(request).await,
    }
}

fn uri_too_long() -> ApiError {
    ApiError::new(
        StatusCode::URI_TOO_LONG,
        "uri_too_long",
        format!("the request target is over {MAX_URI_BYTES} bytes"),
    )
}

fn cors(origins: &[HeaderValue]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            http::header::AUTHORIZATION,
            http::header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(std::time::Duration::from_secs(3600))
}
