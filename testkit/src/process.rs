//! Helper servers (`redis-server`, an S3-compatible server) that die with their owner.
//!
//! A server runs under a small `sh` guard that kills it as soon as our end of the
//! guard's stdin closes: when the [`Guarded`] value is dropped, and also when the owning
//! process dies without running destructors (a test binary's statics, a `kill -9`), so
//! no stray server outlives its owner.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A background process under the guard. Killed when dropped.
#[derive(Debug)]
pub struct Guarded {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guarded {
    /// Runs `command` (a shell command line, with its own redirections) in the
    /// background under the guard.
    pub fn spawn(command: &str) -> io::Result<Self> {
        Self::spawn_then(command, "true")
    }

    /// [`Guarded::spawn`], and `then` (a shell command line) once the process has been
    /// killed: on drop, on [`Guarded::stop`], and when the owner dies without either.
    pub fn spawn_then(command: &str, then: &str) -> io::Result<Self> {
        let script = format!("{command} & pid=$!; read _; kill $pid; wait $pid; {then}");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin for the guard"))?;
        Ok(Self {
            child,
            stdin: Some(stdin),
        })
    }

    /// Kills the process and waits for the guard to exit.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.child.wait();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes the folder `dir` when the returned guard is dropped or the process ends,
/// however it ends: for folders held by statics, whose destructors never run.
pub fn remove_on_exit(dir: &std::path::Path) -> io::Result<Guarded> {
    Guarded::spawn_then("sleep 2147483647", &format!("rm -rf '{}'", dir.display()))
}

/// A free loopback port (free when asked: the caller binds it soon after).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Whether something accepts connections on the loopback `port`.
pub fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(100),
    )
    .is_ok()
}

/// Waits until nothing accepts connections on `port` any more (at most `limit`).
pub fn wait_closed(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && accepts(port) {
        std::thread::sleep(Duration::from_millis(10));
    }
}
