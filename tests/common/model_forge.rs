//! A model forge for the differential suite (issue 4 item 5).
//!
//! It interprets every request the way GitLab (Puma + Rack + Rails/Grape + Doorkeeper) does,
//! written from GitLab's source and independently of scopegate's parsers, and records the
//! (origin, target) of every job-token request it *serves* (answers 2xx). A request it would
//! answer 301/302/400/401/404/405 is not served. It never checks a job-token scope itself: it
//! is a forge with no scopes at all, so the gateway in front of it is the only thing between a
//! job token and any project, and the suite can compare what was served with the policy.
//!
//! Sources each rule follows (GitLab = gitlabhq/gitlabhq, read through the search tool, and
//! `/work/shared/reference/gitlab-job-token.md`):
//! - credentials and their precedence on API routes: `lib/api/api_guard.rb`
//!   `find_user_from_sources` (deploy token, then Bearer, then job token, then session) and
//!   `lib/gitlab/auth/auth_finders.rb`: `find_user_from_job_bearer_token` (the Doorkeeper
//!   token read as a job token first), `find_personal_access_token` (`private_token` param,
//!   `PRIVATE-TOKEN` header, then the Doorkeeper token; a value starting with `glcbt-` is
//!   ignored on API requests), `find_user_from_job_token_basic_auth` (Basic, login exactly
//!   `gitlab-ci-token`, login and password present), `find_user_from_job_token_query_params_or_header`
//!   (`job_token` param `.presence`, then `token` param, then `HTTP_JOB_TOKEN`); an unknown
//!   token in the carrier picked is 401, there is no fall-through to the next carrier.
//! - Doorkeeper `access_token_methods :from_access_token_param, :from_bearer_authorization,
//!   :from_bearer_param` (`config/initializers/doorkeeper.rb`), the first present wins;
//!   `from_bearer_authorization` strips `/^Bearer /i`.
//! - Rails `ActionController::HttpAuthentication::Basic`: scheme = `authorization.split(" ", 2)`
//!   first field, compared to `basic` case-insensitively; `Base64.decode64` (lenient) of the
//!   second; `split(":", 2)`.
//! - Rack query parsing (`Rack::QueryParser#parse_nested_query`): Rack 2.2 splits on
//!   `/[&;] */`, Rack 3 on `/& */`; keys and values `URI.decode_www_form_component`d (`+` is a
//!   space; a bad `%` escape raises, the forge answers 400); a plain key keeps its last value;
//!   Rack 2 takes the name as `/\A[\[\]]*([^\[\]]+)\]*/` (`[job_token]` is `job_token`),
//!   Rack 3 up to the first `[` after position 0; `k[]`/`k[x]` make arrays/hashes, whose
//!   `.to_s` is never a token.
//! - Puma: header names are folded to `HTTP_` + upper case with `-` → `_`; repeated lines are
//!   joined with `", "`. Older Puma also folded names written with `_`; Puma 6.4.3+ drops them.
//! - Grape/Rails routing: `Grape::Router.normalize_path` and Journey squeeze `//` and drop a
//!   trailing `/`; Mustermann matches static API segments also in percent-encoded form and
//!   decodes `:id` once; `lib/api/helpers.rb` `find_project`: `/^-?\d+$/` (Ruby line anchors)
//!   → by id (`to_i`), a decoded value containing `/` → `find_by_full_path(follow_redirects:
//!   true)` (exact, then case-insensitive; old paths in `redirect_routes`), anything else →
//!   nothing; a moved project → 301 for GET/HEAD, 405 for other methods.
//! - Git over HTTP: `config/routes/git_http.rb` (`*repository_path` must match the repository
//!   regex ending in `.git`, case-sensitive, no `%`), `Gitlab::RepoPath.parse` (project with
//!   the full path, redirects followed and served with a "moved" notice, then `.wiki`,
//!   `.design`, snippets), `Gitlab::Auth.find_for_git_client` (Basic only, `gitlab-ci-token`);
//!   `<path>/info/refs` without `.git` redirects.
//! - `/jwt/auth`: `JwtController` (Basic only; `scope` read with `Rack::Utils.parse_query` from
//!   the raw query, every occurrence, split on whitespace), `ContainerRegistry::Path` (name
//!   downcased, project = longest of the first three prefixes of ≥2 components, routes only,
//!   no redirects), `ContainerRegistryAuthenticationService` (push/delete only on the job's own
//!   project).
//!
//! Over-approximations (the model serves *more* than GitLab, never less, so the invariant is
//! checked on a superset): every sub-route of a found project/group exists; web routes under
//! `/<project>/-/` accept job tokens (GitLab's web controllers ignore them); group routes serve
//! every project in the group, instance-level package routes, the dependency proxy and the
//! internal DAST route serve every project; the `OLD` dialect also resolves dot segments (as
//! nginx/Workhorse clean paths) and strips a `.json` format suffix from a final `:id`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A personal access token the model knows (a user credential, never a job token).
pub const PAT: &str = "glpat-model-user-token-000";

#[derive(Clone, Debug)]
pub struct Project {
    pub id: u64,
    /// The current full path, in the letter case it was created with.
    pub path: &'static str,
    /// Paths it had before a rename or transfer (`redirect_routes`).
    pub old_paths: &'static [&'static str],
}

#[derive(Clone, Debug)]
pub struct Group {
    pub id: u64,
    pub path: &'static str,
}

#[derive(Clone, Debug)]
pub struct Job {
    pub token: &'static str,
    pub id: u64,
    pub project: u64,
}

#[derive(Clone, Debug, Default)]
pub struct World {
    pub projects: Vec<Project>,
    pub groups: Vec<Group>,
    pub jobs: Vec<Job>,
}

/// Which reading of the version- and deployment-dependent details the model takes.
#[derive(Clone, Copy, Debug)]
pub struct Dialect {
    pub name: &'static str,
    /// Rack 2.2 (and Rails' compat parser) also split the query on `;`.
    pub semicolon: bool,
    /// Rack 2 nested-name reading (`[job_token]` is `job_token`).
    pub rack2_names: bool,
    /// Older Puma folds `JOB_TOKEN` into `HTTP_JOB_TOKEN` too.
    pub underscore_headers: bool,
    /// A front proxy resolves `.`/`..` (also `%2e`) before Rails sees the path.
    pub clean_dots: bool,
    /// Grape's optional `(.:format)` suffix taken off a final `:id`.
    pub strip_format: bool,
}

/// GitLab on Rack 2.2 / older Puma, with every lenient reading on.
pub const OLD: Dialect = Dialect {
    name: "rack2",
    semicolon: true,
    rack2_names: true,
    underscore_headers: true,
    clean_dots: true,
    strip_format: true,
};

/// GitLab on Rack 3 / Puma 6.4.3+, reading paths as Rails receives them.
pub const NEW: Dialect = Dialect {
    name: "rack3",
    semicolon: false,
    rack2_names: false,
    underscore_headers: false,
    clean_dots: false,
    strip_format: false,
};

/// One job-token request the forge served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub origin: u64,
    pub target: u64,
    pub family: &'static str,
}

/// A Git request the model answers with a real repository (`git http-backend`).
#[derive(Clone, Debug)]
pub struct GitCall {
    /// Canonical project path (the repository directory under the git root, without `.git`).
    pub project_path: String,
    /// The route after `<path>.git/`.
    pub rest: String,
}

/// What the forge does with one request.
#[derive(Debug, Default)]
pub struct Verdict {
    pub status: u16,
    pub served: Vec<Served>,
    pub location: Option<String>,
    pub challenge: bool,
    pub git: Option<GitCall>,
    /// `GET /api/v4/job`: the job whose document to answer with.
    pub job_doc: Option<Job>,
    pub note: &'static str,
}

fn verdict(status: u16, note: &'static str) -> Verdict {
    Verdict {
        status,
        note,
        ..Verdict::default()
    }
}

/// A request as the forge received it.
pub struct RawRequest<'a> {
    pub method: &'a str,
    /// Path exactly as received (no query).
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// (lower-case name, value) in the order received.
    pub headers: &'a [(String, Vec<u8>)],
}

// ---------------------------------------------------------------------------------------------
// Lookups.

enum Found {
    Project(u64),
    Moved(u64),
    None,
}

impl World {
    pub fn project(&self, id: u64) -> Option<&Project> {
        self.projects.iter().find(|p| p.id == id)
    }

    fn job_by_token(&self, token: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.token == token)
    }

    /// `Routable.find_by_full_path(path, follow_redirects: true)`: exact, then
    /// case-insensitive on routes, then `redirect_routes` (case-insensitive).
    fn by_full_path(&self, path: &str) -> Found {
        if let Some(p) = self
            .projects
            .iter()
            .find(|p| p.path.eq_ignore_ascii_case(path))
        {
            return Found::Project(p.id);
        }
        match self
            .projects
            .iter()
            .find(|p| p.old_paths.iter().any(|o| o.eq_ignore_ascii_case(path)))
        {
            Some(p) => Found::Moved(p.id),
            None => Found::None,
        }
    }

    /// Routes only (no redirects): `Project.where_full_path_in`.
    fn by_route(&self, path: &str) -> Option<u64> {
        self.projects
            .iter()
            .find(|p| p.path.eq_ignore_ascii_case(path))
            .map(|p| p.id)
    }

    fn group(&self, raw: &str) -> Option<&Group> {
        if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
            let id = raw.parse::<u64>().ok()?;
            return self.groups.iter().find(|g| g.id == id);
        }
        self.groups
            .iter()
            .find(|g| g.path.eq_ignore_ascii_case(raw))
    }

    fn projects_under(&self, group: &str) -> Vec<u64> {
        self.projects
            .iter()
            .filter(|p| {
                p.path.len() > group.len()
                    && p.path[..group.len()].eq_ignore_ascii_case(group)
                    && p.path.as_bytes()[group.len()] == b'/'
            })
            .map(|p| p.id)
            .collect()
    }

    fn all_projects(&self) -> Vec<u64> {
        self.projects.iter().map(|p| p.id).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding, as Ruby does it.

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `URI::DEFAULT_PARSER.unescape` / Mustermann: `%XX` decoded, anything else literal.
fn pct_decode_lenient(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `URI.decode_www_form_component`: `+` is a space; a `%` not followed by two hex digits
/// raises (None).
fn www_form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = hex(*b.get(i + 1)?)?;
                let l = hex(*b.get(i + 2)?)?;
                out.push(h << 4 | l);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn ruby_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// ActiveSupport `blank?`.
fn blank(s: &str) -> bool {
    s.chars().all(ruby_space)
}

/// Ruby `str.split(" ", 2)`.
fn split_space_2(s: &str) -> Option<(&str, Option<&str>)> {
    let s = s.trim_start_matches(ruby_space);
    if s.is_empty() {
        return None;
    }
    match s.find(ruby_space) {
        None => Some((s, None)),
        Some(i) => Some((&s[..i], Some(s[i..].trim_start_matches(ruby_space)))),
    }
}

/// Ruby `Base64.decode64`: characters outside the alphabet skipped, an `=` in the 3rd or 4th
/// place of a quantum ends the input, partial quanta decoded.
fn decode64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut vals = Vec::new();
    for b in s.bytes() {
        if b == b'=' {
            if vals.len() % 4 >= 2 {
                break;
            }
            continue;
        }
        if let Some(v) = A.iter().position(|&a| a == b) {
            vals.push(v as u32);
        }
    }
    let mut out = Vec::new();
    for chunk in vals.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, v)| acc | v << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => 0,
        };
        out.extend_from_slice(&bytes[..keep]);
    }
    out
}

/// Ruby `String#to_i`: leading whitespace, a sign, digits (single `_` between digits).
fn ruby_to_i(s: &str) -> i128 {
    let s = s.trim_start_matches(ruby_space);
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut n: i128 = 0;
    let mut prev_digit = false;
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => {
                n = n.saturating_mul(10).saturating_add(i128::from(b - b'0'));
                prev_digit = true;
            }
            b'_' if prev_digit => prev_digit = false,
            _ => break,
        }
    }
    if neg {
        -n
    } else {
        n
    }
}

/// `id =~ /^-?\d+$/` with Ruby's line anchors.
fn integer_id(id: &str) -> bool {
    id.split('\n').any(|line| {
        let l = line.strip_prefix('-').unwrap_or(line);
        !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())
    })
}

// ---------------------------------------------------------------------------------------------
// Rack params.

#[derive(Clone, Debug, PartialEq, Eq)]
enum PVal {
    Str(String),
    Nil,
    /// An array or a hash: `.to_s` is never a token.
    Other,
}

impl PVal {
    /// `.presence`
    fn present(&self) -> Option<Cand> {
        match self {
            PVal::Str(s) if !blank(s) => Some(Cand::Token(s.clone())),
            PVal::Other => Some(Cand::Junk),
            _ => None,
        }
    }
}

/// A credential the forge picked.
#[derive(Clone, Debug)]
enum Cand {
    Token(String),
    /// Present but not a string (an array or hash param).
    Junk,
}

struct Query {
    /// `params` after `normalize_params` (last wins for plain keys).
    params: Vec<(String, PVal)>,
    /// `parse_query`: (decoded key, decoded value) in order, no nesting.
    pairs: Vec<(String, Option<String>)>,
}

impl Query {
    fn get(&self, k: &str) -> Option<&PVal> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v)
    }
    fn all(&self, k: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == k)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }
}

/// Rack's `parse_nested_query` (and `parse_query` for the raw pairs). Err: a bad escape (400).
fn parse_query(q: &str, d: Dialect) -> Result<Query, ()> {
    let mut params: Vec<(String, PVal)> = Vec::new();
    let mut pairs = Vec::new();
    let pieces: Vec<&str> = if d.semicolon {
        q.split(['&', ';']).collect()
    } else {
        q.split('&').collect()
    };
    for (i, p) in pieces.into_iter().enumerate() {
        // The separator regex `[&;] *` eats the spaces after it.
        let p = if i == 0 { p } else { p.trim_start_matches(' ') };
        if p.is_empty() {
            continue;
        }
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        let k = www_form_decode(k).ok_or(())?;
        let v = match v {
            Some(v) => Some(www_form_decode(v).ok_or(())?),
            None => None,
        };
        pairs.push((k.clone(), v.clone()));
        let val = v.map_or(PVal::Nil, PVal::Str);
        // normalize_params: the top-level name and what follows it.
        let (name, after) = if d.rack2_names {
            let rest = k.trim_start_matches(['[', ']']);
            let end = rest.find(['[', ']']).unwrap_or(rest.len());
            let name = &rest[..end];
            let after = rest[end..].trim_start_matches(']');
            (name.to_string(), after.to_string())
        } else {
            match k.get(1..).and_then(|r| r.find('[')) {
                Some(i) => (k[..i + 1].to_string(), k[i + 1..].to_string()),
                None => (k.clone(), String::new()),
            }
        };
        if name.is_empty() {
            continue;
        }
        if after.is_empty() {
            params.push((name, val));
        } else if after == "[" {
            params.push((k.clone(), val));
        } else {
            params.push((name, PVal::Other));
        }
    }
    Ok(Query { params, pairs })
}

// ---------------------------------------------------------------------------------------------
// Credentials.

enum Auth {
    Anonymous,
    Job(Job),
    User,
    Unauthorized,
}

/// `env["HTTP_<NAME>"]` as Puma builds it.
fn env(req: &RawRequest, dashed_lower: &str, d: Dialect) -> Option<String> {
    let underscored = dashed_lower.replace('-', "_");
    let values: Vec<String> = req
        .headers
        .iter()
        .filter(|(n, _)| n == dashed_lower || (d.underscore_headers && *n == underscored))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    if values.is_empty() {
        None
    } else {
        Some(values.join(", "))
    }
}

fn present(s: Option<String>) -> Option<Cand> {
    s.filter(|s| !blank(s)).map(Cand::Token)
}

fn first_present(cands: impl IntoIterator<Item = Option<Cand>>) -> Option<Cand> {
    cands.into_iter().flatten().next()
}

/// Basic credentials: (login, password) when the scheme is `basic`.
fn basic(req: &RawRequest, d: Dialect) -> Option<(String, Option<String>)> {
    let authz = env(req, "authorization", d).filter(|a| !blank(a))?;
    let (scheme, param) = split_space_2(&authz)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8_lossy(&decode64(param.unwrap_or(""))).into_owned();
    Some(match decoded.split_once(':') {
        Some((l, p)) => (l.to_string(), Some(p.to_string())),
        None => (decoded, None),
    })
}

impl World {
    fn job_auth(&self, cand: Cand) -> Auth {
        match cand {
            Cand::Token(t) => match self.job_by_token(&t) {
                Some(j) => Auth::Job(j.clone()),
                None => Auth::Unauthorized,
            },
            Cand::Junk => Auth::Unauthorized,
        }
    }

    /// `API::APIGuard#find_user_from_sources` on a route with `job_token_allowed:
    /// [:request, :basic_auth]` (the widest setting GitLab uses).
    fn api_auth(&self, req: &RawRequest, q: &Query, d: Dialect, api: bool) -> Auth {
        let authz = env(req, "authorization", d);
        let bearer = authz.as_deref().and_then(|a| {
            (a.len() >= 7 && a[..7].eq_ignore_ascii_case("bearer ")).then(|| a[7..].to_string())
        });
        // Doorkeeper: access_token param, Bearer header, bearer_token param.
        let oauth = first_present([
            q.get("access_token").and_then(PVal::present),
            present(bearer),
            q.get("bearer_token").and_then(PVal::present),
        ]);
        // find_user_from_job_bearer_token
        match &oauth {
            Some(Cand::Token(t)) => {
                if let Some(j) = self.job_by_token(t) {
                    return Auth::Job(j.clone());
                }
            }
            Some(Cand::Junk) => return Auth::Unauthorized,
            None => {}
        }
        // find_user_from_access_token → find_personal_access_token
        let pat = first_present([
            q.get("private_token").and_then(PVal::present),
            present(env(req, "private-token", d)),
            oauth,
        ]);
        match pat {
            Some(Cand::Token(t)) if api && t.starts_with("glcbt-") => {}
            Some(Cand::Token(t)) if t == PAT => return Auth::User,
            Some(_) => return Auth::Unauthorized,
            None => {}
        }
        // find_user_from_job_token: Basic first, then params or header.
        if let Some((login, Some(password))) = basic(req, d) {
            if !blank(&login) && !blank(&password) && login == "gitlab-ci-token" {
                return self.job_auth(Cand::Token(password));
            }
        }
        let cand = first_present([
            q.get("job_token").and_then(PVal::present),
            q.get("token").and_then(PVal::present),
            present(env(req, "job-token", d)),
        ]);
        match cand {
            Some(c) => self.job_auth(c),
            None => Auth::Anonymous,
        }
    }

    /// `Gitlab::Auth.find_for_git_client` (Git, LFS, `/jwt/auth`): Basic only.
    fn git_auth(&self, req: &RawRequest, d: Dialect) -> Auth {
        match basic(req, d) {
            Some((login, Some(password))) if login == "gitlab-ci-token" => {
                self.job_auth(Cand::Token(password))
            }
            Some((_, Some(password))) if password == PAT => Auth::User,
            Some(_) => Auth::Unauthorized,
            None => Auth::Anonymous,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routing.

/// The path as the router sees it: `//` squeezed, trailing `/` dropped, dot segments resolved
/// when the dialect's front proxy does that.
fn normalize(path: &str, d: Dialect) -> Vec<String> {
    let mut segs: Vec<String> = Vec::new();
    for s in path.split('/').filter(|s| !s.is_empty()) {
        if d.clean_dots {
            let dec = pct_decode_lenient(s);
            if dec == "." {
                continue;
            }
            if dec == ".." {
                segs.pop();
                continue;
            }
        }
        segs.push(s.to_string());
    }
    segs
}

fn served_all(origin: &Job, targets: Vec<u64>, family: &'static str) -> Verdict {
    Verdict {
        status: 200,
        served: targets
            .into_iter()
            .map(|target| Served {
                origin: origin.project,
                target,
                family,
            })
            .collect(),
        note: family,
        ..Verdict::default()
    }
}

fn served_one(origin: &Job, target: u64, family: &'static str) -> Verdict {
    served_all(origin, vec![target], family)
}

/// Interpret one request as the forge does.
pub fn interpret(world: &World, d: Dialect, req: &RawRequest) -> Verdict {
    let Ok(q) = parse_query(req.query.unwrap_or(""), d) else {
        return verdict(400, "bad query escape");
    };
    let segs = normalize(req.path, d);
    let seg = |i: usize| segs.get(i).map(String::as_str);
    let dec = |i: usize| segs.get(i).map(|s| pct_decode_lenient(s));
    // Grape (Mustermann matches static segments in encoded form too).
    if dec(0).as_deref() == Some("api") {
        if dec(1).as_deref() == Some("graphql") && segs.len() == 2 {
            // GraphQL never reads a job token: the request is anonymous.
            return verdict(200, "graphql (anonymous)");
        }
        if dec(1).as_deref() != Some("v4") {
            return verdict(404, "no such API");
        }
        return api_v4(world, d, req, &q, &segs[2..]);
    }
    // Rails (Journey matches static segments literally).
    if seg(0) == Some("jwt") && seg(1) == Some("auth") && segs.len() == 2 {
        return jwt_auth(world, d, req, &q);
    }
    if let Some(v) = git_route(world, d, req, &segs) {
        return v;
    }
    if let Some(v) = web_route(world, d, req, &q, &segs) {
        return v;
    }
    verdict(404, "no route")
}

fn api_v4(world: &World, d: Dialect, req: &RawRequest, q: &Query, segs: &[String]) -> Verdict {
    let dec = |i: usize| segs.get(i).map(|s| pct_decode_lenient(s));
    let resource = dec(0).unwrap_or_default();
    // `/api/v4/internal/...`: not job-token routes, except the EE DAST transition.
    if resource == "internal" {
        let dast = segs.len() == 5 && dec(1).as_deref() == Some("dast");
        if !dast {
            return verdict(401, "internal API");
        }
    }
    let auth = world.api_auth(req, q, d, true);
    let job = match auth {
        Auth::Job(job) => job,
        Auth::User => return verdict(200, "user credential"),
        Auth::Unauthorized => return verdict(401, "unauthorized"),
        Auth::Anonymous => return verdict(401, "anonymous"),
    };
    match resource.as_str() {
        "projects" => {
            let Some(raw) = segs.get(1) else {
                return verdict(200, "project list");
            };
            let mut id = pct_decode_lenient(raw);
            if d.strip_format && segs.len() == 2 {
                if let Some(s) = id.strip_suffix(".json") {
                    id = s.to_string();
                }
            }
            let found = if integer_id(&id) {
                let n = ruby_to_i(&id);
                match u64::try_from(n).ok().and_then(|n| world.project(n)) {
                    Some(p) => Found::Project(p.id),
                    None => Found::None,
                }
            } else if id.contains('/') {
                world.by_full_path(&id)
            } else {
                Found::None
            };
            match found {
                Found::Project(t) => served_one(&job, t, "project_api"),
                Found::Moved(t) if matches!(req.method, "GET" | "HEAD") => Verdict {
                    status: 301,
                    location: Some(format!("/api/v4/projects/{t}")),
                    note: "moved project",
                    ..Verdict::default()
                },
                Found::Moved(_) => verdict(405, "non-GET on a moved project"),
                Found::None => verdict(404, "project not found"),
            }
        }
        "groups" => {
            let Some(raw) = segs.get(1) else {
                return verdict(200, "group list");
            };
            match world.group(&pct_decode_lenient(raw)) {
                Some(g) => served_all(&job, world.projects_under(g.path), "group_api"),
                None => verdict(404, "group not found"),
            }
        }
        "packages" if segs.len() > 1 => served_all(&job, world.all_projects(), "instance_packages"),
        "jobs" => {
            // `requires :id, type: Integer`
            let id = dec(1).unwrap_or_default();
            let Some(n) = id
                .parse::<u64>()
                .ok()
                .filter(|_| id.bytes().all(|b| b.is_ascii_digit()))
            else {
                return verdict(400, "job id is not an integer");
            };
            match world.jobs.iter().find(|j| j.id == n) {
                Some(j) => served_one(&job, j.project, "job_api"),
                None => verdict(404, "job not found"),
            }
        }
        "job"
            if segs.len() == 1
                || (segs.len() == 2 && dec(1).as_deref() == Some("allowed_agents")) =>
        {
            Verdict {
                status: 200,
                job_doc: Some(job),
                note: "own job",
                ..Verdict::default()
            }
        }
        "internal" => served_all(&job, world.all_projects(), "internal_dast"),
        _ => verdict(404, "no such API route"),
    }
}

fn jwt_auth(world: &World, d: Dialect, req: &RawRequest, q: &Query) -> Verdict {
    let job = match world.git_auth(req, d) {
        Auth::Job(job) => job,
        Auth::Unauthorized => return verdict(401, "unauthorized"),
        Auth::User | Auth::Anonymous => return verdict(200, "registry token, not a job"),
    };
    let service = match q.get("service") {
        Some(PVal::Str(s)) => s.as_str(),
        _ => return verdict(404, "no service"),
    };
    match service {
        "dependency_proxy" => served_all(&job, world.all_projects(), "dependency_proxy"),
        "container_registry" => {
            // `return unless params[:scope].present?`, then every raw `scope` value.
            if q.get("scope").and_then(PVal::present).is_none() {
                return verdict(200, "registry login probe");
            }
            let mut targets = Vec::new();
            for value in q.all("scope") {
                for scope in value.split(ruby_space).filter(|s| !s.is_empty()) {
                    if let Some(t) = registry_scope(world, &job, scope) {
                        targets.push(t);
                    }
                }
            }
            served_all(&job, targets, "registry")
        }
        _ => verdict(404, "unknown service"),
    }
}

/// The project one scope grants access to, if any action is granted.
fn registry_scope(world: &World, job: &Job, scope: &str) -> Option<u64> {
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
    if !(kind == "repository" || (kind.starts_with("repository(") && kind.ends_with(')'))) {
        return None;
    }
    let name = name.to_ascii_lowercase();
    let comps: Vec<&str> = name.split('/').collect();
    if comps.len() < 2 || comps.iter().any(|c| c.is_empty()) {
        return None;
    }
    let project = (2..=comps.len())
        .rev()
        .take(3)
        .find_map(|n| world.by_route(&comps[..n].join("/")))?;
    let granted = actions.split(',').any(|a| match a {
        "pull" => true,
        "push" | "delete" | "*" => project == job.project,
        _ => false,
    });
    granted.then_some(project)
}

/// Git smart HTTP and LFS (`config/routes/git_http.rb`).
fn git_route(world: &World, d: Dialect, req: &RawRequest, segs: &[String]) -> Option<Verdict> {
    let is_git_rest = |rest: &[String]| {
        let r: Vec<&str> = rest.iter().map(String::as_str).collect();
        matches!(
            r.as_slice(),
            ["info", "refs"] | ["git-upload-pack"] | ["git-receive-pack"]
        ) || (r.len() >= 3 && r[0] == "info" && r[1] == "lfs")
            || (r.len() >= 3 && r[0] == "gitlab-lfs" && r[1] == "objects")
            || (r.len() == 3 && r[..] == ["info", "lfs", "objects"])
    };
    // `*repository_path` is greedy: the longest repository path followed by a Git route.
    let j = (0..segs.len())
        .rev()
        .find(|&j| segs[j].ends_with(".git") && is_git_rest(&segs[j + 1..]));
    let Some(j) = j else {
        // `<path>/info/refs` redirects to the `.git` form.
        if segs.len() > 2 && segs[segs.len() - 2..] == ["info", "refs"] {
            let path = segs[..segs.len() - 2].join("/");
            if !matches!(world.by_full_path(&path), Found::None) {
                return Some(Verdict {
                    status: 302,
                    location: Some(format!("/{path}.git/info/refs")),
                    note: "git redirect",
                    ..Verdict::default()
                });
            }
        }
        return None;
    };
    let repo = segs[..=j].join("/");
    let valid_chars = repo
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'));
    if !valid_chars {
        return Some(verdict(404, "repository path does not match the route"));
    }
    let stem = repo.strip_suffix(".git").unwrap_or(&repo);
    let rest = segs[j + 1..].join("/");
    let family = if rest.contains("lfs") { "lfs" } else { "git" };
    // Gitlab::RepoPath.parse
    let project = match world.by_full_path(stem) {
        Found::Project(id) | Found::Moved(id) => Some(id),
        Found::None => {
            let base = stem
                .strip_suffix(".wiki")
                .or_else(|| stem.strip_suffix(".design"));
            let snippet = stem
                .rsplit_once("/snippets/")
                .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .map(|(p, _)| p);
            match base.or(snippet).map(|p| world.by_full_path(p)) {
                Some(Found::Project(id) | Found::Moved(id)) => Some(id),
                _ => None,
            }
        }
    };
    let auth = world.git_auth(req, d);
    let job = match auth {
        Auth::Job(job) => job,
        Auth::User => return Some(verdict(200, "git as a user")),
        Auth::Unauthorized => return Some(verdict(401, "unauthorized")),
        Auth::Anonymous => {
            return Some(Verdict {
                status: 401,
                challenge: true,
                note: "git needs credentials",
                ..Verdict::default()
            })
        }
    };
    let Some(target) = project else {
        return Some(verdict(404, "repository not found"));
    };
    let mut v = served_one(&job, target, family);
    if let Some(p) = world.project(target) {
        v.git = Some(GitCall {
            project_path: p.path.to_string(),
            rest,
        });
    }
    Some(v)
}

/// Project web routes `/<path>/-/...` (over-approximation: as if they read job tokens).
fn web_route(
    world: &World,
    d: Dialect,
    req: &RawRequest,
    q: &Query,
    segs: &[String],
) -> Option<Verdict> {
    let dash = segs.iter().position(|s| s == "-")?;
    if dash < 2 || dash + 1 >= segs.len() {
        return None;
    }
    let path = segs[..dash].join("/");
    let found = world.by_full_path(&path);
    if matches!(found, Found::None) {
        return Some(verdict(404, "project not found"));
    }
    let job = match world.api_auth(req, q, d, false) {
        Auth::Job(job) => job,
        Auth::User => return Some(verdict(200, "web as a user")),
        Auth::Unauthorized | Auth::Anonymous => return Some(verdict(401, "unauthorized")),
    };
    Some(match found {
        Found::Project(t) => served_one(&job, t, "web"),
        Found::Moved(t) if req.method == "GET" => Verdict {
            status: 302,
            location: Some(format!("/{}", world.project(t).map_or("", |p| p.path))),
            note: "moved project",
            ..Verdict::default()
        },
        _ => verdict(404, "moved project"),
    })
}

// ---------------------------------------------------------------------------------------------
// The server.

/// What the forge did with one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The `X-Variant` header, when the request had one.
    pub variant: Option<String>,
    pub method: String,
    pub target: String,
    pub status: u16,
    pub served: Vec<Served>,
    pub note: &'static str,
}

struct State {
    world: World,
    dialect: Dialect,
    base_url: String,
    git_root: Option<PathBuf>,
    seen: Mutex<Vec<Seen>>,
}

pub struct ModelForge {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
}

impl Drop for ModelForge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl ModelForge {
    /// Serve on `127.0.0.1:0` until dropped. With `git_root`, Git requests for a project whose
    /// repository exists at `<git_root>/<path>.git` are answered by `git http-backend`.
    pub async fn start(world: World, dialect: Dialect, git_root: Option<PathBuf>) -> ModelForge {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            world,
            dialect,
            base_url: format!("http://{addr}"),
            git_root,
            seen: Mutex::new(Vec::new()),
        });
        let shutdown = CancellationToken::new();
        let (st, sd) = (Arc::clone(&state), shutdown.clone());
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            loop {
                let accepted = tokio::select! {
                    _ = sd.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let st = Arc::clone(&st);
                let service = service_fn(move |req| {
                    let st = Arc::clone(&st);
                    async move { Ok::<_, Infallible>(serve(&st, req).await) }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let sd = sd.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = conn => {}
                        _ = sd.cancelled() => {}
                    }
                });
            }
        });
        ModelForge {
            addr,
            state,
            shutdown,
        }
    }

    pub fn url(&self) -> String {
        self.state.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything received so far (the gateway's own `GET /api/v4/job` lookups included).
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// What the forge did with the requests of one variant.
    pub fn seen_for(&self, variant: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.variant.as_deref() == Some(variant))
            .collect()
    }
}

fn respond(status: u16, body: Bytes, headers: &[(&str, String)]) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (n, v) in headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}

async fn serve(state: &State, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let variant = parts
        .headers
        .get("x-variant")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let raw = RawRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &headers,
    };
    if let Some(resp) = lookup_with_pat(&state.world, &raw) {
        return resp;
    }
    let v = interpret(&state.world, state.dialect, &raw);
    if let Ok(mut seen) = state.seen.lock() {
        seen.push(Seen {
            variant,
            method: parts.method.to_string(),
            target: parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str().to_string())
                .unwrap_or_default(),
            status: v.status,
            served: v.served.clone(),
            note: v.note,
        });
    }
    if let Some(job) = &v.job_doc {
        let path = state.world.project(job.project).map_or("", |p| p.path);
        let doc = serde_json::json!({
            "id": job.id,
            "status": "running",
            "web_url": format!("{}/{}/-/jobs/{}", state.base_url, path, job.id),
            "pipeline": {"id": job.id + 5000, "project_id": job.project},
        });
        return respond(200, Bytes::from(doc.to_string()), &[]);
    }
    if let (Some(git), Some(root)) = (&v.git, &state.git_root) {
        let repo = root.join(format!("{}.git", git.project_path));
        // Only real Git clients get the real repository; generated variants get the echo.
        let git_client = raw
            .headers
            .iter()
            .any(|(n, v)| n == "user-agent" && v.starts_with(b"git/"));
        if repo.is_dir() && git_client && !git.rest.contains("lfs") {
            return git_http_backend(root, git, &raw, body).await;
        }
    }
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(l) = &v.location {
        headers.push(("location", l.clone()));
    }
    if v.challenge {
        headers.push(("www-authenticate", "Basic realm=\"GitLab\"".to_string()));
    }
    let doc = serde_json::json!({"status": v.status, "note": v.note});
    respond(v.status, Bytes::from(doc.to_string()), &headers)
}

/// `GET /api/v4/projects/:id` with the model's personal access token in `PRIVATE-TOKEN`: the
/// lookup the gateway makes with its own credential (`lookup_token_file`). The project document
/// (`id`, `path_with_namespace`), 301 to the numeric id for an old path (`find_project` with
/// `follow_redirects`), or 404. Such requests carry no job token, so they are never "served"
/// in the invariant's sense.
fn lookup_with_pat(world: &World, req: &RawRequest<'_>) -> Option<Response<Body>> {
    let pat = req
        .headers
        .iter()
        .any(|(n, v)| n == "private-token" && v.as_slice() == PAT.as_bytes());
    let seg = req.path.strip_prefix("/api/v4/projects/")?;
    if !pat || req.method != "GET" || seg.contains('/') {
        return None;
    }
    let id = pct_decode_lenient(seg);
    let found = match id.parse::<u64>() {
        Ok(n) => world
            .project(n)
            .map_or(Found::None, |p| Found::Project(p.id)),
        Err(_) => world.by_full_path(&id),
    };
    Some(match found {
        Found::Project(n) => {
            let path = world.project(n).map_or("", |p| p.path);
            let doc = serde_json::json!({"id": n, "path_with_namespace": path});
            respond(200, Bytes::from(doc.to_string()), &[])
        }
        Found::Moved(n) => respond(
            301,
            Bytes::new(),
            &[("location", format!("/api/v4/projects/{n}"))],
        ),
        Found::None => respond(
            404,
            Bytes::from_static(b"{\"message\":\"404 Project Not Found\"}"),
            &[],
        ),
    })
}

/// Answer a Git request with `git http-backend` (CGI) on the canonical repository path.
async fn git_http_backend(
    root: &std::path::Path,
    git: &GitCall,
    req: &RawRequest<'_>,
    body: Bytes,
) -> Response<Body> {
    use tokio::io::AsyncWriteExt;
    let header = |n: &str| {
        req.headers
            .iter()
            .find(|(h, _)| h == n)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env(
            "PATH_INFO",
            format!("/{}.git/{}", git.project_path, git.rest),
        )
        .env("QUERY_STRING", req.query.unwrap_or(""))
        .env("REQUEST_METHOD", req.method)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "gitlab-ci-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return respond(500, Bytes::from_static(b"git http-backend failed"), &[]);
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    let Ok(out) = child.wait_with_output().await else {
        return respond(500, Bytes::from_static(b"git http-backend failed"), &[]);
    };
    let stdout = out.stdout;
    let split = stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        return respond(500, Bytes::from_static(b"bad CGI output"), &[]);
    };
    let head = String::from_utf8_lossy(&stdout[..end]).into_owned();
    let mut status = 200;
    let mut headers = Vec::new();
    for line in head.lines() {
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim().to_string();
        if n.eq_ignore_ascii_case("status") {
            status = v
                .split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(500);
        } else {
            headers.push((n.trim().to_ascii_lowercase(), v));
        }
    }
    let hs: Vec<(&str, String)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    respond(status, Bytes::copy_from_slice(&stdout[end + sep..]), &hs)
}
