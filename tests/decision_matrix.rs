//! The allow/deny matrix of design.md's policy semantics, through the real proxy: what the
//! client sees and what reached the forge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::scopes::MATRIX;
use common::*;
use scopegate::settings::ModeSetting;

fn project(id: &str) -> String {
    format!("/api/v4/projects/{id}/repository/branches")
}

/// (token, target id or encoded path, expected status, why)
const CASES: &[(&str, &str, u16, &str)] = &[
    (BOT, "10", 200, "same project by id"),
    (BOT, "acme%2Fdeploy-bot", 200, "same project by path"),
    (
        BOT,
        "ACME%2FDeploy-Bot",
        200,
        "same project, other letter case",
    ),
    (
        BOT,
        "12",
        200,
        "outbound allow by path matches a target named by id (file lists both)",
    ),
    (BOT, "acme%2Fapp", 200, "outbound allow by path"),
    (BOT, "14", 200, "outbound allow by id; target inbound off"),
    (
        BOT,
        "21",
        200,
        "outbound group allowlist covers a subgroup's project",
    ),
    (
        BOT,
        "acme%2Fplatform%2Fnew-project",
        403,
        "group covers it outbound, but an unlisted target is inbound-limited by default",
    ),
    (BOT, "30", 403, "outbound limit: not on the bot's allowlist"),
    (BOT, "999", 403, "unlisted target: outbound limit"),
    (
        OTHER,
        "12",
        403,
        "inbound limit of acme/app: globex/tool not allowed",
    ),
    (OTHER, "14", 200, "both limits off"),
    (OTHER, "999", 403, "unlisted target: default inbound limit"),
    (OTHER, "16", 200, "report-only inbound limit: forwarded"),
    (
        PLATFORM_CI,
        "12",
        200,
        "inbound group allowlist covers the origin's ancestor group",
    ),
    (
        PLATFORM_CI,
        "30",
        403,
        "globex/tool has no entry for inbound: defaults limit it",
    ),
    (
        APP,
        "10",
        200,
        "acme/app's outbound limit and the bot's inbound limit are both off",
    ),
];

#[tokio::test]
async fn allow_deny_matrix() {
    let h = Harness::start(MATRIX).await;
    for &(token, target, expected, why) in CASES {
        h.forge.clear();
        let reply = h.get(&project(target), &[("JOB-TOKEN", token)]).await;
        assert_eq!(
            reply.status,
            expected,
            "{why}: {} → {target}: {}",
            token_name(token),
            reply.text()
        );
        let reached = h.reached();
        if expected == 403 {
            assert!(
                reached.is_empty(),
                "{why}: a denied request reached the forge: {reached:?}"
            );
            let msg = reply.json()["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                msg.contains("limit"),
                "{why}: message names the limit: {msg}"
            );
        } else {
            assert_eq!(reached.len(), 1, "{why}: forwarded exactly once");
        }
    }
}

#[tokio::test]
async fn denial_message_names_origin_target_and_limit() {
    let h = Harness::start(MATRIX).await;
    let r = h.get(&project("30"), &[("JOB-TOKEN", BOT)]).await;
    assert_eq!(r.status, 403);
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("acme/deploy-bot") && msg.contains("globex/tool") && msg.contains("outbound"),
        "{msg}"
    );
    let r = h.get(&project("12"), &[("JOB-TOKEN", OTHER)]).await;
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("globex/tool") && msg.contains("acme/app") && msg.contains("inbound"),
        "{msg}"
    );
    assert!(r.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn report_only_forwards_and_counts_would_deny() {
    let h = Harness::start(MATRIX).await;
    let r = h.get(&project("16"), &[("JOB-TOKEN", OTHER)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.reached().len(), 1);
    let m = h.metrics().await;
    assert_eq!(
        metric(
            &m,
            "scopegate_requests_total",
            &["decision=\"would_deny\"", "inbound_limit"]
        ),
        1.0,
        "{m}"
    );
    // The report-only setting of acme/rollout softens only its own inbound limit: the bot's
    // outbound limit still denies it.
    let r = h.get(&project("16"), &[("JOB-TOKEN", BOT)]).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn defaults_report_only_applies_to_unlisted_projects_only() {
    let scopes = MATRIX.replacen(
        "inbound = true\n",
        "inbound = true\nreport_only = true\n",
        1,
    );
    let h = Harness::start(&scopes).await;
    // Unlisted target 999: its default inbound limit is report-only → forwarded.
    assert_eq!(
        h.get(&project("999"), &[("JOB-TOKEN", OTHER)]).await.status,
        200
    );
    // acme/app is listed (report_only omitted → takes the default!) per design rule 6.
    // Listed project with explicit report_only = false stays enforced:
    let scopes = scopes.replace(
        "id = 12\npath = \"acme/app\"\n",
        "id = 12\npath = \"acme/app\"\nreport_only = false\n",
    );
    let h = Harness::start(&scopes).await;
    assert_eq!(
        h.get(&project("12"), &[("JOB-TOKEN", OTHER)]).await.status,
        403
    );
    assert_eq!(
        h.get(&project("999"), &[("JOB-TOKEN", OTHER)]).await.status,
        200
    );
}

#[tokio::test]
async fn global_report_mode_softens_every_denial() {
    let h = Harness::start_with(MATRIX, |s| s.mode = ModeSetting::Report).await;
    for target in ["30", "999", "12"] {
        let r = h.get(&project(target), &[("JOB-TOKEN", BOT)]).await;
        assert_eq!(r.status, 200, "report mode forwards {target}");
    }
    assert_eq!(h.reached().len(), 3);
    let m = h.metrics().await;
    assert!(
        metric(&m, "scopegate_requests_total", &["decision=\"would_deny\""]) >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn empty_scope_file_limits_everything() {
    let h = Harness::start("").await;
    assert_eq!(
        h.get(&project("10"), &[("JOB-TOKEN", BOT)]).await.status,
        200,
        "own project"
    );
    assert_eq!(
        h.get(&project("12"), &[("JOB-TOKEN", BOT)]).await.status,
        403
    );
    assert!(h.reached().iter().all(|t| t.contains("/projects/10/")));
}

fn token_name(t: &str) -> &'static str {
    match t {
        BOT => "bot",
        APP => "app",
        OTHER => "other",
        PLATFORM_CI => "platform-ci",
        _ => "token",
    }
}
