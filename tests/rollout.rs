//! Safe rollout: a project switches its inbound limit on in report-only mode, the
//! authorization log counts what the requests did (and survives a restart), and
//! `scopegate suggest --apply` writes an allowlist under which the observed legitimate traffic
//! still passes once the limit is enforced, while a caller never seen is denied.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{Harness, APP, BOT, OTHER, PLATFORM_CI};
use serde_json::Value;

/// acme/app (12) is rolling out its inbound limit: on, report-only. The bot (10) may reach it
/// (its outbound list), acme/platform/ci (20) and globex/tool (30) have no outbound limit.
const ROLLOUT: &str = r#"# rollout of acme/app's inbound limit
[defaults]
outbound = true
inbound = true

[[project]]
id = 10
path = "acme/deploy-bot"
[project.outbound]
enabled = true
allow = ["acme/app"]
[project.inbound]
enabled = false

[[project]]
id = 12
path = "acme/app"
report_only = true   # watching before enforcing
[project.outbound]
enabled = false
[project.inbound]
enabled = true       # on, but only reported for now
allow = []

[[project]]
id = 20
path = "acme/platform/ci"
[project.outbound]
enabled = false

[[project]]
id = 30
path = "globex/tool"
[project.outbound]
enabled = false
"#;

fn scopegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scopegate"))
}

async fn on_app(h: &Harness, token: &str) -> u16 {
    h.get(
        "/api/v4/projects/acme%2Fapp/repository/branches",
        &[("JOB-TOKEN", token)],
    )
    .await
    .status
}

async fn log(h: &Harness) -> Value {
    let r = h
        .send(
            "GET",
            &h.admin_url("/-/authorizations?target=12"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn counts(log: &Value, origin: u64) -> (u64, u64, u64) {
    let pair = log
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["origin_project"]["id"] == origin)
        .unwrap_or_else(|| panic!("no pair for origin {origin}: {log}"));
    (
        pair["allowed"].as_u64().unwrap(),
        pair["denied"].as_u64().unwrap(),
        pair["would_deny"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn report_only_log_restart_suggest_apply_enforce() {
    let h = Harness::start_with(ROLLOUT, |s| {
        s.authlog.flush_interval = Duration::from_millis(20);
    })
    .await;
    // Observed traffic: the bot three times, the platform CI twice; both only reported.
    for _ in 0..3 {
        assert_eq!(on_app(&h, BOT).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(on_app(&h, PLATFORM_CI).await, 200);
    }
    // The app's own jobs are no cross-project access: not logged.
    assert_eq!(on_app(&h, APP).await, 200);
    h.gw.authlog.flush().await;
    let before = log(&h).await;
    assert_eq!(before.as_array().unwrap().len(), 2, "{before}");
    assert_eq!(counts(&before, 10), (0, 0, 3));
    assert_eq!(counts(&before, 20), (0, 0, 2));

    // It survives a restart, and goes on counting.
    let h = h.restart().await;
    let after = log(&h).await;
    assert_eq!(counts(&after, 10), (0, 0, 3));
    assert_eq!(
        after[0]["first_seen_at"], before[0]["first_seen_at"],
        "first seen kept"
    );
    assert_eq!(on_app(&h, BOT).await, 200);
    h.gw.authlog.flush().await;
    assert_eq!(counts(&log(&h).await, 10), (0, 0, 4));

    // The proposal, compacted: with room for one entry, the two origins become `acme`.
    let state = h.settings.state_dir.clone();
    let config = h.dir.path().join("tight.toml");
    std::fs::write(
        &config,
        format!(
            "scopes = {:?}\nstate_dir = {:?}\nmax_allowlist = 1\n",
            h.scopes.display().to_string(),
            state.display().to_string()
        ),
    )
    .unwrap();
    let out = scopegate()
        .args(["suggest", "--project", "acme/app", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("allow_groups = [\"acme\"]"), "{text}");
    assert!(text.contains("compacted"), "{text}");
    assert!(text.contains("dry run"), "{text}");

    // Dry run first: both callers proposed by id, nothing written.
    let untouched = std::fs::read_to_string(&h.scopes).unwrap();
    let out = scopegate()
        .args(["suggest", "--project", "12", "--scopes"])
        .arg(&h.scopes)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("allow = [10, 20]"), "{text}");
    assert!(
        text.contains("acme/deploy-bot (id 10): allowed 0, would_deny 4"),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&h.scopes).unwrap(), untouched);

    // Apply and enforce: the limit on, report-only off, comments kept.
    let out = scopegate()
        .args([
            "suggest",
            "--project",
            "acme/app",
            "--apply",
            "--enforce",
            "--scopes",
        ])
        .arg(&h.scopes)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&h.scopes).unwrap();
    assert!(
        written.contains("report_only = false   # watching before enforcing"),
        "{written}"
    );
    assert!(written.contains("enabled = true       # on, but only reported for now"));
    assert!(written.contains("allow = [10, 20]"), "{written}");
    assert!(written.starts_with("# rollout of acme/app's inbound limit"));

    // The running gateway takes it on reload; the observed callers still pass, enforced.
    let r = h
        .send("POST", &h.admin_url("/-/reload"), &[], Bytes::new())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(on_app(&h, BOT).await, 200);
    assert_eq!(on_app(&h, PLATFORM_CI).await, 200);
    assert_eq!(on_app(&h, APP).await, 200);
    // A caller never seen is denied now (and was not before).
    assert_eq!(on_app(&h, OTHER).await, 403);
    h.gw.authlog.flush().await;
    let now = log(&h).await;
    assert_eq!(counts(&now, 10), (1, 0, 4));
    assert_eq!(counts(&now, 20), (1, 0, 2));
    assert_eq!(counts(&now, 30), (0, 1, 0));
}

#[test]
fn suggest_without_a_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let scopes = dir.path().join("scopes.toml");
    std::fs::write(&scopes, ROLLOUT).unwrap();
    let out = scopegate()
        .args(["suggest", "--project", "12", "--scopes"])
        .arg(&scopes)
        .arg("--state-dir")
        .arg(dir.path().join("nothing-here"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no authorization log"));
}
