//! Differential suite (issue 4 item 5): the gateway in front of a model forge that reads
//! credentials and targets the way GitLab does (`common/model_forge.rs`, no scopes of its
//! own), hit with well over a thousand generated request variants written as raw HTTP/1.1
//! bytes over TCP, so that no client library tidies them.
//!
//! The invariant: **the forge never serves a job-token request whose (origin, target) the
//! policy denies.** The policy is the scope file the gateway runs, loaded again with
//! `scope::load_str` and asked with `decide::decide` about each (origin, target) the model
//! forge recorded. The canonical allowed forms (numeric id, encoded path, other letter case,
//! Git and LFS routes, registry pulls, and a real `git clone`) must still go through.
//!
//! The model runs in two dialects (`OLD`: Rack 2 `;` splitting, Rack 2 key names, older Puma
//! folding `JOB_TOKEN`, a front proxy resolving dot segments, Grape's `.json` suffix; `NEW`:
//! Rack 3, Puma 6.4.3+, the raw path). Every variant goes through both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/model_forge.rs"]
mod model_forge;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::scopes::MATRIX;
use common::{APP, BOT, LEGACY_BOT, OTHER};
use model_forge::{Dialect, Group, Job, ModelForge, Project, RawRequest, World, NEW, OLD, PAT};
use scopegate::decide::{decide, Decision, Mode};
use scopegate::policy::Policy;
use scopegate::project::ProjectIdentity;
use scopegate::settings::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The job token of acme/vault (40), the renamed project.
const VAULT_CI: &str = "glcbt-vault-job-token-0040";

/// acme/vault (40) was renamed from acme/secrets: GitLab keeps the old path as a redirect.
const OLD_VAULT: &str = "acme/secrets";

fn world() -> World {
    let p = |id, path, old_paths| Project {
        id,
        path,
        old_paths,
    };
    World {
        projects: vec![
            p(10, "acme/deploy-bot", &[]),
            p(12, "acme/app", &[]),
            p(14, "acme/legacy", &[]),
            p(16, "acme/rollout", &[]),
            p(20, "acme/platform/ci", &[]),
            p(21, "acme/platform/sub/tooling", &[]),
            p(30, "globex/tool", &[]),
            p(40, "acme/vault", &[OLD_VAULT]),
            // Created with capitals; looked up in any letter case.
            p(41, "Globex/Public-Lib", &[]),
            // A project whose name ends in `.wiki` (a valid GitLab path) next to an open one
            // without the suffix: `/acme/notes.wiki.git` is *this* project for the forge
            // (`Gitlab::RepoPath.parse` tries the literal path first).
            p(43, "acme/notes.wiki", &[]),
            p(44, "acme/notes", &[]),
            p(45, "acme/board.design", &[]),
        ],
        groups: vec![
            Group {
                id: 100,
                path: "acme",
            },
            Group {
                id: 101,
                path: "acme/platform",
            },
            Group {
                id: 102,
                path: "globex",
            },
        ],
        jobs: vec![
            Job {
                token: BOT,
                id: 1001,
                project: 10,
            },
            Job {
                token: APP,
                id: 1002,
                project: 12,
            },
            Job {
                token: OTHER,
                id: 1004,
                project: 30,
            },
            Job {
                token: LEGACY_BOT,
                id: 1005,
                project: 10,
            },
            Job {
                token: VAULT_CI,
                id: 1040,
                project: 40,
            },
        ],
    }
}

/// MATRIX plus the renamed project (inbound-limited, nobody allowed in) and an open project
/// listed in lower case. `open_defaults` switches `[defaults]` off (not the shipped default).
fn scopes(open_defaults: bool) -> String {
    let base = if open_defaults {
        MATRIX.replacen(
            "outbound = true\ninbound = true",
            "outbound = false\ninbound = false",
            1,
        )
    } else {
        MATRIX.to_string()
    };
    assert_ne!(
        base.contains("[defaults]\noutbound = false"),
        !open_defaults,
        "the defaults block was rewritten as intended"
    );
    format!(
        r#"{base}
[[project]]
id = 40
path = "acme/vault"
[project.outbound]
enabled = false
[project.inbound]
enabled = true

[[project]]
id = 41
path = "globex/public-lib"
[project.outbound]
enabled = false
[project.inbound]
enabled = false

[[project]]
id = 43
path = "acme/notes.wiki"
[project.outbound]
enabled = false
[project.inbound]
enabled = true

[[project]]
id = 44
path = "acme/notes"
[project.outbound]
enabled = false
[project.inbound]
enabled = false

[[project]]
id = 45
path = "acme/board.design"
[project.outbound]
enabled = false
[project.inbound]
enabled = true
"#
    )
}

// ---------------------------------------------------------------------------------------------
// The rig: model forge + gateway in-process.

struct Rig {
    forge: ModelForge,
    gw: scopegate::Running,
    policy: Policy,
    world: World,
    dialect: Dialect,
    _dir: tempfile::TempDir,
}

async fn rig(dialect: Dialect, scope_text: &str, git_root: Option<PathBuf>) -> Rig {
    rig_with(dialect, scope_text, git_root, None).await
}

/// `lookup`: the gateway resolves unlisted Git/LFS/web paths with this credential of its own
/// (in `lookup_token_file`; the model knows only its personal access token).
async fn rig_with(
    dialect: Dialect,
    scope_text: &str,
    git_root: Option<PathBuf>,
    lookup: Option<&str>,
) -> Rig {
    let world = world();
    let forge = ModelForge::start(world.clone(), dialect, git_root).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scopes.toml");
    std::fs::write(&path, scope_text).unwrap();
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        upstream: Some(forge.url()),
        scopes: Some(path),
        state_dir: dir.path().join("state"),
        lookup_token_file: lookup.map(|token| {
            let file = dir.path().join("lookup-token");
            std::fs::write(&file, format!("{token}\n")).unwrap();
            file
        }),
        ..Settings::default()
    };
    let gw = scopegate::start(settings).await.unwrap();
    let policy = scopegate::scope::load_str("scopes.toml", scope_text, &Default::default())
        .unwrap()
        .policy;
    Rig {
        forge,
        gw,
        policy,
        world,
        dialect,
        _dir: dir,
    }
}

/// What the policy says about the real projects (id and current path, as the forge knows
/// them).
fn policy_decision(policy: &Policy, world: &World, origin: u64, target: u64) -> Decision {
    let ident = |id: u64| ProjectIdentity {
        id: Some(id),
        path: world
            .project(id)
            .map(|p| p.path.to_ascii_lowercase().into()),
    };
    decide(policy, Mode::Enforce, &ident(origin), &ident(target))
}

// ---------------------------------------------------------------------------------------------
// Variants.

type Headers = Vec<(String, String)>;
/// (origin, target) project ids.
type Pair = (u64, u64);

#[derive(Clone, Debug)]
enum Expect {
    /// No expectation beyond the invariant.
    Any,
    /// A canonical allowed form: the gateway passes it and the forge serves (origin, target).
    Served(u64, u64),
}

#[derive(Clone, Debug)]
struct Variant {
    class: &'static str,
    label: String,
    method: String,
    /// The request-target exactly as written on the wire (origin- or absolute-form; `{host}`
    /// is replaced by the gateway's address).
    target: String,
    headers: Vec<(String, String)>,
    expect: Expect,
    /// The whole request bytes, when the variant is about framing (`{host}` and `{id}` are
    /// filled in); `method`, `target` and `headers` are then only for the label.
    raw: Option<String>,
}

impl Variant {
    fn bytes(&self, id: usize, host: SocketAddr) -> Vec<u8> {
        if let Some(raw) = &self.raw {
            return raw
                .replace("{host}", &host.to_string())
                .replace("{id}", &id.to_string())
                .into_bytes();
        }
        let target = self.target.replace("{host}", &host.to_string());
        let mut out = format!("{} {} HTTP/1.1\r\nHost: {host}\r\n", self.method, target);
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str(&format!(
            "X-Variant: {id}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        out.into_bytes()
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn h(n: &str, v: impl Into<String>) -> (String, String) {
    (n.to_string(), v.into())
}

/// Percent-encode every byte of `s`.
fn enc_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Percent-encode the first character.
fn enc_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => format!("%{:02x}{}", f as u32, c.as_str()),
        None => String::new(),
    }
}

fn flip_case(s: &str) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// A way of carrying a token: headers and query pieces.
#[derive(Clone)]
struct Carrier {
    name: String,
    headers: Vec<(String, String)>,
    query: Vec<String>,
    /// GitLab reads a job token from it on API routes (not `PRIVATE-TOKEN`, `Deploy-Token`,
    /// another Basic user, Rack-3-only spellings, ...).
    explicit_api: bool,
}

fn carriers(t: &str) -> Vec<Carrier> {
    let hd = |name: &str, n: &str, v: String, api: bool| Carrier {
        name: name.to_string(),
        headers: vec![h(n, v)],
        query: vec![],
        explicit_api: api,
    };
    let q = |name: &str, piece: String, api: bool| Carrier {
        name: name.to_string(),
        headers: vec![],
        query: vec![piece],
        explicit_api: api,
    };
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let nopad = |s: String| base64::engine::general_purpose::STANDARD_NO_PAD.encode(s);
    vec![
        hd("JOB-TOKEN", "JOB-TOKEN", t.into(), true),
        hd("job-token", "job-token", t.into(), true),
        hd("Job-Token", "Job-Token", t.into(), true),
        hd("jOb-tOkEn", "jOb-tOkEn", t.into(), true),
        hd("JOB_TOKEN header", "JOB_TOKEN", t.into(), false),
        hd("job_token header", "job_token", t.into(), false),
        q("job_token", format!("job_token={t}"), true),
        q("%6Aob_token", format!("%6Aob_token={t}"), true),
        q("job%5Ftoken", format!("job%5Ftoken={t}"), true),
        q("job%5ftoken", format!("job%5ftoken={t}"), true),
        q("[job_token]", format!("[job_token]={t}"), false),
        q("job_token]", format!("job_token]={t}"), false),
        q("job_token[]", format!("job_token[]={t}"), false),
        q("job_token[x]", format!("job_token[x]={t}"), false),
        q(
            "job_token=%67…",
            format!("job_token={}", enc_first(t)),
            true,
        ),
        q(
            "job_token=all %XX",
            format!("job_token={}", enc_all(t)),
            true,
        ),
        q("job_token+space", format!("job_token=+{t}"), false),
        q("token", format!("token={t}"), true),
        q("%74oken", format!("%74oken={t}"), true),
        q("access_token", format!("access_token={t}"), true),
        q("bearer_token", format!("bearer_token={t}"), true),
        q("private_token", format!("private_token={t}"), false),
        q("Job_Token (case)", format!("Job_Token={t}"), false),
        hd("Basic", "Authorization", basic("gitlab-ci-token", t), true),
        hd(
            "basic lower",
            "authorization",
            format!("basic {}", b64(format!("gitlab-ci-token:{t}"))),
            true,
        ),
        hd(
            "BASIC spaces",
            "AUTHORIZATION",
            format!("BASIC   {} ", b64(format!("gitlab-ci-token:{t}"))),
            true,
        ),
        hd(
            "Basic no padding",
            "Authorization",
            format!("Basic {}", nopad(format!("gitlab-ci-token:{t}"))),
            true,
        ),
        hd(
            "Basic other user",
            "Authorization",
            basic("ci-bot", t),
            false,
        ),
        hd(
            "Basic GITLAB-CI-TOKEN",
            "Authorization",
            basic("GITLAB-CI-TOKEN", t),
            false,
        ),
        hd(
            "Basic junk chars",
            "Authorization",
            format!(
                "Basic {}",
                b64(format!("gitlab-ci-token:{t}"))
                    .as_bytes()
                    .chunks(4)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
                    .join(".")
            ),
            true,
        ),
        hd(
            "Basic, '=' then more",
            "Authorization",
            format!(
                "Basic {}=={}",
                b64(format!("gitlab-ci-token:{t}")).trim_end_matches('='),
                b64(format!("gitlab-ci-token:{OTHER}"))
            ),
            false,
        ),
        hd("Bearer", "Authorization", format!("Bearer {t}"), true),
        hd(
            "Bearer two spaces",
            "Authorization",
            format!("Bearer  {t}"),
            false,
        ),
        hd("Bearer tab", "Authorization", format!("Bearer\t{t}"), false),
        hd("Token scheme", "Authorization", format!("Token {t}"), false),
        hd("bare Authorization", "Authorization", t.to_string(), false),
        hd("bearer lower", "authorization", format!("bearer {t}"), true),
        hd("BEARER", "Authorization", format!("BEARER {t}"), true),
        hd("PRIVATE-TOKEN", "PRIVATE-TOKEN", t.into(), false),
        hd("private-token", "private-token", t.into(), false),
        hd("Deploy-Token", "Deploy-Token", t.into(), false),
    ]
}

fn with_query(path: &str, pieces: &[String]) -> String {
    if pieces.is_empty() {
        return path.to_string();
    }
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{}", pieces.join("&"))
}

#[derive(Default)]
struct Gen {
    out: Vec<Variant>,
}

impl Gen {
    fn push(
        &mut self,
        class: &'static str,
        label: impl Into<String>,
        method: &str,
        target: impl Into<String>,
        headers: Vec<(String, String)>,
        expect: Expect,
    ) {
        self.out.push(Variant {
            class,
            label: label.into(),
            method: method.to_string(),
            target: target.into(),
            headers,
            expect,
            raw: None,
        });
    }

    fn raw(&mut self, class: &'static str, label: impl Into<String>, raw: String, expect: Expect) {
        self.out.push(Variant {
            class,
            label: label.into(),
            method: String::new(),
            target: String::new(),
            headers: vec![],
            expect,
            raw: Some(raw),
        });
    }
}

/// (token, origin project) pairs used as the request's job token.
const ORIGINS: [(&str, u64); 2] = [(BOT, 10), (OTHER, 30)];

/// Project API targets: (id, current path, a path that names it).
fn api_targets() -> Vec<(u64, &'static str)> {
    vec![
        (12, "acme/app"),
        (30, "globex/tool"),
        (16, "acme/rollout"),
        (20, "acme/platform/ci"),
        (40, "acme/vault"),
        (41, "Globex/Public-Lib"),
    ]
}

fn allowed_limited(origin: u64, target: u64) -> bool {
    // The policy's answers for the canonical expectations below (checked against
    // `decide` in `canonical_expectations_match_the_policy`).
    matches!(
        (origin, target),
        (10, 10)
            | (10, 12)
            | (10, 14)
            | (10, 21)
            | (30, 30)
            | (30, 10)
            | (30, 14)
            | (30, 41)
            | (30, 44)
            | (40, 44)
            | (30, 21)
            | (40, 40)
            | (40, 10)
            | (40, 14)
            | (40, 21)
            | (40, 41)
    )
}

fn generate() -> Vec<Variant> {
    let mut g = Gen::default();
    let mr = |id: &str| format!("/api/v4/projects/{id}/merge_requests");

    // 1. Every carrier, one at a time, by numeric id.
    for (tok, origin) in ORIGINS {
        for c in carriers(tok) {
            for target in [12u64, 30, 41, 16] {
                let expect = if c.explicit_api && allowed_limited(origin, target) {
                    Expect::Served(origin, target)
                } else {
                    Expect::Any
                };
                g.push(
                    "carrier",
                    format!("{} origin {origin} → {target}", c.name),
                    "GET",
                    with_query(&mr(&target.to_string()), &c.query),
                    c.headers.clone(),
                    expect,
                );
            }
        }
    }
    // A prefix-less (pre-16.9) job token in every carrier.
    for c in carriers(LEGACY_BOT) {
        for target in [12u64, 30] {
            g.push(
                "carrier",
                format!("legacy token, {} → {target}", c.name),
                "GET",
                with_query(&mr(&target.to_string()), &c.query),
                c.headers.clone(),
                Expect::Any,
            );
        }
    }

    // 2. Two carriers at once: same token, and two different tokens.
    let pick = [
        "JOB-TOKEN",
        "JOB_TOKEN header",
        "job_token",
        "[job_token]",
        "token",
        "access_token",
        "bearer_token",
        "private_token",
        "Basic",
        "Bearer",
        "PRIVATE-TOKEN",
        "Basic other user",
    ];
    let by_name = |tok: &str, name: &str| {
        carriers(tok)
            .into_iter()
            .find(|c| c.name == name)
            .expect("carrier exists")
    };
    for (i, a) in pick.iter().enumerate() {
        for b in &pick[i + 1..] {
            // Authorization cannot carry two schemes on one header line.
            let both_auth = a.starts_with("Basic") || a.starts_with("Bearer");
            let both_auth = both_auth && (b.starts_with("Basic") || b.starts_with("Bearer"));
            for (t1, t2, what) in [
                (BOT, BOT, "same"),
                (BOT, OTHER, "bot+other"),
                (OTHER, BOT, "other+bot"),
            ] {
                for target in [12u64, 30] {
                    let (c1, c2) = (by_name(t1, a), by_name(t2, b));
                    let mut headers = c1.headers.clone();
                    headers.extend(c2.headers.clone());
                    let mut query = c1.query.clone();
                    query.extend(c2.query.clone());
                    g.push(
                        if both_auth {
                            "carrier-dup"
                        } else {
                            "carrier-combo"
                        },
                        format!("{a} + {b} ({what}) → {target}"),
                        "GET",
                        with_query(&mr(&target.to_string()), &query),
                        headers,
                        Expect::Any,
                    );
                }
            }
        }
    }
    // Three at once, and duplicates of one carrier.
    for target in [12u64, 30] {
        let path = mr(&target.to_string());
        let dups: Vec<(String, Vec<String>, Headers)> = vec![
            (
                "job_token twice &".into(),
                vec![format!("job_token={BOT}"), format!("job_token={OTHER}")],
                vec![],
            ),
            (
                "job_token twice ;".into(),
                vec![format!("job_token={BOT};job_token={OTHER}")],
                vec![],
            ),
            (
                "job_token twice '; '".into(),
                vec![format!("job_token={OTHER}; job_token={BOT}")],
                vec![],
            ),
            (
                "x=1;job_token".into(),
                vec![format!("x=1;job_token={OTHER}")],
                vec![],
            ),
            (
                "job_token empty then set".into(),
                vec!["job_token=".into(), format!("job_token={OTHER}")],
                vec![],
            ),
            (
                "job_token set then empty".into(),
                vec![format!("job_token={OTHER}"), "job_token=".into()],
                vec![],
            ),
            (
                "job_token blank, token set".into(),
                vec!["job_token=+".into(), format!("token={OTHER}")],
                vec![h("JOB-TOKEN", BOT)],
            ),
            (
                "job_token without =, token".into(),
                vec!["job_token".into(), format!("token={OTHER}")],
                vec![],
            ),
            (
                "token twice".into(),
                vec![format!("token={BOT}"), format!("token={OTHER}")],
                vec![],
            ),
            (
                "access_token twice".into(),
                vec![
                    format!("access_token={BOT}"),
                    format!("access_token={OTHER}"),
                ],
                vec![],
            ),
            (
                "job_token + job_token[]".into(),
                vec![format!("job_token={BOT}"), format!("job_token[]={OTHER}")],
                vec![],
            ),
            (
                "[job_token] after job_token".into(),
                vec![format!("job_token={BOT}"), format!("[job_token]={OTHER}")],
                vec![],
            ),
            (
                "JOB-TOKEN twice".into(),
                vec![],
                vec![h("JOB-TOKEN", BOT), h("JOB-TOKEN", OTHER)],
            ),
            (
                "JOB-TOKEN twice, same".into(),
                vec![],
                vec![h("JOB-TOKEN", OTHER), h("job-token", OTHER)],
            ),
            (
                "JOB-TOKEN + JOB_TOKEN".into(),
                vec![],
                vec![h("JOB-TOKEN", BOT), h("JOB_TOKEN", OTHER)],
            ),
            (
                "JOB_TOKEN + JOB-TOKEN".into(),
                vec![],
                vec![h("JOB_TOKEN", OTHER), h("JOB-TOKEN", BOT)],
            ),
            (
                "empty JOB-TOKEN + token".into(),
                vec![format!("token={OTHER}")],
                vec![h("JOB-TOKEN", "")],
            ),
            (
                "PAT header + JOB-TOKEN".into(),
                vec![],
                vec![h("PRIVATE-TOKEN", PAT), h("JOB-TOKEN", OTHER)],
            ),
            (
                "PAT bearer + job_token".into(),
                vec![format!("job_token={OTHER}")],
                vec![h("Authorization", format!("Bearer {PAT}"))],
            ),
            (
                "prefixed private_token + JOB-TOKEN".into(),
                vec![format!("private_token={BOT}")],
                vec![h("JOB-TOKEN", OTHER)],
            ),
            (
                "three carriers, one token".into(),
                vec![format!("job_token={OTHER}"), format!("token={OTHER}")],
                vec![h("JOB-TOKEN", OTHER)],
            ),
            (
                "three carriers, legacy + prefixed".into(),
                vec![format!("access_token={LEGACY_BOT}")],
                vec![
                    h("JOB-TOKEN", OTHER),
                    h("Authorization", basic("gitlab-ci-token", OTHER)),
                ],
            ),
            (
                "two Authorization lines".into(),
                vec![],
                vec![
                    h("Authorization", format!("Bearer {BOT}")),
                    h("Authorization", basic("gitlab-ci-token", OTHER)),
                ],
            ),
        ];
        for (name, query, headers) in dups {
            g.push(
                "carrier-dup",
                format!("{name} → {target}"),
                "GET",
                with_query(&path, &query),
                headers,
                Expect::Any,
            );
        }
    }

    // 3. The `:id` of the project API, every way it can be written.
    for (tok, origin) in ORIGINS {
        for (id, path) in api_targets() {
            let n = id.to_string();
            let lower = path.to_ascii_lowercase();
            let enc = |p: &str| p.replace('/', "%2F");
            let mut forms: Vec<(String, String, bool)> = vec![
                ("numeric".into(), n.clone(), true),
                ("leading zeros".into(), format!("00{n}"), false),
                ("negative".into(), format!("-{n}"), false),
                ("plus".into(), format!("+{n}"), false),
                ("numeric.json".into(), format!("{n}.json"), false),
                (
                    "numeric %0A path".into(),
                    format!("{n}%0A{}", enc(&lower)),
                    false,
                ),
                (
                    "path %0A numeric".into(),
                    format!("{}%0A{n}", enc(&lower)),
                    false,
                ),
                ("%2F".into(), enc(path), true),
                ("%2f".into(), path.replace('/', "%2f"), true),
                ("lower case".into(), enc(&lower), true),
                ("upper case".into(), enc(&path.to_ascii_uppercase()), true),
                ("mixed case".into(), enc(&flip_case(path)), true),
                ("first letter %xx".into(), enc(&enc_first(path)), false),
                ("every byte %XX".into(), enc_all(path), false),
                ("double-encoded".into(), path.replace('/', "%252F"), false),
                ("path.json".into(), format!("{}.json", enc(path)), false),
                ("unencoded slash".into(), path.to_string(), false),
                (
                    "encoded dot segment".into(),
                    format!("{}%2F..%2F{}", enc(path), enc("globex/tool")),
                    false,
                ),
            ];
            if id == 40 {
                forms.push(("old path".into(), enc(OLD_VAULT), false));
                forms.push((
                    "old path, upper".into(),
                    enc(&OLD_VAULT.to_uppercase()),
                    false,
                ));
            }
            for (form, raw, canonical) in forms {
                for suffix in ["", "/merge_requests"] {
                    for method in ["GET", "POST", "HEAD"] {
                        // Every method for the shape-sensitive forms, GET for the rest.
                        if method != "GET" && !(form.contains("old") || form == "numeric") {
                            continue;
                        }
                        let expect = if canonical && method == "GET" && allowed_limited(origin, id)
                        {
                            Expect::Served(origin, id)
                        } else {
                            Expect::Any
                        };
                        g.push(
                            "id-form",
                            format!("{method} {form} {path}{suffix} by {origin}"),
                            method,
                            format!("/api/v4/projects/{raw}{suffix}"),
                            vec![h("JOB-TOKEN", tok)],
                            expect,
                        );
                    }
                }
            }
        }
    }

    // 4. Path shapes: slashes, dot segments, encoded fixed segments, absolute form.
    let shapes = [
        "/api/v4/projects/12/../30",
        "/api/v4/projects/12/%2e%2e/30",
        "/api/v4/projects/12/%2E%2E/30/merge_requests",
        "/api/v4/projects/12/.%2e/30",
        "/api/v4/projects/12/./../30",
        "/api/v4/projects/acme%2Fapp/../30",
        "/api/v4/projects/12/merge_requests/../../30",
        "//api/v4/projects/30",
        "/api/v4//projects/30",
        "/api/v4/projects//30",
        "/api/v4/projects/30/",
        "/api/v4/projects/30//",
        "/api/v4/projects/30/merge_requests/",
        "/api/v4/./projects/30",
        "/./api/v4/projects/30",
        "/api/v4/%70rojects/30",
        "/%61pi/v4/projects/30",
        "/api/%76%34/projects/30",
        "/api/v4/projects%2F30",
        "/api%2Fv4%2Fprojects%2F30",
        "/API/v4/projects/30",
        "/api/V4/projects/30",
        "/api/v4/Projects/30",
        "/api/v3/projects/30",
        "/api/v4/projects/12?id=30",
        "/api/v4/projects/30?id=12",
        "/api/v4/projects/12%2F..%2F30",
        "/api/v4/projects/acme%2Fapp%2F..%2F..%2Fglobex%2Ftool",
        "/api/v4/projects/30;12",
        "/api/v4/projects/12;/../30",
        "/api/v4/projects/12\\..\\30",
        "/api/v4/projects/%2e%2e%2F30",
        "/api/v4/projects/30%00",
        "/api/v4/projects/30%0A",
        "/api/v4/projects/globex%2Ftool%00",
        "/api/v4/projects/globex%2Ftool%20",
        "/api/v4/projects/%20globex%2Ftool",
        "/api/v4/projects/globex%2F%2Ftool",
        "/api/v4/projects/globex%2Ftool%2F",
        "/api/v4/projects/%2Fglobex%2Ftool",
        "/api/v4/projects/globex%5Ctool",
        "/api/v4/projects/99999999999999999999999",
        "/api/v4/projects/30?job_token=x",
        "http://{host}/api/v4/projects/30",
        "http://{host}/api/v4/projects/globex%2Ftool",
        "http://{host}/api/v4/projects/12/../30",
        "http://other.example/api/v4/projects/30",
        "HTTP://{host}/api/v4/projects/30",
        "http://{host}//api/v4/projects/30",
        "http://{host}/api/v4/projects/30?x=1",
    ];
    for shape in shapes {
        for (tok, origin) in ORIGINS {
            for method in ["GET", "POST"] {
                g.push(
                    "path-shape",
                    format!("{method} {shape} by {origin}"),
                    method,
                    shape,
                    vec![h("JOB-TOKEN", tok)],
                    Expect::Any,
                );
            }
        }
    }
    for (target, expect) in [
        ("http://{host}/api/v4/projects/12", Expect::Served(10, 12)),
        (
            "http://{host}/api/v4/projects/acme%2Fapp",
            Expect::Served(10, 12),
        ),
        (
            "/api/v4/projects/12/merge_requests?per_page=1",
            Expect::Served(10, 12),
        ),
    ] {
        g.push(
            "path-shape",
            format!("canonical {target}"),
            "GET",
            target,
            vec![h("JOB-TOKEN", BOT)],
            expect,
        );
    }

    // 5. Git smart HTTP and LFS, every repository spelling.
    let repos: [(u64, &str); 10] = [
        (43, "acme/notes.wiki"),
        (44, "acme/notes"),
        (45, "acme/board.design"),
        (12, "acme/app"),
        (30, "globex/tool"),
        (40, "acme/vault"),
        (40, OLD_VAULT),
        (41, "Globex/Public-Lib"),
        (20, "acme/platform/ci"),
        (14, "acme/legacy"),
    ];
    let sha = "a".repeat(64);
    for (tok, origin) in ORIGINS {
        let auth = vec![h("Authorization", basic("gitlab-ci-token", tok))];
        for (id, p) in repos {
            let up = p.to_ascii_uppercase();
            let lower = p.to_ascii_lowercase();
            let canon = |form: &str| {
                // Canonical forms: the current path (any case), not an old one.
                p != OLD_VAULT && allowed_limited(origin, id) && !form.is_empty()
            };
            let forms: Vec<(&str, &str, String, bool)> = vec![
                (
                    "info/refs",
                    "GET",
                    format!("/{p}.git/info/refs?service=git-upload-pack"),
                    canon("y"),
                ),
                (
                    "upload-pack",
                    "POST",
                    format!("/{p}.git/git-upload-pack"),
                    canon("y"),
                ),
                (
                    "receive-pack",
                    "POST",
                    format!("/{p}.git/git-receive-pack"),
                    false,
                ),
                (
                    "upper case",
                    "GET",
                    format!("/{up}.git/info/refs?service=git-upload-pack"),
                    canon("y"),
                ),
                (
                    "lower case",
                    "GET",
                    format!("/{lower}.git/info/refs?service=git-upload-pack"),
                    canon("y"),
                ),
                (
                    ".GIT",
                    "GET",
                    format!("/{p}.GIT/info/refs?service=git-upload-pack"),
                    false,
                ),
                (".Git", "POST", format!("/{p}.Git/git-upload-pack"), false),
                (
                    ".wiki.git",
                    "GET",
                    format!("/{p}.wiki.git/info/refs?service=git-upload-pack"),
                    false,
                ),
                (
                    ".design.git",
                    "GET",
                    format!("/{p}.design.git/info/refs"),
                    false,
                ),
                (
                    ".WIKI.git",
                    "GET",
                    format!("/{p}.WIKI.git/info/refs"),
                    false,
                ),
                (
                    ".Design.git",
                    "POST",
                    format!("/{p}.Design.git/git-upload-pack"),
                    false,
                ),
                (
                    ".wiki.wiki.git",
                    "GET",
                    format!("/{p}.wiki.wiki.git/info/refs"),
                    false,
                ),
                (
                    "snippet",
                    "GET",
                    format!("/{p}/snippets/1.git/info/refs"),
                    false,
                ),
                (
                    "no .git",
                    "GET",
                    format!("/{p}/info/refs?service=git-upload-pack"),
                    false,
                ),
                (
                    "%2F",
                    "GET",
                    format!("/{}.git/info/refs", p.replace('/', "%2F")),
                    false,
                ),
                (
                    "first letter %xx",
                    "GET",
                    format!("/{}.git/info/refs", enc_first(p)),
                    false,
                ),
                (".git %2e", "GET", format!("/{p}%2Egit/info/refs"), false),
                (
                    "trailing slash",
                    "GET",
                    format!("/{p}.git/info/refs/"),
                    false,
                ),
                ("leading //", "GET", format!("//{p}.git/info/refs"), false),
                (
                    "inner //",
                    "POST",
                    format!("/{p}.git//git-upload-pack"),
                    false,
                ),
                ("dot segment", "GET", format!("/{p}.git/./info/refs"), false),
                (
                    "dot-dot prefix",
                    "GET",
                    format!("/acme/x/../../{p}.git/info/refs"),
                    false,
                ),
                (
                    "dot-dot repo",
                    "GET",
                    format!("/acme/app.git/../../{p}.git/info/refs"),
                    false,
                ),
                (
                    "two .git",
                    "GET",
                    format!("/acme/app.git/{p}.git/info/refs"),
                    false,
                ),
                (
                    "absolute form",
                    "GET",
                    format!("http://{{host}}/{p}.git/info/refs"),
                    false,
                ),
                (
                    "lfs batch",
                    "POST",
                    format!("/{p}.git/info/lfs/objects/batch"),
                    canon("y"),
                ),
                (
                    "lfs batch upper",
                    "POST",
                    format!("/{up}.git/info/lfs/objects/batch"),
                    canon("y"),
                ),
                (
                    "lfs objects",
                    "POST",
                    format!("/{p}.git/info/lfs/objects"),
                    false,
                ),
                (
                    "lfs object",
                    "GET",
                    format!("/{p}.git/info/lfs/objects/{sha}"),
                    false,
                ),
                (
                    "lfs locks",
                    "GET",
                    format!("/{p}.git/info/lfs/locks"),
                    false,
                ),
                (
                    "lfs storage",
                    "GET",
                    format!("/{p}.git/gitlab-lfs/objects/{sha}"),
                    canon("y"),
                ),
                (
                    "lfs upload",
                    "PUT",
                    format!("/{p}.git/gitlab-lfs/objects/{sha}/12"),
                    false,
                ),
                (
                    "lfs .GIT",
                    "POST",
                    format!("/{p}.GIT/info/lfs/objects/batch"),
                    false,
                ),
                (
                    "lfs dot-dot",
                    "POST",
                    format!("/acme/app.git/info/lfs/../../../{p}.git/info/lfs/objects/batch"),
                    false,
                ),
            ];
            for (form, method, target, canonical) in forms {
                let expect = if canonical {
                    Expect::Served(origin, id)
                } else {
                    Expect::Any
                };
                let class = if form.starts_with("lfs") {
                    "lfs"
                } else {
                    "git"
                };
                g.push(
                    class,
                    format!("{method} {form} {p} by {origin}"),
                    method,
                    target.clone(),
                    auth.clone(),
                    expect,
                );
            }
            // Other carriers on a Git route (GitLab reads Basic only there).
            for c in ["JOB-TOKEN", "job_token", "Bearer", "Basic other user"] {
                let c = by_name(tok, c);
                g.push(
                    "git",
                    format!("{} on info/refs {p} by {origin}", c.name),
                    "GET",
                    with_query(&format!("/{p}.git/info/refs"), &c.query),
                    c.headers.clone(),
                    Expect::Any,
                );
            }
        }
    }

    // 6. Registry token requests.
    let images: [(u64, &str); 8] = [
        (12, "acme/app"),
        (12, "acme/app/img"),
        (12, "ACME/App/a/b"),
        (30, "globex/tool"),
        (30, "globex/tool/img/sub"),
        (40, "acme/vault"),
        (40, OLD_VAULT),
        (10, "acme/deploy-bot/cache"),
    ];
    for (tok, origin) in ORIGINS {
        let auth = vec![h("Authorization", basic("gitlab-ci-token", tok))];
        for (id, image) in images {
            let pull_ok = image != OLD_VAULT && allowed_limited(origin, id);
            let own = id == origin;
            let queries: Vec<(String, bool)> = vec![
                (format!("service=container_registry&scope=repository:{image}:pull"), pull_ok),
                (format!("service=container_registry&scope=repository:{image}:push"), own),
                (format!("service=container_registry&scope=repository:{image}:pull,push"), pull_ok),
                (format!("service=container_registry&scope=repository:{image}:*"), own),
                (format!("service=container_registry&scope=repository:{image}:delete"), false),
                (format!("service=container_registry;scope=repository:{image}:pull"), false),
                (format!("scope=repository:{image}:pull;service=container_registry"), false),
                (format!("service=container_registry&scope=repository%3A{}%3Apull", image.replace('/', "%2F")), false),
                (format!("service=container_registry&scope=repository:acme/deploy-bot:pull+repository:{image}:pull"), false),
                (format!("service=container_registry&scope=repository:acme/deploy-bot:pull%20repository:{image}:push"), false),
                (format!("service=container_registry&scope=repository:acme/deploy-bot:pull&scope=repository:{image}:pull"), false),
                (format!("service=container_registry&scope=repository(plugin):{image}:pull"), false),
                (format!("service=container_registry&scope[]=repository:{image}:pull"), false),
                (format!("service=container_registry&scope=x&scope=repository:{image}:pull"), false),
                (format!("service=container_registry&scope=repository:{image}:pull&service=dependency_proxy"), false),
                (format!("service=dependency_proxy&scope=repository:{image}:pull"), false),
                (format!("service=container%5Fregistry&scope=repository:{image}:pull"), false),
                (format!("%73ervice=container_registry&%73cope=repository:{image}:pull"), false),
            ];
            for (query, canonical) in queries {
                // A scope asking for push is granted by the gateway only on the own project.
                let expect = if canonical && (own || !query.contains("push")) {
                    Expect::Served(origin, id)
                } else {
                    Expect::Any
                };
                for path in ["/jwt/auth", "/jwt/auth/", "/jwt//auth", "/JWT/auth"] {
                    if path != "/jwt/auth" && !query.ends_with(":pull") {
                        continue;
                    }
                    let expect = if path == "/jwt/auth" {
                        expect.clone()
                    } else {
                        Expect::Any
                    };
                    g.push(
                        "registry",
                        format!("{path}?{query} by {origin}"),
                        "GET",
                        format!("{path}?{query}"),
                        auth.clone(),
                        expect,
                    );
                }
            }
            // The same scope with the token in other carriers.
            for c in ["JOB-TOKEN", "job_token", "Bearer"] {
                let c = by_name(tok, c);
                g.push(
                    "registry",
                    format!("{} pull {image} by {origin}", c.name),
                    "GET",
                    with_query(
                        &format!(
                            "/jwt/auth?service=container_registry&scope=repository:{image}:pull"
                        ),
                        &c.query,
                    ),
                    c.headers.clone(),
                    Expect::Any,
                );
            }
        }
    }

    // 7. The other route families: jobs, groups, packages, GraphQL, internal, web.
    let family_paths: Vec<(&str, String, Option<Pair>)> = vec![
        ("GET", "/api/v4/jobs/1001/artifacts".into(), Some((10, 10))),
        ("GET", "/api/v4/jobs/1004/artifacts".into(), Some((30, 30))),
        ("GET", "/api/v4/jobs/1002/trace".into(), None),
        ("GET", "/api/v4/jobs/1040".into(), None),
        ("GET", "/api/v4/jobs/01004/artifacts".into(), None),
        ("GET", "/api/v4/jobs/1004.json".into(), None),
        ("GET", "/api/v4/jobs/%31004/artifacts".into(), None),
        ("GET", "/api/v4/job".into(), None),
        ("GET", "/api/v4/job/".into(), None),
        ("POST", "/api/v4/job".into(), None),
        ("GET", "/api/v4/job/allowed_agents".into(), None),
        ("GET", "/api/v4/job.json".into(), None),
        ("GET", "/api/v4/groups/100/-/packages/npm/x".into(), None),
        ("GET", "/api/v4/groups/102/packages".into(), None),
        ("GET", "/api/v4/groups/globex/packages".into(), None),
        ("GET", "/api/v4/groups/GLOBEX/packages".into(), None),
        (
            "GET",
            "/api/v4/groups/acme%2Fplatform/packages".into(),
            None,
        ),
        ("GET", "/api/v4/packages/npm/@globex/tool".into(), None),
        (
            "GET",
            "/api/v4/packages/maven/com/globex/tool/1.0/tool.jar".into(),
            None,
        ),
        (
            "GET",
            "/api/v4/packages/conan/v1/conans/search".into(),
            None,
        ),
        ("POST", "/api/graphql".into(), None),
        (
            "POST",
            "/api/v4/internal/dast/site_validations/1/transition".into(),
            None,
        ),
        ("POST", "/api/v4/internal/allowed".into(), None),
        ("GET", "/api/v4/projects".into(), None),
        ("GET", "/api/v4/user".into(), None),
        (
            "GET",
            "/acme/app/-/archive/main/app-main.zip".into(),
            Some((10, 12)),
        ),
        (
            "GET",
            "/globex/tool/-/archive/main/tool-main.zip".into(),
            None,
        ),
        ("GET", "/GLOBEX/Tool/-/raw/main/README.md".into(), None),
        (
            "GET",
            "/globex/tool/-/jobs/artifacts/main/download".into(),
            None,
        ),
        (
            "GET",
            "/globex/tool/-/jobs/1004/artifacts/file".into(),
            None,
        ),
        ("GET", "/globex/tool/-/packages".into(), None),
        ("GET", "/globex/tool/-/settings/ci_cd".into(), None),
        ("GET", "/acme/vault/-/archive/main/x.zip".into(), None),
        ("GET", format!("/{OLD_VAULT}/-/archive/main/x.zip"), None),
        ("GET", "/globex%2Ftool/-/archive/main/x.zip".into(), None),
        ("GET", "/groups/globex/-/packages".into(), None),
        (
            "GET",
            "/acme/app/-/../../globex/tool/-/archive/main/x.zip".into(),
            None,
        ),
        (
            "GET",
            "/globex/tool/info/refs?service=git-upload-pack".into(),
            None,
        ),
    ];
    for (tok, origin) in ORIGINS {
        for (method, path, canonical) in &family_paths {
            for c in ["JOB-TOKEN", "job_token", "Basic", "Bearer"] {
                let c = by_name(tok, c);
                let expect = match canonical {
                    Some((o, t)) if *o == origin && c.name == "JOB-TOKEN" => Expect::Served(*o, *t),
                    _ => Expect::Any,
                };
                g.push(
                    "family",
                    format!("{method} {path} with {} by {origin}", c.name),
                    method,
                    with_query(path, &c.query),
                    c.headers.clone(),
                    expect,
                );
            }
        }
    }

    // 8. Framing: pipelining, bodies that look like requests, conflicting lengths, obs-fold,
    // bare LF, HTTP/1.0, and credential headers named in `Connection`.
    for (tok, origin) in ORIGINS {
        let denied = if origin == 10 { 30 } else { 12 };
        let allowed = if origin == 10 { 12 } else { 41 };
        let inner = format!(
            "GET /api/v4/projects/{denied} HTTP/1.1\r\nHost: {{host}}\r\nJOB-TOKEN: {tok}\r\nX-Variant: {{id}}\r\n\r\n"
        );
        let head = |method: &str, path: &str, extra: &str| {
            format!("{method} {path} HTTP/1.1\r\nHost: {{host}}\r\nX-Variant: {{id}}\r\n{extra}")
        };
        let allowed_path = format!("/api/v4/projects/{allowed}/merge_requests");
        let frames: Vec<(&str, String, Expect)> = vec![
            (
                "pipelined: allowed then denied",
                format!(
                    "{}\r\n{}",
                    head("GET", &allowed_path, &format!("JOB-TOKEN: {tok}\r\n")),
                    inner.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
                ),
                Expect::Served(origin, allowed),
            ),
            (
                "pipelined: anonymous then denied",
                format!(
                    "{}\r\n{}",
                    head("GET", &allowed_path, ""),
                    inner.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
                ),
                Expect::Any,
            ),
            (
                "request in a Content-Length body",
                format!(
                    "{}Content-Length: {}\r\nConnection: close\r\n\r\n{inner}",
                    head("POST", &allowed_path, &format!("JOB-TOKEN: {tok}\r\n")),
                    inner.replace("{host}", "127.0.0.1:1").replace("{id}", "0").len()
                ),
                Expect::Any,
            ),
            (
                "chunked + Content-Length with a request after 0",
                format!(
                    "{}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{}",
                    head("POST", &allowed_path, &format!("JOB-TOKEN: {tok}\r\n")),
                    inner.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
                ),
                Expect::Any,
            ),
            (
                "two Content-Lengths",
                format!(
                    "{}Content-Length: 0\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                    head("POST", &format!("/api/v4/projects/{denied}"), &format!("JOB-TOKEN: {tok}\r\n"))
                ),
                Expect::Any,
            ),
            (
                "Transfer-Encoding: xchunked",
                format!(
                    "{}Transfer-Encoding: xchunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
                    head("POST", &format!("/api/v4/projects/{denied}"), &format!("JOB-TOKEN: {tok}\r\n"))
                ),
                Expect::Any,
            ),
            (
                "obs-fold continuation of JOB-TOKEN",
                format!(
                    "{}Connection: close\r\n\r\n",
                    head("GET", &format!("/api/v4/projects/{denied}"), &format!("JOB-TOKEN: x\r\n {tok}\r\n"))
                ),
                Expect::Any,
            ),
            (
                "space before colon",
                format!(
                    "{}Connection: close\r\n\r\n",
                    head("GET", &format!("/api/v4/projects/{denied}"), &format!("JOB-TOKEN : {tok}\r\n"))
                ),
                Expect::Any,
            ),
            (
                "bare LF line endings",
                format!(
                    "GET /api/v4/projects/{denied} HTTP/1.1\nHost: {{host}}\nX-Variant: {{id}}\nJOB-TOKEN: {tok}\nConnection: close\n\n"
                ),
                Expect::Any,
            ),
            (
                "HTTP/1.0",
                format!(
                    "GET /api/v4/projects/{denied} HTTP/1.0\r\nHost: {{host}}\r\nX-Variant: {{id}}\r\nJOB-TOKEN: {tok}\r\n\r\n"
                ),
                Expect::Any,
            ),
            (
                "HTTP/1.0 allowed",
                format!(
                    "GET {allowed_path} HTTP/1.0\r\nHost: {{host}}\r\nX-Variant: {{id}}\r\nJOB-TOKEN: {tok}\r\n\r\n"
                ),
                Expect::Served(origin, allowed),
            ),
            (
                "tab in the request line",
                format!(
                    "GET\t/api/v4/projects/{denied}\tHTTP/1.1\r\nHost: {{host}}\r\nX-Variant: {{id}}\r\nJOB-TOKEN: {tok}\r\nConnection: close\r\n\r\n"
                ),
                Expect::Any,
            ),
            (
                "NUL in a header value",
                format!(
                    "{}Connection: close\r\n\r\n",
                    head("GET", &format!("/api/v4/projects/{denied}"), &format!("JOB-TOKEN: {tok}\0x\r\n"))
                ),
                Expect::Any,
            ),
        ];
        for (name, raw, expect) in frames {
            g.raw("framing", format!("{name} by {origin}"), raw, expect);
        }
        for (conn, creds) in [
            ("JOB-TOKEN", vec![h("JOB-TOKEN", tok)]),
            ("job-token, close", vec![h("job-token", tok)]),
            (
                "Authorization",
                vec![h("Authorization", format!("Bearer {tok}"))],
            ),
            (
                "authorization",
                vec![h("Authorization", basic("gitlab-ci-token", tok))],
            ),
            (
                "PRIVATE-TOKEN",
                vec![h("PRIVATE-TOKEN", PAT), h("JOB-TOKEN", tok)],
            ),
            (
                "JOB-TOKEN",
                vec![
                    h("JOB-TOKEN", tok),
                    h("Authorization", format!("Bearer {tok}")),
                ],
            ),
        ] {
            for target in [allowed, denied] {
                let mut headers = creds.clone();
                headers.push(h("Connection", conn));
                g.push(
                    "connection",
                    format!("Connection: {conn} with {creds:?} → {target}"),
                    "GET",
                    mr(&target.to_string()),
                    headers,
                    Expect::Any,
                );
            }
        }
        // Methods, fragments.
        for (method, path) in [
            ("get", format!("/api/v4/projects/{denied}")),
            ("OPTIONS", format!("/api/v4/projects/{denied}")),
            ("PATCH", format!("/api/v4/projects/{denied}")),
            ("DELETE", format!("/api/v4/projects/{denied}")),
            ("GET", format!("/api/v4/projects/{denied}#x")),
            ("GET", format!("/api/v4/projects/{allowed}#/../{denied}")),
            ("GET", format!("/api/v4/projects/{allowed}?#/../{denied}")),
        ] {
            g.push(
                "path-shape",
                format!("{method} {path} by {origin}"),
                method,
                path,
                vec![h("JOB-TOKEN", tok)],
                Expect::Any,
            );
        }
        for sep in ["%09", "%0A", "%0D%0A", "%0B", "%0C", "++"] {
            g.push(
                "registry",
                format!("scope split on {sep} by {origin}"),
                "GET",
                format!(
                    "/jwt/auth?service=container_registry&scope=repository:acme/deploy-bot:pull{sep}repository:globex/tool:pull{sep}repository:acme/app:pull"
                ),
                vec![h("Authorization", basic("gitlab-ci-token", tok))],
                Expect::Any,
            );
        }
    }

    // 9. The renamed project's old path, by its own job and by others, on every family.
    for (tok, origin) in [(BOT, 10u64), (OTHER, 30), (VAULT_CI, 40), (APP, 12)] {
        let enc_old = OLD_VAULT.replace('/', "%2F");
        let auth = basic("gitlab-ci-token", tok);
        for (method, target, header) in [
            (
                "GET",
                format!("/api/v4/projects/{enc_old}"),
                h("JOB-TOKEN", tok),
            ),
            (
                "HEAD",
                format!("/api/v4/projects/{enc_old}/merge_requests"),
                h("JOB-TOKEN", tok),
            ),
            (
                "POST",
                format!("/api/v4/projects/{enc_old}/pipeline"),
                h("JOB-TOKEN", tok),
            ),
            (
                "PUT",
                format!("/api/v4/projects/{enc_old}/packages/generic/p/1/f"),
                h("JOB-TOKEN", tok),
            ),
            (
                "GET",
                format!("/{OLD_VAULT}.git/info/refs?service=git-upload-pack"),
                h("Authorization", auth.clone()),
            ),
            (
                "POST",
                format!("/{OLD_VAULT}.git/git-upload-pack"),
                h("Authorization", auth.clone()),
            ),
            (
                "POST",
                format!("/{}.git/git-upload-pack", OLD_VAULT.to_uppercase()),
                h("Authorization", auth.clone()),
            ),
            (
                "POST",
                format!("/{OLD_VAULT}.git/info/lfs/objects/batch"),
                h("Authorization", auth.clone()),
            ),
            (
                "GET",
                format!("/{OLD_VAULT}.wiki.git/info/refs"),
                h("Authorization", auth.clone()),
            ),
            (
                "GET",
                format!("/jwt/auth?service=container_registry&scope=repository:{OLD_VAULT}:pull"),
                h("Authorization", auth.clone()),
            ),
            (
                "GET",
                format!("/{OLD_VAULT}/-/archive/main/x.zip"),
                h("JOB-TOKEN", tok),
            ),
        ] {
            g.push(
                "renamed",
                format!("{method} {target} by {origin}"),
                method,
                target,
                vec![header],
                Expect::Any,
            );
        }
    }
    g.out
}

// ---------------------------------------------------------------------------------------------
// Running the variants.

#[derive(Debug)]
struct Outcome {
    gateway_status: u16,
    served: Vec<model_forge::Served>,
}

/// Send raw bytes on a fresh connection; the status of the answer (0 when none came).
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct ClassCount {
    variants: usize,
    served: usize,
    status: BTreeMap<u16, usize>,
}

struct Report {
    violations: Vec<String>,
    unmet: Vec<String>,
    counts: BTreeMap<&'static str, ClassCount>,
}

async fn run(rig: &Rig, variants: &[Variant]) -> Report {
    let gw = rig.gw.listen;
    // Bounded concurrency: each variant is tagged with `X-Variant`, so the forge's records
    // are attributed whatever the order.
    let mut statuses = vec![0u16; variants.len()];
    for chunk in (0..variants.len()).collect::<Vec<_>>().chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let bytes = variants[i].bytes(i, gw);
            set.spawn(async move { (i, send_raw(gw, &bytes).await) });
        }
        while let Some(done) = set.join_next().await {
            let (i, status) = done.unwrap();
            statuses[i] = status;
        }
    }
    let seen = rig.forge.seen();
    let mut by_variant: BTreeMap<usize, Vec<model_forge::Served>> = BTreeMap::new();
    for s in seen {
        if let Some(i) = s.variant.as_deref().and_then(|v| v.parse::<usize>().ok()) {
            by_variant.entry(i).or_default().extend(s.served);
        }
    }
    let mut report = Report {
        violations: Vec::new(),
        unmet: Vec::new(),
        counts: BTreeMap::new(),
    };
    for (i, v) in variants.iter().enumerate() {
        let out = Outcome {
            gateway_status: statuses[i],
            served: by_variant.remove(&i).unwrap_or_default(),
        };
        let c = report.counts.entry(v.class).or_default();
        c.variants += 1;
        *c.status.entry(out.gateway_status).or_default() += 1;
        if !out.served.is_empty() {
            c.served += 1;
        }
        for s in &out.served {
            let d = policy_decision(&rig.policy, &rig.world, s.origin, s.target);
            if !d.is_forwarded() {
                report.violations.push(format!(
                    "[{}] {} {}: {} {} → gateway {}, forge served {} → {} ({}), policy {:?}",
                    rig.dialect.name,
                    v.class,
                    v.label,
                    v.method,
                    v.target,
                    out.gateway_status,
                    s.origin,
                    s.target,
                    s.family,
                    d
                ));
            }
        }
        if let Expect::Served(o, t) = v.expect {
            let ok = (200..300).contains(&out.gateway_status)
                && out.served.iter().any(|s| s.origin == o && s.target == t);
            if !ok {
                report.unmet.push(format!(
                    "[{}] {} {}: {} {} → gateway {}, forge served {:?}",
                    rig.dialect.name,
                    v.class,
                    v.label,
                    v.method,
                    v.target,
                    out.gateway_status,
                    out.served
                ));
            }
        }
    }
    report
}

fn print_counts(name: &str, report: &Report) {
    let total: usize = report.counts.values().map(|c| c.variants).sum();
    println!("differential [{name}]: {total} variants");
    for (class, c) in &report.counts {
        let statuses: Vec<String> = c.status.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        println!(
            "  {class:<14} {:>5} variants, {:>4} served by the forge; gateway answers {}",
            c.variants,
            c.served,
            statuses.join(" ")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// The model itself reads requests the way the GitLab source says (so that a wrong model
/// cannot make the suite pass vacuously).
#[test]
fn the_model_forge_reads_requests_like_gitlab() {
    let w = world();
    let run = |d: Dialect, method: &str, path: &str, query: Option<&str>, hs: &[(&str, &str)]| {
        let headers: Vec<(String, Vec<u8>)> = hs
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        let v = model_forge::interpret(
            &w,
            d,
            &RawRequest {
                method,
                path,
                query,
                headers: &headers,
            },
        );
        let served: Vec<(u64, u64)> = v.served.iter().map(|s| (s.origin, s.target)).collect();
        (v.status, served)
    };
    let bot = [("JOB-TOKEN", BOT)];
    // :id as a number, an encoded path in any case, a moved path.
    assert_eq!(
        run(NEW, "GET", "/api/v4/projects/30", None, &bot),
        (200, vec![(10, 30)])
    );
    assert_eq!(
        run(NEW, "GET", "/api/v4/projects/0030", None, &bot),
        (200, vec![(10, 30)])
    );
    assert_eq!(
        run(NEW, "GET", "/api/v4/projects/GLOBEX%2ftool/x", None, &bot),
        (200, vec![(10, 30)])
    );
    assert_eq!(
        run(NEW, "GET", "/api/v4/projects/globex%252Ftool", None, &bot).0,
        404
    );
    assert_eq!(
        run(NEW, "GET", "/api/v4/projects/acme%2Fsecrets", None, &bot).0,
        301
    );
    assert_eq!(
        run(NEW, "POST", "/api/v4/projects/acme%2Fsecrets", None, &bot).0,
        405
    );
    assert_eq!(
        run(NEW, "GET", "/api/v4/projects/30%0Aacme", None, &bot),
        (200, vec![(10, 30)])
    );
    assert_eq!(
        run(NEW, "GET", "/api/v4/%70rojects/30", None, &bot),
        (200, vec![(10, 30)])
    );
    assert_eq!(
        run(NEW, "GET", "/api/v4/projects/30.json", None, &bot).0,
        404
    );
    assert_eq!(
        run(OLD, "GET", "/api/v4/projects/30.json", None, &bot).0,
        200
    );
    assert_eq!(
        run(OLD, "GET", "/api/v4/projects/12/../30", None, &bot),
        (200, vec![(10, 30)])
    );
    assert_eq!(
        run(NEW, "GET", "/api/v4//projects/30/", None, &bot),
        (200, vec![(10, 30)])
    );
    // Credentials: precedence, Rack parsing, no fall-through.
    fn q(s: &str) -> Option<&str> {
        Some(s)
    }
    assert_eq!(
        run(
            NEW,
            "GET",
            "/api/v4/projects/12",
            q(&format!("job_token={BOT}&job_token={OTHER}")),
            &[]
        )
        .1,
        vec![(30, 12)],
        "last value wins"
    );
    assert_eq!(
        run(
            OLD,
            "GET",
            "/api/v4/projects/12",
            q(&format!("x=1;job_token={OTHER}")),
            &bot
        )
        .1,
        vec![(30, 12)],
        "Rack 2 splits on ';' and the param beats the header"
    );
    assert_eq!(
        run(
            NEW,
            "GET",
            "/api/v4/projects/12",
            q(&format!("x=1;job_token={OTHER}")),
            &bot
        )
        .1,
        vec![(10, 12)]
    );
    assert_eq!(
        run(
            OLD,
            "GET",
            "/api/v4/projects/12",
            q(&format!("[job_token]={OTHER}")),
            &[]
        )
        .1,
        vec![(30, 12)]
    );
    assert_eq!(
        run(
            NEW,
            "GET",
            "/api/v4/projects/12",
            q(&format!("[job_token]={OTHER}")),
            &[]
        )
        .0,
        401
    );
    let bearer = format!("Bearer {OTHER}");
    assert_eq!(
        run(
            NEW,
            "GET",
            "/api/v4/projects/12",
            None,
            &[("Authorization", &bearer), ("JOB-TOKEN", BOT)]
        )
        .1,
        vec![(30, 12)],
        "the Bearer token is read first"
    );
    assert_eq!(
        run(NEW, "GET", "/api/v4/projects/12", q("job_token=nope"), &bot).0,
        401,
        "an unknown token in the carrier picked is 401"
    );
    assert_eq!(
        run(
            NEW,
            "GET",
            "/api/v4/projects/12",
            None,
            &[("PRIVATE-TOKEN", PAT), ("JOB-TOKEN", OTHER)]
        ),
        (200, vec![]),
        "a PAT wins over a job token"
    );
    assert_eq!(
        run(
            NEW,
            "GET",
            "/api/v4/projects/12",
            None,
            &[("PRIVATE-TOKEN", OTHER)]
        )
        .0,
        401,
        "a job token in PRIVATE-TOKEN authenticates nothing on the API"
    );
    assert_eq!(
        run(
            NEW,
            "GET",
            "/api/v4/projects/12",
            None,
            &[("JOB_TOKEN", OTHER)]
        )
        .0,
        401
    );
    assert_eq!(
        run(
            OLD,
            "GET",
            "/api/v4/projects/12",
            None,
            &[("JOB_TOKEN", OTHER)]
        )
        .1,
        vec![(30, 12)]
    );
    assert_eq!(
        run(
            NEW,
            "GET",
            "/api/v4/projects/12",
            None,
            &[("JOB-TOKEN", OTHER), ("job-token", BOT)]
        )
        .0,
        401,
        "repeated header lines are joined"
    );
    // Git: Basic only, case-insensitive lookup, old paths served, `.GIT` not a Git route.
    let b = basic("gitlab-ci-token", OTHER);
    let auth = [("Authorization", b.as_str())];
    assert_eq!(
        run(NEW, "GET", "/ACME/Vault.git/info/refs", None, &auth),
        (200, vec![(30, 40)])
    );
    assert_eq!(
        run(NEW, "GET", "/acme/secrets.git/info/refs", None, &auth),
        (200, vec![(30, 40)])
    );
    assert_eq!(
        run(NEW, "GET", "/acme/secrets.wiki.git/info/refs", None, &auth),
        (200, vec![(30, 40)])
    );
    assert_eq!(
        run(NEW, "GET", "/acme/vault.GIT/info/refs", None, &auth).0,
        404
    );
    assert_eq!(
        run(NEW, "GET", "/acme%2Fvault.git/info/refs", None, &auth).0,
        404
    );
    assert_eq!(run(NEW, "GET", "/acme/vault/info/refs", None, &auth).0, 302);
    assert_eq!(
        run(
            NEW,
            "GET",
            "/acme/vault.git/info/refs",
            None,
            &[("JOB-TOKEN", OTHER)]
        )
        .0,
        401
    );
    // `Gitlab::RepoPath.parse` tries the literal path first: a project named `x.wiki` wins.
    assert_eq!(
        run(NEW, "GET", "/acme/notes.wiki.git/info/refs", None, &auth),
        (200, vec![(30, 43)])
    );
    assert_eq!(
        run(NEW, "GET", "/acme/app.wiki.git/info/refs", None, &auth),
        (200, vec![(30, 12)])
    );
    // Registry: longest of the first three prefixes, push only on the own project, no redirects.
    let jwt = |scope: &str| format!("service=container_registry&scope={scope}");
    assert_eq!(
        run(
            NEW,
            "GET",
            "/jwt/auth",
            q(&jwt("repository:globex/tool/a/b:pull")),
            &auth
        )
        .1,
        vec![(30, 30)]
    );
    assert_eq!(
        run(
            NEW,
            "GET",
            "/jwt/auth",
            q(&jwt("repository:acme/app:push")),
            &auth
        )
        .1,
        vec![]
    );
    assert_eq!(
        run(
            NEW,
            "GET",
            "/jwt/auth",
            q(&jwt("repository:acme/secrets:pull")),
            &auth
        )
        .1,
        vec![]
    );
    assert_eq!(
        run(
            OLD,
            "GET",
            "/jwt/auth",
            q("service=container_registry;scope=repository:acme/app:pull"),
            &auth
        )
        .1,
        vec![(30, 12)]
    );
}

/// The policy answers the canonical expectations assume.
#[test]
fn canonical_expectations_match_the_policy() {
    let policy = scopegate::scope::load_str("scopes.toml", &scopes(false), &Default::default())
        .unwrap()
        .policy;
    let w = world();
    for origin in [10u64, 12, 30, 40] {
        for target in [10u64, 12, 14, 16, 20, 21, 30, 40, 41, 43, 44, 45] {
            if origin == 12 {
                continue;
            }
            let d = policy_decision(&policy, &w, origin, target);
            assert_eq!(
                matches!(d, Decision::Allow(_)),
                allowed_limited(origin, target) || origin == target,
                "{origin} → {target}: {d:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_variant_is_served_out_of_scope() {
    let variants = generate();
    assert!(variants.len() > 1000, "{} variants", variants.len());
    let text = scopes(false);
    let mut failures = Vec::new();
    for dialect in [NEW, OLD] {
        let rig = rig(dialect, &text, None).await;
        let report = run(&rig, &variants).await;
        print_counts(dialect.name, &report);
        for line in report.violations.iter().chain(&report.unmet) {
            println!("  FAIL {line}");
        }
        let canonical = variants
            .iter()
            .filter(|v| matches!(v.expect, Expect::Served(..)))
            .count();
        println!("  canonical allowed forms checked: {canonical}");
        assert!(canonical > 100);
        // The forge really served things: the suite is not vacuous.
        let served: usize = report.counts.values().map(|c| c.served).sum();
        assert!(
            served > 300,
            "[{}] only {served} variants served",
            dialect.name
        );
        failures.extend(report.violations);
        failures.extend(report.unmet);
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The bypasses this suite found, as plain regressions (each was served before its fix):
/// - `/<path>.wiki.git/...` was decided as `<path>` while the forge serves a project literally
///   named `<path>.wiki` when one exists (shipped defaults, scope file listing `acme/notes`
///   open and `acme/notes.wiki` inbound-limited);
/// - `/api/v4/projects/<path>.json` was decided as the unknown project `<path>.json` while
///   Grape 2.4+ reads `<path>` with format `json` (open inbound defaults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regressions_found_by_this_suite() {
    let cases: [(bool, &str, &str, (String, String)); 4] = [
        (
            false,
            "GET",
            "/acme/notes.wiki.git/info/refs?service=git-upload-pack",
            h("Authorization", basic("gitlab-ci-token", OTHER)),
        ),
        (
            false,
            "POST",
            "/acme/notes.wiki.git/info/lfs/objects/batch",
            h("Authorization", basic("gitlab-ci-token", OTHER)),
        ),
        (
            true,
            "GET",
            "/api/v4/projects/acme%2Fapp.json",
            h("JOB-TOKEN", OTHER),
        ),
        (
            true,
            "GET",
            "/api/v4/projects/acme%2Fvault%2Ejson",
            h("JOB-TOKEN", OTHER),
        ),
    ];
    for (open, method, target, header) in cases {
        let rig = rig(OLD, &scopes(open), None).await;
        let v = Variant {
            class: "regression",
            label: target.to_string(),
            method: method.to_string(),
            target: target.to_string(),
            headers: vec![header],
            expect: Expect::Any,
            raw: None,
        };
        let status = send_raw(rig.gw.listen, &v.bytes(0, rig.gw.listen)).await;
        assert!(
            (400..500).contains(&status),
            "{method} {target}: gateway answered {status}"
        );
        assert!(
            rig.forge.seen_for("0").is_empty(),
            "{method} {target} reached the forge"
        );
    }
}

/// With `[defaults]` open (not the shipped default), an old path of a renamed project is an
/// unknown project to the gateway, and the forge serves Git requests on old paths as the
/// renamed project. This test pins down exactly what leaks then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_defaults_old_git_paths_of_renamed_projects() {
    let variants = generate();
    let tmp = tempfile::tempdir().unwrap();
    let rig = rig(OLD, &scopes(true), Some(make_repos(tmp.path()))).await;
    let report = run(&rig, &variants).await;
    print_counts("rack2, open defaults", &report);
    for line in &report.violations {
        println!("  LEAK {line}");
    }
    assert!(report.unmet.is_empty(), "{:#?}", report.unmet);
    assert!(
        !report.violations.is_empty(),
        "the known gap is demonstrated (if this fails, the gap was closed: update the report)"
    );
    for v in &report.violations {
        assert!(
            v.to_ascii_lowercase().contains(OLD_VAULT)
                && (v.contains("(git)") || v.contains("(lfs)")),
            "only Git/LFS requests on the old path leak: {v}"
        );
    }
    // And a real clone by the old path hands globex/tool's job acme/vault's code, while the
    // current path is denied.
    let gw = rig.gw.listen;
    let current = clone(
        tmp.path(),
        &format!("http://gitlab-ci-token:{OTHER}@{gw}/acme/vault.git"),
        "by-current-path",
    )
    .await;
    assert!(!current.status.success(), "the current path is denied");
    let old = clone(
        tmp.path(),
        &format!("http://gitlab-ci-token:{OTHER}@{gw}/{OLD_VAULT}.git"),
        "by-old-path",
    )
    .await;
    assert!(
        old.status.success(),
        "the known gap: {}",
        String::from_utf8_lossy(&old.stderr)
    );
    let readme = std::fs::read_to_string(tmp.path().join("by-old-path/README.md")).unwrap();
    assert_eq!(readme, "hello from acme/vault\n");
}

/// The gap above, closed: with a lookup credential the gateway asks the forge what an unlisted
/// Git/LFS/web path is, and decides on the project the forge will serve. No variant leaks, the
/// canonical forms still pass, and a clone by the old path is denied like one by the current path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_defaults_with_lookup_old_paths_are_decided_as_the_renamed_project() {
    let variants = generate();
    let tmp = tempfile::tempdir().unwrap();
    let rig = rig_with(
        OLD,
        &scopes(true),
        Some(make_repos(tmp.path())),
        Some(model_forge::PAT),
    )
    .await;
    let report = run(&rig, &variants).await;
    print_counts("rack2, open defaults, lookup", &report);
    assert!(report.unmet.is_empty(), "{:#?}", report.unmet);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    let gw = rig.gw.listen;
    let before = rig.forge.seen().len();
    for (url_path, dir) in [("acme/vault", "current"), (OLD_VAULT, "old")] {
        let out = clone(
            tmp.path(),
            &format!("http://gitlab-ci-token:{OTHER}@{gw}/{url_path}.git"),
            dir,
        )
        .await;
        assert!(!out.status.success(), "{url_path}: clone must be denied");
    }
    let after = rig.forge.seen();
    assert!(
        after[before..].iter().all(|s| s.served.is_empty()),
        "a denied clone reached the forge: {:#?}",
        &after[before..]
    );
}

/// A lookup the forge refuses (a wrong lookup credential) fails closed: 503 with Retry-After,
/// and the Git request never reaches the forge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_fails_closed() {
    let rig = rig_with(OLD, &scopes(true), None, Some("glpat-wrong-lookup-token")).await;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("gitlab-ci-token:{OTHER}"));
    let req = format!(
        "GET /{OLD_VAULT}.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\
         Authorization: Basic {basic}\r\nX-Variant: failed-lookup\r\nConnection: close\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(rig.gw.listen).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, req.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after"),
        "{answer}"
    );
    assert!(
        rig.forge.seen_for("failed-lookup").is_empty(),
        "the Git request reached the forge"
    );
}

// ---------------------------------------------------------------------------------------------
// A real `git clone` through the gateway.

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn clone(dir: &Path, url: &str, into: &str) -> std::process::Output {
    let cmd = tokio::process::Command::new("git")
        .args([
            "-c",
            "credential.helper=",
            "-c",
            "http.proxy=",
            "clone",
            "-q",
            url,
            into,
        ])
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), cmd)
        .await
        .expect("git clone finished in time")
        .unwrap()
}

/// Bare repositories for acme/app, globex/tool and acme/vault under `<tmp>/repos`, each
/// holding one commit whose README names the project.
fn make_repos(tmp: &Path) -> PathBuf {
    let root = tmp.join("repos");
    for repo in ["acme/app", "globex/tool", "acme/vault"] {
        let work = tmp.join("work").join(repo);
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q"]);
        std::fs::write(work.join("README.md"), format!("hello from {repo}\n")).unwrap();
        git(&work, &["add", "README.md"]);
        git(&work, &["commit", "-q", "-m", "first"]);
        let dest = root.join(format!("{repo}.git"));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        git(
            tmp,
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap(),
                dest.to_str().unwrap(),
            ],
        );
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_git_clone_goes_through_and_an_out_of_scope_one_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let root = make_repos(tmp.path());
    let rig = rig(NEW, &scopes(false), Some(root)).await;
    let gw = rig.gw.listen;
    let url = |tok: &str, path: &str| format!("http://gitlab-ci-token:{tok}@{gw}/{path}");

    // The bot's job token clones acme/app, in its own letter case and in another.
    for (n, path) in ["acme/app.git", "ACME/App.git"].iter().enumerate() {
        let into = format!("clone{n}");
        let out = clone(tmp.path(), &url(BOT, path), &into).await;
        assert!(
            out.status.success(),
            "clone {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let readme = std::fs::read_to_string(tmp.path().join(&into).join("README.md")).unwrap();
        assert_eq!(readme, "hello from acme/app\n");
    }
    let served: Vec<_> = rig
        .forge
        .seen()
        .into_iter()
        .flat_map(|s| s.served)
        .collect();
    assert!(served
        .iter()
        .any(|s| s.origin == 10 && s.target == 12 && s.family == "git"));

    // Out of scope: globex/tool for the bot, acme/vault for globex/tool (also by its old path).
    for (tok, path, target) in [
        (BOT, "globex/tool.git", 30u64),
        (OTHER, "acme/vault.git", 40),
        (OTHER, "acme/secrets.git", 40),
    ] {
        let out = clone(tmp.path(), &url(tok, path), "denied").await;
        assert!(!out.status.success(), "clone {path} must fail");
        assert!(!tmp.path().join("denied").exists());
        let leaked = rig
            .forge
            .seen()
            .into_iter()
            .flat_map(|s| s.served)
            .any(|s| s.target == target);
        assert!(!leaked, "the forge served {path}");
    }
}
