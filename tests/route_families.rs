//! The route families of issue 4 through the real proxy, with a job token: what is denied
//! (and never reaches the forge), what is refused as unreadable, and what goes through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::scopes::MATRIX;
use common::*;

/// Routes a job token may never use through the gateway (today): 403, forge untouched.
const DENIED: &[(&str, &str, &str)] = &[
    ("POST", "/api/graphql", "GraphQL never accepts a job token"),
    ("GET", "/api/v4/internal/allowed", "internal API"),
    (
        "POST",
        "/api/v4/internal/dast/site_validations/1/transition",
        "internal API, even the EE route that takes job tokens",
    ),
    (
        "GET",
        "/api/v4/groups/acme/-/packages/npm/@acme/app",
        "group-level package route",
    ),
    (
        "GET",
        "/api/v4/groups/5/-/packages/maven/com/acme/app/1.0/app-1.0.jar",
        "group-level package route by id",
    ),
    (
        "GET",
        "/api/v4/packages/npm/@acme%2fapp",
        "instance-level package route",
    ),
    (
        "GET",
        "/api/v4/packages/conan/v1/conans/search",
        "instance-level package route",
    ),
    (
        "GET",
        "/jwt/auth?service=container_registry&scope=repository:acme/app:push",
        "registry push to a project other than the token's own",
    ),
    (
        "GET",
        "/jwt/auth?service=container_registry&scope=repository:globex/tool:pull",
        "registry pull out of the bot's outbound scope",
    ),
    (
        "GET",
        "/jwt/auth?service=container_registry&scope=repository:acme/deploy-bot:push&scope=repository:globex/tool/img:pull",
        "one scope out of scope denies the whole token",
    ),
    (
        "GET",
        "/jwt/auth?service=container_registry&scope=registry:catalog:*",
        "registry catalog",
    ),
    (
        "GET",
        "/jwt/auth?service=dependency_proxy",
        "dependency proxy tokens are user-wide",
    ),
    (
        "GET",
        "/jwt/auth?scope=repository:acme/app:pull",
        "no service",
    ),
    (
        "GET",
        "/acme/deploy-bot/-/settings/ci_cd",
        "web route that is not a download route",
    ),
    ("GET", "/groups/acme/-/packages", "group web route"),
    (
        "GET",
        "/globex/tool/-/archive/main/tool-main.zip",
        "web download route of a project out of scope",
    ),
];

#[tokio::test]
async fn unattributed_and_undecided_routes_are_denied() {
    let h = Harness::start(MATRIX).await;
    for &(method, path, why) in DENIED {
        h.forge.clear();
        let r = h
            .send(method, &h.url(path), &[("JOB-TOKEN", BOT)], Bytes::new())
            .await;
        assert_eq!(r.status, 403, "{why}: {method} {path}: {}", r.text());
        assert!(
            h.reached().is_empty(),
            "{why}: {method} {path} reached the forge"
        );
    }
}

#[tokio::test]
async fn unreadable_registry_scopes_are_refused() {
    let h = Harness::start(MATRIX).await;
    for query in [
        "service=container_registry&scope=repository:acme/app",
        "service=container_registry&scope=repository:app:pull",
        "service=container_registry&scope=other:acme/app:pull",
        "service=container_registry&scope=repository:acme/app:pull%zz",
    ] {
        h.forge.clear();
        let path = format!("/jwt/auth?{query}");
        let r = h.get(&path, &[("JOB-TOKEN", BOT)]).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(h.reached().is_empty(), "{path} reached the forge");
    }
}

/// Registry tokens: the token's own project with any action, other projects pull-only and
/// within the policy; the request goes upstream unchanged.
#[tokio::test]
async fn registry_scopes_are_decided_per_scope() {
    let h = Harness::start(MATRIX).await;
    for path in [
        "/jwt/auth?service=container_registry&scope=repository:acme/deploy-bot:pull,push",
        "/jwt/auth?service=container_registry&scope=repository:acme/deploy-bot/cache/x:*",
        "/jwt/auth?service=container_registry&scope=repository:acme/app:pull",
        "/jwt/auth?service=container_registry&scope=repository:acme/app/sub:pull&scope=repository:ACME/Deploy-Bot:delete",
    ] {
        h.forge.clear();
        let r = h.get(path, &[("JOB-TOKEN", BOT)]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(h.reached(), vec![path.to_string()], "{path}");
    }
    // What a refusal says.
    h.forge.clear();
    let r = h
        .get(
            "/jwt/auth?service=container_registry&scope=repository:acme/app:pull,push",
            &[("JOB-TOKEN", BOT)],
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("only its own project"), "{}", r.text());
    assert!(h.reached().is_empty());
}

#[tokio::test]
async fn login_probe_and_in_scope_web_downloads_go_through() {
    let h = Harness::start(MATRIX).await;
    for path in [
        "/jwt/auth?service=container_registry&account=bot",
        "/acme/deploy-bot/-/archive/main/deploy-bot-main.zip",
        "/acme/app/-/raw/main/README.md",
        "/acme/app/-/jobs/artifacts/main/download?job=build",
    ] {
        h.forge.clear();
        let r = h.get(path, &[("JOB-TOKEN", BOT)]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(h.reached(), vec![path.to_string()], "{path}");
    }
    // Without a job token nothing is parsed: the forge decides.
    h.forge.clear();
    let r = h.get("/api/graphql", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.reached().len(), 1);
}
