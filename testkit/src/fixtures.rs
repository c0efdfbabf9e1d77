//! What the tests of every crate set up the same way: settings from a few pairs, job
//! ids no other test uses, viewer tokens signed with the test secret, and a job written
//! straight into the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use logstream_core::ids::JobId;
use logstream_core::model::{EntryBody, LineStream, NewEntry, now_ms};
use logstream_shared::clients::Clients;
use logstream_shared::config::Config;
use logstream_shared::store::{LogStore, NewJob};
use serde_json::{Value, json};

/// The ingest key of the test services.
pub const INGEST_KEY: &str = "test-ingest-key-0123456789";
/// The HS256 secret the test services verify viewer tokens with.
pub const JWT_SECRET: &str = "test-secret-for-hs256-viewers-0123456789";

/// A `Config` read from `pairs` only (never the process environment).
pub fn config(pairs: &[(&str, &str)]) -> Config {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    Config::from_lookup(|name| map.get(name).map(|v| (*v).to_owned())).expect("config")
}

/// A Lambda's [`Clients`] over the settings in `pairs`: what a function's `main` builds
/// its state from.
pub fn lambda_clients(pairs: &[(&str, &str)]) -> Clients {
    Clients::lambda(config(pairs))
}

/// The test services' settings ([`INGEST_KEY`], [`JWT_SECRET`]) with `pairs` on top.
pub fn test_config(pairs: &[(&str, &str)]) -> Config {
    let mut all = vec![
        ("LOGSTREAM_INGEST_KEY", INGEST_KEY),
        ("LOGSTREAM_JWT_SECRET", JWT_SECRET),
    ];
    all.extend_from_slice(pairs);
    config(&all)
}

/// A name no other test (of any test binary running at the same time) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A job id no other test uses.
pub fn job_id(prefix: &str) -> JobId {
    JobId::parse(&unique(prefix)).expect("job id")
}

/// An HS256 token for `user` signed with `secret`, expiring `exp_in` seconds from now.
pub fn token_signed(secret: &str, user: &str, exp_in: i64) -> String {
    let now = (now_ms() / 1000) as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": now + exp_in, "iat": now}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// A viewer token for `user` signed with [`JWT_SECRET`], valid five minutes, with
/// `extra` claims merged in (an org claim, say: `{"org_id": "acme"}` or
/// `{"o": {"id": "acme"}}`).
pub fn viewer_token_with(user: &str, extra: serde_json::Value) -> String {
    let now = (now_ms() / 1000) as i64;
    let mut claims = json!({"sub": user, "exp": now + 300, "iat": now});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign")
}

/// A viewer token for `user` signed with [`JWT_SECRET`], expiring `exp_in` seconds
/// from now.
pub fn viewer_token(user: &str, exp_in: i64) -> String {
    token_signed(JWT_SECRET, user, exp_in)
}

/// A job as [`seed_job`] creates it: `owner`, no token, no secrets, generation `g`.
pub fn new_job(owner: &str) -> NewJob<'_> {
    NewJob {
        owner,
        token_hash: "",
        secrets: &[],
        generation: "g",
        created_at: now_ms(),
        org: None,
    }
}

/// Creates `job`, owned by `owner`, straight in the store; panics if it exists.
pub async fn seed_job(store: &LogStore, job: &JobId, owner: &str) {
    assert!(
        store
            .create_job(job, &new_job(owner))
            .await
            .expect("create"),
        "{job} exists already"
    );
}

/// A stdout line `text`, stamped now, as the store keeps it.
pub fn stdout_line(text: &str) -> String {
    NewEntry {
        ts: now_ms(),
        body: EntryBody::Line {
            stream: LineStream::Stdout,
            text: text.into(),
            ansi: None,
        },
    }
    .to_stored_json()
}

/// `n` stdout lines `line 0` … `line {n-1}`, as the store keeps them.
pub fn numbered_lines(n: usize) -> Vec<String> {
    (0..n).map(|i| stdout_line(&format!("line {i}"))).collect()
}

/// Creates `job` of `owner` (as [`seed_job`]) holding `n` lines `line {i}`.
pub async fn seed_job_with_lines(store: &LogStore, job: &JobId, owner: &str, n: usize) {
    seed_job(store, job, owner).await;
    if n > 0 {
        store
            .append(job, "g", None, &numbered_lines(n))
            .await
            .expect("append");
    }
}

/// The code of the SPEC's error body.
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}
