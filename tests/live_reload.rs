//! Live reload: the directory watcher and the poll pick up every way ops change the scope file
//! (in place, `cp`, write-and-rename, a ConfigMap `..data` symlink swap), a bad or half-written
//! file keeps the running policy, and requests under load are never failed by a reload.
//!
//! Every wait polls a condition (the `/-/policy` generation, `last_error`, a metric); none sleeps
//! for a fixed time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::scopes::MATRIX;
use common::*;
use scopegate::policy::file_digest;

/// Out of scope under MATRIX (acme/app's inbound limit), in scope once acme/app allows
/// globex/tool: the decision a reload flips.
const FLIP: &str = "/api/v4/projects/12/merge_requests";
/// In scope under both policies (the bot may reach acme/app).
const ALWAYS_ALLOWED: &str = "/api/v4/projects/12/issues";
/// Out of scope under both policies (acme/platform/ci takes the limited defaults inbound).
const ALWAYS_DENIED: &str = "/api/v4/projects/20/issues";

/// How long a change may take to be picked up (generous: the machine is shared).
const WITHIN: Duration = Duration::from_secs(20);

/// MATRIX with acme/app's inbound allowlist opened to globex/tool.
fn allow_globex() -> String {
    let changed = MATRIX.replace(
        "allow = [\"acme/deploy-bot\"]",
        "allow = [\"acme/deploy-bot\", \"globex/tool\"]",
    );
    assert_ne!(changed, MATRIX);
    changed
}

async fn policy(h: &Harness) -> serde_json::Value {
    h.send("GET", &h.admin_url("/-/policy"), &[], Bytes::new())
        .await
        .json()
}

async fn generation(h: &Harness) -> u64 {
    policy(h).await["generation"].as_u64().unwrap()
}

/// Wait until the generation reaches `want`, then check it did not go past it and that the
/// running digest is the one of `content`.
async fn await_generation(h: &Harness, want: u64, content: &str) {
    let reached = eventually(WITHIN, || async { generation(h).await >= want }).await;
    let p = policy(h).await;
    assert!(reached, "generation {want} not reached: {p}");
    assert_eq!(p["generation"], want, "one change, one generation: {p}");
    assert_eq!(p["digest"], file_digest(content.as_bytes()), "{p}");
    assert!(p["last_error"].is_null(), "{p}");
}

fn reached_forge(h: &Harness, target: &str) -> usize {
    h.reached().iter().filter(|t| *t == target).count()
}

/// `FLIP` is denied and never reaches the forge.
async fn assert_denied(h: &Harness) {
    let before = reached_forge(h, FLIP);
    let r = h.get(FLIP, &[("JOB-TOKEN", OTHER)]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        reached_forge(h, FLIP),
        before,
        "a denied request reached the forge"
    );
}

/// `FLIP` is allowed and reaches the forge.
async fn assert_allowed(h: &Harness) {
    let before = reached_forge(h, FLIP);
    let r = h.get(FLIP, &[("JOB-TOKEN", OTHER)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(reached_forge(h, FLIP), before + 1);
}

/// Write `content` to a temporary file next to `path` and rename it over `path`, as editors
/// and config-management tools do.
fn write_and_rename(path: &Path, content: &str) {
    let tmp = path.with_file_name(".scopes.toml.tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A directory laid out like a mounted ConfigMap:
/// `scopes.toml -> ..data/scopes.toml`, `..data -> ..<version>`, `..<version>/scopes.toml`.
fn configmap(dir: &Path, version: &str, content: &str) {
    let versioned = dir.join(version);
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("scopes.toml"), content).unwrap();
    symlink(version, dir.join("..data")).unwrap();
    symlink("..data/scopes.toml", dir.join("scopes.toml")).unwrap();
}

/// The kubelet's atomic update: a new version directory, a `..data_tmp` symlink to it renamed
/// over `..data`, then the old version removed. `scopes.toml` itself is never touched.
fn configmap_swap(dir: &Path, old: &str, new: &str, content: &str) {
    let versioned = dir.join(new);
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("scopes.toml"), content).unwrap();
    symlink(new, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(old)).unwrap();
}

#[tokio::test]
async fn rewriting_in_place_and_cp_over_the_file_flip_the_decision() {
    // The poll is off: only the watcher can pick the changes up.
    let h = Harness::start_with(MATRIX, |s| s.reload_poll = Duration::ZERO).await;
    assert_denied(&h).await;

    // In place: truncate and write the same inode.
    let globex = allow_globex();
    std::fs::write(&h.scopes, &globex).unwrap();
    await_generation(&h, 2, &globex).await;
    assert_allowed(&h).await;

    // `cp` over the file (also in place: open with O_TRUNC, write).
    let src = h.dir.path().join("elsewhere");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("scopes.toml"), MATRIX).unwrap();
    std::fs::copy(src.join("scopes.toml"), &h.scopes).unwrap();
    await_generation(&h, 3, MATRIX).await;
    assert_denied(&h).await;

    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "scopegate_reloads_total", &["success"]),
        3.0,
        "{m}"
    );
    assert_eq!(metric(&m, "scopegate_policy_generation", &[]), 3.0, "{m}");
}

#[tokio::test]
async fn write_and_rename_flips_the_decision() {
    let h = Harness::start_with(MATRIX, |s| s.reload_poll = Duration::ZERO).await;
    assert_denied(&h).await;
    let globex = allow_globex();
    write_and_rename(&h.scopes, &globex);
    await_generation(&h, 2, &globex).await;
    assert_allowed(&h).await;
    // The watch survives the rename: the next save is seen too.
    write_and_rename(&h.scopes, MATRIX);
    await_generation(&h, 3, MATRIX).await;
    assert_denied(&h).await;
}

#[tokio::test]
async fn a_configmap_symlink_swap_flips_the_decision() {
    let cm = tempfile::tempdir().unwrap();
    configmap(cm.path(), "..2026_01_01_00_00_00.000000001", MATRIX);
    let scopes = cm.path().join("scopes.toml");
    let h = Harness::start_with(MATRIX, |s| {
        s.scopes = Some(scopes.clone());
        s.reload_poll = Duration::ZERO;
    })
    .await;
    assert_denied(&h).await;

    let globex = allow_globex();
    configmap_swap(
        cm.path(),
        "..2026_01_01_00_00_00.000000001",
        "..2026_01_01_00_01_00.000000002",
        &globex,
    );
    await_generation(&h, 2, &globex).await;
    assert_allowed(&h).await;

    // A second swap: the watched names followed the first one.
    configmap_swap(
        cm.path(),
        "..2026_01_01_00_01_00.000000002",
        "..2026_01_01_00_02_00.000000003",
        MATRIX,
    );
    await_generation(&h, 3, MATRIX).await;
    assert_denied(&h).await;
}

#[tokio::test]
async fn rewriting_the_same_content_does_not_bump_the_generation() {
    let h = Harness::start_with(MATRIX, |s| s.reload_poll = Duration::ZERO).await;
    // Unrelated files in the directory come and go.
    std::fs::write(h.dir.path().join("notes.txt"), "hello").unwrap();
    write_and_rename(&h.dir.path().join("other.toml"), "x = 1");
    // The scope file is rewritten with what is already in force.
    std::fs::write(&h.scopes, MATRIX).unwrap();
    let seen = eventually(WITHIN, || async {
        metric(
            &h.metrics().await,
            "scopegate_reloads_total",
            &["unchanged"],
        ) >= 1.0
    })
    .await;
    assert!(
        seen,
        "the watcher looked at the rewrite: {}",
        h.metrics().await
    );
    assert_eq!(generation(&h).await, 1, "same content, same generation");
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "scopegate_reloads_total", &["success"]),
        1.0,
        "{m}"
    );

    // A real change still goes through, as exactly one generation.
    let globex = allow_globex();
    std::fs::write(&h.scopes, &globex).unwrap();
    await_generation(&h, 2, &globex).await;
}

#[tokio::test]
async fn an_invalid_file_keeps_the_old_decision_and_policy_shows_why() {
    // A fast poll as well as the watcher: the same bad content must be reported once only.
    let h = Harness::start_with(MATRIX, |s| s.reload_poll = Duration::from_millis(50)).await;
    let globex = allow_globex();
    std::fs::write(&h.scopes, &globex).unwrap();
    await_generation(&h, 2, &globex).await;
    assert_allowed(&h).await;

    std::fs::write(
        &h.scopes,
        format!("{globex}\n[[project]]\nid = 99\nbogus = true\n"),
    )
    .unwrap();
    let reported = eventually(WITHIN, || async {
        policy(&h).await["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("bogus"))
    })
    .await;
    let p = policy(&h).await;
    assert!(reported, "{p}");
    assert_eq!(p["generation"], 2, "the running snapshot stays: {p}");
    assert_eq!(p["digest"], file_digest(globex.as_bytes()));
    assert_allowed(&h).await;
    let ready = h
        .send("GET", &h.admin_url("/-/ready"), &[], Bytes::new())
        .await;
    assert_eq!(
        ready.status, 200,
        "a bad file does not make the gateway unready"
    );

    // The poll keeps looking at the bad file (it is not reported again); then it is fixed.
    let polled = eventually(WITHIN, || async {
        metric(
            &h.metrics().await,
            "scopegate_reloads_total",
            &["unchanged"],
        ) >= 3.0
    })
    .await;
    assert!(polled, "{}", h.metrics().await);
    std::fs::write(&h.scopes, MATRIX).unwrap();
    await_generation(&h, 3, MATRIX).await;
    assert_denied(&h).await;
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "scopegate_reloads_total", &["failure"]),
        1.0,
        "one bad content, one failure: {m}"
    );
}

#[tokio::test]
async fn a_half_written_file_is_never_taken() {
    use std::io::Write;
    let h = Harness::start_with(MATRIX, |s| s.reload_poll = Duration::from_millis(50)).await;
    let globex = allow_globex();
    // A slow writer: truncate, write half of the file (cut inside a table), pause.
    let cut = globex.find("[project.inbound]").unwrap() + 5;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&h.scopes)
        .unwrap();
    file.write_all(&globex.as_bytes()[..cut]).unwrap();
    file.flush().unwrap();
    let reported = eventually(WITHIN, || async {
        !policy(&h).await["last_error"].is_null()
    })
    .await;
    let p = policy(&h).await;
    assert!(reported, "{p}");
    assert_eq!(p["generation"], 1, "the half file was not taken: {p}");
    assert_eq!(p["digest"], file_digest(MATRIX.as_bytes()));
    assert_denied(&h).await;

    // The writer finishes: the next event (or poll) takes the whole file.
    file.write_all(&globex.as_bytes()[cut..]).unwrap();
    drop(file);
    await_generation(&h, 2, &globex).await;
    assert_allowed(&h).await;
}

#[tokio::test]
async fn the_poll_alone_picks_up_a_change() {
    let h = Harness::start_with(MATRIX, |s| {
        s.reload_watch = false;
        s.reload_poll = Duration::from_millis(100);
    })
    .await;
    assert_denied(&h).await;
    let globex = allow_globex();
    std::fs::write(&h.scopes, &globex).unwrap();
    await_generation(&h, 2, &globex).await;
    assert_allowed(&h).await;
    // A rename too (a new inode).
    write_and_rename(&h.scopes, MATRIX);
    await_generation(&h, 3, MATRIX).await;
    assert_denied(&h).await;
}

/// One request kind of the load test: path, token, and the statuses each policy gives it.
struct Kind {
    path: &'static str,
    token: &'static str,
    under_matrix: u16,
    under_globex: u16,
}

const KINDS: [Kind; 3] = [
    Kind {
        path: FLIP,
        token: OTHER,
        under_matrix: 403,
        under_globex: 200,
    },
    Kind {
        path: ALWAYS_ALLOWED,
        token: BOT,
        under_matrix: 200,
        under_globex: 200,
    },
    Kind {
        path: ALWAYS_DENIED,
        token: OTHER,
        under_matrix: 403,
        under_globex: 403,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_load_every_answer_matches_the_old_or_the_new_policy() {
    const TOTAL: usize = 3000;
    const CLIENTS: usize = 8;
    const REWRITES: usize = 20;
    /// Requests per rewrite: the clients may run at most two steps ahead of the last swap
    /// seen, so every swap happens while requests are flowing.
    const STEP: usize = TOTAL / (REWRITES + 2);

    let h = Arc::new(
        Harness::start_with(MATRIX, |s| {
            s.reload_debounce = Duration::from_millis(50);
            s.reload_poll = Duration::ZERO;
        })
        .await,
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (budget_tx, budget_rx) = tokio::sync::watch::channel(2 * STEP);
    // (kind, status or error)
    let results = Arc::new(Mutex::new(Vec::<(usize, Result<u16, String>)>::new()));

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, next, done, results, h) = (
            client.clone(),
            Arc::clone(&next),
            Arc::clone(&done),
            Arc::clone(&results),
            Arc::clone(&h),
        );
        let mut budget = budget_rx.clone();
        clients.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= TOTAL {
                    return;
                }
                budget.wait_for(|b| *b > n).await.unwrap();
                let kind = n % KINDS.len();
                let req = http::Request::get(h.url(KINDS[kind].path))
                    .header("JOB-TOKEN", KINDS[kind].token)
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let outcome = match tokio::time::timeout(
                    Duration::from_secs(30),
                    client.request(req),
                )
                .await
                {
                    Err(_) => Err("timed out".to_string()),
                    Ok(Err(e)) => Err(format!("connection error: {e:?}")),
                    Ok(Ok(resp)) => {
                        use http_body_util::BodyExt;
                        let status = resp.status().as_u16();
                        match resp.into_body().collect().await {
                            Ok(_) => Ok(status),
                            Err(e) => Err(format!("body error: {e:?}")),
                        }
                    }
                };
                results.lock().unwrap().push((kind, outcome));
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // The writer: 20 rewrites alternating the two policies, alternately in place and by rename,
    // each awaited (generation bump) before the clients may run further ahead.
    let globex = allow_globex();
    for k in 1..=REWRITES {
        let progressed = eventually(WITHIN, || async {
            done.load(Ordering::Relaxed) >= k * STEP
        })
        .await;
        assert!(progressed, "clients stalled before rewrite {k}");
        let content = if k % 2 == 1 { globex.as_str() } else { MATRIX };
        if k % 4 < 2 {
            std::fs::write(&h.scopes, content).unwrap();
        } else {
            write_and_rename(&h.scopes, content);
        }
        await_generation(&h, 1 + k as u64, content).await;
        budget_tx.send_replace((k + 2) * STEP);
    }
    budget_tx.send_replace(TOTAL);
    for c in clients {
        c.await.unwrap();
    }

    let results = std::mem::take(&mut *results.lock().unwrap());
    assert_eq!(results.len(), TOTAL);
    let errors: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let mut allowed = 0;
    let mut flips = [0usize; 2];
    for (kind, status) in results.iter() {
        let status = *status.as_ref().unwrap();
        let k = &KINDS[*kind];
        assert!(
            status == k.under_matrix || status == k.under_globex,
            "{} answered {status}: neither policy says so",
            k.path
        );
        if status == 200 {
            allowed += 1;
        }
        if *kind == 0 {
            flips[usize::from(status == 200)] += 1;
        }
    }
    assert!(
        flips[0] > 0 && flips[1] > 0,
        "the flipping request saw both policies: {flips:?}"
    );
    assert_eq!(
        h.reached().len(),
        allowed,
        "exactly the allowed requests reached the forge"
    );
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "scopegate_reloads_total", &["success"]),
        1.0 + REWRITES as f64,
        "{m}"
    );
    assert_eq!(
        metric(&m, "scopegate_reloads_total", &["failure"]),
        0.0,
        "no half-written file was even looked at: {m}"
    );
}
