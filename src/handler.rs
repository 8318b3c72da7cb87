//! The request's way through the gateway: credentials → origin → target → decide → forward.
//!
//! `Gateway::handle` is the infallible outer handler (request id, error rendering, access log,
//! metrics); `Gateway::enforce` is the fallible inner pipeline. Errors become responses in one
//! place: `GatewayError::to_response`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::authlog::AuthLog;
use crate::body;
use crate::credentials::{self, JobToken};
use crate::decide::{decide, Decision, Mode};
use crate::error::GatewayError;
use crate::forward::{
    connection_names_protected, upstream_target, ClientConn, Forwarder, UpstreamBody,
};
use crate::manage::{self, Manager};
use crate::metrics::Metrics;
use crate::origin::{OriginError, OriginResolver, TokenKind};
use crate::project::{ProjectIdentity, ProjectRef};
use crate::registry::{decide_registry, RegistryDecision};
use crate::renames::{PathResolver, Resolved};
use crate::snapshot::{PolicyStore, Snapshot};
use crate::target::{self, RouteKind, Target};

pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A request body on its way to the forward step.
enum PendingBody {
    Ready(body::ForwardBody),
    Held(body::HeldBody),
}

/// A job token's origin, as far as the gateway knows it.
#[derive(Clone, Debug)]
pub struct Origin {
    pub project: ProjectIdentity,
    /// The token's own job, when the forge said (runner routes `/api/v4/jobs/:id` use it).
    pub job_id: Option<u64>,
}

/// What the access log line says about a request.
#[derive(Default)]
struct Outcome {
    route: Option<RouteKind>,
    origin: Option<ProjectIdentity>,
    target: Option<ProjectIdentity>,
    decision: &'static str,
    reason: &'static str,
}

pub struct Gateway {
    pub policy: Arc<PolicyStore>,
    pub resolver: OriginResolver,
    pub forwarder: Forwarder,
    pub metrics: Arc<Metrics>,
    pub options: HandlerOptions,
    /// Every job-token decision is reported here (aggregated off the request path).
    pub authlog: Arc<AuthLog>,
    /// The management API under `/-/scopegate`; `None` when it is switched off.
    pub manage: Option<Arc<Manager>>,
    /// Resolves paths the scope file does not list (renamed projects); `None` without a
    /// lookup credential.
    pub renames: Option<Arc<PathResolver>>,
    request_ids: RequestIds,
}

/// Per-request behaviour taken from the settings.
pub struct HandlerOptions {
    pub mode: Mode,
    /// Job-token prefixes (`glcbt-` by default).
    pub prefixes: Vec<Box<str>>,
    pub max_url_bytes: usize,
    /// Body inspection limits (`limits.max_inspected_body`, `limits.max_inspected_total`).
    pub body_limits: body::Limits,
}

impl Gateway {
    pub fn new(
        policy: Arc<PolicyStore>,
        resolver: OriginResolver,
        forwarder: Forwarder,
        metrics: Arc<Metrics>,
        options: HandlerOptions,
    ) -> Self {
        Gateway {
            policy,
            resolver,
            forwarder,
            metrics,
            options,
            authlog: Arc::new(AuthLog::disabled()),
            manage: None,
            renames: None,
            request_ids: RequestIds::new(),
        }
    }

    /// Outer handler: never fails; every response carries `X-Request-Id`.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: &ClientConn,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let request_id = self.request_ids.next();
        let method = req.method().clone();
        let mut outcome = Outcome {
            decision: "allow",
            reason: "no_job_token",
            ..Outcome::default()
        };
        let mut resp = match self.route(req, client, &mut outcome).await {
            Ok(resp) => resp,
            Err(err) => {
                // The gateway's own 4xx answers are denials; 5xx are failures.
                outcome.decision = if err.status().is_client_error() {
                    "deny"
                } else {
                    "error"
                };
                outcome.reason = err.reason();
                if err.status().is_server_error() {
                    tracing::warn!(request_id = request_id.as_str(), error = %err, "request failed");
                }
                err.to_response().map(Either::Right)
            }
        };
        if let Ok(v) = HeaderValue::from_bytes(request_id.as_str().as_bytes()) {
            resp.headers_mut().insert(X_REQUEST_ID, v);
        }
        let elapsed = started.elapsed();
        self.metrics
            .request(outcome.decision, outcome.reason, elapsed);
        // Only bounded, token-free fields: never the URL (its query may carry credentials).
        tracing::info!(
            target: "scopegate::access",
            request_id = request_id.as_str(),
            method = %method,
            route = outcome.route.map(RouteKind::as_str).unwrap_or("-"),
            origin = %DisplayOpt(outcome.origin.as_ref()),
            target = %DisplayOpt(outcome.target.as_ref()),
            decision = outcome.decision,
            reason = outcome.reason,
            status = resp.status().as_u16(),
            duration_us = elapsed.as_micros() as u64,
        );
        resp
    }

    /// The management API (under `/-/scopegate`) answers itself and forwards nothing; every
    /// other request goes through the enforcement pipeline.
    async fn route(
        &self,
        req: Request<Incoming>,
        client: &ClientConn,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        if req.method() == Method::CONNECT {
            return Err(GatewayError::MethodNotAllowed("CONNECT"));
        }
        // HTTP/1.1 only (HTTP/2 has no Connection header): see `connection_names_protected`.
        if let Some(name) = connection_names_protected(req.headers()) {
            return Err(GatewayError::ConnectionListsHeader(name));
        }
        let path = req.uri().path();
        if let Some(manager) = self
            .manage
            .as_ref()
            .filter(|_| manage::is_manage_path(path))
        {
            outcome.reason = "management_api";
            // Boxed, like every path most requests do not take: the request future stays small
            // (hyper moves it into place for every request).
            return Ok(Box::pin(manager.handle(req, &self.resolver))
                .await
                .map(Either::Right));
        }
        Ok(self.enforce(req, client, outcome).await?.map(Either::Left))
    }

    /// Inner pipeline.
    async fn enforce(
        &self,
        req: Request<Incoming>,
        client: &ClientConn,
        outcome: &mut Outcome,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > self.options.max_url_bytes {
            return Err(GatewayError::UriTooLong(self.options.max_url_bytes));
        }
        // A request without a body (most GETs) has nothing to inspect.
        let plan = match req.body().is_end_stream() {
            true => body::Plan::Opaque,
            false => body::plan(req.method(), req.headers())?,
        };
        let content_length = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let (parts, incoming) = req.into_parts();
        let snapshot = self.policy.load();
        if plan != body::Plan::Opaque {
            // A request its head already refuses is refused before its body is read (no
            // `100 Continue`, no upload). Body credentials could only add a conflict.
            let head =
                credentials::extract(&parts.headers, parts.uri.query(), &self.options.prefixes)?;
            if let Some((_, origin)) = Box::pin(self.job_token(&snapshot, head)).await? {
                let mut early = Outcome::default();
                if let Err(refused) =
                    Box::pin(self.decide_parts(&snapshot, &parts, &origin, &mut early, false)).await
                {
                    *outcome = early;
                    return Err(refused);
                }
            }
        }
        // Bodies the forge takes parameters from are read (up to the cap) and searched before
        // the decision; the bytes read are what is forwarded.
        let inspected = match plan {
            body::Plan::Opaque => body::Inspected::Ready(body::ForwardBody::stream(incoming), None),
            plan => {
                Box::pin(body::inspect(
                    incoming,
                    plan,
                    content_length,
                    &self.options.body_limits,
                ))
                .await?
            }
        };
        let (pending, body_creds) = match inspected {
            body::Inspected::Ready(b, creds) => (PendingBody::Ready(b), creds),
            body::Inspected::Held(held) => (PendingBody::Held(held), None),
        };
        let creds = credentials::extract_with_body(
            &parts.headers,
            parts.uri.query(),
            body_creds.as_ref(),
            &self.options.prefixes,
        )?;
        drop(body_creds);
        let token = self.job_token(&snapshot, creds).await?;

        let Some((token, origin)) = token else {
            // No job token: personal, OAuth and anonymous traffic pass untouched.
            let pq = upstream_target(parts.uri.path(), None, parts.uri.query());
            return self.send(parts, pending, None, &pq, client).await;
        };
        let rewrite = self
            .decide_parts(&snapshot, &parts, &origin, outcome, true)
            .await?;
        let pq = upstream_target(parts.uri.path(), rewrite, parts.uri.query());
        drop(snapshot);
        self.send(parts, pending, Some(token), &pq, client).await
    }

    /// Decide the request `parts` for a job token of `origin`: Ok with the path rewrite to
    /// forward with, Err for every refusal. `record_all`: log and record every decision (else
    /// only hard denials: the early pass before a body is read).
    async fn decide_parts(
        &self,
        snapshot: &Snapshot,
        parts: &http::request::Parts,
        origin: &Origin,
        outcome: &mut Outcome,
        record_all: bool,
    ) -> Result<Option<(std::ops::Range<usize>, u64)>, GatewayError> {
        outcome.origin = Some(origin.project.clone());
        let target = target::parse(&parts.method, parts.uri.path(), parts.uri.query())?;
        outcome.route = Some(target.kind());
        let (target_identity, rewrite, decision) = match &target {
            Target::ProjectLess => {
                outcome.reason = "project_less_route";
                return Ok(None);
            }
            Target::Job { job_id } if origin.job_id == Some(*job_id) => {
                let own = origin.project.clone();
                let decision = decide(&snapshot.policy, self.options.mode, &own, &own);
                (own, None, decision)
            }
            // Fail closed: group routes read every project of the group, instance-level package
            // routes name no project the gateway can see, another job's project is unknown.
            Target::Unattributed
            | Target::Group { .. }
            | Target::InstancePackages
            | Target::Job { .. } => {
                outcome.decision = "deny";
                return Err(GatewayError::Unattributed {
                    origin: origin.project.clone(),
                });
            }
            Target::Registry { service, scopes } => match decide_registry(
                &snapshot.policy,
                self.options.mode,
                &origin.project,
                *service,
                scopes,
            ) {
                RegistryDecision::Decided { target, decision } => (target, None, decision),
                RegistryDecision::Refused(refusal) => {
                    outcome.decision = "deny";
                    return Err(GatewayError::RegistryRefused {
                        origin: origin.project.clone(),
                        refusal,
                    });
                }
            },
            Target::Project {
                project,
                id_span,
                alias,
                kind,
            } => {
                let mut identity = snapshot.policy.identify(project);
                // A path the scope file does not list may be a renamed project's old path,
                // which the forge still serves over Git, LFS and the web (its API answers 301
                // or 405 instead): decide on the project the forge will serve.
                if let (None, Some(path), Some(renames)) =
                    (identity.id, identity.path.as_deref(), &self.renames)
                {
                    if *kind != RouteKind::ProjectApi {
                        match Box::pin(renames.resolve(path)).await {
                            Ok(Resolved::Project { id, path }) => {
                                identity = snapshot.policy.identify(&ProjectRef::Id(id));
                                identity.path.get_or_insert(path.into());
                            }
                            Ok(Resolved::Missing) => {}
                            Err(e) => return Err(GatewayError::ForgeUnavailable(e.to_string())),
                        }
                    }
                }
                // Forward what was decided: a path the snapshot knows becomes its numeric id.
                let rewrite = match (id_span, identity.id) {
                    (Some(span), Some(id)) => Some((span.clone(), id)),
                    _ => None,
                };
                let decide_on = |identity: &ProjectIdentity| {
                    decide(
                        &snapshot.policy,
                        self.options.mode,
                        &origin.project,
                        identity,
                    )
                };
                let decision = decide_on(&identity);
                // The forge may read the request as the alias instead: the stricter counts.
                let other = alias.as_ref().map(|a| snapshot.policy.identify(a));
                match other.map(|i| (decide_on(&i), i)) {
                    Some((d, i)) if d.strictness() > decision.strictness() => (i, rewrite, d),
                    _ => (identity, rewrite, decision),
                }
            }
        };
        outcome.target = Some(target_identity.clone());
        outcome.decision = decision.label();
        outcome.reason = decision.reason();
        let hard_deny = matches!(decision, Decision::Deny(_));
        if record_all || hard_deny {
            self.authlog
                .record(&origin.project, &target_identity, decision.label());
        }
        match decision {
            Decision::Deny(limit) => Err(GatewayError::OutOfScope {
                origin: origin.project.clone(),
                target: target_identity,
                limit,
            }),
            Decision::WouldDeny(limit) => {
                if record_all {
                    tracing::warn!(
                        origin = %origin.project,
                        target = %target_identity,
                        limit = ?limit,
                        "report-only: this request would be denied"
                    );
                }
                Ok(rewrite)
            }
            Decision::Allow(_) => Ok(rewrite),
        }
    }

    /// Forward the decided request. A held multipart body starts streaming only now, checked
    /// against `decided` on the way; when its pump refused it (the upstream body was cut off
    /// before its end), the client gets that refusal, not the forge's answer.
    async fn send(
        &self,
        parts: http::request::Parts,
        pending: PendingBody,
        decided: Option<JobToken>,
        pq: &str,
        client: &ClientConn,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let (body, verdict) = match pending {
            PendingBody::Ready(body) => (body, None),
            PendingBody::Held(held) => {
                let (body, verdict) = held.start(decided, self.options.prefixes.clone());
                (body, Some(verdict))
            }
        };
        let result = self
            .forwarder
            .forward(Request::from_parts(parts, body), pq, client, &self.metrics)
            .await;
        // The pump sends its verdict before it releases or aborts the held-back bytes, so a
        // refusal is known by the time the upstream could have answered the whole body. No
        // verdict yet: the upstream answered before the body was complete (it never saw it
        // whole), and its answer goes back.
        if let Some(Ok(Err(refused))) = verdict.map(|mut v| v.try_recv()) {
            return Err(refused);
        }
        result
    }

    /// The request's one job token and its origin, or None when it carries no job token.
    async fn job_token(
        &self,
        snapshot: &Snapshot,
        creds: credentials::Credentials,
    ) -> Result<Option<(JobToken, Origin)>, GatewayError> {
        let mut found: Option<(JobToken, Origin)> = None;
        if let Some(token) = creds.job_token {
            // An explicit or prefixed job token: the forge must know it, else 401.
            match self.origin_of(snapshot, &token).await? {
                Some(origin) => found = Some((token, origin)),
                None => return Err(GatewayError::InvalidToken),
            }
        }
        // Prefix-less values in shared carriers: job tokens only if the forge says so.
        for candidate in creds.unclassified {
            if let Some(origin) = self.origin_of(snapshot, &candidate).await? {
                if found.as_ref().is_some_and(|(t, _)| *t != candidate) {
                    return Err(credentials::CredentialError::Conflicting.into());
                }
                found = Some((candidate, origin));
            }
        }
        Ok(found)
    }

    /// Origin of a token: static `[[token]]` entries first, then the cache / forge.
    /// Ok(None): the forge says it is not a (live) job token.
    async fn origin_of(
        &self,
        snapshot: &Snapshot,
        token: &JobToken,
    ) -> Result<Option<Origin>, GatewayError> {
        if let Some(project) = snapshot.policy.static_token(&token.sha256()) {
            return Ok(Some(Origin {
                project,
                job_id: None,
            }));
        }
        match self.resolver.resolve(token).await {
            Ok(TokenKind::Job(job)) => Ok(Some(Origin {
                project: snapshot
                    .policy
                    .identify_origin(job.project_id, job.project_path.as_deref()),
                job_id: Some(job.job_id),
            })),
            Ok(TokenKind::NotJob) => Ok(None),
            Err(OriginError::Unavailable(why)) => Err(GatewayError::ForgeUnavailable(why)),
        }
    }
}

struct DisplayOpt<'a>(Option<&'a ProjectIdentity>);

impl std::fmt::Display for DisplayOpt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p}"),
            None => f.write_str("-"),
        }
    }
}

/// Request ids: a per-process random prefix and a counter, unique and cheap.
struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        RequestIds {
            prefix: h.finish(),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> RequestId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // `{prefix:016x}{n:08x}` without the formatting machinery: this runs on every request.
        // Both numbers are written as 16 digits, then the counter's leading zeros beyond 8 go.
        let mut hex = [0; 32];
        let (prefix, counter) = hex.split_at_mut(16);
        // 8 bytes always fit 16 hex digits.
        let _ = hex::encode_to_slice(self.prefix.to_be_bytes(), prefix);
        let _ = hex::encode_to_slice(n.to_be_bytes(), counter);
        let skip = (n.leading_zeros() as usize / 4).min(8);
        hex.copy_within(16 + skip.., 16);
        RequestId {
            hex,
            len: 32 - skip,
        }
    }
}

/// A request id: lowercase hex, at most 32 characters.
struct RequestId {
    hex: [u8; 32],
    len: usize,
}

impl RequestId {
    fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.hex[..self.len]).unwrap_or("-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_read_as_the_formatted_prefix_and_counter() {
        let ids = RequestIds::new();
        for n in [
            0u64,
            1,
            0xabc,
            u64::from(u32::MAX),
            1 << 32,
            1 << 40,
            u64::MAX,
        ] {
            ids.counter.store(n, Ordering::Relaxed);
            assert_eq!(ids.next().as_str(), format!("{:016x}{:08x}", ids.prefix, n));
        }
    }
}
