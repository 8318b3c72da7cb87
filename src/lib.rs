//! scopegate: a reverse proxy that enforces CI/CD job token scopes in front of a
//! GitLab-compatible forge API. See README.md and design.md.
//!
//! The request's way: [`credentials`] → [`origin`] → [`target`] → [`decide`] → [`forward`],
//! driven by [`handler`]; the policy lives in one [`snapshot`] compiled from the [`scope`] file.

pub mod admin;
pub mod cli;
pub mod credentials;
pub mod decide;
pub mod demo;
pub mod error;
pub mod explain;
pub mod forward;
pub mod fuzzing;
pub mod handler;
pub mod metrics;
pub mod origin;
pub mod policy;
pub mod project;
pub mod scope;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod standin;
pub mod target;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::forward::Forwarder;
use crate::handler::Gateway;
use crate::metrics::Metrics;
use crate::origin::OriginResolver;
use crate::scope::ScopeLimits;
use crate::settings::Settings;
use crate::snapshot::PolicyStore;

/// How long in-flight requests may finish after SIGTERM.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(25);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Settings(#[from] settings::SettingsError),
    #[error("{0}")]
    Scopes(#[from] scope::ScopeError),
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

    /// Wait until both listeners have stopped (after `shutdown`).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
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
    let first = store.reload().await;
    metrics.reload(first.is_ok(), store.load().generation);
    first?;

    let resolver = OriginResolver::new(
        &upstream,
        settings.forge_external_url(),
        &settings.cache,
        settings.timeouts.forge_lookup,
        Arc::clone(&metrics),
    )
    .map_err(|e| StartError::Other(e.to_string()))?;
    let forwarder = Forwarder::new(upstream, &settings.timeouts);
    let prefixes = settings
        .job_token_prefixes
        .iter()
        .map(|p| p.clone().into_boxed_str())
        .collect();
    let gateway = Arc::new(Gateway::new(
        Arc::clone(&store),
        resolver,
        forwarder,
        Arc::clone(&metrics),
        settings.mode.into(),
        prefixes,
    ));

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
        draining: Arc::new(AtomicBool::new(false)),
    });
    let options = server::ServerOptions {
        header_read_timeout: settings.timeouts.request_header,
        drain_deadline: DRAIN_DEADLINE,
    };
    let tasks = vec![
        tokio::spawn(server::serve(
            main_listener,
            gateway,
            options,
            shutdown.clone(),
        )),
        tokio::spawn(admin::serve(
            admin_listener,
            Arc::clone(&admin_state),
            shutdown.clone(),
        )),
    ];
    tracing::info!(%listen, admin = %admin_addr, "scopegate listening");
    Ok(Running {
        listen,
        admin: admin_addr,
        admin_state,
        shutdown,
        tasks,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
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
                tracing::info!("SIGHUP: reloading the scope file");
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
                return Ok(());
            }
        }
    }
}
