//! The history function: the viewer side's REST reads.
//!
//! | route | does |
//! |---|---|
//! | `GET /jobs/{id}` | the job's status and times |
//! | `GET /jobs/{id}/logs?limit&before&after` | a page of entries, chronological |
//!
//! Pages walk backwards from the newest entry ("load earlier" with `before`), or
//! forwards from a known id (`after`). The job's metadata and the page are read in one
//! pipelined round trip, and entries go out as the JSON Redis holds, without decoding.
//! A job that belongs to someone else is answered exactly like a missing one (404).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use http::{HeaderMap, HeaderValue, Uri};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use logstream_shared::config::{Config, ConfigError};
use logstream_shared::error::ApiError;
use logstream_shared::http::{ApiQuery, JobPath, authenticate_viewer, finish};
use logstream_shared::jwt::{Viewer, ViewerAuth};
use logstream_shared::model::{EntryId, JobId, JobStatus};
use logstream_shared::store::{Cursor, JobMeta, LogStore};

/// Page size without `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page; a larger `limit` is treated as this.
pub const MAX_LIMIT: usize = 500;

/// Everything the history routes share, built once per process.
pub struct HistoryState {
    store: LogStore,
    viewers: ViewerAuth,
}

impl HistoryState {
    pub fn new(store: LogStore, viewers: ViewerAuth) -> Arc<Self> {
        Arc::new(Self { store, viewers })
    }

    /// Reads what the history function needs from `config` (`REDIS_URL`, viewer JWT
    /// settings); connects lazily.
    pub fn from_config(config: &Config, http: reqwest::Client) -> Result<Arc<Self>, ConfigError> {
        let store = config.open_store()?;
        let viewers = config.viewer_auth(http)?;
        Ok(Self::new(store, viewers))
    }

    /// The viewer's job, or 404 when it is missing or not theirs.
    fn owned(&self, viewer: &Viewer, meta: Option<JobMeta>) -> Result<JobMeta, ApiError> {
        match meta {
            Some(meta) if meta.owner == viewer.user => Ok(meta),
            _ => Err(ApiError::job_not_found()),
        }
    }
}

/// The history routes, without fallbacks (see [`logstream_shared::http::finish`]).
pub fn routes(state: Arc<HistoryState>) -> Router {
    Router::new()
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/logs", get(get_logs))
        .with_state(state)
}

/// The history function's whole router, as its Lambda serves it.
pub fn router(state: Arc<HistoryState>, cors_origins: &[HeaderValue]) -> Router {
    finish(routes(state), cors_origins)
}

#[derive(Debug, Serialize)]
struct JobOut {
    job_id: JobId,
    status: JobStatus,
    created_at: u64,
    finished_at: Option<u64>,
    archived: bool,
}

#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn get_job(
    State(state): State<Arc<HistoryState>>,
    JobPath(job): JobPath,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<JobOut>, ApiError> {
    let viewer = authenticate_viewer(&state.viewers, &headers, &uri).await?;
    let meta = state.owned(&viewer, state.store.job_meta(&job).await?)?;
    Ok(Json(JobOut {
        job_id: job,
        status: meta.status,
        created_at: meta.created_at,
        finished_at: meta.finished_at,
        archived: meta.archived,
    }))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    limit: Option<String>,
    before: Option<String>,
    after: Option<String>,
}

impl PageQuery {
    fn limit(&self) -> Result<usize, ApiError> {
        let Some(raw) = self.limit.as_deref() else {
            return Ok(DEFAULT_LIMIT);
        };
        match raw.trim().parse::<i64>() {
            Ok(n) if n > 0 => Ok(usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT)),
            _ => Err(ApiError::bad_request(
                "invalid_limit",
                "limit must be a whole number from 1 to 500",
            )),
        }
    }

    fn cursor(&self) -> Result<Cursor, ApiError> {
        let parse = |raw: &str| {
            raw.parse::<EntryId>()
                .map_err(|e| ApiError::bad_request("invalid_cursor", e.to_string()))
        };
        match (self.before.as_deref(), self.after.as_deref()) {
            (None, None) => Ok(Cursor::Latest),
            (Some(before), None) => Ok(Cursor::Before(parse(before)?)),
            (None, Some(after)) => Ok(Cursor::After(parse(after)?)),
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "invalid_cursor",
                "give before or after, not both",
            )),
        }
    }
}

#[derive(Debug, Serialize)]
struct PageOut {
    job_id: JobId,
    status: JobStatus,
    source: &'static str,
    lines: Vec<Box<RawValue>>,
    has_more: bool,
    next_before: Option<EntryId>,
}

#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn get_logs(
    State(state): State<Arc<HistoryState>>,
    JobPath(job): JobPath,
    ApiQuery(query): ApiQuery<PageQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<PageOut>, ApiError> {
    let viewer = authenticate_viewer(&state.viewers, &headers, &uri).await?;
    let limit = query.limit()?;
    let cursor = query.cursor()?;
    let found = state.store.page(&job, cursor, limit).await?;
    let (meta, page) = match found {
        Some((meta, page)) => (state.owned(&viewer, Some(meta))?, page),
        None => return Err(ApiError::job_not_found()),
    };
    let next_before = page
        .entries
        .first()
        .filter(|_| page.has_older)
        .map(|e| e.id);
    Ok(Json(PageOut {
        job_id: job,
        status: meta.status,
        source: "redis",
        lines: page.entries.iter().map(|e| e.to_raw()).collect(),
        has_more: page.has_more,
        next_before,
    }))
}
