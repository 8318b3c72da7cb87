//! Every credential transport the forge reads a job token from, with an allowed and a denied
//! target; conflicting tokens; traffic without job tokens untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use bytes::Bytes;
use common::scopes::MATRIX;
use common::*;

const ALLOWED: &str = "/api/v4/projects/12/merge_requests";
const DENIED: &str = "/api/v4/projects/30/merge_requests";

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Header name and value pairs.
type Headers = Vec<(String, String)>;

/// A request shape: extra query and headers carrying `token`.
fn carriers(token: &str) -> Vec<(&'static str, String, Headers)> {
    let h = |n: &str, v: String| vec![(n.to_string(), v)];
    vec![
        (
            "JOB-TOKEN header",
            String::new(),
            h("JOB-TOKEN", token.into()),
        ),
        (
            "job-token header, lower case",
            String::new(),
            h("job-token", token.into()),
        ),
        (
            "Job-Token header, mixed case",
            String::new(),
            h("Job-Token", token.into()),
        ),
        ("job_token query", format!("job_token={token}"), vec![]),
        (
            "Basic gitlab-ci-token",
            String::new(),
            h("Authorization", basic("gitlab-ci-token", token)),
        ),
        (
            "Bearer",
            String::new(),
            h("Authorization", format!("Bearer {token}")),
        ),
        ("token query", format!("token={token}"), vec![]),
        (
            "access_token query",
            format!("access_token={token}"),
            vec![],
        ),
        (
            "bearer_token query",
            format!("bearer_token={token}"),
            vec![],
        ),
        (
            "private_token query",
            format!("private_token={token}"),
            vec![],
        ),
        (
            "PRIVATE-TOKEN header",
            String::new(),
            h("PRIVATE-TOKEN", token.into()),
        ),
    ]
}

async fn call(h: &Harness, path: &str, query: &str, headers: &[(String, String)]) -> Reply {
    let sep = if query.is_empty() { "" } else { "?" };
    let hs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    h.send(
        "GET",
        &h.url(&format!("{path}{sep}{query}")),
        &hs,
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn every_prefixed_transport_is_enforced() {
    let h = Harness::start(MATRIX).await;
    for (name, query, headers) in carriers(BOT) {
        h.forge.clear();
        let ok = call(&h, ALLOWED, &query, &headers).await;
        assert_eq!(ok.status, 200, "{name}: allowed target: {}", ok.text());
        assert_eq!(h.reached().len(), 1, "{name}: allowed request forwarded");
        h.forge.clear();
        let denied = call(&h, DENIED, &query, &headers).await;
        assert_eq!(
            denied.status,
            403,
            "{name}: denied target: {}",
            denied.text()
        );
        assert!(
            h.reached().is_empty(),
            "{name}: denied request reached the forge"
        );
    }
}

#[tokio::test]
async fn explicit_carriers_enforce_prefix_less_tokens() {
    let h = Harness::start(MATRIX).await;
    let explicit = [
        "JOB-TOKEN header",
        "job_token query",
        "Basic gitlab-ci-token",
    ];
    for (name, query, headers) in carriers(LEGACY_BOT)
        .into_iter()
        .filter(|c| explicit.contains(&c.0))
    {
        assert_eq!(
            call(&h, ALLOWED, &query, &headers).await.status,
            200,
            "{name}"
        );
        h.forge.clear();
        assert_eq!(
            call(&h, DENIED, &query, &headers).await.status,
            403,
            "{name}"
        );
        assert!(h.reached().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn prefix_less_bearer_is_asked_of_the_forge() {
    let h = Harness::start(MATRIX).await;
    // A prefix-less job token in a shared carrier: the forge says it is a job token → enforced.
    let bearer = vec![("Authorization".to_string(), format!("Bearer {LEGACY_BOT}"))];
    assert_eq!(call(&h, DENIED, "", &bearer).await.status, 403);
    assert!(h.reached().is_empty());
    // A personal access token in the same carrier: the forge says 401 → forwarded untouched.
    let pat = vec![(
        "Authorization".to_string(),
        "Bearer glpat-personal-0123456789".to_string(),
    )];
    let r = call(&h, DENIED, "", &pat).await;
    assert_eq!(r.status, 200);
    let seen = h.forge.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer glpat-personal-0123456789")
    );
}

#[tokio::test]
async fn two_different_job_tokens_are_refused() {
    let h = Harness::start(MATRIX).await;
    let cases: Vec<(&str, String, Headers)> = vec![
        (
            "header + query",
            format!("job_token={APP}"),
            vec![("JOB-TOKEN".into(), BOT.into())],
        ),
        (
            "two query params",
            format!("job_token={BOT}&job_token={APP}"),
            vec![],
        ),
        (
            "header + bearer",
            String::new(),
            vec![
                ("JOB-TOKEN".into(), BOT.into()),
                ("Authorization".into(), format!("Bearer {APP}")),
            ],
        ),
        (
            "basic + private token",
            format!("private_token={APP}"),
            vec![("Authorization".into(), basic("gitlab-ci-token", BOT))],
        ),
        (
            "explicit legacy + prefixed",
            format!("token={BOT}"),
            vec![("JOB-TOKEN".into(), LEGACY_BOT.into())],
        ),
    ];
    for (name, query, headers) in cases {
        let r = call(&h, ALLOWED, &query, &headers).await;
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        assert!(
            r.json()["message"].as_str().is_some(),
            "{name}: JSON message"
        );
    }
    assert!(h.reached().is_empty(), "nothing forwarded");
    // The same token twice is one candidate (runners do that).
    let same = vec![("JOB-TOKEN".to_string(), BOT.to_string())];
    assert_eq!(
        call(&h, ALLOWED, &format!("job_token={BOT}"), &same)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn requests_without_a_job_token_are_not_touched() {
    let h = Harness::start(MATRIX).await;
    let cases: Vec<(&str, String, Headers)> = vec![
        ("anonymous", String::new(), vec![]),
        (
            "PAT header",
            String::new(),
            vec![("PRIVATE-TOKEN".into(), "glpat-abcdef".into())],
        ),
        ("PAT query", "private_token=glpat-abcdef".into(), vec![]),
        (
            "basic with a user password",
            String::new(),
            vec![("Authorization".into(), basic("alice", "hunter2"))],
        ),
        (
            "deploy token",
            String::new(),
            vec![("Deploy-Token".into(), "gldt-xyz".into())],
        ),
    ];
    for (name, query, headers) in cases {
        h.forge.clear();
        let r = call(&h, DENIED, &query, &headers).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(h.reached().len(), 1, "{name}");
    }
    assert_eq!(
        h.forge.job_lookups(),
        0,
        "no forge lookups for credentials that cannot be job tokens"
    );
}
