//! The management API (`/-/scopegate/api/v4/projects/:id/job_token_scope...`): who may do
//! what, GitLab's shapes and errors, changes in force at once and on disk, writes that lose
//! nothing (concurrency, read-only files, failures, edits made on disk meanwhile).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bytes::Bytes;
use common::manage::{directory, DEVELOPER, MAINTAINER, MANAGED, MANY, OUTSIDER, OWNER};
use common::{Harness, Reply, APP, BOT, OTHER};
use scopegate::manage::write::FailPoint;
use scopegate::scope::{self, ScopeLimits};
use serde_json::{json, Value};

async fn managed() -> Harness {
    managed_with(|_| {}).await
}

async fn managed_with(tweak: impl FnOnce(&mut scopegate::settings::Settings)) -> Harness {
    let h = Harness::start_with(MANAGED, |s| {
        s.authlog.flush_interval = Duration::from_millis(20);
        tweak(s);
    })
    .await;
    h.forge.set_directory(directory());
    h
}

fn api(h: &Harness, rest: &str) -> String {
    h.url(&format!("/-/scopegate/api/v4/projects/{rest}"))
}

async fn call(h: &Harness, method: &str, rest: &str, token: &str, body: Option<Value>) -> Reply {
    let mut headers = vec![("PRIVATE-TOKEN", token)];
    let body = match body {
        Some(v) => {
            headers.push(("Content-Type", "application/json"));
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    h.send(method, &api(h, rest), &headers, body).await
}

/// globex/tool's job token on acme/app: the request whose fate each change decides.
async fn other_on_app(h: &Harness) -> u16 {
    h.get(
        "/api/v4/projects/12/merge_requests",
        &[("JOB-TOKEN", OTHER)],
    )
    .await
    .status
}

fn file(h: &Harness) -> String {
    std::fs::read_to_string(&h.scopes).unwrap()
}

fn assert_loads(text: &str) -> scopegate::policy::Policy {
    scope::load_str("scopes.toml", text, &ScopeLimits::default())
        .unwrap_or_else(|e| panic!("the written file does not load: {e}\n{text}"))
        .policy
}

#[tokio::test]
async fn who_may_read_and_change() {
    let h = managed().await;
    let rest = "12/job_token_scope";
    // No credential: 401, and the forge is not asked.
    let r = h.send("GET", &api(&h, rest), &[], Bytes::new()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json(), json!({"message": "401 Unauthorized"}));
    // A credential the forge does not know: 401.
    assert_eq!(
        call(&h, "GET", rest, "glpat-nobody", None).await.status,
        401
    );
    // A Developer: 403, for reading and for changing.
    let r = call(&h, "GET", rest, DEVELOPER, None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json(), json!({"message": "403 Forbidden"}));
    let before = file(&h);
    let r = call(&h, "PATCH", rest, DEVELOPER, Some(json!({"enabled": true}))).await;
    assert_eq!(r.status, 403);
    let r = call(
        &h,
        "POST",
        "12/job_token_scope/allowlist",
        DEVELOPER,
        Some(json!({"target_project_id": 30})),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(file(&h), before);
    // Someone who cannot see the project, and a project that does not exist: 404.
    let r = call(&h, "GET", rest, OUTSIDER, None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"message": "404 Project Not Found"}));
    assert_eq!(
        call(&h, "GET", "999/job_token_scope", MAINTAINER, None)
            .await
            .status,
        404
    );
    // The Maintainer and the group's Owner may; by id or by URL-encoded path.
    let r = call(&h, "GET", rest, MAINTAINER, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"inbound_enabled": false, "outbound_enabled": false})
    );
    let r = call(&h, "GET", "acme%2Fapp/job_token_scope", OWNER, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The caller's own credential is what the forge was asked with.
    assert!(h
        .forge
        .requests()
        .iter()
        .any(|r| r.target == "/api/v4/projects/acme%2Fapp"
            && r.header("private-token") == Some(OWNER)));
    // Other credential carriers: Bearer, and the private_token parameter.
    let r = h
        .send(
            "GET",
            &api(&h, rest),
            &[("Authorization", &format!("Bearer {MAINTAINER}"))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = h
        .send(
            "GET",
            &format!("{}?private_token={MAINTAINER}", api(&h, rest)),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Unknown routes under the prefix, and wrong methods.
    let r = call(&h, "GET", "12/job_token_scope/nope", MAINTAINER, None).await;
    assert_eq!(r.status, 404);
    let r = call(&h, "DELETE", rest, MAINTAINER, None).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn job_tokens_manage_only_their_own_project() {
    let h = managed().await;
    // acme/app's own job (its user is a Maintainer of acme/app).
    let r = h
        .send(
            "GET",
            &api(&h, "12/job_token_scope"),
            &[("JOB-TOKEN", APP)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The bot's job runs as the same user, but may not touch another project's scope.
    let r = h
        .send(
            "PATCH",
            &api(&h, "12/job_token_scope"),
            &[("JOB-TOKEN", BOT), ("Content-Type", "application/json")],
            Bytes::from(r#"{"enabled": false}"#),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("own project"), "{}", r.text());
}

#[tokio::test]
async fn settings_toggle_in_force_at_once_and_on_disk() {
    let h = managed().await;
    assert_eq!(other_on_app(&h).await, 200);
    let r = call(
        &h,
        "PATCH",
        "12/job_token_scope",
        MAINTAINER,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    // In force before the answer: no reload, no wait.
    assert_eq!(other_on_app(&h).await, 403);
    let text = file(&h);
    assert!(
        text.contains("enabled = true   # turned on through the API"),
        "{text}"
    );
    assert!(text.starts_with("# Managed scope file: ops comments must survive API writes."));
    assert_eq!(
        text.replace("enabled = true   # turned", "enabled = false   # turned"),
        MANAGED
    );
    let r = call(&h, "GET", "12/job_token_scope", MAINTAINER, None).await;
    assert_eq!(
        r.json(),
        json!({"inbound_enabled": true, "outbound_enabled": false})
    );
    // Form body and query parameters work as with Grape; outbound_enabled too.
    let r = h
        .send(
            "PATCH",
            &api(&h, "12/job_token_scope"),
            &[
                ("PRIVATE-TOKEN", MAINTAINER),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            Bytes::from("enabled=false&outbound_enabled=true"),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call(&h, "GET", "12/job_token_scope", MAINTAINER, None).await;
    assert_eq!(
        r.json(),
        json!({"inbound_enabled": false, "outbound_enabled": true})
    );
    let r = h
        .send(
            "PATCH",
            &format!("{}?enabled=true", api(&h, "12/job_token_scope")),
            &[("PRIVATE-TOKEN", MAINTAINER)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(other_on_app(&h).await, 403);
    // Missing and invalid parameters, as Grape words them.
    let r = call(
        &h,
        "PATCH",
        "12/job_token_scope",
        MAINTAINER,
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "enabled is missing"}))
    );
    let r = call(
        &h,
        "PATCH",
        "12/job_token_scope",
        MAINTAINER,
        Some(json!({"enabled": "maybe"})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "enabled is invalid"}))
    );
    assert_loads(&file(&h));
}

#[tokio::test]
async fn project_allowlist_add_list_remove() {
    let h = managed().await;
    call(
        &h,
        "PATCH",
        "12/job_token_scope",
        MAINTAINER,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(other_on_app(&h).await, 403);
    let r = call(
        &h,
        "POST",
        "12/job_token_scope/allowlist",
        MAINTAINER,
        Some(json!({"target_project_id": 30})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"source_project_id": 12, "target_project_id": 30})
    );
    assert_eq!(other_on_app(&h).await, 200);
    let text = file(&h);
    assert!(text.contains("allow = [\"acme/deploy-bot\", 30]"), "{text}");
    // Again: GitLab's duplicate message.
    let r = call(
        &h,
        "POST",
        "12/job_token_scope/allowlist",
        MAINTAINER,
        Some(json!({"target_project_id": 30})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"message": "400 Bad request - Target project is already in the job token scope"})
    );
    // Itself, a project the caller cannot see, a missing parameter.
    let r = call(
        &h,
        "POST",
        "12/job_token_scope/allowlist",
        MAINTAINER,
        Some(json!({"target_project_id": 12})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = call(
        &h,
        "POST",
        "12/job_token_scope/allowlist",
        MAINTAINER,
        Some(json!({"target_project_id": 40})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"message": "404 target_project_id not found"}))
    );
    let r = call(&h, "POST", "12/job_token_scope/allowlist", MAINTAINER, None).await;
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "target_project_id is missing"}))
    );

    // The list: the project itself first, then its entries, as the forge describes them.
    let r = call(&h, "GET", "12/job_token_scope/allowlist", MAINTAINER, None).await;
    assert_eq!(r.status, 200);
    let list = r.json();
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![12, 30, 10]);
    assert_eq!(list[1]["path_with_namespace"], "globex/tool");
    assert_eq!(list[1]["name"], "tool");
    assert!(list[1]["web_url"]
        .as_str()
        .unwrap()
        .ends_with("/globex/tool"));
    assert!(list[1].get("permissions").is_none());
    assert_eq!(r.headers["x-total"], "3");

    // Remove (by id; the entry written by path goes too when it names the same project).
    let r = call(
        &h,
        "DELETE",
        "12/job_token_scope/allowlist/30",
        MAINTAINER,
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(other_on_app(&h).await, 403);
    let r = call(
        &h,
        "DELETE",
        "12/job_token_scope/allowlist/10",
        MAINTAINER,
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call(
        &h,
        "DELETE",
        "12/job_token_scope/allowlist/10",
        MAINTAINER,
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            json!({"message": "400 Bad request - Target project is not in the job token scope"})
        )
    );
    let text = file(&h);
    assert!(text.contains("allow = []"), "{text}");
    assert!(text.contains("# the app: its maintainers manage it through the API"));
    assert_loads(&text);
}

#[tokio::test]
async fn group_allowlist_add_list_remove() {
    let h = managed().await;
    call(
        &h,
        "PATCH",
        "12/job_token_scope",
        MAINTAINER,
        Some(json!({"enabled": true})),
    )
    .await;
    let r = call(
        &h,
        "POST",
        "12/job_token_scope/groups_allowlist",
        MAINTAINER,
        Some(json!({"target_group_id": 3})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"source_project_id": 12, "target_group_id": 3})
    );
    assert_eq!(other_on_app(&h).await, 200);
    // Stored by full path.
    assert!(
        file(&h).contains("allow_groups = [\"globex\"]"),
        "{}",
        file(&h)
    );
    let r = call(
        &h,
        "GET",
        "12/job_token_scope/groups_allowlist",
        MAINTAINER,
        None,
    )
    .await;
    let list = r.json();
    assert_eq!(list[0]["id"], 3);
    assert_eq!(list[0]["name"], "globex");
    assert!(list[0]["web_url"]
        .as_str()
        .unwrap()
        .ends_with("/groups/globex"));
    let r = call(
        &h,
        "POST",
        "12/job_token_scope/groups_allowlist",
        MAINTAINER,
        Some(json!({"target_group_id": 3})),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("already in the job token scope"));
    // A group the caller cannot see.
    let r = call(
        &h,
        "POST",
        "12/job_token_scope/groups_allowlist",
        MAINTAINER,
        Some(json!({"target_group_id": 5})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"message": "404 target_group_id not found"}))
    );
    let r = call(
        &h,
        "DELETE",
        "12/job_token_scope/groups_allowlist/3",
        MAINTAINER,
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(other_on_app(&h).await, 403);
    assert_loads(&file(&h));
}

#[tokio::test]
async fn outbound_allowlist_and_a_first_entry_for_an_unlisted_project() {
    let h = managed().await;
    // The bot may not reach acme/legacy (14): not on its outbound allowlist.
    let bot_on_legacy = || async {
        h.get("/api/v4/projects/14/merge_requests", &[("JOB-TOKEN", BOT)])
            .await
            .status
    };
    assert_eq!(bot_on_legacy().await, 403);
    let r = call(
        &h,
        "POST",
        "10/job_token_scope/outbound_allowlist",
        OWNER,
        Some(json!({"target_project_id": 14})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(bot_on_legacy().await, 200);
    let r = call(
        &h,
        "GET",
        "10/job_token_scope/outbound_allowlist",
        OWNER,
        None,
    )
    .await;
    let paths: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path_with_namespace"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["acme/deploy-bot", "acme/legacy", "acme/app"]);
    let r = call(&h, "GET", "10/job_token_scope", OWNER, None).await;
    assert_eq!(r.json()["outbound_enabled"], true);

    // acme/rollout (16) has no entry: its first change creates one, with id and path.
    let r = call(
        &h,
        "POST",
        "16/job_token_scope/allowlist",
        OWNER,
        Some(json!({"target_project_id": 20})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let text = file(&h);
    let policy = assert_loads(&text);
    let entry = policy
        .project(&scopegate::project::ProjectRef::Id(16))
        .expect("an entry for acme/rollout");
    assert_eq!(entry.path(), Some("acme/rollout"));
    assert_eq!(entry.inbound().project_entries(), 1);
    // The origin it allows got an entry naming it both ways (so requests naming either form
    // match); its own policy is still the defaults.
    let ci = policy
        .project(&scopegate::project::ProjectRef::Id(20))
        .expect("an entry for acme/platform/ci");
    assert_eq!(ci.path(), Some("acme/platform/ci"));
    assert!(ci.inbound().enabled() && ci.outbound().enabled());
    assert!(
        text.contains("added through scopegate's management API"),
        "{text}"
    );
}

#[tokio::test]
async fn allowlists_are_bounded_by_max_allowlist() {
    let h = managed_with(|s| s.max_allowlist = 2).await;
    // acme/app already allows the bot; one more fits, the third does not.
    let add = |id: u64| {
        let h = &h;
        async move {
            call(
                h,
                "POST",
                "12/job_token_scope/allowlist",
                MAINTAINER,
                Some(json!({"target_project_id": id})),
            )
            .await
        }
    };
    assert_eq!(add(30).await.status, 201);
    let r = add(20).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text()
            .contains("exceeds the allowable number of project links"),
        "{}",
        r.text()
    );
    assert_loads(&file(&h));
}

#[tokio::test]
async fn lists_are_paginated_like_gitlab() {
    let h = managed().await;
    for id in [101, 102, 103, 104] {
        let r = call(
            &h,
            "POST",
            "12/job_token_scope/allowlist",
            MAINTAINER,
            Some(json!({"target_project_id": id})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // 12 itself, 101..104, the bot: 6 items.
    let r = call(
        &h,
        "GET",
        "12/job_token_scope/allowlist?per_page=2&page=2",
        MAINTAINER,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let ids: Vec<u64> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![102, 103]);
    for (name, value) in [
        ("x-total", "6"),
        ("x-total-pages", "3"),
        ("x-page", "2"),
        ("x-per-page", "2"),
        ("x-next-page", "3"),
        ("x-prev-page", "1"),
    ] {
        assert_eq!(r.headers[name], value, "{name}");
    }
    let link = r.headers["link"].to_str().unwrap();
    let base = api(&h, "12/job_token_scope/allowlist");
    assert!(
        link.contains(&format!("<{base}?page=3&per_page=2>; rel=\"next\"")),
        "{link}"
    );
    assert!(link.contains(&format!("<{base}?page=1&per_page=2>; rel=\"prev\"")));
    assert!(link.contains(&format!("<{base}?page=3&per_page=2>; rel=\"last\"")));
    // Defaults: 20 per page.
    let r = call(&h, "GET", "12/job_token_scope/allowlist", MAINTAINER, None).await;
    assert_eq!(r.headers["x-per-page"], "20");
    assert_eq!(r.headers["x-next-page"], "");
}

#[tokio::test]
async fn twenty_concurrent_adds_all_land() {
    let h = managed().await;
    let ids: Vec<u64> = MANY.take(20).collect();
    let calls = ids.iter().map(|&id| {
        let h = &h;
        async move {
            call(
                h,
                "POST",
                "12/job_token_scope/allowlist",
                MAINTAINER,
                Some(json!({"target_project_id": id})),
            )
            .await
            .status
        }
    });
    // All at once on one task: they overlap in the gateway, which serialises the writes.
    let statuses = join_all(calls.collect()).await;
    assert!(statuses.iter().all(|&s| s == 201), "{statuses:?}");
    let text = file(&h);
    let policy = assert_loads(&text);
    let app = policy
        .project(&scopegate::project::ProjectRef::Id(12))
        .unwrap();
    let listed: Vec<u64> = app.inbound().allowed_ids().collect();
    for id in &ids {
        assert!(listed.contains(id), "{id} missing from {listed:?}");
    }
    assert_eq!(app.inbound().project_entries(), 21);
    // And the policy in force is the file's.
    let r = h
        .send("GET", &h.admin_url("/-/policy"), &[], Bytes::new())
        .await;
    assert_eq!(
        r.json()["digest"],
        scopegate::policy::file_digest(text.as_bytes())
    );
}

/// Poll every future on one task until all are done (keeps the test free of extra crates).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futures.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn a_read_only_scope_file_answers_409() {
    let h = managed().await;
    let before = file(&h);
    std::fs::set_permissions(&h.scopes, std::fs::Permissions::from_mode(0o444)).unwrap();
    let r = call(
        &h,
        "PATCH",
        "12/job_token_scope",
        MAINTAINER,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("managed elsewhere"), "{}", r.text());
    assert_eq!(file(&h), before);
    assert_eq!(other_on_app(&h).await, 200);
    // A read-only directory (a ConfigMap mount is both).
    std::fs::set_permissions(&h.scopes, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dir = h.scopes.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let r = call(
        &h,
        "POST",
        "12/job_token_scope/allowlist",
        MAINTAINER,
        Some(json!({"target_project_id": 30})),
    )
    .await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("managed elsewhere"));
    assert_eq!(file(&h), before);
    // Reading still works.
    let r = call(&h, "GET", "12/job_token_scope/allowlist", MAINTAINER, None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_failed_write_changes_nothing() {
    let h = managed().await;
    let before = file(&h);
    let generation = h.gw.admin_state.policy.load().generation;
    let writer = &h.gw.manager.as_ref().unwrap().writer;
    for point in [FailPoint::BeforeWrite, FailPoint::BeforeRename] {
        writer.inject_fault(Some(point));
        let r = call(
            &h,
            "PATCH",
            "12/job_token_scope",
            MAINTAINER,
            Some(json!({"enabled": true})),
        )
        .await;
        assert_eq!(r.status, 500, "{}", r.text());
        assert!(r.text().contains("not changed"), "{}", r.text());
        assert_eq!(file(&h), before);
        assert_eq!(h.gw.admin_state.policy.load().generation, generation);
        assert_eq!(other_on_app(&h).await, 200);
    }
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(h.scopes.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    writer.inject_fault(None);
    let r = call(
        &h,
        "PATCH",
        "12/job_token_scope",
        MAINTAINER,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(other_on_app(&h).await, 403);
}

#[tokio::test]
async fn edits_made_on_disk_meanwhile_are_kept() {
    let h = managed().await;
    // Ops add a project to the file and do not reload.
    let edited = format!(
        "{MANAGED}\n# added by ops, not reloaded yet\n[[project]]\nid = 40\npath = \"globex/secret\"\n"
    );
    std::fs::write(&h.scopes, &edited).unwrap();
    let r = call(
        &h,
        "POST",
        "12/job_token_scope/allowlist",
        MAINTAINER,
        Some(json!({"target_project_id": 30})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let text = file(&h);
    assert!(text.contains("# added by ops, not reloaded yet"), "{text}");
    assert!(text.contains("allow = [\"acme/deploy-bot\", 30]"), "{text}");
    // Both are in force.
    let policy = &h.gw.admin_state.policy.load().policy;
    assert!(policy
        .project(&scopegate::project::ProjectRef::Id(40))
        .is_some());
    // A file broken on disk is not edited further: 500, and it stays as ops left it.
    std::fs::write(&h.scopes, "[[project]\n").unwrap();
    let r = call(
        &h,
        "DELETE",
        "12/job_token_scope/allowlist/30",
        MAINTAINER,
        None,
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(file(&h), "[[project]\n");
    assert_eq!(other_on_app(&h).await, 200);
}

#[tokio::test]
async fn the_authorization_log_is_readable_by_maintainers_and_ops() {
    let h = managed().await;
    for _ in 0..3 {
        assert_eq!(other_on_app(&h).await, 200);
    }
    let r = h
        .get("/api/v4/projects/12/merge_requests", &[("JOB-TOKEN", BOT)])
        .await;
    assert_eq!(r.status, 200);
    call(
        &h,
        "PATCH",
        "12/job_token_scope",
        MAINTAINER,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(other_on_app(&h).await, 403);
    h.gw.authlog.flush().await;

    let r = call(
        &h,
        "GET",
        "12/job_token_scope/authorizations",
        MAINTAINER,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-total"], "2");
    let list = r.json();
    let globex = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["origin_project"]["id"] == 30)
        .unwrap();
    assert_eq!(
        globex["origin_project"]["path_with_namespace"],
        "globex/tool"
    );
    assert_eq!(
        (globex["allowed"].as_u64(), globex["denied"].as_u64()),
        (Some(3), Some(1))
    );
    assert!(globex["first_seen_at"].as_str().unwrap().ends_with('Z'));
    // A Developer may not read it.
    let r = call(
        &h,
        "GET",
        "12/job_token_scope/authorizations",
        DEVELOPER,
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    // Ops read every pair on the admin listener.
    let r = h
        .send("GET", &h.admin_url("/-/authorizations"), &[], Bytes::new())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-total"], "2");
    let r = h
        .send(
            "GET",
            &h.admin_url("/-/authorizations?target=acme/app&per_page=1"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert_eq!(r.headers["x-total-pages"], "2");
}
