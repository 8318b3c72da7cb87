//! The gateway's upstream connections (src/pool.rs) against a raw-TCP upstream that records
//! every connection and request: connections are reused, a connection the upstream closed
//! while it sat in the pool costs no request, and a request the upstream may have seen is
//! never sent twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::scopes::MATRIX;
use common::*;
use scopegate::settings::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the raw upstream treats each connection.
#[derive(Clone, Copy)]
enum Upstream {
    /// Answers every request, keeps the connection open.
    KeepAlive,
    /// Answers one request (advertising nothing about the connection), then closes it.
    CloseAfterOne,
    /// Reads a request and closes without answering.
    Vanish,
    /// Answers the first request of each connection, then reads the second and closes
    /// without answering it.
    VanishOnSecond,
    /// Like KeepAlive, but the first two requests are answered only once both arrived (so
    /// the gateway needs two connections for them).
    PairFirst,
}

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// Connections the gateway closed.
    closed: AtomicUsize,
    pair: tokio::sync::Notify,
}

async fn upstream(kind: Upstream) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::SeqCst);
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                loop {
                    // One request: head, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                s.closed.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let body_len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + body_len {
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + body_len);
                    let nth = s.requests.fetch_add(1, Ordering::SeqCst);
                    if let (Upstream::PairFirst, 0 | 1) = (kind, nth) {
                        let paired = s.pair.notified();
                        if nth == 1 {
                            s.pair.notify_one();
                        } else {
                            paired.await;
                        }
                    }
                    match kind {
                        Upstream::Vanish => return,
                        Upstream::VanishOnSecond if answered == 1 => return,
                        _ => answered += 1,
                    }
                    let mut reply: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if head.starts_with("head ") {
                        reply = &reply[..reply.len() - 2];
                    }
                    if conn.write_all(reply).await.is_err() {
                        return;
                    }
                    if let Upstream::CloseAfterOne = kind {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn gateway(upstream: SocketAddr) -> (scopegate::Running, tempfile::TempDir) {
    gateway_with(upstream, |_| {}).await
}

async fn gateway_with(
    upstream: SocketAddr,
    tweak: impl FnOnce(&mut Settings),
) -> (scopegate::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let scopes = dir.path().join("scopes.toml");
    std::fs::write(&scopes, MATRIX).unwrap();
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        upstream: Some(format!("http://{upstream}")),
        scopes: Some(scopes),
        state_dir: dir.path().join("state"),
        // One worker: one idle list, so reuse is deterministic.
        workers: 1,
        ..Settings::default()
    };
    let mut settings = settings;
    tweak(&mut settings);
    (scopegate::start(settings).await.unwrap(), dir)
}

/// A request without a job token (forwarded untouched, no forge lookup), on its own client
/// connection. With a body it goes upstream through hyper's client, without one through the
/// gateway's own (`src/h1`): both are checked.
async fn post(gw: &scopegate::Running, n: usize) -> String {
    let body = format!("{{\"n\":{n}}}");
    let request = format!(
        "POST /api/v4/projects/12/issues HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(gw.listen, request.as_bytes()).await
}

/// A body-less request of `method` (POST goes with `Content-Length: 0`).
async fn bodyless(gw: &scopegate::Running, method: &str) -> String {
    let length = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    let request = format!(
        "{method} /api/v4/projects/12/issues HTTP/1.1\r\nHost: x\r\n{length}Connection: close\r\n\r\n"
    );
    raw(gw.listen, request.as_bytes()).await
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let (addr, seen) = upstream(Upstream::KeepAlive).await;
    let (gw, _dir) = gateway(addr).await;
    for n in 0..10 {
        let answer = post(&gw, n).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 10);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connections_the_upstream_closed_cost_no_request_and_none_is_sent_twice() {
    let (addr, seen) = upstream(Upstream::CloseAfterOne).await;
    let (gw, _dir) = gateway(addr).await;
    for n in 0..30 {
        let answer = post(&gw, n).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {n}: {answer}");
        assert_eq!(seen.requests.load(Ordering::SeqCst), n + 1, "request {n}");
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn a_request_the_upstream_read_is_not_replayed() {
    let (addr, seen) = upstream(Upstream::Vanish).await;
    let (gw, _dir) = gateway(addr).await;
    let answer = post(&gw, 1).await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("\"message\""), "{answer}");
    // A retry would have happened before the answer: the count is final.
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bodyless_requests_share_one_upstream_connection() {
    let (addr, seen) = upstream(Upstream::KeepAlive).await;
    let (gw, _dir) = gateway(addr).await;
    for n in 0..12 {
        let method = ["GET", "POST", "DELETE", "HEAD"][n % 4];
        let answer = bodyless(&gw, method).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{method}: {answer}");
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 12);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bodyless_requests_lose_nothing_to_connections_the_upstream_closed() {
    // POST cannot be sent twice: the idle connection is probed before it is used. GET may be:
    // it is sent and, when the connection turns out closed, sent again on a new one.
    for method in ["POST", "GET"] {
        let (addr, seen) = upstream(Upstream::CloseAfterOne).await;
        let (gw, _dir) = gateway(addr).await;
        for n in 0..20 {
            let answer = bodyless(&gw, method).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{method} {n}: {answer}");
            assert_eq!(seen.requests.load(Ordering::SeqCst), n + 1, "{method} {n}");
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 20, "{method}");
    }
}

#[tokio::test]
async fn a_bodyless_post_the_upstream_read_is_not_replayed_but_a_get_is() {
    // POST: the pooled connection looked open, the upstream read the request and vanished.
    let (addr, seen) = upstream(Upstream::VanishOnSecond).await;
    let (gw, _dir) = gateway(addr).await;
    assert!(bodyless(&gw, "POST").await.starts_with("HTTP/1.1 200"));
    let answer = bodyless(&gw, "POST").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("\"message\""), "{answer}");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);

    // GET is idempotent (RFC 9110 9.2.2): sent again on a new connection, answered there.
    let (addr, seen) = upstream(Upstream::VanishOnSecond).await;
    let (gw, _dir) = gateway(addr).await;
    assert!(bodyless(&gw, "GET").await.starts_with("HTTP/1.1 200"));
    let answer = bodyless(&gw, "GET").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_past_the_idle_timeout_are_closed_while_others_stay_busy() {
    let (addr, seen) = upstream(Upstream::PairFirst).await;
    let idle = std::time::Duration::from_millis(300);
    let (gw, _dir) = gateway_with(addr, |s| s.timeouts.upstream_idle = idle).await;
    // Two requests at once: two upstream connections, both idle afterwards.
    let (a, b) = tokio::join!(bodyless(&gw, "GET"), bodyless(&gw, "GET"));
    assert!(
        a.starts_with("HTTP/1.1 200") && b.starts_with("HTTP/1.1 200"),
        "{a}\n{b}"
    );
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    // Steady traffic keeps reusing the most recent one; the other passes the idle timeout
    // and is closed, without a request ever reaching it.
    let closed_one = eventually(std::time::Duration::from_secs(5), || async {
        let answer = bodyless(&gw, "GET").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        seen.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(closed_one, "the unused idle connection stayed open");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
}
