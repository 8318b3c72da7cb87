//! The main listener: accept loop, TLS handshake (when on) under a timeout, per-connection
//! HTTP/1.1 + HTTP/2 serving, limits, graceful drain.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    options: ServerOptions,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let builder = connection_builder(&options);
    // At the limit the loop stops accepting: new clients wait in the kernel's backlog.
    let slots = Arc::new(Semaphore::new(options.limits.max_connections));

    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
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
        // The handshake runs in the connection's own task: a silent client delays nobody else,
        // and holds its slot at most `handshake_timeout`.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let gw = Arc::clone(&gateway);
        let tls = options.tls.clone();
        tokio::spawn(async move {
            gw.metrics.connection_opened();
            match tls {
                None => {
                    let conn = ClientConn {
                        addr: client,
                        scheme: ClientScheme::Http,
                    };
                    serve_connection(stream, conn, &builder, watcher, &gw).await;
                }
                Some(tls) => {
                    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            let conn = ClientConn {
                                addr: client,
                                scheme: ClientScheme::Https,
                            };
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
            gw.metrics.connection_closed();
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(options.timeouts.drain) => tracing::warn!("drain deadline reached; closing remaining connections"),
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
        async move { Ok::<_, Infallible>(gw.handle(req, client).await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
