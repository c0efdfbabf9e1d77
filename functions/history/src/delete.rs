//! `DELETE /jobs/{id}`: a job gone everywhere, at once (for a log that leaked a
//! secret).
//!
//! Allowed with the deployment's ingest key, or the owner's JWT. An org member who
//! reads the job is refused (403), as is a share link; anyone else gets 404, as for a
//! job that does not exist. Then, in this order:
//! 1. Redis: the job's keys are deleted and a tombstone left, after a `deleted` entry
//!    that ends every open SSE stream of the job in every process (see
//!    `logstream_shared::store`'s `deletion` module). From here on every read is 404,
//!    whatever the archive still holds, and the id cannot be created again while the
//!    tombstone lives; an ingest batch racing the deletion finds no job (404).
//! 2. the archive: every object of the job (segments, manifest, `build.jsonl`). An
//!    archiver writing the job at that moment finds the tombstone when its visit ends
//!    and removes what it wrote; the job is also queued for one more visit, which does
//!    the same should this step fail.
//! 3. WebSocket: each connection that followed the job gets `{"type":"deleted"}` and is
//!    closed.
//!
//! 204 once the first two are done; a failure of either is 503, and the caller
//! retries: deleting again is answered 204 as long as the tombstone lives (the caller
//! must still be the owner, or hold the ingest key).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use http::{HeaderMap, StatusCode, Uri};

use logstream_core::ids::JobId;
use logstream_shared::auth::ReadableJob;
use logstream_shared::auth::pipeline::bearer;
use logstream_shared::log::LogError;
use logstream_shared::web::error::ApiError;
use logstream_shared::web::{JobPath, authenticate_reader};

use super::HistoryState;

/// How long a deletion (or a revocation of share links) waits for the job's WebSocket
/// connections to be told and closed.
pub(crate) const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// The job as deleting sees it: whose it is, from Redis, the archive or its tombstone.
struct Subject {
    owner: String,
    org: Option<String>,
}

impl ReadableJob for Subject {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }
}

fn forbidden(message: &'static str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// `DELETE /jobs/{id}` (see the module doc).
#[tracing::instrument(skip_all, fields(job_id = %job))]
pub(super) async fn delete_job(
    State(state): State<Arc<HistoryState>>,
    JobPath(job): JobPath,
    headers: HeaderMap,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    let pipeline = state
        .ingest_key
        .as_ref()
        .zip(bearer(&headers))
        .is_some_and(|(key, token)| key.matches(token));
    let viewer = if pipeline {
        None
    } else {
        let viewer =
            authenticate_reader(&state.viewers, state.log.store(), &job, &headers, &uri).await?;
        if viewer.share.is_some() {
            return Err(forbidden("a share link only reads its job"));
        }
        Some(viewer)
    };
    let Some(subject) = subject(&state, &job).await? else {
        return Err(ApiError::job_not_found());
    };
    if let Some(viewer) = &viewer
        && viewer.user != subject.owner
    {
        return Err(if viewer.can_read(&job, &subject) {
            forbidden("only the job's owner can delete it")
        } else {
            ApiError::job_not_found()
        });
    }
    let store = state.log.store();
    let connections = store
        .delete_job(&job, &subject.owner, subject.org.as_deref())
        .await?;
    if let Some(archive) = state.log.archive() {
        archive.purge(&job).await.map_err(LogError::from)?;
    }
    if let Some(client) = &state.ws {
        logstream_shared::wsapi::close_deleted(client, &connections, CLOSE_BOUND).await;
    }
    tracing::info!(
        by = if pipeline { "ingest key" } else { "owner" },
        websockets = connections.len(),
        "job deleted"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Whose the job is: from Redis or the archive while it exists, from its tombstone
/// once deleted; `None` when it is unknown.
async fn subject(state: &HistoryState, job: &JobId) -> Result<Option<Subject>, ApiError> {
    if let Some((info, _)) = state.log.info(job).await? {
        return Ok(Some(Subject {
            owner: info.owner,
            org: info.org,
        }));
    }
    Ok(state.log.store().tombstone(job).await?.map(|t| Subject {
        owner: t.owner,
        org: t.org,
    }))
}
