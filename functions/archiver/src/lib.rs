//! The archiver function: every job's log from Redis to the archive (S3 in Lambda, a
//! local folder in `logstream dev`), in segments while the job runs and as one
//! `build.jsonl` once it has ended.
//!
//! | EventBridge event | does |
//! |---|---|
//! | `detail-type: "Job Finished"`, `detail: {"job_id": …}` | visits that job |
//! | `detail-type: "Scheduled Event"` | visits every job that is due, soonest first |
//!
//! **The queue.** Every job of a deployment with an archive is in the archive queue from
//! its creation, scored by when the archiver should next visit it: one segment period
//! (`LOGSTREAM_SEGMENT_SECS`) after creation or after its last visit, at once when its
//! unarchived entries fill a segment (ingest moves it forward, see
//! `logstream_shared::store::AppendOutcome`) or when it ends. A sweep visits the jobs
//! that are due.
//!
//! **A visit** ([`Archiver::archive_job`]) holds the job's flush lease (a Redis key with an
//! expiry, [`Settings::lease`]), so two archivers never write one job at once; the other
//! one reports the job `busy` and moves on. Then:
//! - a running job: every full segment of unarchived entries (`LOGSTREAM_SEGMENT_LINES`
//!   entries or `LOGSTREAM_SEGMENT_BYTES`) is written, and what is left too once its
//!   oldest entry is a segment period old. Each segment is written (the job's first
//!   one after a manifest that lists no part yet, so the job itself is in the archive
//!   before any of its log), then the manifest that lists it, then Redis is told how
//!   far the archive reaches, which lets it trim
//!   the stream down to the live tail (`LogStore::archived_upto`). A failure at any step
//!   leaves Redis untrimmed and the next visit writes the same segment again, under the
//!   same name, with the same bytes: nothing lost, nothing twice.
//! - an ended job: the segments and the rest of the stream are merged into
//!   `build.jsonl` (multipart on S3 for a large log), the manifest then lists it alone,
//!   the job is marked `archived` and leaves the queue; the segments are removed.
//! - a job Redis has forgotten (its TTL, eviction, a flushed cache) while its segments
//!   are archived: they are merged into `build.jsonl` as they are (with any segment
//!   written after the manifest's last update, `Archive::extend_manifest`), and the job
//!   is served from the archive from then on. With nothing archived, it is reported
//!   `expired`.
//!
//! - a deleted job (`DELETE /jobs/{id}` leaves a tombstone in Redis): whatever the
//!   archive holds of it is removed, and it leaves the queue. The tombstone is checked
//!   before a visit and again after it, so a deletion while the visit was writing
//!   leaves nothing behind either ([`Archiver::archive_job`]).
//! - a job whose manifest is missing or damaged: made again from its segments first
//!   (`Archive::recover_manifest`), so the log never restarts at the stream's oldest
//!   entry; entries in neither tier stop the visit with an error.
//!
//! A sweep ([`Archiver::sweep`]) takes at most [`Settings::sweep_limit`] jobs and starts
//! no new one within [`Settings::deadline_margin`] of the invocation's deadline, so it
//! ends well inside the Lambda timeout; what is left waits for the next schedule. It
//! stops early after [`Settings::max_failures`] storage failures in a row (S3 is down:
//! no point hammering it; Redis keeps everything meanwhile). A job that failed is due
//! again [`Settings::retry_after`] later, behind the others.
//!
//! Without an archive (no `LOGSTREAM_ARCHIVE_BUCKET`) archiving is skipped, said once
//! when the [`Archiver`] is made; Redis then caps each stream as in version 1, and
//! sweeps only drop expired jobs off the head of the queue so it does not grow.
//!
//! `logstream dev` runs the same [`Archiver`] over a local folder on a short timer, and
//! at once when ingest says a segment is due ([`spawn_local_sweeper`]).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Context, LambdaEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{StoredEntry, now_ms};
use logstream_shared::archive::{
    Archive, ArchiveError, LOG_FILE, Manifest, Part, PartEncoder, Upload, segment_file,
};
use logstream_shared::clients::Clients;
use logstream_shared::config::ConfigError;
use logstream_shared::metrics::{self, Counter, Timing};
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
    /// How long a visit holds a job's flush lease at most: longer than an invocation
    /// can run, so a lease only expires under an archiver that died.
    pub lease: Duration,
    /// A job whose visit failed on the archive storage is due again this much later,
    /// so one that keeps failing does not hold the head of the queue.
    pub retry_after: Duration,
    /// How long a scheduled invocation goes on sweeping, every [`poll`](Self::poll),
    /// while the queue holds a job (`LOGSTREAM_ARCHIVER_LINGER_SECS`; 0: one sweep).
    /// A segment that fills between two schedules is then written within a poll,
    /// not at the next schedule: ingest makes it due at once, and nothing else can
    /// wake a Lambda archiver without a network path out of the VPC.
    pub linger: Duration,
    /// Time between two sweeps of a lingering invocation.
    pub poll: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sweep_limit: 100,
            page_entries: 1000,
            deadline_margin: Duration::from_secs(20),
            max_failures: 3,
            lease: Duration::from_secs(180),
            retry_after: Duration::from_secs(30),
            linger: Duration::ZERO,
            poll: Duration::from_secs(1),
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
    /// Running: this many segments written (0 when none was due yet).
    Flushed(u32),
    /// Another archiver is visiting the job.
    Busy,
    /// Queued, but its stream expired before it was archived: dropped from the queue.
    Expired,
    /// Neither in Redis, nor queued, nor archived: nothing to do.
    Unknown,
    /// Deleted (`DELETE /jobs/{id}`): what the archive held of it was removed, and it
    /// left the queue.
    Deleted,
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
    /// Running jobs visited (segments written, or none due yet).
    pub not_finished: Vec<String>,
    /// Segments written, in all.
    pub segments: u32,
    /// Jobs another archiver was visiting.
    pub busy: Vec<String>,
    pub unknown: Vec<String>,
    /// Deleted jobs whose archived objects this invocation removed (or found gone).
    pub deleted: Vec<String>,
    /// Storage failures: these jobs stay queued.
    pub failed: Vec<String>,
    /// No archive is configured.
    pub skipped: bool,
    /// The sweep stopped with jobs still queued (limit, deadline or failures).
    pub more: bool,
}

impl Report {
    /// Adds a later sweep's report to this one; `more` is the later one's.
    fn absorb(&mut self, later: Self) {
        let Self {
            archived,
            already_archived,
            expired,
            not_finished,
            segments,
            busy,
            unknown,
            deleted,
            failed,
            skipped,
            more,
        } = later;
        self.archived.extend(archived);
        self.already_archived.extend(already_archived);
        self.expired.extend(expired);
        for job in not_finished {
            if !self.not_finished.contains(&job) {
                self.not_finished.push(job);
            }
        }
        self.segments += segments;
        self.busy.extend(busy);
        self.unknown.extend(unknown);
        self.deleted.extend(deleted);
        self.failed.extend(failed);
        self.skipped |= skipped;
        self.more = more;
    }

    fn record(&mut self, job: &JobId, outcome: &Outcome) {
        let list = match outcome {
            Outcome::Archived(_) => &mut self.archived,
            Outcome::AlreadyArchived => &mut self.already_archived,
            Outcome::Flushed(segments) => {
                self.segments += segments;
                &mut self.not_finished
            }
            Outcome::Busy => &mut self.busy,
            Outcome::Expired => &mut self.expired,
            Outcome::Unknown => &mut self.unknown,
            Outcome::Deleted => &mut self.deleted,
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
            SCHEDULED_EVENT => self.sweep_lingering(deadline).await?,
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
        metrics::count(Counter::JobsArchived, report.archived.len() as u64);
        metrics::count(Counter::ArchiveErrors, report.failed.len() as u64);
        metrics::count(Counter::SegmentsWritten, u64::from(report.segments));
        metrics::flush();
        Ok(report)
    }

    /// Archives the queue, oldest first, within the limits of [`Settings`] and before
    /// `deadline`. Storage failures are logged and reported; a Redis failure ends the
    /// sweep with an error.
    pub async fn sweep(&self, deadline: Option<Instant>) -> Result<Report, ArchiverError> {
        let mut report = Report::default();
        let queued = self
            .store
            .due_for_archive(now_ms(), self.settings.sweep_limit)
            .await?;
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
                    let retry = now_ms() + self.settings.retry_after.as_millis() as u64;
                    self.store.reschedule_archive(&job, retry).await?;
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

    /// A scheduled invocation's work: [`sweep`](Self::sweep), then, for
    /// [`Settings::linger`], a sweep every [`Settings::poll`] while the queue holds a job
    /// (straight away while a sweep leaves due jobs behind), never past the deadline's
    /// margin. The report adds up every sweep's.
    pub async fn sweep_lingering(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Report, ArchiverError> {
        let mut stop = Instant::now() + self.settings.linger;
        if let Some(deadline) = deadline {
            stop = stop.min(
                deadline
                    .checked_sub(self.settings.deadline_margin)
                    .unwrap_or(deadline),
            );
        }
        let mut report = self.sweep(deadline).await?;
        let mut again = report.more && report.failed.is_empty();
        loop {
            if report.skipped || Instant::now() >= stop {
                return Ok(report);
            }
            if !again {
                if self.store.archive_queue_len().await? == 0 {
                    return Ok(report);
                }
                tokio::time::sleep_until(stop.min(Instant::now() + self.settings.poll).into())
                    .await;
                if Instant::now() >= stop {
                    return Ok(report);
                }
            }
            let next = self.sweep(deadline).await?;
            again = next.more && next.failed.is_empty();
            report.absorb(next);
            metrics::flush_if_due();
        }
    }

    /// Visits one job (see the module doc): segments for a running job, `build.jsonl`
    /// for an ended one.
    #[tracing::instrument(skip_all, fields(job_id = %job))]
    pub async fn archive_job(&self, job: &JobId) -> Result<Outcome, ArchiverError> {
        let Some(archive) = &self.archive else {
            let gone = self.store.job_meta(job).await?.is_none();
            if gone && self.store.is_queued_for_archive(job.as_str()).await? {
                self.store.unqueue_archive(job.as_str()).await?;
                return Ok(Outcome::Expired);
            }
            return Ok(Outcome::Skipped);
        };
        let token = logstream_core::ids::random_hex(16);
        let lease_ms = self.settings.lease.as_millis() as u64;
        if !self.store.take_flush_lease(job, &token, lease_ms).await? {
            return Ok(Outcome::Busy);
        }
        let outcome = match self.purge_if_deleted(archive, job).await {
            Ok(true) => Ok(Outcome::Deleted),
            Ok(false) => match self.visit_leased(archive, job).await {
                // Redis is down: no point asking it. The job stays queued (a deletion
                // queues it too), so the next visit checks before anything else.
                Err(e @ ArchiverError::Store(_)) => Err(e),
                // Deleted while this visit ran: what it wrote goes too (see
                // `purge_if_deleted`).
                outcome => match self.purge_if_deleted(archive, job).await {
                    Ok(true) => Ok(Outcome::Deleted),
                    Ok(false) => outcome,
                    Err(e) => Err(e),
                },
            },
            Err(e) => Err(e),
        };
        if let Err(e) = self.store.release_flush_lease(job, &token).await {
            tracing::warn!(error = %e, "flush lease not released; it expires by itself");
        }
        outcome
    }

    /// For a deleted job (its tombstone is in Redis): removes everything the archive
    /// holds of it, takes it off the queue, and answers `true`.
    ///
    /// Asked after a visit's last write as well as before its first, this is what
    /// makes a deletion racing a visit leave nothing behind. A deletion leaves the
    /// tombstone, then lists and removes the job's objects. If this check does not see
    /// the tombstone, it ran before the tombstone was left, so every object the visit
    /// wrote was already stored when the deletion listed them, and the deletion removed
    /// them; if it does, this removes them itself.
    async fn purge_if_deleted(
        &self,
        archive: &Archive,
        job: &JobId,
    ) -> Result<bool, ArchiverError> {
        if self.store.tombstone(job).await?.is_none() {
            return Ok(false);
        }
        let removed = archive
            .purge(job)
            .await
            .map_err(|source| ArchiverError::Archive {
                job: job.clone(),
                source,
            })?;
        self.store.unqueue_archive(job.as_str()).await?;
        tracing::info!(removed, "deleted job: its archived objects are gone");
        Ok(true)
    }

    /// [`archive_job`](Self::archive_job)'s work, under the job's lease.
    async fn visit_leased(&self, archive: &Archive, job: &JobId) -> Result<Outcome, ArchiverError> {
        let archive_error = |source| ArchiverError::Archive {
            job: job.clone(),
            source,
        };
        let meta = self.store.job_meta(job).await?;
        let read = archive.manifest(job).await;
        let Some(meta) = meta else {
            let manifest = read.map_err(archive_error)?;
            // Redis has forgotten the job.
            let queued = self.store.is_queued_for_archive(job.as_str()).await?;
            let outcome = match manifest {
                Some(manifest) if manifest.complete => Outcome::AlreadyArchived,
                Some(mut manifest) => {
                    // Segments a flush wrote without getting to list them are the only
                    // copy of their entries now.
                    archive
                        .extend_manifest(&mut manifest)
                        .await
                        .map_err(archive_error)?;
                    tracing::warn!(
                        entries = manifest.entries,
                        "the job left Redis before it ended; its archived segments become its log"
                    );
                    let meta = None;
                    Outcome::Archived(
                        self.merge(archive, job, manifest, meta)
                            .await
                            .map_err(|e| e.for_job(job))?,
                    )
                }
                None if queued => {
                    tracing::warn!(
                        "the job left Redis before any of it was archived; its log is lost"
                    );
                    Outcome::Expired
                }
                None => Outcome::Unknown,
            };
            if queued {
                self.store.unqueue_archive(job.as_str()).await?;
            }
            return Ok(outcome);
        };
        if meta.archived {
            self.store.unqueue_archive(job.as_str()).await?;
            return Ok(Outcome::AlreadyArchived);
        }
        let manifest = manifest_for(archive, job, &meta, read)
            .await
            .map_err(archive_error)?;
        if meta.status.is_terminal() {
            let started = Instant::now();
            let done = self
                .merge(archive, job, manifest, Some(&meta))
                .await
                .map_err(|e| e.for_job(job))?;
            self.store.mark_archived(job).await?;
            self.store.unqueue_archive(job.as_str()).await?;
            tracing::info!(
                entries = done.entries,
                bytes = done.bytes,
                parts = done.parts,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "archived"
            );
            return Ok(Outcome::Archived(done));
        }
        let (segments, next_visit) = self
            .segments(archive, job, &meta, manifest)
            .await
            .map_err(|e| e.for_job(job))?;
        self.store.reschedule_archive(job, next_visit).await?;
        Ok(Outcome::Flushed(segments))
    }

    /// Writes the running job's due segments; answers how many, and when the job is
    /// next due.
    async fn segments(
        &self,
        archive: &Archive,
        job: &JobId,
        meta: &JobMeta,
        mut manifest: Manifest,
    ) -> Result<(u32, u64), VisitError> {
        let r = self.store.retention();
        let period = r.segment_secs * 1000;
        let mut written = 0;
        // Redis may know less than the manifest says (it restarted between a segment
        // and its trim, or lost the record): tell it, so it can trim.
        let recorded = meta.archived_upto.map_or(0, |(n, _)| n);
        if let Some(last_id) = manifest.last_id().filter(|_| recorded < manifest.entries) {
            self.store
                .archived_upto(
                    job,
                    &meta.generation,
                    manifest.entries,
                    last_id,
                    manifest.stored,
                )
                .await?;
        }
        loop {
            let next_n = manifest.end_n();
            if meta.entries < next_n {
                return Ok((written, now_ms() + period));
            }
            let pending = meta.entries + 1 - next_n;
            let after = manifest.last_id().unwrap_or(EntryId { ms: 0, seq: 0 });
            let take = pending.min(r.segment_lines) as usize;
            let mut chunk = self.store.entries_after(job, after, take).await?;
            let Some(oldest) = chunk.first() else {
                // Redis lost the unarchived entries (a failover, a flush): nothing to
                // write; the job's next entries are archived when they come.
                tracing::warn!(from = next_n, "unarchived entries missing from Redis");
                return Ok((written, now_ms() + period));
            };
            continues(next_n, oldest)?;
            let full = pending >= r.segment_lines
                || meta.stored_bytes.saturating_sub(manifest.stored) >= r.segment_bytes;
            let due_at = oldest.id.ms + period;
            // How long the segment's oldest entry has waited for the archive.
            let waited = now_ms().saturating_sub(oldest.id.ms);
            if !full && now_ms() < due_at {
                return Ok((written, due_at));
            }
            // Cut at the segment's byte size (at least one entry).
            let mut size = 0;
            let keep = chunk
                .iter()
                .take_while(|e| {
                    size += e.json.len() as u64;
                    size <= r.segment_bytes
                })
                .count()
                .max(1);
            chunk.truncate(keep);
            if manifest.parts.is_empty() {
                // The job's first segment: its manifest goes first, so the job (owner,
                // org) is in the archive before any of its log is, and a segment whose
                // listing fails is still found should Redis then lose the job.
                archive.put_manifest(&manifest).await?;
            }
            let part = self
                .write_part(archive, job, &meta.owner, next_n, &chunk)
                .await?;
            let last_n = part.end_n() - 1;
            let last_id = part.last_id;
            manifest.stored += chunk.iter().map(|e| e.json.len() as u64).sum::<u64>();
            manifest.parts.push(part);
            manifest.entries = last_n;
            manifest.describe(meta);
            archive.put_manifest(&manifest).await?;
            self.store
                .archived_upto(job, &meta.generation, last_n, last_id, manifest.stored)
                .await?;
            metrics::time(Timing::ArchiveLag, Duration::from_millis(waited));
            written += 1;
        }
    }

    /// Writes `entries` (numbered from `first_n` when the store did not number them) as
    /// a segment.
    async fn write_part(
        &self,
        archive: &Archive,
        job: &JobId,
        owner: &str,
        first_n: u64,
        entries: &[StoredEntry],
    ) -> Result<Part, VisitError> {
        let first_n = entries.first().and_then(StoredEntry::n).unwrap_or(first_n);
        let file = segment_file(first_n);
        let mut encoder = PartEncoder::new(first_n);
        let mut body = Vec::with_capacity(entries.iter().map(|e| e.json.len() + 40).sum());
        for entry in entries {
            encoder.push(entry, &mut body);
        }
        let mut upload = archive.upload(job, &file, owner).await?;
        if let Err(e) = upload.write(&body).await {
            upload.abort().await;
            return Err(e.into());
        }
        upload.finish().await?;
        encoder
            .finish(file)
            .ok_or_else(|| VisitError::Archive(ArchiveError::Corrupt("empty segment".into())))
    }

    /// Merges the job's archived parts and, when `meta` says the job is still in Redis,
    /// the rest of its stream into `build.jsonl`; the manifest then lists it alone and
    /// says the archive is complete. The old segments are removed last.
    async fn merge(
        &self,
        archive: &Archive,
        job: &JobId,
        mut manifest: Manifest,
        meta: Option<&JobMeta>,
    ) -> Result<Archived, VisitError> {
        let owner = meta.map_or(manifest.owner.clone(), |m| m.owner.clone());
        let mut upload = archive.upload(job, LOG_FILE, &owner).await?;
        let mut encoder = PartEncoder::new(manifest.first_n());
        let filled = self
            .fill(archive, job, &manifest, meta, &mut upload, &mut encoder)
            .await;
        if let Err(e) = filled {
            upload.abort().await;
            return Err(e);
        }
        let uploaded = upload.finish().await?;
        let old: Vec<String> = manifest
            .parts
            .iter()
            .map(|p| p.file.clone())
            .filter(|f| f != LOG_FILE)
            .collect();
        let next_n = encoder.next_n();
        let bytes = encoder.bytes();
        manifest.parts = encoder.finish(LOG_FILE.to_owned()).into_iter().collect();
        manifest.entries = next_n - 1;
        if let Some(meta) = meta {
            manifest.describe(meta);
        }
        manifest.complete = true;
        archive.put_manifest(&manifest).await?;
        if let Err(e) = archive.remove(job, &old).await {
            tracing::warn!(error = %e, "merged segments not removed");
        }
        Ok(Archived {
            entries: manifest.entries,
            bytes,
            parts: uploaded.parts,
        })
    }

    /// Streams the archived parts, then the stream's entries after them, into `upload`.
    async fn fill(
        &self,
        archive: &Archive,
        job: &JobId,
        manifest: &Manifest,
        meta: Option<&JobMeta>,
        upload: &mut Upload,
        encoder: &mut PartEncoder,
    ) -> Result<(), VisitError> {
        let mut chunk = Vec::with_capacity(256 * 1024);
        for part in &manifest.parts {
            let entries = archive.range(manifest, part.first_n, part.end_n()).await?;
            chunk.clear();
            for entry in &entries {
                encoder.push(entry, &mut chunk);
            }
            upload.write(&chunk).await?;
        }
        let Some(meta) = meta else { return Ok(()) };
        let mut after = manifest.last_id().unwrap_or(EntryId { ms: 0, seq: 0 });
        while encoder.next_n() <= meta.entries {
            let page = self
                .store
                .entries_after(job, after, self.settings.page_entries)
                .await?;
            let Some(last) = page.last() else {
                tracing::warn!(
                    from = encoder.next_n(),
                    to = meta.entries,
                    "entries missing from Redis at the end of the job"
                );
                break;
            };
            continues(encoder.next_n(), &page[0])?;
            after = last.id;
            chunk.clear();
            for entry in &page {
                encoder.push(entry, &mut chunk);
            }
            upload.write(&chunk).await?;
        }
        Ok(())
    }
}

/// The manifest a visit of a job that Redis still holds continues from: the archive's
/// when it is this job's; an empty one for a job with nothing archived yet, or when the
/// manifest is an earlier job's under the same id; and when it is missing or damaged,
/// the one its segments give ([`Archive::recover_manifest`]: Redis may have trimmed
/// what they hold, and a log must not restart at the stream's oldest entry).
async fn manifest_for(
    archive: &Archive,
    job: &JobId,
    meta: &JobMeta,
    read: Result<Option<Manifest>, ArchiveError>,
) -> Result<Manifest, ArchiveError> {
    match read {
        Ok(Some(manifest)) if manifest.generation == meta.generation => return Ok(manifest),
        Ok(Some(_)) => return Ok(Manifest::new(job, meta)),
        Ok(None) => {}
        Err(ArchiveError::Corrupt(why)) => {
            tracing::warn!(%why, "the manifest is damaged; making it again from the segments");
        }
        Err(e) => return Err(e),
    }
    let manifest = archive.recover_manifest(job, meta).await?;
    if !manifest.parts.is_empty() {
        archive.put_manifest(&manifest).await?;
        tracing::warn!(
            segments = manifest.parts.len(),
            entries = manifest.entries,
            "manifest made again from the segments"
        );
    }
    Ok(manifest)
}

/// Checks that `entry`, the oldest one Redis gives past the archive, is entry `next_n`:
/// a later one means the entries between are in neither tier (a segment lost or
/// damaged after Redis was trimmed below it). The visit stops with an error rather
/// than write a log with a hole; Redis keeps everything it has meanwhile.
fn continues(next_n: u64, entry: &StoredEntry) -> Result<(), VisitError> {
    match entry.n() {
        Some(n) if n > next_n => Err(VisitError::Archive(ArchiveError::Corrupt(format!(
            "entries {next_n} to {} are neither archived nor in Redis",
            n - 1
        )))),
        _ => Ok(()),
    }
}

/// Why a visit stopped.
#[derive(Debug)]
enum VisitError {
    Store(StoreError),
    Archive(ArchiveError),
}

impl From<StoreError> for VisitError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<ArchiveError> for VisitError {
    fn from(e: ArchiveError) -> Self {
        Self::Archive(e)
    }
}

impl VisitError {
    fn for_job(self, job: &JobId) -> ArchiverError {
        match self {
            Self::Store(e) => ArchiverError::Store(e),
            Self::Archive(source) => ArchiverError::Archive {
                job: job.clone(),
                source,
            },
        }
    }
}

/// The invocation's deadline as an [`Instant`]; `None` when unknown or already past
/// (local emulators report one in 1970).
pub fn deadline(context: &Context) -> Option<Instant> {
    let deadline = UNIX_EPOCH + Duration::from_millis(context.deadline);
    let left = deadline.duration_since(SystemTime::now()).ok()?;
    Some(Instant::now() + left)
}

/// `logstream dev`'s in-process archiving: sweeps the queue every `every`, at once when
/// `wake` is notified (ingest: a segment is due, or a job ended), and again straight
/// away while a sweep leaves due jobs behind. Errors are logged when they start and when
/// they stop, not on every tick.
pub fn spawn_local_sweeper(
    archiver: Archiver,
    every: Duration,
    wake: Option<std::sync::Arc<tokio::sync::Notify>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut more = false;
        loop {
            if !more {
                let woken = async {
                    match &wake {
                        Some(wake) => wake.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = woken => {}
                }
            }
            more = false;
            match archiver.sweep(None).await {
                Ok(report) => {
                    more = report.more && report.failed.is_empty() && report.busy.is_empty();
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
