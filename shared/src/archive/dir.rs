//! The local-folder archive backend (`logstream dev`): the same layout as the S3 bucket,
//! as files under a root folder.
//!
//! Files are written under a temporary name and renamed into place, so a reader never
//! sees half a log or half a manifest, and an interrupted attempt leaves only a
//! `*.partial` file that the next attempt does not depend on.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::fs;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::{ArchiveError, MANIFEST_FILE, PREFIX, Uploaded};
use logstream_core::ids::JobId;

/// Archives kept as files under one folder.
#[derive(Debug, Clone)]
pub struct DirArchive {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A temporary name next to `dest`, unique to this attempt.
fn partial(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.partial", logstream_core::ids::random_hex(6)));
    dest.with_file_name(name)
}

impl DirArchive {
    /// An archive under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of one job's archive. (A file name inside it is always this code's
    /// own: the log, the manifest, or `segments/` and a number.)
    pub fn job_dir(&self, job: &JobId) -> PathBuf {
        // A job id is [A-Za-z0-9_-]+: always one plain path component.
        self.root.join(PREFIX).join(job.as_str())
    }

    pub(super) async fn read_manifest(&self, job: &JobId) -> Result<Option<Vec<u8>>, ArchiveError> {
        Ok(self
            .read_whole(job, MANIFEST_FILE)
            .await?
            .map(|body| body.to_vec()))
    }

    pub(super) async fn write_manifest(
        &self,
        job: &JobId,
        body: Vec<u8>,
    ) -> Result<(), ArchiveError> {
        let dir = self.job_dir(job);
        fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let dest = dir.join(MANIFEST_FILE);
        let tmp = partial(&dest);
        fs::write(&tmp, body).await.map_err(io(&tmp))?;
        fs::rename(&tmp, &dest).await.map_err(io(&dest))
    }

    pub(super) async fn upload(&self, job: &JobId, file: &str) -> Result<DirUpload, ArchiveError> {
        let dest = self.job_dir(job).join(file);
        let dir = dest.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let tmp = partial(&dest);
        let file = fs::File::create(&tmp).await.map_err(io(&tmp))?;
        Ok(DirUpload {
            file: BufWriter::with_capacity(256 * 1024, file),
            tmp,
            dest,
        })
    }

    pub(super) async fn remove(&self, job: &JobId, files: &[String]) -> Result<(), ArchiveError> {
        for file in files {
            let path = self.job_dir(job).join(file);
            match fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(())
    }

    /// The whole of `file`; `None` when there is no such file.
    /// Removes the job's folder and everything in it; answers whether there was one.
    ///
    /// An archiver visit may be writing into the folder meanwhile (a deletion does not
    /// wait for it: the visit finds the tombstone afterwards and removes what it wrote),
    /// and a file created while the folder is being emptied makes the removal fail with
    /// "directory not empty": the removal is then tried again, a few times.
    pub(super) async fn purge(&self, job: &JobId) -> Result<bool, ArchiveError> {
        const ATTEMPTS: u32 = 5;
        let path = self.job_dir(job);
        let mut attempt = 1;
        loop {
            match fs::remove_dir_all(&path).await {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(attempt > 1),
                Err(e)
                    if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && attempt < ATTEMPTS =>
                {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
    }

    pub(super) async fn read_whole(
        &self,
        job: &JobId,
        file: &str,
    ) -> Result<Option<Bytes>, ArchiveError> {
        let path = self.job_dir(job).join(file);
        match fs::read(&path).await {
            Ok(raw) => Ok(Some(Bytes::from(raw))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The names (relative to the job's folder) of the files in `folder`, temporary
    /// files of unfinished writes included (the caller keeps the names it knows).
    pub(super) async fn list(
        &self,
        job: &JobId,
        folder: &str,
    ) -> Result<Vec<String>, ArchiveError> {
        let path = self.job_dir(job).join(folder);
        let mut dir = match fs::read_dir(&path).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut names = Vec::new();
        while let Some(entry) = dir.next_entry().await.map_err(io(&path))? {
            if let Some(name) = entry.file_name().to_str() {
                names.push(format!("{folder}/{name}"));
            }
        }
        Ok(names)
    }

    pub(super) async fn read_log(
        &self,
        job: &JobId,
        file: &str,
        start: u64,
        end: u64,
    ) -> Result<Bytes, ArchiveError> {
        let path = self.job_dir(job).join(file);
        let len = usize::try_from(end - start)
            .map_err(|_| ArchiveError::Corrupt(format!("range of {job} too large")))?;
        // One blocking task reads the range straight into the buffer returned (tokio's
        // `File` would read it through a buffer of its own, zeroed and copied again).
        let read = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            let mut file = std::fs::File::open(&path).map_err(io(&path))?;
            file.seek(SeekFrom::Start(start)).map_err(io(&path))?;
            let mut buf = Vec::with_capacity(len);
            file.take(len as u64)
                .read_to_end(&mut buf)
                .map_err(io(&path))?;
            if buf.len() != len {
                let short = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                return Err(io(&path)(short));
            }
            Ok(buf)
        });
        let buf = read
            .await
            .map_err(|e| ArchiveError::Corrupt(format!("archive read task: {e}")))??;
        Ok(Bytes::from(buf))
    }
}

/// A log being written to a temporary file, renamed into place when finished.
#[derive(Debug)]
pub struct DirUpload {
    file: BufWriter<fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl DirUpload {
    pub(super) async fn write(&mut self, chunk: &[u8]) -> Result<(), ArchiveError> {
        self.file.write_all(chunk).await.map_err(io(&self.tmp))
    }

    pub(super) async fn finish(mut self) -> Result<Uploaded, ArchiveError> {
        let done = async {
            self.file.flush().await.map_err(io(&self.tmp))?;
            fs::rename(&self.tmp, &self.dest)
                .await
                .map_err(io(&self.dest))
        }
        .await;
        match done {
            Ok(()) => Ok(Uploaded { parts: 1 }),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    pub(super) async fn abort(self) {
        drop(self.file);
        if let Err(e) = fs::remove_file(&self.tmp).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.tmp.display(), error = %e, "could not remove a partial archive");
        }
    }
}
