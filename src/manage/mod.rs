//! Token access management: the forge's own job-token-scope API, served by the gateway on its
//! main listener under [`PREFIX`], for project maintainers and owners (design.md, "Management
//! API").
//!
//! - [`api`]: routes, parameters, GitLab's JSON shapes, status codes and pagination;
//! - [`auth`]: the caller's own forge credential and the forge's answers (role, visibility);
//! - [`write`]: the scope file's single, format-preserving, atomic writer.
//!
//! `Gateway::handle` sends every request under [`PREFIX`] here, before the enforcement
//! pipeline: these requests never reach the forge as such (only the lookups made with the
//! caller's credential do).

pub mod api;
pub mod auth;
pub mod write;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::authlog::AuthLog;
use crate::metrics::Metrics;
use crate::origin::OriginResolver;
use crate::policy::Policy;
use crate::settings::{Settings, SettingsError};
use crate::snapshot::PolicyStore;
use auth::ForgeClient;
use write::{Refusal, ScopeDoc, ScopeWriter, WriteError};

/// Where the management API lives on the main listener.
pub const PREFIX: &str = "/-/scopegate";

/// Whether a request path belongs to the management API.
pub fn is_manage_path(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub struct Manager {
    pub(crate) store: Arc<PolicyStore>,
    pub writer: ScopeWriter,
    pub(crate) forge: Arc<ForgeClient>,
    pub(crate) authlog: Arc<AuthLog>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) prefixes: Vec<Box<str>>,
    pub(crate) max_allowlist: usize,
    pub(crate) external_url: String,
}

impl Manager {
    pub fn new(
        settings: &Settings,
        store: Arc<PolicyStore>,
        authlog: Arc<AuthLog>,
        metrics: Arc<Metrics>,
        tls: rustls::ClientConfig,
    ) -> Result<Manager, SettingsError> {
        Ok(Manager {
            writer: ScopeWriter::new(Arc::clone(&store)),
            store,
            forge: Arc::new(ForgeClient::new(
                settings.upstream()?,
                settings.manage.forge_timeout,
                tls,
            )),
            authlog,
            metrics,
            prefixes: settings
                .job_token_prefixes
                .iter()
                .map(|p| p.clone().into_boxed_str())
                .collect(),
            max_allowlist: settings.max_allowlist,
            external_url: settings.forge_external_url(),
        })
    }

    /// Serve one management request. Never fails: errors are GitLab-shaped responses.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        resolver: &OriginResolver,
    ) -> Response<Full<Bytes>> {
        match api::serve(self, req, resolver).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }

    /// One change to the scope file through the single writer, counted in the metrics.
    pub(crate) async fn write<F>(&self, edit: F) -> Result<(), WriteError>
    where
        F: FnOnce(&mut ScopeDoc, &Policy) -> Result<(), Refusal> + Send + 'static,
    {
        let result = self.writer.apply(edit).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(WriteError::Refused(_)) => "refused",
            Err(WriteError::ReadOnly(_)) => "read_only",
            Err(WriteError::Failed(_)) => "failed",
        };
        self.metrics.scope_write(label);
        match result {
            Ok((_, generation)) => {
                self.metrics.set_generation(generation);
                Ok(())
            }
            Err(e) => {
                if let WriteError::Failed(m) = &e {
                    tracing::error!(error = %m, "management API: the scope file was not changed");
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix() {
        assert!(is_manage_path("/-/scopegate"));
        assert!(is_manage_path(
            "/-/scopegate/api/v4/projects/1/job_token_scope"
        ));
        assert!(!is_manage_path("/-/scopegatex"));
        assert!(!is_manage_path("/api/v4/projects/1"));
    }
}
