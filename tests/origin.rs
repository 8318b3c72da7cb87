//! Origin resolution: invalid tokens, a failing or hanging forge, one lookup per new token,
//! negative caching, static tokens from the scope file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::scopes::MATRIX;
use common::*;
use scopegate::standin::LookupMode;
use sha2::{Digest, Sha256};

const ALLOWED: &str = "/api/v4/projects/12/merge_requests";

#[tokio::test]
async fn a_token_the_forge_rejects_gets_401_and_is_remembered_briefly() {
    let h = Harness::start(MATRIX).await;
    for _ in 0..3 {
        let r = h.get(ALLOWED, &[("JOB-TOKEN", "glcbt-finished-job")]).await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(r.json()["message"].as_str().unwrap().starts_with("401"));
    }
    assert!(h.reached().is_empty());
    assert_eq!(h.forge.job_lookups(), 1, "negative answers are cached");
}

#[tokio::test]
async fn a_failing_forge_gives_503_and_nothing_is_forwarded() {
    let h = Harness::start(MATRIX).await;
    h.forge.set_lookup_mode(LookupMode::Fail);
    let r = h.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await;
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    assert!(h.reached().is_empty());
    // Failures are not cached: once the forge recovers, the same token works.
    h.forge.set_lookup_mode(LookupMode::Normal);
    assert_eq!(h.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await.status, 200);
}

#[tokio::test]
async fn a_hanging_forge_gives_503_in_time() {
    let h = Harness::start_with(MATRIX, |s| {
        s.timeouts.forge_lookup = Duration::from_millis(300)
    })
    .await;
    h.forge.set_lookup_mode(LookupMode::Hang);
    let started = std::time::Instant::now();
    let r = h.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await;
    assert_eq!(r.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(h.reached().is_empty());
}

#[tokio::test]
async fn a_forge_that_is_down_gives_503() {
    let h = Harness::start(MATRIX).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h2 = Harness::start_with(MATRIX, |s| {
        s.upstream = Some(format!("http://127.0.0.1:{port}"))
    })
    .await;
    let r = h2.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    drop(h);
}

#[tokio::test]
async fn one_forge_lookup_for_a_hundred_concurrent_first_requests() {
    let h = std::sync::Arc::new(Harness::start(MATRIX).await);
    h.forge.set_lookup_delay(Duration::from_millis(300));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let h = std::sync::Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            h.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(h.forge.job_lookups(), 1);
    assert_eq!(h.reached().len(), 100);
}

#[tokio::test]
async fn static_tokens_from_the_scope_file_need_no_forge() {
    let token = "long-lived-deploy-credential-7";
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let scopes = format!("{MATRIX}\n[[token]]\nsha256 = \"{digest}\"\nproject = 10\n");
    let h = Harness::start(&scopes).await;
    assert_eq!(h.get(ALLOWED, &[("JOB-TOKEN", token)]).await.status, 200);
    assert_eq!(
        h.get("/api/v4/projects/30", &[("JOB-TOKEN", token)])
            .await
            .status,
        403
    );
    assert_eq!(h.forge.job_lookups(), 0);
}

#[tokio::test]
async fn origin_cache_metrics_move() {
    let h = Harness::start(MATRIX).await;
    for _ in 0..3 {
        assert_eq!(h.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await.status, 200);
    }
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "scopegate_forge_lookups_total", &["result=\"job\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "scopegate_origin_cache_hits_total", &[]),
        2.0,
        "{m}"
    );
}

#[tokio::test]
async fn an_origin_is_asked_again_once_its_time_is_up_on_every_worker() {
    let h = Harness::start_with(MATRIX, |s| {
        s.cache.ttl = Duration::from_millis(400);
        s.workers = 2;
    })
    .await;
    // A new connection per request: both workers (and their fronts) learn the answer.
    for _ in 0..8 {
        assert_eq!(h.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await.status, 200);
    }
    assert_eq!(h.forge.job_lookups(), 1, "remembered within the TTL");
    // The forge now fails every lookup. Once the TTL is up, no worker may still answer from
    // what it remembered: every request needs the forge again, and gets 503.
    h.forge.set_lookup_mode(LookupMode::Fail);
    let all_asked_again = eventually(Duration::from_secs(5), || async {
        let mut statuses = Vec::new();
        for _ in 0..8 {
            statuses.push(h.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await.status);
        }
        statuses.iter().all(|&s| s == 503)
    })
    .await;
    assert!(all_asked_again, "an expired origin kept being used");
    assert!(h.forge.job_lookups() > 1);
}
