//! The history function: the viewer side's REST reads.
//!
//! | route | does |
//! |---|---|
//! | `GET /jobs/{id}` | the job's status, times and counts |
//! | `GET /jobs/{id}/logs?limit&before&after&at` | a page of entries, chronological |
//! | `GET /jobs/{id}/logs?q=TEXT&…` | a page of the `line` entries containing TEXT (any case), over the whole job |
//! | `POST /jobs/{id}/share` | a share link: a token that reads this job only, for a while |
//! | `DELETE /jobs/{id}/share` | revokes every share link of the job |
//! | `DELETE /jobs/{id}` | deletes the job everywhere: Redis, the archive, open streams (module `delete`) |
//!
//! Pages walk backwards from the newest entry ("load earlier" with `before`), forwards
//! from a known id (`after`), or from an entry number (`at`, for permalinks). Both
//! routes read through [`JobLog`], which serves a job from Redis and the archive as one
//! log: a page of the live tail is one pipelined round trip to Redis, with the entries
//! going out as the JSON Redis holds, without decoding; a page further back, or of a
//! job Redis has forgotten (`"source":"archive"`), is a few ranged reads of the
//! archive. A job that belongs to someone else is answered exactly like a missing one
//! (404), wherever it was found.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod delete;

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Uri};
use serde::{Deserialize, Serialize};

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{JobStatus, StoredEntry, now_ms};
use logstream_core::search::Query;
use logstream_shared::archive::Archive;
use logstream_shared::auth::jwt::ViewerAuth;
use logstream_shared::auth::pipeline::IngestKey;
use logstream_shared::auth::share;
use logstream_shared::clients::Clients;
use logstream_shared::config::ConfigError;
use logstream_shared::log::{Found, JobLog};
use logstream_shared::store::{Cursor, LogStore, Page};
use logstream_shared::web::error::ApiError;
use logstream_shared::web::{
    ApiQuery, BodyBytes, JobPath, authenticate_reader, finish, parse_json,
};
use logstream_shared::wsapi;

/// Page size without `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page; a larger `limit` is treated as this.
pub const MAX_LIMIT: usize = 500;
/// Most entries one search request reads; past it the answer says where to go on.
pub const SEARCH_BUDGET: usize = 500_000;

/// Everything the history routes share, built once per process.
pub struct HistoryState {
    log: JobLog,
    viewers: ViewerAuth,
    /// The deployment's ingest key, which may delete jobs (when the function has it).
    ingest_key: Option<IngestKey>,
    /// The WebSocket management API, to close a deleted job's connections.
    ws: Option<wsapi::Client>,
}

impl HistoryState {
    /// History over Redis only.
    pub fn new(store: LogStore, viewers: ViewerAuth) -> Arc<Self> {
        Self::with_archive(store, viewers, None)
    }

    /// History over Redis and `archive`, read as one log ([`JobLog`]).
    pub fn with_archive(
        store: LogStore,
        viewers: ViewerAuth,
        archive: Option<Archive>,
    ) -> Arc<Self> {
        Arc::new(Self {
            log: JobLog::new(store, archive),
            viewers,
            ingest_key: None,
            ws: None,
        })
    }

    /// Lets the ingest key delete jobs, and closes a deleted job's WebSocket
    /// connections through `ws`.
    pub fn deleting(
        mut self: Arc<Self>,
        ingest_key: Option<IngestKey>,
        ws: Option<wsapi::Client>,
    ) -> Arc<Self> {
        if let Some(state) = Arc::get_mut(&mut self) {
            state.ingest_key = ingest_key;
            state.ws = ws;
        }
        self
    }

    /// The history function's state from the process's [`Clients`]: the store, the
    /// viewer-token verifier, the archive (when there is one), the ingest key (when
    /// set: it may delete jobs) and the WebSocket management API (when there is one:
    /// deleting a job closes its connections); connects lazily.
    pub async fn build(clients: &Clients) -> Result<Arc<Self>, ConfigError> {
        let ingest_key = clients
            .config()
            .ingest_key
            .as_ref()
            .map(|key| IngestKey::new(key.expose()));
        Ok(Self::with_archive(
            clients.store()?,
            clients.viewers()?,
            clients.archive().await,
        )
        .deleting(ingest_key, clients.ws_management().await))
    }
}

/// The history routes, without fallbacks (see [`logstream_shared::web::finish`]).
pub fn routes(state: Arc<HistoryState>) -> Router {
    Router::new()
        .route("/jobs/{id}", get(get_job).delete(delete::delete_job))
        .route("/jobs/{id}/logs", get(get_logs))
        .route("/jobs/{id}/share", post(create_share).delete(revoke_shares))
        .with_state(state)
}

/// The history function's whole router, as its Lambda serves it.
pub fn router(state: Arc<HistoryState>, cors_origins: &[HeaderValue]) -> Router {
    finish(routes(state), cors_origins)
}

#[derive(Debug, Serialize)]
struct JobOut {
    job_id: JobId,
    /// Only when the job was created with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    org: Option<String>,
    status: JobStatus,
    created_at: u64,
    finished_at: Option<u64>,
    exit_code: Option<i64>,
    duration_ms: Option<u64>,
    archived: bool,
    entries: u64,
    bytes: u64,
    truncated: bool,
}

#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn get_job(
    State(state): State<Arc<HistoryState>>,
    JobPath(job): JobPath,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<JobOut>, ApiError> {
    let viewer =
        authenticate_reader(&state.viewers, state.log.store(), &job, &headers, &uri).await?;
    let info = match state.log.info(&job).await? {
        Some((info, _)) if viewer.can_read(&job, &info) => info,
        _ => return Err(ApiError::job_not_found()),
    };
    Ok(Json(JobOut {
        job_id: job,
        org: info.org,
        status: info.status,
        created_at: info.created_at,
        finished_at: info.finished_at,
        exit_code: info.exit_code,
        duration_ms: info.duration_ms,
        archived: info.archived,
        entries: info.entries,
        bytes: info.bytes,
        truncated: info.truncated,
    }))
}

/// A page request's query (`?limit&before&after`), as sent. Public for the property
/// tests of its parsers.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub at: Option<String>,
    /// Search: only `line` entries whose text contains it ([`Query`]).
    pub q: Option<String>,
}

impl PageQuery {
    /// The page size: [`DEFAULT_LIMIT`] when absent; a whole number of any size above
    /// [`MAX_LIMIT`] is [`MAX_LIMIT`]; 400 for 0, a negative number or anything else.
    pub fn limit(&self) -> Result<usize, ApiError> {
        let Some(raw) = self.limit.as_deref() else {
            return Ok(DEFAULT_LIMIT);
        };
        let digits = raw.trim();
        let digits = digits.strip_prefix('+').unwrap_or(digits);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid_limit());
        }
        let significant = digits.trim_start_matches('0');
        if significant.is_empty() {
            return Err(invalid_limit());
        }
        // More digits than MAX_LIMIT has is above it, however many there are.
        Ok(significant
            .parse::<usize>()
            .map_or(MAX_LIMIT, |n| n.min(MAX_LIMIT)))
    }

    /// Where the page starts; 400 for a malformed id, an `at` that is not a whole
    /// number from 1, or more than one cursor at once.
    pub fn cursor(&self) -> Result<Cursor, ApiError> {
        let parse = |raw: &str| {
            raw.parse::<EntryId>()
                .map_err(|e| ApiError::bad_request("invalid_cursor", e.to_string()))
        };
        match (
            self.before.as_deref(),
            self.after.as_deref(),
            self.at.as_deref(),
        ) {
            (None, None, None) => Ok(Cursor::Latest),
            (Some(before), None, None) => Ok(Cursor::Before(parse(before)?)),
            (None, Some(after), None) => Ok(Cursor::After(parse(after)?)),
            (None, None, Some(at)) => match at.trim().parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Cursor::At(n)),
                _ => Err(ApiError::bad_request(
                    "invalid_cursor",
                    "at must be an entry number from 1",
                )),
            },
            _ => Err(ApiError::bad_request(
                "invalid_cursor",
                "give one of before, after or at",
            )),
        }
    }
}

fn invalid_limit() -> ApiError {
    ApiError::bad_request(
        "invalid_limit",
        "limit must be a whole number from 1 to 500",
    )
}

/// A page's response body, written straight into one buffer: the entries' stored JSON
/// is spliced in as Redis (or the archive) holds it, never parsed or re-encoded, which
/// is most of what a 500-entry page would otherwise cost.
fn page_body(job: &JobId, status: JobStatus, source: &str, page: &Page) -> String {
    let next_before = page
        .entries
        .first()
        .filter(|_| page.has_older)
        .map(|e| e.id);
    let mut out = lines_body(job, status, source, &page.entries, page.has_more);
    end_body(&mut out, &[("next_before", next_before)]);
    out
}

/// A search's response body: a page's, with where the search goes on, `before` or
/// `after` an id, since the last match is not where the search stopped reading.
fn found_body(
    job: &JobId,
    status: JobStatus,
    source: &str,
    found: &Found,
    backward: bool,
) -> String {
    let mut out = lines_body(job, status, source, &found.entries, found.next.is_some());
    let (before, after) = if backward {
        (found.next, None)
    } else {
        (None, found.next)
    };
    end_body(&mut out, &[("next_before", before), ("next_after", after)]);
    out
}

/// The start of a page's body, up to `has_more`.
fn lines_body(
    job: &JobId,
    status: JobStatus,
    source: &str,
    entries: &[StoredEntry],
    has_more: bool,
) -> String {
    use std::fmt::Write;
    let stored: usize = entries.iter().map(|e| e.json.len() + 40).sum();
    let mut out = String::with_capacity(stored + 200);
    // Job ids, statuses and sources are plain ASCII without quotes or backslashes
    // (`JobId` enforces its alphabet), so they need no escaping. Writing to a String
    // cannot fail.
    let _ = write!(
        out,
        r#"{{"job_id":"{job}","status":"{}","source":"{source}","lines":["#,
        status.as_str()
    );
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        entry.write_json(&mut out);
    }
    let _ = write!(out, r#"],"has_more":{has_more}"#);
    out
}

/// Ends a body begun by [`lines_body`] with cursor fields.
fn end_body(out: &mut String, cursors: &[(&str, Option<EntryId>)]) {
    use std::fmt::Write;
    for (name, id) in cursors {
        match id {
            Some(id) => {
                let _ = write!(out, r#","{name}":"{id}""#);
            }
            None => {
                let _ = write!(out, r#","{name}":null"#);
            }
        }
    }
    out.push('}');
}

#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn get_logs(
    State(state): State<Arc<HistoryState>>,
    JobPath(job): JobPath,
    ApiQuery(query): ApiQuery<PageQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<impl IntoResponse, ApiError> {
    let viewer =
        authenticate_reader(&state.viewers, state.log.store(), &job, &headers, &uri).await?;
    let limit = query.limit()?;
    let cursor = query.cursor()?;
    if let Some(q) = query.q.as_deref() {
        let search =
            Query::new(q).map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
        // Asked first: a search may read up to SEARCH_BUDGET entries, which nobody but
        // a reader of the job may cost the service (or time, to learn the job exists).
        match state.log.info(&job).await? {
            Some((info, _)) if viewer.can_read(&job, &info) => {}
            _ => return Err(ApiError::job_not_found()),
        }
        let found = state
            .log
            .search(&job, &search, cursor, limit, SEARCH_BUDGET)
            .await?;
        let (info, source, found) = match found {
            Some((info, source, found)) if viewer.can_read(&job, &info) => (info, source, found),
            _ => return Err(ApiError::job_not_found()),
        };
        let backward = matches!(cursor, Cursor::Latest | Cursor::Before(_));
        return Ok((
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            found_body(&job, info.status, source.as_str(), &found, backward),
        ));
    }
    let (info, source, page) = match state.log.page(&job, cursor, limit).await? {
        Some((info, source, page)) if viewer.can_read(&job, &info) => (info, source, page),
        _ => return Err(ApiError::job_not_found()),
    };
    Ok((
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        page_body(&job, info.status, source.as_str(), &page),
    ))
}

#[derive(Debug, Default, Deserialize)]
struct ShareRequest {
    ttl_secs: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct Shared {
    token: String,
    /// When the link stops working, ms since the epoch.
    expires_at: u64,
}

/// The viewer behind a request that manages share links: a JWT (a share link cannot
/// make or revoke links: 403) whose holder may read the job (else 404).
async fn sharing_viewer(
    state: &HistoryState,
    job: &JobId,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(), ApiError> {
    let viewer = authenticate_reader(&state.viewers, state.log.store(), job, headers, uri).await?;
    if viewer.share.is_some() {
        return Err(ApiError::new(
            http::StatusCode::FORBIDDEN,
            "forbidden",
            "a share link cannot make or revoke share links",
        ));
    }
    match state.log.info(job).await? {
        Some((info, _)) if viewer.can_read(job, &info) => Ok(()),
        _ => Err(ApiError::job_not_found()),
    }
}

/// `POST /jobs/{id}/share` `{"ttl_secs"?: n}`: a link for `n` seconds (default a day,
/// at most 7 days) that reads this job only.
#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn create_share(
    State(state): State<Arc<HistoryState>>,
    JobPath(job): JobPath,
    headers: HeaderMap,
    uri: Uri,
    BodyBytes(body): BodyBytes,
) -> Result<impl IntoResponse, ApiError> {
    sharing_viewer(&state, &job, &headers, &uri).await?;
    let signer = state.viewers.share_signer().ok_or_else(|| {
        ApiError::new(
            http::StatusCode::NOT_IMPLEMENTED,
            "sharing_disabled",
            "share links need LOGSTREAM_SHARE_SECRET",
        )
    })?;
    let request: ShareRequest = if body.is_empty() {
        ShareRequest::default()
    } else {
        parse_json(&body)?
    };
    let ttl = match request.ttl_secs {
        None => share::DEFAULT_TTL_SECS,
        Some(value) => value
            .as_u64()
            .filter(|ttl| (1..=share::MAX_TTL_SECS).contains(ttl))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_ttl",
                    format!(
                        "ttl_secs must be a whole number from 1 to {}",
                        share::MAX_TTL_SECS
                    ),
                )
            })?,
    };
    let generation = state.log.store().issue_share(&job).await?;
    let expires_at = now_ms() / 1000 + ttl;
    let token = signer.issue(&share::Grant {
        job: job.clone(),
        generation,
        expires_at,
    });
    tracing::info!(ttl, "share link made");
    Ok((
        http::StatusCode::CREATED,
        Json(Shared {
            token,
            expires_at: expires_at * 1000,
        }),
    ))
}

/// `DELETE /jobs/{id}/share`: every share link of the job stops working at once.
#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn revoke_shares(
    State(state): State<Arc<HistoryState>>,
    JobPath(job): JobPath,
    headers: HeaderMap,
    uri: Uri,
) -> Result<impl IntoResponse, ApiError> {
    sharing_viewer(&state, &job, &headers, &uri).await?;
    let (_, connections) = state.log.store().revoke_shares(&job).await?;
    // SSE streams made with a link notice at their next check; WebSocket connections
    // are closed here (they are out of the job's hash already, so pushes skip them).
    if let Some(client) = &state.ws {
        logstream_shared::wsapi::close_revoked(client, &connections, delete::CLOSE_BOUND).await;
    }
    tracing::info!(websockets = connections.len(), "share links revoked");
    Ok(http::StatusCode::NO_CONTENT)
}
