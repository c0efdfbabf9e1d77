//! Test support: `logstream dev` on port 0 over this binary's private Redis, an HTTP
//! client, and viewer tokens signed with the test secret.
//!
//! `LOGSTREAM_TEST_REDIS=cluster` makes that private Redis a six-node Redis Cluster
//! (`REDIS_URL` = the comma-separated node list), so the same tests run unchanged
//! against a cluster (`scripts/test` does so for the ingest, history, SSE and archive
//! tests). Tests that stop or restart their own Redis stay on a single node.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use logstream_cli::dev::{self, DevServer};
use logstream_shared::config::Config;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

pub const INGEST_KEY: &str = "test-ingest-key-0123456789";
pub const JWT_SECRET: &str = "test-secret-for-hs256-viewers-0123456789";

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
        logstream_shared::redis_cluster::shared()
            .expect("redis cluster")
            .url()
    } else {
        logstream_shared::redis_server::shared()
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
) -> (Env, Option<logstream_shared::redis_cluster::RedisCluster>) {
    if !cluster_mode() {
        return (env_with(pairs).await, None);
    }
    let cluster = tokio::task::spawn_blocking(logstream_shared::redis_cluster::RedisCluster::start)
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
    let mut map: HashMap<String, String> = HashMap::from([
        ("LOGSTREAM_INGEST_KEY".into(), INGEST_KEY.into()),
        ("LOGSTREAM_JWT_SECRET".into(), JWT_SECRET.into()),
    ]);
    for (k, v) in pairs {
        map.insert(k.to_string(), v.to_string());
    }
    // Archives go to a folder of this server's own, not into the source tree.
    let temp = match map.get("LOGSTREAM_ARCHIVE_DIR") {
        Some(_) => None,
        None => {
            let dir = std::env::temp_dir().join(job_id("logstream-dev-archive"));
            map.insert(
                "LOGSTREAM_ARCHIVE_DIR".into(),
                dir.to_string_lossy().into_owned(),
            );
            Some(TempDir(dir))
        }
    };
    let archive_dir = std::path::PathBuf::from(&map["LOGSTREAM_ARCHIVE_DIR"]);
    let config = Config::from_lookup(|name| map.get(name).cloned()).expect("config");
    let server = dev::start(config, "127.0.0.1:0").await.expect("dev server");
    Env {
        server,
        http: reqwest::Client::new(),
        archive_dir,
        keep_archive_dir: temp,
    }
}

/// A job id no other test uses.
pub fn job_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        logstream_shared::model::now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An HS256 viewer token for `user`, expiring `exp_in` seconds from now.
pub fn viewer_token(user: &str, exp_in: i64) -> String {
    let now = (logstream_shared::model::now_ms() / 1000) as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": now + exp_in, "iat": now}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign")
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

/// The SPEC's error body's code.
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
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

/// One Server-Sent Events frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// A minimal SSE client over reqwest, parsing frames as a browser would.
pub struct SseClient {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseClient {
    /// Opens `path` (a viewer token for `user` in the query) with extra headers.
    pub async fn open(env: &Env, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut req = env.http.get(env.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("GET stream");
        SseClient {
            status: res.status(),
            headers: res.headers().clone(),
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next frame, or `None` when the stream ended. Panics after `wait` without one.
    pub async fn next(&mut self, wait: std::time::Duration) -> Option<Frame> {
        use futures_util::StreamExt;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut frame = Frame::default();
                for line in raw.lines() {
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => frame.id = Some(value.to_owned()),
                        "event" => frame.event = Some(value.to_owned()),
                        "data" => frame.data.push_str(value),
                        "retry" => frame.retry = value.parse().ok(),
                        _ => {}
                    }
                }
                return Some(frame);
            }
            match tokio::time::timeout(wait, self.body.next())
                .await
                .expect("no SSE frame in time")
            {
                Some(Ok(chunk)) => self
                    .buf
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8")),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next frame that is not a heartbeat or the `retry:` preamble.
    pub async fn next_entry(&mut self) -> Option<Frame> {
        loop {
            let frame = self.next(std::time::Duration::from_secs(10)).await?;
            let preamble = frame.retry.is_some() && frame.event.is_none();
            if frame.event.as_deref() != Some("heartbeat") && !preamble {
                return Some(frame);
            }
        }
    }
}
