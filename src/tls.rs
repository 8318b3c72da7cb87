//! TLS on both sides of the gateway.
//!
//! Incoming: the main listener terminates TLS with rustls (ring provider, ALPN `h2` and
//! `http/1.1`). Its certificate and key live in a [`CertStore`], a `ResolvesServerCert` backed
//! by one `ArcSwap<CertifiedKey>`: a reload swaps the pointer, so new handshakes get the new
//! certificate while connections already open keep the session they negotiated. A file that
//! does not load keeps the running certificate.
//!
//! Outgoing: an `https://` upstream is reached through hyper-rustls with Mozilla's roots
//! (webpki-roots) or, when `upstream_ca` is set, that bundle only; optionally with a client
//! certificate (mTLS). The forwarder and the forge lookups share this configuration.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

/// ALPN protocols the main listener offers, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}: cannot read: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {}: {message}", path.display())]
    Invalid {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The one crypto provider the gateway uses (ring: no C toolchain needed, unlike aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Every `CERTIFICATE` block of a PEM file, in order; at least one.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, path, "no PEM CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => invalid(
            what,
            path,
            "no PEM private key block (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in the file",
        ),
        other => invalid(what, path, format!("not a PEM file: {other}")),
    })
}

/// A certificate chain and its key, checked to belong together.
pub fn load_certified_key(
    cert_what: &'static str,
    cert: &Path,
    key_what: &'static str,
    key: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert_what, cert)?;
    let key_der = load_key(key_what, key)?;
    pair(chain, key_der, cert, key_what, key)
}

fn pair(
    chain: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
    cert: &Path,
    key_what: &'static str,
    key: &Path,
) -> Result<CertifiedKey, TlsError> {
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => invalid(
            key_what,
            key,
            format!("does not match the certificate in {}", cert.display()),
        ),
        other => invalid(
            key_what,
            key,
            format!(
                "cannot be used with the certificate in {}: {other}",
                cert.display()
            ),
        ),
    })
}

/// SHA-256 of the leaf certificate (what `openssl x509 -fingerprint -sha256` prints, as hex).
pub fn fingerprint(key: &CertifiedKey) -> String {
    key.cert
        .first()
        .map(|leaf| hex::encode(Sha256::digest(leaf.as_ref())))
        .unwrap_or_default()
}

struct Loaded {
    fingerprint: String,
    loaded_at: SystemTime,
    last_error: Option<String>,
}

/// The main listener's certificate and key: resolved on every handshake from one `ArcSwap`,
/// reloaded from the same files on demand.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    cert_path: PathBuf,
    key_path: PathBuf,
    state: Mutex<Loaded>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

const CERT: &str = "TLS certificate";
const KEY: &str = "TLS key";

impl CertStore {
    /// Load the certificate chain and key; both must be good.
    pub fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<CertStore, TlsError> {
        let key = load_certified_key(CERT, &cert_path, KEY, &key_path)?;
        let state = Loaded {
            fingerprint: fingerprint(&key),
            loaded_at: SystemTime::now(),
            last_error: None,
        };
        Ok(CertStore {
            current: ArcSwap::from_pointee(key),
            cert_path,
            key_path,
            state: Mutex::new(state),
        })
    }

    /// Re-read both files. On success new handshakes use the new pair; on failure the running
    /// pair stays and the error is remembered (see [`CertStore::describe`]). Open connections
    /// are never touched.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = load_certified_key(CERT, &self.cert_path, KEY, &self.key_path);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(key) => {
                let print = fingerprint(&key);
                self.current.store(Arc::new(key));
                if print != state.fingerprint {
                    tracing::info!(sha256 = %print, "TLS certificate reloaded");
                }
                *state = Loaded {
                    fingerprint: print,
                    loaded_at: SystemTime::now(),
                    last_error: None,
                };
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, sha256 = %state.fingerprint, "TLS certificate reload failed; keeping the running certificate");
                state.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// What `/-/policy` and `POST /-/reload` say about the certificate.
    pub fn describe(&self) -> serde_json::Value {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "cert": self.cert_path.display().to_string(),
            "key": self.key_path.display().to_string(),
            "sha256": state.fingerprint,
            "loaded_at": humantime::format_rfc3339_seconds(state.loaded_at).to_string(),
            "last_error": state.last_error,
        })
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The main listener's rustls configuration: certificates from `store`, ALPN h2 + http/1.1.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// How the gateway reaches an `https://` upstream.
#[derive(Clone, Debug, Default)]
pub struct UpstreamTls {
    /// PEM bundle that replaces the built-in roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl UpstreamTls {
    /// The client configuration: roots (the CA bundle, else Mozilla's), optional client
    /// certificate. Every file is read and checked here.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        const CA: &str = "upstream CA bundle";
        let roots = match &self.ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for (i, cert) in load_certs(CA, path)?.into_iter().enumerate() {
                    roots
                        .add(cert)
                        .map_err(|e| invalid(CA, path, format!("certificate #{}: {e}", i + 1)))?;
                }
                roots
            }
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                const CLIENT_CERT: &str = "upstream client certificate";
                const CLIENT_KEY: &str = "upstream client key";
                let chain = load_certs(CLIENT_CERT, cert)?;
                let key_der = load_key(CLIENT_KEY, key)?;
                pair(chain.clone(), key_der.clone_key(), cert, CLIENT_KEY, key)?;
                builder.with_client_auth_cert(chain, key_der)?
            }
        };
        Ok(config)
    }
}

/// A connector for `http://` and `https://` upstreams. The upstream side speaks HTTP/1.1 (no
/// ALPN is offered): upgrades need it, and the pool multiplexes by connection anyway. SNI is
/// the upstream URL's host.
pub fn https_connector(
    tls: ClientConfig,
    connect_timeout: Duration,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}
