//! A small stand-in forge: enough of GitLab's API for the demo and the tests.
//!
//! It answers `GET /api/v4/job` for the job tokens it was given (as GitLab does: `JOB-TOKEN`
//! header, `job_token` parameter or `Authorization: Bearer`), and answers every other request
//! with a JSON echo after reading (and hashing) the whole body, recording what it received so a
//! test can assert what reached the upstream.
//!
//! Given a [`Directory`] (users with personal access tokens and roles, projects, groups), it
//! also answers `GET /api/v4/projects/:id` (with the caller's `permissions`) and
//! `GET /api/v4/groups/:id` for callers that present a user credential (`PRIVATE-TOKEN`,
//! `private_token`, `Authorization: Bearer`, or a job token of a job the directory gives a
//! user): what the management API asks the forge. Unknown credentials get 401, projects and
//! groups the caller cannot see 404, as GitLab answers. Test hooks in the query string:
//! `download_bytes=N` streams N bytes back, `standin_reset_after=N` breaks the response body off
//! after N bytes, `standin_delay_ms=N` answers late, `standin_hang=1` never answers; a request
//! with `Upgrade` gets 101 and an echo of every byte on the upgraded connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A job the stand-in forge knows, and the token that job holds.
#[derive(Clone, Debug)]
pub struct StandinJob {
    pub token: String,
    pub job_id: u64,
    pub project_id: u64,
    pub project_path: String,
}

/// One request as the forge received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
    /// Request trailers received after the body (names and values).
    pub trailers: Vec<(String, String)>,
    /// Whether the whole body arrived (false while it streams, or when it broke off).
    pub body_complete: bool,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How `GET /api/v4/job` behaves (to test a failing or hanging forge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LookupMode {
    Normal = 0,
    Fail = 1,
    Hang = 2,
}

/// A user of the stand-in forge and the token that authenticates them.
#[derive(Clone, Debug)]
pub struct StandinUser {
    pub token: String,
    pub username: String,
    /// Project id → access level (10 Guest, 20 Reporter, 30 Developer, 40 Maintainer, 50 Owner).
    pub projects: Vec<(u64, u64)>,
    /// Group full path → access level; it applies to every project and subgroup below.
    pub groups: Vec<(String, u64)>,
}

#[derive(Clone, Debug)]
pub struct StandinProject {
    pub id: u64,
    pub path: String,
    pub public: bool,
}

#[derive(Clone, Debug)]
pub struct StandinGroup {
    pub id: u64,
    pub full_path: String,
    pub public: bool,
}

/// Who exists on the stand-in forge: what `GET /api/v4/projects/:id` and `/groups/:id` answer.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    pub users: Vec<StandinUser>,
    pub projects: Vec<StandinProject>,
    pub groups: Vec<StandinGroup>,
    /// Job token → username: the user a job runs as (for job-token callers).
    pub job_users: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, StandinJob>,
    directory: RwLock<Directory>,
    base_url: String,
    recorded: Mutex<Vec<Recorded>>,
    lookups: AtomicUsize,
    lookup_mode: AtomicU8,
    lookup_delay_ms: AtomicUsize,
}

type Body = BoxBody<Bytes, std::io::Error>;

pub struct Standin {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Standin {
    /// Start on `127.0.0.1:0` (or `addr`) and serve until dropped.
    pub async fn start(jobs: Vec<StandinJob>) -> std::io::Result<Standin> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), jobs).await
    }

    pub async fn start_on(addr: SocketAddr, jobs: Vec<StandinJob>) -> std::io::Result<Standin> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            jobs: jobs.into_iter().map(|j| (j.token.clone(), j)).collect(),
            base_url: format!("http://{addr}"),
            ..State::default()
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(listener, Arc::clone(&state), shutdown.clone()));
        Ok(Standin {
            addr,
            state,
            shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        self.state.base_url.clone()
    }

    /// Every non-lookup request received so far, in order of completion.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .recorded
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut r) = self.state.recorded.lock() {
            r.clear();
        }
    }

    /// How many `GET /api/v4/job` calls it answered (or started to).
    pub fn job_lookups(&self) -> usize {
        self.state.lookups.load(Ordering::SeqCst)
    }

    pub fn set_lookup_mode(&self, mode: LookupMode) {
        self.state.lookup_mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Users, projects and groups for the lookups the management API makes.
    pub fn set_directory(&self, directory: Directory) {
        if let Ok(mut d) = self.state.directory.write() {
            *d = directory;
        }
    }

    /// Make `GET /api/v4/job` slow, so that concurrent first requests overlap.
    pub fn set_lookup_delay(&self, delay: Duration) {
        let ms = usize::try_from(delay.as_millis()).unwrap_or(usize::MAX);
        self.state.lookup_delay_ms.store(ms, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = Arc::clone(&state);
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(serve(&state, req).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(value.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

async fn serve(state: &State, mut req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/api/v4/job" && req.method() == http::Method::GET {
        return job_lookup(state, &req).await;
    }
    if let Some(resp) = directory_lookup(state, &req) {
        return resp;
    }
    let method = req.method().to_string();
    let (target, headers) = target_and_headers(&req);
    // Recorded on arrival, so that a request that reached the forge counts even if its body
    // never completes.
    let index = match state.recorded.lock() {
        Ok(mut r) => {
            r.push(Recorded {
                method: method.clone(),
                target: target.clone(),
                headers,
                body_len: 0,
                body_sha256: String::new(),
                trailers: Vec::new(),
                body_complete: false,
            });
            r.len() - 1
        }
        Err(_) => usize::MAX,
    };
    let query = req.uri().query().map(str::to_string);
    let query = query.as_deref();
    if req.headers().contains_key(http::header::UPGRADE) {
        return websocket_echo(&mut req);
    }
    if query_param(query, "standin_hang").is_some() {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if let Some(ms) = query_param(query, "standin_delay_ms").and_then(|n| n.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let download = query_param(query, "download_bytes").and_then(|n| n.parse::<u64>().ok());
    let reset_after = query_param(query, "standin_reset_after").and_then(|n| n.parse::<u64>().ok());
    // Read the whole body as a stream: hash it, never hold it.
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut body_len = 0u64;
    let mut trailers = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    body_len += data.len() as u64;
                }
                if let Some(t) = frame.trailers_ref() {
                    trailers.extend(t.iter().map(|(n, v)| {
                        (
                            n.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    }));
                }
            }
            Err(_) => {
                // What arrived before the body broke off (body_complete stays false).
                if let Ok(mut r) = state.recorded.lock() {
                    if let Some(rec) = r.get_mut(index) {
                        rec.body_len = body_len;
                    }
                }
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"message": "body read failed"}),
                );
            }
        }
    }
    let body_sha256 = hex::encode(hasher.finalize());
    let echo = serde_json::json!({
        "method": method,
        "target": target,
        "body_len": body_len,
        "body_sha256": body_sha256,
    });
    if let Ok(mut r) = state.recorded.lock() {
        if let Some(rec) = r.get_mut(index) {
            rec.body_len = body_len;
            rec.body_sha256 = body_sha256;
            rec.trailers = trailers;
            rec.body_complete = true;
        }
    }
    match (download, reset_after) {
        (_, Some(n)) => download_response(n.saturating_mul(4).max(1 << 20), Some(n)),
        (Some(n), None) => download_response(n, None),
        (None, None) => json(StatusCode::OK, echo),
    }
}

/// Answers an upgrade with 101 and echoes every byte back on the upgraded connection.
fn websocket_echo(req: &mut Request<Incoming>) -> Response<Body> {
    let protocol = req.headers().get(http::header::UPGRADE).cloned();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let io = TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    if let Some(p) = protocol {
        resp.headers_mut().insert(http::header::UPGRADE, p);
    }
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    resp
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// The byte at offset `i` of a download: a fixed pattern, so a client can check the hash.
pub fn download_pattern_chunk(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect()
}

/// Streams `total` pattern bytes; with `fail_after`, the body breaks off after that many bytes
/// (an upstream that resets in the middle of a body).
fn download_response(total: u64, fail_after: Option<u64>) -> Response<Body> {
    const CHUNK: usize = 64 * 1024;
    let stream = pattern_stream(total, CHUNK, fail_after);
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(total));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

type Chunk = Result<Frame<Bytes>, std::io::Error>;

fn pattern_stream(
    total: u64,
    chunk: usize,
    fail_after: Option<u64>,
) -> impl futures_core::Stream<Item = Chunk> + Send {
    // One pattern block, sliced at the right phase for every chunk: no per-chunk allocation.
    let block = Bytes::from(download_pattern_chunk(0, chunk + 251));
    let mut sent = 0u64;
    FnStream(move || {
        if fail_after.is_some_and(|limit| sent >= limit) {
            return Some(Err(std::io::Error::other("stand-in forge: reset mid-body")));
        }
        if sent >= total {
            return None;
        }
        let n = chunk.min((total - sent) as usize);
        let phase = (sent % 251) as usize;
        let data = block.slice(phase..phase + n);
        sent += n as u64;
        Some(Ok(Frame::data(data)))
    })
}

/// A stream from a closure (avoids pulling in a stream combinator crate).
struct FnStream<F>(F);

impl<F> futures_core::Stream for FnStream<F>
where
    F: FnMut() -> Option<Chunk> + Unpin,
{
    type Item = Chunk;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready((self.0)())
    }
}

async fn job_lookup(state: &State, req: &Request<Incoming>) -> Response<Body> {
    state.lookups.fetch_add(1, Ordering::SeqCst);
    let delay = state.lookup_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    match state.lookup_mode.load(Ordering::SeqCst) {
        1 => {
            return json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"message": "500 Internal Server Error"}),
            )
        }
        2 => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {}
    }
    let headers = req.headers();
    let token = headers
        .get("job-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query_param(req.uri().query(), "job_token"))
        .or_else(|| {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    let Some(job) = token.and_then(|t| state.jobs.get(t)) else {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"message": "401 Unauthorized"}),
        );
    };
    let base = &state.base_url;
    json(
        StatusCode::OK,
        serde_json::json!({
            "id": job.job_id,
            "status": "running",
            "stage": "test",
            "name": "remediate",
            "ref": "main",
            "web_url": format!("{base}/{}/-/jobs/{}", job.project_path, job.job_id),
            "pipeline": {
                "id": job.job_id + 1000,
                "project_id": job.project_id,
                "ref": "main",
                "status": "running",
                "web_url": format!("{base}/{}/-/pipelines/{}", job.project_path, job.job_id + 1000),
            },
            "project": {"ci_job_token_scope_enabled": false},
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Users, projects and groups.

/// What a recorded request carried: its target (path and query) and its headers as text.
fn target_and_headers(req: &Request<Incoming>) -> (String, Vec<(String, String)>) {
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    (target, headers)
}

fn record_lookup(state: &State, req: &Request<Incoming>) {
    let (target, headers) = target_and_headers(req);
    if let Ok(mut r) = state.recorded.lock() {
        r.push(Recorded {
            method: req.method().to_string(),
            target,
            headers,
            body_len: 0,
            body_sha256: String::new(),
            trailers: Vec::new(),
            body_complete: false,
        });
    }
}

/// The credential a directory lookup presents, if any.
fn user_credential(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers();
    let header = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    header("private-token")
        .or_else(|| {
            header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string))
        })
        .or_else(|| header("job-token"))
        .or_else(|| query_param(req.uri().query(), "private_token").map(str::to_string))
}

/// `GET /api/v4/projects/:id` and `GET /api/v4/groups/:id` from the directory; `None` when the
/// request is not one of those or the directory is empty (the echo answers it).
fn directory_lookup(state: &State, req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.method() != http::Method::GET {
        return None;
    }
    let path = req.uri().path();
    let (kind, seg) = if let Some(seg) = path.strip_prefix("/api/v4/projects/") {
        ("project", seg)
    } else if let Some(seg) = path.strip_prefix("/api/v4/groups/") {
        ("group", seg)
    } else {
        return None;
    };
    if seg.is_empty() || seg.contains('/') {
        return None;
    }
    let dir = state.directory.read().ok()?;
    if dir.users.is_empty() {
        return None;
    }
    let token = user_credential(req)?;
    record_lookup(state, req);
    let user = dir.users.iter().find(|u| u.token == token).or_else(|| {
        let name = dir
            .job_users
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, n)| n)?;
        dir.users.iter().find(|u| &u.username == name)
    });
    let Some(user) = user else {
        return Some(json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"message": "401 Unauthorized"}),
        ));
    };
    let name = percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned();
    let base = &state.base_url;
    Some(match kind {
        "project" => project_document(&dir, user, &name, base),
        _ => group_document(&dir, user, &name, base),
    })
}

fn under(path: &str, group: &str) -> bool {
    path.len() > group.len()
        && path[..group.len()].eq_ignore_ascii_case(group)
        && path.as_bytes()[group.len()] == b'/'
}

fn group_level(user: &StandinUser, path: &str) -> u64 {
    user.groups
        .iter()
        .filter(|(g, _)| under(path, g) || path.eq_ignore_ascii_case(g))
        .map(|(_, l)| *l)
        .max()
        .unwrap_or(0)
}

fn access(level: u64) -> serde_json::Value {
    if level == 0 {
        serde_json::Value::Null
    } else {
        serde_json::json!({"access_level": level, "notification_level": 3})
    }
}

fn last(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn project_document(dir: &Directory, user: &StandinUser, name: &str, base: &str) -> Response<Body> {
    let found = dir.projects.iter().find(|p| match name.parse::<u64>() {
        Ok(id) => p.id == id,
        Err(_) => p.path.eq_ignore_ascii_case(name),
    });
    let not_found = || {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "404 Project Not Found"}),
        )
    };
    let Some(p) = found else { return not_found() };
    let project_level = user
        .projects
        .iter()
        .filter(|(id, _)| *id == p.id)
        .map(|(_, l)| *l)
        .max()
        .unwrap_or(0);
    let group_level = group_level(user, &p.path);
    if !p.public && project_level == 0 && group_level == 0 {
        return not_found();
    }
    let namespace = p.path.rsplit_once('/').map(|(ns, _)| ns).unwrap_or("");
    let namespace_id = dir
        .groups
        .iter()
        .find(|g| g.full_path.eq_ignore_ascii_case(namespace))
        .map(|g| g.id);
    json(
        StatusCode::OK,
        serde_json::json!({
            "id": p.id,
            "description": null,
            "name": last(&p.path),
            "name_with_namespace": p.path.replace('/', " / "),
            "path": last(&p.path),
            "path_with_namespace": p.path,
            "created_at": "2024-01-01T00:00:00.000Z",
            "default_branch": "main",
            "tag_list": [],
            "topics": [],
            "ssh_url_to_repo": format!("git@standin:{}.git", p.path),
            "http_url_to_repo": format!("{base}/{}.git", p.path),
            "web_url": format!("{base}/{}", p.path),
            "avatar_url": null,
            "star_count": 0,
            "last_activity_at": "2024-01-01T00:00:00.000Z",
            "namespace": {
                "id": namespace_id,
                "name": last(namespace),
                "path": last(namespace),
                "kind": "group",
                "full_path": namespace,
                "parent_id": null,
                "avatar_url": null,
                "web_url": format!("{base}/groups/{namespace}"),
            },
            "visibility": if p.public { "public" } else { "private" },
            "permissions": {
                "project_access": access(project_level),
                "group_access": access(group_level),
            },
        }),
    )
}

fn group_document(dir: &Directory, user: &StandinUser, name: &str, base: &str) -> Response<Body> {
    let found = dir.groups.iter().find(|g| match name.parse::<u64>() {
        Ok(id) => g.id == id,
        Err(_) => g.full_path.eq_ignore_ascii_case(name),
    });
    let not_found = || {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"message": "404 Group Not Found"}),
        )
    };
    let Some(g) = found else { return not_found() };
    // Visible: public, a member of it or of a group above it, or of a project below it.
    let member_below = user.projects.iter().any(|(id, _)| {
        dir.projects
            .iter()
            .any(|p| p.id == *id && under(&p.path, &g.full_path))
    }) || user
        .groups
        .iter()
        .any(|(path, _)| under(path, &g.full_path));
    if !g.public && group_level(user, &g.full_path) == 0 && !member_below {
        return not_found();
    }
    json(
        StatusCode::OK,
        serde_json::json!({
            "id": g.id,
            "name": last(&g.full_path),
            "path": last(&g.full_path),
            "full_path": g.full_path,
            "full_name": g.full_path.replace('/', " / "),
            "web_url": format!("{base}/groups/{}", g.full_path),
            "visibility": if g.public { "public" } else { "private" },
        }),
    )
}
