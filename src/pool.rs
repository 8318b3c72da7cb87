//! Upstream connections: HTTP/1.1 connections to the forge, pooled per worker thread.
//!
//! Each server worker has its own idle list (`PerWorker`), and the task that drives a
//! connection runs on the worker that opened it, so a forwarded request is written, answered
//! and returned to the pool without leaving its thread.
//! A connection goes back to the list as soon as its response head arrived; it is handed out
//! again only once hyper reports it ready (the previous response was read to its end).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::body::ForwardBody;
use crate::forward::error_chain;
use crate::settings::Upstream;
use crate::worker::PerWorker;

/// Connections kept per worker, busy or idle; a connection returned to a full list is closed.
const MAX_POOLED: usize = 1024;

/// Times a request is retried on another connection when a pooled one turned out closed
/// before the request was written (the upstream closed it while it sat idle).
const MAX_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Upstream(String),
}

struct Pooled {
    sender: SendRequest<ForwardBody>,
    /// When it was last handed back.
    since: Instant,
}

pub struct UpstreamPool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector dials (and verifies, for https).
    connect_to: Uri,
    idle_timeout: Duration,
    lists: PerWorker<Mutex<Vec<Pooled>>>,
}

impl UpstreamPool {
    pub fn new(
        upstream: &Upstream,
        connector: HttpsConnector<HttpConnector>,
        idle_timeout: Duration,
        workers: usize,
    ) -> Result<Self, http::Error> {
        let connect_to = Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()?;
        Ok(UpstreamPool {
            connector,
            connect_to,
            idle_timeout,
            lists: PerWorker::new(workers, Mutex::default),
        })
    }

    /// What the connections dial.
    pub fn connect_to(&self) -> &Uri {
        &self.connect_to
    }

    /// Send `req` (origin-form URI, Host set) on a pooled or new connection.
    pub async fn send(
        &self,
        mut req: Request<ForwardBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut retries = 0;
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                // Boxed: connecting (TLS included) is rare and its future large.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send on another connection, whatever the method.
                    Some(back) if reused && retries < MAX_RETRIES => {
                        retries += 1;
                        req = back;
                    }
                    _ => return Err(SendError::Upstream(error_chain(&e.into_error()))),
                },
            }
        }
    }

    /// The most recently returned connection that is ready for a request; closed and
    /// long-idle ones met on the way are dropped.
    fn checkout(&self) -> Option<SendRequest<ForwardBody>> {
        let mut list = self.lists.local().lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let pooled = &list[i];
            if pooled.sender.is_closed()
                || now.saturating_duration_since(pooled.since) > self.idle_timeout
            {
                list.swap_remove(i);
            } else if pooled.sender.is_ready() {
                return Some(list.swap_remove(i).sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<ForwardBody>) {
        if sender.is_closed() {
            return;
        }
        let mut list = self.lists.local().lock().unwrap_or_else(|e| e.into_inner());
        if list.len() < MAX_POOLED {
            list.push(Pooled {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<ForwardBody>, SendError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| SendError::Connect(error_chain(&*e)))?;
        let io = connector
            .call(self.connect_to.clone())
            .await
            .map_err(|e| SendError::Connect(error_chain(&*e)))?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(error_chain(&e)))?;
        // Driven on this thread's runtime; it ends when the upstream or the pool lets go.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %error_chain(&e), "upstream connection ended with an error");
            }
        });
        sender
            .ready()
            .await
            .map_err(|e| SendError::Connect(error_chain(&e)))?;
        Ok(sender)
    }
}
