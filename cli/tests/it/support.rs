//! Test support: `logstream dev` on port 0 over this binary's private Redis, an HTTP
//! client, and viewer tokens signed with the test secret.
//!
//! `LOGSTREAM_TEST_REDIS=cluster` makes that private Redis a six-node Redis Cluster
//! (`REDIS_URL` = the comma-separated node list), so the same tests run unchanged
//! against a cluster (`scripts/test` does so for the ingest, history, SSE and archive
//! tests). Tests that stop or restart their own Redis stay on a single node.

use logstream_cli::dev::{self, DevServer};
use logstream_testkit::fixtures::test_config;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

pub use logstream_testkit::fixtures::{INGEST_KEY, JWT_SECRET, error_code, viewer_token};
pub use logstream_testkit::sse::{Frame, SseClient};

pub struct Env {
    pub server: DevServer,
    pub http: reqwest::Client,
    /// This server's archive folder (a temporary one unless the test set
    /// `LOGSTREAM_ARCHIVE_DIR`), removed with the `Env`.
    pub archive_dir: std::path::PathBuf,
    pub keep_archive_dir: Option<TempDir>,
}

/// A temporary folder, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `LOGSTREAM_TEST_REDIS=cluster` asks for the tests to run on a cluster.
pub fn cluster_mode() -> bool {
    std::env::var("LOGSTREAM_TEST_REDIS").is_ok_and(|v| v == "cluster")
}

/// `REDIS_URL` of this test binary's shared private Redis: one `redis-server`, or in
/// cluster mode a six-node cluster.
pub fn shared_redis_url() -> String {
    if cluster_mode() {
        logstream_testkit::redis_cluster::shared()
            .expect("redis cluster")
            .url()
    } else {
        logstream_testkit::redis_server::shared()
            .expect("redis-server")
            .url()
    }
}

/// A dev server on the shared private Redis.
pub async fn env() -> Env {
    env_with(&[("REDIS_URL", &shared_redis_url())]).await
}

/// A dev server on a Redis no other test uses (whose archive queue, for one, is its
/// own): a fresh cluster in cluster mode (returned too: keep it while the server runs),
/// else a `redis-server` of the server's own.
pub async fn env_isolated(
    pairs: &[(&str, &str)],
) -> (Env, Option<logstream_testkit::redis_cluster::RedisCluster>) {
    if !cluster_mode() {
        return (env_with(pairs).await, None);
    }
    let cluster =
        tokio::task::spawn_blocking(logstream_testkit::redis_cluster::RedisCluster::start)
            .await
            .expect("join")
            .expect("redis cluster");
    let url = cluster.url();
    let mut all = vec![("REDIS_URL", url.as_str())];
    all.extend_from_slice(pairs);
    (env_with(&all).await, Some(cluster))
}

/// A dev server with extra settings (`REDIS_URL` unset: it starts its own Redis).
pub async fn env_with(pairs: &[(&str, &str)]) -> Env {
    env_limited(pairs, dev::serve::Limits::default()).await
}

/// The archive folder of every server on this binary's shared Redis. One deployment
/// has one archive: the servers' archivers all sweep the shared Redis's one archive
/// queue, so a job of one server may be archived (and its stream trimmed) by another's,
/// and every server must read the archive that archiver wrote to.
fn shared_archive_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<(std::path::PathBuf, logstream_testkit::process::Guarded)> =
        std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(job_id("logstream-shared-archive"));
        // Removed when this test binary exits (a static is never dropped).
        let guard = logstream_testkit::process::remove_on_exit(&dir).expect("sh");
        (dir, guard)
    })
    .0
    .clone()
}

/// Where a server started with `pairs` archives: `LOGSTREAM_ARCHIVE_DIR` when the test
/// set it, the shared folder for a server on the shared Redis, else a folder of the
/// server's own (removed with the returned guard). Never the source tree.
pub fn archive_dir_for(pairs: &[(&str, &str)]) -> (std::path::PathBuf, Option<TempDir>) {
    if let Some((_, dir)) = pairs.iter().find(|(k, _)| *k == "LOGSTREAM_ARCHIVE_DIR") {
        return (std::path::PathBuf::from(dir), None);
    }
    if pairs
        .iter()
        .any(|(k, v)| *k == "REDIS_URL" && *v == shared_redis_url())
    {
        return (shared_archive_dir(), None);
    }
    let dir = std::env::temp_dir().join(job_id("logstream-dev-archive"));
    (dir.clone(), Some(TempDir(dir)))
}

/// [`env_with`] with the server's connection cap and header-read timeout set.
pub async fn env_limited(pairs: &[(&str, &str)], limits: dev::serve::Limits) -> Env {
    let (archive_dir, temp) = archive_dir_for(pairs);
    let dir = archive_dir.to_string_lossy().into_owned();
    let mut all = vec![("LOGSTREAM_ARCHIVE_DIR", dir.as_str())];
    all.extend_from_slice(pairs);
    let config = test_config(&all);
    let server = dev::start_with(config, "127.0.0.1:0", limits)
        .await
        .expect("dev server");
    Env {
        server,
        http: reqwest::Client::new(),
        archive_dir,
        keep_archive_dir: temp,
    }
}

/// A job id no other test uses.
pub fn job_id(prefix: &str) -> String {
    logstream_testkit::fixtures::unique(prefix)
}

impl Env {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    /// Creates a job owned by `owner`; returns its id and ingest token.
    pub async fn create_job(&self, owner: &str) -> (String, String) {
        self.create_job_with(owner, &[]).await
    }

    pub async fn create_job_with(&self, owner: &str, secrets: &[&str]) -> (String, String) {
        let id = job_id("job");
        let res = self
            .http
            .post(self.url("/jobs"))
            .bearer_auth(INGEST_KEY)
            .json(&json!({"job_id": id, "owner": owner, "secrets": secrets}))
            .send()
            .await
            .expect("POST /jobs");
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.expect("json");
        (id, body["ingest_token"].as_str().expect("token").to_owned())
    }

    /// `POST /jobs` with the ingest key for job `job` of `owner`, answered as it is.
    pub async fn create_job_as(&self, job: &str, owner: &str) -> Response {
        self.http
            .post(self.url("/jobs"))
            .bearer_auth(INGEST_KEY)
            .json(&json!({"job_id": job, "owner": owner}))
            .send()
            .await
            .expect("POST /jobs")
    }

    /// POSTs a JSON batch with the ingest key.
    pub async fn post_json(&self, job: &str, body: &Value) -> Response {
        self.http
            .post(self.url(&format!("/jobs/{job}/logs")))
            .bearer_auth(INGEST_KEY)
            .json(body)
            .send()
            .await
            .expect("POST logs")
    }

    /// POSTs `n` stdout lines `"{prefix} {i}"` and asserts they were accepted.
    pub async fn post_lines(&self, job: &str, prefix: &str, n: usize) -> Value {
        let lines: Vec<Value> = (0..n)
            .map(|i| json!({"stream": "stdout", "text": format!("{prefix} {i}")}))
            .collect();
        let res = self.post_json(job, &json!({ "lines": lines })).await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.expect("json")
    }

    pub async fn set_status(&self, job: &str, status: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .put(self.url(&format!("/jobs/{job}/status")))
            .bearer_auth(INGEST_KEY)
            .json(&json!({ "status": status }))
            .send()
            .await
            .expect("PUT status");
        let code = res.status();
        (code, res.json().await.expect("json"))
    }

    /// Ends the job with `status` and `exit_code` (`PUT …/status`); asserts 200.
    pub async fn end_with(&self, job: &str, status: &str, exit_code: i64) {
        let res = self
            .http
            .put(self.url(&format!("/jobs/{job}/status")))
            .bearer_auth(INGEST_KEY)
            .json(&json!({ "status": status, "exit_code": exit_code }))
            .send()
            .await
            .expect("PUT status");
        assert_eq!(res.status(), StatusCode::OK);
    }

    /// The job's manifest in this server's archive folder, once it exists.
    pub fn manifest(&self, job: &str) -> Option<Value> {
        let path = self
            .archive_dir
            .join("build-logs")
            .join(job)
            .join("manifest.json");
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Waits up to 30 s for the job's manifest to say `done`; panics with `what`.
    pub async fn wait_for_manifest(&self, job: &str, what: &str, done: impl Fn(&Value) -> bool) {
        let started = std::time::Instant::now();
        while !self.manifest(job).is_some_and(|m| done(&m)) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "{what}: {:?}",
                self.manifest(job)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Deletes the job's Redis keys, as eviction or a flushed cache would (one node, or
    /// the node of the job's slot in a cluster).
    pub async fn forget_in_redis(&self, job: &str) {
        let mut del = redis::cmd("DEL");
        del.arg(format!("job:{{{job}}}:logs"))
            .arg(format!("job:{{{job}}}:meta"))
            .arg(format!("job:{{{job}}}:idx"));
        let url = self.server.redis_url.as_str();
        if url.contains(',') {
            let mut redis = redis::cluster::ClusterClient::new(url.split(",").collect::<Vec<_>>())
                .expect("cluster urls")
                .get_async_connection()
                .await
                .expect("redis cluster");
            del.query_async::<()>(&mut redis).await.expect("DEL");
        } else {
            let mut redis = redis::Client::open(url)
                .expect("redis url")
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            del.query_async::<()>(&mut redis).await.expect("DEL");
        }
    }

    /// GETs `path` as viewer `user`; returns status and JSON body.
    pub async fn get_as(&self, user: &str, path: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(self.url(path))
            .bearer_auth(viewer_token(user, 300))
            .send()
            .await
            .expect("GET");
        let code = res.status();
        (code, res.json().await.expect("json"))
    }
}

/// The `text` of every line entry, in order.
pub fn texts(lines: &Value) -> Vec<String> {
    lines
        .as_array()
        .expect("lines array")
        .iter()
        .filter(|e| e["kind"] == "line")
        .map(|e| e["text"].as_str().expect("text").to_owned())
        .collect()
}

/// Opens a stream of `env`'s service as [`SseClient::open`]: `path` with extra headers.
pub trait OpenSse {
    async fn open(env: &Env, path: &str, headers: &[(&str, &str)]) -> SseClient;
}

impl OpenSse for SseClient {
    async fn open(env: &Env, path: &str, headers: &[(&str, &str)]) -> SseClient {
        SseClient::connect(&env.http, &env.url(path), headers).await
    }
}
