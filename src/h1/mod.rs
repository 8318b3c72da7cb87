//! The direct HTTP/1.1 client: how a decided request **without a body** (most API calls: GET,
//! HEAD, DELETE, body-less POSTs) reaches the forge.
//!
//! Why not hyper's client here: it drives each connection from a task of its own and hands
//! every request and response across a channel, and its dispatcher runs its whole
//! read/write/flush loop on each wake-up; in the profiles that was a third of the gateway's
//! instructions per request. Here the request's own task writes the head, reads the response
//! head (parsed with httparse, header values sliced from the bytes read), and the client's
//! response body reads the rest straight from the connection, which goes back to this worker's
//! idle list when the body's end is read. Requests with a body, and protocol upgrades, keep
//! using hyper's client (`crate::pool`): it streams a body while the response may already come.
//!
//! What the upstream may send is bounded (head size, header count, chunk lines, trailers) and
//! checked (RFC 9112 framing: conflicting lengths refused, Transfer-Encoding over
//! Content-Length, bytes past the end never read as the next response).

mod body;
mod chunked;
mod head;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::header::HeaderMap;
use http::{Method, Response, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

pub use body::{BodyError, DirectBody};
use head::{Framing, HeadError, MAX_HEAD};

use crate::forward::error_chain;
use crate::pool::SendError;
use crate::worker::PerWorker;

type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// Connections kept idle per worker; one returned to a full list is closed.
const MAX_IDLE: usize = 1024;
/// Times a request is sent again after a pooled connection turned out closed (see `send`).
const MAX_RETRIES: usize = 3;
/// Free space kept in the read buffer before a read for a response head.
const HEAD_READ: usize = 8 * 1024;
/// Buffers larger than this (a big body streamed, a long request head) are not kept idle.
const MAX_IDLE_BUFFER: usize = 16 * 1024;

/// One upstream connection and what was read from it but not yet used.
pub(crate) struct Connection {
    io: Io,
    buf: BytesMut,
    /// The request head being written; kept for its allocation.
    out: Vec<u8>,
    /// When it was last returned to the pool.
    since: Instant,
}

/// The idle connections of each worker, most recently returned last.
pub(crate) struct Idle {
    // Boxed: a connection (TLS state included) moves into a response body and back to the
    // list for each request; a pointer is cheaper to move than the whole of it.
    lists: PerWorker<Mutex<VecDeque<Box<Connection>>>>,
    timeout: Duration,
}

impl Idle {
    fn checkin(&self, mut conn: Box<Connection>) {
        let now = Instant::now();
        conn.since = now;
        if conn.buf.capacity() > MAX_IDLE_BUFFER {
            conn.buf = BytesMut::new();
        }
        if conn.out.capacity() > MAX_IDLE_BUFFER {
            conn.out = Vec::new();
        }
        let mut list = self.lists.local().lock().unwrap_or_else(|e| e.into_inner());
        // The oldest ones are closed once they pass the idle timeout, even when the most
        // recent ones keep being used and `checkout` never reaches them.
        while list
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) > self.timeout)
        {
            list.pop_front();
        }
        if list.len() < MAX_IDLE {
            list.push_back(conn);
        }
    }

    /// The most recently returned connection that is not idle for too long and shows no sign
    /// of having been closed (or of holding bytes nobody asked for: they would be read as the
    /// next response).
    fn checkout(&self) -> Option<Box<Connection>> {
        let mut list = self.lists.local().lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some(mut conn) = list.pop_back() {
            if now.saturating_duration_since(conn.since) > self.timeout {
                // Older ones before it have been idle even longer.
                list.clear();
                return None;
            }
            if conn.looks_open() {
                return Some(conn);
            }
        }
        None
    }
}

impl Connection {
    /// Whether an idle connection has nothing to say: a read that would block. An end of
    /// stream, an error or unasked bytes all mean it must not carry a request.
    fn looks_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }
}

/// Why one exchange failed, and whether the request may have been seen upstream.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// The head was not (fully) written: the upstream cannot have acted on it.
    #[error("writing the request: {0}")]
    Write(std::io::Error),
    /// Written, then the connection ended before a byte of response.
    #[error("the upstream closed the connection without answering")]
    NoAnswer,
    #[error("reading the response: {0}")]
    Read(std::io::Error),
    #[error("the upstream closed the connection in the middle of the response head")]
    ClosedInHead,
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("the upstream switched protocols without being asked")]
    UnaskedUpgrade,
}

pub struct DirectClient {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector dials (and verifies, for https).
    connect_to: Uri,
    idle: Arc<Idle>,
}

impl DirectClient {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        connect_to: Uri,
        idle_timeout: Duration,
        workers: usize,
    ) -> Self {
        DirectClient {
            connector,
            connect_to,
            idle: Arc::new(Idle {
                lists: PerWorker::new(workers, Mutex::default),
                timeout: idle_timeout,
            }),
        }
    }

    /// Send a body-less request (origin-form `target`, headers final) and read the response
    /// head; the body streams from the connection as the caller polls it.
    ///
    /// A pooled connection may still be closed by the upstream between its probe and the
    /// request. Requests that may be repeated (RFC 9110 §9.2.2) are then sent again on another
    /// connection when it ended before any answer; others only when writing them failed.
    pub async fn send(
        &self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<Response<DirectBody>, SendError> {
        let idempotent = method.is_idempotent();
        let mut retries = 0;
        loop {
            let (mut conn, reused) = match self.idle.checkout() {
                Some(conn) => (conn, true),
                // Boxed: connecting (TLS included) is rare and its future large.
                None => (Box::pin(self.connect()).await?, false),
            };
            conn.out.clear();
            head::write_request(&mut conn.out, method, target, headers);
            match exchange(&mut conn, method).await {
                Ok((head, framing, keep_alive)) => {
                    let body = DirectBody::new(conn, framing, keep_alive, Arc::clone(&self.idle));
                    let mut resp = Response::new(body);
                    *resp.status_mut() = head.status;
                    *resp.version_mut() = head.version;
                    *resp.headers_mut() = head.headers;
                    return Ok(resp);
                }
                Err(ExchangeError::Write(_)) if reused && retries < MAX_RETRIES => retries += 1,
                Err(ExchangeError::NoAnswer) if reused && idempotent && retries < MAX_RETRIES => {
                    retries += 1
                }
                Err(e) => return Err(SendError::Upstream(error_chain(&e))),
            }
        }
    }

    async fn connect(&self) -> Result<Box<Connection>, SendError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| SendError::Connect(error_chain(&*e)))?;
        let io = connector
            .call(self.connect_to.clone())
            .await
            .map_err(|e| SendError::Connect(error_chain(&*e)))?;
        Ok(Box::new(Connection {
            io: TokioIo::new(io),
            buf: BytesMut::new(),
            out: Vec::with_capacity(1024),
            since: Instant::now(),
        }))
    }
}

/// Write the head in `conn.out`, read the response head (interim 1xx answers skipped).
async fn exchange(
    conn: &mut Connection,
    method: &Method,
) -> Result<(head::Head, Framing, bool), ExchangeError> {
    // Anything left in the buffer belongs to no request: such connections are not pooled.
    conn.buf.clear();
    conn.io
        .write_all(&conn.out)
        .await
        .map_err(ExchangeError::Write)?;
    conn.io.flush().await.map_err(ExchangeError::Write)?;
    let mut answered = false;
    // Bytes of the buffer known to hold no end of a head: each byte is searched once, so a head
    // arriving in many small reads is parsed once, not once per read.
    let mut searched = 0;
    loop {
        if head::may_be_complete(&conn.buf, &mut searched) {
            if let Some(mut head) = head::parse(&mut conn.buf)? {
                searched = 0;
                match head.status {
                    StatusCode::SWITCHING_PROTOCOLS => return Err(ExchangeError::UnaskedUpgrade),
                    s if s.is_informational() => continue,
                    _ => {}
                }
                let (framing, keep_alive) = head::framing(&mut head, method)?;
                return Ok((head, framing, keep_alive));
            }
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(ExchangeError::HeadTooLarge);
        }
        if conn.buf.capacity() - conn.buf.len() < HEAD_READ / 2 {
            conn.buf.reserve(HEAD_READ);
        }
        let read = std::future::poll_fn(|cx| {
            tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
        })
        .await;
        match read {
            Ok(0) if !answered => return Err(ExchangeError::NoAnswer),
            Ok(0) => return Err(ExchangeError::ClosedInHead),
            Ok(_) => answered = true,
            // A reset before any byte of answer is the same closed connection.
            Err(e) if !answered && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(ExchangeError::NoAnswer)
            }
            Err(e) => return Err(ExchangeError::Read(e)),
        }
    }
}
