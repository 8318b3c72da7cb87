//! The admin listener (loopback by default): health, readiness, policy, reload, metrics.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::authlog::AuthLog;
use crate::error::json_response;
use crate::manage::api::{base_url, page_response, Page, Params};
use crate::metrics::Metrics;
use crate::snapshot::PolicyStore;
use crate::tls::CertStore;

pub struct Admin {
    pub policy: Arc<PolicyStore>,
    pub metrics: Arc<Metrics>,
    pub authlog: Arc<AuthLog>,
    /// Set when shutdown starts: readiness turns false so load balancers stop sending.
    pub draining: Arc<AtomicBool>,
    /// The main listener's certificate, when it terminates TLS.
    pub tls: Option<Arc<CertStore>>,
}

impl Admin {
    pub fn ready(&self) -> bool {
        self.policy.is_loaded() && !self.draining.load(Ordering::Acquire)
    }

    /// Reload the scope file and the TLS certificate (each keeps its running version when its
    /// files are bad) and report the outcome in metrics. Err names every failure.
    pub async fn reload(&self) -> Result<serde_json::Value, String> {
        let result = self.policy.reload().await;
        let generation = self.policy.load().generation;
        self.metrics.reload(result.is_ok(), generation);
        let mut problems = Vec::new();
        if let Err(e) = result {
            problems.push(e.to_string());
        }
        if let Some(tls) = &self.tls {
            if let Err(e) = tls.reload() {
                problems.push(format!("{e} (the running certificate stays)"));
            }
        }
        if problems.is_empty() {
            Ok(self.describe())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// `/-/policy`: the snapshot's description, plus `tls` when the listener terminates TLS.
    pub fn describe(&self) -> serde_json::Value {
        let mut doc = self.policy.describe();
        if let (Some(tls), Some(obj)) = (&self.tls, doc.as_object_mut()) {
            obj.insert("tls".into(), tls.describe());
        }
        doc
    }

    /// `GET /-/authorizations[?target=ID|PATH][&page=&per_page=]`: the authorization log, every
    /// pair (or one target's), most recently seen first, paginated like the forge.
    async fn authorizations(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let query = req.uri().query();
        let params = Params::from_query(query);
        let page = match Page::from_params(&params) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let pairs = match params.string("target") {
            Some(t) => {
                let (id, path) = match t.parse::<u64>() {
                    Ok(id) => (Some(id), None),
                    Err(_) => (None, Some(t)),
                };
                self.authlog.for_target(id, path.as_deref()).await
            }
            None => self.authlog.all().await,
        };
        match pairs {
            Ok(pairs) => {
                let total = pairs.len();
                let items = pairs[page.range(total)]
                    .iter()
                    .map(|p| p.to_json())
                    .collect();
                page_response(items, total, page, base_url(req).as_deref(), query)
            }
            Err(e) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"message": e.to_string()}),
            ),
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/-/health") => {
                json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            (&Method::GET | &Method::HEAD, "/-/ready") => {
                let ready = self.ready();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json_response(status, &serde_json::json!({"ready": ready}))
            }
            (&Method::GET, "/-/policy") => json_response(StatusCode::OK, &self.describe()),
            (&Method::POST, "/-/reload") => match self.reload().await {
                Ok(doc) => json_response(StatusCode::OK, &doc),
                Err(message) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({"message": message, "policy": self.describe()}),
                ),
            },
            (&Method::GET, "/-/authorizations") => self.authorizations(&req).await,
            (&Method::GET, "/metrics") => {
                let mut resp = Response::new(Full::new(Bytes::from(self.metrics.render())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"message": "404 Not Found"}),
            ),
        }
    }
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let admin = Arc::clone(&admin);
        let service = service_fn(move |req| {
            let admin = Arc::clone(&admin);
            async move { Ok::<_, Infallible>(admin.route(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
