//! The real binary's lifecycle: SIGTERM drains (in-flight requests finish, new connections are
//! refused, readiness turns false, exit 0), and nothing it prints contains a token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::scopes::MATRIX;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

async fn http_get(addr: &str, path: &str, headers: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn status_of(resp: &Option<String>) -> u16 {
    resp.as_deref()
        .and_then(|r| r.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_logs_hold_no_tokens() {
    let forge = scopegate::standin::Standin::start(jobs()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scopes = dir.path().join("scopes.toml");
    std::fs::write(&scopes, MATRIX).unwrap();
    let log_path = dir.path().join("gateway.log");
    let listen = free_addr();
    let admin = free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args([
            "--log-level",
            "debug",
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
        .stdout(Stdio::from(
            std::fs::File::create(dir.path().join("stdout.log")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            status_of(&http_get(&admin, "/-/ready", "").await) == 200
        })
        .await,
        "ready"
    );

    // Traffic with every kind of token, through every outcome, so the logs have a chance to leak.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{APP}"));
    let calls: Vec<(String, String)> = vec![
        (
            "/api/v4/projects/12".into(),
            format!("JOB-TOKEN: {BOT}\r\n"),
        ),
        (
            "/api/v4/projects/30".into(),
            format!("JOB-TOKEN: {BOT}\r\n"),
        ),
        (
            format!("/api/v4/projects/10?job_token={LEGACY_BOT}"),
            String::new(),
        ),
        (
            format!("/api/v4/projects/12?private_token={OTHER}"),
            String::new(),
        ),
        (
            "/api/v4/projects/12".into(),
            format!("Authorization: Basic {basic}\r\n"),
        ),
        (
            "/api/v4/projects/12".into(),
            format!("Authorization: Bearer {PLATFORM_CI}\r\n"),
        ),
        (
            "/api/v4/projects/12".into(),
            "JOB-TOKEN: glcbt-never-issued-token-xyz\r\n".into(),
        ),
        (
            format!("/api/v4/projects/12?job_token={APP}"),
            format!("JOB-TOKEN: {BOT}\r\n"),
        ),
        (
            "/api/v4/projects/acme%252Fapp".into(),
            format!("JOB-TOKEN: {BOT}\r\n"),
        ),
        (
            "/api/v4/projects/12".into(),
            "PRIVATE-TOKEN: glpat-secret-personal-token\r\n".into(),
        ),
    ];
    for (path, headers) in &calls {
        assert_ne!(
            status_of(&http_get(&listen, path, headers).await),
            0,
            "{path}"
        );
    }

    // A slow request in flight when SIGTERM arrives.
    let slow = {
        let listen = listen.clone();
        tokio::spawn(async move {
            http_get(
                &listen,
                "/api/v4/projects/12?standin_delay_ms=1500",
                &format!("JOB-TOKEN: {BOT}\r\n"),
            )
            .await
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            forge
                .requests()
                .iter()
                .any(|r| r.target.contains("standin_delay_ms"))
        })
        .await,
        "the slow request reached the forge"
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    // Readiness turns false while draining, and new connections are refused.
    assert!(
        eventually(Duration::from_secs(5), || async {
            status_of(&http_get(&admin, "/-/ready", "").await) == 503
        })
        .await,
        "not ready while draining"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(&listen).await.is_err()
        })
        .await,
        "new connections refused"
    );
    assert_eq!(
        status_of(&slow.await.unwrap()),
        200,
        "the in-flight request completed"
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit 0 after the drain: {status:?}");

    let printed = std::fs::read_to_string(&log_path).unwrap()
        + &std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    assert!(
        printed.contains("scopegate::access"),
        "access log lines were written"
    );
    for token in [
        BOT,
        APP,
        OTHER,
        PLATFORM_CI,
        LEGACY_BOT,
        "glcbt-never-issued-token-xyz",
        "glpat-secret-personal-token",
        &basic,
    ] {
        assert!(
            !printed.contains(token),
            "a token appears in the gateway's output"
        );
    }
}
