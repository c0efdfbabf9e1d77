//! `TCP_NODELAY` on the Lambda runtime client's own connections to the Runtime API.
//!
//! The runtime (lambda_runtime 1.5) makes those connections itself, with Nagle's
//! algorithm on, and takes no connector of ours. A streamed response goes out in small
//! writes: the metadata prelude, an eight-byte delimiter, then each SSE frame. With
//! Nagle on, a small write made while the one before is unacknowledged waits for that
//! acknowledgement, which the receiving side delays by ~40 ms. Measured under a local
//! Runtime API (`functions/sse/tests/it/concurrent.rs`, `first_live_line_delay…`): every
//! stream's first frame arrived 41–46 ms after its invocation began, 20 runs of 20.
//! Under `cargo lambda watch` (`scripts/lambda-local --first-frame 20`) 6–9 of 20 first
//! lines waited ~43 ms without this, none with it.
//!
//! The workspace forbids unsafe code, so a socket of this process cannot be borrowed by
//! its number. It is reached through `pidfd_getfd` on this process's own pidfd instead,
//! which hands back a second descriptor of the same socket: the option is set on that
//! one (socket options belong to the socket, not to a descriptor), and it is closed.
//! The runtime's sockets are found in `/proc/self/fd` and told apart by their peer, the
//! address in `AWS_LAMBDA_RUNTIME_API`. Each socket is looked at once, and the
//! descriptors are scanned at most once a second, by one caller at a time: with 1 000
//! streams starting at once (Lambda Managed Instances), a scan per stream, each over
//! a thousand descriptors, held the runtime's threads long enough for Redis commands
//! to time out. The runtime's pollers connect when it starts, so the first scan finds
//! them. This needs Linux 5.6 or later (Lambda's kernels are); where a step is refused,
//! nothing changes and the stream is only as it was before.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// Sockets looked at already are remembered up to this many, then forgotten (looked at
/// again, which is harmless).
const MAX_SEEN: usize = 65_536;

/// The least time between two scans of the descriptors.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The Runtime API's connections of this process, made `TCP_NODELAY` as they appear.
pub struct RuntimeSockets {
    /// The Runtime API's addresses; `None` outside Lambda (no `AWS_LAMBDA_RUNTIME_API`).
    api: Option<Vec<SocketAddr>>,
    pidfd: Option<OwnedFd>,
    interval: Duration,
    scans: Mutex<Scans>,
}

#[derive(Default)]
struct Scans {
    last: Option<Instant>,
    /// Socket inodes looked at already.
    seen: HashSet<u64>,
}

impl RuntimeSockets {
    /// From `AWS_LAMBDA_RUNTIME_API` (`host:port`); does nothing without it.
    pub fn from_env() -> Self {
        Self::new(
            std::env::var("AWS_LAMBDA_RUNTIME_API").ok().as_deref(),
            SCAN_INTERVAL,
        )
    }

    /// For the Runtime API at `runtime_api`, scanning at most once per `interval`.
    /// `runtime_api` is `host:port` as Lambda gives it, or a URL as emulators do
    /// (`cargo lambda watch`: `http://[::]:9000/.rt/FUNCTION`), which the runtime also
    /// takes.
    pub fn new(runtime_api: Option<&str>, interval: Duration) -> Self {
        let api = runtime_api
            .map(authority)
            .and_then(|addr| addr.to_socket_addrs().ok())
            .map(Iterator::collect::<Vec<_>>)
            .filter(|addrs| !addrs.is_empty());
        let pidfd = api
            .as_ref()
            .and_then(|_| pidfd_open(getpid(), PidfdFlags::empty()).ok());
        Self {
            api,
            pidfd,
            interval,
            scans: Mutex::default(),
        }
    }

    /// Sets `TCP_NODELAY` on every connection to the Runtime API not seen before,
    /// unless another caller is scanning or the last scan was less than the interval
    /// ago; answers how many it set.
    pub fn nodelay(&self) -> usize {
        let (Some(api), Some(pidfd)) = (&self.api, &self.pidfd) else {
            return 0;
        };
        let Ok(mut scans) = self.scans.try_lock() else {
            return 0;
        };
        if scans
            .last
            .is_some_and(|last| last.elapsed() < self.interval)
        {
            return 0;
        }
        scans.last = Some(Instant::now());
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        let seen = &mut scans.seen;
        if seen.len() > MAX_SEEN {
            seen.clear();
        }
        let mut set = 0;
        for entry in fds.flatten() {
            let Some(inode) = std::fs::read_link(entry.path())
                .ok()
                .and_then(|target| socket_inode(&target.to_string_lossy()))
            else {
                continue;
            };
            if seen.contains(&inode) {
                continue;
            }
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // A socket that cannot be looked at now (no descriptor to spare, not yet
            // connected) is looked at again by the next scan.
            let Ok(socket) = pidfd_getfd(pidfd, fd, PidfdGetfdFlags::empty()) else {
                continue;
            };
            let Ok(Some(peer)) = rustix::net::getpeername(&socket) else {
                continue;
            };
            seen.insert(inode);
            let peer = SocketAddr::try_from(peer).ok();
            if peer.is_some_and(|peer| is_api(api, peer))
                && rustix::net::sockopt::set_tcp_nodelay(&socket, true).is_ok()
            {
                set += 1;
            }
        }
        set
    }
}

/// `host:port` of a Runtime API address given as `host:port` or as a URL.
fn authority(runtime_api: &str) -> &str {
    let rest = runtime_api
        .split_once("://")
        .map_or(runtime_api, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// Whether a connection to `peer` is one to the Runtime API at `api`. A connection to
/// an unspecified address (`[::]`, `0.0.0.0`: what an emulator listening everywhere
/// names) reaches this host, and its peer is a loopback address.
fn is_api(api: &[SocketAddr], peer: SocketAddr) -> bool {
    let peer_ip = peer.ip().to_canonical();
    api.iter().any(|addr| {
        addr.port() == peer.port()
            && (addr.ip().to_canonical() == peer_ip
                || (addr.ip().is_unspecified() && peer_ip.is_loopback()))
    })
}

/// The inode of a `/proc/self/fd` link's target `socket:[INODE]`.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn connections_to_the_runtime_api_get_nodelay_once_and_others_are_left_alone() {
        let api = TcpListener::bind("127.0.0.1:0").unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let to_api = TcpStream::connect(api.local_addr().unwrap()).unwrap();
        let to_other = TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!to_api.nodelay().unwrap() && !to_other.nodelay().unwrap());

        let sockets =
            RuntimeSockets::new(Some(&api.local_addr().unwrap().to_string()), Duration::ZERO);
        assert_eq!(sockets.nodelay(), 1);
        assert!(
            to_api.nodelay().unwrap(),
            "set through the duplicate descriptor"
        );
        assert!(!to_other.nodelay().unwrap());
        assert_eq!(sockets.nodelay(), 0, "each socket is looked at once");

        let again = TcpStream::connect(api.local_addr().unwrap()).unwrap();
        assert_eq!(sockets.nodelay(), 1, "a new connection is found");
        assert!(again.nodelay().unwrap());
    }

    #[test]
    fn it_scans_at_most_once_per_interval() {
        let api = TcpListener::bind("127.0.0.1:0").unwrap();
        let sockets = RuntimeSockets::new(
            Some(&api.local_addr().unwrap().to_string()),
            Duration::from_secs(3600),
        );
        let first = TcpStream::connect(api.local_addr().unwrap()).unwrap();
        assert_eq!(sockets.nodelay(), 1);
        assert!(first.nodelay().unwrap());
        let second = TcpStream::connect(api.local_addr().unwrap()).unwrap();
        assert_eq!(sockets.nodelay(), 0, "within the interval: no scan");
        assert!(!second.nodelay().unwrap());
    }

    #[test]
    fn the_address_may_be_a_url_and_name_every_interface() {
        assert_eq!(authority("127.0.0.1:9001"), "127.0.0.1:9001");
        assert_eq!(authority("http://[::]:9000/.rt/logstream-sse"), "[::]:9000");
        assert_eq!(authority("localhost:9001/"), "localhost:9001");
        let api: SocketAddr = "[::]:9000".parse().unwrap();
        for peer in ["[::1]:9000", "127.0.0.1:9000", "[::ffff:127.0.0.1]:9000"] {
            assert!(is_api(&[api], peer.parse().unwrap()), "{peer}");
        }
        for peer in ["[::1]:9001", "10.0.0.5:9000"] {
            assert!(!is_api(&[api], peer.parse().unwrap()), "{peer}");
        }
        let api: SocketAddr = "169.254.100.1:9001".parse().unwrap();
        assert!(is_api(&[api], api));
        assert!(!is_api(&[api], "127.0.0.1:9001".parse().unwrap()));

        // As `cargo lambda watch` names it: found, through a URL, on every interface.
        let listener = TcpListener::bind("[::]:0")
            .or_else(|_| TcpListener::bind("0.0.0.0:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let unspecified = listener.local_addr().unwrap().ip();
        let url = format!(
            "http://{}/.rt/logstream-sse",
            SocketAddr::new(unspecified, port)
        );
        let to_api = TcpStream::connect(("localhost", port)).unwrap();
        let sockets = RuntimeSockets::new(Some(&url), Duration::ZERO);
        assert_eq!(sockets.nodelay(), 1, "{url}");
        assert!(to_api.nodelay().unwrap());
    }

    #[test]
    fn outside_lambda_it_does_nothing() {
        assert_eq!(RuntimeSockets::new(None, Duration::ZERO).nodelay(), 0);
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
    }
}
