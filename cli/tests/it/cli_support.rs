//! Test support for the client commands: the built `logstream` binary as a real
//! process, a dev server that can be stopped and started again on the same address,
//! and the whole history of a job read back over plain HTTP (not through the client
//! under test).

use std::process::Stdio;
use std::time::Duration;

use logstream_cli::dev::{self, DevServer};
use logstream_testkit::fixtures::test_config;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::support::{INGEST_KEY, viewer_token};

/// The `logstream` binary with a clean environment for `url`.
pub fn logstream(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logstream"));
    cmd.env_remove("LOGSTREAM_TOKEN")
        .env_remove("NO_COLOR")
        .env("LOGSTREAM_URL", url)
        .env("LOGSTREAM_INGEST_KEY", INGEST_KEY)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// What a finished process left.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to the end, capturing its output.
pub async fn finish(mut cmd: Command) -> Finished {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output(),
    )
    .await
    .expect("the command finished")
    .expect("the command ran");
    Finished {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts a dev server on `addr` (used to bring one back on the address it had), with
/// the archive folder a server started with `pairs` had (see `archive_dir_for`).
pub async fn dev_at(addr: &str, pairs: &[(&str, &str)]) -> DevServer {
    let (archive_dir, _) = crate::support::archive_dir_for(pairs);
    let dir = archive_dir.to_string_lossy().into_owned();
    let mut all = vec![("LOGSTREAM_ARCHIVE_DIR", dir.as_str())];
    all.extend_from_slice(pairs);
    let mut last = None;
    // The old listener's port is free at once (SO_REUSEADDR), but be patient.
    for _ in 0..50 {
        match dev::start(test_config(&all), addr).await {
            Ok(server) => return server,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("dev server on {addr}: {last:?}");
}

/// Every entry of `job`, oldest first, read page by page over plain HTTP.
pub async fn all_entries(http: &reqwest::Client, base: &str, job: &str, owner: &str) -> Vec<Value> {
    let token = viewer_token(owner, 600);
    let mut entries = Vec::new();
    let mut after = "0-0".to_owned();
    loop {
        let page: Value = http
            .get(format!("{base}/jobs/{job}/logs?limit=500&after={after}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET logs")
            .json()
            .await
            .expect("json");
        let lines = page["lines"].as_array().expect("lines").clone();
        let Some(last) = lines.last() else { break };
        after = last["id"].as_str().expect("id").to_owned();
        entries.extend(lines);
        if page["has_more"] != true {
            break;
        }
    }
    entries
}

/// The texts of the `stream` lines among `entries`, in order.
pub fn texts_of(entries: &[Value], stream: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["kind"] == "line" && e["stream"] == stream)
        .map(|e| e["text"].as_str().expect("text").to_owned())
        .collect()
}

/// The status entries among `entries`, in order.
pub fn statuses(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["kind"] == "status")
        .map(|e| e["status"].as_str().expect("status").to_owned())
        .collect()
}

/// A compact, comparable form of each entry: `status running`, `stage build started`,
/// `stdout text`, …
pub fn summary(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match e["kind"].as_str() {
            Some("line") => format!(
                "{} {}",
                e["stream"].as_str().unwrap(),
                e["text"].as_str().unwrap()
            ),
            Some("stage") => format!(
                "stage {} {}",
                e["name"].as_str().unwrap(),
                e["status"].as_str().unwrap()
            ),
            Some("status") => format!("status {}", e["status"].as_str().unwrap()),
            other => panic!("unexpected kind {other:?}"),
        })
        .collect()
}

/// Polls `check` every 20 ms until it is true; panics after `secs`.
pub async fn wait_until<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited too long for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lines of a child's output, read as they come; everything read is kept.
pub struct LineReader<R> {
    lines: tokio::io::Lines<BufReader<R>>,
    pub seen: Vec<String>,
}

impl<R: tokio::io::AsyncRead + Unpin> LineReader<R> {
    pub fn new(pipe: R) -> Self {
        Self {
            lines: BufReader::new(pipe).lines(),
            seen: Vec::new(),
        }
    }

    /// Reads until a line containing `needle` (returned); panics at the end of output
    /// or after `secs`.
    pub async fn until(&mut self, needle: &str, secs: u64) -> String {
        let wait = async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .expect("read")
                    .unwrap_or_else(|| panic!("output ended before {needle:?}: {:?}", self.seen));
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(secs), wait)
            .await
            .unwrap_or_else(|_| panic!("no line with {needle:?} in {secs} s"))
    }

    /// Reads everything that is left.
    pub async fn rest(mut self) -> Vec<String> {
        while let Some(line) = self.lines.next_line().await.expect("read") {
            self.seen.push(line);
        }
        self.seen
    }
}

/// The child's stdout and stderr as line readers.
pub fn readers(child: &mut Child) -> (LineReader<ChildStdout>, LineReader<ChildStderr>) {
    (
        LineReader::new(child.stdout.take().expect("stdout piped")),
        LineReader::new(child.stderr.take().expect("stderr piped")),
    )
}

/// Waits for the child's exit code.
pub async fn exit_code(child: &mut Child) -> Option<i32> {
    tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .expect("the process ended")
        .expect("wait")
        .code()
}

/// `lines` with the durations on their `==> ` lines written `_` (`==> job ready (after
/// 32ms)` → `==> job ready (after _)`, a stage's end likewise): what a test can expect.
pub fn any_duration<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Vec<String> {
    lines
        .into_iter()
        .map(|line| {
            let line = line.as_ref();
            match (line.starts_with("==> "), line.rfind("after ")) {
                (true, Some(at)) if line.ends_with(')') => {
                    format!("{}after _)", &line[..at])
                }
                _ => line.to_owned(),
            }
        })
        .collect()
}
