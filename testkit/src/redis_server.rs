//! A private `redis-server` on a free loopback port, for `logstream dev` (when
//! `REDIS_URL` is unset) and for the tests, which never assume a Redis is running.
//!
//! The server dies with its owner (see [`crate::process`]). Persistence is off: this
//! Redis is disposable. [`RedisServer::start_persistent`] turns the append-only file on
//! (fsync on every write) for tests that restart Redis and expect the data back.

use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{Guarded, free_port, wait_closed};

/// Why a private Redis did not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error("redis-server is not installed (Debian/Ubuntu: sudo apt-get install -y redis-server)")]
    NotInstalled,
    #[error("could not start redis-server: {0}")]
    Io(#[from] io::Error),
    #[error("redis-server did not accept connections on port {0} within 10 s")]
    NoAnswer(u16),
}

/// A running private `redis-server`. Stops when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// Extra `redis-server` arguments (TLS).
    extra: String,
    tls_port: Option<u16>,
    /// Append-only file, fsynced on every write: survives [`RedisServer::restart`].
    persistent: bool,
    guard: Option<Guarded>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub fn start() -> Result<Self, RedisServerError> {
        Self::start_with(None)
    }

    /// Starts a server that keeps its data across [`RedisServer::restart`]: an
    /// append-only file fsynced before each write is answered, so whatever Redis
    /// acknowledged is there again after a restart.
    pub fn start_persistent() -> Result<Self, RedisServerError> {
        Self::start_persistent_with("")
    }

    /// [`RedisServer::start_persistent`] with extra `redis-server` arguments, such as
    /// `--key-load-delay 1000` (µs per key loaded) to make a restart's loading last.
    pub fn start_persistent_with(args: &str) -> Result<Self, RedisServerError> {
        let mut server = Self::unstarted(free_port()?, None)?;
        server.persistent = true;
        server.extra = format!("{} {args}", server.extra);
        server.spawn()?;
        Ok(server)
    }

    /// Starts a server on `port` (free, chosen by the caller): for a service that was
    /// told to use that port before anything listened on it.
    pub fn start_on(port: u16) -> Result<Self, RedisServerError> {
        let mut server = Self::unstarted(port, None)?;
        server.spawn()?;
        Ok(server)
    }

    /// Starts a server that also accepts TLS on a second port, with the certificate and
    /// key in `certs` (`server.pem`, `server.key`, and the `ca.pem` that signed them).
    pub fn start_tls(certs: &Path) -> Result<Self, RedisServerError> {
        Self::start_with(Some(certs))
    }

    fn start_with(certs: Option<&Path>) -> Result<Self, RedisServerError> {
        let mut server = Self::unstarted(free_port()?, certs)?;
        server.spawn()?;
        Ok(server)
    }

    fn unstarted(port: u16, certs: Option<&Path>) -> Result<Self, RedisServerError> {
        let dir =
            std::env::temp_dir().join(format!("logstream-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (extra, tls_port) = match certs {
            None => (String::new(), None),
            Some(certs) => {
                let tls_port = free_port()?;
                let c = certs.display();
                let args = format!(
                    "--tls-port {tls_port} --tls-cert-file '{c}/server.pem' \
                     --tls-key-file '{c}/server.key' --tls-ca-cert-file '{c}/ca.pem' \
                     --tls-auth-clients no"
                );
                (args, Some(tls_port))
            }
        };
        Ok(Self {
            port,
            dir,
            extra,
            tls_port,
            persistent: false,
            guard: None,
        })
    }

    /// `rediss://localhost:PORT` of a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://localhost:{p}"))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (tests use this to take Redis away).
    pub fn stop(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.stop();
        }
        // The guard kills redis-server asynchronously; wait until the port is closed.
        wait_closed(self.port, Duration::from_secs(5));
    }

    /// Starts the server again on the same port: empty, unless it was started with
    /// [`RedisServer::start_persistent`].
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), RedisServerError> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            return Err(RedisServerError::NotInstalled);
        }
        let persistence = if self.persistent {
            "--appendonly yes --appendfsync always"
        } else {
            "--appendonly no"
        };
        std::fs::create_dir_all(&self.dir)?;
        let command = format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' {persistence} --dir '{dir}' \
             --loglevel warning {extra} >'{dir}/redis.log' 2>&1",
            port = self.port,
            dir = self.dir.display(),
            extra = self.extra,
        );
        // A server that starts empty takes its folder with it when it stops, also when
        // it belongs to a test binary's static (never dropped); a persistent one keeps
        // its data for the next start, and its owner's drop removes the folder.
        self.guard = Some(if self.persistent {
            Guarded::spawn(&command)?
        } else {
            Guarded::spawn_then(&command, &format!("rm -rf '{}'", self.dir.display()))?
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            if Instant::now() > deadline {
                self.stop();
                return Err(RedisServerError::NoAnswer(self.port));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut stream) = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(100),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// One private server for the whole process, started on first use: what each test
/// binary shares (each test then works in its own job ids). It stops when the
/// process exits (see the module doc).
pub fn shared() -> Result<&'static RedisServer, String> {
    static SERVER: std::sync::OnceLock<Result<RedisServer, String>> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| RedisServer::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}
