//! The settings file (`--config`): listeners, upstream, scope file, mode, cache and timeouts.
//! Command-line flags override it; with flags alone no settings file is needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::decide::Mode;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{0}")]
    Missing(String),
}

/// Global enforcement mode as written in the settings file.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModeSetting {
    #[default]
    Enforce,
    Report,
}

impl From<ModeSetting> for Mode {
    fn from(m: ModeSetting) -> Mode {
        match m {
            ModeSetting::Enforce => Mode::Enforce,
            ModeSetting::Report => Mode::Report,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// How long a token's origin is remembered. Job tokens live while their job runs.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long a token the forge rejected (or a non-job token) is remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Upper bound on remembered tokens (memory stays bounded whatever clients send).
    pub max_entries: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(10),
            max_entries: 100_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutSettings {
    /// The forge's `GET /api/v4/job` must answer within this, else 503.
    #[serde(with = "humantime_serde")]
    pub forge_lookup: Duration,
    /// Connecting to the upstream; past it the client gets 502.
    #[serde(with = "humantime_serde")]
    pub upstream_connect: Duration,
    /// Waiting for the upstream's response headers; past it the client gets 504.
    #[serde(with = "humantime_serde")]
    pub upstream_response: Duration,
    /// Reading a request's headers (slowloris guard). On HTTP/1.1 it also bounds how long a
    /// keep-alive connection may sit idle waiting for its next request.
    #[serde(with = "humantime_serde")]
    pub request_header: Duration,
    /// In-flight requests may finish for this long after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// Keep-alive connections idle longer than this are closed by the upstream pool.
    #[serde(with = "humantime_serde")]
    pub upstream_idle: Duration,
}

impl Default for TimeoutSettings {
    fn default() -> Self {
        TimeoutSettings {
            forge_lookup: Duration::from_secs(5),
            upstream_connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(60),
            request_header: Duration::from_secs(10),
            drain: Duration::from_secs(25),
            upstream_idle: Duration::from_secs(50),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Open client connections; past it the listener stops accepting until one closes.
    pub max_connections: usize,
    /// Request line + headers, in bytes (HTTP/1.1 read buffer, HTTP/2 header list); past it: 431.
    pub max_header_bytes: usize,
    /// Header count (HTTP/1.1); past it: 431.
    pub max_headers: usize,
    /// Request target length in bytes; past it: 414.
    pub max_url_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams reset by the client and not yet accepted (rapid-reset guard).
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the gateway may reset per connection for protocol errors before it
    /// closes the connection (reset-flood guard).
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_url_bytes: 8 * 1024,
            h2_max_concurrent_streams: 200,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
        }
    }
}

/// The settings file as written. Every key is optional except what `validate` asks for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The forge, `http://host[:port]`.
    pub upstream: Option<String>,
    /// The forge's external URL (what its `web_url`s start with), when it differs from `upstream`.
    pub forge_external_url: Option<String>,
    pub scopes: Option<PathBuf>,
    pub mode: ModeSetting,
    pub job_token_prefixes: Vec<String>,
    pub max_allowlist: usize,
    pub cache: CacheSettings,
    pub timeouts: TimeoutSettings,
    pub limits: LimitSettings,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// Where the gateway keeps its own state (the authorization log). Relative paths in a
    /// settings file are relative to that file. `:memory:` keeps the state in memory only.
    pub state_dir: PathBuf,
    pub authlog: AuthLogSettings,
    pub manage: ManageSettings,
}

/// The authorization log: every job-token decision, aggregated per (target, origin) pair.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthLogSettings {
    /// Off: decisions are not recorded, and the log's API answers with an empty list.
    pub enabled: bool,
    /// Most (target, origin) pairs kept; past it the pairs seen longest ago are dropped.
    pub max_pairs: usize,
    /// Decisions waiting to be written; when full, new ones are dropped (and counted), never
    /// waited for.
    pub queue: usize,
    /// Pending decisions are written at least this often.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for AuthLogSettings {
    fn default() -> Self {
        AuthLogSettings {
            enabled: true,
            max_pairs: 100_000,
            queue: 10_000,
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// The management API under `/-/scopegate/api/v4/`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManageSettings {
    /// Off: `/-/scopegate/...` answers 404 and the scope file is only ever changed by ops.
    pub enabled: bool,
    /// The forge must answer the permission and lookup calls within this.
    #[serde(with = "humantime_serde")]
    pub forge_timeout: Duration,
}

impl Default for ManageSettings {
    fn default() -> Self {
        ManageSettings {
            enabled: true,
            forge_timeout: Duration::from_secs(10),
        }
    }
}

/// `state_dir = ":memory:"`: keep the gateway's state in memory (tests, throwaway runs).
pub const MEMORY: &str = ":memory:";

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            upstream: None,
            forge_external_url: None,
            scopes: None,
            mode: ModeSetting::Enforce,
            job_token_prefixes: vec!["glcbt-".to_string()],
            max_allowlist: 200,
            cache: CacheSettings::default(),
            timeouts: TimeoutSettings::default(),
            limits: LimitSettings::default(),
            log_format: LogFormat::Human,
            state_dir: PathBuf::from("state"),
            authlog: AuthLogSettings::default(),
            manage: ManageSettings::default(),
        }
    }
}

/// The upstream split into the parts the forwarder needs.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut settings: Settings = toml::from_str(&text).map_err(|e| SettingsError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        // A relative scope path in a settings file is relative to that file.
        if let (Some(scopes), Some(dir)) = (settings.scopes.as_mut(), path.parent()) {
            if scopes.is_relative() {
                *scopes = dir.join(&*scopes);
            }
        }
        // So is the state directory (`:memory:` is not a path).
        if let Some(dir) = path.parent() {
            if settings.state_dir.is_relative() && settings.state_dir != Path::new(MEMORY) {
                settings.state_dir = dir.join(&settings.state_dir);
            }
        }
        Ok(settings)
    }

    /// Everything `run` needs, checked together so that every problem is reported at once.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        match &self.upstream {
            None => problems.push(
                "no upstream: set `upstream` in the settings file or pass --upstream".to_string(),
            ),
            Some(u) => {
                if let Err(e) = parse_upstream(u) {
                    problems.push(e);
                }
            }
        }
        if self.scopes.is_none() {
            problems
                .push("no scope file: set `scopes` in the settings file or pass --scopes".into());
        }
        if self.job_token_prefixes.iter().any(|p| p.is_empty()) {
            problems.push(
                "job_token_prefixes: an empty prefix would make every credential a job token"
                    .into(),
            );
        }
        if self.limits.max_header_bytes < 8192 {
            problems.push("limits.max_header_bytes must be at least 8192".into());
        }
        if self.limits.max_connections == 0 {
            problems.push("limits.max_connections must be at least 1".into());
        }
        if self.authlog.enabled && (self.authlog.max_pairs == 0 || self.authlog.queue == 0) {
            problems.push("authlog.max_pairs and authlog.queue must be at least 1".into());
        }
        if self.max_allowlist == 0 {
            problems.push("max_allowlist must be at least 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Missing(problems.join("\n")))
        }
    }

    pub fn upstream(&self) -> Result<Upstream, SettingsError> {
        let raw = self
            .upstream
            .as_deref()
            .ok_or_else(|| SettingsError::Missing("no upstream configured".into()))?;
        parse_upstream(raw).map_err(SettingsError::Missing)
    }

    /// What the forge's `web_url`s start with.
    pub fn forge_external_url(&self) -> String {
        self.forge_external_url
            .clone()
            .or_else(|| self.upstream.clone())
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string()
    }
}

fn parse_upstream(raw: &str) -> Result<Upstream, String> {
    let uri: http::Uri = raw
        .parse()
        .map_err(|e| format!("upstream {raw:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("upstream {raw:?} has no scheme"))?;
    if scheme != http::uri::Scheme::HTTP {
        return Err(format!(
            "upstream {raw:?}: only http:// upstreams are supported"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("upstream {raw:?} has no host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "upstream {raw:?}: give the forge's root URL only (no path); a forge under a relative URL root is not supported"
        ));
    }
    Ok(Upstream { scheme, authority })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_settings_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scopegate.toml");
        let s = Settings::load(&path).unwrap();
        s.validate().unwrap();
        assert!(s.scopes.unwrap().ends_with("scopes.toml"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Settings>("lisen = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("lisen"));
    }

    #[test]
    fn upstream_must_be_a_root_http_url() {
        assert!(parse_upstream("http://forge:8080").is_ok());
        assert!(parse_upstream("http://forge/").is_ok());
        assert!(parse_upstream("forge:8080").is_err());
        assert!(parse_upstream("http://forge/gitlab").is_err());
    }

    #[test]
    fn validate_lists_every_problem() {
        let s = Settings {
            job_token_prefixes: vec![String::new()],
            ..Settings::default()
        };
        let msg = s.validate().unwrap_err().to_string();
        assert!(
            msg.contains("upstream") && msg.contains("scope file") && msg.contains("prefix"),
            "{msg}"
        );
    }
}
