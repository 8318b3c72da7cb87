//! The forge's REST API for the job token scope, served by the gateway under `/-/scopegate`.
//!
//! Paths, parameters, JSON shapes, status codes and pagination are GitLab's
//! (`lib/api/project_job_token_scope.rb`), so that python-gitlab, go-gitlab based tools and curl
//! scripts work with their base URL pointed at `https://gateway/-/scopegate`:
//!
//! | route | |
//! |---|---|
//! | `GET /projects/:id/job_token_scope` | `{"inbound_enabled", "outbound_enabled"}` |
//! | `PATCH /projects/:id/job_token_scope` | `enabled` (inbound), `outbound_enabled` → 204 |
//! | `GET\|POST /projects/:id/job_token_scope/allowlist`, `DELETE …/allowlist/:target_project_id` | inbound projects |
//! | `GET\|POST /projects/:id/job_token_scope/groups_allowlist`, `DELETE …/:target_group_id` | inbound groups |
//! | `GET\|POST /projects/:id/job_token_scope/outbound_allowlist`, `DELETE …/:target_project_id` | outbound projects |
//! | `GET\|POST /projects/:id/job_token_scope/outbound_groups_allowlist`, `DELETE …` | outbound groups (an addition) |
//! | `GET /projects/:id/job_token_scope/authorizations` | the authorization log of the project |
//!
//! Parameters come from the query string, a JSON body or a form body, as Grape merges them
//! (the body wins). Lists are paginated like GitLab's offset pagination: `page`, `per_page`
//! (default 20, at most 100), `X-Total`, `X-Total-Pages`, `X-Page`, `X-Per-Page`,
//! `X-Next-Page`, `X-Prev-Page` and `Link`.
//!
//! Project lists hold the forge's project objects (`BasicProjectDetails` fields, fetched with the
//! caller's credential, so a caller sees what the forge lets it see); an entry the caller cannot
//! see, or that no longer exists, is listed from what the scope file knows (`id`,
//! `path_with_namespace`, `name`, `path`, `web_url`). As in GitLab, the project itself leads its
//! own lists. Group lists hold `{id, web_url, name}` (plus `full_path`) from the forge, or from
//! the stored path (`id` null) when the forge does not show the group.

use std::collections::HashMap;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::auth::{encode_path, Answer, Caller, ForgeProject, Kind, MAINTAINER};
use super::write::{Direction, Entry, Named, Refusal, WriteError};
use super::Manager;
use crate::credentials;
use crate::origin::{OriginResolver, TokenKind};
use crate::project::{is_valid_group_path, is_valid_project_path, ProjectIdentity, ProjectRef};

/// Request bodies of this API are a handful of parameters.
const MAX_BODY: usize = 64 * 1024;

/// An answer other than success, in GitLab's shapes: `{"message": ...}` for errors raised by
/// the endpoint, `{"error": ...}` for parameter validation (Grape).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn message(status: StatusCode, message: String) -> Self {
        ApiError {
            status,
            body: json!({ "message": message }),
            allow: None,
        }
    }
    pub fn unauthorized() -> Self {
        Self::message(StatusCode::UNAUTHORIZED, "401 Unauthorized".into())
    }
    pub fn forbidden(reason: Option<&str>) -> Self {
        let m = match reason {
            Some(r) => format!("403 Forbidden - {r}"),
            None => "403 Forbidden".into(),
        };
        Self::message(StatusCode::FORBIDDEN, m)
    }
    pub fn not_found(what: &str) -> Self {
        Self::message(StatusCode::NOT_FOUND, format!("404 {what}"))
    }
    pub fn bad_request(reason: &str) -> Self {
        Self::message(
            StatusCode::BAD_REQUEST,
            format!("400 Bad request - {reason}"),
        )
    }
    pub fn bad_request_plain(reason: &str) -> Self {
        Self::message(StatusCode::BAD_REQUEST, reason.to_string())
    }
    /// Grape's parameter errors: `{"error": "enabled is missing"}`.
    pub fn param(message: String) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({ "error": message }),
            allow: None,
        }
    }
    pub fn unavailable(why: &str) -> Self {
        Self::message(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "503 Service Unavailable - the forge could not be asked ({why}); try again later"
            ),
        )
    }
    fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            body: json!({ "message": "405 Method Not Allowed" }),
            allow: Some(allow),
        }
    }
    fn from_write(e: WriteError) -> Self {
        match e {
            WriteError::ReadOnly(m) => {
                Self::message(StatusCode::CONFLICT, format!("409 Conflict - {m}"))
            }
            WriteError::Refused(Refusal { status, message }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                match status {
                    StatusCode::BAD_REQUEST => Self::bad_request(&message),
                    StatusCode::NOT_FOUND => Self::not_found(&message),
                    _ => Self::message(status, message),
                }
            }
            WriteError::Failed(m) => Self::message(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("500 Internal Server Error - {m}"),
            ),
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = json_response(self.status, &self.body);
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    crate::error::json_response(status, body)
}

fn no_content() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

// ---------------------------------------------------------------------------------------------
// Routing.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resource {
    Settings,
    Projects(Direction),
    Groups(Direction),
    Authorizations,
}

#[derive(Debug, PartialEq, Eq)]
struct Route {
    /// The project segment, percent-decoded.
    project: String,
    resource: Resource,
    /// The target segment of a DELETE, percent-decoded.
    target: Option<String>,
}

fn decode(seg: &str) -> Option<String> {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// `/-/scopegate/api/v4/projects/:id/job_token_scope[/<list>[/:target]]`.
fn route(path: &str) -> Option<Route> {
    let rest = path
        .strip_prefix(super::PREFIX)?
        .strip_prefix("/api/v4/projects/")?;
    let mut segs = rest.split('/');
    let project = decode(segs.next()?)?;
    if project.is_empty() || segs.next()? != "job_token_scope" {
        return None;
    }
    let resource = match segs.next() {
        None | Some("") => Resource::Settings,
        Some("allowlist") => Resource::Projects(Direction::Inbound),
        Some("groups_allowlist") => Resource::Groups(Direction::Inbound),
        Some("outbound_allowlist") => Resource::Projects(Direction::Outbound),
        Some("outbound_groups_allowlist") => Resource::Groups(Direction::Outbound),
        Some("authorizations") => Resource::Authorizations,
        Some(_) => return None,
    };
    let target = match segs.next() {
        None | Some("") => None,
        Some(t) => Some(decode(t)?),
    };
    if segs.next().is_some_and(|s| !s.is_empty())
        || (target.is_some() && matches!(resource, Resource::Settings | Resource::Authorizations))
    {
        return None;
    }
    Some(Route {
        project,
        resource,
        target,
    })
}

fn check_method(method: &Method, route: &Route) -> Result<(), ApiError> {
    let allowed: &[Method] = match (route.resource, route.target.is_some()) {
        (Resource::Settings, _) => &[Method::GET, Method::PATCH],
        (Resource::Authorizations, _) => &[Method::GET],
        (_, false) => &[Method::GET, Method::POST],
        (_, true) => &[Method::DELETE],
    };
    if allowed.contains(method) {
        return Ok(());
    }
    Err(ApiError::method_not_allowed(
        match (route.resource, route.target.is_some()) {
            (Resource::Settings, _) => "GET, PATCH",
            (Resource::Authorizations, _) => "GET",
            (_, false) => "GET, POST",
            (_, true) => "DELETE",
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Parameters: query, then the body (JSON object or form), the body winning.

#[derive(Debug, Default)]
pub struct Params(HashMap<String, Value>);

fn form_pairs(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.split(['&', ';'])
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
}

fn form_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

impl Params {
    pub fn from_query(query: Option<&str>) -> Params {
        let mut p = Params::default();
        for (k, v) in form_pairs(query.unwrap_or("")) {
            p.0.insert(k, Value::String(v));
        }
        p
    }

    fn add_body(&mut self, content_type: Option<&str>, body: &[u8]) -> Result<(), ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if ct.starts_with("application/json") || (ct.is_empty() && body.first() == Some(&b'{')) {
            let v: Value = serde_json::from_slice(body).map_err(|_| {
                ApiError::bad_request_plain("400 Bad request - the JSON body does not parse")
            })?;
            let Value::Object(map) = v else {
                return Err(ApiError::bad_request_plain(
                    "400 Bad request - the JSON body must be an object",
                ));
            };
            self.0.extend(map);
            Ok(())
        } else if ct.starts_with("multipart/") {
            Err(ApiError::message(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "415 Unsupported Media Type - send JSON or a form (application/x-www-form-urlencoded)".into(),
            ))
        } else {
            let text = std::str::from_utf8(body).map_err(|_| {
                ApiError::bad_request_plain("400 Bad request - the body is not UTF-8")
            })?;
            for (k, v) in form_pairs(text) {
                self.0.insert(k, Value::String(v));
            }
            Ok(())
        }
    }

    pub fn string(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Grape's Boolean coercion.
    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        let Some(v) = self.0.get(name) else {
            return Ok(None);
        };
        let parsed = match v {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => match n.as_i64() {
                Some(1) => Some(true),
                Some(0) => Some(false),
                _ => None,
            },
            Value::String(s) if s.is_empty() => {
                return Err(ApiError::param(format!("{name} is empty")))
            }
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "t" | "yes" | "y" | "on" => Some(true),
                "false" | "0" | "f" | "no" | "n" | "off" => Some(false),
                _ => None,
            },
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| ApiError::param(format!("{name} is invalid")))
    }

    /// A project or group named by integer id (GitLab's type) or, as an addition, full path.
    fn target(&self, name: &str) -> Result<ProjectRef, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Err(ApiError::param(format!("{name} is missing"))),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|&n| n > 0)
                .map(ProjectRef::Id)
                .ok_or_else(|| ApiError::param(format!("{name} is invalid"))),
            Some(Value::String(s)) if s.is_empty() => {
                Err(ApiError::param(format!("{name} is empty")))
            }
            Some(Value::String(s)) => {
                parse_ref(s).ok_or_else(|| ApiError::param(format!("{name} is invalid")))
            }
            Some(_) => Err(ApiError::param(format!("{name} is invalid"))),
        }
    }
}

/// A numeric id, or a full path (project or group) as written (case kept).
fn parse_ref(s: &str) -> Option<ProjectRef> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok().filter(|&n| n > 0).map(ProjectRef::Id);
    }
    is_valid_group_path(s).then(|| ProjectRef::Path(s.into()))
}

fn segment(r: &ProjectRef) -> String {
    match r {
        ProjectRef::Id(id) => id.to_string(),
        ProjectRef::Path(p) => encode_path(p),
    }
}

// ---------------------------------------------------------------------------------------------
// Pagination.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub page: usize,
    pub per_page: usize,
}

impl Page {
    pub fn from_params(params: &Params) -> Result<Page, ApiError> {
        let int = |name: &str, default: usize| -> Result<usize, ApiError> {
            match params.string(name) {
                None => Ok(default),
                Some(s) if s.is_empty() => Ok(default),
                Some(s) => s
                    .parse::<i64>()
                    .map(|n| usize::try_from(n).unwrap_or(0))
                    .map_err(|_| ApiError::param(format!("{name} is invalid"))),
            }
        };
        let page = int("page", 1)?.max(1);
        let per_page = match int("per_page", 20)? {
            0 => 20,
            n => n.min(100),
        };
        Ok(Page { page, per_page })
    }

    /// The slice of `total` items this page shows.
    pub fn range(&self, total: usize) -> std::ops::Range<usize> {
        let start = (self.page - 1).saturating_mul(self.per_page).min(total);
        start..start.saturating_add(self.per_page).min(total)
    }

    /// GitLab's pagination headers. `base` is the request URL without its query.
    pub fn headers(&self, total: usize, base: Option<&str>, query: Option<&str>) -> HeaderMap {
        let pages = total.div_ceil(self.per_page).max(1);
        let mut h = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        };
        put("x-total", total.to_string());
        put("x-total-pages", pages.to_string());
        put("x-page", self.page.to_string());
        put("x-per-page", self.per_page.to_string());
        let next = (self.page < pages).then_some(self.page + 1);
        let prev = (self.page > 1).then(|| (self.page - 1).min(pages));
        put(
            "x-next-page",
            next.map(|n| n.to_string()).unwrap_or_default(),
        );
        put(
            "x-prev-page",
            prev.map(|n| n.to_string()).unwrap_or_default(),
        );
        if let Some(base) = base {
            let kept: Vec<&str> = query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    // Credentials never go into a header the server sends back.
                    let k = p.split('=').next().unwrap_or("");
                    !matches!(
                        k,
                        "page"
                            | "per_page"
                            | "private_token"
                            | "access_token"
                            | "job_token"
                            | "token"
                            | "bearer_token"
                    )
                })
                .collect();
            let url = |page: usize| {
                let mut q = kept.join("&");
                if !q.is_empty() {
                    q.push('&');
                }
                format!("{base}?{q}page={page}&per_page={}", self.per_page)
            };
            let mut links = Vec::new();
            if let Some(p) = prev {
                links.push(format!("<{}>; rel=\"prev\"", url(p)));
            }
            if let Some(n) = next {
                links.push(format!("<{}>; rel=\"next\"", url(n)));
            }
            links.push(format!("<{}>; rel=\"first\"", url(1)));
            links.push(format!("<{}>; rel=\"last\"", url(pages)));
            put("link", links.join(", "));
        }
        h
    }
}

/// The request's own URL without the query, for `Link` (scheme from the URI, else
/// `X-Forwarded-Proto`, else http).
pub fn base_url<B>(req: &Request<B>) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))?;
    let scheme = req
        .uri()
        .scheme_str()
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .filter(|v| matches!(*v, "http" | "https"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "http".into());
    Some(format!("{scheme}://{host}{}", req.uri().path()))
}

/// A paginated JSON array response.
pub fn page_response(
    items: Vec<Value>,
    total: usize,
    page: Page,
    base: Option<&str>,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut resp = json_response(StatusCode::OK, &Value::Array(items));
    resp.headers_mut().extend(page.headers(total, base, query));
    resp
}

// ---------------------------------------------------------------------------------------------
// The endpoints.

/// Everything a handler needs about the request.
struct Ctx<'a> {
    manager: &'a Manager,
    caller: Caller,
    params: Params,
    project: ForgeProject,
    base: Option<String>,
    query: Option<String>,
}

impl Ctx<'_> {
    fn named(&self) -> Named {
        Named {
            id: Some(self.project.id),
            path: Some(self.project.path_with_namespace.clone()),
        }
    }
    fn identity(&self) -> ProjectIdentity {
        ProjectIdentity {
            id: Some(self.project.id),
            path: Some(self.project.path_with_namespace.to_ascii_lowercase().into()),
        }
    }
}

pub async fn serve(
    manager: &Manager,
    req: Request<Incoming>,
    resolver: &OriginResolver,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let Some(route) = route(req.uri().path()) else {
        return Err(ApiError::message(
            StatusCode::NOT_FOUND,
            "404 Not Found".into(),
        ));
    };
    check_method(req.method(), &route)?;
    let base = base_url(&req);
    let query = req.uri().query().map(str::to_string);
    let mut params = Params::from_query(query.as_deref());
    let method = req.method().clone();
    let (parts, body) = req.into_parts();
    if method != Method::GET {
        let bytes = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|_| {
                ApiError::message(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "413 Request Entity Too Large".into(),
                )
            })?
            .to_bytes();
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        params.add_body(ct, &bytes)?;
    }

    // Who is asking, and what may they do on this project.
    let caller = Caller::from_request(&parts.headers, |n| params.string(n))?;
    if caller.is_anonymous() {
        return Err(ApiError::unauthorized());
    }
    let job_origin = job_token_origin(manager, &caller, resolver).await?;
    let project_ref = parse_ref(&route.project)
        .filter(|r| match r {
            ProjectRef::Path(p) => is_valid_project_path(p),
            ProjectRef::Id(_) => true,
        })
        .ok_or_else(|| ApiError::not_found("Project Not Found"))?;
    let project = match manager
        .forge
        .project(&segment(&project_ref), &caller)
        .await?
    {
        Answer::Found(p) => p,
        Answer::Unauthorized => return Err(ApiError::unauthorized()),
        Answer::Forbidden => return Err(ApiError::forbidden(None)),
        Answer::NotFound => return Err(ApiError::not_found("Project Not Found")),
    };
    if let Some(origin) = job_origin {
        if origin != project.id {
            return Err(ApiError::forbidden(Some(
                "a CI/CD job token may manage only its own project's job token scope",
            )));
        }
    }
    if project.access_level < MAINTAINER {
        return Err(ApiError::forbidden(None));
    }

    let ctx = Ctx {
        manager,
        caller,
        params,
        project,
        base,
        query,
    };
    let result = match (route.resource, &method, route.target.as_deref()) {
        (Resource::Settings, &Method::GET, _) => Ok(get_settings(&ctx)),
        (Resource::Settings, _, _) => patch_settings(&ctx).await,
        (Resource::Authorizations, _, _) => authorizations(&ctx).await,
        (Resource::Projects(dir), &Method::GET, _) => list_projects(&ctx, dir).await,
        (Resource::Projects(dir), &Method::POST, _) => add_project(&ctx, dir).await,
        (Resource::Projects(dir), _, Some(t)) => remove_project(&ctx, dir, t).await,
        (Resource::Groups(dir), &Method::GET, _) => list_groups(&ctx, dir).await,
        (Resource::Groups(dir), &Method::POST, _) => add_group(&ctx, dir).await,
        (Resource::Groups(dir), _, Some(t)) => remove_group(&ctx, dir, t).await,
        _ => Err(ApiError::method_not_allowed("GET")),
    };
    result
}

/// When the credential is a job token: its origin project id (else None). Every job token on
/// the request is resolved as the enforcing path does.
async fn job_token_origin(
    manager: &Manager,
    caller: &Caller,
    resolver: &OriginResolver,
) -> Result<Option<u64>, ApiError> {
    let creds = credentials::extract(caller.headers(), None, &manager.prefixes)
        .map_err(|e| ApiError::bad_request_plain(&format!("400 Bad request - {e}")))?;
    let unavailable = |e: crate::origin::OriginError| ApiError::unavailable(&e.to_string());
    let mut origin = None;
    if let Some(token) = &creds.job_token {
        match snapshot_token(manager, token) {
            Some(id) => origin = Some(id),
            None => match resolver.resolve(token).await.map_err(unavailable)? {
                TokenKind::Job(job) => origin = Some(job.project_id),
                TokenKind::NotJob => return Err(ApiError::unauthorized()),
            },
        }
    }
    for candidate in &creds.unclassified {
        if let TokenKind::Job(job) = resolver.resolve(candidate).await.map_err(unavailable)? {
            if origin.is_some_and(|o| o != job.project_id) {
                return Err(ApiError::bad_request_plain(
                    "400 Bad request - the request carries more than one different CI/CD job token",
                ));
            }
            origin = Some(job.project_id);
        }
    }
    Ok(origin)
}

/// A `[[token]]` of the scope file: its project id, when the file knows it.
fn snapshot_token(manager: &Manager, token: &credentials::JobToken) -> Option<u64> {
    manager
        .store
        .load()
        .policy
        .static_token(&token.sha256())
        .map(|p| p.id.unwrap_or(0))
}

fn get_settings(ctx: &Ctx<'_>) -> Response<Full<Bytes>> {
    let snap = ctx.manager.store.load();
    let eff = snap.policy.effective(&ctx.identity());
    json_response(
        StatusCode::OK,
        &json!({
            "inbound_enabled": eff.inbound.enabled(),
            "outbound_enabled": eff.outbound.enabled(),
        }),
    )
}

async fn patch_settings(ctx: &Ctx<'_>) -> Result<Response<Full<Bytes>>, ApiError> {
    let inbound = match ctx.params.bool("enabled")? {
        Some(b) => Some(b),
        None => ctx.params.bool("inbound_enabled")?,
    };
    let outbound = ctx.params.bool("outbound_enabled")?;
    if inbound.is_none() && outbound.is_none() {
        return Err(ApiError::param("enabled is missing".into()));
    }
    let who = ctx.named();
    ctx.manager
        .write(move |doc, _| {
            if let Some(b) = inbound {
                doc.set_enabled(&who, Direction::Inbound, b);
            }
            if let Some(b) = outbound {
                doc.set_enabled(&who, Direction::Outbound, b);
            }
            Ok(())
        })
        .await
        .map_err(ApiError::from_write)?;
    Ok(no_content())
}

/// The fields of GitLab's `BasicProjectDetails` that the forge's project document has.
const BASIC_PROJECT_FIELDS: [&str; 17] = [
    "id",
    "description",
    "name",
    "name_with_namespace",
    "path",
    "path_with_namespace",
    "created_at",
    "default_branch",
    "tag_list",
    "topics",
    "ssh_url_to_repo",
    "http_url_to_repo",
    "web_url",
    "avatar_url",
    "star_count",
    "last_activity_at",
    "namespace",
];

fn basic_project(doc: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for f in BASIC_PROJECT_FIELDS {
        if let Some(v) = doc.get(f) {
            out.insert(f.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

fn last_segment(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What the scope file knows about a project the forge does not show.
fn known_project(manager: &Manager, id: Option<u64>, path: Option<&str>) -> Value {
    let path = path.map(str::to_string);
    json!({
        "id": id,
        "name": path.as_deref().map(last_segment),
        "path": path.as_deref().map(last_segment),
        "path_with_namespace": path,
        "web_url": path.as_deref().map(|p| format!("{}/{p}", manager.external_url)),
    })
}

async fn list_projects(ctx: &Ctx<'_>, dir: Direction) -> Result<Response<Full<Bytes>>, ApiError> {
    let page = Page::from_params(&ctx.params)?;
    let snap = ctx.manager.store.load();
    let eff = snap.policy.effective(&ctx.identity());
    let limit = match dir {
        Direction::Inbound => eff.inbound,
        Direction::Outbound => eff.outbound,
    };
    let mut ids: Vec<u64> = limit.allowed_ids().collect();
    ids.sort_unstable();
    let mut paths: Vec<String> = limit.allowed_paths().map(str::to_string).collect();
    paths.sort();
    // The project itself leads, as in GitLab's `Allowlist#projects`.
    let mut items: Vec<Option<ProjectRef>> = vec![None];
    items.extend(ids.into_iter().map(|i| Some(ProjectRef::Id(i))));
    items.extend(paths.into_iter().map(|p| Some(ProjectRef::Path(p.into()))));
    let total = items.len();
    let shown = &items[page.range(total)];
    let lookups: Vec<String> = shown.iter().flatten().map(segment).collect();
    let mut found = ctx
        .manager
        .forge
        .documents(Kind::Project, lookups, &ctx.caller)
        .await?
        .into_iter();
    let mut out = Vec::with_capacity(shown.len());
    for item in shown {
        out.push(match item {
            None => basic_project(&ctx.project.document),
            Some(r) => match found.next().flatten() {
                Some(doc) => basic_project(&doc),
                None => {
                    let known = snap.policy.identify(r);
                    known_project(ctx.manager, known.id, known.path.as_deref())
                }
            },
        });
    }
    Ok(page_response(
        out,
        total,
        page,
        ctx.base.as_deref(),
        ctx.query.as_deref(),
    ))
}

async fn add_project(ctx: &Ctx<'_>, dir: Direction) -> Result<Response<Full<Bytes>>, ApiError> {
    let target = ctx.params.target("target_project_id")?;
    let x = match ctx
        .manager
        .forge
        .project(&segment(&target), &ctx.caller)
        .await?
    {
        Answer::Found(p) => p,
        _ => return Err(ApiError::not_found("target_project_id not found")),
    };
    if x.id == ctx.project.id {
        return Err(ApiError::bad_request(
            "Validation failed: Target project can't be the same as the source project",
        ));
    }
    let who = ctx.named();
    let me = ctx.identity();
    let max = ctx.manager.max_allowlist;
    let (xid, xpath) = (x.id, x.path_with_namespace.clone());
    ctx.manager
        .write(move |doc, policy| {
            let eff = policy.effective(&me);
            let limit = match dir {
                Direction::Inbound => eff.inbound,
                Direction::Outbound => eff.outbound,
            };
            let lower = xpath.to_ascii_lowercase();
            if limit.allowed_ids().any(|i| i == xid) || limit.allowed_paths().any(|p| p == lower) {
                return Err(Refusal::new(400, "Target project is already in the job token scope"));
            }
            if limit.project_entries() >= max {
                return Err(Refusal::new(
                    400,
                    format!("Validation failed: Source project exceeds the allowable number of project links in this direction ({max})"),
                ));
            }
            doc.add_allow(&who, dir, &Entry::Id(xid));
            // Known by both names, so requests naming it either way match the entry.
            if !doc.lists(Some(xid), Some(&xpath)) {
                doc.ensure_entry(&Named {
                    id: Some(xid),
                    path: Some(xpath.clone()),
                });
            }
            Ok(())
        })
        .await
        .map_err(ApiError::from_write)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"source_project_id": ctx.project.id, "target_project_id": x.id}),
    ))
}

async fn remove_project(
    ctx: &Ctx<'_>,
    dir: Direction,
    target: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let target = parse_ref(target)
        .filter(|r| match r {
            ProjectRef::Path(p) => is_valid_project_path(p),
            ProjectRef::Id(_) => true,
        })
        .ok_or_else(|| ApiError::param("target_project_id is invalid".into()))?;
    // Both names of the project, from the forge when it shows it, else from the scope file
    // (an entry for a project that is gone can still be removed).
    let mut entries = Vec::new();
    match ctx
        .manager
        .forge
        .project(&segment(&target), &ctx.caller)
        .await?
    {
        Answer::Found(p) => {
            if p.id == ctx.project.id {
                return Err(ApiError::bad_request(
                    "Source project cannot be removed from the job token scope",
                ));
            }
            entries.push(Entry::Id(p.id));
            entries.push(Entry::Path(p.path_with_namespace));
        }
        _ => {
            let known = ctx.manager.store.load().policy.identify(&target);
            if known.id == Some(ctx.project.id) {
                return Err(ApiError::bad_request(
                    "Source project cannot be removed from the job token scope",
                ));
            }
            entries.extend(known.id.map(Entry::Id));
            entries.extend(known.path.map(|p| Entry::Path(p.to_string())));
        }
    }
    let who = ctx.named();
    ctx.manager
        .write(move |doc, _| {
            if doc.remove_allow(&who, dir, &entries) == 0 {
                return Err(Refusal::new(
                    400,
                    "Target project is not in the job token scope",
                ));
            }
            Ok(())
        })
        .await
        .map_err(ApiError::from_write)?;
    Ok(no_content())
}

async fn list_groups(ctx: &Ctx<'_>, dir: Direction) -> Result<Response<Full<Bytes>>, ApiError> {
    let page = Page::from_params(&ctx.params)?;
    let snap = ctx.manager.store.load();
    let eff = snap.policy.effective(&ctx.identity());
    let limit = match dir {
        Direction::Inbound => eff.inbound,
        Direction::Outbound => eff.outbound,
    };
    let mut groups: Vec<String> = limit.allowed_groups().map(str::to_string).collect();
    groups.sort();
    let total = groups.len();
    let shown = &groups[page.range(total)];
    let lookups: Vec<String> = shown.iter().map(|g| encode_path(g)).collect();
    let found = ctx
        .manager
        .forge
        .documents(Kind::Group, lookups, &ctx.caller)
        .await?;
    let out = shown
        .iter()
        .zip(found)
        .map(|(g, doc)| match doc {
            Some(doc) => json!({
                "id": doc.get("id").cloned().unwrap_or(Value::Null),
                "web_url": doc.get("web_url").cloned().unwrap_or(Value::Null),
                "name": doc.get("name").cloned().unwrap_or(Value::Null),
                "full_path": doc.get("full_path").cloned().unwrap_or(Value::Null),
            }),
            None => json!({
                "id": null,
                "web_url": format!("{}/groups/{g}", ctx.manager.external_url),
                "name": last_segment(g),
                "full_path": g,
            }),
        })
        .collect();
    Ok(page_response(
        out,
        total,
        page,
        ctx.base.as_deref(),
        ctx.query.as_deref(),
    ))
}

async fn add_group(ctx: &Ctx<'_>, dir: Direction) -> Result<Response<Full<Bytes>>, ApiError> {
    let target = ctx.params.target("target_group_id")?;
    let g = match ctx
        .manager
        .forge
        .group(&segment(&target), &ctx.caller)
        .await?
    {
        Answer::Found(g) => g,
        _ => return Err(ApiError::not_found("target_group_id not found")),
    };
    let who = ctx.named();
    let me = ctx.identity();
    let max = ctx.manager.max_allowlist;
    let path = g.full_path.clone();
    ctx.manager
        .write(move |doc, policy| {
            let eff = policy.effective(&me);
            let limit = match dir {
                Direction::Inbound => eff.inbound,
                Direction::Outbound => eff.outbound,
            };
            let lower = path.to_ascii_lowercase();
            if limit.allowed_groups().any(|p| p == lower) {
                return Err(Refusal::new(400, "Target group is already in the job token scope"));
            }
            if limit.group_entries() >= max {
                return Err(Refusal::new(
                    400,
                    format!("Validation failed: Source project exceeds the allowable number of group links ({max})"),
                ));
            }
            doc.add_group(&who, dir, &path);
            Ok(())
        })
        .await
        .map_err(ApiError::from_write)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"source_project_id": ctx.project.id, "target_group_id": g.id}),
    ))
}

async fn remove_group(
    ctx: &Ctx<'_>,
    dir: Direction,
    target: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let target =
        parse_ref(target).ok_or_else(|| ApiError::param("target_group_id is invalid".into()))?;
    let path = match ctx
        .manager
        .forge
        .group(&segment(&target), &ctx.caller)
        .await?
    {
        Answer::Found(g) => g.full_path,
        _ => match target {
            // A group that is gone (or hidden) can still be removed by its path.
            ProjectRef::Path(p) => p.into(),
            ProjectRef::Id(_) => return Err(ApiError::not_found("target_group_id not found")),
        },
    };
    let who = ctx.named();
    ctx.manager
        .write(move |doc, _| {
            if doc.remove_group(&who, dir, &path) == 0 {
                return Err(Refusal::new(
                    400,
                    "Target group is not in the job token scope",
                ));
            }
            Ok(())
        })
        .await
        .map_err(ApiError::from_write)?;
    Ok(no_content())
}

async fn authorizations(ctx: &Ctx<'_>) -> Result<Response<Full<Bytes>>, ApiError> {
    let page = Page::from_params(&ctx.params)?;
    let me = ctx.identity();
    let pairs = ctx
        .manager
        .authlog
        .for_target(me.id, me.path.as_deref())
        .await
        .map_err(|e| {
            ApiError::message(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("500 Internal Server Error - {e}"),
            )
        })?;
    let total = pairs.len();
    let items = pairs[page.range(total)]
        .iter()
        .map(|p| p.to_json())
        .collect();
    Ok(page_response(
        items,
        total,
        page,
        ctx.base.as_deref(),
        ctx.query.as_deref(),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = route("/-/scopegate/api/v4/projects/acme%2Fapp/job_token_scope").unwrap();
        assert_eq!(r.project, "acme/app");
        assert_eq!(r.resource, Resource::Settings);
        let r = route("/-/scopegate/api/v4/projects/12/job_token_scope/allowlist/30").unwrap();
        assert_eq!(r.resource, Resource::Projects(Direction::Inbound));
        assert_eq!(r.target.as_deref(), Some("30"));
        let r = route("/-/scopegate/api/v4/projects/12/job_token_scope/groups_allowlist/").unwrap();
        assert_eq!(
            (r.resource, r.target),
            (Resource::Groups(Direction::Inbound), None)
        );
        let r =
            route("/-/scopegate/api/v4/projects/12/job_token_scope/outbound_allowlist").unwrap();
        assert_eq!(r.resource, Resource::Projects(Direction::Outbound));
        assert!(route("/-/scopegate/api/v4/projects/12/job_token_scope/x").is_none());
        assert!(route("/-/scopegate/api/v4/projects/12/jobs").is_none());
        assert!(route("/-/scopegate/api/v4/projects/12/job_token_scope/allowlist/1/2").is_none());
        assert!(
            route("/-/scopegate/api/v4/projects/12/job_token_scope/authorizations/1").is_none()
        );
        assert!(route("/api/v4/projects/12/job_token_scope").is_none());
    }

    #[test]
    fn methods() {
        let r = route("/-/scopegate/api/v4/projects/12/job_token_scope/allowlist/3").unwrap();
        assert!(check_method(&Method::DELETE, &r).is_ok());
        let e = check_method(&Method::GET, &r).unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn parameters_from_query_json_and_form() {
        let mut p = Params::from_query(Some("enabled=false&target_project_id=3"));
        p.add_body(Some("application/json"), br#"{"enabled": true}"#)
            .unwrap();
        assert_eq!(p.bool("enabled").unwrap(), Some(true));
        assert_eq!(p.target("target_project_id").unwrap(), ProjectRef::Id(3));
        let mut p = Params::default();
        p.add_body(
            Some("application/x-www-form-urlencoded"),
            b"enabled=0&target_group_id=acme%2Fplatform",
        )
        .unwrap();
        assert_eq!(p.bool("enabled").unwrap(), Some(false));
        assert_eq!(
            p.target("target_group_id").unwrap(),
            ProjectRef::Path("acme/platform".into())
        );
        assert_eq!(
            p.target("target_project_id").unwrap_err().body,
            json!({"error": "target_project_id is missing"})
        );
        let p = Params::from_query(Some("enabled=maybe"));
        assert_eq!(
            p.bool("enabled").unwrap_err().body,
            json!({"error": "enabled is invalid"})
        );
        let mut p = Params::default();
        assert!(p.add_body(Some("application/json"), b"[1]").is_err());
        assert!(p.add_body(Some("multipart/form-data"), b"x").is_err());
    }

    #[test]
    fn pagination_headers() {
        let p = Page::from_params(&Params::from_query(Some("page=2&per_page=2&x=1"))).unwrap();
        assert_eq!(p.range(5), 2..4);
        let h = p.headers(
            5,
            Some("http://gw/-/scopegate/api/v4/projects/1/job_token_scope/allowlist"),
            Some("page=2&per_page=2&x=1"),
        );
        assert_eq!(h["x-total"], "5");
        assert_eq!(h["x-total-pages"], "3");
        assert_eq!(h["x-page"], "2");
        assert_eq!(h["x-per-page"], "2");
        assert_eq!(h["x-next-page"], "3");
        assert_eq!(h["x-prev-page"], "1");
        let link = h["link"].to_str().unwrap();
        assert!(link.contains("<http://gw/-/scopegate/api/v4/projects/1/job_token_scope/allowlist?x=1&page=3&per_page=2>; rel=\"next\""), "{link}");
        assert!(
            link.contains("rel=\"prev\"")
                && link.contains("rel=\"first\"")
                && link.contains("rel=\"last\"")
        );
        let last = Page {
            page: 3,
            per_page: 2,
        };
        assert_eq!(last.range(5), 4..5);
        assert_eq!(last.headers(5, None, None)["x-next-page"], "");
        let d = Page::from_params(&Params::from_query(Some("per_page=1000"))).unwrap();
        assert_eq!(
            d,
            Page {
                page: 1,
                per_page: 100
            }
        );
        let d = Page::from_params(&Params::default()).unwrap();
        assert_eq!(
            d,
            Page {
                page: 1,
                per_page: 20
            }
        );
        assert_eq!(
            Page {
                page: 9,
                per_page: 20
            }
            .range(3),
            3..3
        );
        assert_eq!(
            Page {
                page: 1,
                per_page: 20
            }
            .headers(0, None, None)["x-total-pages"],
            "1"
        );
        assert!(Page::from_params(&Params::from_query(Some("page=x"))).is_err());
    }
}
