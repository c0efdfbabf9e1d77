//! A private S3-compatible server on a free loopback port, for the archive tests and
//! the archive benchmark: the S3 wire protocol for real, without an AWS account.
//!
//! The server is moto's `moto_server` (PyPI `moto[server]`), which `scripts/ensure-deps`
//! installs, pinned, into `.tools/moto`; `$LOGSTREAM_MOTO_SERVER` overrides it and the
//! `PATH` is the last resort. It keeps everything in memory, so a restart comes back
//! empty, and it enforces the S3 rules that matter here (5 MiB minimum multipart part,
//! `NoSuchKey`, byte ranges). Clients use path-style addressing against
//! [`S3Server::url`]. Like the private Redis it dies with its owner (see
//! [`crate::process`]).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::{Guarded, free_port, wait_closed};

/// Environment variable naming the `moto_server` executable, ahead of any other.
pub const MOTO_SERVER_VAR: &str = "LOGSTREAM_MOTO_SERVER";

/// Why a private S3 server did not start.
#[derive(Debug, thiserror::Error)]
pub enum S3ServerError {
    #[error("moto_server is not installed (run scripts/ensure-deps, or set {MOTO_SERVER_VAR})")]
    NotInstalled,
    #[error("could not start moto_server: {0}")]
    Io(#[from] io::Error),
    #[error("moto_server did not answer on port {0} within 60 s (see {1})")]
    NoAnswer(u16, String),
}

/// A running private S3-compatible server. Stops when dropped.
#[derive(Debug)]
pub struct S3Server {
    port: u16,
    dir: PathBuf,
    program: PathBuf,
    guard: Option<Guarded>,
}

impl S3Server {
    /// Starts a server on a free loopback port and waits until it answers HTTP.
    pub fn start() -> Result<Self, S3ServerError> {
        let program = moto_server().ok_or(S3ServerError::NotInstalled)?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("logstream-s3-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port,
            dir,
            program,
            guard: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`, the endpoint URL for a path-style client.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (tests use this to take S3 away).
    pub fn stop(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.stop();
        }
        wait_closed(self.port, Duration::from_secs(5));
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) -> Result<(), S3ServerError> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), S3ServerError> {
        let log = self.dir.join("moto.log");
        self.guard = Some(Guarded::spawn(&format!(
            "'{program}' -H 127.0.0.1 -p {port} >'{log}' 2>&1",
            program = self.program.display(),
            port = self.port,
            log = log.display(),
        ))?);
        // moto imports a lot of Python before it listens.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers_http(self.port) {
            if Instant::now() > deadline {
                self.stop();
                return Err(S3ServerError::NoAnswer(
                    self.port,
                    log.display().to_string(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One private server for the whole process, started on first use (each test then
/// works in its own bucket). It stops when the process exits.
pub fn shared() -> Result<&'static S3Server, String> {
    static SERVER: std::sync::OnceLock<Result<S3Server, String>> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| S3Server::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// `$LOGSTREAM_MOTO_SERVER`, else the project's `.tools/moto` install, else the `PATH`.
fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(MOTO_SERVER_VAR) {
        return Some(PathBuf::from(path));
    }
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/moto/bin/moto_server");
    if project.is_file() {
        return Some(project);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("moto_server"))
            .find(|candidate| candidate.is_file())
    })
}

fn answers_http(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(100),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 5];
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_ok()
        && stream.read_exact(&mut head).is_ok()
        && &head == b"HTTP/"
}
