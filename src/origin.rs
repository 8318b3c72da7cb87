//! Origin: which project a job token was issued for.
//!
//! The scope file's `[[token]]` entries are consulted by the caller first (they live in the
//! snapshot). Everything else is answered by the forge's `GET /api/v4/job` and remembered in a
//! bounded cache keyed by the token's SHA-256 (never the token). Concurrent requests with the
//! same new token share one forge call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use moka::future::Cache;
use serde::Deserialize;

use crate::credentials::JobToken;
use crate::metrics::Metrics;
use crate::project::is_valid_project_path;
use crate::settings::{CacheSettings, Upstream};
use crate::worker::PerWorker;

fn lock(front: &Front) -> MutexGuard<'_, HashMap<[u8; 32], Remembered, DigestHasher>> {
    // Only answers live there: a panic elsewhere leaves nothing half-written worth refusing.
    front.lock().unwrap_or_else(|e| e.into_inner())
}

/// The forge's answers are small; anything bigger is not a job document.
const MAX_JOB_DOCUMENT: usize = 1 << 20;

/// What the forge said about a job token's job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgeJob {
    pub job_id: u64,
    pub project_id: u64,
    /// Cut from the job's `web_url`; None when it cannot be read reliably.
    pub project_path: Option<String>,
}

/// What a credential turned out to be.
#[derive(Clone, Debug)]
pub enum TokenKind {
    Job(Arc<ForgeJob>),
    /// The forge answered 401, 403 or 404: not a (live) job token.
    NotJob,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum OriginError {
    #[error("{0}")]
    Unavailable(String),
}

/// A remembered answer and the moment it stops counting (`cache.ttl` or `cache.negative_ttl`
/// after the forge gave it), carried with the answer so the shared cache and the per-worker
/// fronts expire it at the same instant.
#[derive(Clone, Debug)]
struct Remembered {
    kind: TokenKind,
    expires_at: Instant,
}

struct UntilExpiry;

impl moka::Expiry<[u8; 32], Remembered> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        value: &Remembered,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(created_at))
    }
}

/// Answers a worker saw recently, in front of the shared cache: a hit takes this worker's own
/// uncontended lock and one hash probe instead of the shared cache's bookkeeping. Bounded by
/// clearing it when full (the shared cache keeps the answers).
type Front = Mutex<HashMap<[u8; 32], Remembered, DigestHasher>>;

/// Entries per worker front.
const FRONT_MAX: usize = 4096;

/// The cache's key hasher: keys are SHA-256 digests (uniform already), and foldhash, seeded per
/// process, costs a fraction of std's SipHash on the hit path every job-token request takes.
type DigestHasher = foldhash::fast::RandomState;

pub struct OriginResolver {
    cache: Cache<[u8; 32], Remembered, DigestHasher>,
    /// One per server worker.
    fronts: PerWorker<Front>,
    ttl: Duration,
    negative_ttl: Duration,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    job_uri: http::Uri,
    external_url: String,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl OriginResolver {
    pub fn new(
        upstream: &Upstream,
        external_url: String,
        cache: &CacheSettings,
        timeout: Duration,
        metrics: Arc<Metrics>,
        tls: rustls::ClientConfig,
        workers: usize,
    ) -> Result<Self, http::Error> {
        let job_uri = http::Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/api/v4/job")
            .build()?;
        // The forge lookups have their own pool, with the forwarder's TLS settings.
        let connector = crate::tls::https_connector(tls, timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(OriginResolver {
            cache: Cache::builder()
                .max_capacity(cache.max_entries)
                .expire_after(UntilExpiry)
                .build_with_hasher(DigestHasher::default()),
            fronts: PerWorker::new(workers, Front::default),
            ttl: cache.ttl,
            negative_ttl: cache.negative_ttl,
            client,
            job_uri,
            external_url,
            timeout,
            metrics,
        })
    }

    /// What the token is, from the cache or (once per token, however many ask at once) the forge.
    pub async fn resolve(&self, token: &JobToken) -> Result<TokenKind, OriginError> {
        let key = token.sha256();
        let now = Instant::now();
        let front = self.fronts.local();
        if let Some(hit) = lock(front).get(&key).filter(|r| r.expires_at > now) {
            self.metrics.origin_cache_hit();
            return Ok(hit.kind.clone());
        }
        let remembered = match Box::pin(self.cache.get(&key))
            .await
            .filter(|r| r.expires_at > now)
        {
            Some(hit) => {
                self.metrics.origin_cache_hit();
                hit
            }
            None => {
                self.metrics.origin_cache_miss();
                // Boxed: the forge lookup is large and rare; the request future stays small.
                Box::pin(self.cache.try_get_with(key, self.ask_forge(token)))
                    .await
                    .map_err(|e| (*e).clone())?
            }
        };
        let mut front = lock(front);
        if front.len() >= FRONT_MAX {
            front.clear();
        }
        front.insert(key, remembered.clone());
        Ok(remembered.kind)
    }

    async fn ask_forge(&self, token: &JobToken) -> Result<Remembered, OriginError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.lookup(token))
            .await
            .unwrap_or_else(|_| {
                Err(OriginError::Unavailable(
                    "the forge did not answer in time".into(),
                ))
            });
        self.metrics.forge_lookup(
            match &result {
                Ok(TokenKind::Job(_)) => "job",
                Ok(TokenKind::NotJob) => "rejected",
                Err(_) => "unavailable",
            },
            started.elapsed(),
        );
        let kind = result?;
        let ttl = match kind {
            TokenKind::Job(_) => self.ttl,
            TokenKind::NotJob => self.negative_ttl,
        };
        Ok(Remembered {
            kind,
            expires_at: Instant::now() + ttl,
        })
    }

    async fn lookup(&self, token: &JobToken) -> Result<TokenKind, OriginError> {
        let value = http::HeaderValue::from_str(token.expose())
            .map_err(|_| OriginError::Unavailable("token cannot be sent in a header".into()))?;
        let req = Request::get(self.job_uri.clone())
            .header("JOB-TOKEN", value)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "scopegate")
            .body(Empty::new())
            .map_err(|e| OriginError::Unavailable(e.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| {
            OriginError::Unavailable(format!(
                "cannot reach the forge: {}",
                crate::forward::error_chain(&e)
            ))
        })?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                return Ok(TokenKind::NotJob)
            }
            other => {
                return Err(OriginError::Unavailable(format!(
                    "the forge answered {other}"
                )));
            }
        }
        let body = Limited::new(resp.into_body(), MAX_JOB_DOCUMENT)
            .collect()
            .await
            .map_err(|e| OriginError::Unavailable(format!("reading the job document: {e}")))?
            .to_bytes();
        parse_job(&body, &self.external_url)
            .map(|job| TokenKind::Job(Arc::new(job)))
            .ok_or_else(|| {
                OriginError::Unavailable(
                    "the forge's job document has no pipeline.project_id".into(),
                )
            })
    }
}

#[derive(Deserialize)]
struct JobDocument {
    id: u64,
    #[serde(default)]
    web_url: Option<String>,
    pipeline: PipelineDocument,
}

#[derive(Deserialize)]
struct PipelineDocument {
    project_id: u64,
}

/// Reads `GET /api/v4/job`: the origin is `pipeline.project_id`; the path is cut from `web_url`
/// (`<external url>/<full path>/-/jobs/<id>`).
pub fn parse_job(body: &[u8], external_url: &str) -> Option<ForgeJob> {
    let doc: JobDocument = serde_json::from_slice(body).ok()?;
    let project_path = doc
        .web_url
        .as_deref()
        .and_then(|u| path_from_web_url(u, external_url));
    Some(ForgeJob {
        job_id: doc.id,
        project_id: doc.pipeline.project_id,
        project_path,
    })
}

fn path_from_web_url(web_url: &str, external_url: &str) -> Option<String> {
    let after_base = match web_url.strip_prefix(external_url) {
        Some(rest) if !external_url.is_empty() && rest.starts_with('/') => rest,
        // The external URL differs from what we were told: take the URL's path as-is.
        _ => {
            let uri: http::Uri = web_url.parse().ok()?;
            let path = uri.path();
            &web_url[web_url.find(path)?..]
        }
    };
    let path = after_base.trim_start_matches('/');
    let (project, _) = path.split_once("/-/jobs/")?;
    is_valid_project_path(project).then(|| project.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_from_the_job_document() {
        let body = br#"{"id":99,"web_url":"https://gl.example/acme/sub/app/-/jobs/99","pipeline":{"id":5,"project_id":42}}"#;
        let job = parse_job(body, "https://gl.example").unwrap();
        assert_eq!(
            job,
            ForgeJob {
                job_id: 99,
                project_id: 42,
                project_path: Some("acme/sub/app".into())
            }
        );
        // External URL unknown: the path is still cut from the URL's path.
        let job = parse_job(body, "http://127.0.0.1:8081").unwrap();
        assert_eq!(job.project_path.as_deref(), Some("acme/sub/app"));
    }

    #[test]
    fn unreadable_documents() {
        assert!(parse_job(b"{}", "x").is_none());
        assert!(parse_job(b"not json", "x").is_none());
        let odd = br#"{"id":1,"web_url":"https://gl.example/nope","pipeline":{"project_id":3}}"#;
        assert_eq!(
            parse_job(odd, "https://gl.example").unwrap().project_path,
            None
        );
    }
}
