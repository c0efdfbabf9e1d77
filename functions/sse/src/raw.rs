//! `GET /jobs/{id}/logs/raw[?timestamps=true]`: the whole log as plain text, a
//! download. Served by the streaming function because a buffered Lambda answer stops
//! at 6 MB and a log may be a gigabyte.
//!
//! The text is the `text` of every `line` entry, chronological, each followed by `\n`
//! (`logstream_core::raw`), read forward across the archive and Redis through one
//! [`LogReader`](logstream_shared::log::LogReader): large ranged reads of the archive,
//! then Redis, joined by entry number. What a running job has when the request starts
//! is sent, and whatever arrives while it is sent; the response ends at the newest
//! entry. The body is produced as fast as the client takes it, so memory stays at one
//! page whatever the log's size. A read that fails mid-way aborts the response (the
//! client sees a broken download, never a complete-looking file with a hole).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri, header};
use serde::Deserialize;

use logstream_core::ids::EntryId;
use logstream_shared::web::error::ApiError;
use logstream_shared::web::{ApiQuery, JobPath, authenticate_reader};

use crate::SseState;

/// Entries per read.
const RAW_PAGE: usize = 5000;

#[derive(Debug, Deserialize)]
pub(crate) struct RawQuery {
    timestamps: Option<String>,
}

#[tracing::instrument(skip_all, fields(job_id = %job))]
pub(crate) async fn raw(
    State(state): State<Arc<SseState>>,
    JobPath(job): JobPath,
    ApiQuery(query): ApiQuery<RawQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let viewer =
        authenticate_reader(&state.viewers, state.log.store(), &job, &headers, &uri).await?;
    let timestamps = match query.timestamps.as_deref() {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "timestamps must be true or false",
            ));
        }
    };
    match state.log.info(&job).await? {
        Some((info, _)) if viewer.can_read(&job, &info) => {}
        _ => return Err(ApiError::job_not_found()),
    }
    let reader = state.log.reader(&job, EntryId { ms: 0, seq: 0 });
    let body = futures_util::stream::unfold(Some(reader), move |reader| async move {
        let mut reader = reader?;
        loop {
            let entries = match reader.next(RAW_PAGE).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "raw log read failed; the response is cut off");
                    return Some((Err(std::io::Error::other(e.to_string())), None));
                }
            };
            if entries.is_empty() {
                return None;
            }
            let mut text = String::with_capacity(entries.iter().map(|e| e.json.len()).sum());
            for entry in &entries {
                logstream_core::raw::push_line(&mut text, entry, timestamps);
            }
            if !text.is_empty() {
                return Some((Ok(Bytes::from(text)), Some(reader)));
            }
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // A job id is [A-Za-z0-9_-]+: nothing in it needs quoting.
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{job}.log\"")) {
        h.insert(header::CONTENT_DISPOSITION, disposition);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}
