//! One log across tiers: what every read of a job goes through (history pages, the SSE
//! replay, and later the raw log and search).
//!
//! A job's entries live in two places. Redis holds the live tail: every entry not yet
//! archived, and about `LOGSTREAM_MAXLEN` of the newest beyond that. The archive holds
//! every entry from the first up to the last segment written (`crate::archive`). The
//! archiver trims Redis only below what the archive holds, so together they always
//! cover the whole log, overlapping in between. Entries are numbered densely (`n`), so
//! where Redis's part begins is the number of the stream's oldest entry ([`Head`]), and
//! a page that reaches below it takes the rest from the archive.
//!
//! Redis is read first and answers alone whenever it holds the page, which is every
//! page of a job shorter than the tail: a live job never costs an archive request
//! unless a reader goes back past the tail. Reading Redis before the archive also makes
//! a trim between the two reads harmless: the archive only ever grows, and what it
//! returns past what Redis returned is skipped by number.
//!
//! When a job's keys are gone (its TTL, eviction, a flushed cache) the archive answers
//! alone, job info included, from the manifest ([`JobInfo`]), with `Source::Archive`;
//! unless the job was deleted (its tombstone is in Redis): then it is gone from both.

use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{JobStatus, StoredEntry};

use crate::archive::{Archive, ArchiveError, Manifest};
use crate::auth::ReadableJob;
use crate::store::{Cursor, Head, JobMeta, LogStore, Page, StoreError};

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The job's keys are in Redis (the page may include archived entries).
    Redis,
    /// Redis has forgotten the job: the archive alone.
    Archive,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Archive => "archive",
        }
    }
}

/// A job as a reader sees it, from Redis or, once Redis has forgotten it, from the
/// archive's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub owner: String,
    pub org: Option<String>,
    pub status: JobStatus,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    /// The exit code reported with the terminal status, if any.
    pub exit_code: Option<i64>,
    /// From `running` (or creation) to the terminal status.
    pub duration_ms: Option<u64>,
    /// The whole job is in `build.jsonl`.
    pub archived: bool,
    /// The last entry's number.
    pub entries: u64,
    /// Stored text bytes.
    pub bytes: u64,
    /// The size limit was hit.
    pub truncated: bool,
}

impl From<&JobMeta> for JobInfo {
    fn from(meta: &JobMeta) -> Self {
        Self {
            owner: meta.owner.clone(),
            org: meta.org.clone(),
            status: meta.status,
            created_at: meta.created_at,
            finished_at: meta.finished_at,
            exit_code: meta.exit_code,
            duration_ms: meta.duration_ms,
            archived: meta.archived,
            entries: meta.entries,
            bytes: meta.bytes,
            truncated: meta.truncated,
        }
    }
}

impl From<&Manifest> for JobInfo {
    fn from(manifest: &Manifest) -> Self {
        Self {
            owner: manifest.owner.clone(),
            org: manifest.org.clone(),
            status: manifest.status,
            created_at: manifest.created_at,
            finished_at: manifest.finished_at,
            exit_code: manifest.exit_code,
            duration_ms: manifest.duration_ms,
            archived: manifest.complete,
            entries: manifest.entries,
            bytes: manifest.bytes,
            truncated: manifest.truncated,
        }
    }
}

impl JobInfo {
    /// How the job ended; `None` while it runs.
    pub fn ending(&self) -> Option<logstream_core::model::Ending> {
        logstream_core::model::Ending::of_job(self.status, self.exit_code, self.duration_ms)
    }
}

impl ReadableJob for JobInfo {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }
}

/// A read that failed, by tier.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Redis no longer holds the job's entries before `from`, and the archive's
    /// manifest that lists them is missing or damaged. The archiver makes it again from
    /// the segments on its next visit; until then such a page is an error, never a log
    /// that silently starts at `from`.
    #[error("entries of {job} before {from} are archived, but its manifest is missing or damaged")]
    Unlisted { job: JobId, from: u64 },
}

/// Reads jobs across Redis and the archive. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobLog {
    store: LogStore,
    archive: Option<Archive>,
}

impl JobLog {
    /// Reads over `store`, and `archive` when there is one.
    pub fn new(store: LogStore, archive: Option<Archive>) -> Self {
        Self { store, archive }
    }

    pub fn store(&self) -> &LogStore {
        &self.store
    }

    pub fn archive(&self) -> Option<&Archive> {
        self.archive.as_ref()
    }

    /// The job, from Redis or else the archive; `None` when neither knows it.
    pub async fn info(&self, job: &JobId) -> Result<Option<(JobInfo, Source)>, LogError> {
        if let Some(meta) = self.store.job_meta(job).await? {
            return Ok(Some((JobInfo::from(&meta), Source::Redis)));
        }
        Ok(self
            .manifest(job)
            .await?
            .map(|m| (JobInfo::from(&m), Source::Archive)))
    }

    /// The manifest of a job Redis has forgotten, with the segments it does not list
    /// ([`forgotten`]); `None` when the job was deleted (whatever the archive may still
    /// hold while the deletion finishes).
    async fn manifest(&self, job: &JobId) -> Result<Option<Manifest>, LogError> {
        let Some(archive) = &self.archive else {
            return Ok(None);
        };
        if self.store.tombstone(job).await?.is_some() {
            return Ok(None);
        }
        match archive.manifest(job).await? {
            Some(manifest) => Ok(Some(forgotten(archive, manifest).await?)),
            None => Ok(None),
        }
    }

    /// One page of the job's log (see [`Cursor`]), and the job; `None` when neither
    /// tier knows the job. The caller decides whether the reader may see it.
    pub async fn page(
        &self,
        job: &JobId,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Option<(JobInfo, Source, Page)>, LogError> {
        let limit = limit.max(1);
        let Some((meta, page, head)) = self.store.page(job, cursor, limit).await? else {
            let (Some(archive), Some(manifest)) = (&self.archive, self.manifest(job).await?) else {
                return Ok(None);
            };
            let page = archive.page(&manifest, cursor, limit).await?;
            return Ok(Some((JobInfo::from(&manifest), Source::Archive, page)));
        };
        let info = JobInfo::from(&meta);
        // Where Redis's part of the log begins: its oldest entry, or past the last
        // entry when the stream is empty (never written, or lost while the job's
        // meta survived).
        let redis_from = match head {
            Some(Head { n: Some(n), .. }) => n,
            Some(Head { n: None, .. }) => 1,
            None => meta.entries + 1,
        };
        let Some(archive) = self.archive.as_ref().filter(|_| redis_from > 1) else {
            return Ok(Some((info, Source::Redis, page)));
        };
        let page = Tiers {
            store: &self.store,
            archive,
            job,
            meta: &meta,
            head,
            redis_from,
        }
        .page(cursor, limit, page)
        .await?;
        Ok(Some((info, Source::Redis, page)))
    }

    /// Up to `count` entries after `after`, oldest first, across tiers: the SSE replay.
    /// `None` when neither tier knows the job.
    pub async fn entries_after(
        &self,
        job: &JobId,
        after: EntryId,
        count: usize,
    ) -> Result<Option<Vec<StoredEntry>>, LogError> {
        Ok(self
            .page(job, Cursor::After(after), count)
            .await?
            .map(|(_, _, page)| page.entries))
    }
}

/// Entries read per step of a search.
const SEARCH_STEP: usize = 5000;

/// A page of search results ([`JobLog::search`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The matching entries, chronological.
    pub entries: Vec<StoredEntry>,
    /// Where the search stopped, when there is more log to search in its direction:
    /// the next request goes on from there (`before` it walking back, `after` it
    /// walking forward).
    pub next: Option<EntryId>,
}

impl JobLog {
    /// Up to `limit` `line` entries matching `query` from `cursor` on, in the cursor's
    /// direction (newest first back from `Latest`/`Before`, oldest first forward from
    /// `After`/`At`), over the whole job across tiers, reading at most `budget`
    /// entries; answered chronological. `None` when neither tier knows the job.
    pub async fn search(
        &self,
        job: &JobId,
        query: &logstream_core::search::Query,
        cursor: Cursor,
        limit: usize,
        budget: usize,
    ) -> Result<Option<(JobInfo, Source, Found)>, LogError> {
        let limit = limit.max(1);
        let backward = matches!(cursor, Cursor::Latest | Cursor::Before(_));
        let mut cursor = cursor;
        let mut found: Vec<StoredEntry> = Vec::new();
        let mut read = 0;
        loop {
            let Some((info, source, page)) = self.page(job, cursor, SEARCH_STEP).await? else {
                return Ok(None);
            };
            let more = page.has_more;
            read += page.entries.len();
            let (edge, hits): (Option<EntryId>, Vec<StoredEntry>) = if backward {
                let edge = page.entries.first().map(|e| e.id);
                let mut hits = Vec::new();
                for entry in page.entries.into_iter().rev() {
                    if found.len() + hits.len() == limit {
                        break;
                    }
                    if query.matches(&entry) {
                        hits.push(entry);
                    }
                }
                (edge, hits)
            } else {
                let edge = page.entries.last().map(|e| e.id);
                let hits = page
                    .entries
                    .into_iter()
                    .filter(|e| query.matches(e))
                    .take(limit - found.len())
                    .collect();
                (edge, hits)
            };
            found.extend(hits);
            let full = found.len() == limit;
            // Where to go on: after the last match when the page filled up in the
            // middle of a step, else past what was read.
            let next = match (full, found.last()) {
                (true, Some(last)) => Some(last.id),
                _ => edge,
            };
            let Some(next) = next.filter(|_| more || full) else {
                return Ok(Some((info, source, done(found, backward, None))));
            };
            if full || read >= budget {
                return Ok(Some((info, source, done(found, backward, Some(next)))));
            }
            cursor = if backward {
                Cursor::Before(next)
            } else {
                Cursor::After(next)
            };
        }
    }

    /// A forward walk over the job's log from just after `after`, across tiers: what
    /// the raw log and the SSE replay read ([`LogReader`]).
    pub fn reader(&self, job: &JobId, after: EntryId) -> LogReader {
        LogReader {
            log: self.clone(),
            job: job.clone(),
            after,
            next_n: None,
            manifest: None,
            manifest_read: false,
        }
    }
}

/// `manifest` of a job Redis has forgotten, with the segments written after its last
/// update added ([`Archive::extend_manifest`]: a flush whose update failed just before
/// Redis lost the job): they hold entries that are nowhere else now. Costs one listing
/// of the job's segments for a job that had not ended; an ended job's is returned as
/// it is.
async fn forgotten(archive: &Archive, mut manifest: Manifest) -> Result<Manifest, LogError> {
    let added = archive.extend_manifest(&mut manifest).await?;
    if added > 0 {
        tracing::warn!(
            job_id = %manifest.job_id,
            segments = added,
            "segments the manifest did not list are read too"
        );
    }
    Ok(manifest)
}

/// Search results in reading order, and where to go on.
fn done(mut entries: Vec<StoredEntry>, backward: bool, next: Option<EntryId>) -> Found {
    if backward {
        entries.reverse();
    }
    Found { entries, next }
}

/// A forward walk over one job's log ([`JobLog::reader`]). Unlike a run of `after`
/// pages it reads the manifest once, not per page, and the archive in ranges of
/// whatever size the caller asks for; then Redis. Numbers join the tiers: when Redis's
/// next entry is past the one expected (the archiver trimmed meanwhile), the manifest
/// is read again and the walk goes on in the archive.
#[derive(Debug)]
pub struct LogReader {
    log: JobLog,
    job: JobId,
    /// The last entry returned (or the start point).
    after: EntryId,
    /// The number the next entry must have, once known.
    next_n: Option<u64>,
    manifest: Option<Manifest>,
    manifest_read: bool,
}

impl LogReader {
    /// The id of the last entry returned (or the start point).
    pub fn position(&self) -> EntryId {
        self.after
    }

    /// Up to `max` of the next entries, oldest first; empty once the walk has reached
    /// the newest entry (more may come later for a running job: call again).
    ///
    /// Redis is asked first, with the number of the entry the walk stands on, so a
    /// walk inside the live tail (a viewer resuming, following) never touches the
    /// archive; the manifest is read only when Redis's entries do not join the walk's
    /// place (it is older than the tail), and once per walk unless Redis moves on past
    /// it again.
    pub async fn next(&mut self, max: usize) -> Result<Vec<StoredEntry>, LogError> {
        let max = max.max(1);
        if self.manifest_read
            && let Some(entries) = self.archived(max).await?
        {
            return Ok(entries);
        }
        let (at, entries) = self
            .log
            .store
            .entries_after_joined(&self.job, self.after, max)
            .await?;
        let first = entries.first().and_then(StoredEntry::n);
        let joined = match (first, self.next_n, at) {
            // Nothing in Redis at or after the walk's place: the job may be in the
            // archive alone (Redis forgot it), unless the archive was read already.
            (None, _, None) if entries.is_empty() => self.manifest_read,
            // Entries without numbers (stored before numbering), or the walk is at
            // Redis's newest entry.
            (None, _, _) => true,
            (Some(n), Some(want), _) => n <= want,
            (Some(n), None, Some(at)) => n <= at + 1,
            (Some(n), None, None) => n == 1,
        };
        if joined || self.log.archive.is_none() {
            return Ok(self.took(entries));
        }
        // Redis no longer holds what comes next: the archive does.
        self.read_manifest().await?;
        if let Some(entries) = self.archived(max).await? {
            return Ok(entries);
        }
        if !entries.is_empty() && (self.manifest.is_some() || self.next_n.is_some()) {
            return Err(LogError::Unlisted {
                job: self.job.clone(),
                from: first.unwrap_or(1),
            });
        }
        // Never archived: Redis's part is all there is (nothing, or the job's first
        // entries were lost before its first segment).
        Ok(self.took(entries))
    }

    async fn read_manifest(&mut self) -> Result<(), LogError> {
        self.manifest_read = true;
        let Some(archive) = &self.log.archive else {
            return Ok(());
        };
        self.manifest = match archive.manifest(&self.job).await? {
            // Segments the manifest does not list matter once Redis has forgotten the
            // job: while it holds the job, their entries are still in the stream.
            Some(manifest)
                if !manifest.complete && self.log.store.job_meta(&self.job).await?.is_none() =>
            {
                Some(forgotten(archive, manifest).await?)
            }
            read => read,
        };
        Ok(())
    }

    /// The next entries from the archive, when the walk is still inside what it holds.
    async fn archived(&mut self, max: usize) -> Result<Option<Vec<StoredEntry>>, LogError> {
        let (Some(archive), Some(manifest)) = (&self.log.archive, &self.manifest) else {
            return Ok(None);
        };
        if manifest.last_id().is_none_or(|last| self.after >= last) {
            return Ok(None);
        }
        let lo = match self.next_n {
            Some(n) => n,
            None => archive.position(manifest, self.after, true).await?,
        };
        let hi = lo.saturating_add(max as u64).min(manifest.end_n());
        if lo >= hi {
            return Ok(None);
        }
        let entries = archive.range(manifest, lo, hi).await?;
        Ok(Some(self.took(entries)))
    }

    /// Moves the walk past `entries`.
    fn took(&mut self, entries: Vec<StoredEntry>) -> Vec<StoredEntry> {
        if let Some(last) = entries.last() {
            self.after = last.id;
            self.next_n = last.n().map(|n| n + 1);
        }
        entries
    }
}

/// A page of a job whose Redis part begins at entry `redis_from` > 1, with an archive
/// for what comes before.
struct Tiers<'a> {
    store: &'a LogStore,
    archive: &'a Archive,
    job: &'a JobId,
    meta: &'a JobMeta,
    head: Option<Head>,
    redis_from: u64,
}

impl Tiers<'_> {
    /// The archive's manifest of this job. When Redis has recorded that part of the
    /// log is archived, the manifest must be there and readable: without it a page
    /// would silently start at Redis's oldest entry ([`LogError::Unlisted`]). `None`
    /// when nothing was ever archived (the entries below Redis's oldest are lost: the
    /// stream was evicted or flushed before its first segment).
    async fn manifest(&self) -> Result<Option<Manifest>, LogError> {
        let read = match self.archive.manifest(self.job).await {
            Ok(read) => read.filter(|m| m.generation == self.meta.generation),
            Err(ArchiveError::Corrupt(why)) => {
                tracing::warn!(job_id = %self.job, %why, "manifest damaged");
                None
            }
            Err(e) => return Err(e.into()),
        };
        if read.is_none() && self.meta.archived_upto.is_some() {
            return Err(LogError::Unlisted {
                job: self.job.clone(),
                from: self.redis_from,
            });
        }
        Ok(read)
    }

    /// Completes `redis`, Redis's answer to `cursor`, from the archive where it must.
    async fn page(&self, cursor: Cursor, limit: usize, redis: Page) -> Result<Page, LogError> {
        match cursor {
            Cursor::Latest | Cursor::Before(_) => self.older(cursor, limit, redis).await,
            Cursor::After(id) => {
                if self.head.is_some_and(|h| id >= h.id) {
                    return Ok(self.forward(redis.entries, Vec::new()).into());
                }
                let Some(manifest) = self.manifest().await? else {
                    return Ok(self.forward(redis.entries, Vec::new()).into());
                };
                let archived = self.archive.page(&manifest, cursor, limit).await?;
                // `redis` starts at the stream's head (the cursor is older): enough to
                // fill the page from where the archive stops. Where the archive stops
                // must be where Redis begins: a manifest that lists less than Redis has
                // let go of would leave a hole, which is an error, never a shorter log.
                let from_archive = !archived.entries.is_empty();
                let page = self.forward(archived.entries, redis.entries).limited(limit);
                let joined = page.entries.windows(2).all(|w| match (w[0].n(), w[1].n()) {
                    (Some(a), Some(b)) => b == a + 1,
                    _ => true,
                });
                // Nothing archived after the cursor: the page must begin where the
                // archive ends.
                let starts_right = from_archive
                    || page
                        .entries
                        .first()
                        .and_then(StoredEntry::n)
                        .is_none_or(|n| n == manifest.end_n());
                if !joined || !starts_right {
                    return Err(LogError::Unlisted {
                        job: self.job.clone(),
                        from: self.redis_from,
                    });
                }
                Ok(page)
            }
            Cursor::At(n) => {
                if n >= self.redis_from {
                    return Ok(self.forward(redis.entries, Vec::new()).into());
                }
                let Some(manifest) = self.manifest().await? else {
                    return Ok(self.forward(Vec::new(), Vec::new()).into());
                };
                let archived = self.archive.page(&manifest, cursor, limit).await?;
                let next = archived
                    .entries
                    .last()
                    .and_then(StoredEntry::n)
                    .map_or(n, |last| last + 1);
                let want = limit.saturating_sub(archived.entries.len());
                let newer = if want > 0 {
                    self.store.entries_from(self.job, next, want + 1).await?
                } else {
                    Vec::new()
                };
                Ok(self.forward(archived.entries, newer).limited(limit))
            }
        }
    }

    /// A `Latest`/`Before` page: Redis's newest part, then older entries from the
    /// archive when Redis ran out before the page was full.
    async fn older(&self, cursor: Cursor, limit: usize, redis: Page) -> Result<Page, LogError> {
        if redis.has_more {
            return Ok(redis);
        }
        let oldest = redis.entries.first();
        if oldest.and_then(StoredEntry::n) == Some(1) {
            return Ok(redis);
        }
        let want = limit - redis.entries.len();
        if want == 0 {
            // Full, and older entries are in the archive.
            return Ok(Page {
                has_more: true,
                has_older: true,
                ..redis
            });
        }
        let Some(manifest) = self.manifest().await? else {
            return Ok(redis);
        };
        let from = match oldest {
            Some(e) => Cursor::Before(e.id),
            None => cursor,
        };
        let older = self.archive.page(&manifest, from, want).await?;
        let mut entries = older.entries;
        entries.extend(redis.entries);
        Ok(Page {
            entries,
            has_more: older.has_more,
            has_older: older.has_older,
        })
    }

    /// A forward page: `first`, then the entries of `then` numbered past `first`'s last.
    /// Numbers are dense, so what remains newer is known from the job's last number.
    fn forward(&self, first: Vec<StoredEntry>, then: Vec<StoredEntry>) -> Forward {
        let last = first.last().and_then(StoredEntry::n);
        let mut entries = first;
        entries.extend(
            then.into_iter()
                .filter(|e| last.is_none_or(|last| e.n().is_some_and(|n| n > last))),
        );
        Forward {
            entries,
            total: self.meta.entries,
        }
    }
}

/// Entries of a forward page before it is cut to its limit.
struct Forward {
    entries: Vec<StoredEntry>,
    /// The job's last entry number.
    total: u64,
}

impl Forward {
    fn limited(mut self, limit: usize) -> Page {
        self.entries.truncate(limit);
        self.into()
    }
}

impl From<Forward> for Page {
    fn from(f: Forward) -> Self {
        let first = f.entries.first().and_then(StoredEntry::n);
        let last = f.entries.last().and_then(StoredEntry::n);
        Page {
            has_more: last.is_some_and(|n| n < f.total),
            has_older: first.is_some_and(|n| n > 1),
            entries: f.entries,
        }
    }
}
