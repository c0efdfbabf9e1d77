//! The archive: where a finished job's log lives once Redis has forgotten it.
//!
//! | object (S3 key, or path under the local folder) | holds |
//! |---|---|
//! | `build-logs/{ID}/build.jsonl` | every entry, chronological, one JSON object per line (the API's entry JSON, `id` included) |
//! | `build-logs/{ID}/manifest.json` | the job (owner, status, times), entry and byte counts, and a sparse index into the log |
//!
//! The manifest is written after the log and is the archive's commit mark: a log
//! without a manifest is an interrupted attempt, which readers ignore and the next
//! attempt overwrites. The manifest keeps the job's owner, so the history function still
//! enforces ownership once Redis has forgotten the job (the S3 log object also carries it
//! as `x-amz-meta-owner`). It holds no timestamp of its own: archiving the same finished
//! job twice writes the same bytes.
//!
//! The index records the id and byte offset of every [`BLOCK_ENTRIES`]th entry, so a
//! history page (at most 500 entries, `before`/`after` cursors, answered exactly as
//! Redis answers it, see [`Archive::page`]) is one ranged read of a few blocks rather
//! than a download of the whole log.
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
/// The log's file name inside a job's folder.
pub const LOG_FILE: &str = "build.jsonl";
/// The manifest's file name inside a job's folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Entries per index block: a 500-entry page reads at most four blocks.
pub const BLOCK_ENTRIES: u64 = 256;
/// The manifest format this code writes and reads.
pub const FORMAT: u32 = 1;

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

/// One index point: the id of entry number `k * block_entries` and where its line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub first: EntryId,
    pub offset: u64,
}

/// `manifest.json`: the job as it ended, and the index into its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    pub job_id: JobId,
    pub owner: String,
    pub status: JobStatus,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    /// Lines in `build.jsonl`.
    pub entries: u64,
    /// Size of `build.jsonl`.
    pub bytes: u64,
    /// Entries per index block ([`BLOCK_ENTRIES`] when written).
    pub block_entries: u64,
    /// One checkpoint per block, in order.
    pub index: Vec<Checkpoint>,
}

impl Manifest {
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
        if self.block_entries == 0
            || self.index.len() as u64 != self.entries.div_ceil(self.block_entries)
        {
            return bad("index does not match the entry count");
        }
        let ordered = self
            .index
            .windows(2)
            .all(|w| w[0].first < w[1].first && w[0].offset < w[1].offset);
        if !ordered || self.index.last().is_some_and(|c| c.offset >= self.bytes) {
            return bad("index out of order");
        }
        Ok(())
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

/// Turns entries into the log's bytes, building the manifest's index on the way.
#[derive(Debug, Default)]
pub struct LogEncoder {
    entries: u64,
    bytes: u64,
    index: Vec<Checkpoint>,
}

impl LogEncoder {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `entry`'s line to `out`. Entries must come in id order.
    pub fn push(&mut self, entry: &StoredEntry, out: &mut Vec<u8>) {
        if self.entries.is_multiple_of(BLOCK_ENTRIES) {
            self.index.push(Checkpoint {
                first: entry.id,
                offset: self.bytes,
            });
        }
        let before = out.len();
        out.extend_from_slice(entry.to_json().as_bytes());
        out.push(b'\n');
        self.bytes += (out.len() - before) as u64;
        self.entries += 1;
    }

    /// Entries pushed so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes produced so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The manifest of the log pushed so far, for `job` as `meta` describes it.
    pub fn manifest(self, job: &JobId, meta: &JobMeta) -> Manifest {
        Manifest {
            format: FORMAT,
            job_id: job.clone(),
            owner: meta.owner.clone(),
            status: meta.status,
            created_at: meta.created_at,
            finished_at: meta.finished_at,
            entries: self.entries,
            bytes: self.bytes,
            block_entries: BLOCK_ENTRIES,
            index: self.index,
        }
    }
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

    /// The job's manifest; `None` when the job was never (completely) archived.
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

    /// Writes the manifest: the last step of archiving a job.
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

    /// Starts writing the job's log (replacing any earlier one when finished).
    pub async fn upload(&self, job: &JobId, owner: &str) -> Result<Upload, ArchiveError> {
        // The folder keeps the owner in the manifest only.
        #[cfg(not(feature = "s3"))]
        let _ = owner;
        match self {
            Self::Dir(d) => Ok(Upload::Dir(d.upload(job).await?)),
            #[cfg(feature = "s3")]
            Self::S3(s) => Ok(Upload::S3(s.upload(job, owner).await)),
        }
    }

    /// Bytes `[start, end)` of the job's log.
    pub async fn read_log(&self, job: &JobId, start: u64, end: u64) -> Result<Bytes, ArchiveError> {
        if start >= end {
            return Ok(Bytes::new());
        }
        match self {
            Self::Dir(d) => d.read_log(job, start, end).await,
            #[cfg(feature = "s3")]
            Self::S3(s) => s.read_log(job, start, end).await,
        }
    }

    /// One history page of an archived job, with exactly the semantics of
    /// [`crate::store::LogStore::page`]: the newest `limit` entries, the `limit` just
    /// older than a `before` id, or the `limit` just newer than an `after` id,
    /// chronological. One ranged read: the index narrows the page down to a few blocks.
    pub async fn page(
        &self,
        manifest: &Manifest,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Page, ArchiveError> {
        let limit = limit.max(1) as u64;
        let n = manifest.entries;
        let block = manifest.block_entries;
        let last_block = manifest.index.len() as u64;
        let empty = Page {
            entries: Vec::new(),
            has_more: false,
            has_older: false,
        };
        if n == 0 {
            return Ok(empty);
        }
        match cursor {
            Cursor::Latest => {
                let lo = n.saturating_sub(limit);
                let (start, entries) = self.blocks(manifest, lo / block, (n - 1) / block).await?;
                Ok(Page {
                    entries: slice(entries, start, lo, n),
                    has_more: lo > 0,
                    has_older: lo > 0,
                })
            }
            Cursor::Before(id) => {
                // Blocks starting below the cursor; the last of them holds its position.
                let k = manifest.index.partition_point(|c| c.first < id) as u64;
                if k == 0 {
                    return Ok(empty);
                }
                let first = ((k - 1) * block).saturating_sub(limit) / block;
                let (start, entries) = self.blocks(manifest, first, k - 1).await?;
                let older = start + entries.iter().take_while(|e| e.id < id).count() as u64;
                let lo = older.saturating_sub(limit);
                Ok(Page {
                    entries: slice(entries, start, lo, older),
                    has_more: lo > 0,
                    has_older: lo > 0,
                })
            }
            Cursor::After(id) => {
                let k = manifest.index.partition_point(|c| c.first <= id) as u64;
                let first = k.saturating_sub(1);
                let last = ((first + 1) * block + limit - 1) / block;
                let (start, entries) = self
                    .blocks(manifest, first, last.min(last_block - 1))
                    .await?;
                let upto = start + entries.iter().take_while(|e| e.id <= id).count() as u64;
                let hi = (upto + limit).min(n);
                Ok(Page {
                    entries: slice(entries, start, upto, hi),
                    has_more: hi < n,
                    has_older: upto > 0,
                })
            }
        }
    }

    /// The entries of blocks `first..=last`, and the number of the first one.
    async fn blocks(
        &self,
        manifest: &Manifest,
        first: u64,
        last: u64,
    ) -> Result<(u64, Vec<StoredEntry>), ArchiveError> {
        let (start, end) = manifest.block_range(first, last);
        let raw = self.read_log(&manifest.job_id, start, end).await?;
        let expected = ((last + 1) * manifest.block_entries).min(manifest.entries)
            - first * manifest.block_entries;
        let corrupt = || {
            ArchiveError::Corrupt(format!(
                "log of {} does not match its index",
                manifest.job_id
            ))
        };
        let text = std::str::from_utf8(&raw).map_err(|_| corrupt())?;
        let entries = text
            .strip_suffix('\n')
            .ok_or_else(corrupt)?
            .split('\n')
            .map(|line| StoredEntry::from_json_line(line).ok_or_else(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        if entries.len() as u64 != expected
            || entries.first().map(|e| e.id) != Some(manifest.index[first as usize].first)
        {
            return Err(corrupt());
        }
        Ok((first * manifest.block_entries, entries))
    }
}

/// Entries number `lo..hi` out of `entries`, which start at number `start`.
fn slice(mut entries: Vec<StoredEntry>, start: u64, lo: u64, hi: u64) -> Vec<StoredEntry> {
    entries.truncate((hi - start) as usize);
    entries.drain(..(lo - start) as usize);
    entries
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
