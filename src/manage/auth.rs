//! Who may change what: the caller's own forge credential, and the forge's answers about it.
//!
//! The management API never acts with a credential of its own. The caller's credential
//! (`PRIVATE-TOKEN`, `Authorization: Bearer` for OAuth and personal tokens, `JOB-TOKEN`, or the
//! `private_token`, `access_token` and `job_token` parameters) is sent to the forge as it came:
//! `GET /api/v4/projects/:id` says whether the caller sees the project and with which role
//! (`permissions.project_access` / `permissions.group_access`, the higher of the two counts);
//! `GET /api/v4/projects/:target` and `GET /api/v4/groups/:target` say whether a project or
//! group being added is visible to the caller.
//!
//! A CI/CD job token may manage only the scope of its own project: otherwise a job of one
//! project whose user happens to maintain another could widen that other project's allowlist,
//! going around the very scope the gateway enforces. (GitLab itself accepts no job token on
//! these routes; the forge still has to say the job's user is a Maintainer.)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::api::ApiError;
use crate::settings::Upstream;

/// The forge's project and group documents are small.
const MAX_DOCUMENT: usize = 1 << 20;

pub const MAINTAINER: u64 = 40;

const PRIVATE_TOKEN: HeaderName = HeaderName::from_static("private-token");
const JOB_TOKEN: HeaderName = HeaderName::from_static("job-token");

/// The caller's credential, as headers to send to the forge.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    headers: HeaderMap,
}

impl Caller {
    /// From the request's credential headers and parameters (query and body).
    pub fn from_request(
        headers: &HeaderMap,
        param: impl Fn(&str) -> Option<String>,
    ) -> Result<Caller, ApiError> {
        let mut out = HeaderMap::new();
        for (name, value) in headers {
            let n = name.as_str();
            if n == "private-token" || n == "private_token" {
                out.insert(PRIVATE_TOKEN, value.clone());
            } else if n == "job-token" || n == "job_token" {
                out.insert(JOB_TOKEN, value.clone());
            } else if name == http::header::AUTHORIZATION {
                out.insert(http::header::AUTHORIZATION, value.clone());
            }
        }
        let header = |v: String| {
            HeaderValue::from_str(&v)
                .map_err(|_| ApiError::bad_request_plain("malformed credential"))
        };
        if !out.contains_key(&PRIVATE_TOKEN) {
            if let Some(v) = param("private_token") {
                out.insert(PRIVATE_TOKEN, header(v)?);
            }
        }
        if !out.contains_key(&JOB_TOKEN) {
            if let Some(v) = param("job_token") {
                out.insert(JOB_TOKEN, header(v)?);
            }
        }
        if !out.contains_key(http::header::AUTHORIZATION) {
            if let Some(v) = param("access_token") {
                out.insert(http::header::AUTHORIZATION, header(format!("Bearer {v}"))?);
            }
        }
        Ok(Caller { headers: out })
    }

    pub fn is_anonymous(&self) -> bool {
        self.headers.is_empty()
    }

    /// The credential headers (to classify job tokens among them).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// Lookups of one list page in flight at once.
const LOOKUP_CONCURRENCY: usize = 8;

/// What a list page looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Project,
    Group,
}

/// What the forge said about one project, as the caller sees it.
#[derive(Clone, Debug)]
pub struct ForgeProject {
    pub id: u64,
    pub path_with_namespace: String,
    /// The higher of the caller's project and group access levels (0: none).
    pub access_level: u64,
    pub document: Value,
}

/// What the forge said about one group.
#[derive(Clone, Debug)]
pub struct ForgeGroup {
    pub id: u64,
    pub full_path: String,
    pub document: Value,
}

/// The forge's answer to a lookup.
pub enum Answer<T> {
    Found(T),
    Unauthorized,
    Forbidden,
    NotFound,
}

pub struct ForgeClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    upstream: Upstream,
    timeout: Duration,
}

impl ForgeClient {
    /// `tls` is the forwarder's upstream TLS configuration (an `https://` forge works too).
    pub fn new(upstream: Upstream, timeout: Duration, tls: rustls::ClientConfig) -> Self {
        let connector = crate::tls::https_connector(tls, timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        ForgeClient {
            client,
            upstream,
            timeout,
        }
    }

    async fn get(&self, path: &str, caller: &Caller) -> Result<Answer<Value>, ApiError> {
        let uri = http::Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| ApiError::unavailable(&format!("cannot build the forge URL: {e}")))?;
        let mut req = Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "scopegate")
            .body(Empty::new())
            .map_err(|e| ApiError::unavailable(&e.to_string()))?;
        for (name, value) in &caller.headers {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        let resp = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => return Err(ApiError::unavailable("the forge did not answer in time")),
            Ok(Err(e)) => {
                return Err(ApiError::unavailable(&format!(
                    "cannot reach the forge: {e}"
                )))
            }
            Ok(Ok(resp)) => resp,
        };
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Ok(Answer::Unauthorized),
            StatusCode::FORBIDDEN => return Ok(Answer::Forbidden),
            StatusCode::NOT_FOUND => return Ok(Answer::NotFound),
            other => {
                return Err(ApiError::unavailable(&format!(
                    "the forge answered {other}"
                )))
            }
        }
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(resp.into_body(), MAX_DOCUMENT).collect(),
        )
        .await
        .map_err(|_| ApiError::unavailable("the forge did not answer in time"))?
        .map_err(|e| ApiError::unavailable(&format!("reading the forge's answer: {e}")))?
        .to_bytes();
        serde_json::from_slice(&body)
            .map(Answer::Found)
            .map_err(|e| ApiError::unavailable(&format!("the forge's answer is not JSON: {e}")))
    }

    /// `GET /api/v4/projects/:id` (`segment`: a numeric id or a URL-encoded full path).
    pub async fn project(
        &self,
        segment: &str,
        caller: &Caller,
    ) -> Result<Answer<ForgeProject>, ApiError> {
        Ok(
            match self
                .get(&format!("/api/v4/projects/{segment}"), caller)
                .await?
            {
                Answer::Found(doc) => match parse_project(doc) {
                    Some(p) => Answer::Found(p),
                    None => {
                        return Err(ApiError::unavailable(
                            "the forge's project document has no id or path_with_namespace",
                        ))
                    }
                },
                Answer::Unauthorized => Answer::Unauthorized,
                Answer::Forbidden => Answer::Forbidden,
                Answer::NotFound => Answer::NotFound,
            },
        )
    }

    /// `GET /api/v4/groups/:id`.
    pub async fn group(
        &self,
        segment: &str,
        caller: &Caller,
    ) -> Result<Answer<ForgeGroup>, ApiError> {
        Ok(
            match self
                .get(&format!("/api/v4/groups/{segment}"), caller)
                .await?
            {
                Answer::Found(doc) => match parse_group(doc) {
                    Some(g) => Answer::Found(g),
                    None => {
                        return Err(ApiError::unavailable(
                            "the forge's group document has no id or full_path",
                        ))
                    }
                },
                Answer::Unauthorized => Answer::Unauthorized,
                Answer::Forbidden => Answer::Forbidden,
                Answer::NotFound => Answer::NotFound,
            },
        )
    }
}

impl ForgeClient {
    /// Look up many projects or groups (URL segments) with the caller's credential, a few at a
    /// time; each answer is the forge's document when it shows it to the caller, else `None`.
    pub async fn documents(
        self: &Arc<Self>,
        kind: Kind,
        segments: Vec<String>,
        caller: &Caller,
    ) -> Result<Vec<Option<Value>>, ApiError> {
        let permits = Arc::new(tokio::sync::Semaphore::new(LOOKUP_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        let n = segments.len();
        for (i, seg) in segments.into_iter().enumerate() {
            let forge = Arc::clone(self);
            let caller = caller.clone();
            let permits = Arc::clone(&permits);
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let doc = match kind {
                    Kind::Project => match forge.project(&seg, &caller).await? {
                        Answer::Found(p) => Some(p.document),
                        _ => None,
                    },
                    Kind::Group => match forge.group(&seg, &caller).await? {
                        Answer::Found(g) => Some(g.document),
                        _ => None,
                    },
                };
                Ok::<_, ApiError>((i, doc))
            });
        }
        let mut out = vec![None; n];
        while let Some(joined) = tasks.join_next().await {
            let (i, doc) =
                joined.map_err(|e| ApiError::unavailable(&format!("lookup failed: {e}")))??;
            if let Some(slot) = out.get_mut(i) {
                *slot = doc;
            }
        }
        Ok(out)
    }
}

fn parse_project(doc: Value) -> Option<ForgeProject> {
    let id = doc.get("id")?.as_u64()?;
    let path = doc.get("path_with_namespace")?.as_str()?.to_string();
    let level = |kind: &str| {
        doc.get("permissions")
            .and_then(|p| p.get(kind))
            .and_then(|a| a.get("access_level"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let access_level = level("project_access").max(level("group_access"));
    Some(ForgeProject {
        id,
        path_with_namespace: path,
        access_level,
        document: doc,
    })
}

fn parse_group(doc: Value) -> Option<ForgeGroup> {
    let id = doc.get("id")?.as_u64()?;
    let full_path = doc.get("full_path")?.as_str()?.to_string();
    Some(ForgeGroup {
        id,
        full_path,
        document: doc,
    })
}

/// A forge path as one URL segment (`a/b` → `a%2Fb`).
pub fn encode_path(path: &str) -> String {
    percent_encoding::utf8_percent_encode(path, SEGMENT).to_string()
}

const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn access_level_is_the_higher_of_project_and_group() {
        let p = parse_project(serde_json::json!({
            "id": 1, "path_with_namespace": "a/b",
            "permissions": {"project_access": {"access_level": 30}, "group_access": {"access_level": 50}}
        }))
        .unwrap();
        assert_eq!(p.access_level, 50);
        let p = parse_project(serde_json::json!({
            "id": 1, "path_with_namespace": "a/b",
            "permissions": {"project_access": null, "group_access": null}
        }))
        .unwrap();
        assert_eq!(p.access_level, 0);
        assert!(parse_project(serde_json::json!({"id": 1})).is_none());
    }

    #[test]
    fn credentials_from_headers_and_parameters() {
        let mut h = HeaderMap::new();
        h.insert("private-token", HeaderValue::from_static("glpat-x"));
        let c = Caller::from_request(&h, |_| None).unwrap();
        assert_eq!(c.headers()["private-token"], "glpat-x");
        let c = Caller::from_request(&HeaderMap::new(), |n| {
            (n == "access_token").then(|| "oauth".to_string())
        })
        .unwrap();
        assert_eq!(c.headers()["authorization"], "Bearer oauth");
        assert!(Caller::from_request(&HeaderMap::new(), |_| None)
            .unwrap()
            .is_anonymous());
        assert_eq!(encode_path("a/b.c-d"), "a%2Fb.c-d");
    }
}
