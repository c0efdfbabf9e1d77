//! Large reads over connections of logstream's own, decoded in place.
//!
//! The redis crate decodes every reply into a tree of [`redis::Value`]s through a
//! general parser: about 0.13 µs per value, plus an allocation for each. A 500-entry
//! history page is a 2 500-value, ~90 kB reply, and decoding it took the service three
//! times longer than Redis took to produce it (320–470 µs against ~100 µs), which held
//! history to ~1 500 pages/s on two cores. [`DirectReads`] sends such a read over a
//! connection of its own and hands the complete reply to a decoder that walks the
//! bytes where they lie: the entries' JSON is copied once, into their `String`s.
//!
//! It speaks just enough RESP2 for reads:
//! - commands are encoded by the redis crate ([`Cmd::write_packed_command`]);
//! - host, port, TLS, user, password and database come from the same `REDIS_URL`,
//!   parsed by the redis crate; TLS uses the same rustls provider and the platform's
//!   certificates, as the crate's own `rediss://` connections do;
//! - in a cluster, a request goes to the node that last owned its key's slot (learnt
//!   from `MOVED`), or to a seed (the next one when a seed cannot be reached); `ASK` is
//!   followed with `ASKING` before each command; `TRYAGAIN`, `CLUSTERDOWN` and
//!   unreachable nodes are retried within the response timeout, like the cluster client
//!   does for every other command. A pipeline whose replies are partly `ASK` (a slot in
//!   migration, the job's keys split between two nodes) counts as `TRYAGAIN`: neither
//!   node can answer for the whole job;
//! - connections are pooled per node, one per request in flight (at most
//!   [`MAX_IN_FLIGHT`] at once), closed after [`MAX_IDLE_AGE`] unused, and dropped on
//!   any I/O error or timeout (their state is then unknown). A request that fails on a
//!   pooled connection is tried once more on a new one: after a Redis restart the first
//!   use of an old connection fails.
//!
//! Errors map onto [`StoreError`] exactly as the redis crate's do, so an unreachable
//! Redis is the API's 503 on this path too.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::cluster_routing::Slot;
use redis::{Cmd, ConnectionAddr, ErrorKind, RedisError, ServerErrorKind, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::conn::install_tls_provider;
use super::error::StoreError;

/// Idle connections kept per node; more are made while more requests are in flight.
const MAX_IDLE_PER_NODE: usize = 16;
/// Requests in flight at once (so connections open at once), all nodes together: a
/// burst of readers waits for a connection instead of pushing Redis to `maxclients`.
const MAX_IN_FLIGHT: usize = 64;
/// An idle connection older than this is closed rather than used: a network path may
/// have forgotten a quiet flow without telling either end, and a request on it would
/// hang until the response timeout.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);
/// A kept connection's buffer beyond this (one very large reply) is freed.
const MAX_KEPT_BUFFER: usize = 1 << 20;
/// Bytes read per `read` call at least.
const READ_CHUNK: usize = 64 << 10;
/// Attempts per request, redirects and retries included (all within the response
/// timeout).
const MAX_ATTEMPTS: u32 = 16;
/// Wait before retrying after a cluster said "not now" or a node was unreachable:
/// doubles from the first value up to the second (ms).
const RETRY_WAIT_MS: (u64, u64) = (20, 400);

/// A node: host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Node {
    host: String,
    port: u16,
}

impl Node {
    fn parse(addr: &str) -> Option<Self> {
        let (host, port) = addr.rsplit_once(':')?;
        Some(Self {
            host: host.to_owned(),
            port: port.parse().ok()?,
        })
    }
}

/// What every connection sends after connecting.
#[derive(Debug, Clone, Default)]
struct Login {
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

/// Reads over pooled connections of their own; see the module documentation.
pub(crate) struct DirectReads {
    seeds: Vec<Node>,
    tls: bool,
    login: Login,
    cluster: bool,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// Built on the first TLS connection (loading the platform certificates is slow).
    tls_config: OnceLock<Result<tokio_rustls::TlsConnector, String>>,
    idle: Mutex<HashMap<Node, Vec<Wire>>>,
    in_flight: Semaphore,
    /// Cluster only: the owner of each slot a `MOVED` named.
    owners: Mutex<HashMap<Slot, Node>>,
    /// Cluster only: the seed asked about slots whose owner is not known; moves on when
    /// that seed cannot be reached.
    seed: AtomicUsize,
}

impl std::fmt::Debug for DirectReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectReads")
            .field("seeds", &self.seeds)
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed.
enum Failure {
    /// Connecting, writing or reading failed: the connection is gone.
    Io(io::Error),
    /// Redis answered an error.
    Server(RedisError),
    /// The reply is not what the command answers, or not RESP2 at all.
    Corrupt(String),
    /// This side cannot connect as configured (TLS set-up).
    Config(RedisError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<DecodeError> for Failure {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Server(e) => Self::Server(e),
            DecodeError::Corrupt(what) => Self::Corrupt(what),
        }
    }
}

impl DirectReads {
    /// Reads for `urls`: one node, or the seeds of a cluster. The URLs were checked by
    /// [`super::RedisTarget::parse`]; the login comes from the first.
    pub(crate) fn new(
        urls: &[String],
        cluster: bool,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, RedisError> {
        let mut seeds = Vec::with_capacity(urls.len());
        let mut tls = false;
        let mut login = Login::default();
        for (i, url) in urls.iter().enumerate() {
            let client = redis::Client::open(url.as_str())?;
            let info = client.get_connection_info();
            let node = match info.addr() {
                ConnectionAddr::Tcp(host, port) => Node {
                    host: host.clone(),
                    port: *port,
                },
                ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    ..
                } => {
                    tls = true;
                    Node {
                        host: host.clone(),
                        port: *port,
                    }
                }
                _ => {
                    return Err(RedisError::from((
                        ErrorKind::InvalidClientConfig,
                        "only redis:// and rediss:// (with certificate checks) are supported",
                    )));
                }
            };
            if i == 0 {
                let settings = info.redis_settings();
                login = Login {
                    username: settings.username().map(str::to_owned),
                    password: settings.password().map(str::to_owned),
                    db: settings.db(),
                };
            }
            seeds.push(node);
        }
        Ok(Self {
            seeds,
            tls,
            login,
            cluster,
            connect_timeout,
            response_timeout,
            tls_config: OnceLock::new(),
            idle: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            owners: Mutex::new(HashMap::new()),
            seed: AtomicUsize::new(0),
        })
    }

    /// Sends `cmds` (all on keys of `key`'s slot) in one round trip and decodes their
    /// replies with `decode`, which reads them in order from a [`Replies`].
    pub(crate) async fn query<T>(
        &self,
        key: &[u8],
        cmds: &[Cmd],
        decode: impl Fn(&mut Replies<'_>) -> Result<T, DecodeError>,
    ) -> Result<T, StoreError> {
        let slot = Slot::for_key(key);
        let deadline = Instant::now() + self.response_timeout;
        let mut node = self.owner(slot);
        let mut asking = false;
        let mut wait = Duration::from_millis(RETRY_WAIT_MS.0);
        let mut fresh = false;
        let mut retried = false;
        let mut last = None;
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, self.in_flight.acquire()).await
        else {
            return Err(StoreError::Unavailable(timed_out()));
        };
        for _ in 0..MAX_ATTEMPTS {
            let attempt = self.attempt(&node, cmds, asking, fresh, &decode);
            let failure = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(failure)) => failure,
                Err(_) => {
                    // The connection went with the attempt; its siblings may be as stuck.
                    self.forget_node(&node);
                    return Err(StoreError::Unavailable(timed_out()));
                }
            };
            asking = false;
            fresh = false;
            match failure {
                Failure::Corrupt(what) => return Err(StoreError::Corrupt(what)),
                Failure::Config(e) => return Err(StoreError::Redis(e)),
                Failure::Server(e) => match e.kind() {
                    ErrorKind::Server(kind @ (ServerErrorKind::Moved | ServerErrorKind::Ask))
                        if self.cluster =>
                    {
                        let Some(to) = e.redirect_node().and_then(|(addr, _)| Node::parse(addr))
                        else {
                            return Err(StoreError::from(e));
                        };
                        if kind == ServerErrorKind::Moved {
                            self.set_owner(slot, Some(to.clone()));
                        } else {
                            asking = true;
                        }
                        node = to;
                        last = Some(e);
                        continue;
                    }
                    ErrorKind::Server(ServerErrorKind::TryAgain | ServerErrorKind::ClusterDown)
                        if self.cluster =>
                    {
                        last = Some(e);
                    }
                    _ => return Err(StoreError::from(e)),
                },
                Failure::Io(e) => {
                    self.forget_node(&node);
                    if self.cluster {
                        // Whoever owned the slot may be gone (a failover): ask the seeds.
                        self.set_owner(slot, None);
                        node = self.other_seed(&node);
                        last = Some(e.into());
                    } else if !retried {
                        // Perhaps only the pooled connection was dead: once on a new one.
                        retried = true;
                        fresh = true;
                        continue;
                    } else {
                        return Err(StoreError::Unavailable(e.into()));
                    }
                }
            }
            // Give the cluster a moment (a failover, a migration) before the next try.
            if Instant::now() + wait >= deadline {
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(RETRY_WAIT_MS.1));
        }
        Err(last.map_or_else(
            || StoreError::Unavailable(timed_out()),
            |e| {
                if e.is_io_error() || e.is_cluster_error() {
                    StoreError::Unavailable(e)
                } else {
                    StoreError::from(e)
                }
            },
        ))
    }

    /// One try on `node`: on a pooled connection unless `fresh`, else on a new one.
    async fn attempt<T>(
        &self,
        node: &Node,
        cmds: &[Cmd],
        asking: bool,
        fresh: bool,
        decode: &impl Fn(&mut Replies<'_>) -> Result<T, DecodeError>,
    ) -> Result<T, Failure> {
        let pooled = if fresh { None } else { self.take_idle(node) };
        let mut wire = match pooled {
            Some(wire) => wire,
            None => self.connect(node).await?,
        };
        let mut packed = Vec::new();
        for cmd in cmds {
            if asking {
                redis::cmd("ASKING").write_packed_command(&mut packed);
            }
            cmd.write_packed_command(&mut packed);
        }
        let replies = cmds.len() * if asking { 2 } else { 1 };
        let asked = wire.exchange(&packed, replies).await?;
        // The exchange is complete: whatever the decoder makes of the replies, the
        // connection is ready for the next request.
        let result = if !asking && partly_asked(asked, cmds.len()) {
            // The slot is being migrated and only some of the job's keys have moved:
            // neither node can answer for all of them; the migration will go on.
            Err(Failure::Server(server_error(
                b"TRYAGAIN the job's keys are between two nodes",
            )))
        } else {
            decode(&mut Replies::new(&wire.buf, asking)).map_err(Failure::from)
        };
        self.put_idle(node, wire);
        result
    }

    fn owner(&self, slot: Slot) -> Node {
        let known = if self.cluster {
            lock(&self.owners).get(&slot).cloned()
        } else {
            None
        };
        known.unwrap_or_else(|| {
            self.seeds[self.seed.load(Ordering::Relaxed) % self.seeds.len()].clone()
        })
    }

    /// The next seed after the current one, skipping `failed`; it becomes the seed
    /// asked from now on.
    fn other_seed(&self, failed: &Node) -> Node {
        for _ in 0..self.seeds.len() {
            let i = self.seed.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            let seed = &self.seeds[i % self.seeds.len()];
            if seed != failed {
                return seed.clone();
            }
        }
        failed.clone()
    }

    fn set_owner(&self, slot: Slot, node: Option<Node>) {
        let mut owners = lock(&self.owners);
        match node {
            Some(node) => owners.insert(slot, node),
            None => owners.remove(&slot),
        };
    }

    fn take_idle(&self, node: &Node) -> Option<Wire> {
        let mut idle = lock(&self.idle);
        let kept = idle.get_mut(node)?;
        // The most recently used is last; anything idle too long is dropped.
        let now = Instant::now();
        kept.retain(|w| now.duration_since(w.idle_since) < MAX_IDLE_AGE);
        kept.pop()
    }

    fn put_idle(&self, node: &Node, mut wire: Wire) {
        if wire.buf.capacity() > MAX_KEPT_BUFFER {
            wire.buf = Vec::new();
        }
        wire.idle_since = Instant::now();
        let mut idle = lock(&self.idle);
        let kept = idle.entry(node.clone()).or_default();
        if kept.len() < MAX_IDLE_PER_NODE {
            kept.push(wire);
        }
    }

    /// Drops `node`'s idle connections: one failed, the others are likely dead too.
    fn forget_node(&self, node: &Node) {
        lock(&self.idle).remove(node);
    }

    /// A new, logged-in connection to `node`.
    async fn connect(&self, node: &Node) -> Result<Wire, Failure> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((node.host.as_str(), node.port)),
        )
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = if self.tls {
            let connector = self.tls_connector().map_err(|e| {
                Failure::Config(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "TLS setup failed",
                    e,
                )))
            })?;
            let name = rustls::pki_types::ServerName::try_from(node.host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Box::new(connector.connect(name, tcp).await?)
        } else {
            Box::new(tcp)
        };
        let mut wire = Wire {
            io,
            buf: Vec::new(),
            idle_since: Instant::now(),
        };
        let mut hello = Vec::new();
        if let Some(password) = &self.login.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &self.login.username {
                auth.arg(user);
            }
            auth.arg(password);
            hello.push(auth);
        }
        if self.login.db != 0 {
            let mut select = redis::cmd("SELECT");
            select.arg(self.login.db);
            hello.push(select);
        }
        if !hello.is_empty() {
            let mut packed = Vec::new();
            for cmd in &hello {
                cmd.write_packed_command(&mut packed);
            }
            wire.exchange(&packed, hello.len()).await?;
            let mut replies = Replies::new(&wire.buf, false);
            for _ in &hello {
                replies.ok()?;
            }
        }
        Ok(wire)
    }

    fn tls_connector(&self) -> Result<tokio_rustls::TlsConnector, String> {
        self.tls_config
            .get_or_init(|| {
                install_tls_provider();
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                if let Some(e) = found.errors.first() {
                    return Err(format!("loading the platform certificates: {e}"));
                }
                roots.add_parsable_certificates(found.certs);
                let config = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
            })
            .clone()
    }
}

fn timed_out() -> RedisError {
    io::Error::from(io::ErrorKind::TimedOut).into()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here can panic while holding a lock; a poisoned map is still a map.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One connection and its read buffer.
struct Wire {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    /// When it was last put back in the pool.
    idle_since: Instant,
}

impl Wire {
    /// Writes `packed` and reads until `replies` complete replies are in `buf`, and
    /// nothing more. Answers how many of them are `ASK` redirections.
    async fn exchange(&mut self, packed: &[u8], replies: usize) -> Result<usize, Failure> {
        self.io.write_all(packed).await?;
        self.io.flush().await?;
        self.buf.clear();
        let mut scanner = Scanner::default();
        loop {
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(Failure::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                )));
            }
            match scanner.scan(&self.buf, replies) {
                Ok(false) => {}
                Ok(true) if scanner.at == self.buf.len() => return Ok(scanner.asked),
                Ok(true) => return Err(Failure::Corrupt("redis sent more than was asked".into())),
                Err(what) => return Err(Failure::Corrupt(format!("not a RESP2 reply: {what}"))),
            }
        }
    }
}

/// How far a scan of replies got; it goes on from there when more bytes arrive, so a
/// reply read in many pieces is scanned once.
#[derive(Debug, Default, Clone, Copy)]
struct Scanner {
    /// The first byte not scanned yet: the start of a value.
    at: usize,
    /// Values still to come in the current reply (0 between replies).
    pending: u64,
    /// Complete replies so far.
    done: usize,
    /// Replies that were `ASK` redirections, of those.
    asked: usize,
}

impl Scanner {
    /// Scans on until `want` replies are complete (`true`) or `buf` ends (`false`),
    /// without recursion (a deeply nested reply cannot exhaust the stack).
    fn scan(&mut self, buf: &[u8], want: usize) -> Result<bool, &'static str> {
        while self.done < want {
            let (kind, line, next) = match header(buf, self.at) {
                Ok(h) => h,
                Err(HeaderError::Incomplete) => return Ok(false),
                Err(HeaderError::Invalid(what)) => return Err(what),
            };
            let mut end = next;
            let mut inner = 0;
            match kind {
                b'+' | b'-' => {}
                b':' => {
                    integer(line).ok_or("bad integer")?;
                }
                b'$' => match integer(line).ok_or("bad bulk length")? {
                    -1 => {}
                    n => {
                        let stop = usize::try_from(n)
                            .ok()
                            .and_then(|n| next.checked_add(n))
                            .filter(|stop| *stop < usize::MAX - 2)
                            .ok_or("bad bulk length")?;
                        if buf.len() < stop + 2 {
                            return Ok(false);
                        }
                        if &buf[stop..stop + 2] != b"\r\n" {
                            return Err("bulk string without its CRLF");
                        }
                        end = stop + 2;
                    }
                },
                b'*' => match integer(line).ok_or("bad array length")? {
                    -1 => {}
                    n => inner = u64::try_from(n).map_err(|_| "bad array length")?,
                },
                _ => return Err("unknown reply type"),
            }
            // The value is whole: count it (a new reply starts with one value to come).
            if self.pending == 0 && kind == b'-' && line.starts_with(b"ASK ") {
                self.asked += 1;
            }
            self.at = end;
            self.pending = self.pending.max(1) - 1;
            self.pending = self.pending.checked_add(inner).ok_or("array too long")?;
            if self.pending == 0 {
                self.done += 1;
            }
        }
        Ok(true)
    }
}

/// Why [`skip`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// The buffer ends inside the value.
    Incomplete,
    /// Not RESP2.
    Invalid(&'static str),
}

/// The end of the value starting at `at`.
fn skip(buf: &[u8], at: usize) -> Result<usize, Scan> {
    let mut scanner = Scanner {
        at,
        ..Scanner::default()
    };
    match scanner.scan(buf, 1) {
        Ok(true) => Ok(scanner.at),
        Ok(false) => Err(Scan::Incomplete),
        Err(what) => Err(Scan::Invalid(what)),
    }
}

/// Whether some of `replies`, `asked` of which were `ASK` redirections, were and some
/// were not.
fn partly_asked(asked: usize, replies: usize) -> bool {
    asked > 0 && asked < replies
}

enum HeaderError {
    Incomplete,
    Invalid(&'static str),
}

/// Bytes of a line looked at one by one before [`memchr::memchr`] is asked.
const SHORT_LINE: usize = 24;

/// The type byte at `at`, the rest of its line, and where the next line starts.
fn header(buf: &[u8], at: usize) -> Result<(u8, &[u8], usize), HeaderError> {
    let rest = buf.get(at..).ok_or(HeaderError::Incomplete)?;
    // Nearly every line is a type byte and a length: looked at directly, which costs
    // less than a call of `memchr` does before its search starts (ten of those per
    // stream entry, between the scan and the decode).
    let short = rest.iter().take(SHORT_LINE).position(|&b| b == b'\r');
    let Some(cr) = short.or_else(|| memchr::memchr(b'\r', rest)) else {
        return Err(HeaderError::Incomplete);
    };
    match rest.get(cr + 1) {
        None => return Err(HeaderError::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(HeaderError::Invalid("a line without its LF")),
    }
    let (&kind, line) = rest[..cr]
        .split_first()
        .ok_or(HeaderError::Invalid("an empty line"))?;
    Ok((kind, line, at + cr + 2))
}

/// A RESP length or integer: an optional `-`, then decimal digits (no `+`, no blanks;
/// `None` past the `i64` range). Called for every value of every reply, so it reads
/// the digits itself instead of through `str::parse`.
fn integer(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

/// Why a decoder refused a reply.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Redis answered an error where the decoder wanted a value.
    Server(RedisError),
    /// The reply is not what the command answers.
    Corrupt(String),
}

/// The complete replies of one request, read in order. [`DirectReads`] has checked
/// their framing already, so only their shape can be wrong.
pub(crate) struct Replies<'a> {
    buf: &'a [u8],
    at: usize,
    /// Each reply is preceded by the `+OK` of an `ASKING`.
    asking: bool,
}

impl<'a> Replies<'a> {
    pub(crate) fn new(buf: &'a [u8], asking: bool) -> Self {
        Self { buf, at: 0, asking }
    }

    /// Moves to the next command's reply (past an `ASKING`'s answer).
    pub(crate) fn next_reply(&mut self) -> Result<(), DecodeError> {
        if self.asking { self.ok() } else { Ok(()) }
    }

    /// A `+OK`-style status reply.
    fn ok(&mut self) -> Result<(), DecodeError> {
        match self.header()? {
            (b'+', _) => Ok(()),
            (kind, _) => Err(unexpected("a status", kind)),
        }
    }

    /// An array's length; `None` for a nil array.
    pub(crate) fn array(&mut self) -> Result<Option<usize>, DecodeError> {
        match self.header()? {
            (b'*', line) => Ok(usize::try_from(integer(line).unwrap_or(-1)).ok()),
            (kind, _) => Err(unexpected("an array", kind)),
        }
    }

    /// A bulk string; `None` for nil.
    pub(crate) fn bulk(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.header()? {
            (b'$', line) => match usize::try_from(integer(line).unwrap_or(-1)) {
                Ok(n) => {
                    let value = &self.buf[self.at..self.at + n];
                    self.at += n + 2;
                    Ok(Some(value))
                }
                Err(_) => Ok(None),
            },
            (kind, _) => Err(unexpected("a bulk string", kind)),
        }
    }

    /// Skips one value, whatever it is.
    pub(crate) fn skip(&mut self) -> Result<(), DecodeError> {
        self.at = skip(self.buf, self.at)
            .map_err(|_| DecodeError::Corrupt("a reply ends early".into()))?;
        Ok(())
    }

    /// The next line's type and content; an error reply becomes
    /// [`DecodeError::Server`].
    fn header(&mut self) -> Result<(u8, &'a [u8]), DecodeError> {
        let (kind, line, next) = header(self.buf, self.at)
            .map_err(|_| DecodeError::Corrupt("a reply ends early".into()))?;
        self.at = next;
        if kind == b'-' {
            return Err(DecodeError::Server(server_error(line)));
        }
        Ok((kind, line))
    }
}

fn unexpected(wanted: &str, kind: u8) -> DecodeError {
    DecodeError::Corrupt(format!(
        "wanted {wanted}, redis answered a {:?} reply",
        char::from(kind)
    ))
}

/// The redis crate's error for an error reply, so that its kind (`MOVED`, `LOADING`…)
/// is told apart exactly as on the crate's own connections.
fn server_error(line: &[u8]) -> RedisError {
    let mut reply = Vec::with_capacity(line.len() + 3);
    reply.push(b'-');
    reply.extend_from_slice(line);
    reply.extend_from_slice(b"\r\n");
    match redis::parse_redis_value(&reply).and_then(Value::extract_error) {
        Err(e) => e,
        Ok(_) => RedisError::from((
            ErrorKind::Parse,
            "unreadable error reply",
            String::from_utf8_lossy(line).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn skip_finds_the_end_of_nested_replies() {
        let reply = b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\ne\r\n$2\r\n{}\r\n$-1\r\n:7\r\n";
        assert_eq!(skip(reply, 0), Ok(reply.len() - 4));
        assert_eq!(skip(reply, reply.len() - 4), Ok(reply.len()));
    }

    #[test]
    fn skip_says_incomplete_at_every_cut() {
        let reply = b"*2\r\n$5\r\nhello\r\n*-1\r\n";
        for cut in 0..reply.len() {
            assert_eq!(
                skip(&reply[..cut], 0),
                Err(Scan::Incomplete),
                "cut at {cut}"
            );
        }
        assert_eq!(skip(reply, 0), Ok(reply.len()));
    }

    #[test]
    fn skip_refuses_what_is_not_resp2() {
        for bad in [
            &b"?1\r\n"[..],
            b"$x\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"$3\r\nabcde\r\n",
            b"+OK\rX",
            b"\r\n",
        ] {
            assert!(
                matches!(skip(bad, 0), Err(Scan::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_deeply_nested_reply_does_not_recurse() {
        let mut reply = b"*1\r\n".repeat(1_000_000);
        reply.extend_from_slice(b":1\r\n");
        assert_eq!(skip(&reply, 0), Ok(reply.len()));
    }

    #[test]
    fn replies_decode_values_in_order() {
        let buf = b"+OK\r\n*2\r\n$2\r\nab\r\n$-1\r\n*-1\r\n";
        let mut r = Replies::new(buf, true);
        r.next_reply().unwrap();
        assert_eq!(r.array().unwrap(), Some(2));
        assert_eq!(r.bulk().unwrap(), Some(&b"ab"[..]));
        assert_eq!(r.bulk().unwrap(), None);
        assert_eq!(r.array().unwrap(), None);
    }

    #[test]
    fn a_line_is_found_whether_it_is_short_or_long() {
        // Around SHORT_LINE, where the byte-by-byte look hands over to memchr.
        for len in SHORT_LINE - 3..SHORT_LINE + 3 {
            let line = format!("+{}\r\n", "x".repeat(len - 1));
            let buf = format!("{line}:7\r\n");
            let (kind, text, next) = header(buf.as_bytes(), 0).ok().unwrap();
            assert_eq!(
                (kind, text.len(), next),
                (b'+', len - 1, line.len()),
                "{len}"
            );
            assert!(matches!(
                header(&line.as_bytes()[..line.len() - 1], 0),
                Err(HeaderError::Incomplete)
            ));
            assert!(matches!(
                header(&line.as_bytes()[..line.len() - 2], 0),
                Err(HeaderError::Incomplete)
            ));
        }
    }

    #[test]
    fn error_replies_keep_their_kind() {
        let mut r = Replies::new(b"-MOVED 3999 127.0.0.1:6381\r\n", false);
        let Err(DecodeError::Server(e)) = r.array() else {
            panic!("not a server error");
        };
        assert_eq!(e.kind(), ErrorKind::Server(ServerErrorKind::Moved));
        assert_eq!(e.redirect_node(), Some(("127.0.0.1:6381", 3999)));

        let mut r = Replies::new(b"-LOADING Redis is loading the dataset\r\n", false);
        let Err(DecodeError::Server(e)) = r.bulk() else {
            panic!("not a server error");
        };
        assert_eq!(e.kind(), ErrorKind::Server(ServerErrorKind::BusyLoading));
    }

    /// A wire over an in-memory pipe, and the server's end.
    fn pipe() -> (Wire, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let wire = Wire {
            io: Box::new(client),
            buf: Vec::new(),
            idle_since: Instant::now(),
        };
        (wire, server)
    }

    /// Answers one 4-byte request with `first`, then (after letting the reader run)
    /// `rest`, then closes if `close`.
    async fn serve(mut server: tokio::io::DuplexStream, first: &[u8], rest: &[u8], close: bool) {
        let mut request = [0u8; 4];
        server.read_exact(&mut request).await.unwrap();
        server.write_all(first).await.unwrap();
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        server.write_all(rest).await.unwrap();
        if close {
            drop(server);
        } else {
            // Keep the pipe open until the reader is done.
            std::future::pending::<()>().await;
        }
    }

    #[tokio::test]
    async fn exchange_gathers_replies_split_anywhere() {
        let replies = b"+OK\r\n*2\r\n$5\r\nhello\r\n$-1\r\n:42\r\n";
        for cut in 0..=replies.len() {
            let (mut wire, server) = pipe();
            let served = serve(server, &replies[..cut], &replies[cut..], false);
            tokio::select! {
                done = wire.exchange(b"PING", 3) => assert!(done.is_ok(), "cut at {cut}"),
                () = served => unreachable!(),
            }
            assert_eq!(wire.buf, replies, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn exchange_refuses_more_than_was_asked_and_reports_a_cut_connection() {
        let (mut wire, server) = pipe();
        let served = serve(server, b"+OK\r\n+OK\r\n", b"", false);
        tokio::select! {
            done = wire.exchange(b"PING", 1) => assert!(matches!(done, Err(Failure::Corrupt(_)))),
            () = served => unreachable!(),
        }

        let (mut wire, server) = pipe();
        let (done, ()) = tokio::join!(
            wire.exchange(b"PING", 1),
            serve(server, b"*2\r\n$5\r\nhel", b"", true)
        );
        assert!(matches!(done, Err(Failure::Io(_))), "EOF inside a reply");

        let (mut wire, server) = pipe();
        let served = serve(server, b"!oops\r\n", b"", false);
        tokio::select! {
            done = wire.exchange(b"PING", 1) => assert!(matches!(done, Err(Failure::Corrupt(_)))),
            () = served => unreachable!(),
        }
    }

    /// Scans `replies` replies of `buf`, fed in two pieces cut at every byte (the
    /// count must not depend on where reads end), and says whether they were partly
    /// asked.
    fn scanned_partly_asked(buf: &str, replies: usize) -> bool {
        let buf = buf.as_bytes();
        let whole = (0..=buf.len()).map(|cut| {
            let mut scanner = Scanner::default();
            if cut < buf.len() {
                assert_eq!(
                    scanner.scan(&buf[..cut], replies),
                    Ok(false),
                    "cut at {cut}"
                );
            }
            assert_eq!(scanner.scan(buf, replies), Ok(true), "cut at {cut}");
            partly_asked(scanner.asked, replies)
        });
        let answers: Vec<bool> = whole.collect();
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
        answers[0]
    }

    #[test]
    fn only_a_mix_of_asks_and_answers_is_partly_asked() {
        let ask = "-ASK 866 127.0.0.1:7001\r\n";
        let value = "*1\r\n$1\r\nx\r\n";
        // An error inside an array is part of a reply, not a redirection of one.
        let nested = "*2\r\n-ASK 866 127.0.0.1:7001\r\n:1\r\n";
        assert!(scanned_partly_asked(&format!("{value}{ask}{ask}"), 3));
        assert!(scanned_partly_asked(&format!("{ask}{value}"), 2));
        assert!(!scanned_partly_asked(&format!("{ask}{ask}"), 2));
        assert!(!scanned_partly_asked(&format!("{value}{value}"), 2));
        assert!(!scanned_partly_asked(&format!("{nested}{value}"), 2));
        assert!(!scanned_partly_asked(ask, 1));
    }

    #[test]
    fn integers_are_read_as_redis_writes_them_and_nothing_else_is() {
        let max = i64::MAX.to_string();
        for (text, n) in [("0", 0), ("42", 42), ("-1", -1), (max.as_str(), i64::MAX)] {
            assert_eq!(integer(text.as_bytes()), Some(n), "{text}");
        }
        for bad in [
            "",
            "-",
            "+1",
            " 1",
            "1 ",
            "1a",
            "--1",
            "9223372036854775808",
            "١",
        ] {
            assert_eq!(integer(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn lengths_that_cannot_be_are_refused_not_overflowed() {
        let huge = i64::MAX;
        let nested = format!("*{huge}\r\n*{huge}\r\n*{huge}\r\n");
        assert!(matches!(skip(nested.as_bytes(), 0), Err(Scan::Invalid(_))));
        let bulk = format!("${huge}\r\n");
        assert_eq!(skip(bulk.as_bytes(), 0), Err(Scan::Incomplete));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_corrupt() {
        let mut r = Replies::new(b":1\r\n", false);
        assert!(matches!(r.array(), Err(DecodeError::Corrupt(_))));
    }
}
