//! The ingest function: the pipeline side of logstream.
//!
//! | route | does |
//! |---|---|
//! | `POST /jobs` | creates a job, returns its ingest token |
//! | `POST /jobs/{id}/logs` | appends a batch of lines (JSON or `text/plain`) |
//! | `POST /jobs/{id}/events` | appends a stage event |
//! | `PUT /jobs/{id}/status` | moves the job through its states |
//! | `POST /jobs/{id}/secrets` | registers more secrets for the rest of the job |
//!
//! A batch is parsed ([`logstream_core::batch`]) and sanitized completely before
//! Redis is touched, then appended by one script in one round trip: it is stored whole
//! or not at all.
//!
//! A job's owner, token hash and secrets never change after creation, so they are
//! cached per process ([`JobCache`]): the hot path (a batch for a job this instance has
//! seen) is a single Redis round trip. The append script checks the job's `generation`
//! so a cached entry for an expired-and-recreated job id is noticed and reloaded.
//!
//! After a batch or a status change is stored, the job's WebSocket connections (read in
//! the same round trip) get it through [`push`], within a small time bound.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod push;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{post, put};
use axum::{Json, Router};
use http::{HeaderMap, HeaderValue, StatusCode, header::CONTENT_TYPE};
use serde::{Deserialize, Serialize};

use logstream_core::batch::{BodyFormat, LineBatch, MAX_TS, RawLine, parse_body};
use logstream_core::entries;
use logstream_core::ids::random_hex;
use logstream_core::ids::{EntryId, JobId};
use logstream_core::markers::Open;
use logstream_core::model::{
    Ending, EntryBody, JobStatus, LineStream, NewEntry, StageStatus, StoredEntry, now_ms,
    numbered_json,
};
use logstream_core::sanitize::Sanitizer;
use logstream_shared::archive::{Archive, ArchiveError};
use logstream_shared::auth::pipeline::{
    IngestKey, bearer, new_ingest_token, token_hash, token_hash_matches,
};
use logstream_shared::clients::Clients;
use logstream_shared::config::ConfigError;
use logstream_shared::metrics::{self, Counter, Timing};
use logstream_shared::store::{
    AppendBatch, AppendOutcome, Appended, LogStore, NewJob, SecretsOutcome, Socket, StatusOutcome,
    StoreError, ToAppend,
};
use logstream_shared::web::error::ApiError;
use logstream_shared::web::{ApiQuery, BodyBytes, JobPath, finish, parse_json};

use push::{WsPush, done_message, entries_messages};

pub use logstream_core::entries::{MAX_NAME_LEN, MAX_SECRET_LEN, MAX_SECRETS, MIN_SECRET_LEN};
/// Longest organisation id.
pub const MAX_ORG_LEN: usize = 128;

/// Everything the ingest routes share, built once per process.
pub struct IngestState {
    store: LogStore,
    key: IngestKey,
    jobs: JobCache,
    push: Option<WsPush>,
    /// Notified when a job's segment is due and the archiver runs in this process.
    wake_archiver: Option<Arc<Notify>>,
    /// Asked whether a job id Redis does not know is still taken by an archived job.
    archive: Option<Archive>,
    /// Lines keep their colours as `ansi` (`LOGSTREAM_KEEP_COLOR`).
    keep_color: bool,
    /// Build markers are read (`LOGSTREAM_MARKERS`).
    markers: bool,
}

impl IngestState {
    /// State without WebSocket push.
    pub fn new(store: LogStore, key: IngestKey) -> Arc<Self> {
        Self::with_push(store, key, None)
    }

    /// State that pushes stored entries to the jobs' WebSocket connections.
    pub fn with_push(store: LogStore, key: IngestKey, push: Option<WsPush>) -> Arc<Self> {
        Arc::new(Self {
            store,
            key,
            jobs: JobCache::default(),
            push,
            wake_archiver: None,
            archive: None,
            keep_color: true,
            markers: true,
        })
    }

    /// Stores lines' colours as `ansi`, or not (`LOGSTREAM_KEEP_COLOR=0`).
    pub fn keeping_color(mut self: Arc<Self>, keep: bool) -> Arc<Self> {
        if let Some(state) = Arc::get_mut(&mut self) {
            state.keep_color = keep;
        }
        self
    }

    /// Reads build markers in lines, or not (`LOGSTREAM_MARKERS=0`).
    pub fn reading_markers(mut self: Arc<Self>, read: bool) -> Arc<Self> {
        if let Some(state) = Arc::get_mut(&mut self) {
            state.markers = read;
        }
        self
    }

    /// Notifies `wake` when a job's segment becomes due (the archiver is in this
    /// process).
    pub fn waking_archiver(mut self: Arc<Self>, wake: Option<Arc<Notify>>) -> Arc<Self> {
        if let Some(state) = Arc::get_mut(&mut self) {
            state.wake_archiver = wake;
        }
        self
    }

    /// Keeps the ids of archived jobs taken once Redis has forgotten them (`POST /jobs`
    /// with such an id is 409).
    pub fn checking_archive(mut self: Arc<Self>, archive: Option<Archive>) -> Arc<Self> {
        if let Some(state) = Arc::get_mut(&mut self) {
            state.archive = archive;
        }
        self
    }

    /// The ingest function's state from the process's [`Clients`]: the store, the
    /// ingest key, and WebSocket push when there is a management endpoint (the
    /// Lambda's `LOGSTREAM_WS_ENDPOINT`, with AWS region and credentials from the
    /// environment; `logstream dev`'s own route, or that variable, locally).
    pub async fn build(clients: &Clients) -> Result<Arc<Self>, ConfigError> {
        let config = clients.config();
        let store = clients.store()?;
        let key = IngestKey::new(config.require_ingest_key()?.expose());
        let bound = Duration::from_millis(config.ws_push_timeout_ms);
        let push = clients
            .ws_management()
            .await
            .map(|client| WsPush::new(client, bound));
        Ok(Self::with_push(store, key, push)
            .waking_archiver(clients.archiver_wakeup())
            .checking_archive(clients.archive().await)
            .keeping_color(config.keep_color)
            .reading_markers(config.markers))
    }

    pub fn store(&self) -> &LogStore {
        &self.store
    }
}

/// The ingest routes, without fallbacks (see [`logstream_shared::web::finish`]).
pub fn routes(state: Arc<IngestState>) -> Router {
    Router::new()
        .route("/jobs", post(create_job))
        .route("/jobs/{id}/logs", post(post_logs))
        .route("/jobs/{id}/events", post(post_event))
        .route("/jobs/{id}/status", put(put_status))
        .route("/jobs/{id}/secrets", post(post_secrets))
        .with_state(state)
}

/// The ingest function's whole router, as its Lambda serves it.
pub fn router(state: Arc<IngestState>, cors_origins: &[HeaderValue]) -> Router {
    finish(routes(state), cors_origins)
}

/// A write's credential and the job's settings it was checked against.
struct Authorized {
    settings: Arc<JobSettings>,
    writer: Writer,
}

/// Who writes: the service (the ingest key, any job) or the holder of one job's token
/// (its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Writer {
    Service,
    Job(String),
}

impl Writer {
    fn may_write(&self, settings: &JobSettings) -> bool {
        match self {
            Self::Service => true,
            Self::Job(hash) => token_hash_matches(hash, &settings.token_hash),
        }
    }

    /// After a write found the job's settings changed and read them again: the token
    /// must still be the job's (it is not when the id was taken by a new job).
    fn still_valid(&self, settings: &JobSettings) -> Result<(), ApiError> {
        if self.may_write(settings) {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

fn refused() -> ApiError {
    ApiError::unauthorized("token is not valid for this job")
}

/// What a job's writes need to know: fixed at its creation, but for the secrets that
/// `POST /jobs/{id}/secrets` adds (the write check then changes, and a batch sanitized
/// without them is refused by the append script and sanitized again).
struct JobSettings {
    token_hash: String,
    /// The job's write check (`JobMeta::write_check`) when these settings were read.
    check: String,
    /// The job's literal secrets, which `::add-mask::` adds to.
    secrets: Vec<String>,
    /// Shared by every job without literal secrets (see [`sanitizer_for`]).
    sanitizer: Arc<Sanitizer>,
    /// The groups and sections the job's markers left open, as this instance last
    /// saw them: a batch with markers starts from here, and is made again when the
    /// store has moved on.
    open: Mutex<Open>,
    /// The numbers this instance expects the job's next entries to get (see
    /// [`Numbering`]).
    numbering: Mutex<Numbering>,
}

/// The `n` an instance expects a job's next entry to get: a batch's entries are
/// numbered from here before they go to Redis ([`AppendBatch::first_n`]), each batch
/// taking its range, so that concurrent batches of one job guess apart. A wrong guess
/// costs only what unnumbered entries do (the append script numbers them again).
///
/// Two batches in flight at once may reach Redis in the other order: both are then
/// stored one range off, but the job's count after both is the one guessed, so the
/// batches taken after them still guess right. The counter therefore moves only
/// forward on an answer (the store is ahead: another instance wrote, or a status entry
/// went in), back by a batch's range when that batch stored nothing, and to exactly
/// the store's count when no other batch of the job is in flight: the highest end of
/// the batches answered meanwhile, as answers are handled in any order, not in the
/// order Redis ran the batches. Setting it from every wrong answer instead made each
/// reordering throw off the batches in flight, whose answers then threw off the next
/// ones (over half of the batches of 8 writers on one job were numbered again).
#[derive(Debug)]
struct Numbering {
    next: u64,
    /// Batches that took numbers and have had no answer yet.
    in_flight: usize,
    /// The highest `n` after a batch answered since nothing was last in flight, plus
    /// one (0: none).
    high: u64,
}

impl Numbering {
    fn answered(&mut self) {
        self.in_flight -= 1;
        if self.in_flight == 0 {
            if self.high > 0 {
                self.next = self.high;
            }
            self.high = 0;
        }
    }
}

/// One batch's range of numbers, given back (see [`Numbering`]) unless
/// [`Taken::stored`] says where the store put the batch: dropped on a retry, an error
/// or a cancelled request.
struct Taken {
    settings: Arc<JobSettings>,
    first: u64,
    count: u64,
    answered: bool,
}

impl Taken {
    /// The store numbered `stored` entries of this batch from `first_n`.
    fn stored(mut self, first_n: u64, stored: usize) {
        self.answered = true;
        let end = first_n + stored as u64;
        self.settings.with_numbering(|numbering| {
            numbering.high = numbering.high.max(end);
            numbering.next = numbering.next.max(end);
            numbering.answered();
        });
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let count = self.count;
        self.settings.with_numbering(|numbering| {
            numbering.next = numbering.next.saturating_sub(count).max(1);
            numbering.answered();
        });
    }
}

impl JobSettings {
    /// Takes the numbers of `count` entries, from [`Taken::first`].
    fn take_numbers(self: &Arc<Self>, count: usize) -> Taken {
        let first = self.with_numbering(|numbering| {
            numbering.in_flight += 1;
            let first = numbering.next;
            numbering.next += count as u64;
            first
        });
        Taken {
            settings: Arc::clone(self),
            first,
            count: count as u64,
            answered: false,
        }
    }

    fn with_numbering<T>(&self, change: impl FnOnce(&mut Numbering) -> T) -> T {
        let mut numbering = self
            .numbering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut numbering)
    }

    fn last_open(&self) -> Open {
        self.open
            .lock()
            .map(|open| open.clone())
            .unwrap_or_default()
    }

    fn remember_open(&self, open: Open) {
        if let Ok(mut last) = self.open.lock() {
            *last = open;
        }
    }

    fn new(token_hash: String, check: String, secrets: Vec<String>, entries: u64) -> Self {
        Self {
            sanitizer: sanitizer_for(&secrets),
            token_hash,
            check,
            secrets,
            open: Mutex::default(),
            numbering: Mutex::new(Numbering {
                next: entries + 1,
                in_flight: 0,
                high: 0,
            }),
        }
    }
}

/// The sanitizer every job without registered secrets shares.
fn plain_sanitizer() -> &'static Arc<Sanitizer> {
    static PLAIN: LazyLock<Arc<Sanitizer>> = LazyLock::new(|| Arc::new(Sanitizer::new(&[])));
    &PLAIN
}

/// A job's sanitizer. One with its own secrets weighs 27 kB to about 0.65 MB (100
/// secrets of 4 KiB; `Sanitizer::memory_bytes`), so jobs without secrets share one
/// (about 128 kB per process): the cache then costs a few hundred bytes per job.
fn sanitizer_for(secrets: &[String]) -> Arc<Sanitizer> {
    if secrets.is_empty() {
        plain_sanitizer().clone()
    } else {
        Arc::new(Sanitizer::new(secrets))
    }
}

/// Per-process cache of [`JobSettings`]. Bounded, and cleared when full, which only
/// costs one extra read per active job: at most [`JOB_CACHE_CAP`] jobs, whose own
/// sanitizers (and the secrets they were built from) weigh at most
/// [`JOB_CACHE_OWN_SANITIZER_BYTES`] together. A job
/// that has ended is dropped: it takes no more writes. Without these bounds a warm
/// instance grew by ~70 kB per job it had seen, past a 256 MB Lambda's memory at a
/// few thousand jobs (found by `logstream soak`).
#[derive(Default)]
struct JobCache {
    map: Mutex<CachedJobs>,
}

#[derive(Default)]
struct CachedJobs {
    jobs: HashMap<JobId, Arc<JobSettings>>,
    /// Bytes of the sanitizers that are the entries' own.
    own: usize,
}

const JOB_CACHE_CAP: usize = 4096;
const JOB_CACHE_OWN_SANITIZER_BYTES: usize = 32 * 1024 * 1024;

/// The bytes of `settings`' sanitizer and secrets when it is the job's own, else 0.
fn own_sanitizer_bytes(settings: &JobSettings) -> usize {
    if Arc::ptr_eq(&settings.sanitizer, plain_sanitizer()) {
        0
    } else {
        settings.sanitizer.memory_bytes() + settings.secrets.iter().map(String::len).sum::<usize>()
    }
}

impl JobCache {
    fn get(&self, job: &JobId) -> Option<Arc<JobSettings>> {
        self.map.lock().ok()?.jobs.get(job).cloned()
    }

    fn put(&self, job: &JobId, settings: Arc<JobSettings>) {
        if let Ok(mut map) = self.map.lock() {
            let own = own_sanitizer_bytes(&settings);
            if map.jobs.len() >= JOB_CACHE_CAP || map.own + own > JOB_CACHE_OWN_SANITIZER_BYTES {
                map.jobs.clear();
                map.own = 0;
            }
            if let Some(old) = map.jobs.insert(job.clone(), settings) {
                map.own -= own_sanitizer_bytes(&old);
            }
            map.own += own;
        }
    }

    fn forget(&self, job: &JobId) {
        if let Ok(mut map) = self.map.lock()
            && let Some(old) = map.jobs.remove(job)
        {
            map.own -= own_sanitizer_bytes(&old);
        }
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        self.map.lock().map_or((0, 0), |m| (m.jobs.len(), m.own))
    }
}

impl IngestState {
    async fn load_settings(&self, job: &JobId) -> Result<Option<Arc<JobSettings>>, StoreError> {
        let Some(meta) = self.store.job_meta(job).await? else {
            self.jobs.forget(job);
            return Ok(None);
        };
        let settings = Arc::new(JobSettings::new(
            meta.token_hash.clone(),
            meta.write_check(),
            meta.secrets,
            meta.entries,
        ));
        // An ended job takes no more writes: not worth keeping.
        if !meta.status.is_terminal() {
            self.jobs.put(job, settings.clone());
        }
        Ok(Some(settings))
    }

    /// Checks the bearer credential against `job` and returns the job's settings.
    /// The ingest key may write to any job; a job token only to its own job. Someone
    /// holding neither learns nothing about which jobs exist (401 either way). A token
    /// is checked against the settings this instance cached for the job when it has
    /// them; a write that finds the job recreated since (its write check `stale`)
    /// checks it again ([`Writer::still_valid`]).
    async fn authorize(&self, headers: &HeaderMap, job: &JobId) -> Result<Authorized, ApiError> {
        self.authorize_with(headers, job, true).await
    }

    /// [`IngestState::authorize`] against the job's settings as Redis has them now:
    /// for the routes whose scripts have no write check (status, secrets), so that a
    /// job recreated under the same id is not moved by the old job's token.
    async fn authorize_fresh(
        &self,
        headers: &HeaderMap,
        job: &JobId,
    ) -> Result<Authorized, ApiError> {
        self.authorize_with(headers, job, false).await
    }

    async fn authorize_with(
        &self,
        headers: &HeaderMap,
        job: &JobId,
        cached: bool,
    ) -> Result<Authorized, ApiError> {
        let token =
            bearer(headers).ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let writer = if self.key.matches(token) {
            Writer::Service
        } else {
            Writer::Job(token_hash(token))
        };
        if cached
            && let Some(settings) = self.jobs.get(job)
            && writer.may_write(&settings)
        {
            return Ok(Authorized { settings, writer });
        }
        // Not cached, or the token did not match a possibly outdated entry: read again.
        match self.load_settings(job).await? {
            Some(settings) if writer.may_write(&settings) => Ok(Authorized { settings, writer }),
            None if writer == Writer::Service => Err(ApiError::job_not_found()),
            _ => Err(refused()),
        }
    }

    /// Redis forgets a finished job after its TTL; the archive keeps it, and so its
    /// id stays taken: a new job under it would hide the archived log from its readers,
    /// have the archiver write a new manifest over it, and let the old job's share
    /// links read the new one. An archive that cannot be asked is a 503 (a retry
    /// creates the job), never a guess; one whose manifest is damaged holds the job.
    async fn check_not_archived(&self, job: &JobId) -> Result<(), ApiError> {
        let Some(archive) = &self.archive else {
            return Ok(());
        };
        match archive.manifest(job).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) | Err(ArchiveError::Corrupt(_)) => Err(job_exists()),
            Err(e) => {
                tracing::warn!(error = %e, "the archive could not be asked whether the job id is free");
                Err(ApiError::unavailable(
                    "the archive is unavailable; the job id cannot be checked, retry",
                ))
            }
        }
    }

    /// Makes `lines` into entries ([`entries::build`]) and appends them as one batch,
    /// reloading the job's settings if they changed since they were cached (the job
    /// was recreated, or took secrets), and making the batch again from the job's
    /// private-key carry and open groups when it did not start where the job's last
    /// batch left them (that batch may have landed on another instance).
    async fn append_lines(
        &self,
        job: &JobId,
        Authorized {
            mut settings,
            writer,
        }: Authorized,
        seq: Option<u64>,
        lines: &[RawLine<'_>],
    ) -> Result<(AppendOutcome, Vec<ToAppend>), ApiError> {
        let options = entries::Options {
            colour: self.keep_color,
            markers: self.markers,
            now: now_ms(),
        };
        // Most batches start outside a private key and have no markers.
        let mut carry = 0;
        let mut open = settings.last_open();
        for _ in 0..4 {
            let built = entries::build(
                entries::Job {
                    sanitizer: &settings.sanitizer,
                    secrets: &settings.secrets,
                    carry,
                    open: &open,
                },
                lines,
                options,
            );
            let batch: Vec<ToAppend> = built.entries.iter().map(ToAppend::new).collect();
            // As late as can be: batches of one job sent at once reach Redis in the
            // order they took their numbers the more often, the less lies between.
            let numbers = settings.take_numbers(batch.len());
            let first_n = numbers.first;
            let outcome = self
                .store
                .append_batch(
                    job,
                    &AppendBatch {
                        check: &settings.check,
                        seq,
                        carry: Some((carry, built.carry)),
                        open: built
                            .open
                            .as_ref()
                            .map(|after| (open.to_stored(), after.to_stored())),
                        masks: &built.masks,
                        first_n: Some(first_n),
                        entries: &batch,
                    },
                )
                .await?;
            match outcome {
                AppendOutcome::Carry { pem, open: stored } => {
                    carry = pem;
                    open = Open::from_stored(&stored);
                }
                AppendOutcome::Stale => {
                    settings = self
                        .load_settings(job)
                        .await?
                        .ok_or_else(ApiError::job_not_found)?;
                    writer.still_valid(&settings)?;
                    open = settings.last_open();
                }
                outcome => {
                    if let AppendOutcome::Appended(appended) = &outcome {
                        if appended.ids.is_some() {
                            numbers.stored(
                                appended.first_n,
                                appended.accepted + usize::from(appended.notice),
                            );
                        }
                        metrics::count(Counter::RedactedLines, u64::from(built.redacted));
                        if let Some(after) = built.open {
                            settings.remember_open(after);
                        }
                        // The job's write check changed: this instance reads it again
                        // on its next write, as others learn from the append script.
                        if !built.masks.is_empty() {
                            self.jobs.forget(job);
                        }
                    }
                    return Ok((outcome, batch));
                }
            }
        }
        Err(ApiError::conflict(
            "job_changed",
            "the job was recreated or written to concurrently during the request; retry",
        ))
    }
}

impl IngestState {
    /// Pushes stored entries (`count` of them, with ids `first..=last`; `stored`, their
    /// numbered JSON, when the caller knows it) and the `done` message if the job ended,
    /// to `connections`. Within the push bound; never fails the request.
    async fn push(
        &self,
        job: &JobId,
        connections: &[Socket],
        stored: Stored,
        done: Option<Ending>,
    ) {
        let Some(push) = &self.push else { return };
        if connections.is_empty() {
            return;
        }
        let Stored {
            first,
            last,
            count,
            json,
        } = stored;
        let known = json.and_then(|json| {
            consecutive_ids(first, last, count).map(|ids| {
                ids.into_iter()
                    .zip(json)
                    .map(|(id, json)| StoredEntry { id, json })
                    .collect::<Vec<_>>()
            })
        });
        let entries = match known {
            Some(entries) => entries,
            // Ids skipped a millisecond inside the batch, or the store wrote an entry
            // of its own (the size limit's notice): read them back.
            None => match self
                .store
                .entries_after(job, just_before(first), count)
                .await
            {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "websocket push skipped: batch ids unreadable");
                    return;
                }
            },
        };
        let mut messages = entries_messages(&entries);
        if let Some(ending) = done {
            messages.push(done_message(&ending));
        }
        push.deliver(&self.store, job, connections, &messages).await;
    }

    /// Makes the job due for the archiver at once (its unarchived entries fill a
    /// segment) and wakes an archiver in this process. One more round trip, once per
    /// segment; a failure only leaves the segment to the archiver's next scheduled
    /// visit, so it is logged, not answered.
    async fn segment_due(&self, job: &JobId) {
        if let Err(e) = self.store.schedule_archive(job, 0).await {
            tracing::warn!(error = %e, "segment due, but the archive queue was not updated");
        }
        if let Some(wake) = &self.wake_archiver {
            wake.notify_one();
        }
    }
}

/// Entries just stored, for [`IngestState::push`].
struct Stored {
    first: EntryId,
    last: EntryId,
    count: usize,
    /// Their numbered JSON, when known without reading them back.
    json: Option<Vec<String>>,
}

impl Stored {
    /// What `appended` stored of `batch`: its first `accepted` entries, numbered from
    /// `first_n`, then the store's own notice (whose JSON only Redis has). `None` when
    /// nothing was stored.
    fn of(appended: &Appended, batch: &[ToAppend]) -> Option<Self> {
        let (first, last) = appended.ids?;
        let json = (!appended.notice).then(|| {
            batch[..appended.accepted]
                .iter()
                .zip(appended.first_n..)
                .map(|(entry, n)| numbered_json(&entry.json, n))
                .collect()
        });
        Some(Self {
            first,
            last,
            count: appended.accepted + usize::from(appended.notice),
            json,
        })
    }
}

/// The ids of an `n`-entry batch from `first` to `last` when they are consecutive in
/// one millisecond, which is how Redis numbers entries added by one script (its clock is
/// frozen while a script runs); `None` otherwise.
fn consecutive_ids(first: EntryId, last: EntryId, n: usize) -> Option<Vec<EntryId>> {
    let n = u64::try_from(n).ok()?;
    (n > 0 && first.ms == last.ms && last.seq.checked_sub(first.seq)? + 1 == n).then(|| {
        (first.seq..=last.seq)
            .map(|seq| EntryId { ms: first.ms, seq })
            .collect()
    })
}

/// The largest stream id below `id`.
fn just_before(id: EntryId) -> EntryId {
    match id.seq {
        0 => EntryId {
            ms: id.ms.saturating_sub(1),
            seq: u64::MAX,
        },
        seq => EntryId {
            ms: id.ms,
            seq: seq - 1,
        },
    }
}

/// 400 unless every secret is [`MIN_SECRET_LEN`]–[`MAX_SECRET_LEN`] bytes.
fn check_secrets(secrets: &[String]) -> Result<(), ApiError> {
    match secrets
        .iter()
        .position(|s| s.len() < MIN_SECRET_LEN || s.len() > MAX_SECRET_LEN)
    {
        Some(bad) => Err(ApiError::bad_request(
            "invalid_secrets",
            format!(
                "secrets[{bad}] must be {MIN_SECRET_LEN}-{MAX_SECRET_LEN} bytes (shorter would redact ordinary text)"
            ),
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
struct AddSecrets {
    secrets: Vec<String>,
}

#[derive(Debug, Serialize)]
struct SecretsAdded {
    /// How many of the request's secrets were new to the job.
    registered: usize,
}

/// `POST /jobs/{id}/secrets`: more secrets for the rest of a running job, with the
/// same credentials as its writes. Every instance's next batch of the job is
/// sanitized with them (the write check changed; see [`JobSettings`]); lines stored
/// before are not rewritten.
#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn post_secrets(
    State(state): State<Arc<IngestState>>,
    JobPath(job): JobPath,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<impl IntoResponse, ApiError> {
    state.authorize_fresh(&headers, &job).await?;
    let req: AddSecrets = parse_json(&body)?;
    check_secrets(&req.secrets)?;
    if req.secrets.len() > MAX_SECRETS {
        return Err(too_many_secrets());
    }
    let outcome = state
        .store
        .add_secrets(&job, &req.secrets, MAX_SECRETS)
        .await?;
    // This instance reads the job again on its next write; others learn it from the
    // append script.
    state.jobs.forget(&job);
    match outcome {
        SecretsOutcome::Added(registered) => {
            tracing::info!(registered, "secrets registered");
            Ok(Json(SecretsAdded { registered }))
        }
        SecretsOutcome::Full(_) => Err(too_many_secrets()),
        SecretsOutcome::NotFound => Err(ApiError::job_not_found()),
        SecretsOutcome::Terminal => Err(ApiError::conflict(
            "job_finished",
            "the job has ended; it takes no more secrets",
        )),
    }
}

fn job_exists() -> ApiError {
    ApiError::conflict(
        "job_exists",
        "a job with this id exists (or was deleted lately: its id stays taken for 8 days)",
    )
}

fn too_many_secrets() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_secrets",
        format!("a job has at most {MAX_SECRETS} secrets"),
    )
}

#[derive(Debug, Deserialize)]
struct CreateJob {
    job_id: Option<String>,
    owner: String,
    /// The organisation whose members read the job too.
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    secrets: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Created {
    job_id: JobId,
    ingest_token: String,
    status: JobStatus,
}

#[tracing::instrument(skip_all)]
async fn create_job(
    State(state): State<Arc<IngestState>>,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<impl IntoResponse, ApiError> {
    let token = bearer(&headers).ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    if !state.key.matches(token) {
        return Err(ApiError::unauthorized("creating jobs needs the ingest key"));
    }
    let req: CreateJob = parse_json(&body)?;
    let job = match &req.job_id {
        Some(raw) => {
            JobId::parse(raw).map_err(|e| ApiError::bad_request("invalid_job_id", e.to_string()))?
        }
        None => JobId::generate(),
    };
    let owner = req.owner.trim();
    if owner.is_empty() || owner.len() > MAX_NAME_LEN || owner.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_owner",
            format!("owner must be 1-{MAX_NAME_LEN} characters without control characters"),
        ));
    }
    if let Some(org) = &req.org
        && (org.is_empty()
            || org.len() > MAX_ORG_LEN
            || !org
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        return Err(ApiError::bad_request(
            "invalid_org",
            format!("org must be 1-{MAX_ORG_LEN} characters of A-Z, a-z, 0-9, _ and -"),
        ));
    }
    if req.secrets.len() > MAX_SECRETS {
        return Err(too_many_secrets());
    }
    check_secrets(&req.secrets)?;
    let ingest_token = new_ingest_token();
    let hash = token_hash(&ingest_token);
    let generation = random_hex(8);
    let new = NewJob {
        owner,
        token_hash: &hash,
        secrets: &req.secrets,
        generation: &generation,
        created_at: now_ms(),
        org: req.org.as_deref(),
    };
    if req.job_id.is_some() {
        state.check_not_archived(&job).await?;
    }
    if !state.store.create_job(&job, &new).await? {
        return Err(job_exists());
    }
    state.jobs.put(
        &job,
        Arc::new(JobSettings::new(hash, generation, req.secrets, 0)),
    );
    tracing::info!(job_id = %job, "job created");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            job_id: job,
            ingest_token,
            status: JobStatus::Queued,
        }),
    ))
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    stream: Option<String>,
}

#[derive(Debug, Serialize)]
struct Accepted {
    accepted: usize,
    /// Lines past the job's size limit, not stored.
    #[serde(skip_serializing_if = "is_zero")]
    dropped: usize,
    first_id: Option<EntryId>,
    last_id: Option<EntryId>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn post_logs(
    State(state): State<Arc<IngestState>>,
    JobPath(job): JobPath,
    ApiQuery(query): ApiQuery<LogsQuery>,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Accepted>, ApiError> {
    let started = std::time::Instant::now();
    let authorized = state.authorize(&headers, &job).await?;
    let format = match body_kind(&headers)? {
        BodyKind::PlainText => BodyFormat::PlainText(match query.stream.as_deref() {
            None => LineStream::Stdout,
            Some(raw) => raw.parse().map_err(|()| {
                ApiError::bad_request("invalid_stream", "stream must be stdout, stderr or system")
            })?,
        }),
        BodyKind::Json => BodyFormat::Json,
    };
    let LineBatch { lines, seq } = parse_body(&body, format)?;
    let (outcome, batch) = state.append_lines(&job, authorized, seq, &lines).await?;
    match outcome {
        AppendOutcome::Appended(appended) => {
            if appended.segment_due {
                state.segment_due(&job).await;
            }
            // Most jobs have no WebSocket viewer: no JSON is renumbered for nobody.
            if !appended.connections.is_empty()
                && let Some(stored) = Stored::of(&appended, &batch)
            {
                state.push(&job, &appended.connections, stored, None).await;
            }
            if appended.notice {
                tracing::warn!(dropped = appended.dropped, "job reached its size limit");
            }
            metrics::count(Counter::Batches, 1);
            metrics::count(Counter::LinesIngested, appended.accepted as u64);
            metrics::count(Counter::LinesDropped, appended.dropped as u64);
            // The lines dropped past the size limit are the batch's last ones.
            let lines: Vec<u64> = batch
                .iter()
                .map(|entry| entry.text_bytes)
                .filter(|&bytes| bytes > 0)
                .collect();
            let kept = lines.len().saturating_sub(appended.dropped);
            metrics::count(Counter::BytesIngested, lines[..kept].iter().sum());
            metrics::time(Timing::BatchLatency, started.elapsed());
            Ok(Json(Accepted {
                accepted: appended.accepted,
                dropped: appended.dropped,
                first_id: appended.ids.map(|(first, _)| first),
                last_id: appended.ids.map(|(_, last)| last),
                duplicate: false,
            }))
        }
        AppendOutcome::Duplicate => Ok(Json(Accepted {
            accepted: 0,
            dropped: 0,
            first_id: None,
            last_id: None,
            duplicate: true,
        })),
        AppendOutcome::Terminal(status) => {
            state.jobs.forget(&job);
            Err(finished(status))
        }
        AppendOutcome::NotFound | AppendOutcome::Stale | AppendOutcome::Carry { .. } => {
            Err(ApiError::job_not_found())
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How a `POST …/logs` body is encoded, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    PlainText,
}

/// The body's kind from its media type (the part before any `;` parameters, compared
/// whole, so `text/plainjunk` is not text/plain): `text/plain` is lines; none,
/// `application/json`, any `+json` type, and `application/x-www-form-urlencoded`
/// (what `curl -d` sends unasked) are a JSON batch; anything else is 415.
fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "text/plain" => Ok(BodyKind::PlainText),
        "application/json" | "application/x-www-form-urlencoded" => Ok(BodyKind::Json),
        json if json.starts_with("application/") && json.ends_with("+json") => Ok(BodyKind::Json),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json or text/plain",
        )),
    }
}

fn finished(status: JobStatus) -> ApiError {
    ApiError::conflict(
        "job_finished",
        format!("the job has finished ({status}); it takes no more writes"),
    )
}

#[derive(Debug, Deserialize)]
struct EventIn {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    status: StageStatus,
    ts: Option<u64>,
}

#[derive(Debug, Serialize)]
struct EventStored {
    id: EntryId,
}

#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn post_event(
    State(state): State<Arc<IngestState>>,
    JobPath(job): JobPath,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Json<EventStored>, ApiError> {
    let Authorized { settings, writer } = state.authorize(&headers, &job).await?;
    let event: EventIn = parse_json(&body)?;
    if event.kind != "stage" {
        return Err(ApiError::bad_request(
            "invalid_event",
            "type must be \"stage\"",
        ));
    }
    let name = event.name.trim();
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(
            "invalid_event",
            format!("name must be 1-{MAX_NAME_LEN} bytes"),
        ));
    }
    if event.ts.is_some_and(|ts| ts > MAX_TS) {
        return Err(ApiError::bad_request(
            "invalid_ts",
            format!("ts must be at most {MAX_TS} (milliseconds since the epoch)"),
        ));
    }
    // Sanitized with the job's secrets; once more if they changed meanwhile.
    let mut settings = settings;
    let mut reloaded = false;
    let (entry, appended) = loop {
        let entry = NewEntry {
            ts: event.ts.unwrap_or_else(now_ms),
            body: EntryBody::Stage {
                name: settings.sanitizer.batch().line(name).into_owned(),
                status: event.status,
            },
        }
        .to_stored_json();
        let outcome = state
            .store
            .append(&job, &settings.check, None, std::slice::from_ref(&entry))
            .await?;
        match outcome {
            AppendOutcome::Stale if !reloaded => {
                reloaded = true;
                settings = state
                    .load_settings(&job)
                    .await?
                    .ok_or_else(ApiError::job_not_found)?;
                writer.still_valid(&settings)?;
            }
            outcome => break (entry, outcome),
        }
    };
    match appended {
        AppendOutcome::Appended(appended) => {
            let Some((first, _)) = appended.ids else {
                return Err(ApiError::unavailable("the event was not stored"));
            };
            let stored = Stored {
                first,
                last: first,
                count: 1,
                json: Some(vec![numbered_json(&entry, appended.first_n)]),
            };
            state.push(&job, &appended.connections, stored, None).await;
            Ok(Json(EventStored { id: first }))
        }
        AppendOutcome::Terminal(status) => Err(finished(status)),
        AppendOutcome::Stale => {
            state.jobs.forget(&job);
            Err(ApiError::conflict(
                "job_changed",
                "the job was recreated during the request; retry",
            ))
        }
        AppendOutcome::NotFound | AppendOutcome::Duplicate | AppendOutcome::Carry { .. } => {
            Err(ApiError::job_not_found())
        }
    }
}

#[derive(Debug, Deserialize)]
struct StatusIn {
    status: JobStatus,
    #[serde(default)]
    exit_code: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct StatusOut {
    status: JobStatus,
}

/// A status body's `exit_code`: a whole number (of an `i32`, as every OS reports them),
/// and only with a terminal status.
fn exit_code(status: JobStatus, raw: Option<&serde_json::Value>) -> Result<Option<i64>, ApiError> {
    let Some(raw) = raw.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    if !status.is_terminal() {
        return Err(ApiError::bad_request(
            "invalid_exit_code",
            "exit_code goes with a terminal status (ready or failed)",
        ));
    }
    raw.as_i64()
        .filter(|code| i32::try_from(*code).is_ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_exit_code",
                "exit_code must be a whole number from -2147483648 to 2147483647",
            )
        })
}

#[tracing::instrument(skip_all, fields(job_id = %job))]
async fn put_status(
    State(state): State<Arc<IngestState>>,
    JobPath(job): JobPath,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Json<StatusOut>, ApiError> {
    state.authorize_fresh(&headers, &job).await?;
    let request: StatusIn = parse_json(&body)?;
    let status = request.status;
    if status == JobStatus::Queued {
        return Err(ApiError::bad_request(
            "invalid_status",
            "status must be running, ready or failed",
        ));
    }
    let exit_code = exit_code(status, request.exit_code.as_ref())?;
    let ts = now_ms();
    let outcome = state.store.set_status(&job, status, ts, exit_code).await?;
    if status.is_terminal()
        && matches!(outcome, StatusOutcome::Changed { .. } | StatusOutcome::Same)
    {
        state.jobs.forget(&job);
    }
    match outcome {
        StatusOutcome::Changed {
            id,
            n,
            duration_ms,
            connections,
        } => {
            tracing::info!(%status, ?exit_code, ?duration_ms, "job status changed");
            let terminal = status.is_terminal();
            let entry = NewEntry {
                ts,
                body: EntryBody::Status {
                    status,
                    exit_code: exit_code.filter(|_| terminal),
                    duration_ms,
                },
            }
            .to_stored_json();
            let done = terminal.then_some(Ending {
                status,
                exit_code,
                duration_ms,
            });
            let stored = Stored {
                first: id,
                last: id,
                count: 1,
                json: Some(vec![numbered_json(&entry, n)]),
            };
            if terminal && let Some(wake) = &state.wake_archiver {
                wake.notify_one();
            }
            state.push(&job, &connections, stored, done).await;
            Ok(Json(StatusOut { status }))
        }
        // A repeated terminal status: the store has queued the job for archival again
        // if an earlier attempt failed before doing so.
        StatusOutcome::Same => Ok(Json(StatusOut { status })),
        StatusOutcome::Forbidden { current } => Err(ApiError::conflict(
            "invalid_transition",
            format!("a {current} job cannot become {status}"),
        )),
        StatusOutcome::NotFound => Err(ApiError::job_not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_cover_a_batch_in_one_millisecond() {
        let id = |ms, seq| EntryId { ms, seq };
        assert_eq!(
            consecutive_ids(id(5, 2), id(5, 4), 3),
            Some(vec![id(5, 2), id(5, 3), id(5, 4)])
        );
        assert_eq!(consecutive_ids(id(5, 2), id(6, 0), 2), None);
        assert_eq!(consecutive_ids(id(5, 2), id(5, 4), 2), None);
        assert_eq!(just_before(id(5, 0)), id(4, u64::MAX));
        assert_eq!(just_before(id(5, 3)), id(5, 2));
    }

    fn settings(secrets: &[String]) -> Arc<JobSettings> {
        Arc::new(JobSettings::new(
            String::new(),
            String::new(),
            secrets.to_vec(),
            0,
        ))
    }

    /// The number the job's next batch would take.
    fn next(s: &JobSettings) -> u64 {
        s.with_numbering(|numbering| numbering.next)
    }

    #[test]
    fn batches_take_numbers_apart_and_the_counter_follows_the_store() {
        let s = settings(&[]);
        // Two batches of one job in flight at once guess apart.
        let (a, b) = (s.take_numbers(100), s.take_numbers(50));
        assert_eq!((a.first, b.first), (1, 101));
        // Both stored where guessed: the counter stays past them.
        a.stored(1, 100);
        b.stored(101, 50);
        assert_eq!(next(&s), 151);
        // Another instance wrote 5 entries first: stored from 156, not 151.
        s.take_numbers(10).stored(156, 10);
        assert_eq!(next(&s), 166);
        // Right start, but the size limit dropped all but 3 (and added its notice).
        let first = s.take_numbers(10);
        let start = first.first;
        first.stored(start, 4);
        assert_eq!(next(&s), start + 4);
    }

    #[test]
    fn batches_that_reach_redis_in_the_other_order_do_not_throw_off_the_next_ones() {
        let s = settings(&[]);
        let (a, b, c) = (
            s.take_numbers(100),
            s.take_numbers(100),
            s.take_numbers(100),
        );
        // b reached Redis first and was stored where a guessed, then a where b did:
        // the job's count after both is what was guessed, so c still guesses right
        // and so do batches taken meanwhile.
        b.stored(1, 100);
        let d = s.take_numbers(100);
        assert_eq!(d.first, 301);
        a.stored(101, 100);
        c.stored(201, 100);
        d.stored(301, 100);
        assert_eq!(next(&s), 401);
    }

    #[test]
    fn a_batch_that_stored_nothing_gives_its_numbers_back() {
        let s = settings(&[]);
        let (a, b) = (s.take_numbers(100), s.take_numbers(100));
        // a failed (an error, a retry, a cancelled request): b lands where a guessed.
        drop(a);
        assert_eq!(next(&s), 101);
        let c = s.take_numbers(10);
        assert_eq!(c.first, 101);
        b.stored(1, 100);
        c.stored(101, 10);
        assert_eq!(next(&s), 111);
        // The answer lost but the batch stored after all: the next answer is ahead
        // of the counter and moves it on.
        drop(s.take_numbers(10));
        let e = s.take_numbers(10);
        assert_eq!(e.first, 111);
        e.stored(121, 10);
        assert_eq!(next(&s), 131);
    }

    #[test]
    fn with_nothing_in_flight_the_counter_is_the_stores_count() {
        let s = settings(&[]);
        let (a, b) = (s.take_numbers(100), s.take_numbers(100));
        // Behind what was guessed, with b still in flight: it may yet land there.
        a.stored(1, 50);
        assert_eq!(next(&s), 201);
        // The last answer in: exactly the store's count.
        b.stored(51, 100);
        assert_eq!(next(&s), 151);
        // Redis ran c before d, but d's answer is handled first: the store's count is
        // where d ended, not where c, the last answer, did.
        let (c, d) = (s.take_numbers(100), s.take_numbers(100));
        d.stored(251, 100);
        c.stored(151, 100);
        assert_eq!(next(&s), 351);
    }

    #[test]
    fn jobs_without_secrets_share_one_sanitizer() {
        let (a, b) = (settings(&[]), settings(&[]));
        assert!(Arc::ptr_eq(&a.sanitizer, &b.sanitizer));
        assert_eq!(own_sanitizer_bytes(&a), 0);
        assert!(own_sanitizer_bytes(&settings(&["hunter2".into()])) > 0);
    }

    #[test]
    fn the_job_cache_bounds_its_own_sanitizers_and_forgets_ended_jobs() {
        let cache = JobCache::default();
        let id = |n: usize| JobId::parse(&format!("job-{n}")).unwrap();
        for n in 0..1000 {
            cache.put(&id(n), settings(&[]));
        }
        assert_eq!(cache.counts(), (1000, 0), "plain jobs are cheap: kept");
        // Large secret sets: the bound is in bytes, not in jobs.
        let big = |n: usize| -> Vec<String> {
            (0..100)
                .map(|k| format!("{n}-{k}-{}", "s".repeat(4000)))
                .collect()
        };
        let one = own_sanitizer_bytes(&settings(&big(0)));
        assert!(one > 100_000, "a 100-secret sanitizer weighs {one} bytes");
        let fit = JOB_CACHE_OWN_SANITIZER_BYTES / one;
        let mut n = 1000;
        loop {
            let (jobs_before, own_before) = cache.counts();
            cache.put(&id(n), settings(&big(n)));
            n += 1;
            let (jobs, own) = cache.counts();
            assert!(own <= JOB_CACHE_OWN_SANITIZER_BYTES, "{own} bytes kept");
            if jobs < jobs_before {
                assert_eq!(jobs, 1, "cleared at the bound, then the new one");
                assert!(own_before + own > JOB_CACHE_OWN_SANITIZER_BYTES);
                break;
            }
            assert!(
                n <= 1000 + fit + 8,
                "never cleared: {own} bytes in {jobs} jobs"
            );
        }
        cache.put(&id(n - 1), settings(&[]));
        assert_eq!(cache.counts(), (1, 0), "a replaced entry is uncounted");
        cache.put(&id(6000), settings(&["x-secret".into()]));
        cache.forget(&id(6000));
        cache.forget(&id(6000));
        assert_eq!(cache.counts(), (1, 0));
        for n in 0..JOB_CACHE_CAP + 1 {
            cache.put(&id(n), settings(&[]));
        }
        assert!(cache.counts().0 <= JOB_CACHE_CAP);
    }
}
