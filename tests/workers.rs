//! Worker threads: each new connection goes to the worker serving the fewest, so the workers'
//! shares stay even (the tail latency is that of the busiest worker); every worker serves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::scopes::MATRIX;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive request on `conn`; the answer's status line.
async fn ask(conn: &mut TcpStream) -> String {
    let request = format!(
        "GET /api/v4/projects/12/merge_requests HTTP/1.1\r\nHost: x\r\nJOB-TOKEN: {BOT}\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The stand-in answers with a Content-Length; read until the head and that many bytes.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= head_end + 4 + len {
                return text.lines().next().unwrap_or_default().to_string();
            }
        }
    }
}

#[tokio::test]
async fn connections_are_shared_evenly_between_workers() {
    let h = Harness::start_with(MATRIX, |s| s.workers = 2).await;
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut conn = TcpStream::connect(h.gw.listen).await.unwrap();
        assert_eq!(ask(&mut conn).await, "HTTP/1.1 200 OK");
        conns.push(conn);
    }
    let text = h.metrics().await;
    assert_eq!(
        metric(&text, "scopegate_worker_connections", &["worker=\"0\""]),
        5.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "scopegate_worker_connections", &["worker=\"1\""]),
        5.0,
        "{text}"
    );
    // Every connection keeps working where it is.
    for conn in &mut conns {
        assert_eq!(ask(conn).await, "HTTP/1.1 200 OK");
    }
    assert_eq!(h.reached().len(), 20);
    drop(conns);
    let back_to_zero = eventually(Duration::from_secs(5), || async {
        let text = h.metrics().await;
        metric(&text, "scopegate_worker_connections", &["worker=\"0\""]) == 0.0
            && metric(&text, "scopegate_worker_connections", &["worker=\"1\""]) == 0.0
    })
    .await;
    assert!(back_to_zero, "closed connections still counted");
}
