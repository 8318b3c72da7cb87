//! The command line (fixed by design.md; change only by adding).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::settings::{LogFormat, ModeSetting, Settings, SettingsError};

#[derive(Debug, Parser)]
#[command(
    name = "scopegate",
    version,
    about = "Enforces CI/CD job token scopes in front of a GitLab-compatible forge"
)]
pub struct Cli {
    /// Log level or filter (e.g. `info`, `scopegate=debug`); RUST_LOG works too.
    #[arg(long, global = true, env = "SCOPEGATE_LOG")]
    pub log_level: Option<String>,
    /// `human` or `json`.
    #[arg(long, global = true, value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run(RunArgs),
    /// Validate the settings and scope file, print a summary; exit 1 listing every error.
    Check(CheckArgs),
    /// Print the decision for one request and why.
    Explain(ExplainArgs),
    /// A self-contained walkthrough: a stand-in forge and the gateway on loopback.
    Demo(DemoArgs),
    /// Propose (and with --apply write) the inbound allowlist that keeps every caller the
    /// authorization log saw working.
    Suggest(SuggestArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Settings file (TOML); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The forge, e.g. http://gitlab.internal:8080
    #[arg(long)]
    pub upstream: Option<String>,
    /// The scope file.
    #[arg(long)]
    pub scopes: Option<PathBuf>,
    /// Admin listener address.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// `enforce` or `report`.
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<ModeSetting>,
    /// PEM certificate chain: the main listener terminates TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where the authorization log is kept (`:memory:` for none on disk).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl RunArgs {
    /// The settings file (if any) with the flags laid over it.
    pub fn settings(&self) -> Result<Settings, SettingsError> {
        let mut s = match &self.config {
            Some(path) => Settings::load(path)?,
            None => Settings::default(),
        };
        if let Some(v) = self.listen {
            s.listen = v;
        }
        if let Some(v) = &self.upstream {
            s.upstream = Some(v.clone());
        }
        if let Some(v) = &self.scopes {
            s.scopes = Some(v.clone());
        }
        if let Some(v) = self.admin {
            s.admin = v;
        }
        if let Some(v) = self.mode {
            s.mode = v;
        }
        if let Some(v) = &self.tls_cert {
            s.tls.cert = Some(v.clone());
        }
        if let Some(v) = &self.tls_key {
            s.tls.key = Some(v.clone());
        }
        if let Some(v) = &self.state_dir {
            s.state_dir = v.clone();
        }
        Ok(s)
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CheckArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub scopes: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[arg(long)]
    pub scopes: PathBuf,
    /// The origin project: numeric id or full path.
    #[arg(long)]
    pub origin: String,
    /// `enforce` (default) or `report`.
    #[arg(long, value_parser = parse_mode, default_value = "enforce")]
    pub mode: ModeSetting,
    /// HTTP method, e.g. GET.
    pub method: String,
    /// Request URL or path, e.g. /api/v4/projects/acme%2Fapp/merge_requests
    pub url: String,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run the walkthrough and exit instead of staying up for your own curl calls.
    #[arg(long)]
    pub once: bool,
    /// Where the demo gateway listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// The project whose inbound allowlist to propose: numeric id or full path.
    #[arg(long)]
    pub project: String,
    /// Settings file (scope file, state directory, max_allowlist); the flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub scopes: Option<PathBuf>,
    /// The gateway's state directory (where `authorizations.sqlite3` is).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Write the proposal to the scope file (safely) and turn the inbound limit on.
    #[arg(long)]
    pub apply: bool,
    /// With --apply: write the allowlist but leave the inbound limit as it is.
    #[arg(long, requires = "apply", conflicts_with = "enforce")]
    pub no_enable: bool,
    /// With --apply: also switch the project's `report_only` off, so that the limit is
    /// enforced rather than only reported (the last step of a report-only rollout).
    #[arg(long, requires = "apply")]
    pub enforce: bool,
}

fn parse_mode(s: &str) -> Result<ModeSetting, String> {
    match s {
        "enforce" => Ok(ModeSetting::Enforce),
        "report" => Ok(ModeSetting::Report),
        _ => Err("expected `enforce` or `report`".into()),
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected `human` or `json`".into()),
    }
}
