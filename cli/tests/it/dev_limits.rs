//! The bounds of `logstream dev`'s own server (`cli/src/dev/serve.rs`), set low through
//! [`dev::serve::Limits`] (`logstream dev --max-connections`, `--header-timeout-secs`):
//! a connection that does not finish a request head is closed after the header-read
//! timeout, and past the connection cap a new connection waits, unserved, until one
//! closes. Raw TCP clients, so nothing pools or retries behind the test's back. Waits are
//! generous and nothing is timed: only what happens is checked.

use std::time::Duration;

use logstream_cli::dev;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A server on the shared Redis within `max_connections` and `header_read`.
async fn limited(max_connections: usize, header_read: Duration) -> Env {
    let limits = dev::serve::Limits {
        max_connections,
        header_read,
    };
    env_limited(&[("REDIS_URL", &shared_redis_url())], limits).await
}

/// Sends `GET /` (the viewer page) on `stream`, kept alive.
async fn send_request(stream: &mut TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request sent");
}

/// Reads one answer (head, then a `content-length` body): its status, or `None` when
/// the connection closes first.
async fn read_answer(stream: &mut TcpStream) -> Option<u16> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while bytes.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
    Some(status)
}

/// One request and its answer on `stream`.
async fn get(stream: &mut TcpStream) -> Option<u16> {
    send_request(stream).await;
    tokio::time::timeout(Duration::from_secs(30), read_answer(stream))
        .await
        .expect("an answer")
}

/// A new connection and one request on it.
async fn get_fresh(env: &Env) -> Option<u16> {
    let mut stream = TcpStream::connect(env.server.addr).await.expect("connect");
    get(&mut stream).await
}

/// Whether the server closes `stream` (EOF or reset) within `wait`, reading and
/// dropping whatever it sends first.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let closed = async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, closed).await.is_ok()
}

#[tokio::test]
async fn a_connection_that_stops_mid_head_or_idles_is_closed_after_the_header_timeout() {
    let env = limited(64, Duration::from_secs(1)).await;

    // Half a request head, then nothing.
    let mut half = TcpStream::connect(env.server.addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: ")
        .await
        .unwrap();
    // A kept-alive connection that was answered once and then says nothing more.
    let mut idle = TcpStream::connect(env.server.addr).await.unwrap();
    assert_eq!(get(&mut idle).await, Some(200));
    // Half of a second request head on a kept-alive connection.
    let mut half_second = TcpStream::connect(env.server.addr).await.unwrap();
    assert_eq!(get(&mut half_second).await, Some(200));
    half_second
        .write_all(b"GET / HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();

    // Others are served meanwhile, on connections of their own.
    assert_eq!(get_fresh(&env).await, Some(200));

    let wait = Duration::from_secs(30);
    assert!(
        closed_within(&mut half, wait).await,
        "a connection stuck in its first request head is closed"
    );
    assert!(
        closed_within(&mut idle, wait).await,
        "a kept-alive connection that sends nothing more is closed"
    );
    assert!(
        closed_within(&mut half_second, wait).await,
        "a connection stuck in a later request head is closed"
    );
    // The server goes on serving.
    assert_eq!(get_fresh(&env).await, Some(200));
}

#[tokio::test]
async fn past_the_connection_cap_a_new_connection_waits_until_one_closes() {
    // A header-read timeout far beyond the test, so only the cap closes nothing.
    let env = limited(3, Duration::from_secs(600)).await;

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(env.server.addr).await.unwrap();
        assert_eq!(get(&mut stream).await, Some(200));
        held.push(stream);
    }

    // A fourth: the kernel completes the handshake (the listen backlog), but the
    // server does not take it while three are open, so its request is not answered.
    let mut waiting = TcpStream::connect(env.server.addr).await.unwrap();
    send_request(&mut waiting).await;
    let early = tokio::time::timeout(Duration::from_secs(3), read_answer(&mut waiting)).await;
    assert!(
        early.is_err(),
        "a connection past the cap was served (or closed): {early:?}"
    );

    // The three open ones are still served, again and again.
    for stream in &mut held {
        assert_eq!(get(stream).await, Some(200));
        assert_eq!(get(stream).await, Some(200));
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(1), read_answer(&mut waiting))
            .await
            .is_err(),
        "still unserved while the cap is reached"
    );

    // One closes: the waiting connection is taken and its request answered.
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(30), read_answer(&mut waiting))
        .await
        .expect("the waiting connection is served once a slot is free");
    assert_eq!(answer, Some(200));
    // It is a connection like the others now, and so are the two still held.
    assert_eq!(get(&mut waiting).await, Some(200));
    for stream in &mut held {
        assert_eq!(get(stream).await, Some(200));
    }
}
