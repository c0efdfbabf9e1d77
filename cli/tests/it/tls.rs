//! `rediss://`: the real `logstream` binary against a TLS-only Redis port, with a CA
//! made for the test (trusted through `SSL_CERT_FILE`, which the platform certificate
//! loader honours). Proves the TLS crypto provider is in place: without one, rustls
//! panics at the first connection, only in deployment. Covers both kinds of
//! connection: the redis crate's (ingest) and the store's own page reads (history).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use logstream_testkit::redis_server::RedisServer;
use serde_json::{Value, json};

const KEY: &str = "tls-test-ingest-key-0123456789";

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is not installed: run scripts/ensure-deps --test");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA and a server certificate for `localhost`, signed by it.
fn make_certs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=logstream-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
}

#[tokio::test]
async fn the_service_works_over_rediss() {
    let certs = std::env::temp_dir().join(format!("logstream-tls-{}", std::process::id()));
    make_certs(&certs);
    let redis = RedisServer::start_tls(&certs).unwrap();

    let mut dev = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args(["dev", "--addr", "127.0.0.1:0"])
        .env("REDIS_URL", redis.tls_url().unwrap())
        .env("SSL_CERT_FILE", certs.join("ca.pem"))
        .env("LOGSTREAM_ARCHIVE_DIR", certs.join("archive"))
        .env("LOGSTREAM_INGEST_KEY", KEY)
        .env("LOGSTREAM_JWT_SECRET", crate::support::JWT_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    // Kept open to the end: the server prints more lines, and a closed pipe would fail it.
    let mut stdout = BufReader::new(dev.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    let url = first.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");

    let http = reqwest::Client::new();
    let created = http
        .post(format!("{url}/jobs"))
        .bearer_auth(KEY)
        .json(&json!({"job_id": "tls-1", "owner": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let posted: Value = http
        .post(format!("{url}/jobs/tls-1/logs"))
        .bearer_auth(KEY)
        .json(&json!({"lines": [{"text": "over TLS"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(posted["accepted"], 1, "{posted}");

    // History pages are read over connections of their own (`resp.rs`): TLS there too.
    let page = http
        .get(format!("{url}/jobs/tls-1/logs"))
        .bearer_auth(crate::support::viewer_token("alice", 300))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page: Value = page.json().await.unwrap();
    assert_eq!(page["lines"][0]["text"], "over TLS", "{page}");

    let _ = dev.kill();
    drop(stdout);
    let _ = dev.wait();
    let _ = std::fs::remove_dir_all(&certs);
}
