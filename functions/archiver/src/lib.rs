//! The archiver function: finished jobs' logs from Redis to the archive (S3 in Lambda,
//! a local folder in `logstream dev`), before Redis forgets them.
//!
//! | EventBridge event | does |
//! |---|---|
//! | `detail-type: "Job Finished"`, `detail: {"job_id": …}` | archives that job |
//! | `detail-type: "Scheduled Event"` | sweeps the archive queue, oldest first |
//!
//! Archiving a job ([`Archiver::archive_job`]) reads its stream in pages
//! ([`LogStore::entries_after`]) and streams the lines into the archive as they come
//! (multipart on S3 for a large log), writes the manifest, and only then marks the job
//! `archived` and takes it off the queue: a failure anywhere before leaves the job
//! queued for the next sweep. Everything from the stream's head id back is immutable
//! once a job is terminal, and the manifest holds no timestamp of its own, so a retry
//! writes the same bytes; a job already marked is not written again.
//!
//! A sweep ([`Archiver::sweep`]) takes at most [`Settings::sweep_limit`] jobs and starts
//! no new one within [`Settings::deadline_margin`] of the invocation's deadline, so it
//! ends well inside the Lambda timeout; what is left waits for the next schedule. It
//! stops early after [`Settings::max_failures`] storage failures in a row (S3 is down:
//! no point hammering it). A job whose stream expired before it could be archived is
//! reported (`expired`) and dropped from the queue, not retried forever.
//!
//! Without an archive (no `LOGSTREAM_ARCHIVE_BUCKET`) archiving is skipped, said once
//! when the [`Archiver`] is made; sweeps then only drop expired jobs off the head of
//! the queue so it does not grow without bound.
//!
//! `logstream dev` runs the same [`Archiver`] over a local folder on a short timer
//! ([`spawn_local_sweeper`]).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Context, LambdaEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use logstream_core::ids::{EntryId, JobId};
use logstream_shared::archive::{Archive, ArchiveError, LogEncoder, Manifest, Upload};
use logstream_shared::clients::Clients;
use logstream_shared::config::ConfigError;
use logstream_shared::store::{JobMeta, LogStore, StoreError};

/// `detail-type` of the event that archives one job.
pub const JOB_FINISHED: &str = "Job Finished";
/// `detail-type` of an EventBridge schedule's event.
pub const SCHEDULED_EVENT: &str = "Scheduled Event";

/// The `detail` of a `Job Finished` event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobFinished {
    pub job_id: String,
}

/// Limits of one invocation.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Most jobs one sweep takes from the queue.
    pub sweep_limit: usize,
    /// Entries read from Redis per round trip.
    pub page_entries: usize,
    /// A sweep starts no new job when less than this is left before the deadline.
    pub deadline_margin: Duration,
    /// A sweep stops after this many storage failures in a row.
    pub max_failures: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sweep_limit: 100,
            page_entries: 1000,
            deadline_margin: Duration::from_secs(20),
            max_failures: 3,
        }
    }
}

/// What went wrong, by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    /// Redis failed: the invocation fails (the jobs stay queued).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The archive storage failed for one job: logged, the job stays queued.
    #[error("archiving {job}: {source}")]
    Archive {
        job: JobId,
        #[source]
        source: ArchiveError,
    },
    /// The event is not one the archiver handles.
    #[error("unexpected event: {0}")]
    Event(String),
}

/// What happened to one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written to the archive and marked.
    Archived(Archived),
    /// Marked archived already: nothing written.
    AlreadyArchived,
    /// Not in a terminal state: nothing to archive yet.
    NotFinished,
    /// Queued, but its stream expired before it was archived: dropped from the queue.
    Expired,
    /// Neither in Redis, nor queued, nor archived: nothing to do.
    Unknown,
    /// No archive configured.
    Skipped,
}

/// The figures of one archived job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Archived {
    pub entries: u64,
    pub bytes: u64,
    /// 1 for a single write, N for an N-part upload.
    pub parts: u32,
}

/// An invocation's answer (also logged), by job id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub archived: Vec<String>,
    pub already_archived: Vec<String>,
    pub expired: Vec<String>,
    pub not_finished: Vec<String>,
    pub unknown: Vec<String>,
    /// Storage failures: these jobs stay queued.
    pub failed: Vec<String>,
    /// No archive is configured.
    pub skipped: bool,
    /// The sweep stopped with jobs still queued (limit, deadline or failures).
    pub more: bool,
}

impl Report {
    fn record(&mut self, job: &JobId, outcome: &Outcome) {
        let list = match outcome {
            Outcome::Archived(_) => &mut self.archived,
            Outcome::AlreadyArchived => &mut self.already_archived,
            Outcome::NotFinished => &mut self.not_finished,
            Outcome::Expired => &mut self.expired,
            Outcome::Unknown => &mut self.unknown,
            Outcome::Skipped => {
                self.skipped = true;
                return;
            }
        };
        list.push(job.to_string());
    }
}

/// Copies finished jobs from Redis to the archive. Made once per process.
#[derive(Debug, Clone)]
pub struct Archiver {
    store: LogStore,
    archive: Option<Archive>,
    settings: Settings,
}

/// Why a copy stopped.
enum CopyError {
    Store(StoreError),
    Archive(ArchiveError),
    /// The stream ended before its head id: it expired while being read.
    Vanished,
}

impl Archiver {
    /// The archiver's state from the process's [`Clients`]: the store and the
    /// archive (none without a bucket on Lambda: archiving is then skipped).
    pub async fn build(clients: &Clients, settings: Settings) -> Result<Self, ConfigError> {
        Ok(Self::new(
            clients.store()?,
            clients.archive().await,
            settings,
        ))
    }

    /// An archiver writing to `archive`; `None` skips archiving (said here, once).
    pub fn new(store: LogStore, archive: Option<Archive>, settings: Settings) -> Self {
        match &archive {
            Some(archive) => tracing::info!(%archive, "archiving finished jobs"),
            None => tracing::warn!(
                "LOGSTREAM_ARCHIVE_BUCKET is not set: archiving is skipped, finished jobs \
                 stay only in Redis until their TTL"
            ),
        }
        Self {
            store,
            archive,
            settings,
        }
    }

    /// The archive in use.
    pub fn archive(&self) -> Option<&Archive> {
        self.archive.as_ref()
    }

    /// Handles one EventBridge event (the Lambda handler).
    #[tracing::instrument(skip_all, fields(detail_type = %event.payload.detail_type))]
    pub async fn handle(
        &self,
        event: LambdaEvent<EventBridgeEvent<Value>>,
    ) -> Result<Report, ArchiverError> {
        let deadline = deadline(&event.context);
        let payload = event.payload;
        let report = match payload.detail_type.as_str() {
            JOB_FINISHED => {
                let detail: JobFinished = serde_json::from_value(payload.detail)
                    .map_err(|e| ArchiverError::Event(format!("Job Finished detail: {e}")))?;
                let job = JobId::parse(&detail.job_id).map_err(|e| {
                    ArchiverError::Event(format!("job_id {:?}: {e}", detail.job_id))
                })?;
                let mut report = Report::default();
                match self.archive_job(&job).await {
                    Ok(outcome) => report.record(&job, &outcome),
                    Err(ArchiverError::Archive { job, source }) => {
                        tracing::error!(job_id = %job, error = %source, "archiving failed; the job stays queued");
                        report.failed.push(job.to_string());
                    }
                    Err(e) => return Err(e),
                }
                report
            }
            SCHEDULED_EVENT => self.sweep(deadline).await?,
            other => {
                return Err(ArchiverError::Event(format!(
                    "detail-type {other:?} (expected {JOB_FINISHED:?} or {SCHEDULED_EVENT:?})"
                )));
            }
        };
        tracing::info!(
            archived = report.archived.len(),
            expired = report.expired.len(),
            failed = report.failed.len(),
            more = report.more,
            "archiver done"
        );
        Ok(report)
    }

    /// Archives the queue, oldest first, within the limits of [`Settings`] and before
    /// `deadline`. Storage failures are logged and reported; a Redis failure ends the
    /// sweep with an error.
    pub async fn sweep(&self, deadline: Option<Instant>) -> Result<Report, ArchiverError> {
        let mut report = Report::default();
        let queued = self.store.archive_queue(self.settings.sweep_limit).await?;
        let mut failures = 0;
        for (i, (member, _finished_at)) in queued.iter().enumerate() {
            let out_of_time = deadline.is_some_and(|d| {
                d.saturating_duration_since(Instant::now()) < self.settings.deadline_margin
            });
            if out_of_time || failures >= self.settings.max_failures {
                report.more = true;
                break;
            }
            let Ok(job) = JobId::parse(member) else {
                tracing::warn!(member = %member, "not a job id in the archive queue; dropped");
                self.store.unqueue_archive(member).await?;
                continue;
            };
            match self.archive_job(&job).await {
                Ok(Outcome::Skipped) => {
                    // Without an archive only expired jobs leave the queue; the rest
                    // are younger than the first live one.
                    report.skipped = true;
                    report.more = i + 1 < queued.len();
                    break;
                }
                Ok(outcome) => {
                    failures = 0;
                    report.record(&job, &outcome);
                }
                Err(ArchiverError::Archive { job, source }) => {
                    failures += 1;
                    tracing::error!(job_id = %job, error = %source, "archiving failed; the job stays queued");
                    report.failed.push(job.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        if queued.len() == self.settings.sweep_limit {
            report.more = true;
        }
        Ok(report)
    }

    /// Archives one job (see the module doc for the guarantees).
    #[tracing::instrument(skip_all, fields(job_id = %job))]
    pub async fn archive_job(&self, job: &JobId) -> Result<Outcome, ArchiverError> {
        let head = self.store.job_head(job).await?;
        let Some(archive) = &self.archive else {
            if head.is_none() && self.store.is_queued_for_archive(job.as_str()).await? {
                self.store.unqueue_archive(job.as_str()).await?;
                return Ok(Outcome::Expired);
            }
            return Ok(Outcome::Skipped);
        };
        let archive_error = |source| ArchiverError::Archive {
            job: job.clone(),
            source,
        };
        let (meta, newest) = match head {
            Some((meta, _)) if meta.archived => {
                self.store.unqueue_archive(job.as_str()).await?;
                return Ok(Outcome::AlreadyArchived);
            }
            Some((meta, _)) if !meta.status.is_terminal() => return Ok(Outcome::NotFinished),
            Some((meta, Some(newest))) => (meta, newest),
            // Gone from Redis (or its stream is): archived earlier, or lost.
            Some((_, None)) | None => {
                let archived = archive
                    .manifest(job)
                    .await
                    .map_err(archive_error)?
                    .is_some();
                let queued = self.store.is_queued_for_archive(job.as_str()).await?;
                if queued {
                    self.store.unqueue_archive(job.as_str()).await?;
                }
                return Ok(if archived {
                    Outcome::AlreadyArchived
                } else if queued {
                    tracing::warn!(
                        "the job's stream expired before it was archived; its log is lost"
                    );
                    Outcome::Expired
                } else {
                    Outcome::Unknown
                });
            }
        };

        let started = Instant::now();
        let (manifest, parts) = match self.copy(archive, job, &meta, newest).await {
            Ok(done) => done,
            Err(CopyError::Store(e)) => return Err(e.into()),
            Err(CopyError::Archive(e)) => return Err(archive_error(e)),
            Err(CopyError::Vanished) => {
                self.store.unqueue_archive(job.as_str()).await?;
                tracing::warn!(
                    "the job's stream expired while it was being archived; its log is lost"
                );
                return Ok(Outcome::Expired);
            }
        };
        archive
            .put_manifest(&manifest)
            .await
            .map_err(archive_error)?;
        // Only now is the archive complete: mark, then unqueue (a crash in between
        // leaves a marked job in the queue, which the next sweep just unqueues).
        self.store.mark_archived(job).await?;
        self.store.unqueue_archive(job.as_str()).await?;
        let done = Archived {
            entries: manifest.entries,
            bytes: manifest.bytes,
            parts,
        };
        tracing::info!(
            entries = done.entries,
            bytes = done.bytes,
            parts = done.parts,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "archived"
        );
        Ok(Outcome::Archived(done))
    }

    /// Streams the job's entries up to `newest` into the archive, page by page.
    async fn copy(
        &self,
        archive: &Archive,
        job: &JobId,
        meta: &JobMeta,
        newest: EntryId,
    ) -> Result<(Manifest, u32), CopyError> {
        let mut upload = archive
            .upload(job, &meta.owner)
            .await
            .map_err(CopyError::Archive)?;
        let mut encoder = LogEncoder::new();
        match self.fill(&mut upload, &mut encoder, job, newest).await {
            Ok(()) => {}
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        }
        let uploaded = upload.finish().await.map_err(CopyError::Archive)?;
        Ok((encoder.manifest(job, meta), uploaded.parts))
    }

    async fn fill(
        &self,
        upload: &mut Upload,
        encoder: &mut LogEncoder,
        job: &JobId,
        newest: EntryId,
    ) -> Result<(), CopyError> {
        let mut after = EntryId { ms: 0, seq: 0 };
        let mut chunk = Vec::with_capacity(256 * 1024);
        while after < newest {
            let page = self
                .store
                .entries_after(job, after, self.settings.page_entries)
                .await
                .map_err(CopyError::Store)?;
            let Some(last) = page.last() else {
                return Err(CopyError::Vanished);
            };
            after = last.id;
            chunk.clear();
            for entry in page.iter().take_while(|e| e.id <= newest) {
                encoder.push(entry, &mut chunk);
            }
            upload.write(&chunk).await.map_err(CopyError::Archive)?;
        }
        Ok(())
    }
}

/// The invocation's deadline as an [`Instant`]; `None` when unknown or already past
/// (local emulators report one in 1970).
pub fn deadline(context: &Context) -> Option<Instant> {
    let deadline = UNIX_EPOCH + Duration::from_millis(context.deadline);
    let left = deadline.duration_since(SystemTime::now()).ok()?;
    Some(Instant::now() + left)
}

/// `logstream dev`'s in-process archiving: sweeps the queue every `every`, so a job is
/// archived shortly after it ends. Errors are logged when they start and when they
/// stop, not on every tick.
pub fn spawn_local_sweeper(archiver: Archiver, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match archiver.sweep(None).await {
                Ok(report) => {
                    if failing && report.failed.is_empty() {
                        tracing::info!("archiving works again");
                        failing = false;
                    } else if !report.failed.is_empty() {
                        failing = true;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "archive sweep failed; retrying quietly");
                    }
                    failing = true;
                }
            }
        }
    })
}
