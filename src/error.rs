//! Every way a request can fail inside the gateway, and the one place that maps a failure to
//! the HTTP answer the client gets (status, `{"message": ...}` body, extra headers).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::body::BodyError;
use crate::credentials::CredentialError;
use crate::decide::Limit;
use crate::project::{FmtWords, ProjectIdentity, Words};
use crate::registry::Refusal;
use crate::target::TargetError;

/// Seconds a client should wait before retrying when the forge could not be asked.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Credentials(#[from] CredentialError),

    #[error("{0}")]
    Body(#[from] BodyError),

    #[error(
        "the Connection header names {0}: a credential or framing header may not be hop-by-hop"
    )]
    ConnectionListsHeader(&'static str),

    #[error("undecodable target: {0}")]
    Target(#[from] TargetError),

    /// CONNECT asks for a tunnel, which a forge API never offers: a tunnel would carry
    /// requests the gateway never sees.
    #[error("the {0} method is not allowed")]
    MethodNotAllowed(&'static str),

    #[error("{}", OutOfScopeText { origin, target, limit: *.limit })]
    OutOfScope {
        origin: ProjectIdentity,
        target: ProjectIdentity,
        limit: Limit,
    },

    #[error("CI/CD job token of {origin} may not be used on this route: the gateway cannot tell which project it acts on")]
    Unattributed { origin: ProjectIdentity },

    #[error("CI/CD job token of {origin} may not be used for this registry token: {}", .refusal.message())]
    RegistryRefused {
        origin: ProjectIdentity,
        refusal: Refusal,
    },

    #[error("the request target is longer than {0} bytes")]
    UriTooLong(usize),

    #[error("invalid or expired CI/CD job token")]
    InvalidToken,

    #[error("the forge could not be asked who owns the CI/CD job token ({0}); try again later")]
    ForgeUnavailable(String),

    #[error("upstream unreachable: {0}")]
    UpstreamConnect(String),

    #[error("upstream did not answer in time")]
    UpstreamTimeout,

    #[error("upstream failed: {0}")]
    Upstream(String),
}

/// The out-of-scope denial's message: which limit refused, and why.
fn out_of_scope(
    w: &mut impl Words,
    origin: &ProjectIdentity,
    target: &ProjectIdentity,
    limit: Limit,
) {
    let (limited, other, side) = match limit {
        Limit::Outbound => (origin, target, "outbound"),
        Limit::Inbound => (target, origin, "inbound"),
    };
    w.words("CI/CD job token of ");
    origin.write_words(w);
    w.words(" may not access ");
    target.write_words(w);
    w.words(": ");
    w.words(side);
    w.words(" limit of ");
    limited.write_words(w);
    w.words(" is on and ");
    other.write_words(w);
    w.words(" is not on its ");
    w.words(side);
    w.words(" allowlist");
}

/// [`out_of_scope`] as the error's `Display`.
struct OutOfScopeText<'a> {
    origin: &'a ProjectIdentity,
    target: &'a ProjectIdentity,
    limit: Limit,
}

impl std::fmt::Display for OutOfScopeText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut w = FmtWords::new(f);
        out_of_scope(&mut w, self.origin, self.target, self.limit);
        w.result
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Credentials(_)
            | GatewayError::Target(_)
            | GatewayError::ConnectionListsHeader(_) => StatusCode::BAD_REQUEST,
            GatewayError::Body(BodyError::TooLarge { .. } | BodyError::LateCredential { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            GatewayError::Body(BodyError::Encoded(_)) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::Body(BodyError::Malformed(_) | BodyError::Read) => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::Body(BodyError::Busy) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::OutOfScope { .. }
            | GatewayError::Unattributed { .. }
            | GatewayError::RegistryRefused { .. } => StatusCode::FORBIDDEN,
            GatewayError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::InvalidToken => StatusCode::UNAUTHORIZED,
            GatewayError::ForgeUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamConnect(_) | GatewayError::Upstream(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::Credentials(CredentialError::Conflicting) => "conflicting_tokens",
            GatewayError::Credentials(_) => "malformed_credentials",
            GatewayError::Target(_) => "undecodable_target",
            GatewayError::Body(BodyError::TooLarge { .. }) => "body_too_large",
            GatewayError::Body(BodyError::Encoded(_)) => "body_encoded",
            GatewayError::Body(BodyError::LateCredential { .. }) => "late_body_credential",
            GatewayError::Body(BodyError::Malformed(_)) => "malformed_body",
            GatewayError::Body(BodyError::Read) => "body_read_failed",
            GatewayError::Body(BodyError::Busy) => "body_inspection_busy",
            GatewayError::ConnectionListsHeader(_) => "connection_lists_header",
            GatewayError::OutOfScope {
                limit: Limit::Outbound,
                ..
            } => "outbound_limit",
            GatewayError::OutOfScope {
                limit: Limit::Inbound,
                ..
            } => "inbound_limit",
            GatewayError::Unattributed { .. } => "unattributed_route",
            GatewayError::RegistryRefused { refusal, .. } => match refusal {
                Refusal::DependencyProxy => "registry_dependency_proxy",
                Refusal::Catalog => "registry_catalog",
                Refusal::WriteToOtherProject => "registry_write_to_other_project",
            },
            GatewayError::UriTooLong(_) => "uri_too_long",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::InvalidToken => "invalid_token",
            GatewayError::ForgeUnavailable(_) => "forge_unavailable",
            GatewayError::UpstreamConnect(_) => "upstream_connect",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::Upstream(_) => "upstream_error",
        }
    }

    /// The answer the client gets, in the forge's JSON style.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        use std::fmt::Write as _;
        let status = self.status();
        // `{"message":"<code> <reason> - <self>"}`, escaped as it is written: a denial is an
        // ordinary answer, rendered on the request path, so no intermediate string and no
        // second pass over the message.
        let mut body = JsonMessage(Vec::with_capacity(320));
        body.0.extend_from_slice(br#"{"message":""#);
        let _ = write!(
            body,
            "{} {} - ",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        match self {
            // The common denial straight into the body, without the formatting machinery.
            GatewayError::OutOfScope {
                origin,
                target,
                limit,
            } => out_of_scope(&mut body, origin, target, *limit),
            other => {
                let _ = write!(body, "{other}");
            }
        }
        body.0.extend_from_slice(br#""}"#);
        let mut resp = json_bytes(status, body.0);
        if matches!(self, GatewayError::ConnectionListsHeader(_)) {
            // The client's idea of this connection's headers is not to be trusted further.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

/// The inside of a JSON string, escaped as text is written to it (RFC 8259 §7), byte for byte
/// as serde_json escapes.
struct JsonMessage(Vec<u8>);

impl JsonMessage {
    fn push(&mut self, s: &str) {
        let bytes = s.as_bytes();
        // One branch-free pass (it vectorizes) settles the usual case: nothing to escape.
        let plain = !bytes.iter().fold(false, |any, &b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if plain {
            self.0.extend_from_slice(bytes);
            return;
        }
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape: &[u8] = match b {
                b'"' => br#"\""#,
                b'\\' => br"\\",
                b'\n' => br"\n",
                b'\r' => br"\r",
                b'\t' => br"\t",
                0x08 => br"\b",
                0x0c => br"\f",
                0..=0x1f => b"",
                _ => continue,
            };
            self.0.extend_from_slice(&bytes[start..i]);
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.0.extend_from_slice(b"\\u00");
                self.0.push(HEX[usize::from(b >> 4)]);
                self.0.push(HEX[usize::from(b & 0xf)]);
            } else {
                self.0.extend_from_slice(escape);
            }
            start = i + 1;
        }
        self.0.extend_from_slice(&bytes[start..]);
    }
}

impl Words for JsonMessage {
    fn words(&mut self, s: &'static str) {
        // The gateway's own words need no escaping.
        self.0.extend_from_slice(s.as_bytes());
    }
    fn text(&mut self, s: &str) {
        self.push(s);
    }
    fn number(&mut self, n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = n;
        loop {
            at -= 1;
            // A single decimal digit always fits a byte.
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.0.extend_from_slice(&digits[at..]);
    }
}

impl std::fmt::Write for JsonMessage {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s);
        Ok(())
    }
}

/// A JSON response built by the gateway itself.
pub fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    body: &T,
) -> Response<Full<Bytes>> {
    // Documents of strings, numbers and maps with string keys always serialize; the fallback
    // only keeps this infallible.
    let body = serde_json::to_vec(body).unwrap_or_else(|_| br#"{"message":"error"}"#.to_vec());
    json_bytes(status, body)
}

/// A response carrying a JSON document already written.
fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status() {
        let o = ProjectIdentity {
            id: Some(1),
            path: Some("a/o".into()),
        };
        let t = ProjectIdentity {
            id: Some(2),
            path: None,
        };
        let cases = [
            (GatewayError::Credentials(CredentialError::Conflicting), 400),
            (
                GatewayError::OutOfScope {
                    origin: o.clone(),
                    target: t.clone(),
                    limit: Limit::Inbound,
                },
                403,
            ),
            (GatewayError::Unattributed { origin: o.clone() }, 403),
            (
                GatewayError::Body(BodyError::TooLarge {
                    kind: "JSON",
                    cap: 1,
                }),
                413,
            ),
            (GatewayError::Body(BodyError::Encoded("JSON")), 415),
            (GatewayError::Body(BodyError::Malformed("x")), 400),
            (GatewayError::Body(BodyError::Read), 400),
            (GatewayError::Body(BodyError::Busy), 503),
            (
                GatewayError::Body(BodyError::LateCredential { cap: 1 }),
                413,
            ),
            (GatewayError::ConnectionListsHeader("host"), 400),
            (GatewayError::InvalidToken, 401),
            (GatewayError::ForgeUnavailable("timeout".into()), 503),
            (GatewayError::UpstreamConnect("refused".into()), 502),
            (GatewayError::UpstreamTimeout, 504),
            (GatewayError::Upstream("reset".into()), 502),
        ];
        for (err, status) in cases {
            let resp = err.to_response();
            assert_eq!(resp.status().as_u16(), status, "{err}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        }
    }

    #[test]
    fn out_of_scope_message_names_origin_target_and_limit() {
        let err = GatewayError::OutOfScope {
            origin: ProjectIdentity {
                id: Some(10),
                path: Some("acme/bot".into()),
            },
            target: ProjectIdentity {
                id: Some(12),
                path: Some("other/app".into()),
            },
            limit: Limit::Outbound,
        };
        let msg = err.to_string();
        assert!(
            msg.contains("acme/bot") && msg.contains("other/app") && msg.contains("outbound"),
            "{msg}"
        );
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let resp = GatewayError::ForgeUnavailable("x".into()).to_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], RETRY_AFTER_SECS);
    }

    /// The body as serde_json renders `{"message": "<code> <reason> - <Display>"}`.
    fn reference_body(err: &GatewayError) -> Vec<u8> {
        let status = err.status();
        let message = format!(
            "{} {} - {err}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        serde_json::to_vec(&serde_json::json!({ "message": message })).unwrap_or_default()
    }

    fn body_of(err: &GatewayError) -> Vec<u8> {
        use http_body_util::BodyExt as _;
        let resp = err.to_response();
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .ok()
            .and_then(|rt| rt.block_on(resp.into_body().collect()).ok());
        collected.map(|c| c.to_bytes().to_vec()).unwrap_or_default()
    }

    #[test]
    fn bodies_are_the_messages_as_serde_json_writes_them() {
        let odd = (0u8..0x80).map(char::from).collect::<String>() + "é\u{2028}ü/\\\"";
        let identities = [
            ProjectIdentity {
                id: Some(u64::MAX),
                path: Some("acme/bot".into()),
            },
            ProjectIdentity {
                id: None,
                path: Some(odd.as_str().into()),
            },
            ProjectIdentity {
                id: Some(0),
                path: None,
            },
            ProjectIdentity::default(),
        ];
        let mut errors = vec![
            GatewayError::ForgeUnavailable(odd.clone()),
            GatewayError::Upstream("reset\n\"by\" peer".into()),
            GatewayError::InvalidToken,
            GatewayError::MethodNotAllowed("CONNECT"),
        ];
        for origin in &identities {
            for target in &identities {
                for limit in [Limit::Outbound, Limit::Inbound] {
                    errors.push(GatewayError::OutOfScope {
                        origin: origin.clone(),
                        target: target.clone(),
                        limit,
                    });
                }
            }
        }
        for err in &errors {
            let body = body_of(err);
            assert_eq!(
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&reference_body(err)),
                "{err:?}"
            );
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            assert!(doc["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(&err.to_string())));
        }
    }
}
