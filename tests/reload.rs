//! Reload: the admin endpoint and SIGHUP swap the snapshot; a bad file keeps the old one.
//! The watcher and the poll are off here, so that every generation is the explicit reload's
//! (live reload is tested in live_reload.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::scopes::MATRIX;
use common::*;

const TARGET: &str = "/api/v4/projects/12/merge_requests";

/// acme/app's inbound allowlist gains globex/tool.
fn allow_globex(scopes: &str) -> String {
    let changed = scopes.replace(
        "allow = [\"acme/deploy-bot\"]",
        "allow = [\"acme/deploy-bot\", \"globex/tool\"]",
    );
    assert_ne!(changed, scopes);
    changed
}

#[tokio::test]
async fn admin_reload_swaps_the_snapshot_and_a_bad_file_keeps_it() {
    let h = Harness::start_with(MATRIX, |s| {
        s.reload_watch = false;
        s.reload_poll = Duration::ZERO;
    })
    .await;
    assert_eq!(h.get(TARGET, &[("JOB-TOKEN", OTHER)]).await.status, 403);
    let before = h
        .send("GET", &h.admin_url("/-/policy"), &[], Bytes::new())
        .await
        .json();
    assert_eq!(before["generation"], 1);
    assert!(before["last_error"].is_null());

    std::fs::write(&h.scopes, allow_globex(MATRIX)).unwrap();
    let r = h
        .send("POST", &h.admin_url("/-/reload"), &[], Bytes::new())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["generation"], 2);
    assert_ne!(r.json()["digest"], before["digest"]);
    assert_eq!(h.get(TARGET, &[("JOB-TOKEN", OTHER)]).await.status, 200);

    std::fs::write(&h.scopes, "[[project]]\nid = 1\nbogus = true\n").unwrap();
    let r = h
        .send("POST", &h.admin_url("/-/reload"), &[], Bytes::new())
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("bogus"));
    let policy = h
        .send("GET", &h.admin_url("/-/policy"), &[], Bytes::new())
        .await
        .json();
    assert_eq!(policy["generation"], 2, "the running snapshot stays");
    assert!(policy["last_error"].as_str().unwrap().contains("bogus"));
    assert_eq!(
        h.get(TARGET, &[("JOB-TOKEN", OTHER)]).await.status,
        200,
        "old decision kept"
    );
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "scopegate_reloads_total", &["failure"]),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let h = Harness::start(MATRIX).await;
    assert_eq!(
        h.send("GET", &h.admin_url("/-/health"), &[], Bytes::new())
            .await
            .status,
        200
    );
    assert_eq!(
        h.send("GET", &h.admin_url("/-/ready"), &[], Bytes::new())
            .await
            .status,
        200
    );
    h.gw.shutdown();
    let ready_url = h.admin_url("/-/ready");
    let ready = h.send("GET", &ready_url, &[], Bytes::new());
    // The admin listener may already be closed; if it answers, it must say not ready.
    if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), ready).await {
        assert_eq!(r.status, 503);
    }
}

/// The real binary: SIGHUP reloads the scope file.
#[tokio::test]
async fn sighup_reloads_the_scope_file() {
    let forge = scopegate::standin::Standin::start(jobs()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scopes = dir.path().join("scopes.toml");
    std::fs::write(&scopes, MATRIX).unwrap();
    let config = dir.path().join("scopegate.toml");
    std::fs::write(&config, "reload_watch = false\nreload_poll = \"0s\"\n").unwrap();
    let listen = free_port();
    let admin = free_port();
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
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = Client::new();
    let ready_url = format!("http://{admin}/-/ready");
    assert!(
        eventually(Duration::from_secs(20), || client.ok(&ready_url)).await,
        "gateway ready"
    );
    let url = format!("http://{listen}{TARGET}");
    assert_eq!(client.status(&url, OTHER).await, 403);

    std::fs::write(&scopes, allow_globex(MATRIX)).unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let policy_url = format!("http://{admin}/-/policy");
    assert!(
        eventually(Duration::from_secs(10), || async {
            client.json(&policy_url).await["generation"] == 2
        })
        .await,
        "generation bumped by SIGHUP"
    );
    assert_eq!(client.status(&url, OTHER).await, 200);

    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

struct Client(
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<Bytes>,
    >,
);

impl Client {
    fn new() -> Self {
        Client(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http(),
        )
    }
    async fn get(&self, url: &str, token: Option<&str>) -> Option<(u16, Bytes)> {
        use http_body_util::BodyExt;
        let mut req = http::Request::get(url);
        if let Some(t) = token {
            req = req.header("JOB-TOKEN", t);
        }
        let resp = self
            .0
            .request(req.body(http_body_util::Empty::new()).ok()?)
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.into_body().collect().await.ok()?.to_bytes()))
    }
    async fn ok(&self, url: &str) -> bool {
        matches!(self.get(url, None).await, Some((200, _)))
    }
    async fn status(&self, url: &str, token: &str) -> u16 {
        self.get(url, Some(token)).await.map_or(0, |(s, _)| s)
    }
    async fn json(&self, url: &str) -> serde_json::Value {
        self.get(url, None)
            .await
            .and_then(|(_, b)| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}
