//! Test support for the archiver: jobs written through the real `LogStore`, buckets on
//! the private S3-compatible server, and raw Redis access to simulate expiry.

use aws_sdk_s3::Client;
use logstream_core::ids::JobId;
use logstream_core::model::{EntryBody, JobStatus, LineStream, NewEntry, StoredEntry, now_ms};
use logstream_shared::archive::s3::S3Archive;
use logstream_shared::store::{LogStore, Retention};
use logstream_testkit::fixtures::seed_job;

/// Long enough that nothing expires unless a test says so; room for 50 000 lines.
pub const RETENTION: Retention = Retention {
    ttl_secs: 600,
    maxlen: 100_000,
    ..Retention::defaults(true)
};

pub use logstream_testkit::fixtures::unique;

pub fn job(prefix: &str) -> JobId {
    logstream_testkit::fixtures::job_id(prefix)
}

/// A fresh bucket on the S3-compatible server at `endpoint`, as an archive.
pub async fn bucket_archive(endpoint: &str) -> S3Archive {
    let client = S3Archive::local_client(endpoint);
    let bucket = unique("logs");
    create_bucket(&client, &bucket).await;
    S3Archive::new(client, bucket)
}

pub async fn create_bucket(client: &Client, bucket: &str) {
    client.create_bucket().bucket(bucket).send().await.unwrap();
}

/// A realistic build line: npm/vite-like text of about `width` characters.
pub fn text(i: usize, width: usize) -> String {
    let mut t = format!(
        "[{i:06}] added package @scope/pkg-{} in {}ms ",
        i % 977,
        i % 311
    );
    while t.len() < width {
        t.push_str("lorem ipsum dolor ");
    }
    t.truncate(width);
    t
}

/// Creates `job` for `owner` and appends `lines` stdout lines (in batches, as ingest
/// does); `finish` then moves it through `running` to `ready`, queueing it.
pub async fn write_job(
    store: &LogStore,
    job: &JobId,
    owner: &str,
    lines: usize,
    width: usize,
    finish: bool,
) {
    seed_job(store, job, owner).await;
    store
        .set_status(job, JobStatus::Running, now_ms(), None)
        .await
        .unwrap();
    append_lines(store, job, 0, lines, width).await;
    if finish {
        store
            .set_status(job, JobStatus::Ready, now_ms(), None)
            .await
            .unwrap();
    }
}

/// Appends lines `from..from + count` (see [`text`]) to a running job, in batches of
/// 5 000 as ingest would.
pub async fn append_lines(store: &LogStore, job: &JobId, from: usize, count: usize, width: usize) {
    let mut i = from;
    while i < from + count {
        let batch: Vec<String> = (i..(i + 5_000).min(from + count))
            .map(|k| {
                NewEntry {
                    ts: now_ms(),
                    body: EntryBody::Line {
                        stream: if k % 10 == 9 {
                            LineStream::Stderr
                        } else {
                            LineStream::Stdout
                        },
                        text: text(k, width),
                        ansi: None,
                    },
                }
                .to_stored_json()
            })
            .collect();
        store.append(job, "g", None, &batch).await.unwrap();
        i += batch.len();
    }
}

/// More lines for a running job written by [`write_job`] (40 characters wide).
pub async fn write_job_lines(store: &LogStore, job: &JobId, count: usize) {
    let have = store.job_meta(job).await.unwrap().unwrap().entries as usize;
    append_lines(store, job, have, count, 40).await;
}

/// Every entry of the job in Redis, as the archive should hold it (one line each).
pub async fn redis_lines(store: &LogStore, job: &JobId) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = logstream_core::ids::EntryId { ms: 0, seq: 0 };
    loop {
        let page: Vec<StoredEntry> = store.entries_after(job, after, 5_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        out.extend(page.iter().map(StoredEntry::to_json));
    }
    out
}

/// The body of `key`, as text.
pub async fn object_text(archive: &S3Archive, key: &str) -> String {
    let out = archive
        .client()
        .await
        .get_object()
        .bucket(archive.bucket())
        .key(key)
        .send()
        .await
        .unwrap();
    String::from_utf8(out.body.collect().await.unwrap().to_vec()).unwrap()
}

/// (ETag, Last-Modified, owner metadata) of `key`, or `None` when it does not exist.
pub async fn head(archive: &S3Archive, key: &str) -> Option<(String, String, Option<String>)> {
    let out = archive
        .client()
        .await
        .head_object()
        .bucket(archive.bucket())
        .key(key)
        .send()
        .await
        .ok()?;
    Some((
        out.e_tag().unwrap_or_default().to_owned(),
        format!("{:?}", out.last_modified()),
        out.metadata().and_then(|m| m.get("owner").cloned()),
    ))
}

/// Deletes the job's keys, as their TTL would.
pub async fn expire_now(redis_url: &str, job: &JobId) {
    let mut conn = raw(redis_url).await;
    let _: () = redis::cmd("DEL")
        .arg(format!("job:{{{job}}}:meta"))
        .arg(format!("job:{{{job}}}:logs"))
        .arg(format!("job:{{{job}}}:ws"))
        .arg(format!("job:{{{job}}}:idx"))
        .arg(format!("job:{{{job}}}:flush"))
        .query_async(&mut conn)
        .await
        .unwrap();
}

pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A temporary folder, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("logstream-archive-test"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Entries in the job's stream (`XLEN`).
pub async fn stream_len(redis_url: &str, job: &JobId) -> u64 {
    redis::cmd("XLEN")
        .arg(format!("job:{{{job}}}:logs"))
        .query_async(&mut raw(redis_url).await)
        .await
        .unwrap()
}
