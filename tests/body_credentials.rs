//! Credentials in request bodies (urlencoded, multipart, JSON, POST without a type) are decided
//! like header tokens, before anything reaches the forge; inspected bodies arrive byte-identical;
//! urlencoded and JSON bodies too big to inspect are refused; big multipart bodies stream and are
//! checked on the way, their end held back; other bodies stream untouched; malformed bodies,
//! trailers and credential or framing headers named in `Connection` cannot slip a credential
//! past the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::scopes::MATRIX;
use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOWED: &str = "/api/v4/projects/12/trigger/pipeline";
const DENIED: &str = "/api/v4/projects/30/trigger/pipeline";
type Headers = Vec<(&'static str, &'static str)>;

const BOUNDARY: &str = "------------------------d74496d66958873e";

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A multipart/form-data body as curl's `--form` writes it: text fields and one file part.
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((name, content)) = file {
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"pkg.whl\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// (case name, content type, body) carrying `token` in the body only.
fn body_carriers(token: &str) -> Vec<(&'static str, Option<String>, Vec<u8>)> {
    vec![
        (
            "urlencoded token",
            Some("application/x-www-form-urlencoded".into()),
            format!("ref=main&token={token}&variables%5BA%5D=1").into_bytes(),
        ),
        (
            "urlencoded job_token, encoded key",
            Some("application/x-www-form-urlencoded; charset=utf-8".into()),
            format!("job%5Ftoken={token}").into_bytes(),
        ),
        (
            "multipart token field",
            Some(multipart_type()),
            multipart(&[("ref", "main"), ("token", token)], None),
        ),
        (
            "multipart private_token with a binary file part",
            Some(multipart_type()),
            multipart(
                &[("private_token", token)],
                Some(("content", &[0u8, 1, 2, 255, 254, b'\r', b'\n', b'-', b'-'])),
            ),
        ),
        (
            "JSON job_token",
            Some("application/json".into()),
            format!(r#"{{"ref":"main","job_token":"{token}","variables":{{"a":[1,2]}}}}"#)
                .into_bytes(),
        ),
        (
            "LFS JSON access_token",
            Some("application/vnd.git-lfs+json; charset=utf-8".into()),
            format!(r#"{{"access_token":["{token}"]}}"#).into_bytes(),
        ),
        (
            "POST without Content-Type, as a form",
            None,
            format!("token={token}&ref=main").into_bytes(),
        ),
        (
            "POST without Content-Type, as JSON",
            None,
            format!(r#" {{"bearer_token":"{token}"}}"#).into_bytes(),
        ),
    ]
}

async fn post(h: &Harness, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    post_with(h, path, content_type, &[], body).await
}

async fn post_with(
    h: &Harness,
    path: &str,
    content_type: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(ct) = content_type {
        headers.push(("Content-Type", ct));
    }
    h.send("POST", &h.url(path), &headers, Bytes::copy_from_slice(body))
        .await
}

#[tokio::test]
async fn body_tokens_are_decided_like_header_tokens() {
    let h = Harness::start(MATRIX).await;
    for (name, ct, body) in body_carriers(BOT) {
        h.forge.clear();
        let ok = post(&h, ALLOWED, ct.as_deref(), &body).await;
        assert_eq!(ok.status, 200, "{name}: allowed target: {}", ok.text());
        let seen = h.forge.requests();
        assert_eq!(seen.len(), 1, "{name}: forwarded once");
        assert_eq!(seen[0].target, ALLOWED, "{name}");
        assert!(seen[0].body_complete, "{name}");
        assert_eq!(seen[0].body_len, body.len() as u64, "{name}: body length");
        assert_eq!(
            seen[0].body_sha256,
            sha(&body),
            "{name}: body byte-identical"
        );
        assert_eq!(
            seen[0].header("content-length"),
            Some(body.len().to_string().as_str()),
            "{name}"
        );
        assert_eq!(
            seen[0].header("content-type"),
            ct.as_deref(),
            "{name}: content type untouched"
        );

        h.forge.clear();
        let denied = post(&h, DENIED, ct.as_deref(), &body).await;
        assert_eq!(
            denied.status,
            403,
            "{name}: denied target: {}",
            denied.text()
        );
        assert!(
            denied.json()["message"]
                .as_str()
                .unwrap()
                .contains("globex/tool"),
            "{name}"
        );
        assert!(
            h.reached().is_empty(),
            "{name}: denied request reached the forge"
        );
    }
}

#[tokio::test]
async fn prefix_less_body_credentials_are_asked_of_the_forge() {
    let h = Harness::start(MATRIX).await;
    // A legacy job token posted as `token`: the forge says it is a job token → enforced.
    let form = format!("token={LEGACY_BOT}");
    let ct = Some("application/x-www-form-urlencoded");
    assert_eq!(post(&h, DENIED, ct, form.as_bytes()).await.status, 403);
    assert!(h.reached().is_empty());
    // An explicit carrier in a JSON body needs no prefix.
    let json = format!(r#"{{"job_token":"{LEGACY_BOT}"}}"#);
    let r = post(&h, DENIED, Some("application/json"), json.as_bytes()).await;
    assert_eq!(r.status, 403);
    assert!(h.reached().is_empty());
    // A pipeline trigger token (not a job token): the forge says 401 → forwarded untouched.
    let trigger = multipart(&[("token", "glptt-trigger-0123"), ("ref", "main")], None);
    let r = post(&h, DENIED, Some(&multipart_type()), &trigger).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = h.forge.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_sha256, sha(&trigger));
}

#[tokio::test]
async fn body_token_conflicting_with_another_token_is_refused() {
    let h = Harness::start(MATRIX).await;
    let form = Some("application/x-www-form-urlencoded");
    let cases: Vec<(&str, Headers, Option<String>, Vec<u8>)> = vec![
        (
            "JOB-TOKEN header + form token",
            vec![("JOB-TOKEN", BOT)],
            form.map(str::to_string),
            format!("token={APP}").into_bytes(),
        ),
        (
            "Basic + multipart job_token",
            vec![(
                "Authorization",
                "Basic Z2l0bGFiLWNpLXRva2VuOmdsY2J0LWJvdC1qb2ItdG9rZW4tMDAwMQ==",
            )],
            Some(multipart_type()),
            multipart(&[("job_token", APP)], None),
        ),
        (
            "header + JSON",
            vec![("PRIVATE-TOKEN", BOT)],
            Some("application/json".into()),
            format!(r#"{{"private_token":"{APP}"}}"#).into_bytes(),
        ),
        (
            "two JSON keys",
            vec![],
            Some("application/json".into()),
            format!(r#"{{"job_token":"{BOT}","job_token":"{APP}"}}"#).into_bytes(),
        ),
        (
            "two form fields",
            vec![],
            form.map(str::to_string),
            format!("job_token={BOT}&job_token[]={APP}").into_bytes(),
        ),
        (
            "untyped POST: form and JSON readings",
            vec![("JOB-TOKEN", BOT)],
            None,
            format!(r#"{{"token":"{APP}"}}"#).into_bytes(),
        ),
    ];
    for (name, headers, ct, body) in cases {
        let r = post_with(&h, ALLOWED, ct.as_deref(), &headers, &body).await;
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(msg.contains("more than one"), "{name}: {msg}");
        assert!(
            !msg.contains(APP) && !msg.contains(BOT),
            "{name}: token in message"
        );
    }
    assert!(h.reached().is_empty(), "nothing forwarded");
    // The same token in the header and the body is one candidate.
    let r = post_with(
        &h,
        ALLOWED,
        form,
        &[("JOB-TOKEN", BOT)],
        format!("token={BOT}").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn oversized_inspectable_bodies_are_refused() {
    let h = Harness::start_with(MATRIX, |s| s.limits.max_inspected_body = 4096).await;
    let pad = "a".repeat(5000);
    let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        (
            "urlencoded",
            Some("application/x-www-form-urlencoded".into()),
            format!("pad={pad}&token={APP}").into_bytes(),
        ),
        (
            "untyped POST",
            None,
            format!("pad={pad}&token={APP}").into_bytes(),
        ),
    ];
    for (name, ct, body) in cases {
        let r = post_with(&h, ALLOWED, ct.as_deref(), &[("JOB-TOKEN", BOT)], &body).await;
        assert_eq!(r.status, 413, "{name}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains("4096") && msg.contains("JOB-TOKEN"),
            "{name}: {msg}"
        );
    }
    assert!(h.reached().is_empty(), "nothing forwarded");
    // At the cap exactly: inspected and forwarded.
    let body = format!("token={BOT}&pad=");
    let body = format!("{body}{}", "b".repeat(4096 - body.len()));
    let r = post(
        &h,
        ALLOWED,
        Some("application/x-www-form-urlencoded"),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Writes a chunked request with `chunks` and `trailer` (raw lines, may be empty), returns the
/// response head and body text.
async fn chunked(h: &Harness, head: &str, chunks: &[&[u8]], trailer: &str) -> String {
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for c in chunks {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n");
    req.extend_from_slice(trailer.as_bytes());
    req.extend_from_slice(b"\r\n");
    raw(h.gw.listen, &req).await
}

#[tokio::test]
async fn chunked_body_growing_past_the_cap_is_refused() {
    let h = Harness::start_with(MATRIX, |s| s.limits.max_inspected_body = 4096).await;
    let head = format!(
        "POST {ALLOWED} HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {BOT}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    );
    let filler = vec![b'x'; 1500];
    let late = format!("&token={APP}");
    let resp = chunked(
        &h,
        &head,
        &[b"pad=", &filler, &filler, &filler, late.as_bytes()],
        "",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(h.reached().is_empty());
}

#[tokio::test]
async fn other_bodies_stream_untouched() {
    let h = Harness::start_with(MATRIX, |s| s.limits.max_inspected_body = 4096).await;
    // Larger than the cap, of types the forge takes no parameters from: forwarded as they are,
    // even when they happen to contain credential-looking text.
    let mut blob = format!("token={APP}&job_token={APP}").into_bytes();
    blob.extend((0..3 << 20).map(|i| (i % 251) as u8));
    for (ct, method) in [
        (Some("application/octet-stream"), "PUT"),
        (Some("application/x-git-receive-pack-request"), "POST"),
        (Some("text/plain"), "POST"),
        // No type and not a JSON object: a generic package upload with curl --upload-file.
        (None, "PUT"),
    ] {
        h.forge.clear();
        let mut headers = vec![("JOB-TOKEN", BOT)];
        if let Some(ct) = ct {
            headers.push(("Content-Type", ct));
        }
        let r = h
            .send(
                method,
                &h.url("/api/v4/projects/12/packages/generic/p/1.0/blob.bin"),
                &headers,
                Bytes::from(blob.clone()),
            )
            .await;
        assert_eq!(r.status, 200, "{ct:?}: {}", r.text());
        let seen = h.forge.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body_sha256, sha(&blob), "{ct:?}");
    }
    // An untyped PUT that is a JSON object is read as JSON (Grape's default format).
    h.forge.clear();
    let json = format!(r#"{{"job_token":"{APP}"}}"#);
    let r = h
        .send(
            "PUT",
            &h.url(ALLOWED),
            &[("JOB-TOKEN", BOT)],
            Bytes::from(json),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(h.reached().is_empty());
}

#[tokio::test]
async fn malformed_inspectable_bodies_are_refused() {
    let h = Harness::start(MATRIX).await;
    let cut = {
        let mut m = multipart(&[("ref", "main"), ("token", BOT)], None);
        m.truncate(m.len() - 10);
        m
    };
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        (
            "invalid JSON",
            Some("application/json".into()),
            b"{\"job_token\":".to_vec(),
        ),
        (
            "JSON with a comment",
            Some("application/json".into()),
            format!("/* x */ {{\"job_token\":\"{APP}\"}}").into_bytes(),
        ),
        (
            "JSON credential that is not a string",
            Some("application/json".into()),
            br#"{"token":{"a":"b"}}"#.to_vec(),
        ),
        (
            "deep JSON",
            Some("application/json".into()),
            deep.into_bytes(),
        ),
        ("truncated multipart", Some(multipart_type()), cut),
        (
            "multipart with another boundary",
            Some("multipart/form-data; boundary=nope".into()),
            multipart(&[("token", BOT)], None),
        ),
        (
            "bad escape in a form credential",
            Some("application/x-www-form-urlencoded".into()),
            b"job_token=%zz".to_vec(),
        ),
        (
            "untyped JSON object that does not parse",
            None,
            b"{\"job_token\": glcbt-x}".to_vec(),
        ),
    ];
    for (name, ct, body) in cases {
        let r = post_with(&h, ALLOWED, ct.as_deref(), &[("JOB-TOKEN", BOT)], &body).await;
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert!(r.json()["message"].as_str().is_some(), "{name}");
    }
    // Compressed bodies of inspectable types cannot be read.
    let r = post_with(
        &h,
        ALLOWED,
        Some("application/json"),
        &[("JOB-TOKEN", BOT), ("Content-Encoding", "gzip")],
        b"\x1f\x8b\x08\x00",
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.text());
    assert!(h.reached().is_empty(), "nothing forwarded");
}

#[tokio::test]
async fn request_trailers_are_never_forwarded() {
    let h = Harness::start(MATRIX).await;
    // The stand-in does record trailers that reach it.
    let direct = format!(
        "POST {ALLOWED} HTTP/1.1\r\nHost: forge\r\nTrailer: X-Checksum\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n"
    );
    let resp = raw(h.forge.addr(), direct.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(h.forge.requests()[0].trailers.len(), 1);
    // A streamed (opaque) body and an inspected form body, each with a credential trailer.
    for ct in [
        "application/octet-stream",
        "application/x-www-form-urlencoded",
    ] {
        h.forge.clear();
        let head = format!(
            "POST {ALLOWED} HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {BOT}\r\nContent-Type: {ct}\r\nTrailer: JOB-TOKEN, X-Checksum\r\nTE: trailers\r\n"
        );
        let trailer = format!("JOB-TOKEN: {OTHER}\r\nX-Checksum: abc\r\n");
        let resp = chunked(&h, &head, &[b"ref=", b"main"], &trailer).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{ct}: {resp}");
        let seen = h.forge.requests();
        assert_eq!(seen.len(), 1, "{ct}");
        assert!(seen[0].body_complete, "{ct}");
        assert_eq!(seen[0].body_sha256, sha(b"ref=main"), "{ct}");
        assert!(seen[0].trailers.is_empty(), "{ct}: {:?}", seen[0].trailers);
    }
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_read() {
    let h = Harness::start(MATRIX).await;
    let body = format!("token={BOT}");
    let mut s = tokio::net::TcpStream::connect(h.gw.listen).await.unwrap();
    let head = format!(
        "POST {ALLOWED} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    s.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    assert_eq!(h.reached(), vec![ALLOWED.to_string()]);

    // Over the cap by Content-Length: refused without asking for the body.
    let mut s = tokio::net::TcpStream::connect(h.gw.listen).await.unwrap();
    let head = format!(
        "POST {ALLOWED} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        64 << 20
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert_eq!(h.reached().len(), 1);
}

#[tokio::test]
async fn connection_may_not_name_credential_or_framing_headers() {
    let h = Harness::start(MATRIX).await;
    for listed in [
        "close, JOB-TOKEN",
        "authorization",
        "Private-Token",
        "keep-alive, job_token",
        "content-length",
        "Transfer-Encoding",
        "host",
        "content-type",
    ] {
        let req = format!(
            "GET /api/v4/projects/12/merge_requests HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {BOT}\r\nAuthorization: Bearer {BOT}\r\nPrivate-Token: {BOT}\r\nContent-Type: text/plain\r\nConnection: {listed}\r\nContent-Length: 0\r\n\r\n"
        );
        let resp = raw(h.gw.listen, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{listed}: {resp}");
        assert!(resp.contains("Connection header names"), "{listed}: {resp}");
    }
    assert!(h.reached().is_empty(), "nothing forwarded");
    // Ordinary Connection headers still pass.
    for listed in ["close", "keep-alive, close", "TE, close"] {
        let req = format!(
            "GET /api/v4/projects/12/merge_requests HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {BOT}\r\nConnection: {listed}\r\n\r\n"
        );
        let resp = raw(h.gw.listen, req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{listed}: {resp}");
    }
}

/// A package upload: a few MiB of file between text fields, as twine sends it.
fn upload(before: &[(&str, &str)], after: &[(&str, &str)]) -> Vec<u8> {
    let file: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
    let mut body = multipart(before, Some(("content", &file)));
    // Move the closing delimiter behind the `after` fields.
    body.truncate(body.len() - (BOUNDARY.len() + 6));
    for (name, value) in after {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

const UPLOAD: &str = "/api/v4/projects/12/packages/pypi";

/// An npm-publish-like JSON document of a few MiB; `tail` is spliced in before the final `}`.
fn big_json(tail: &str) -> Vec<u8> {
    let data = "QUJD".repeat(800 * 1024);
    format!(
        r#"{{"name":"pkg","versions":{{"1.0.0":{{"name":"pkg","dist":{{"tarball":"x","a":[1,2,{{"b":"}}]\"{{"}}]}}}}}},"_attachments":{{"pkg-1.0.0.tgz":{{"data":"{data}"}}}}{tail}}}"#
    )
    .into_bytes()
}

#[tokio::test]
async fn large_multipart_streams_checked_on_the_way() {
    let h = Harness::start_with(MATRIX, |s| s.limits.max_inspected_body = 4096).await;
    let ct = multipart_type();
    // Header token, and the same token late in the body: streamed through, byte-identical.
    for (name, body) in [
        (
            "no body credential",
            upload(&[(":action", "file_upload")], &[("sha256_digest", "x")]),
        ),
        (
            "same token late",
            upload(&[("name", "pkg")], &[("token", BOT)]),
        ),
        (
            "a personal token",
            upload(&[("private_token", "glpat-x")], &[]),
        ),
    ] {
        h.forge.clear();
        let r = post_with(&h, UPLOAD, Some(&ct), &[("JOB-TOKEN", BOT)], &body).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let seen = h.forge.requests();
        assert_eq!(seen.len(), 1, "{name}");
        assert!(seen[0].body_complete, "{name}");
        assert_eq!(seen[0].body_sha256, sha(&body), "{name}: byte-identical");
    }
    // Large JSON documents (npm publish): streamed and scanned the same way.
    for (name, ct, body) in [
        (
            "JSON, no body credential",
            Some("application/json"),
            big_json(""),
        ),
        (
            "JSON, the same token late",
            Some("application/json; charset=utf-8"),
            big_json(&format!(r#","job_token":"{BOT}","token":null"#)),
        ),
        (
            "untyped PUT JSON object",
            None,
            big_json(r#","private_token":"glpat-x""#),
        ),
    ] {
        h.forge.clear();
        let mut headers = vec![("JOB-TOKEN", BOT)];
        if let Some(ct) = ct {
            headers.push(("Content-Type", ct));
        }
        let r = h
            .send("PUT", &h.url(UPLOAD), &headers, Bytes::from(body.clone()))
            .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let seen = h.forge.requests();
        assert_eq!(seen.len(), 1, "{name}");
        assert!(seen[0].body_complete, "{name}");
        assert_eq!(seen[0].body_sha256, sha(&body), "{name}: byte-identical");
    }
    // Out of scope: refused before any of the body moves.
    h.forge.clear();
    let body = upload(&[("name", "pkg")], &[]);
    let r = post_with(
        &h,
        "/api/v4/projects/30/packages/pypi",
        Some(&ct),
        &[("JOB-TOKEN", BOT)],
        &body,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(h.reached().is_empty());
}

#[tokio::test]
async fn late_body_credential_cuts_the_upstream_body_off() {
    let h = Harness::start_with(MATRIX, |s| s.limits.max_inspected_body = 4096).await;
    let ct = multipart_type();
    let json = "application/json".to_string();
    let cases: Vec<(&str, Headers, Vec<u8>, u16, &str)> = vec![
        (
            "another job token after the file",
            vec![("JOB-TOKEN", BOT)],
            upload(&[("name", "pkg")], &[("job_token", APP)]),
            400,
            "more than one",
        ),
        (
            "another job token before the file",
            vec![("JOB-TOKEN", BOT)],
            upload(&[("token", APP)], &[]),
            400,
            "more than one",
        ),
        (
            "a job token the decision never saw",
            vec![],
            upload(&[("name", "pkg")], &[("job_token", OTHER)]),
            413,
            "JOB-TOKEN header",
        ),
        (
            "a prefix-less shared credential",
            vec![("JOB-TOKEN", BOT)],
            upload(&[("name", "pkg")], &[("access_token", LEGACY_BOT)]),
            413,
            "JOB-TOKEN header",
        ),
        (
            "a body that never closes",
            vec![("JOB-TOKEN", BOT)],
            {
                let mut b = upload(&[("name", "pkg")], &[]);
                b.truncate(b.len() - 40);
                b
            },
            400,
            "malformed",
        ),
    ];
    let json_cases: Vec<(&str, Headers, Vec<u8>, u16, &str)> = vec![
        (
            "JSON: another job token after the data",
            vec![("JOB-TOKEN", BOT)],
            big_json(&format!(r#","job_token":"{APP}""#)),
            400,
            "more than one",
        ),
        (
            "JSON: a job token the decision never saw",
            vec![],
            big_json(&format!(r#","token":["{OTHER}"]"#)),
            413,
            "JOB-TOKEN header",
        ),
        (
            "JSON: a comment",
            vec![("JOB-TOKEN", BOT)],
            big_json(r#"/* "job_token": "x" */"#),
            400,
            "malformed",
        ),
        (
            "JSON: never closed",
            vec![("JOB-TOKEN", BOT)],
            {
                let mut b = big_json("");
                b.pop();
                b
            },
            400,
            "malformed",
        ),
    ];
    let all = cases
        .into_iter()
        .map(|c| (ct.clone(), c))
        .chain(json_cases.into_iter().map(|c| (json.clone(), c)));
    for (ct, (name, headers, body, status, says)) in all {
        h.forge.clear();
        let r = post_with(&h, UPLOAD, Some(&ct), &headers, &body).await;
        assert_eq!(r.status, status, "{name}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap_or("").to_string();
        assert!(msg.contains(says), "{name}: {msg}");
        assert!(
            !msg.contains(APP) && !msg.contains(OTHER),
            "{name}: token in message"
        );
        // The forge may have been sent the start of the body, never all of it.
        let done = eventually(Duration::from_secs(5), || async {
            h.forge
                .requests()
                .iter()
                .all(|r| r.body_len > 0 || !r.body_complete)
        })
        .await;
        assert!(done, "{name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        for seen in h.forge.requests() {
            assert!(!seen.body_complete, "{name}: the forge got a complete body");
            assert!(
                seen.body_len < body.len() as u64,
                "{name}: {} of {} bytes reached the forge",
                seen.body_len,
                body.len()
            );
        }
    }
}

#[tokio::test]
async fn chunked_multipart_growing_past_the_cap_streams() {
    let h = Harness::start_with(MATRIX, |s| s.limits.max_inspected_body = 4096).await;
    let head = format!(
        "POST {UPLOAD} HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {BOT}\r\nContent-Type: {}\r\n",
        multipart_type()
    );
    let ok = upload(&[("name", "pkg")], &[("token", BOT)]);
    let chunks: Vec<&[u8]> = ok.chunks(64 * 1024).collect();
    let resp = chunked(&h, &head, &chunks, "").await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "{}",
        &resp[..resp.len().min(300)]
    );
    let seen = h.forge.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body_complete);
    assert_eq!(seen[0].body_sha256, sha(&ok));

    h.forge.clear();
    let bad = upload(&[("name", "pkg")], &[("token", APP)]);
    let chunks: Vec<&[u8]> = bad.chunks(64 * 1024).collect();
    let resp = chunked(&h, &head, &chunks, "").await;
    assert!(
        resp.starts_with("HTTP/1.1 400"),
        "{}",
        &resp[..resp.len().min(300)]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seen in h.forge.requests() {
        assert!(!seen.body_complete);
        assert!(seen.body_len < bad.len() as u64);
    }
}

/// A UTF-8 byte order mark cut across the body's first chunks is skipped as one sent whole:
/// how the client cuts its body cannot make a JSON document look like something else and let
/// a credential in it pass unread (found by the `body` fuzz target's chunking invariant).
#[tokio::test]
async fn a_byte_order_mark_cut_across_chunks_hides_nothing() {
    let h = Harness::start_with(MATRIX, |s| s.limits.max_inspected_body = 4096).await;
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    // A held JSON document (over the cap) with another job token at its end.
    let head = format!(
        "POST {UPLOAD} HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {BOT}\r\nContent-Type: application/json\r\n"
    );
    let doc = [BOM, &big_json(&format!(r#","job_token":"{APP}""#))].concat();
    let mut chunks: Vec<&[u8]> = vec![&doc[..1], &doc[1..2]];
    chunks.extend(doc[2..].chunks(64 * 1024));
    let resp = chunked(&h, &head, &chunks, "").await;
    assert!(
        resp.starts_with("HTTP/1.1 400"),
        "{}",
        &resp[..resp.len().min(300)]
    );
    assert!(resp.contains("more than one"), "{resp}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seen in h.forge.requests() {
        assert!(!seen.body_complete, "the forge got a complete body");
        assert!(seen.body_len < doc.len() as u64);
    }

    // A body without a type (read as JSON by the forge when it is an object), peeked at.
    h.forge.clear();
    let head = format!("PUT {ALLOWED} HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {BOT}\r\n");
    let doc = [BOM, format!(r#"{{"job_token":"{APP}"}}"#).as_bytes()].concat();
    let resp = chunked(&h, &head, &[&doc[..2], &doc[2..]], "").await;
    assert!(
        resp.starts_with("HTTP/1.1 400"),
        "{}",
        &resp[..resp.len().min(300)]
    );
    assert!(h.reached().is_empty(), "the forge was sent the request");
}

#[tokio::test]
async fn empty_bodies_of_inspectable_types_pass() {
    let h = Harness::start(MATRIX).await;
    // Clients that send a Content-Type on every request, body or not (Grape skips empty bodies).
    for (method, ct) in [
        ("GET", "application/json"),
        ("DELETE", "application/json"),
        ("POST", "multipart/form-data; boundary=x"),
        ("PUT", "application/x-www-form-urlencoded"),
        ("POST", "application/json"),
    ] {
        h.forge.clear();
        let r = h
            .send(
                method,
                &h.url("/api/v4/projects/12/merge_requests"),
                &[("JOB-TOKEN", BOT), ("Content-Type", ct)],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 200, "{method} {ct}: {}", r.text());
        assert_eq!(h.reached().len(), 1, "{method} {ct}");
    }
    // Chunked with no data at all: the same.
    let head = format!(
        "POST {ALLOWED} HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {BOT}\r\nContent-Type: application/json\r\n"
    );
    let resp = chunked(&h, &head, &[], "").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn bodies_under_inspection_share_a_memory_budget() {
    let h = Harness::start_with(MATRIX, |s| {
        s.limits.max_inspected_body = 4096;
        s.limits.max_inspected_total = 6000;
    })
    .await;
    let form = Some("application/x-www-form-urlencoded");
    // A slow client holds 3000 bytes under inspection…
    let mut slow = tokio::net::TcpStream::connect(h.gw.listen).await.unwrap();
    let head = format!(
        "POST {ALLOWED} HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {BOT}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let first = format!("token={BOT}&pad={}", "a".repeat(3000 - 11 - BOT.len()));
    assert_eq!(first.len(), 3000);
    slow.write_all(format!("{:x}\r\n{first}\r\n", first.len()).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // …so a 4000-byte body does not fit in what is left: 503, try again later.
    let body = format!("ref=main&pad={}", "b".repeat(4000 - 13));
    let r = post_with(&h, ALLOWED, form, &[("JOB-TOKEN", BOT)], body.as_bytes()).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.headers.contains_key("retry-after"));
    // The slow request completes, and its share comes back.
    slow.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    let r = post_with(&h, ALLOWED, form, &[("JOB-TOKEN", BOT)], body.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.reached().len(), 2);
}

#[tokio::test]
async fn http2_bodies_are_inspected_too() {
    let h = Harness::start(MATRIX).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let json = format!(r#"{{"job_token":"{BOT}"}}"#);
    for (path, expected) in [(ALLOWED, 200), (DENIED, 403)] {
        let req = http::Request::post(h.url(path))
            .header("Content-Type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(json.clone())))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status().as_u16(), expected, "{path}");
    }
    let seen = h.forge.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_sha256, sha(json.as_bytes()));
}
