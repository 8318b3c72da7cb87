//! How the gateway treats what the upstream answers to requests without a body (GET, HEAD):
//! framing (chunked with extensions and trailers, close-delimited, HEAD, 1xx, 204, 304),
//! malformed and hostile responses (conflicting lengths, garbage, oversized heads, a truncated
//! body, an unasked-for 101, a response smuggled behind another), connection reuse, and
//! byte-exact header pass-through.
//!
//! Black box on both sides: the upstream is raw TCP scripted per test (exact bytes per request,
//! then keep the connection, close it, or stall), recording every connection and request head;
//! the client is raw TCP too, so each side sees exactly the bytes on the wire. Every wait is
//! bounded: a hang fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::scopes::MATRIX;
use scopegate::settings::Settings;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A static job token of acme/deploy-bot (10), mapped in the scope file: no forge lookup, so
/// every request the upstream sees is a forwarded one.
const TOKEN: &str = "upstream-responses-static-token-01";
/// acme/app (12): the bot's outbound list allows it and its inbound list allows the bot.
const TARGET: &str = "/api/v4/projects/12/merge_requests";
/// Bound on one client exchange.
const WAIT: Duration = Duration::from_secs(10);

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

// ---------------------------------------------------------------------------------------------
// The scripted upstream
// ---------------------------------------------------------------------------------------------

/// What the upstream does with the connection once it wrote its answer.
#[derive(Clone, Copy, Debug)]
enum After {
    /// Wait for the next request.
    KeepOpen,
    /// Shut the connection down (without having announced it).
    Close,
    /// Neither answer nor close: read and discard until the gateway lets go.
    Stall,
}

struct Answer {
    bytes: Vec<u8>,
    after: After,
}

impl Answer {
    fn keep(bytes: impl Into<Vec<u8>>) -> Answer {
        Answer {
            bytes: bytes.into(),
            after: After::KeepOpen,
        }
    }
    fn close(bytes: impl Into<Vec<u8>>) -> Answer {
        Answer {
            bytes: bytes.into(),
            after: After::Close,
        }
    }
    fn stall(bytes: impl Into<Vec<u8>>) -> Answer {
        Answer {
            bytes: bytes.into(),
            after: After::Stall,
        }
    }
}

/// One request as the upstream read it.
#[derive(Clone, Debug)]
struct Seen {
    /// Which accepted connection (0-based, in accept order).
    conn: usize,
    /// Its position on that connection (0-based).
    nth: usize,
    /// The request head, up to and including the blank line.
    head: String,
}

impl Seen {
    fn method(&self) -> &str {
        self.head.split(' ').next().unwrap_or("")
    }
}

type Script = dyn Fn(&Seen) -> Answer + Send + Sync;

struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Listen on loopback; every request read is recorded, then answered by `script`.
    async fn start(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let id = c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(conn, id, Arc::clone(&script), Arc::clone(&r)));
            }
        });
        Upstream {
            addr,
            connections,
            requests,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    mut conn: TcpStream,
    id: usize,
    script: Arc<Script>,
    requests: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    for nth in 0.. {
        // Requests here carry no body: a request is its head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let seen = Seen {
            conn: id,
            nth,
            head,
        };
        requests.lock().unwrap().push(seen.clone());
        let answer = script(&seen);
        if conn.write_all(&answer.bytes).await.is_err() {
            return;
        }
        match answer.after {
            After::KeepOpen => {}
            After::Close => {
                let _ = conn.shutdown().await;
                return;
            }
            After::Stall => {
                while let Ok(n) = conn.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway and a raw client
// ---------------------------------------------------------------------------------------------

async fn gateway(
    upstream: &Upstream,
    tweak: impl FnOnce(&mut Settings),
) -> (scopegate::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let scopes = dir.path().join("scopes.toml");
    let digest = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    std::fs::write(
        &scopes,
        format!("{MATRIX}\n[[token]]\nsha256 = \"{digest}\"\nproject = 10\n"),
    )
    .unwrap();
    let mut settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        upstream: Some(format!("http://{}", upstream.addr)),
        scopes: Some(scopes),
        state_dir: dir.path().join("state"),
        // One worker: one idle list, so upstream connection reuse is deterministic.
        workers: 1,
        ..Settings::default()
    };
    tweak(&mut settings);
    (scopegate::start(settings).await.unwrap(), dir)
}

/// A response as the client read it off the wire.
#[derive(Debug)]
struct Response {
    /// 0 when no status line arrived at all.
    status: u16,
    /// The raw head, status line to blank line.
    head: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    /// The decoded body.
    body: Vec<u8>,
    /// The body arrived complete by its own framing (length reached, last chunk seen).
    complete: bool,
    /// Bytes after the head, undecoded.
    rest: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }

    fn json_message(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some(v.get("message")?.as_str()?.to_owned())
    }
}

/// `method TARGET` with the job token, on a fresh client connection (`Connection: close`);
/// reads until the gateway closes (or resets) the connection.
async fn send(gw: &scopegate::Running, method: &str) -> Response {
    send_within(gw, method, WAIT).await
}

async fn send_within(gw: &scopegate::Running, method: &str, within: Duration) -> Response {
    let request = format!(
        "{method} {TARGET} HTTP/1.1\r\nHost: gitlab.test\r\nJOB-TOKEN: {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    send_request(gw, method, request, within).await
}

/// A POST with a small opaque body: it goes upstream through hyper's client, where body-less
/// requests take the gateway's own (`src/h1`).
async fn send_with_body(gw: &scopegate::Running) -> Response {
    let request = format!(
        "POST {TARGET} HTTP/1.1\r\nHost: gitlab.test\r\nJOB-TOKEN: {TOKEN}\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde"
    );
    send_request(gw, "POST", request, WAIT).await
}

async fn send_request(
    gw: &scopegate::Running,
    method: &str,
    request: String,
    within: Duration,
) -> Response {
    let deadline = tokio::time::Instant::now() + within;
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => panic!(
                "{method}: the gateway did not finish its response within {within:?}; got {} bytes: {:?}",
                out.len(),
                String::from_utf8_lossy(&out[..out.len().min(2000)])
            ),
            // A reset ends the response as well as a close.
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
    parse(&out, method == "HEAD")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse(buf: &[u8], head_request: bool) -> Response {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Response {
            status: 0,
            head: buf.to_vec(),
            headers: Vec::new(),
            body: Vec::new(),
            complete: false,
            rest: Vec::new(),
        };
    };
    let head = &buf[..end + 4];
    let rest = &buf[end + 4..];
    let mut lines = buf[..end]
        .split(|&b| b == b'\n')
        .map(|l| l.trim_ascii_end());
    let status_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            Some((
                String::from_utf8_lossy(&l[..colon]).into_owned(),
                l[colon + 1..].trim_ascii().to_vec(),
            ))
        })
        .collect();
    let mut r = Response {
        status,
        head: head.to_vec(),
        headers,
        body: Vec::new(),
        complete: false,
        rest: rest.to_vec(),
    };
    let chunked = r.all("transfer-encoding").iter().any(|v| {
        String::from_utf8_lossy(v)
            .to_ascii_lowercase()
            .contains("chunked")
    });
    let length = r
        .header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok());
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        r.complete = true;
    } else if chunked {
        (r.body, r.complete) = dechunk(rest);
    } else if let Some(n) = length {
        r.body = rest[..n.min(rest.len())].to_vec();
        r.complete = rest.len() >= n;
    } else {
        // Close-delimited: complete by definition (a truncation cannot be told apart).
        r.body = rest.to_vec();
        r.complete = true;
    }
    r
}

/// Decode a chunked body: (data, whether the last chunk and the trailer section arrived).
fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(b, b"\r\n") else {
            return (body, false);
        };
        let line = String::from_utf8_lossy(&b[..eol]).into_owned();
        let size = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return (body, false);
        };
        b = &b[eol + 2..];
        if size == 0 {
            loop {
                let Some(eol) = find(b, b"\r\n") else {
                    return (body, false);
                };
                if eol == 0 {
                    return (body, true);
                }
                b = &b[eol + 2..];
            }
        }
        if b.len() < size + 2 {
            body.extend_from_slice(&b[..size.min(b.len())]);
            return (body, false);
        }
        body.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn assert_ok(r: &Response, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.head_text());
    assert!(r.complete, "{what}: incomplete body: {r:?}");
    assert_eq!(r.text(), "ok", "{what}");
}

fn assert_502_json(r: &Response, what: &str) {
    assert_eq!(r.status, 502, "{what}: {}{}", r.head_text(), r.text());
    assert!(
        r.json_message().is_some(),
        "{what}: not a JSON message: {:?}",
        r.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn chunked_response_is_decoded_and_status_and_headers_pass_through() {
    let up = Upstream::start(|_| {
        Answer::keep(
            &b"HTTP/1.1 201 Created\r\nX-Upstream: yes\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
               5;ext=1\r\nhello\r\n1\r\n,\r\nB;name=\"quoted value\"\r\n wide world\r\n0\r\nX-Checksum: abc\r\n\r\n"[..],
        )
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    let r = send(&gw, "GET").await;
    assert_eq!(r.status, 201, "{}", r.head_text());
    assert_eq!(r.header("x-upstream"), Some(&b"yes"[..]));
    assert!(r.complete, "{r:?}");
    assert_eq!(r.text(), "hello, wide world");
    // The same connection serves the next request: the whole chunked body was consumed.
    let r = send(&gw, "GET").await;
    assert_eq!(r.text(), "hello, wide world");
    assert_eq!(up.connections(), 1);
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn close_delimited_response_reaches_the_client_whole_and_the_next_request_uses_a_new_connection(
) {
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let expected = body.clone();
    let up = Upstream::start(move |_| {
        let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        bytes.extend_from_slice(&body);
        Answer::close(bytes)
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    for n in 0..2 {
        let r = send(&gw, "GET").await;
        assert_eq!(r.status, 200, "request {n}: {}", r.head_text());
        assert!(r.complete, "request {n}");
        assert_eq!(r.body.len(), expected.len(), "request {n}");
        assert!(r.body == expected, "request {n}: body differs");
    }
    assert_eq!(up.connections(), 2);
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn head_response_has_no_body_keeps_its_length_and_the_connection_is_reused() {
    let up = Upstream::start(|seen| {
        if seen.method() == "HEAD" {
            Answer::keep(
                &b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"[..],
            )
        } else {
            Answer::keep(OK)
        }
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    let r = send(&gw, "HEAD").await;
    assert_eq!(r.status, 200, "{}", r.head_text());
    assert_eq!(r.header("content-length"), Some(&b"1234"[..]));
    assert!(r.rest.is_empty(), "a body after a HEAD response: {r:?}");
    // The upstream sent no body either: its connection is ready for the next request.
    assert_ok(&send(&gw, "GET").await, "GET after HEAD");
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method(), "HEAD");
    assert_eq!(seen[1].method(), "GET");
    assert_eq!(seen[1].conn, 0);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn no_content_and_not_modified_have_no_body_and_the_connection_is_reused() {
    let up = Upstream::start(|seen| match seen.nth {
        0 => Answer::keep(&b"HTTP/1.1 204 No Content\r\nX-Upstream: 204\r\n\r\n"[..]),
        1 => Answer::keep(
            &b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nX-Upstream: 304\r\n\r\n"[..],
        ),
        _ => Answer::keep(OK),
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    let r = send(&gw, "GET").await;
    assert_eq!(r.status, 204, "{}", r.head_text());
    assert_eq!(r.header("x-upstream"), Some(&b"204"[..]));
    assert!(r.rest.is_empty(), "a body after 204: {r:?}");
    let r = send(&gw, "GET").await;
    assert_eq!(r.status, 304, "{}", r.head_text());
    assert_eq!(r.header("etag"), Some(&b"\"v1\""[..]));
    assert!(r.rest.is_empty(), "a body after 304: {r:?}");
    assert_ok(&send(&gw, "GET").await, "GET after 204 and 304");
    assert_eq!(up.requests().len(), 3);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn interim_continue_is_skipped_and_the_final_response_arrives() {
    let up = Upstream::start(|_| {
        Answer::keep(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..],
        )
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    let r = send(&gw, "GET").await;
    // The first status line the client sees is the final one.
    assert_eq!(r.status, 200, "{}", r.head_text());
    assert!(r.complete, "{r:?}");
    assert_eq!(r.text(), "hello");
    let r = send(&gw, "GET").await;
    assert_eq!(r.text(), "hello");
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn chunked_wins_over_content_length_and_the_client_is_not_told_a_wrong_length() {
    let up = Upstream::start(|_| {
        Answer::keep(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
               5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"[..],
        )
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    for r in [send(&gw, "GET").await, send_with_body(&gw).await] {
        assert_eq!(r.status, 200, "{}", r.head_text());
        let chunked = !r.all("transfer-encoding").is_empty();
        let length = r.header("content-length");
        assert!(
            !(chunked && length.is_some()),
            "both framings told to the client: {}",
            r.head_text()
        );
        assert!(
            length.is_none() || length == Some(&b"11"[..]),
            "a Content-Length that contradicts the body: {}",
            r.head_text()
        );
        assert!(r.complete, "{r:?}");
        assert_eq!(r.text(), "hello world");
        assert_eq!(r.body.len(), 11);
    }
}

// ---------------------------------------------------------------------------------------------
// Broken and hostile responses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_different_content_lengths_are_a_502_and_the_connection_is_not_reused() {
    let up = Upstream::start(|seen| {
        if seen.conn == 0 {
            Answer::keep(
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
            )
        } else {
            Answer::keep(OK)
        }
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    assert_502_json(&send(&gw, "GET").await, "conflicting lengths");
    assert_ok(&send(&gw, "GET").await, "next request");
    assert_eq!(up.connections(), 2);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].conn, 1);
}

#[tokio::test]
async fn a_body_cut_short_is_not_passed_off_as_complete_and_nothing_hangs() {
    let up = Upstream::start(|seen| {
        if seen.conn == 0 {
            Answer::close(&b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"[..])
        } else {
            Answer::keep(OK)
        }
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    // `send` fails the test if the gateway neither finishes nor closes within WAIT.
    let r = send(&gw, "GET").await;
    assert!(
        !(r.complete && r.body.len() == 100),
        "a truncated upstream body reached the client as complete: {r:?}"
    );
    if r.status == 200 {
        assert!(!r.complete, "a truncated body looks complete: {r:?}");
        assert!(r.body.len() < 100);
    }
    assert_ok(&send(&gw, "GET").await, "next request");
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn a_response_head_over_one_mebibyte_is_a_502_not_a_hang() {
    let up = Upstream::start(|seen| {
        if seen.conn == 0 {
            let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
            let value = "v".repeat(600);
            for i in 0..2000 {
                bytes.extend_from_slice(format!("X-Filler-{i:04}: {value}\r\n").as_bytes());
            }
            bytes.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
            assert!(bytes.len() > 1024 * 1024);
            // Written while the upstream holds the connection open and keeps reading.
            Answer::stall(bytes)
        } else {
            Answer::keep(OK)
        }
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    assert_502_json(&send(&gw, "GET").await, "oversized head");
    assert_ok(&send(&gw, "GET").await, "next request");
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn garbage_instead_of_a_status_line_is_a_502() {
    let up = Upstream::start(|seen| {
        if seen.conn == 0 {
            Answer::keep(&b"HELLO WORLD\r\n\r\n"[..])
        } else {
            Answer::keep(OK)
        }
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    assert_502_json(&send(&gw, "GET").await, "garbage");
    assert_ok(&send(&gw, "GET").await, "next request");
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn switching_protocols_nobody_asked_for_is_a_502_and_the_connection_is_not_reused() {
    let up = Upstream::start(|seen| {
        if seen.conn == 0 {
            Answer::stall(
                &b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
            )
        } else {
            Answer::keep(OK)
        }
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    assert_502_json(&send(&gw, "GET").await, "unasked 101");
    assert_ok(&send(&gw, "GET").await, "next request");
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn bytes_after_a_complete_response_are_never_taken_for_the_next_response() {
    let up = Upstream::start(|seen| {
        if seen.conn == 0 && seen.nth == 0 {
            // One write: the answer, and a second response nobody asked for.
            Answer::keep(
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
                   HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"[..],
            )
        } else {
            Answer::keep(&b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"[..])
        }
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    let r = send(&gw, "GET").await;
    assert_eq!(r.status, 200, "{}", r.head_text());
    assert_eq!(r.text(), "hello");
    let r = send(&gw, "GET").await;
    assert_eq!(r.status, 200, "{}", r.head_text());
    assert_eq!(r.text(), "good", "the smuggled response was served");
    // The second answer is the upstream's answer to the second request.
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_a_504_within_the_response_timeout() {
    let up = Upstream::start(|_| Answer::stall(Vec::new())).await;
    let (gw, _dir) = gateway(&up, |s| {
        s.timeouts.upstream_response = Duration::from_millis(500);
    })
    .await;
    let started = Instant::now();
    let r = send(&gw, "GET").await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}{}", r.head_text(), r.text());
    assert!(r.json_message().is_some(), "{:?}", r.text());
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(up.requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Connection reuse
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fifty_sequential_requests_share_one_keep_alive_connection() {
    let up = Upstream::start(|_| Answer::keep(OK)).await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    for n in 0..50 {
        assert_ok(&send(&gw, "GET").await, &format!("request {n}"));
    }
    assert_eq!(up.requests().len(), 50);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn an_unannounced_close_after_each_response_costs_no_request_and_sends_none_twice() {
    let up = Upstream::start(|_| Answer::close(OK)).await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    for n in 0..10 {
        assert_ok(&send(&gw, "GET").await, &format!("request {n}"));
        assert_eq!(up.requests().len(), n + 1, "request {n}");
    }
    assert_eq!(up.connections(), 10);
    // Each request reached the upstream once, each on its own connection.
    assert!(up.requests().iter().all(|s| s.nth == 0));
}

#[tokio::test]
async fn connection_close_is_honoured_and_upstream_hop_by_hop_headers_stay_upstream() {
    let up = Upstream::start(|_| {
        Answer::close(
            &b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: secret\r\n\
               X-Kept: 1\r\nContent-Length: 2\r\n\r\nok"[..],
        )
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    for n in 0..2 {
        let r = send(&gw, "GET").await;
        assert_ok(&r, &format!("request {n}"));
        assert_eq!(r.header("x-kept"), Some(&b"1"[..]));
        assert_eq!(r.header("keep-alive"), None, "{}", r.head_text());
        assert_eq!(r.header("x-hop"), None, "{}", r.head_text());
        let head = r.head_text().to_ascii_lowercase();
        assert!(!head.contains("timeout=5"), "{head}");
        assert!(!head.contains("x-hop"), "{head}");
        // The client asked for close itself: that is the only Connection it may see.
        for v in r.all("connection") {
            assert!(v.eq_ignore_ascii_case(b"close"), "{head}");
        }
    }
    assert_eq!(up.connections(), 2);
    assert_eq!(up.requests().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Size and bytes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_32_mib_chunked_response_arrives_intact() {
    const TOTAL: usize = 32 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let payload: Arc<Vec<u8>> = Arc::new(
        (0..TOTAL)
            .map(|i| (i.wrapping_mul(31).wrapping_add(i >> 13) % 251) as u8)
            .collect(),
    );
    let expected = hex::encode(Sha256::digest(payload.as_slice()));
    let p = Arc::clone(&payload);
    let up = Upstream::start(move |_| {
        let mut bytes = Vec::with_capacity(TOTAL + TOTAL / CHUNK * 16 + 128);
        bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
        for chunk in p.chunks(CHUNK) {
            bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        Answer::keep(bytes)
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    let r = send_within(&gw, "GET", Duration::from_secs(60)).await;
    assert_eq!(r.status, 200, "{}", r.head_text());
    assert!(r.complete, "incomplete: {} of {TOTAL} bytes", r.body.len());
    assert_eq!(r.body.len(), TOTAL);
    assert_eq!(hex::encode(Sha256::digest(&r.body)), expected);
}

#[tokio::test]
async fn obs_text_in_a_header_value_passes_byte_exact() {
    let up = Upstream::start(|_| {
        Answer::keep(
            &b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9 \xff\x80!\r\nContent-Length: 2\r\n\r\nok"[..],
        )
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    let r = send(&gw, "GET").await;
    assert_ok(&r, "obs-text");
    assert_eq!(r.header("x-name"), Some(&b"caf\xe9 \xff\x80!"[..]));
}

#[tokio::test]
async fn every_set_cookie_reaches_the_client_in_order() {
    let up = Upstream::start(|_| {
        Answer::keep(
            &b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nX-Between: 1\r\nSet-Cookie: b=2; HttpOnly\r\n\
               Set-Cookie: c=3; Secure; SameSite=Lax\r\nContent-Length: 2\r\n\r\nok"[..],
        )
    })
    .await;
    let (gw, _dir) = gateway(&up, |_| {}).await;
    let r = send(&gw, "GET").await;
    assert_ok(&r, "set-cookie");
    assert_eq!(
        r.all("set-cookie"),
        [
            &b"a=1; Path=/"[..],
            &b"b=2; HttpOnly"[..],
            &b"c=3; Secure; SameSite=Lax"[..]
        ]
    );
}
