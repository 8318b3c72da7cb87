//! Project paths the scope file does not list, resolved through the forge.
//!
//! After a rename or transfer the forge keeps serving Git and LFS under the old path (its
//! `redirect_routes`), as the renamed project. The gateway decides on the path it is given; a
//! path the scope file does not list is decided by `[defaults]`. With open defaults an old path
//! of an inbound-limited project would therefore pass. When a lookup credential is configured
//! (`lookup_token_file`: a read-only token of a user who sees every project, e.g. an admin's
//! `read_api` token), such paths are asked of the forge once — `GET /api/v4/projects/<path>`:
//! 200 gives the project, 301 (an old path) names its numeric id, which is then read — and the
//! answer is cached by path. The request is then decided on the project the forge will serve.
//!
//! The credential is the gateway's own, read from a file, sent only to the upstream and never
//! logged; without it the gateway keeps deciding on paths alone (the README names the gap).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use moka::future::Cache;

use crate::settings::Upstream;

/// The forge's project documents are small.
const MAX_DOCUMENT: usize = 1 << 20;
/// Paths remembered at most.
const MAX_PATHS: u64 = 100_000;

const PRIVATE_TOKEN: http::HeaderName = http::HeaderName::from_static("private-token");

/// What the forge says a path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The project the forge serves under that path, with its current path (lowercased).
    Project { id: u64, path: Box<str> },
    /// No project the lookup credential can see has that path, or had it.
    Missing,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(String);

pub struct PathResolver {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    upstream: Upstream,
    token: HeaderValue,
    timeout: Duration,
    cache: Cache<Box<str>, Resolved>,
}

impl PathResolver {
    /// `token` is the lookup credential (sent as `PRIVATE-TOKEN`).
    pub fn new(
        upstream: Upstream,
        token: &str,
        ttl: Duration,
        timeout: Duration,
        tls: rustls::ClientConfig,
    ) -> Result<Self, LookupError> {
        let mut token = HeaderValue::from_str(token.trim())
            .map_err(|_| LookupError("the lookup token is not a valid header value".into()))?;
        token.set_sensitive(true);
        let connector = crate::tls::https_connector(tls, timeout);
        Ok(PathResolver {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            upstream,
            token,
            timeout,
            cache: Cache::builder()
                .max_capacity(MAX_PATHS)
                .time_to_live(ttl)
                .build(),
        })
    }

    /// The project behind `path` (lowercased full path), once per path and TTL.
    pub async fn resolve(&self, path: &str) -> Result<Resolved, LookupError> {
        if let Some(hit) = self.cache.get(path).await {
            return Ok(hit);
        }
        self.cache
            .try_get_with(path.into(), self.ask(path))
            .await
            .map_err(|e| (*e).clone())
    }

    async fn ask(&self, path: &str) -> Result<Resolved, LookupError> {
        let segment = crate::manage::auth::encode_path(path);
        match self.get(&segment).await? {
            Answer::Found(resolved) => Ok(resolved),
            Answer::Missing => Ok(Resolved::Missing),
            // An old path: the forge points at the project by id; read it for its current path.
            Answer::MovedTo(id) => match self.get(&id.to_string()).await? {
                Answer::Found(resolved) => Ok(resolved),
                Answer::Missing => Ok(Resolved::Missing),
                Answer::MovedTo(_) => {
                    Err(LookupError("the forge redirected a lookup by id".into()))
                }
            },
        }
    }

    async fn get(&self, segment: &str) -> Result<Answer, LookupError> {
        let uri = http::Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(format!("/api/v4/projects/{segment}"))
            .build()
            .map_err(|e| LookupError(format!("cannot build the lookup URL: {e}")))?;
        let req = Request::get(uri)
            .header(PRIVATE_TOKEN, self.token.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "scopegate")
            .body(Empty::new())
            .map_err(|e| LookupError(e.to_string()))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| LookupError("the forge did not answer a project lookup in time".into()))?
            .map_err(|e| {
                LookupError(format!(
                    "cannot reach the forge for a project lookup: {}",
                    crate::forward::error_chain(&e)
                ))
            })?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(Answer::Missing),
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::PERMANENT_REDIRECT => {
                return moved_to(resp.headers().get(http::header::LOCATION)).map(Answer::MovedTo);
            }
            // 401/403: the lookup credential is wrong or lacks rights; the gateway cannot
            // tell what the path is, so it must not guess.
            other => {
                return Err(LookupError(format!(
                    "the forge answered {other} to a project lookup"
                )))
            }
        }
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(resp.into_body(), MAX_DOCUMENT).collect(),
        )
        .await
        .map_err(|_| LookupError("the forge did not answer a project lookup in time".into()))?
        .map_err(|e| LookupError(format!("reading a project lookup: {e}")))?
        .to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| LookupError("a project lookup answer is not JSON".into()))?;
        let id = doc.get("id").and_then(serde_json::Value::as_u64);
        let path = doc
            .get("path_with_namespace")
            .and_then(serde_json::Value::as_str);
        match (id, path) {
            (Some(id), Some(path)) => Ok(Answer::Found(Resolved::Project {
                id,
                path: path.to_ascii_lowercase().into_boxed_str(),
            })),
            _ => Err(LookupError(
                "a project lookup answer has no id or path_with_namespace".into(),
            )),
        }
    }
}

enum Answer {
    Found(Resolved),
    Missing,
    MovedTo(u64),
}

/// The numeric id in a redirect to `.../api/v4/projects/<id>[/...]`.
fn moved_to(location: Option<&HeaderValue>) -> Result<u64, LookupError> {
    let bad = || LookupError("the forge redirected a project lookup somewhere unexpected".into());
    let location = location.and_then(|v| v.to_str().ok()).ok_or_else(bad)?;
    let (_, rest) = location.split_once("/api/v4/projects/").ok_or_else(bad)?;
    let id = rest.split(['/', '?']).next().unwrap_or("");
    id.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations() {
        let v = |s: &str| HeaderValue::from_str(s).ok();
        assert_eq!(
            moved_to(v("http://forge/api/v4/projects/42").as_ref()).ok(),
            Some(42)
        );
        assert_eq!(moved_to(v("/api/v4/projects/7?x=1").as_ref()).ok(), Some(7));
        assert!(moved_to(v("http://forge/acme/app").as_ref()).is_err());
        assert!(moved_to(None).is_err());
    }
}
