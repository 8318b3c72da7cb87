//! What reaches the forge: untouched traffic without job tokens, the decided request with the
//! numeric id, hop-by-hop headers gone, X-Forwarded-* replaced, X-Request-Id on every answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::scopes::MATRIX;
use common::*;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn traffic_without_a_job_token_arrives_unchanged() {
    let h = Harness::start(MATRIX).await;
    let body = Bytes::from_static(b"{\"title\":\"fix\",\"description\":\"a b\"}");
    let target = "/api/v4/projects/globex%2Ftool/issues?labels=a%2Cb&state=opened&x=%2F..%2F";
    let r = h
        .send(
            "POST",
            &h.url(target),
            &[
                ("Content-Type", "application/json"),
                ("X-Custom", "kept"),
                ("Connection", "X-Drop-Me"),
                ("X-Drop-Me", "1"),
                ("Keep-Alive", "timeout=5"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = h.forge.requests();
    assert_eq!(seen.len(), 1);
    let got = &seen[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.target, target, "path and query byte for byte");
    assert_eq!(got.body_len, body.len() as u64);
    assert_eq!(got.body_sha256, hex::encode(Sha256::digest(&body)));
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-drop-me"), None, "named in Connection");
    assert_eq!(got.header("keep-alive"), None, "hop-by-hop");
    assert_eq!(
        got.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "replaced, not appended"
    );
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    let host = h.gw.listen.to_string();
    assert_eq!(got.header("x-forwarded-host"), Some(host.as_str()));
    assert_eq!(
        got.header("host"),
        Some(host.as_str()),
        "Host passed through"
    );
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn a_path_the_snapshot_knows_is_forwarded_as_the_numeric_id() {
    let h = Harness::start(MATRIX).await;
    let r = h
        .get(
            "/api/v4/projects/ACME%2Fapp/merge_requests?state=opened",
            &[("JOB-TOKEN", BOT)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        h.reached(),
        vec!["/api/v4/projects/12/merge_requests?state=opened".to_string()]
    );
    // The job token reaches the forge: it authenticates the request there.
    assert_eq!(h.forge.requests()[0].header("job-token"), Some(BOT));
}

#[tokio::test]
async fn the_response_comes_back_unchanged() {
    let h = Harness::start(MATRIX).await;
    let r = h
        .get(
            "/api/v4/projects/12/jobs/artifacts/main/download?download_bytes=100000",
            &[("JOB-TOKEN", BOT)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);
    assert_eq!(
        &r.body[..],
        &scopegate::standin::download_pattern_chunk(0, 100_000)[..]
    );
    assert_eq!(r.headers["content-type"], "application/octet-stream");
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let h = Harness::start(MATRIX).await;
    let mut ids = std::collections::HashSet::new();
    for (path, token) in [
        ("/api/v4/projects/12", BOT),
        ("/api/v4/projects/30", BOT),
        ("/api/v4/projects/30", "glcbt-unknown-token"),
        ("/api/v4/version", ""),
    ] {
        let headers: Vec<(&str, &str)> = if token.is_empty() {
            vec![]
        } else {
            vec![("JOB-TOKEN", token)]
        };
        let r = h.get(path, &headers).await;
        let id = r
            .headers
            .get("x-request-id")
            .expect("x-request-id")
            .to_str()
            .unwrap()
            .to_string();
        assert!(ids.insert(id), "request ids are unique");
    }
}

#[tokio::test]
async fn job_token_on_routes_the_gateway_cannot_attribute() {
    let h = Harness::start(MATRIX).await;
    // GET /api/v4/job acts on no project: forwarded.
    assert_eq!(
        h.get("/api/v4/job", &[("JOB-TOKEN", BOT)]).await.status,
        200
    );
    // The token's own job routes count as its project.
    h.forge.clear();
    assert_eq!(
        h.get("/api/v4/jobs/1001/artifacts", &[("JOB-TOKEN", BOT)])
            .await
            .status,
        200
    );
    assert_eq!(h.reached().len(), 1);
    // Another job's routes, and anything unattributable: 403, not forwarded.
    h.forge.clear();
    for path in [
        "/api/v4/jobs/1004/artifacts",
        "/api/v4/projects",
        "/api/v4/groups/5/projects",
        "/api/graphql",
        "/-/profile",
    ] {
        let r = h.get(path, &[("JOB-TOKEN", BOT)]).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
    assert!(h.reached().is_empty());
}

#[tokio::test]
async fn encodings_the_forge_could_read_differently_are_refused() {
    let h = Harness::start(MATRIX).await;
    for path in [
        "/api/v4/projects/acme%252Fapp/merge_requests",
        "/api/v4/projects/12/%2e%2e/%2e%2e/projects/30",
        "/api/v4/projects/12/../30",
        "/api/v4//projects/30",
        "/api/v4/projects/acme%2F..%2Fglobex%2Ftool",
    ] {
        let r = raw(
            h.gw.listen,
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nJOB-TOKEN: {BOT}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let status = r.split(' ').nth(1).unwrap_or("");
        assert!(status == "400" || status == "403", "{path}: {r}");
    }
    assert!(h.reached().is_empty(), "{:?}", h.reached());
}

#[tokio::test]
async fn http2_clients_are_served() {
    let h = Harness::start(MATRIX).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<Bytes>>();
    for (path, expected) in [("/api/v4/projects/12", 200), ("/api/v4/projects/30", 403)] {
        let req = http::Request::get(h.url(path))
            .header("JOB-TOKEN", BOT)
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status().as_u16(), expected, "{path}");
    }
    assert_eq!(h.reached().len(), 1);
}

#[tokio::test]
async fn connect_is_refused_and_never_reaches_the_forge() {
    let h = Harness::start(MATRIX).await;
    for request in [
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n".to_string(),
        format!("CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nJOB-TOKEN: {BOT}\r\nConnection: close\r\n\r\n"),
    ] {
        let answer = raw(h.gw.listen, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        assert!(
            answer.contains(r#"{"message":"405 Method Not Allowed - the CONNECT method is not allowed"}"#),
            "{answer}"
        );
    }
    assert!(h.forge.requests().is_empty(), "{:?}", h.forge.requests());
}
