//! The main listener: accept loop, TLS handshake (when on) under a timeout, per-connection
//! HTTP/1.1 + HTTP/2 serving, limits, graceful drain.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::forward::{ClientConn, ClientScheme};
use crate::handler::Gateway;
use crate::settings::{LimitSettings, TimeoutSettings};

/// How long the accept loop pauses after an accept error (EMFILE and friends) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Dead HTTP/2 peers are found by pinging them this often.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

pub struct ServerOptions {
    /// Threads serving the listener, each with its own runtime (at least one).
    pub workers: usize,
    pub timeouts: TimeoutSettings,
    pub limits: LimitSettings,
    /// TLS termination; None serves cleartext.
    pub tls: Option<TlsOptions>,
}

#[derive(Clone)]
pub struct TlsOptions {
    pub acceptor: TlsAcceptor,
    /// A client that has not finished its handshake by then is disconnected.
    pub handshake_timeout: Duration,
}

fn connection_builder(options: &ServerOptions) -> auto::Builder<TokioExecutor> {
    let limits = &options.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slowloris guard; hyper restarts it for every request, so it also bounds keep-alive idleness.
        .header_read_timeout(options.timeouts.request_header)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Serve until `shutdown` fires, then stop accepting and drain open connections under the deadline.
///
/// One accept loop hands each new connection to the worker thread serving the fewest, and the
/// connection lives on that thread from then to close, with its upstream connections: a request
/// crosses no thread and wakes no other worker (nginx's worker processes, Pingora's and Envoy's
/// thread-per-core model). Handing over by load rather than letting the kernel spread accepts
/// (`SO_REUSEPORT` hashes the address) keeps the workers' shares even, which keeps the slowest
/// worker's queue, and so the tail latency, short.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    options: ServerOptions,
    shutdown: CancellationToken,
) {
    // If this future is dropped (its runtime shut down), the workers stop too.
    let stop = shutdown.child_token();
    let _stop_workers = stop.clone().drop_guard();
    let options = Arc::new(options);
    let count = options.workers.max(1);
    let mut workers = Vec::with_capacity(count);
    let mut finished = Vec::with_capacity(count);
    for index in 0..count {
        let (handoff, incoming) = mpsc::unbounded_channel();
        let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
        // What the worker serves, as the metrics show it: the accept loop counts a connection
        // in when it hands it over, the worker counts it out when it closes.
        let load = gateway.metrics.worker_connections(index);
        let worker = Worker {
            index,
            gateway: Arc::clone(&gateway),
            options: Arc::clone(&options),
            load: load.clone(),
            shutdown: stop.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("scopegate-worker-{index}"))
            .spawn(move || {
                worker.run(incoming);
                drop(done);
            });
        match spawned {
            Ok(_) => {
                workers.push(WorkerHandle { handoff, load });
                finished.push(finished_rx);
            }
            Err(e) => tracing::error!(error = %e, index, "cannot start a worker thread"),
        }
    }
    accept_loop(&listener, &workers, &options, &stop).await;
    // Closing the hand-over channels tells the workers to drain.
    drop(workers);
    drop(listener);
    for worker in finished {
        // Err only means the worker is gone, which is what is waited for.
        let _ = worker.await;
    }
}

/// The accepting side's view of a worker.
struct WorkerHandle {
    handoff: mpsc::UnboundedSender<Accepted>,
    /// Connections handed to the worker and not yet closed.
    load: Gauge,
}

/// A connection on its way to a worker, with its slot under `max_connections`.
struct Accepted {
    stream: std::net::TcpStream,
    client: SocketAddr,
    permit: OwnedSemaphorePermit,
}

async fn accept_loop(
    listener: &TcpListener,
    workers: &[WorkerHandle],
    options: &ServerOptions,
    shutdown: &CancellationToken,
) {
    // At the limit the loop stops accepting: new clients wait in the kernel's backlog.
    let slots = Arc::new(Semaphore::new(options.limits.max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                drop(permit);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Out of this runtime's reactor, into the chosen worker's.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let Some(worker) = workers.iter().min_by_key(|w| w.load.get()) else {
            return;
        };
        worker.load.inc();
        if worker
            .handoff
            .send(Accepted {
                stream,
                client,
                permit,
            })
            .is_err()
        {
            worker.load.dec();
            tracing::error!("a worker thread is gone; its share of connections is refused");
        }
    }
}

/// What one worker thread needs to serve the connections it is handed.
struct Worker {
    index: usize,
    gateway: Arc<Gateway>,
    options: Arc<ServerOptions>,
    /// This worker's `scopegate_worker_connections` (the accept loop's measure of its load).
    load: Gauge,
    shutdown: CancellationToken,
}

impl Worker {
    fn run(self, incoming: mpsc::UnboundedReceiver<Accepted>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, worker = self.index, "cannot start a worker runtime");
                return;
            }
        };
        crate::worker::enter(self.index);
        runtime.block_on(self.serve(incoming));
    }

    async fn serve(self, mut incoming: mpsc::UnboundedReceiver<Accepted>) {
        let options = &self.options;
        let graceful = GracefulShutdown::new();
        let builder = connection_builder(options);
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                accepted = incoming.recv() => accepted,
            };
            let Some(Accepted {
                stream,
                client,
                permit,
            }) = accepted
            else {
                break;
            };
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register a connection");
                    self.load.dec();
                    continue;
                }
            };
            // The handshake runs in the connection's own task: a silent client delays nobody
            // else, and holds its slot at most `handshake_timeout`.
            let watcher = graceful.watcher();
            let builder = builder.clone();
            let gw = Arc::clone(&self.gateway);
            let tls = options.tls.clone();
            let load = self.load.clone();
            tokio::spawn(async move {
                gw.metrics.connection_opened();
                let (stream, linger) = crate::linger::wrap(stream);
                match tls {
                    None => {
                        let conn = ClientConn::new(client, ClientScheme::Http);
                        serve_connection(stream, conn, &builder, watcher, &gw).await;
                    }
                    Some(tls) => {
                        match tokio::time::timeout(
                            tls.handshake_timeout,
                            tls.acceptor.accept(stream),
                        )
                        .await
                        {
                            Ok(Ok(stream)) => {
                                let conn = ClientConn::new(client, ClientScheme::Https);
                                serve_connection(stream, conn, &builder, watcher, &gw).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%client, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(%client, "TLS handshake timed out");
                            }
                        }
                    }
                }
                // Closed for the client's view (the metrics), still holding its slot while it
                // drains what the client is still sending.
                gw.metrics.connection_closed();
                linger.drain().await;
                load.dec();
                drop(permit);
            });
        }
        tokio::select! {
            _ = graceful.shutdown() => tracing::debug!(worker = self.index, "all connections drained"),
            _ = tokio::time::sleep(options.timeouts.drain) => tracing::warn!(worker = self.index, "drain deadline reached; closing remaining connections"),
        }
    }
}

/// Serve HTTP/1.1 or HTTP/2 (by preface) on one accepted, possibly TLS-wrapped, connection.
async fn serve_connection<I>(
    io: I,
    client: ClientConn,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    gateway: &Arc<Gateway>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let gw = Arc::clone(gateway);
    let service = service_fn(move |req| {
        let gw = Arc::clone(&gw);
        let client = client.clone();
        // Boxed once here: hyper keeps the request's future in place by value, and this one
        // is kilobytes (the whole pipeline's states); a pointer moves for free.
        Box::pin(async move { Ok::<_, Infallible>(gw.handle(req, &client).await) })
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
