//! Forward: the request that was decided goes upstream, streamed, with hop-by-hop headers
//! removed and `X-Forwarded-*` set; the response comes back the same way.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::ForwardBody;
use crate::error::GatewayError;
use crate::h1::{DirectBody, DirectClient};
use crate::metrics::Metrics;
use crate::pool::{SendError, UpstreamPool};
use crate::settings::{TimeoutSettings, Upstream};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1, plus the legacy
/// `Proxy-Connection` and `Keep-Alive`). Bit `i` of [`strip_hop_by_hop`]'s mask is entry `i`.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// The mask bit of a hop-by-hop name (its index in [`HOP_BY_HOP`]), 0 for any other name.
fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    // One length-and-bytes match per header: this runs on every request and response.
    let index = match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-authenticate" => 2,
        "proxy-authorization" => 3,
        "te" => 4,
        "trailer" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        "proxy-connection" => 8,
        _ => return 0,
    };
    1 << index
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Remove hop-by-hop headers and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = headers
        .keys()
        .fold(0, |mask, name| mask | hop_by_hop_bit(name));
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // The names listed in Connection go too. Nearly always that is `keep-alive`, `close`
        // or `upgrade`: the first and last go below anyway, and `close` names a header only
        // in theory, so only other names are looked up (this runs on most responses).
        let mut listed: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for name in value.as_bytes().split(|&b| b == b',') {
                let name = name.trim_ascii();
                let known = [b"keep-alive".as_slice(), b"upgrade", b"close"]
                    .iter()
                    .any(|k| name.eq_ignore_ascii_case(k));
                if known && !(name.eq_ignore_ascii_case(b"close") && headers.contains_key("close"))
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(name) {
                    listed.push(name);
                }
            }
        }
        for name in &listed {
            headers.remove(name);
        }
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(name);
        }
    }
}

/// Headers a client may not name in `Connection`: a hop-by-hop header is dropped before
/// forwarding, so a credential named there would be decided on and never reach the forge,
/// and a framing header (or the Content-Type the body was inspected by) would change how
/// the forwarded request reads. The gateway decides once, on exactly what it forwards.
const NOT_HOP_BY_HOP: [&str; 8] = [
    "authorization",
    "job-token",
    "private-token",
    "deploy-token",
    "content-length",
    "transfer-encoding",
    "host",
    "content-type",
];

/// The first header from [`NOT_HOP_BY_HOP`] the `Connection` header names (`_` and `-`
/// compare equal, as Rack's env keys do), if any.
pub fn connection_names_protected(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .find_map(|name| {
            NOT_HOP_BY_HOP
                .into_iter()
                .find(|p| crate::credentials::rack_header_eq(name, p.as_bytes()))
        })
}

/// How the client reached the gateway: the listener's scheme (`X-Forwarded-Proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientScheme {
    Http,
    Https,
}

impl ClientScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientScheme::Http => "http",
            ClientScheme::Https => "https",
        }
    }
}

/// One client connection: who connected and over what.
#[derive(Clone, Debug)]
pub struct ClientConn {
    pub addr: SocketAddr,
    pub scheme: ClientScheme,
    /// `X-Forwarded-For` for every request of this connection, rendered once.
    forwarded_for: HeaderValue,
}

impl ClientConn {
    pub fn new(addr: SocketAddr, scheme: ClientScheme) -> Self {
        ClientConn {
            addr,
            scheme,
            forwarded_for: ip_header(addr),
        }
    }
}

/// The body of a forwarded response: from the direct client (requests without a body) or
/// from hyper's client (requests with one, upgrades).
pub enum UpstreamBody {
    Direct(DirectBody),
    Pooled(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Direct(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Pooled(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Direct(b) => b.is_end_stream(),
            UpstreamBody::Pooled(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Direct(b) => b.size_hint(),
            UpstreamBody::Pooled(b) => b.size_hint(),
        }
    }
}

pub struct Forwarder {
    /// Requests without a body.
    direct: DirectClient,
    /// Requests with a body, and upgrades.
    pool: UpstreamPool,
    upstream: Upstream,
    response_timeout: Duration,
}

impl Forwarder {
    /// `tls` is used when the upstream is `https://`; `workers` pools are made for the server's
    /// worker threads.
    pub fn new(
        upstream: Upstream,
        timeouts: &TimeoutSettings,
        tls: rustls::ClientConfig,
        workers: usize,
    ) -> Result<Self, GatewayError> {
        let connector = crate::tls::https_connector(tls, timeouts.upstream_connect);
        let pool = UpstreamPool::new(
            &upstream,
            connector.clone(),
            timeouts.upstream_idle,
            workers,
        )
        .map_err(|e| GatewayError::Upstream(format!("cannot reach the upstream: {e}")))?;
        let direct = DirectClient::new(
            connector,
            pool.connect_to().clone(),
            timeouts.upstream_idle,
            workers,
        );
        Ok(Forwarder {
            direct,
            pool,
            upstream,
            response_timeout: timeouts.upstream_response,
        })
    }

    /// Send `req` upstream with `path_and_query` as its target. The body streams as it arrives.
    pub async fn forward(
        &self,
        mut req: Request<ForwardBody>,
        path_and_query: &str,
        client: &ClientConn,
        metrics: &Metrics,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        // Origin form: the connection already goes to the upstream. Most requests go out with
        // the target they came with, already parsed; only a rewritten one is parsed again.
        let uri = match req.uri().path_and_query() {
            Some(pq) if pq.as_str() == path_and_query => {
                let mut parts = http::uri::Parts::default();
                parts.path_and_query = Some(pq.clone());
                Uri::from_parts(parts).map_err(http::Error::from)
            }
            _ => Uri::try_from(path_and_query).map_err(http::Error::from),
        }
        .map_err(|e| GatewayError::Upstream(format!("cannot build the upstream URI: {e}")))?;
        let client_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        *req.uri_mut() = uri;
        // The upstream side always speaks HTTP/1.1 (the pooled client picks per connection).
        *req.version_mut() = http::Version::HTTP_11;
        let upgrade = requested_upgrade(req.headers());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(protocol) = &upgrade {
            // Passed on only now that the request was decided; the tunnel opens on 101.
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        if let Some(host) = client_host {
            headers.insert(header::HOST, host.clone());
            headers.insert(X_FORWARDED_HOST, host);
        }
        if self.upstream.scheme == http::uri::Scheme::HTTPS || !headers.contains_key(header::HOST) {
            // A TLS upstream checks Host against the name it was reached by (SNI, its virtual
            // host): send its own; the client's stays in X-Forwarded-Host.
            if let Ok(host) = HeaderValue::from_str(self.upstream.authority.as_str()) {
                headers.insert(header::HOST, host);
            }
        }
        // Replace whatever the client claimed: only the gateway knows who connected.
        headers.insert(X_FORWARDED_FOR, client.forwarded_for.clone());
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(client.scheme.as_str()),
        );

        if upgrade.is_none() && req.body().is_end_stream() {
            let (parts, _) = req.into_parts();
            let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let sent = self.direct.send(&parts.method, target, &parts.headers);
            let resp = upstream_answer(
                tokio::time::timeout(self.response_timeout, sent).await,
                metrics,
            )?;
            return Ok(passed_back(resp, metrics, UpstreamBody::Direct));
        }
        let sent = self.pool.send(req);
        let mut resp = upstream_answer(
            tokio::time::timeout(self.response_timeout, sent).await,
            metrics,
        )?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(client_upgrade), Some(protocol)) = (client_upgrade, upgrade) else {
                metrics.upstream_error("error");
                return Err(GatewayError::Upstream(
                    "the upstream switched protocols without being asked".into(),
                ));
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
            metrics.upstream_status(resp.status());
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
            return Ok(Response::from_parts(parts, UpstreamBody::Pooled(body)));
        }
        Ok(passed_back(resp, metrics, UpstreamBody::Pooled))
    }
}

/// The upstream's response as the client gets it: counted by status, its hop-by-hop headers
/// gone, and no Content-Length beside a transfer coding (the body was read by the coding, and
/// is framed anew for the client: RFC 9112 §6.3).
fn passed_back<B>(
    resp: Response<B>,
    metrics: &Metrics,
    body: impl FnOnce(B) -> UpstreamBody,
) -> Response<UpstreamBody> {
    metrics.upstream_status(resp.status());
    let (mut parts, inner) = resp.into_parts();
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body(inner))
}

/// The upstream's response, or the error it became (counted by kind).
fn upstream_answer<B>(
    sent: Result<Result<Response<B>, SendError>, tokio::time::error::Elapsed>,
    metrics: &Metrics,
) -> Result<Response<B>, GatewayError> {
    match sent {
        Err(_) => {
            metrics.upstream_error("timeout");
            Err(GatewayError::UpstreamTimeout)
        }
        Ok(Err(SendError::Connect(e))) => {
            metrics.upstream_error("connect_error");
            Err(GatewayError::UpstreamConnect(e))
        }
        Ok(Err(SendError::Upstream(e))) => {
            metrics.upstream_error("error");
            Err(GatewayError::Upstream(e))
        }
        Ok(Ok(resp)) => Ok(resp),
    }
}

/// The protocol a client asks to switch to, when it really asks (`Connection: upgrade` plus
/// `Upgrade`). `h2c` is never passed on: the gateway would lose sight of the requests inside.
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = headers.get(header::UPGRADE)?;
    let h2c = protocol.to_str().map_or(true, |p| {
        p.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c"))
    });
    (asks && !h2c).then(|| protocol.clone())
}

/// Copy bytes both ways once both sides have switched protocols.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

fn ip_header(addr: SocketAddr) -> HeaderValue {
    // An IP address is always a valid header value.
    HeaderValue::from_str(&addr.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// An error and its sources, `a: b: c` (hyper's own message alone says little).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Compose the upstream request target: the raw path with the project id segment replaced when
/// a rewrite applies, then the query exactly as received.
pub fn upstream_target(
    path: &str,
    rewrite: Option<(std::ops::Range<usize>, u64)>,
    query: Option<&str>,
) -> String {
    let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1) + 8);
    match rewrite {
        Some((span, id)) if path.get(span.clone()).is_some() => {
            out.push_str(&path[..span.start]);
            let _ = write!(out, "{id}");
            out.push_str(&path[span.end..]);
        }
        _ => out.push_str(path),
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("proxy-connection", HeaderValue::from_static("close"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        // The common options: `close` removes a header of that name too, if there is one.
        for (connection, close_header) in [
            ("Keep-Alive", false),
            ("close", true),
            ("Close, Upgrade", true),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if close_header {
                h.insert("close", HeaderValue::from_static("1"));
            }
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            assert_eq!(left, ["x-kept"], "Connection: {connection}");
        }
    }

    #[test]
    fn every_hop_by_hop_name_goes_and_nothing_else() {
        let mut h = HeaderMap::new();
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name), 1 << index, "{name}");
            h.append(name.clone(), HeaderValue::from_static("x"));
        }
        // Two Connection headers: the names in both go.
        h.append(header::CONNECTION, HeaderValue::from_static("x-a,  X-B ,"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-c"));
        for name in ["x-a", "x-b", "x-c", "x-kept", "authorization"] {
            h.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept", "authorization"]);
        // Nothing to strip: untouched.
        let mut plain = HeaderMap::new();
        plain.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn connection_may_not_name_credentials_or_framing() {
        let conn = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(v));
            connection_names_protected(&h)
        };
        assert_eq!(conn("close, JOB-TOKEN"), Some("job-token"));
        assert_eq!(conn("Job_Token"), Some("job-token"));
        assert_eq!(conn("keep-alive,Authorization"), Some("authorization"));
        assert_eq!(conn("private-token"), Some("private-token"));
        assert_eq!(conn(" content-length "), Some("content-length"));
        assert_eq!(conn("Transfer-Encoding"), Some("transfer-encoding"));
        assert_eq!(conn("host"), Some("host"));
        assert_eq!(conn("close"), None);
        assert_eq!(conn("keep-alive, Upgrade"), None);
        assert_eq!(conn("TE, x-job-token"), None);
        assert_eq!(connection_names_protected(&HeaderMap::new()), None);
    }

    #[test]
    fn upstream_target_rewrites_only_the_span() {
        let path = "/api/v4/projects/acme%2Fapp/merge_requests";
        assert_eq!(
            upstream_target(path, Some((17..27, 12)), Some("a=1")),
            "/api/v4/projects/12/merge_requests?a=1"
        );
        assert_eq!(upstream_target(path, None, None), path);
        // A span that does not fit the path is ignored rather than panicking.
        assert_eq!(upstream_target("/x", Some((5..9, 1)), None), "/x");
    }
}
