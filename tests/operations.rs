//! Production behaviour: upgrades, Expect: 100-continue, limits, timeouts, upstream failures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::scopes::MATRIX;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await {
            Ok(Ok(1)) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn websocket_tunnel_opens_only_after_the_decision() {
    let h = Harness::start(MATRIX).await;
    let upgrade = |project: &str| {
        format!(
            "GET /api/v4/projects/{project}/terminal/ws HTTP/1.1\r\nHost: x\r\nJOB-TOKEN: {BOT}\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    // Allowed: 101, then bytes go through the tunnel and come back.
    let mut s = TcpStream::connect(h.gw.listen).await.unwrap();
    s.write_all(upgrade("12").as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut echo = vec![0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping through the tunnel");
    // Denied: 403 before any 101, nothing reaches the forge.
    h.forge.clear();
    let mut s = TcpStream::connect(h.gw.listen).await.unwrap();
    s.write_all(upgrade("30").as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(h.reached().is_empty());
}

#[tokio::test]
async fn h2c_upgrade_is_never_forwarded() {
    let h = Harness::start(MATRIX).await;
    let r = raw(
        h.gw.listen,
        b"GET /api/v4/projects/30 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = h.forge.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("upgrade"), None);
    assert_eq!(seen[0].header("http2-settings"), None);
}

#[tokio::test]
async fn expect_continue_on_a_denied_request_gets_403_without_the_body() {
    let h = Harness::start(MATRIX).await;
    let mut s = TcpStream::connect(h.gw.listen).await.unwrap();
    s.write_all(
        format!(
            "PUT /api/v4/projects/30/packages/generic/p/1/f.bin HTTP/1.1\r\nHost: x\r\nJOB-TOKEN: {BOT}\r\n\
             Content-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "403 at once, not 100 Continue: {head}"
    );
    assert!(h.reached().is_empty());
}

#[tokio::test]
async fn slowloris_is_cut_off_within_the_header_timeout() {
    let h = Harness::start_with(MATRIX, |s| {
        s.timeouts.request_header = Duration::from_millis(500)
    })
    .await;
    let mut s = TcpStream::connect(h.gw.listen).await.unwrap();
    s.write_all(b"GET /api/v4/projects/12 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "connection closed by the gateway");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_long_urls_414() {
    let h = Harness::start(MATRIX).await;
    let big = "a".repeat(70 * 1024);
    let r = raw(
        h.gw.listen,
        format!("GET /api/v4/projects/12 HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(200)]);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw(
        h.gw.listen,
        format!("GET /api/v4/projects/12 HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(200)]);
    let long = "x".repeat(9000);
    let r = h.get(&format!("/api/v4/projects/12/{long}"), &[]).await;
    assert_eq!(r.status, 414);
    assert!(h.reached().is_empty());
}

#[tokio::test]
async fn upstream_that_never_answers_gets_504_in_time() {
    let h = Harness::start_with(MATRIX, |s| {
        s.timeouts.upstream_response = Duration::from_millis(500)
    })
    .await;
    let started = Instant::now();
    let r = h
        .get("/api/v4/projects/12?standin_hang=1", &[("JOB-TOKEN", BOT)])
        .await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(r.json()["message"].is_string());
}

#[tokio::test]
async fn upstream_that_is_down_gets_502() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = Harness::start_with(MATRIX, |s| {
        s.upstream = Some(format!("http://127.0.0.1:{port}"))
    })
    .await;
    let r = h.get("/api/v4/projects/12", &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["message"].is_string());
}

#[tokio::test]
async fn upstream_reset_mid_body_fails_that_client_only() {
    let h = Harness::start(MATRIX).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let req = http::Request::get(
        h.url("/api/v4/projects/12/jobs/artifacts/main/download?standin_reset_after=2000000"),
    )
    .header("JOB-TOKEN", BOT)
    .body(http_body_util::Empty::new())
    .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert_eq!(status, 200, "{:?}", body.map(|b| b.to_bytes()));
    assert!(
        body.is_err(),
        "the client sees the body break off: {:?}",
        body.map(|b| b.to_bytes().len())
    );
    // The gateway keeps serving others.
    assert_eq!(
        h.get("/api/v4/projects/12", &[("JOB-TOKEN", BOT)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move() {
    let h = Harness::start(MATRIX).await;
    let before = h.metrics().await;
    assert_eq!(
        h.get("/api/v4/projects/12", &[("JOB-TOKEN", BOT)])
            .await
            .status,
        200
    );
    assert_eq!(
        h.get("/api/v4/projects/30", &[("JOB-TOKEN", BOT)])
            .await
            .status,
        403
    );
    let after = h.metrics().await;
    for line in after.lines() {
        assert!(valid_exposition_line(line), "not Prometheus text: {line:?}");
    }
    assert!(after.ends_with("# EOF\n") || after.ends_with('\n'));
    let allowed = |t: &str| {
        metric(
            t,
            "scopegate_requests_total",
            &["decision=\"allow\"", "in_scope"],
        )
    };
    let denied = |t: &str| {
        metric(
            t,
            "scopegate_requests_total",
            &["decision=\"deny\"", "outbound_limit"],
        )
    };
    assert_eq!(allowed(&after) - allowed(&before), 1.0);
    assert_eq!(denied(&after) - denied(&before), 1.0);
    assert!(metric(&after, "scopegate_request_duration_seconds_count", &[]) >= 2.0);
    assert!(metric(&after, "scopegate_upstream_responses_total", &["2xx"]) >= 1.0);
    assert_eq!(metric(&after, "scopegate_policy_generation", &[]), 1.0);
}

/// `# HELP|TYPE|UNIT|EOF ...` or `name{labels} value`.
fn valid_exposition_line(line: &str) -> bool {
    if line.is_empty()
        || line.starts_with("# HELP ")
        || line.starts_with("# TYPE ")
        || line.starts_with("# UNIT ")
        || line == "# EOF"
    {
        return true;
    }
    let Some((series, value)) = line.rsplit_once(' ') else {
        return false;
    };
    let name_end = series.find('{').unwrap_or(series.len());
    let name = &series[..name_end];
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    let labels_ok =
        name_end == series.len() || (series.ends_with('}') && series[name_end..].contains('='));
    name_ok
        && labels_ok
        && (value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN"))
}
