//! The settings file (`--config`): listeners, upstream, scope file, mode, cache and timeouts.
//! Command-line flags override it; with flags alone no settings file is needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::decide::Mode;
use crate::tls::UpstreamTls;

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
    /// Largest request body of a type the forge takes parameters from (urlencoded, multipart,
    /// JSON, POST without Content-Type) that the gateway reads and inspects for credentials
    /// before deciding. Such a body is held in memory while it is inspected; a larger one is
    /// refused with 413, never forwarded unchecked, except multipart and JSON bodies, which
    /// stream and are checked on the way (their end held back). Other bodies stream whatever
    /// their size.
    pub max_inspected_body: usize,
    /// All bodies being inspected at once hold at most this many bytes together; past it a
    /// request that needs its body inspected gets 503 with Retry-After.
    pub max_inspected_total: usize,
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
            max_inspected_body: 1024 * 1024,
            max_inspected_total: 256 * 1024 * 1024,
            h2_max_concurrent_streams: 200,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
        }
    }
}

/// `[tls]`: TLS termination on the main listener. On when both `cert` and `key` are set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first. Reloaded with the scope file (SIGHUP, POST /-/reload).
    pub cert: Option<PathBuf>,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// A client must finish the TLS handshake within this, else the connection is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert: None,
            key: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The settings file as written. Every key is optional except what `validate` asks for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The forge, `http://host[:port]` or `https://host[:port]`.
    pub upstream: Option<String>,
    /// PEM bundle of the CAs an `https://` upstream's certificate must chain to; replaces the
    /// built-in (Mozilla) roots.
    pub upstream_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) the gateway presents to an `https://` upstream (mTLS).
    pub upstream_client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub upstream_client_key: Option<PathBuf>,
    /// The forge's external URL (what its `web_url`s start with), when it differs from `upstream`.
    pub forge_external_url: Option<String>,
    /// A file holding a read-only forge token (`read_api`, of a user who sees every project)
    /// used to resolve Git, LFS and web paths the scope file does not list, such as renamed
    /// projects' old paths. Unset: such paths are decided as named (by `[defaults]`).
    pub lookup_token_file: Option<PathBuf>,
    pub scopes: Option<PathBuf>,
    pub mode: ModeSetting,
    pub job_token_prefixes: Vec<String>,
    pub max_allowlist: usize,
    /// Threads serving the main listener, each with its own runtime and socket; 0: one per
    /// CPU the process may run on.
    pub workers: usize,
    pub cache: CacheSettings,
    pub timeouts: TimeoutSettings,
    pub limits: LimitSettings,
    /// `human` or `json`.
    pub log_format: LogFormat,
    pub tls: TlsSettings,
    /// Watch the scope file's directory and reload when the file changes.
    pub reload_watch: bool,
    /// How long the scope file must be quiet before a change is read.
    #[serde(with = "humantime_serde")]
    pub reload_debounce: Duration,
    /// How often the scope file is compared with the running snapshot even without an event;
    /// `0s` disables the poll.
    #[serde(with = "humantime_serde")]
    pub reload_poll: Duration,
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
    /// Distinct (target, origin) pairs pending a write; a decision for a new pair beyond it is
    /// dropped (and counted), never waited for.
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
            flush_interval: Duration::from_secs(5),
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

/// Most worker threads `workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl Settings {
    /// `workers`, with 0 read as one per available CPU.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            upstream: None,
            upstream_ca: None,
            upstream_client_cert: None,
            upstream_client_key: None,
            forge_external_url: None,
            lookup_token_file: None,
            scopes: None,
            mode: ModeSetting::Enforce,
            job_token_prefixes: vec!["glcbt-".to_string()],
            max_allowlist: 200,
            workers: 0,
            cache: CacheSettings::default(),
            timeouts: TimeoutSettings::default(),
            limits: LimitSettings::default(),
            log_format: LogFormat::Human,
            tls: TlsSettings::default(),
            reload_watch: true,
            reload_debounce: Duration::from_millis(200),
            reload_poll: Duration::from_secs(30),
            state_dir: PathBuf::from("state"),
            authlog: AuthLogSettings::default(),
            manage: ManageSettings::default(),
        }
    }
}

/// Shortest `reload_debounce` and `reload_poll`: shorter ones would spin.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(10);

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
        // A relative path in a settings file is relative to that file.
        if let Some(dir) = path.parent() {
            for p in [
                &mut settings.scopes,
                &mut settings.tls.cert,
                &mut settings.tls.key,
                &mut settings.upstream_ca,
                &mut settings.upstream_client_cert,
                &mut settings.upstream_client_key,
                &mut settings.lookup_token_file,
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
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
        if self.limits.max_inspected_body == 0 {
            problems.push("limits.max_inspected_body must be at least 1".into());
        }
        if self.limits.max_inspected_total <= self.limits.max_inspected_body {
            problems.push(
                "limits.max_inspected_total must be larger than limits.max_inspected_body".into(),
            );
        }
        if self.limits.max_connections == 0 {
            problems.push("limits.max_connections must be at least 1".into());
        }
        if let Some(file) = &self.lookup_token_file {
            // Only whether a token is there: its value is never echoed.
            match std::fs::read_to_string(file) {
                Ok(t) if !t.trim().is_empty() => {}
                Ok(_) => problems.push(format!("lookup_token_file {} is empty", file.display())),
                Err(e) => problems.push(format!(
                    "lookup_token_file {} cannot be read: {e}",
                    file.display()
                )),
            }
        }
        if self.authlog.enabled && (self.authlog.max_pairs == 0 || self.authlog.queue == 0) {
            problems.push("authlog.max_pairs and authlog.queue must be at least 1".into());
        }
        if self.workers > MAX_WORKERS {
            problems.push(format!(
                "workers must be at most {MAX_WORKERS} (0: one per CPU)"
            ));
        }
        if self.max_allowlist == 0 {
            problems.push("max_allowlist must be at least 1".into());
        }
        self.tls_problems(&mut problems);
        if self.reload_debounce < MIN_RELOAD_INTERVAL {
            problems.push(format!(
                "reload_debounce must be at least {}",
                humantime::format_duration(MIN_RELOAD_INTERVAL)
            ));
        }
        if !self.reload_poll.is_zero() && self.reload_poll < MIN_RELOAD_INTERVAL {
            problems.push(format!(
                "reload_poll must be \"0s\" (off) or at least {}",
                humantime::format_duration(MIN_RELOAD_INTERVAL)
            ));
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

    /// The main listener's certificate and key files, when TLS is on.
    pub fn listener_tls(&self) -> Option<(&Path, &Path)> {
        match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        }
    }

    /// How an `https://` upstream is reached.
    pub fn upstream_tls(&self) -> UpstreamTls {
        UpstreamTls {
            ca: self.upstream_ca.clone(),
            client_cert: self
                .upstream_client_cert
                .clone()
                .zip(self.upstream_client_key.clone()),
        }
    }

    /// TLS settings, with every file read and checked (so `scopegate check` names bad paths).
    fn tls_problems(&self, problems: &mut Vec<String>) {
        match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::tls::load_certified_key("[tls] cert", cert, "[tls] key", key)
                {
                    problems.push(e.to_string());
                }
            }
            (Some(_), None) => {
                problems.push("[tls] cert is set but key is not: set both, or neither".into())
            }
            (None, Some(_)) => {
                problems.push("[tls] key is set but cert is not: set both, or neither".into())
            }
            (None, None) => {}
        }
        if self.tls.handshake_timeout.is_zero() {
            problems.push("[tls] handshake_timeout must be more than 0s".into());
        }
        match (&self.upstream_client_cert, &self.upstream_client_key) {
            (Some(_), None) => problems.push(
                "upstream_client_cert is set but upstream_client_key is not: set both, or neither"
                    .into(),
            ),
            (None, Some(_)) => problems.push(
                "upstream_client_key is set but upstream_client_cert is not: set both, or neither"
                    .into(),
            ),
            _ => {}
        }
        let upstream_tls = self.upstream_ca.is_some() || self.upstream_client_cert.is_some();
        if !upstream_tls {
            return;
        }
        let https = self
            .upstream
            .as_deref()
            .and_then(|u| parse_upstream(u).ok())
            .map(|u| u.scheme == http::uri::Scheme::HTTPS);
        if https == Some(false) {
            problems.push(
                "upstream_ca / upstream_client_cert are set but the upstream is http://: \
                 they would be ignored; use an https:// upstream or remove them"
                    .into(),
            );
        }
        if let Err(e) = self.upstream_tls().client_config() {
            problems.push(e.to_string());
        }
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
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!(
            "upstream {raw:?}: only http:// and https:// upstreams are supported"
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
        let https = parse_upstream("https://gitlab.example.com").unwrap();
        assert_eq!(https.scheme, http::uri::Scheme::HTTPS);
        assert!(parse_upstream("ftp://forge").is_err());
    }

    #[test]
    fn tls_table_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            "upstream = \"https://forge\"\nupstream_ca = \"ca.pem\"\n\
             [tls]\ncert = \"c.pem\"\nkey = \"/abs/k.pem\"\nhandshake_timeout = \"3s\"\n",
        )
        .unwrap();
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.tls.cert, Some(dir.path().join("c.pem")));
        assert_eq!(s.tls.key, Some(PathBuf::from("/abs/k.pem")));
        assert_eq!(s.upstream_ca, Some(dir.path().join("ca.pem")));
        assert_eq!(s.tls.handshake_timeout, Duration::from_secs(3));
        assert!(toml::from_str::<Settings>("[tls]\ncrt = \"x\"").is_err());
    }

    #[test]
    fn bad_tls_paths_are_named() {
        let s = Settings {
            upstream: Some("http://forge".into()),
            scopes: Some("s.toml".into()),
            tls: TlsSettings {
                cert: Some("/nonexistent/cert.pem".into()),
                key: Some("/nonexistent/key.pem".into()),
                ..TlsSettings::default()
            },
            upstream_ca: Some("/nonexistent/ca.pem".into()),
            upstream_client_key: Some("/nonexistent/client.key".into()),
            ..Settings::default()
        };
        let msg = s.validate().unwrap_err().to_string();
        for needle in [
            "/nonexistent/cert.pem",
            "upstream_client_key is set but upstream_client_cert is not",
            "upstream is http://",
            "/nonexistent/ca.pem",
        ] {
            assert!(msg.contains(needle), "{needle} missing from {msg}");
        }
        let half = Settings {
            tls: TlsSettings {
                key: Some("k.pem".into()),
                ..TlsSettings::default()
            },
            ..Settings::default()
        };
        assert!(half
            .validate()
            .unwrap_err()
            .to_string()
            .contains("[tls] key is set but cert is not"));
    }

    #[test]
    fn reload_settings_parse_and_are_checked() {
        let s: Settings = toml::from_str(
            "reload_debounce = \"50ms\"\nreload_poll = \"0s\"\nreload_watch = false",
        )
        .unwrap();
        assert_eq!(s.reload_debounce, Duration::from_millis(50));
        assert!(s.reload_poll.is_zero());
        assert!(!s.reload_watch);
        let d = Settings::default();
        assert!(d.reload_watch);
        assert_eq!(d.reload_poll, Duration::from_secs(30));
        let bad = Settings {
            reload_debounce: Duration::ZERO,
            reload_poll: Duration::from_millis(1),
            ..Settings::default()
        };
        let msg = bad.validate().unwrap_err().to_string();
        assert!(
            msg.contains("reload_debounce") && msg.contains("reload_poll"),
            "{msg}"
        );
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
