//! Test harness: the stand-in forge (the same one `scopegate demo` uses) and the gateway on
//! loopback, a plain HTTP client, and a raw-TCP client for requests no library would send.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scopegate::settings::Settings;
use scopegate::standin::{Standin, StandinJob};
use scopegate::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod manage;
pub mod scopes;

pub const BOT: &str = "glcbt-bot-job-token-0001";
pub const APP: &str = "glcbt-app-job-token-0002";
pub const PLATFORM_CI: &str = "glcbt-platform-ci-token-03";
pub const OTHER: &str = "glcbt-other-customer-token-4";
/// A job token from before the prefix existed.
pub const LEGACY_BOT: &str = "64_legacyBotTokenWithoutPrefix";

/// The jobs the stand-in forge knows.
pub fn jobs() -> Vec<StandinJob> {
    let job = |token: &str, job_id, project_id, path: &str| StandinJob {
        token: token.into(),
        job_id,
        project_id,
        project_path: path.into(),
    };
    vec![
        job(BOT, 1001, 10, "acme/deploy-bot"),
        job(APP, 1002, 12, "acme/app"),
        job(PLATFORM_CI, 1003, 20, "acme/platform/ci"),
        job(OTHER, 1004, 30, "globex/tool"),
        job(LEGACY_BOT, 1005, 10, "acme/deploy-bot"),
    ]
}

pub struct Harness {
    pub forge: Standin,
    pub gw: Running,
    pub dir: tempfile::TempDir,
    pub scopes: PathBuf,
    pub settings: Settings,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Harness {
    pub async fn start(scopes: &str) -> Harness {
        Self::start_with(scopes, |_| {}).await
    }

    pub async fn start_with(scopes: &str, tweak: impl FnOnce(&mut Settings)) -> Harness {
        let forge = Standin::start(jobs()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scopes.toml");
        std::fs::write(&path, scopes).unwrap();
        let mut settings = Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream: Some(forge.url()),
            scopes: Some(path.clone()),
            state_dir: dir.path().join("state"),
            ..Settings::default()
        };
        tweak(&mut settings);
        let gw = scopegate::start(settings.clone()).await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness {
            forge,
            gw,
            dir,
            scopes: path,
            settings,
            client,
        }
    }

    /// Stop the gateway (drain, flush the authorization log) and start it again with the same
    /// settings, scope file and state directory, in front of the same forge.
    pub async fn restart(self) -> Harness {
        let Harness {
            forge,
            gw,
            dir,
            scopes,
            settings,
            client,
        } = self;
        gw.shutdown();
        gw.wait().await;
        let gw = scopegate::start(settings.clone()).await.unwrap();
        Harness {
            forge,
            gw,
            dir,
            scopes,
            settings,
            client,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.gw.listen, path_and_query)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw.admin, path)
    }

    /// GET with one header (the usual job-token call).
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", &self.url(path), headers, Bytes::new())
            .await
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let mut req = http::Request::builder().method(method).uri(url);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(Full::new(body)).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("gateway answered in time")
            .expect("request went through");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// Targets of the requests the forge served (job lookups excluded).
    pub fn reached(&self) -> Vec<String> {
        self.forge
            .requests()
            .into_iter()
            .map(|r| r.target)
            .collect()
    }

    pub async fn metrics(&self) -> String {
        self.send("GET", &self.admin_url("/metrics"), &[], Bytes::new())
            .await
            .text()
    }
}

/// Send raw bytes on a fresh connection and read until the server closes it (or 10 s).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Poll `cond` every 10 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Value of a Prometheus sample line `name{labels} value` whose name and labels contain `needle`s.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && labels.iter().all(|needle| l.contains(needle)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
