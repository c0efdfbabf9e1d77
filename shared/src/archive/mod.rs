//! The archive: the durable copy of every job's log, written while the job runs.
//!
//! | object (S3 key, or path under the local folder) | holds |
//! |---|---|
//! | `build-logs/{ID}/segments/{N}.jsonl` | a running job's entries from number `N` on (zero-padded to 12 digits), one JSON object per line (the API's entry JSON, `id` and `n` included) |
//! | `build-logs/{ID}/build.jsonl` | once the job has ended: every entry, chronological, same format |
//! | `build-logs/{ID}/manifest.json` | the job (owner, status, times, counts), and the parts of its log with a sparse index into each |
//!
//! A log in the archive is a list of **parts**: the segments written while the job
//! runs, then, once it has ended, `build.jsonl` alone (the segments merged, then
//! removed). The manifest is the commit mark: a part is written first, then the
//! manifest that lists it, so a reader never sees a part that is not whole, and a part
//! no manifest lists (an interrupted attempt) is overwritten by the next one, which
//! writes the same bytes under the same name (a segment's name is its first entry's
//! number, its contents are immutable entries). The manifest keeps the job's owner and
//! counts, so the job is still served, with the same ownership rules, once Redis has
//! forgotten it (the S3 objects also carry the owner as `x-amz-meta-owner`); a job's
//! first manifest, listing no part, is written before its first segment. A manifest
//! lost or damaged can be made again from the segments ([`Archive::recover_manifest`]),
//! which is what the archiver does before it goes on with such a job; segments written
//! after the manifest's last update (the update failed) are added to it when the job
//! is read from the archive ([`Archive::extend_manifest`]).
//!
//! Every part's index records the id and byte offset of every [`BLOCK_ENTRIES`]th
//! entry, so a history page (at most 500 entries: `before`/`after` ids, or `at` an entry
//! number, answered exactly as Redis answers it, see [`Archive::page`]) is a ranged read
//! of a few blocks rather than a download of the whole log. Entry numbers are dense, so
//! `at=N` finds its part and block by arithmetic alone.
//!
//! Two backends sit behind the [`Archive`] enum: S3 ([`s3`], feature `s3`, what the
//! Lambdas use) and a local folder ([`dir`], what `logstream dev` uses). Everything above
//! them, the archiver's copy loop and the history pages, is written once against
//! [`Archive`]. An enum rather than a trait object: there are exactly two backends, and
//! async methods stay plain `async fn`s.

pub mod dir;
#[cfg(feature = "s3")]
pub mod s3;

use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{Cursor, JobMeta, Page};
use logstream_core::ids::{EntryId, JobId};
use logstream_core::model::{JobStatus, StoredEntry};

/// Folder (key prefix) of every job's archive.
pub const PREFIX: &str = "build-logs";
/// The whole log's file name inside a job's folder.
pub const LOG_FILE: &str = "build.jsonl";
/// The folder of a running job's segments inside its folder.
pub const SEGMENTS_DIR: &str = "segments";
/// The manifest's file name inside a job's folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Entries per index block: a 500-entry page reads at most four blocks.
pub const BLOCK_ENTRIES: u64 = 256;
/// The manifest format this code writes and reads (1 had `build.jsonl` only).
pub const FORMAT: u32 = 2;

/// What went wrong reading or writing the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The storage cannot be reached (refused, timed out, a 5xx): worth retrying later.
    #[error("archive storage unreachable during {op}: {message}")]
    Unavailable { op: &'static str, message: String },
    /// The storage answered with an error (no such bucket, access denied, …).
    #[error("archive storage refused {op}: {message}")]
    Refused { op: &'static str, message: String },
    /// The local folder could not be read or written.
    #[error("archive folder {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The archive holds something this code did not write.
    #[error("archive data is corrupt: {0}")]
    Corrupt(String),
}

/// One index point: the id of entry number `k * block_entries` of a part and where
/// its line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub first: EntryId,
    pub offset: u64,
}

/// One object of a job's log: consecutive entries `first_n ..` of the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The object's name in the job's folder: [`LOG_FILE`] or a [`segment_file`].
    pub file: String,
    /// The number of its first entry.
    pub first_n: u64,
    /// Lines in the object.
    pub entries: u64,
    /// Size of the object.
    pub bytes: u64,
    /// The id of its last entry.
    pub last_id: EntryId,
    /// One checkpoint per block, in order.
    pub index: Vec<Checkpoint>,
}

impl Part {
    /// One past the number of its last entry.
    pub fn end_n(&self) -> u64 {
        self.first_n + self.entries
    }

    /// Byte range `[start, end)` of blocks `first..=last`.
    fn block_range(&self, first: u64, last: u64) -> (u64, u64) {
        let start = self.index[first as usize].offset;
        let end = self
            .index
            .get(last as usize + 1)
            .map_or(self.bytes, |c| c.offset);
        (start, end)
    }
}

/// The file name of the segment that starts at entry `first_n`.
pub fn segment_file(first_n: u64) -> String {
    format!("{SEGMENTS_DIR}/{first_n:012}.jsonl")
}

/// `manifest.json`: the job as last seen, and the parts of its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    pub job_id: JobId,
    /// The job's generation (random per creation): segments of an earlier job under
    /// the same id are not this one's.
    pub generation: String,
    pub owner: String,
    /// The organisation whose members read the job too (absent in manifests written
    /// before orgs existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    pub status: JobStatus,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    /// The exit code the job ended with, when the pipeline reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// How long the job ran, once it has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The number of the last archived entry.
    pub entries: u64,
    /// Stored text bytes of the job's lines, as of the last archived entry.
    pub bytes: u64,
    /// The job hit its size limit.
    pub truncated: bool,
    /// Stored JSON bytes of the archived entries (as Redis counts them for segments).
    pub stored: u64,
    /// The job has ended and `build.jsonl` (the only part) holds all of it.
    pub complete: bool,
    /// Entries per index block ([`BLOCK_ENTRIES`] when written).
    pub block_entries: u64,
    /// The log, in order.
    pub parts: Vec<Part>,
}

impl Manifest {
    /// A manifest of `job` as `meta` describes it, with no parts yet.
    pub fn new(job: &JobId, meta: &JobMeta) -> Self {
        let mut manifest = Self {
            format: FORMAT,
            job_id: job.clone(),
            generation: meta.generation.clone(),
            owner: meta.owner.clone(),
            org: meta.org.clone(),
            status: meta.status,
            created_at: meta.created_at,
            finished_at: None,
            exit_code: None,
            duration_ms: None,
            entries: 0,
            bytes: 0,
            truncated: false,
            stored: 0,
            complete: false,
            block_entries: BLOCK_ENTRIES,
            parts: Vec::new(),
        };
        manifest.describe(meta);
        manifest
    }

    /// Takes the job's status, times and counts from `meta`.
    pub fn describe(&mut self, meta: &JobMeta) {
        self.owner.clone_from(&meta.owner);
        self.org.clone_from(&meta.org);
        self.status = meta.status;
        self.created_at = meta.created_at;
        self.finished_at = meta.finished_at;
        self.exit_code = meta.exit_code;
        self.duration_ms = meta.duration_ms;
        self.bytes = meta.bytes;
        self.truncated = meta.truncated;
    }

    /// One past the number of the last archived entry (1 for an empty log).
    pub fn end_n(&self) -> u64 {
        self.parts.last().map_or(1, Part::end_n)
    }

    /// The number of the first archived entry (1 unless the log lost its head).
    pub fn first_n(&self) -> u64 {
        self.parts.first().map_or(1, |p| p.first_n)
    }

    /// The id of the last archived entry.
    pub fn last_id(&self) -> Option<EntryId> {
        self.parts.last().map(|p| p.last_id)
    }

    /// Checks what a reader relies on, so a damaged manifest is an error, not a panic.
    fn validate(&self) -> Result<(), ArchiveError> {
        let bad = |what: &str| {
            Err(ArchiveError::Corrupt(format!(
                "manifest of {}: {what}",
                self.job_id
            )))
        };
        if self.format != FORMAT {
            return bad("unknown format");
        }
        if self.block_entries == 0 {
            return bad("no block size");
        }
        for part in &self.parts {
            if part.first_n == 0
                || part.entries == 0
                || part.index.len() as u64 != part.entries.div_ceil(self.block_entries)
            {
                return bad("index does not match the entry count");
            }
            let ordered = part
                .index
                .windows(2)
                .all(|w| w[0].first < w[1].first && w[0].offset < w[1].offset);
            if !ordered
                || part.index.first().is_some_and(|c| c.offset != 0)
                || part
                    .index
                    .last()
                    .is_some_and(|c| c.offset >= part.bytes || c.first > part.last_id)
            {
                return bad("index out of order");
            }
        }
        let in_order = self
            .parts
            .windows(2)
            .all(|w| w[0].end_n() <= w[1].first_n && w[0].last_id < w[1].index[0].first);
        if !in_order
            || self
                .parts
                .last()
                .is_some_and(|p| p.end_n() - 1 != self.entries)
        {
            return bad("parts out of order");
        }
        Ok(())
    }

    /// Every checkpoint of every part, in order: (entry number, id, part, block).
    fn checkpoints(&self) -> impl Iterator<Item = (u64, EntryId, usize, u64)> + '_ {
        self.parts.iter().enumerate().flat_map(move |(p, part)| {
            part.index.iter().enumerate().map(move |(k, c)| {
                (
                    part.first_n + k as u64 * self.block_entries,
                    c.first,
                    p,
                    k as u64,
                )
            })
        })
    }
}

/// Turns entries into one part's bytes, building its index on the way.
#[derive(Debug)]
pub struct PartEncoder {
    first_n: u64,
    entries: u64,
    bytes: u64,
    last_id: Option<EntryId>,
    index: Vec<Checkpoint>,
    /// One entry's line, written here before it is copied out: a buffer reused for
    /// every entry rather than a string made for each.
    line: String,
}

impl PartEncoder {
    /// An empty part whose first entry will be number `first_n`.
    pub fn new(first_n: u64) -> Self {
        Self {
            first_n,
            entries: 0,
            bytes: 0,
            last_id: None,
            index: Vec::new(),
            line: String::new(),
        }
    }

    /// Appends `entry`'s line to `out`. Entries must come in order, without a gap.
    pub fn push(&mut self, entry: &StoredEntry, out: &mut Vec<u8>) {
        if self.entries.is_multiple_of(BLOCK_ENTRIES) {
            self.index.push(Checkpoint {
                first: entry.id,
                offset: self.bytes,
            });
        }
        self.line.clear();
        entry.write_json(&mut self.line);
        self.line.push('\n');
        out.extend_from_slice(self.line.as_bytes());
        self.bytes += self.line.len() as u64;
        self.entries += 1;
        self.last_id = Some(entry.id);
    }

    /// Entries pushed so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes produced so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The number the next entry must have.
    pub fn next_n(&self) -> u64 {
        self.first_n + self.entries
    }

    /// The part, stored as `file`; `None` when nothing was pushed.
    pub fn finish(self, file: String) -> Option<Part> {
        Some(Part {
            file,
            first_n: self.first_n,
            entries: self.entries,
            bytes: self.bytes,
            last_id: self.last_id?,
            index: self.index,
        })
    }
}

/// `raw`, a segment's bytes, read as entries `first_n ..` following `after` and encoded
/// again: its [`Part`] (named `file`) and stored JSON bytes when that gives back exactly
/// `raw`; `None` when it does not (a torn or foreign object).
fn reencode(raw: &[u8], first_n: u64, after: Option<EntryId>, file: String) -> Option<(Part, u64)> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut encoder = PartEncoder::new(first_n);
    let mut again = Vec::with_capacity(raw.len());
    let mut stored = 0;
    let mut last = after;
    for line in text.strip_suffix('\n')?.split('\n') {
        let entry = StoredEntry::from_json_line(line)?;
        if entry.n() != Some(encoder.next_n()) || last.is_some_and(|id| id >= entry.id) {
            return None;
        }
        last = Some(entry.id);
        stored += entry.json.len() as u64;
        encoder.push(&entry, &mut again);
    }
    (again == raw)
        .then(|| encoder.finish(file))
        .flatten()
        .map(|p| (p, stored))
}

/// Where archives are kept. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Archive {
    /// A local folder (`logstream dev`).
    Dir(dir::DirArchive),
    /// An S3 bucket (the Lambdas).
    #[cfg(feature = "s3")]
    S3(s3::S3Archive),
}

impl fmt::Display for Archive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(d) => write!(f, "{}/{PREFIX}/", d.root().display()),
            #[cfg(feature = "s3")]
            Self::S3(s) => write!(f, "s3://{}/{PREFIX}/", s.bucket()),
        }
    }
}

/// An upload of one job's log in progress: [`write`](Upload::write) chunks in order,
/// then [`finish`](Upload::finish) (or [`abort`](Upload::abort) on a failure, which
/// leaves nothing a reader would see).
#[derive(Debug)]
pub enum Upload {
    Dir(dir::DirUpload),
    #[cfg(feature = "s3")]
    S3(s3::S3Upload),
}

/// What an upload amounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// Storage requests that carried data: 1 for a plain write, N for an N-part upload.
    pub parts: u32,
}

impl Upload {
    /// Adds the next bytes of the log.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ArchiveError> {
        match self {
            Self::Dir(u) => u.write(chunk).await,
            #[cfg(feature = "s3")]
            Self::S3(u) => u.write(chunk).await,
        }
    }

    /// Completes the log object. On an error the partial upload is cleaned up.
    pub async fn finish(self) -> Result<Uploaded, ArchiveError> {
        match self {
            Self::Dir(u) => u.finish().await,
            #[cfg(feature = "s3")]
            Self::S3(u) => u.finish().await,
        }
    }

    /// Drops the upload, best effort (failures are logged).
    pub async fn abort(self) {
        match self {
            Self::Dir(u) => u.abort().await,
            #[cfg(feature = "s3")]
            Self::S3(u) => u.abort().await,
        }
    }
}

impl Archive {
    /// A local-folder archive rooted at `root`.
    pub fn dir(root: impl Into<PathBuf>) -> Self {
        Self::Dir(dir::DirArchive::new(root))
    }

    /// The job's manifest; `None` when nothing of the job was archived.
    pub async fn manifest(&self, job: &JobId) -> Result<Option<Manifest>, ArchiveError> {
        let raw = match self {
            Self::Dir(d) => d.read_manifest(job).await?,
            #[cfg(feature = "s3")]
            Self::S3(s) => s.read_manifest(job).await?,
        };
        let Some(raw) = raw else { return Ok(None) };
        let manifest: Manifest = serde_json::from_slice(&raw)
            .map_err(|e| ArchiveError::Corrupt(format!("manifest of {job}: {e}")))?;
        if &manifest.job_id != job {
            return Err(ArchiveError::Corrupt(format!(
                "manifest of {job} names job {}",
                manifest.job_id
            )));
        }
        manifest.validate()?;
        Ok(Some(manifest))
    }

    /// Writes the manifest: what makes the parts it lists part of the log.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(), ArchiveError> {
        let body = serde_json::to_vec(manifest)
            .map_err(|e| ArchiveError::Corrupt(format!("manifest not serializable: {e}")))?;
        match self {
            Self::Dir(d) => d.write_manifest(&manifest.job_id, body).await,
            #[cfg(feature = "s3")]
            Self::S3(s) => {
                s.write_manifest(&manifest.job_id, &manifest.owner, body)
                    .await
            }
        }
    }

    /// Starts writing `file` of the job's log (replacing any earlier one when finished).
    pub async fn upload(
        &self,
        job: &JobId,
        file: &str,
        owner: &str,
    ) -> Result<Upload, ArchiveError> {
        // The folder keeps the owner in the manifest only.
        #[cfg(not(feature = "s3"))]
        let _ = owner;
        match self {
            Self::Dir(d) => Ok(Upload::Dir(d.upload(job, file).await?)),
            #[cfg(feature = "s3")]
            Self::S3(s) => Ok(Upload::S3(s.upload(job, file, owner).await)),
        }
    }

    /// Bytes `[start, end)` of `file` of the job's log.
    pub async fn read_part(
        &self,
        job: &JobId,
        file: &str,
        start: u64,
        end: u64,
    ) -> Result<Bytes, ArchiveError> {
        if start >= end {
            return Ok(Bytes::new());
        }
        match self {
            Self::Dir(d) => d.read_log(job, file, start, end).await,
            #[cfg(feature = "s3")]
            Self::S3(s) => s.read_log(job, file, start, end).await,
        }
    }

    /// Removes `files` of the job's log (best effort for files already gone).
    pub async fn remove(&self, job: &JobId, files: &[String]) -> Result<(), ArchiveError> {
        if files.is_empty() {
            return Ok(());
        }
        match self {
            Self::Dir(d) => d.remove(job, files).await,
            #[cfg(feature = "s3")]
            Self::S3(s) => s.remove(job, files).await,
        }
    }

    /// Removes everything the archive holds of the job: segments, manifest and
    /// `build.jsonl` (what deleting a job does). Answers whether there was anything.
    pub async fn purge(&self, job: &JobId) -> Result<bool, ArchiveError> {
        match self {
            Self::Dir(d) => d.purge(job).await,
            #[cfg(feature = "s3")]
            Self::S3(s) => {
                let names = s.list(job, "").await?;
                s.remove(job, &names).await?;
                Ok(!names.is_empty())
            }
        }
    }

    /// The first entry numbers of the job's segments in the archive, ascending, whether
    /// or not a manifest lists them.
    pub async fn segment_numbers(&self, job: &JobId) -> Result<Vec<u64>, ArchiveError> {
        let names = match self {
            Self::Dir(d) => d.list(job, SEGMENTS_DIR).await?,
            #[cfg(feature = "s3")]
            Self::S3(s) => s.list(job, SEGMENTS_DIR).await?,
        };
        let mut numbers: Vec<u64> = names
            .iter()
            .filter_map(|name| {
                let digits = name
                    .strip_prefix(SEGMENTS_DIR)?
                    .strip_prefix('/')?
                    .strip_suffix(".jsonl")?;
                let n = digits.parse().ok()?;
                (segment_file(n) == *name).then_some(n)
            })
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The whole of `file` of the job's log; `None` when it is not there.
    pub async fn read_whole(&self, job: &JobId, file: &str) -> Result<Option<Bytes>, ArchiveError> {
        match self {
            Self::Dir(d) => d.read_whole(job, file).await,
            #[cfg(feature = "s3")]
            Self::S3(s) => s.read_whole(job, file).await,
        }
    }

    /// The manifest of a running job made again from its segments, for when the one
    /// in the archive is missing or damaged while Redis says part of the log is
    /// archived (the archiver then writes it back). See [`extend_manifest`](Self::extend_manifest).
    pub async fn recover_manifest(
        &self,
        job: &JobId,
        meta: &JobMeta,
    ) -> Result<Manifest, ArchiveError> {
        let mut manifest = Manifest::new(job, meta);
        self.extend_manifest(&mut manifest).await?;
        Ok(manifest)
    }

    /// Adds to `manifest` the segments written after it that it does not list: those
    /// a flush stored before its manifest update failed, or did not get to write it
    /// (read once Redis has forgotten the job, they are otherwise in neither tier).
    /// The segments are taken in order from the manifest's end for as long as each is
    /// whole and continues the one before; their entries are read and encoded again,
    /// and a segment is taken only if that gives back its exact bytes. Answers how
    /// many were added; a complete manifest (`build.jsonl`) is left as it is. Lists
    /// the job's segments once and reads only the unlisted ones whole: a repair, not
    /// a read path.
    pub async fn extend_manifest(&self, manifest: &mut Manifest) -> Result<usize, ArchiveError> {
        if manifest.complete {
            return Ok(0);
        }
        let job = manifest.job_id.clone();
        let mut added = 0;
        for first_n in self.segment_numbers(&job).await? {
            if first_n < manifest.end_n() {
                continue;
            }
            if first_n != manifest.end_n() {
                break;
            }
            let file = segment_file(first_n);
            let Some(raw) = self.read_whole(&job, &file).await? else {
                break;
            };
            let Some((part, stored)) = reencode(&raw, first_n, manifest.last_id(), file) else {
                tracing::warn!(job_id = %job, first_n, "segment not whole; the manifest stops before it");
                break;
            };
            manifest.entries = part.end_n() - 1;
            manifest.stored += stored;
            manifest.parts.push(part);
            added += 1;
        }
        Ok(added)
    }

    /// One history page of an archived log, with exactly the semantics of a Redis page
    /// ([`crate::store::LogStore::page`]): the newest `limit` entries, the `limit` just
    /// older than a `before` id, the `limit` just newer than an `after` id, or the
    /// `limit` from entry number `at` on; chronological. A few ranged reads: an id is
    /// placed through the index (one block read), a number by arithmetic.
    pub async fn page(
        &self,
        manifest: &Manifest,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Page, ArchiveError> {
        let limit = limit.max(1) as u64;
        let (first, end) = (manifest.first_n(), manifest.end_n());
        let (lo, hi) = match cursor {
            Cursor::Latest => (end.saturating_sub(limit).max(first), end),
            Cursor::Before(id) => {
                let hi = self.position(manifest, id, false).await?;
                (hi.saturating_sub(limit).max(first), hi)
            }
            Cursor::After(id) => {
                let lo = self.position(manifest, id, true).await?;
                (lo, lo.saturating_add(limit).min(end))
            }
            Cursor::At(n) => {
                let lo = n.max(first);
                (lo, lo.saturating_add(limit).min(end))
            }
        };
        let entries = self.range(manifest, lo, hi).await?;
        let has_older = lo > first;
        let has_more = match cursor {
            Cursor::Latest | Cursor::Before(_) => has_older,
            Cursor::After(_) | Cursor::At(_) => hi < end,
        };
        Ok(Page {
            entries,
            has_more,
            has_older,
        })
    }

    /// The number of the first archived entry whose id is above `id` (`after`) or not
    /// below it; one past the last entry when there is none.
    pub async fn position(
        &self,
        manifest: &Manifest,
        id: EntryId,
        after: bool,
    ) -> Result<u64, ArchiveError> {
        let beyond = |e: EntryId| if after { e > id } else { e >= id };
        // The last checkpoint that is not beyond `id`: its block holds the position.
        let Some((n, _, part, block)) = manifest
            .checkpoints()
            .take_while(|&(_, first, _, _)| !beyond(first))
            .last()
        else {
            return Ok(manifest.first_n());
        };
        let entries = self.blocks(manifest, part, block, block).await?;
        let inside = entries.iter().take_while(|e| !beyond(e.id)).count() as u64;
        Ok(n + inside)
    }

    /// The archived entries numbered `lo..hi`, in order.
    pub async fn range(
        &self,
        manifest: &Manifest,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<StoredEntry>, ArchiveError> {
        let block = manifest.block_entries;
        let mut out = Vec::with_capacity(hi.saturating_sub(lo).min(1 << 16) as usize);
        for (p, part) in manifest.parts.iter().enumerate() {
            let (from, to) = (lo.max(part.first_n), hi.min(part.end_n()));
            if from >= to {
                continue;
            }
            let (b0, b1) = (
                (from - part.first_n) / block,
                (to - 1 - part.first_n) / block,
            );
            let entries = self.blocks(manifest, p, b0, b1).await?;
            let start = part.first_n + b0 * block;
            out.extend(
                entries
                    .into_iter()
                    .skip((from - start) as usize)
                    .take((to - from) as usize),
            );
        }
        Ok(out)
    }

    /// The entries of blocks `first..=last` of part `p`.
    async fn blocks(
        &self,
        manifest: &Manifest,
        p: usize,
        first: u64,
        last: u64,
    ) -> Result<Vec<StoredEntry>, ArchiveError> {
        let part = &manifest.parts[p];
        let (start, end) = part.block_range(first, last);
        let raw = self
            .read_part(&manifest.job_id, &part.file, start, end)
            .await?;
        let expected = ((last + 1) * manifest.block_entries).min(part.entries)
            - first * manifest.block_entries;
        let corrupt = || {
            ArchiveError::Corrupt(format!(
                "{} of {} does not match its index",
                part.file, manifest.job_id
            ))
        };
        let text = std::str::from_utf8(&raw).map_err(|_| corrupt())?;
        let mut entries = Vec::with_capacity(expected as usize);
        for line in text.strip_suffix('\n').ok_or_else(corrupt)?.split('\n') {
            entries.push(StoredEntry::from_json_line(line).ok_or_else(corrupt)?);
        }
        if entries.len() as u64 != expected
            || entries.first().map(|e| e.id) != Some(part.index[first as usize].first)
        {
            return Err(corrupt());
        }
        Ok(entries)
    }
}

/// The archive the settings name: `LOGSTREAM_ARCHIVE_BUCKET` (S3, credentials and
/// region from the usual AWS sources) when set, else `LOGSTREAM_ARCHIVE_DIR`, else
/// `default_dir` (`logstream dev` passes `.logstream/archive`; the Lambdas pass `None`:
/// no archive).
#[cfg(feature = "s3")]
pub async fn from_config(
    config: &crate::config::Config,
    default_dir: Option<&std::path::Path>,
) -> Option<Archive> {
    if let Some(bucket) = &config.archive_bucket {
        return Some(Archive::S3(s3::S3Archive::from_env(bucket.clone())));
    }
    let dir = config.archive_dir.as_deref().or(default_dir)?;
    Some(Archive::dir(
        std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()),
    ))
}
