//! 256 MiB up and down through the gateway binary with an allowed token, checked by hash, while
//! the gateway's peak memory stays under 64 MiB: bodies stream, they are never buffered whole —
//! also a 256 MiB multipart upload, which the gateway parses for credentials on the way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::scopes::MATRIX;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use sha2::{Digest, Sha256};

const SIZE: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;
const PEAK_LIMIT_KIB: u64 = 64 * 1024;

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The stand-in forge answered 200 and echoes a body of `len` bytes with this SHA-256.
async fn assert_echoed(resp: http::Response<hyper::body::Incoming>, len: u64, sha256: &str) {
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["body_len"], len);
    assert_eq!(echo["body_sha256"], sha256);
}

struct Upload {
    sent: u64,
    block: Bytes,
    /// Sent before and after the SIZE bytes (a multipart envelope), when not empty.
    head: Option<Bytes>,
    tail: Option<Bytes>,
}

impl futures_core::Stream for Upload {
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(head) = self.head.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if self.sent >= SIZE {
            return std::task::Poll::Ready(self.tail.take().map(|t| Ok(Frame::data(t))));
        }
        let n = CHUNK.min((SIZE - self.sent) as usize);
        self.sent += n as u64;
        let chunk = self.block.slice(..n);
        std::task::Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_bodies_stream_in_bounded_memory() {
    let forge = scopegate::standin::Standin::start(jobs()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scopes = dir.path().join("scopes.toml");
    std::fs::write(&scopes, MATRIX).unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args([
            "run",
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--upstream",
            &forge.url(),
        ])
        .arg("--scopes")
        .arg(&scopes)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::combinators::BoxBody<Bytes, Infallible>>();
    let ready_url = format!("http://{admin}/-/ready");
    let ready = eventually(Duration::from_secs(20), || {
        let req = http::Request::get(ready_url.as_str())
            .body(http_body_util::Empty::new().boxed())
            .unwrap();
        let fut = client.request(req);
        async move { matches!(fut.await, Ok(r) if r.status() == 200) }
    })
    .await;
    assert!(ready, "gateway ready");

    // Upload: the forge hashes what it received.
    let block = Bytes::from((0..CHUNK).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    let mut expected = Sha256::new();
    let mut sent = 0u64;
    while sent < SIZE {
        let n = CHUNK.min((SIZE - sent) as usize);
        expected.update(&block[..n]);
        sent += n as u64;
    }
    let expected = hex::encode(expected.finalize());
    let body = StreamBody::new(Upload {
        sent: 0,
        block: block.clone(),
        head: None,
        tail: None,
    })
    .boxed();
    let req = http::Request::put(format!(
        "http://{listen}/api/v4/projects/12/packages/generic/big/1.0/blob.bin"
    ))
    .header("JOB-TOKEN", BOT)
    .header("content-length", SIZE)
    .body(body)
    .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_echoed(resp, SIZE, &expected).await;

    // Download: hash what arrives, chunk by chunk.
    let req = http::Request::get(format!(
        "http://{listen}/api/v4/projects/12/jobs/artifacts/main/download?job=build&download_bytes={SIZE}"
    ))
    .header("JOB-TOKEN", BOT)
    .body(http_body_util::Empty::new().boxed())
    .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Sha256::new();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            got.update(data);
            received += data.len() as u64;
        }
    }
    assert_eq!(received, SIZE);
    let mut want = Sha256::new();
    let mut off = 0u64;
    while off < SIZE {
        let n = (1 << 20).min(SIZE - off) as usize;
        want.update(scopegate::standin::download_pattern_chunk(off, n));
        off += n as u64;
    }
    assert_eq!(hex::encode(got.finalize()), hex::encode(want.finalize()));

    // A multipart upload of the same size, with the job token also in a field after the file:
    // parsed on the way, streamed, held back only at its end.
    let boundary = "----scopegate-streaming-test";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbig\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"big.whl\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!(
        "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"job_token\"\r\n\r\n{BOT}\r\n--{boundary}--\r\n"
    );
    let mut want = Sha256::new();
    want.update(head.as_bytes());
    let mut sent = 0u64;
    while sent < SIZE {
        let n = CHUNK.min((SIZE - sent) as usize);
        want.update(&block[..n]);
        sent += n as u64;
    }
    want.update(tail.as_bytes());
    let total = head.len() as u64 + SIZE + tail.len() as u64;
    let body = StreamBody::new(Upload {
        sent: 0,
        block,
        head: Some(Bytes::from(head)),
        tail: Some(Bytes::from(tail)),
    })
    .boxed();
    let req = http::Request::post(format!("http://{listen}/api/v4/projects/12/packages/pypi"))
        .header("JOB-TOKEN", BOT)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header("content-length", total)
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_echoed(resp, total, &hex::encode(want.finalize())).await;

    let peak = peak_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(peak > 0, "could read the gateway's peak memory");
    assert!(
        peak < PEAK_LIMIT_KIB,
        "gateway peak RSS {peak} KiB while streaming 3 x 256 MiB"
    );
}
