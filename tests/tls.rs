//! TLS on both sides, with test CAs made here (rcgen): HTTP/1.1 and h2 (ALPN) through a
//! TLS-terminating gateway, certificate rotation while a connection stays open, a bad
//! certificate on reload, the handshake timeout, and `https://` upstreams (private CA, untrusted
//! certificate, client certificate) in front of the stand-in forge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::scopes::MATRIX;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Allowed for the bot's token (acme/deploy-bot → acme/app).
const ALLOWED: &str = "/api/v4/projects/12/merge_requests";
/// Denied for the bot's token (globex/tool is not on its outbound allowlist).
const DENIED: &str = "/api/v4/projects/30/issues";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority made for one test.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate it issued, with its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `localhost` and 127.0.0.1 with this subject CN and serial.
    fn leaf(&self, cn: &str, serial: u64) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }
}

impl Leaf {
    /// Write certificate and key to `<name>.crt` / `<name>.key` (overwriting: a rotation).
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// Whether the DER names `cn` (the subject CN bytes appear in it).
    fn names(&self, cn: &str) -> bool {
        contains(self.der.as_ref(), cn.as_bytes())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A gateway terminating TLS with `leaf`, in front of the stand-in forge.
async fn tls_gateway(
    certs: &Path,
    leaf: &Leaf,
    tweak: impl FnOnce(&mut scopegate::settings::Settings),
) -> Harness {
    let (cert, key) = leaf.write(certs, "gateway");
    Harness::start_with(MATRIX, move |s| {
        s.tls.cert = Some(cert);
        s.tls.key = Some(key);
        tweak(s);
    })
    .await
}

/// Open a TLS connection to `addr` trusting `ca`, offering `alpn`.
async fn connect(addr: SocketAddr, ca: &TestCa, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the gateway")
}

fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

fn alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// An HTTP/1.1 client on one TLS connection.
async fn h1(stream: TlsStream<TcpStream>) -> http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn h1_get(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    path: &str,
    token: &str,
) -> (u16, String) {
    sender.ready().await.expect("connection still open");
    let req = http::Request::get(path)
        .header("host", "localhost")
        .header("JOB-TOKEN", token)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn reload(h: &Harness) -> Reply {
    h.send("POST", &h.admin_url("/-/reload"), &[], Bytes::new())
        .await
}

async fn policy(h: &Harness) -> serde_json::Value {
    h.send("GET", &h.admin_url("/-/policy"), &[], Bytes::new())
        .await
        .json()
}

#[tokio::test]
async fn http1_over_tls_allows_in_scope_and_denies_out_of_scope() {
    let ca = TestCa::new("scopegate test CA");
    let certs = tempfile::tempdir().unwrap();
    let h = tls_gateway(certs.path(), &ca.leaf("gateway", 1), |_| {}).await;

    let stream = connect(h.gw.listen, &ca, &[b"http/1.1"]).await;
    assert_eq!(alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let mut tx = h1(stream).await;

    let (status, body) = h1_get(&mut tx, ALLOWED, BOT).await;
    assert_eq!(status, 200, "{body}");
    let seen = h.forge.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, ALLOWED);
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));

    let (status, body) = h1_get(&mut tx, DENIED, BOT).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not access"), "{body}");
    assert_eq!(
        h.reached(),
        vec![ALLOWED.to_string()],
        "denied: not forwarded"
    );
}

#[tokio::test]
async fn h2_is_negotiated_by_alpn_and_enforced() {
    let ca = TestCa::new("scopegate test CA");
    let certs = tempfile::tempdir().unwrap();
    let h = tls_gateway(certs.path(), &ca.leaf("gateway", 1), |_| {}).await;

    let stream = connect(h.gw.listen, &ca, &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn(&stream).as_deref(), Some(&b"h2"[..]));
    let (mut tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);

    for (path, want) in [(ALLOWED, 200), (DENIED, 403)] {
        let req = http::Request::get(format!("https://localhost{path}"))
            .header("JOB-TOKEN", BOT)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), tx.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status().as_u16(), want, "{path}");
    }
    let seen = h.forge.requests();
    assert_eq!(seen.len(), 1, "only the allowed request reached the forge");
    assert_eq!(seen[0].target, ALLOWED);
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen[0].header("x-forwarded-host"), Some("localhost"));
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_and_open_ones_stay_up() {
    let ca = TestCa::new("scopegate test CA");
    let certs = tempfile::tempdir().unwrap();
    let v1 = ca.leaf("gateway-v1", 1);
    let v2 = ca.leaf("gateway-v2", 2);
    let h = tls_gateway(certs.path(), &v1, |_| {}).await;
    let before = policy(&h).await["tls"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let open = connect(h.gw.listen, &ca, &[b"http/1.1"]).await;
    assert_eq!(peer_leaf(&open), v1.der);
    let mut open = h1(open).await;
    assert_eq!(h1_get(&mut open, ALLOWED, BOT).await.0, 200);

    // Rotate on disk, then reload (what SIGHUP does too).
    v2.write(certs.path(), "gateway");
    let r = reload(&h).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after = r.json()["tls"]["sha256"].as_str().unwrap().to_string();
    assert_ne!(before, after);
    assert!(r.json()["tls"]["last_error"].is_null());

    // The connection opened before the rotation still serves requests.
    let (status, body) = h1_get(&mut open, ALLOWED, BOT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h1_get(&mut open, DENIED, BOT).await.0, 403);

    // A new connection gets the new certificate: its serial and subject.
    let fresh = connect(h.gw.listen, &ca, &[b"http/1.1"]).await;
    let leaf = peer_leaf(&fresh);
    assert_eq!(leaf, v2.der);
    assert!(v2.names("gateway-v2") && !v2.names("gateway-v1"));
    assert!(contains(leaf.as_ref(), b"gateway-v2"));
    let mut fresh = h1(fresh).await;
    assert_eq!(h1_get(&mut fresh, ALLOWED, BOT).await.0, 200);
    assert_eq!(h.reached().len(), 3);
}

#[tokio::test]
async fn a_bad_certificate_on_reload_keeps_the_running_one() {
    let ca = TestCa::new("scopegate test CA");
    let certs = tempfile::tempdir().unwrap();
    let v1 = ca.leaf("gateway-v1", 1);
    let h = tls_gateway(certs.path(), &v1, |_| {}).await;
    let cert_path = certs.path().join("gateway.crt");
    let key_path = certs.path().join("gateway.key");

    // Garbage in the certificate file.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let r = reload(&h).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&cert_path.display().to_string()),
        "{message}"
    );
    let last_error = policy(&h).await["tls"]["last_error"].clone();
    assert!(last_error.as_str().unwrap().contains("gateway.crt"));

    // A good certificate with a key that is not its own.
    let v2 = ca.leaf("gateway-v2", 2);
    std::fs::write(&cert_path, &v2.cert_pem).unwrap();
    std::fs::write(&key_path, &v1.key_pem).unwrap();
    let r = reload(&h).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("does not match"), "{}", r.text());

    // A key file that went missing.
    std::fs::remove_file(&key_path).unwrap();
    assert_eq!(reload(&h).await.status, 422);

    // Through all of it, new connections still get v1 and are served.
    let stream = connect(h.gw.listen, &ca, &[b"http/1.1"]).await;
    assert_eq!(peer_leaf(&stream), v1.der);
    let mut tx = h1(stream).await;
    assert_eq!(h1_get(&mut tx, ALLOWED, BOT).await.0, 200);

    // Fixed files are taken, and the error clears.
    v2.write(certs.path(), "gateway");
    let r = reload(&h).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["tls"]["last_error"].is_null());
    let stream = connect(h.gw.listen, &ca, &[b"http/1.1"]).await;
    assert_eq!(peer_leaf(&stream), v2.der);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_disconnected() {
    let ca = TestCa::new("scopegate test CA");
    let certs = tempfile::tempdir().unwrap();
    let h = tls_gateway(certs.path(), &ca.leaf("gateway", 1), |s| {
        s.tls.handshake_timeout = Duration::from_millis(300)
    })
    .await;
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(h.gw.listen).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the gateway closed the silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Others are served meanwhile and after.
    let mut tx = h1(connect(h.gw.listen, &ca, &[b"http/1.1"]).await).await;
    assert_eq!(h1_get(&mut tx, ALLOWED, BOT).await.0, 200);
}

/// A TLS-terminating front for the stand-in forge: an `https://` upstream. It records the SNI
/// each handshake asked for; with `client_ca` it requires a client certificate issued by it.
struct TlsFront {
    addr: SocketAddr,
    backend: Arc<OnceLock<SocketAddr>>,
    sni: Arc<Mutex<Vec<String>>>,
}

impl TlsFront {
    async fn start(leaf: &Leaf, client_ca: Option<&TestCa>) -> TlsFront {
        let chain = vec![leaf.der.clone()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider(),
                )
                .build()
                .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend: Arc<OnceLock<SocketAddr>> = Arc::default();
        let sni: Arc<Mutex<Vec<String>>> = Arc::default();
        let (b, s) = (Arc::clone(&backend), Arc::clone(&sni));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, backend, sni) = (acceptor.clone(), Arc::clone(&b), Arc::clone(&s));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Some(name) = tls.get_ref().1.server_name() {
                        sni.lock().unwrap().push(name.to_string());
                    }
                    let Some(addr) = backend.get() else { return };
                    let Ok(mut plain) = TcpStream::connect(addr).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { addr, backend, sni }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Point the front at the stand-in forge (started by the harness).
    fn serve(&self, forge: SocketAddr) {
        let _ = self.backend.set(forge);
    }

    fn sni(&self) -> Vec<String> {
        self.sni.lock().unwrap().clone()
    }
}

/// A plain-HTTP gateway whose upstream is `front`.
async fn behind(
    front: &TlsFront,
    tweak: impl FnOnce(&mut scopegate::settings::Settings),
) -> Harness {
    let url = front.url();
    let h = Harness::start_with(MATRIX, move |s| {
        s.upstream = Some(url);
        tweak(s);
    })
    .await;
    front.serve(h.forge.addr());
    h
}

#[tokio::test]
async fn an_https_upstream_with_a_private_ca_serves_lookups_and_forwarding() {
    let forge_ca = TestCa::new("forge private CA");
    let certs = tempfile::tempdir().unwrap();
    let ca_file = forge_ca.write(certs.path(), "forge-ca.pem");
    let front = TlsFront::start(&forge_ca.leaf("forge", 7), None).await;
    let h = behind(&front, |s| s.upstream_ca = Some(ca_file)).await;

    // The job token is looked up over TLS, then the request is forwarded over TLS.
    let r = h.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.forge.job_lookups(), 1);
    // Denied requests still never reach it.
    assert_eq!(h.get(DENIED, &[("JOB-TOKEN", BOT)]).await.status, 403);
    // Requests without a job token pass.
    assert_eq!(h.get("/api/v4/version", &[]).await.status, 200);

    let seen = h.forge.requests();
    assert_eq!(
        seen.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(),
        vec![ALLOWED, "/api/v4/version"]
    );
    let upstream_host = format!("localhost:{}", front.addr.port());
    assert_eq!(seen[0].header("host"), Some(upstream_host.as_str()));
    let client_host = h.gw.listen.to_string();
    assert_eq!(
        seen[0].header("x-forwarded-host"),
        Some(client_host.as_str())
    );
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("http"));
    let sni = front.sni();
    assert!(!sni.is_empty());
    assert!(sni.iter().all(|n| n == "localhost"), "{sni:?}");
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_gives_502_and_503() {
    let forge_ca = TestCa::new("forge private CA");
    let other_ca = TestCa::new("some other CA");
    let certs = tempfile::tempdir().unwrap();
    let wrong_ca = other_ca.write(certs.path(), "other-ca.pem");
    let front = TlsFront::start(&forge_ca.leaf("forge", 7), None).await;

    // A configured CA bundle that did not issue the forge's certificate.
    let h = behind(&front, |s| s.upstream_ca = Some(wrong_ca)).await;
    let r = h.get("/api/v4/version", &[]).await;
    assert_eq!(r.status, 502, "forward: {}", r.text());
    assert!(r.text().contains("certificate"), "{}", r.text());
    let r = h.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await;
    assert_eq!(r.status, 503, "origin lookup: {}", r.text());
    assert!(r.text().contains("certificate"), "{}", r.text());
    assert!(r.headers.contains_key("retry-after"));
    assert!(h.forge.requests().is_empty());
    assert_eq!(h.forge.job_lookups(), 0);
    drop(h);

    // The built-in roots do not know a private CA either.
    let h = behind(&front, |_| {}).await;
    assert_eq!(h.get("/api/v4/version", &[]).await.status, 502);
    assert_eq!(h.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await.status, 503);
    assert!(h.forge.requests().is_empty());
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let forge_ca = TestCa::new("forge private CA");
    let client_ca = TestCa::new("gateway client CA");
    let certs = tempfile::tempdir().unwrap();
    let ca_file = forge_ca.write(certs.path(), "forge-ca.pem");
    let (client_cert, client_key) = client_ca
        .leaf("scopegate client", 3)
        .write(certs.path(), "client");
    let front = TlsFront::start(&forge_ca.leaf("forge", 7), Some(&client_ca)).await;

    let with_cert = {
        let ca_file = ca_file.clone();
        behind(&front, move |s| {
            s.upstream_ca = Some(ca_file);
            s.upstream_client_cert = Some(client_cert);
            s.upstream_client_key = Some(client_key);
        })
        .await
    };
    let r = with_cert.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(with_cert.reached(), vec![ALLOWED.to_string()]);
    drop(with_cert);

    // Without it, the upstream refuses the handshake: fail closed.
    let without = behind(&front, move |s| s.upstream_ca = Some(ca_file)).await;
    assert_eq!(without.get("/api/v4/version", &[]).await.status, 502);
    assert_eq!(
        without.get(ALLOWED, &[("JOB-TOKEN", BOT)]).await.status,
        503
    );
}

#[test]
fn check_names_bad_tls_files() {
    let ca = TestCa::new("scopegate test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = ca.leaf("gateway", 1).write(dir.path(), "gateway");
    std::fs::write(dir.path().join("scopes.toml"), MATRIX).unwrap();
    std::fs::write(dir.path().join("broken-ca.pem"), "nothing here").unwrap();
    let config = dir.path().join("scopegate.toml");
    std::fs::write(
        &config,
        format!(
            "upstream = \"https://forge.example\"\nscopes = \"scopes.toml\"\n\
             upstream_ca = \"broken-ca.pem\"\n\
             [tls]\ncert = \"{}\"\nkey = \"missing.key\"\n",
            cert.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("missing.key"), "{stderr}");
    assert!(stderr.contains("broken-ca.pem"), "{stderr}");

    // Good files pass.
    let (cert, key) = ca.leaf("gateway", 2).write(dir.path(), "gateway");
    let ca_file = ca.write(dir.path(), "ca.pem");
    std::fs::write(
        &config,
        format!(
            "upstream = \"https://forge.example\"\nscopes = \"scopes.toml\"\n\
             upstream_ca = \"{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            ca_file.display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
