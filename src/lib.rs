//! scopegate: a reverse proxy that enforces CI/CD job token scopes in front of a
//! GitLab-compatible forge API. See README.md and design.md.
//!
//! The request's way: [`credentials`] → [`origin`] → [`target`] → [`decide`] → [`forward`],
//! driven by [`handler`]; the policy lives in one [`snapshot`] compiled from the [`scope`] file.

pub mod admin;
pub mod allocator;
pub mod authlog;
pub mod body;
pub mod cli;
pub mod credentials;
pub mod decide;
pub mod demo;
pub mod error;
pub mod explain;
pub mod forward;
pub mod fuzzing;
pub mod h1;
pub mod handler;
pub mod linger;
pub mod listen;
pub mod manage;
pub mod metrics;
pub mod origin;
pub mod policy;
pub mod pool;
pub mod project;
pub mod registry;
pub mod reload;
pub mod renames;
pub mod scope;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod standin;
pub mod suggest;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::authlog::AuthLog;
use crate::forward::Forwarder;
use crate::handler::{Gateway, HandlerOptions};
use crate::manage::Manager;
use crate::metrics::Metrics;
use crate::origin::OriginResolver;
use crate::scope::ScopeLimits;
use crate::settings::Settings;
use crate::snapshot::PolicyStore;
use crate::tls::CertStore;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Settings(#[from] settings::SettingsError),
    #[error("{0}")]
    Scopes(#[from] scope::ScopeError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// A started gateway: both listeners bound and serving.
pub struct Running {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub admin_state: Arc<Admin>,
    /// The authorization log (tests flush it to read what the requests did).
    pub authlog: Arc<AuthLog>,
    /// The management API, when it is on (tests inject write faults through its writer).
    pub manager: Option<Arc<Manager>>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Begin the graceful drain: readiness turns false, listeners close, in-flight requests
    /// finish under the drain deadline.
    pub fn shutdown(&self) {
        self.admin_state.draining.store(true, Ordering::Release);
        self.shutdown.cancel();
    }

    /// Wait until both listeners have stopped (after `shutdown`), and the authorization log
    /// has written what it was given.
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        self.authlog.flush().await;
    }
}

/// Load the scope file, bind both listeners and start serving. The first load must succeed:
/// a gateway that starts without its policy would deny or allow by accident.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    settings.validate()?;
    let upstream = settings.upstream()?;
    let scopes = settings
        .scopes
        .clone()
        .ok_or_else(|| StartError::Other("no scope file".into()))?;
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(PolicyStore::new(
        scopes,
        ScopeLimits {
            max_allowlist: settings.max_allowlist,
        },
    ));
    // Watch before the first load, so that no change in between goes unseen.
    let reloader = reload::Reloader::new(
        Arc::clone(&store),
        Arc::clone(&metrics),
        reload::ReloadSettings::from(&settings),
    );
    let first = store.reload().await;
    metrics.reload(first.is_ok(), store.load().generation);
    first?;

    let upstream_tls = settings.upstream_tls().client_config()?;
    let cert_store = match settings.listener_tls() {
        Some((cert, key)) => Some(Arc::new(CertStore::load(
            cert.to_path_buf(),
            key.to_path_buf(),
        )?)),
        None => None,
    };
    let listener_tls = match &cert_store {
        Some(store) => Some(server::TlsOptions {
            acceptor: tokio_rustls::TlsAcceptor::from(tls::server_config(Arc::clone(store))?),
            handshake_timeout: settings.tls.handshake_timeout,
        }),
        None => None,
    };

    let resolver = OriginResolver::new(
        &upstream,
        settings.forge_external_url(),
        &settings.cache,
        settings.timeouts.forge_lookup,
        Arc::clone(&metrics),
        upstream_tls.clone(),
        settings.worker_threads(),
    )
    .map_err(|e| StartError::Other(e.to_string()))?;
    let renames = match &settings.lookup_token_file {
        Some(file) => {
            let token = std::fs::read_to_string(file).map_err(|e| {
                StartError::Other(format!(
                    "cannot read lookup_token_file {}: {e}",
                    file.display()
                ))
            })?;
            let resolver = renames::PathResolver::new(
                upstream.clone(),
                &token,
                settings.cache.ttl,
                settings.timeouts.forge_lookup,
                upstream_tls.clone(),
            )
            .map_err(|e| StartError::Other(e.to_string()))?;
            Some(Arc::new(resolver))
        }
        None => None,
    };
    let forwarder = Forwarder::new(
        upstream,
        &settings.timeouts,
        upstream_tls.clone(),
        settings.worker_threads(),
    )
    .map_err(|e| StartError::Other(e.to_string()))?;
    let (authlog, _writer) = AuthLog::start(
        &settings.authlog,
        &settings.state_dir,
        metrics.authlog_dropped(),
    )
    .map_err(|e| StartError::Other(e.to_string()))?;
    let manager = if settings.manage.enabled {
        Some(Arc::new(Manager::new(
            &settings,
            Arc::clone(&store),
            Arc::clone(&authlog),
            Arc::clone(&metrics),
            upstream_tls.clone(),
        )?))
    } else {
        None
    };
    let mut gateway = Gateway::new(
        Arc::clone(&store),
        resolver,
        forwarder,
        Arc::clone(&metrics),
        HandlerOptions {
            mode: settings.mode.into(),
            prefixes: settings
                .job_token_prefixes
                .iter()
                .map(|p| p.clone().into_boxed_str())
                .collect(),
            max_url_bytes: settings.limits.max_url_bytes,
            body_limits: crate::body::Limits::new(
                settings.limits.max_inspected_body,
                settings.limits.max_inspected_total,
            ),
        },
    );
    gateway.authlog = Arc::clone(&authlog);
    gateway.manage = manager.clone();
    gateway.renames = renames;
    let gateway = Arc::new(gateway);

    let main_listener = bind(settings.listen).await?;
    let admin_listener = bind(settings.admin).await?;
    let listen = main_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: settings.listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: settings.admin,
            source,
        })?;

    let shutdown = CancellationToken::new();
    let admin_state = Arc::new(Admin {
        policy: store,
        metrics,
        authlog: Arc::clone(&authlog),
        draining: Arc::new(AtomicBool::new(false)),
        tls: cert_store,
    });
    let scheme = if listener_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let options = server::ServerOptions {
        workers: settings.worker_threads(),
        timeouts: settings.timeouts.clone(),
        limits: settings.limits.clone(),
        tls: listener_tls,
    };
    // The admin listener outlives the drain, so probes see `/-/ready` turn false rather than
    // a refused connection.
    let admin_stop = CancellationToken::new();
    let main = tokio::spawn(server::serve(
        main_listener,
        gateway,
        options,
        shutdown.clone(),
    ));
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&admin_state),
        admin_stop.clone(),
    ));
    // The watcher and the poll run as long as the admin listener (which can reload too).
    let reload_task = tokio::spawn(reloader.run(admin_stop.clone()));
    let tasks = vec![
        tokio::spawn(async move {
            let _ = main.await;
            admin_stop.cancel();
        }),
        admin_task,
        reload_task,
    ];
    tracing::info!(%listen, scheme, admin = %admin_addr, "scopegate listening");
    Ok(Running {
        listen,
        admin: admin_addr,
        admin_state,
        authlog,
        manager,
        shutdown,
        tasks,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    listen::bind(addr).map_err(|source| StartError::Bind { addr, source })
}

/// `scopegate run`: start, then handle signals until told to stop. SIGHUP reloads, SIGTERM
/// drains, SIGINT exits promptly.
pub async fn run(settings: Settings) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let running = start(settings).await?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| StartError::Other(e.to_string()))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| StartError::Other(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| StartError::Other(e.to_string()))?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the scope file and the TLS certificate");
                let _ = running.admin_state.reload().await;
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                running.shutdown();
                running.wait().await;
                return Ok(());
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: exiting");
                running.authlog.flush().await;
                return Ok(());
            }
        }
    }
}
