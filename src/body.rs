//! Credentials in request bodies, read the way the forge reads them, before the decision.
//!
//! GitLab's API merges body parameters into `params` (Grape over Rack), so `job_token`,
//! `token`, `private_token`, … posted in a body authenticate like the query string:
//! - Rack (`Rack::Request#POST`) parses `application/x-www-form-urlencoded`, any
//!   `multipart/*` it is given a boundary for (`form_data?` / `parseable_data?`: form-data,
//!   mixed, related; without a boundary it falls back to urlencoded), and a **POST without
//!   Content-Type** as an urlencoded form — for any method when the type is a form type.
//! - Grape (`Middleware::Formatter#read_body_input`) parses JSON bodies of POST, PUT, PATCH and
//!   DELETE, including those **without a Content-Type** (the API's default format is JSON), and
//!   merges a top-level object into the params. Rails controllers (LFS) parse
//!   `application/vnd.git-lfs+json` as JSON too.
//!
//! So the gateway reads bodies of those types fully (at most `max_inspected_body` bytes),
//! decodes their real structure (Rack's urlencoded grammar in `credentials`, multipart parts by
//! the names Rack gives them, JSON top-level keys), hands the credential-named values to
//! `credentials::extract_with_body`, and forwards the very bytes it read. Bigger multipart and
//! JSON bodies stream through a pump that checks them on the way and holds their end back
//! ([`HeldBody`]); bigger urlencoded and untyped-POST bodies are refused with 413 rather than
//! forwarded unchecked. Everything else (git packs, `application/octet-stream`, …) streams
//! untouched. Request trailers are never forwarded: nothing the gateway did not inspect
//! reaches the forge.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::Method;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::credentials::{self, BodyCredentials, JobToken, LateField};
use crate::error::GatewayError;

/// (parameter name, value) pairs read from a body: credential parameters only.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Deepest JSON nesting accepted in an inspected body. Ruby's `JSON.parse` stops at 100
/// (`max_nesting`), so nothing the forge accepts is refused; serde_json's own recursion
/// limit (128) bounds the parser's stack either way.
const MAX_JSON_DEPTH: usize = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Over the inspection cap: refused, never forwarded unchecked.
    #[error("the request body ({kind}) is larger than {cap} bytes, the most the gateway reads to look for credentials; send a smaller body (files as application/octet-stream where the API takes them) and the CI/CD job token in the JOB-TOKEN header")]
    TooLarge { kind: &'static str, cap: usize },
    #[error("malformed request body: {0}")]
    Malformed(&'static str),
    #[error("a {0} request body with a Content-Encoding cannot be inspected for credentials; send it uncompressed")]
    Encoded(&'static str),
    #[error("the request body could not be read")]
    Read,
    /// Every byte of `max_inspected_total` is held by bodies being inspected.
    #[error("the gateway is inspecting too many request bodies at once; try again later")]
    Busy,
    /// A credential found in a streamed multipart body that the decision did not see.
    #[error("a credential in a request body larger than {cap} bytes was not the CI/CD job token the request was decided on; send the job token in the JOB-TOKEN header (and the same one, or none, in the body), or a body of at most {cap} bytes")]
    LateCredential { cap: usize },
}

/// How much body inspection may hold: `cap` bytes per request, and all requests together the
/// permits of `total` (one per byte, `limits.max_inspected_total`), so that memory stays
/// bounded however many clients send bodies at once.
#[derive(Clone, Debug)]
pub struct Limits {
    pub cap: usize,
    pub total: Arc<Semaphore>,
}

impl Limits {
    pub fn new(cap: usize, total: usize) -> Self {
        Limits {
            cap,
            total: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
        }
    }
}

/// How a request body is read, decided from its method and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Not a type the forge takes parameters from: streamed untouched.
    Opaque,
    /// `application/x-www-form-urlencoded` (or multipart without a boundary).
    Form,
    /// `multipart/*` with the boundary Rack reads.
    Multipart { boundary: String },
    /// A JSON media type: must be valid JSON; a top-level object's keys are parameters.
    Json,
    /// No Content-Type. `form`: a POST, which Rack parses as urlencoded. Grape parses any
    /// such body as JSON: when it may be an object (`{` first) it must be valid JSON.
    Untyped { form: bool },
}

impl Plan {
    fn label(&self) -> &'static str {
        match self {
            Plan::Opaque => "opaque",
            Plan::Form => "application/x-www-form-urlencoded",
            Plan::Multipart { .. } => "multipart",
            Plan::Json => "JSON",
            Plan::Untyped { .. } => "no Content-Type",
        }
    }
}

/// Which plan applies. Errors: ambiguous or undecodable Content-Type, compressed inspectable
/// bodies.
pub fn plan(method: &Method, headers: &HeaderMap) -> Result<Plan, BodyError> {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let content_type = match (types.next(), types.next()) {
        (None, _) => None,
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| BodyError::Malformed("Content-Type is not visible ASCII"))?,
        ),
        (Some(_), Some(_)) => return Err(BodyError::Malformed("more than one Content-Type")),
    };
    let plan = match content_type.and_then(media_type) {
        None => Plan::Untyped {
            form: method == Method::POST,
        },
        Some(media) => {
            let media = media.to_ascii_lowercase();
            if media == "application/x-www-form-urlencoded" {
                Plan::Form
            } else if media.starts_with("multipart/") {
                match content_type.and_then(rack_boundary) {
                    Some(boundary) => Plan::Multipart { boundary },
                    None => Plan::Form,
                }
            } else if media
                .split_once('/')
                .is_some_and(|(_, sub)| sub.contains("json"))
            {
                // application/json, text/x-json, application/vnd.git-lfs+json, … : more than
                // Grape's own list, never less.
                Plan::Json
            } else {
                Plan::Opaque
            }
        }
    };
    if plan != Plan::Opaque {
        // Neither Rack nor Grape decompresses; a proxy or forge version that did would read
        // parameters the gateway cannot see.
        let encoded = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return Err(BodyError::Encoded(plan.label()));
        }
    }
    Ok(plan)
}

/// Rack's `media_type`: `content_type.split(/\s*[;,]\s*/, 2).first`, None when blank.
fn media_type(content_type: &str) -> Option<&str> {
    let media = content_type
        .split([';', ','])
        .next()
        .unwrap_or("")
        .trim_matches(|c: char| c.is_ascii_whitespace());
    (!media.is_empty()).then_some(media)
}

/// Rack's `MULTIPART = %r|\Amultipart/.*boundary=\"?([^\";,]+)\"?|ni`: the greedy `.*` takes
/// the *last* `boundary=` that is followed by at least one boundary character.
fn rack_boundary(content_type: &str) -> Option<String> {
    let lower = content_type.to_ascii_lowercase();
    if !lower.starts_with("multipart/") {
        return None;
    }
    let key = "boundary=";
    let mut end = lower.len();
    while let Some(at) = lower[..end].rfind(key) {
        let rest = &content_type[at + key.len()..];
        let rest = rest.strip_prefix('"').unwrap_or(rest);
        let value: String = rest
            .chars()
            .take_while(|c| !matches!(c, '"' | ';' | ','))
            .collect();
        if !value.is_empty() && at >= "multipart/".len() {
            return Some(value);
        }
        end = at;
    }
    None
}

/// What [`inspect`] found.
pub enum Inspected {
    /// The body to forward (the bytes read, byte-identical, or the untouched stream) and the
    /// credentials found in it.
    Ready(ForwardBody, Option<BodyCredentials>),
    /// A multipart or JSON body over the cap: the request is decided without it, and it is
    /// checked while it streams (see [`HeldBody`]).
    Held(HeldBody),
}

/// Reads the body as `plan` says.
pub async fn inspect(
    mut body: Incoming,
    plan: Plan,
    content_length: Option<u64>,
    limits: &Limits,
) -> Result<Inspected, BodyError> {
    let cap = limits.cap;
    let mut permit = None;
    let too_large = BodyError::TooLarge {
        kind: plan.label(),
        cap,
    };
    match plan {
        Plan::Opaque => return Ok(Inspected::Ready(ForwardBody::stream(body), None)),
        // Package uploads (twine, …) are large multipart forms: streamed, parsed on the way.
        Plan::Multipart { boundary } if content_length.is_some_and(|n| n > cap as u64) => {
            return Ok(Inspected::Held(HeldBody {
                read: Bytes::new(),
                rest: body,
                kind: HeldKind::Multipart { boundary },
                cap,
                budget: None,
            }));
        }
        // npm publish and other large JSON documents: streamed, scanned on the way.
        Plan::Json if content_length.is_some_and(|n| n > cap as u64) => {
            return Ok(Inspected::Held(HeldBody {
                read: Bytes::new(),
                rest: body,
                kind: HeldKind::Json,
                cap,
                budget: None,
            }));
        }
        // A body that may not be a JSON object is only peeked at (package uploads without a
        // type stream as before); a form is read whatever it holds.
        Plan::Untyped { form: false } => {
            let mut peeked = Vec::new();
            let mut len = 0usize;
            let first = loop {
                let Some(chunk) = next_data(&mut body).await? else {
                    break None;
                };
                len += chunk.len();
                let first = first_significant(&chunk, peeked.is_empty());
                peeked.push(chunk);
                if first.is_some() {
                    break first;
                }
                if len > cap {
                    return Err(too_large);
                }
            };
            if !matches!(first, Some(b'{' | b'/')) {
                return Ok(Inspected::Ready(
                    ForwardBody::with_prefix(peeked, body),
                    None,
                ));
            }
            let read = if content_length.is_some_and(|n| n > cap as u64) {
                Err(peeked.concat().into())
            } else {
                read_capped(&mut body, peeked, limits, &mut permit).await?
            };
            let bytes = match read {
                Ok(bytes) => bytes,
                Err(read) => {
                    return Ok(Inspected::Held(HeldBody {
                        read,
                        rest: body,
                        kind: HeldKind::Json,
                        cap,
                        budget: permit,
                    }))
                }
            };
            let fields = json_fields(&bytes)?;
            return Ok(Inspected::Ready(
                ForwardBody::full(bytes, permit),
                Some(BodyCredentials::fields(fields)),
            ));
        }
        _ => {}
    }
    if content_length.is_some_and(|n| n > cap as u64) {
        return Err(too_large);
    }
    let bytes = match read_capped(&mut body, Vec::new(), limits, &mut permit).await? {
        Ok(bytes) => bytes,
        // A chunked multipart or JSON body that grew past the cap: streamed from here on.
        Err(read) => {
            let kind = match plan {
                Plan::Multipart { boundary } => HeldKind::Multipart { boundary },
                Plan::Json => HeldKind::Json,
                _ => return Err(too_large),
            };
            return Ok(Inspected::Held(HeldBody {
                read,
                rest: body,
                kind,
                cap,
                budget: permit,
            }));
        }
    };
    let creds = match plan {
        Plan::Form => BodyCredentials::form(bytes.clone()),
        Plan::Multipart { boundary } => {
            BodyCredentials::fields(multipart_fields(bytes.clone(), boundary).await?)
        }
        Plan::Json => BodyCredentials::fields(json_fields(&bytes)?),
        Plan::Untyped { .. } => {
            // A POST without a type: Rack reads it as a form and Grape as JSON.
            let fields = if matches!(first_significant(&bytes, true), Some(b'{' | b'/')) {
                json_fields(&bytes)?
            } else {
                Vec::new()
            };
            let mut creds = BodyCredentials::fields(fields);
            creds.form = Some(bytes.clone());
            creds
        }
        Plan::Opaque => BodyCredentials::default(),
    };
    Ok(Inspected::Ready(
        ForwardBody::full(bytes, permit),
        Some(creds),
    ))
}

/// The next data chunk; trailers are skipped (never forwarded, never read).
async fn next_data(body: &mut Incoming) -> Result<Option<Bytes>, BodyError> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
                return Ok(Some(data));
            }
        }
    }
    Ok(None)
}

/// The whole body after `start`, or — as soon as it exceeds `cap` — Err with every byte read
/// so far (the caller streams or refuses the rest).
/// Every byte kept is paid for from `limits.total` first (into `permit`): none left → Busy.
async fn read_capped(
    body: &mut Incoming,
    start: Vec<Bytes>,
    limits: &Limits,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> Result<Result<Bytes, Bytes>, BodyError> {
    let cap = limits.cap;
    let mut buf = BytesMut::new();
    for chunk in start {
        reserve(limits, permit, chunk.len())?;
        buf.extend_from_slice(&chunk);
    }
    if buf.len() > cap {
        return Ok(Err(buf.freeze()));
    }
    while let Some(chunk) = next_data(body).await? {
        reserve(limits, permit, chunk.len())?;
        buf.extend_from_slice(&chunk);
        if buf.len() > cap {
            return Ok(Err(buf.freeze()));
        }
    }
    Ok(Ok(buf.freeze()))
}

fn reserve(
    limits: &Limits,
    permit: &mut Option<OwnedSemaphorePermit>,
    bytes: usize,
) -> Result<(), BodyError> {
    let n = u32::try_from(bytes).map_err(|_| BodyError::Busy)?;
    if n == 0 {
        return Ok(());
    }
    let more = limits
        .total
        .clone()
        .try_acquire_many_owned(n)
        .map_err(|_| BodyError::Busy)?;
    match permit {
        Some(held) => held.merge(more),
        None => *permit = Some(more),
    }
    Ok(())
}

/// The first byte that is not JSON whitespace (nor, at the very start, a UTF-8 BOM).
fn first_significant(chunk: &[u8], at_start: bool) -> Option<u8> {
    let chunk = match at_start {
        true => chunk.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(chunk),
        false => chunk,
    };
    chunk
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// (name, value) of every multipart part whose name is a credential parameter.
async fn multipart_fields(bytes: Bytes, boundary: String) -> Result<Fields, BodyError> {
    // Rack: an empty multipart body has no parameters (and is no error).
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let found = Arc::new(Mutex::new(Vec::new()));
    walk_multipart(Once(Some(bytes)), boundary, usize::MAX, found.clone()).await?;
    let fields = std::mem::take(&mut *locked(&found));
    Ok(fields)
}

const BAD_MULTIPART: BodyError = BodyError::Malformed("invalid multipart body");

/// Parse a multipart body from `stream`, pushing each credential part to `found` as soon as
/// the part is complete. Other parts are drained, never held.
async fn walk_multipart<S>(
    stream: S,
    boundary: String,
    value_cap: usize,
    found: Arc<Mutex<Fields>>,
) -> Result<(), BodyError>
where
    S: futures_core::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let mut parts = multer::Multipart::new(stream, boundary);
    while let Some(mut part) = parts.next_field().await.map_err(|_| BAD_MULTIPART)? {
        let mut names: Vec<Vec<u8>> = part_names(part.headers())
            .into_iter()
            .filter(|n| credentials::is_credential_param(n))
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            while part.chunk().await.map_err(|_| BAD_MULTIPART)?.is_some() {}
            continue;
        }
        let mut value = Vec::new();
        while let Some(chunk) = part.chunk().await.map_err(|_| BAD_MULTIPART)? {
            if value.len() + chunk.len() > value_cap {
                return Err(BodyError::Malformed("a credential part is too large"));
            }
            value.extend_from_slice(&chunk);
        }
        let mut found = locked(&found);
        for name in names {
            found.push((name, value.clone()));
        }
    }
    Ok(())
}

/// A poisoned lock only means another holder panicked; the data is still a plain Vec.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The buffered body as the one-item stream multer reads.
struct Once(Option<Bytes>);

impl futures_core::Stream for Once {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.take().map(Ok))
    }
}

/// Every name Rack could give a part, read generously. Rack matches its regexes against the
/// whole head of the part, unanchored (`/Content-Disposition:[^:]*;\s*name=(…)/ni`, then
/// `/Content-ID:\s*([^\r\n]*)/ni`, then the filename, then `"<Content-Type>[]"`), so a
/// `Content-Disposition: …; name="job_token"` inside another header's value names the part
/// too. Each header line is therefore searched whole: every `name=` (also `filename=`,
/// `name*=`) however quoted, and whatever follows `Content-ID:` or `Content-Type:`.
fn part_names(headers: &HeaderMap) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    for (name, value) in headers {
        let mut line = name.as_str().as_bytes().to_vec();
        line.extend_from_slice(b": ");
        line.extend_from_slice(value.as_bytes());
        disposition_names(&line, &mut names);
        let lower = line.to_ascii_lowercase();
        for marker in [&b"content-id:"[..], b"content-type:"] {
            let mut from = 0;
            while let Some(at) = find(&lower[from..], marker).map(|i| i + from) {
                from = at + marker.len();
                names.push(line[from..].trim_ascii().to_vec());
            }
        }
    }
    names
}

fn disposition_names(value: &[u8], out: &mut Vec<Vec<u8>>) {
    let lower = value.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = find(&lower[from..], b"name").map(|i| i + from) {
        from = at + 4;
        let mut i = from;
        let extended = value.get(i) == Some(&b'*');
        if extended {
            i += 1;
        }
        while value.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        if value.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while value.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        let rest = &value[i..];
        // Rack's `name="?([^\";]*)"?`: up to a quote or semicolon, spaces included.
        let unquoted = rest.strip_prefix(b"\"").unwrap_or(rest);
        let end = unquoted
            .iter()
            .position(|&b| b == b'"' || b == b';')
            .unwrap_or(unquoted.len());
        out.push(unquoted[..end].trim_ascii().to_vec());
        // A quoted string with `\` escapes, dequoted.
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            let mut name = Vec::new();
            let mut bytes = quoted.iter();
            while let Some(&b) = bytes.next() {
                match b {
                    b'\\' => name.extend(bytes.next()),
                    b'"' => break,
                    _ => name.push(b),
                }
            }
            out.push(name);
        }
        // RFC 5987 `name*=utf-8''job%5Ftoken`.
        if extended {
            let raw = &unquoted[..end];
            let encoded = match find(raw, b"''") {
                Some(p) => &raw[p + 2..],
                None => raw,
            };
            out.push(percent_encoding::percent_decode(encoded.trim_ascii()).collect());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// (key, value) of every top-level key of a JSON object that is a credential parameter;
/// duplicates all count (Ruby keeps the last). A non-object body has no parameters but must
/// still be valid JSON (the forge answers 400 otherwise). A credential's value must be a
/// string, null, or an array of them.
fn json_fields(bytes: &[u8]) -> Result<Fields, BodyError> {
    const BAD: BodyError =
        BodyError::Malformed("invalid JSON, or a credential that is not a string");
    // Grape skips an empty body (`return if body.empty?`); whitespace alone is invalid JSON.
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    // Ruby's parser refuses a source that is not UTF-8; serde_json checks only what it keeps.
    if std::str::from_utf8(bytes).is_err() {
        return Err(BAD);
    }
    if json_depth_exceeds(bytes, MAX_JSON_DEPTH) {
        return Err(BodyError::Malformed("JSON nested too deeply"));
    }
    let mut fields = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    TopLevel(&mut fields)
        .deserialize(&mut de)
        .map_err(|_| BAD)?;
    de.end().map_err(|_| BAD)?;
    Ok(fields)
}

/// Whether brackets outside strings nest deeper than `max`: checked before parsing so that no
/// parser recursion depends on the client.
fn json_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

struct TopLevel<'f>(&'f mut Fields);

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if credentials::is_credential_param(key.as_bytes()) {
                for value in map.next_value::<CredentialValue>()?.0 {
                    self.0.push((key.as_bytes().to_vec(), value.into_bytes()));
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A credential parameter's JSON value: a string, null (no credential) or an array of those
/// (ActiveRecord would look up every element). Anything else is refused.
struct CredentialValue(Vec<String>);

impl<'de> de::Deserialize<'de> for CredentialValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CredentialVisitor { nested: false })
    }
}

struct CredentialVisitor {
    nested: bool,
}

impl<'de> Visitor<'de> for CredentialVisitor {
    type Value = CredentialValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, null or an array of strings")
    }
    fn visit_str<E>(self, v: &str) -> Result<CredentialValue, E> {
        Ok(CredentialValue(vec![v.to_owned()]))
    }
    fn visit_unit<E>(self) -> Result<CredentialValue, E> {
        Ok(CredentialValue(Vec::new()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CredentialValue, A::Error> {
        if self.nested {
            return Err(de::Error::custom("nested array"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(NestedSeed)? {
            out.extend(v.0);
        }
        Ok(CredentialValue(out))
    }
}

struct NestedSeed;

impl<'de> DeserializeSeed<'de> for NestedSeed {
    type Value = CredentialValue;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<CredentialValue, D::Error> {
        d.deserialize_any(CredentialVisitor { nested: true })
    }
}

/// A multipart or JSON body larger than the cap. The request was decided on its other
/// credentials; the body now streams upstream through a pump task that parses it on the way:
/// - every chunk is parsed *before* it is passed on, and a credential part (or top-level JSON
///   member) is checked as soon as it is complete, so nothing the gateway has not checked ever
///   reaches the forge;
/// - the final bytes (at least the closing delimiter, or the closing `}`) are held back until
///   the body has ended and parsed completely;
/// - a credential equal to the decided job token (or no credential) releases them; any other
///   job-token candidate, or a malformed body, aborts the upstream body (the forge never sees
///   a complete request) and the client gets the error instead of the forge's answer.
pub struct HeldBody {
    read: Bytes,
    rest: Incoming,
    kind: HeldKind,
    cap: usize,
    /// The share of `max_inspected_total` that `read` holds until it is passed on.
    budget: Option<OwnedSemaphorePermit>,
}

enum HeldKind {
    Multipart { boundary: String },
    Json,
}

/// Bytes of a streamed JSON body held back to its end (the closing `}` and what follows).
const JSON_HOLD: usize = 64;

/// The incremental parser of a held body.
enum HeldParser {
    Multipart(Stepper),
    Json(JsonScanner),
}

impl HeldParser {
    fn step(&mut self, chunk: Option<Bytes>) -> Result<Fields, BodyError> {
        match self {
            HeldParser::Multipart(stepper) => stepper.step(chunk),
            HeldParser::Json(scanner) => match chunk {
                Some(chunk) => scanner.feed(&chunk),
                None => scanner.finish(),
            },
        }
    }
}

/// The pump's verdict on a held body; sent before the held-back bytes are released.
pub type Verdict = oneshot::Receiver<Result<(), GatewayError>>;

/// Chunks in flight between the pump and the upstream connection.
const PUMP_CHANNEL: usize = 4;

/// The upstream body was cut off on purpose.
#[derive(Debug)]
pub struct BodyAborted;

impl fmt::Display for BodyAborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body aborted: it carried a credential the gateway refused")
    }
}

impl std::error::Error for BodyAborted {}

impl HeldBody {
    /// Start streaming; `decided` is the job token the request was decided on, if any.
    pub fn start(
        self,
        decided: Option<JobToken>,
        prefixes: Vec<Box<str>>,
    ) -> (ForwardBody, Verdict) {
        let (tx, rx) = mpsc::channel(PUMP_CHANNEL);
        let (verdict_tx, verdict_rx) = oneshot::channel();
        tokio::spawn(self.pump(decided, prefixes, tx, verdict_tx));
        let body = ForwardBody {
            prefix: VecDeque::new(),
            rest: None,
            channel: Some(rx),
            _budget: None,
        };
        (body, verdict_rx)
    }

    async fn pump(
        self,
        decided: Option<JobToken>,
        prefixes: Vec<Box<str>>,
        tx: mpsc::Sender<Result<Bytes, BodyAborted>>,
        verdict: oneshot::Sender<Result<(), GatewayError>>,
    ) {
        let HeldBody {
            read,
            mut rest,
            kind,
            cap,
            mut budget,
        } = self;
        let (hold, mut parser) = match kind {
            // `\r\n--` + boundary + `--\r\n`: the closing delimiter never leaves early.
            HeldKind::Multipart { boundary } => (
                boundary.len() + 8,
                HeldParser::Multipart(Stepper::new(boundary, cap)),
            ),
            HeldKind::Json => (JSON_HOLD, HeldParser::Json(JsonScanner::new(cap))),
        };
        let mut pending = BytesMut::new();
        let mut first = Some(read);
        let outcome: Result<(), GatewayError> = loop {
            let next = match first.take() {
                Some(chunk) => Some(chunk),
                None => match next_data(&mut rest).await {
                    Ok(chunk) => chunk,
                    Err(e) => break Err(e.into()),
                },
            };
            let fields = match parser.step(next.clone()) {
                Ok(fields) => fields,
                Err(e) => break Err(e.into()),
            };
            if let Err(e) = check_late(&fields, decided.as_ref(), &prefixes, cap) {
                break Err(e);
            }
            let Some(chunk) = next else {
                break Ok(());
            };
            pending.extend_from_slice(&chunk);
            if pending.len() > hold {
                let out = pending.split_to(pending.len() - hold).freeze();
                if tx.send(Ok(out)).await.is_err() {
                    // The upstream stopped reading (it answered, or the connection broke).
                    return;
                }
                // What was read before the decision has moved on.
                drop(budget.take());
            }
        };
        match outcome {
            Ok(()) => {
                let _ = verdict.send(Ok(()));
                let _ = tx.send(Ok(pending.freeze())).await;
            }
            Err(e) => {
                let _ = verdict.send(Err(e));
                let _ = tx.send(Err(BodyAborted)).await;
            }
        }
    }
}

fn check_late(
    fields: &Fields,
    decided: Option<&JobToken>,
    prefixes: &[Box<str>],
    cap: usize,
) -> Result<(), GatewayError> {
    for (name, value) in fields {
        match credentials::check_late_field(name, value, decided, prefixes)? {
            LateField::NotACandidate | LateField::SameAsDecided => {}
            LateField::Undecided => return Err(BodyError::LateCredential { cap }.into()),
        }
    }
    Ok(())
}

/// The stream multer reads in the pump: one chunk at a time, handed over by [`Stepper`].
#[derive(Default)]
struct SlotState {
    chunk: Option<Bytes>,
    eof: bool,
}

struct Slot(Arc<Mutex<SlotState>>);

impl futures_core::Stream for Slot {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = locked(&self.0);
        match state.chunk.take() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None if state.eof => Poll::Ready(None),
            // The stepper polls again after handing over the next chunk: no waker needed.
            None => Poll::Pending,
        }
    }
}

/// Drives the multipart parser by hand, one chunk per step: after a step returns, the parser
/// has consumed that chunk as far as it can, and every credential part completed in it has
/// been reported. (multer drains its stream before parsing, and the only thing it ever waits
/// for is the next chunk.)
type Parse = Pin<Box<dyn Future<Output = Result<(), BodyError>> + Send>>;

struct Stepper {
    slot: Arc<Mutex<SlotState>>,
    found: Arc<Mutex<Fields>>,
    parse: Option<Parse>,
}

impl Stepper {
    fn new(boundary: String, value_cap: usize) -> Self {
        let slot = Arc::new(Mutex::new(SlotState::default()));
        let found = Arc::new(Mutex::new(Vec::new()));
        let parse = Box::pin(walk_multipart(
            Slot(slot.clone()),
            boundary,
            value_cap,
            found.clone(),
        ));
        Stepper {
            slot,
            found,
            parse: Some(parse),
        }
    }

    /// Feed one chunk (None: the body ended) and return the credential parts completed by it.
    fn step(&mut self, chunk: Option<Bytes>) -> Result<Fields, BodyError> {
        let eof = chunk.is_none();
        {
            let mut state = locked(&self.slot);
            match chunk {
                Some(chunk) => state.chunk = Some(chunk),
                None => state.eof = true,
            }
        }
        if let Some(parse) = self.parse.as_mut() {
            let mut cx = Context::from_waker(Waker::noop());
            match parse.as_mut().poll(&mut cx) {
                Poll::Ready(result) => {
                    // Done at the closing delimiter; an epilogue after it is ignored, as
                    // Rack ignores it.
                    self.parse = None;
                    result?;
                }
                Poll::Pending if eof => return Err(BAD_MULTIPART),
                Poll::Pending => {}
            }
        }
        let fields = std::mem::take(&mut *locked(&self.found));
        Ok(fields)
    }
}

/// Where a [`JsonScanner`] is in the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JsonState {
    /// Before the top-level value.
    Start,
    /// The top-level value is not an object: it carries no parameters (Grape merges only a
    /// Hash), and the forge rejects it if it is not valid JSON.
    NotObject,
    /// In the top-level object, before a key (`first`: or its closing `}`).
    Key { first: bool },
    /// Inside a top-level key string.
    KeyString { escaped: bool },
    /// After a key, before `:`.
    Colon,
    /// Before a member's value.
    Value,
    /// Inside a member's value, `depth` brackets deep (0: a scalar at the top level).
    InValue {
        depth: usize,
        in_string: bool,
        escaped: bool,
    },
    /// After a member's value, before `,` or `}`.
    AfterValue,
    /// After the top-level object: only whitespace may follow.
    End,
}

/// An incremental scanner for the top-level members of a JSON object: it follows strings,
/// escapes and nesting exactly (so on valid JSON it finds exactly the top-level keys a JSON
/// parser finds), captures the keys and the values of credential members (bounded by the
/// cap), and hands each completed credential member to [`json_fields`] to be read like a
/// small body. What Ruby's parser might accept and a strict one would not (comments) is
/// refused.
struct JsonScanner {
    state: JsonState,
    cap: usize,
    key: Vec<u8>,
    /// The current member's raw value, when its key is a credential parameter.
    value: Option<Vec<u8>>,
    at_start: bool,
}

impl JsonScanner {
    fn new(cap: usize) -> Self {
        JsonScanner {
            state: JsonState::Start,
            cap,
            key: Vec::new(),
            value: None,
            at_start: true,
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<Fields, BodyError> {
        const BAD: BodyError = BodyError::Malformed("invalid JSON");
        let mut fields = Vec::new();
        let chunk = match self.at_start {
            true => chunk.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(chunk),
            false => chunk,
        };
        if !chunk.is_empty() {
            self.at_start = false;
        }
        for &b in chunk {
            let ws = matches!(b, b' ' | b'\t' | b'\r' | b'\n');
            self.state = match self.state {
                JsonState::NotObject => JsonState::NotObject,
                _ if b == b'/' && !self.in_string() => return Err(BAD),
                JsonState::Start if ws => JsonState::Start,
                JsonState::Start if b == b'{' => JsonState::Key { first: true },
                JsonState::Start => JsonState::NotObject,
                JsonState::Key { .. }
                | JsonState::Colon
                | JsonState::Value
                | JsonState::AfterValue
                | JsonState::End
                    if ws =>
                {
                    self.state
                }
                JsonState::Key { first } => match b {
                    b'"' => {
                        self.key.clear();
                        self.key.push(b);
                        JsonState::KeyString { escaped: false }
                    }
                    b'}' if first => JsonState::End,
                    _ => return Err(BAD),
                },
                JsonState::KeyString { escaped } => {
                    if self.key.len() >= self.cap {
                        return Err(BAD);
                    }
                    self.key.push(b);
                    match b {
                        _ if escaped => JsonState::KeyString { escaped: false },
                        b'\\' => JsonState::KeyString { escaped: true },
                        b'"' => JsonState::Colon,
                        _ => JsonState::KeyString { escaped: false },
                    }
                }
                JsonState::Colon if b == b':' => {
                    let key: String = serde_json::from_slice(&self.key).map_err(|_| BAD)?;
                    self.value = credentials::is_credential_param(key.as_bytes()).then(Vec::new);
                    JsonState::Value
                }
                JsonState::Colon => return Err(BAD),
                JsonState::Value => {
                    self.capture(b)?;
                    let (depth, in_string) = match b {
                        b'{' | b'[' => (1, false),
                        b'"' => (0, true),
                        b',' | b'}' | b']' | b':' => return Err(BAD),
                        _ => (0, false),
                    };
                    JsonState::InValue {
                        depth,
                        in_string,
                        escaped: false,
                    }
                }
                JsonState::InValue {
                    depth,
                    in_string: true,
                    escaped,
                } => {
                    self.capture(b)?;
                    let (in_string, escaped) = match b {
                        _ if escaped => (true, false),
                        b'\\' => (true, true),
                        b'"' => (false, false),
                        _ => (true, false),
                    };
                    JsonState::InValue {
                        depth,
                        in_string,
                        escaped,
                    }
                }
                JsonState::InValue { depth: 0, .. } if ws || b == b',' || b == b'}' => {
                    // The member's value ended: read a credential member like a small body.
                    if let Some(value) = self.value.take() {
                        let mut doc = b"{".to_vec();
                        doc.extend_from_slice(&self.key);
                        doc.push(b':');
                        doc.extend_from_slice(&value);
                        doc.push(b'}');
                        fields.extend(json_fields(&doc)?);
                    }
                    match b {
                        b',' => JsonState::Key { first: false },
                        b'}' => JsonState::End,
                        _ => JsonState::AfterValue,
                    }
                }
                JsonState::InValue { depth, .. } => {
                    self.capture(b)?;
                    let depth = match b {
                        b'{' | b'[' if depth >= MAX_JSON_DEPTH => {
                            return Err(BodyError::Malformed("JSON nested too deeply"))
                        }
                        b'{' | b'[' => depth + 1,
                        b'}' | b']' if depth == 0 => return Err(BAD),
                        b'}' | b']' => depth - 1,
                        _ => depth,
                    };
                    JsonState::InValue {
                        depth,
                        in_string: b == b'"',
                        escaped: false,
                    }
                }
                JsonState::AfterValue => match b {
                    b',' => JsonState::Key { first: false },
                    b'}' => JsonState::End,
                    _ => return Err(BAD),
                },
                JsonState::End => return Err(BAD),
            };
        }
        Ok(fields)
    }

    fn in_string(&self) -> bool {
        matches!(
            self.state,
            JsonState::KeyString { .. }
                | JsonState::InValue {
                    in_string: true,
                    ..
                }
        )
    }

    fn capture(&mut self, b: u8) -> Result<(), BodyError> {
        if let Some(value) = self.value.as_mut() {
            if value.len() >= self.cap {
                return Err(BodyError::Malformed("a credential value is too large"));
            }
            value.push(b);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Fields, BodyError> {
        match self.state {
            JsonState::End | JsonState::NotObject => Ok(Vec::new()),
            JsonState::Start if self.at_start => Ok(Vec::new()),
            _ => Err(BodyError::Malformed("invalid JSON: the body ended early")),
        }
    }
}

/// The body forwarded upstream: the bytes the gateway read, the client's stream (after any
/// bytes peeked at), or a held multipart body's pump. Request trailers are dropped.
pub struct ForwardBody<B = Incoming> {
    prefix: VecDeque<Bytes>,
    rest: Option<B>,
    channel: Option<mpsc::Receiver<Result<Bytes, BodyAborted>>>,
    /// The share of `max_inspected_total` the buffered bytes hold, returned when the body is
    /// dropped (sent, or abandoned).
    _budget: Option<OwnedSemaphorePermit>,
}

impl<B> ForwardBody<B> {
    pub fn stream(body: B) -> Self {
        Self::with_prefix(Vec::new(), body)
    }

    fn with_prefix(prefix: Vec<Bytes>, body: B) -> Self {
        ForwardBody {
            prefix: prefix.into(),
            rest: Some(body),
            channel: None,
            _budget: None,
        }
    }

    pub fn full(bytes: Bytes, budget: Option<OwnedSemaphorePermit>) -> Self {
        ForwardBody {
            prefix: VecDeque::from([bytes]),
            rest: None,
            channel: None,
            _budget: budget,
        }
    }

    fn prefix_len(&self) -> u64 {
        self.prefix.iter().map(|b| b.len() as u64).sum()
    }
}

impl<B> fmt::Debug for ForwardBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardBody")
            .field("buffered", &self.prefix_len())
            .field("streaming", &self.rest.is_some())
            .field("pumped", &self.channel.is_some())
            .finish()
    }
}

impl<B> Body for ForwardBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(channel) = self.channel.as_mut() {
            return match channel.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                Poll::Ready(Some(Err(aborted))) => Poll::Ready(Some(Err(aborted.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match Pin::new(&mut *rest).poll_frame(cx) {
                // Trailers are not passed on: the gateway never saw them before deciding.
                Poll::Ready(Some(Ok(frame))) if !frame.is_data() => continue,
                Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty()
            && self.channel.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered = self.prefix_len();
        let rest = match (&self.rest, &self.channel) {
            (Some(rest), _) => rest.size_hint(),
            (None, Some(_)) => SizeHint::new(),
            (None, None) => SizeHint::with_exact(0),
        };
        let mut hint = SizeHint::new();
        // Upper first: a SizeHint never holds lower > upper.
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(buffered));
        }
        hint.set_lower(rest.lower().saturating_add(buffered));
        hint
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn ct(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn plans_follow_rack_and_grape() {
        let post = Method::POST;
        assert_eq!(
            plan(&post, &HeaderMap::new()),
            Ok(Plan::Untyped { form: true })
        );
        assert_eq!(
            plan(&Method::PUT, &HeaderMap::new()),
            Ok(Plan::Untyped { form: false })
        );
        assert_eq!(plan(&post, &ct("")), Ok(Plan::Untyped { form: true }));
        assert_eq!(
            plan(&post, &ct(" ; charset=x")),
            Ok(Plan::Untyped { form: true })
        );
        for form in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
            "application/x-www-form-urlencoded, text/plain",
            "multipart/form-data",
        ] {
            assert_eq!(plan(&Method::GET, &ct(form)), Ok(Plan::Form), "{form}");
        }
        assert_eq!(
            plan(&post, &ct("multipart/form-data; boundary=abc")),
            Ok(Plan::Multipart {
                boundary: "abc".into()
            })
        );
        assert_eq!(
            plan(&post, &ct("Multipart/Mixed; boundary=\"a b\"; x=1")),
            Ok(Plan::Multipart {
                boundary: "a b".into()
            })
        );
        // Rack's greedy `.*`: the last boundary wins.
        assert_eq!(
            plan(
                &post,
                &ct("multipart/form-data; boundary=one; boundary=two")
            ),
            Ok(Plan::Multipart {
                boundary: "two".into()
            })
        );
        for json in [
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.git-lfs+json",
            "text/x-json",
        ] {
            assert_eq!(plan(&post, &ct(json)), Ok(Plan::Json), "{json}");
        }
        for opaque in [
            "application/octet-stream",
            "application/x-git-upload-pack-request",
            "text/plain",
        ] {
            assert_eq!(plan(&post, &ct(opaque)), Ok(Plan::Opaque), "{opaque}");
        }
        let mut two = ct("application/json");
        two.append(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(plan(&post, &two), Err(BodyError::Malformed(_))));
        let mut gz = ct("application/json");
        gz.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(plan(&post, &gz), Err(BodyError::Encoded("JSON")));
        let mut gz = ct("application/octet-stream");
        gz.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(plan(&post, &gz), Ok(Plan::Opaque));
    }

    fn names(fields: &Fields) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn json_top_level_credentials() {
        let f = json_fields(br#"{"ref":"main","token":"glcbt-a","job_token":null}"#).unwrap();
        assert_eq!(names(&f), vec![("token".into(), "glcbt-a".into())]);
        // Duplicates all count; escapes are decoded in keys and values.
        let f = json_fields(br#"{"job_token":"a","job\u005ftoken":"b"}"#).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].1, b"b");
        // Arrays of strings: every element.
        let f = json_fields(br#"{"private_token":["x",null,"y"]}"#).unwrap();
        assert_eq!(f.len(), 2);
        // Bracketed keys are read as Rack would read them in a form.
        assert_eq!(json_fields(br#"{"job_token[]":"a"}"#).unwrap().len(), 1);
        // Nested objects are not top-level parameters.
        assert!(json_fields(br#"{"a":{"job_token":"x"}}"#)
            .unwrap()
            .is_empty());
        // Non-object bodies have no parameters.
        for ok in [&b"[1,2]"[..], b"\"x\"", b"3", b"null", b" {} ", b""] {
            assert!(json_fields(ok).unwrap().is_empty());
        }
        for bad in [
            &br#"{"job_token":5}"#[..],
            br#"{"token":true}"#,
            br#"{"token":{"a":"b"}}"#,
            br#"{"token":[["x"]]}"#,
            br#"{"token":[1]}"#,
            br#"{"a":1"#,
            br#"{"a":1}x"#,
            b"/* c */ {\"job_token\":\"x\"}",
            b" ",
            b"{\"a\":\"\xff\"}",
        ] {
            assert!(
                json_fields(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn json_depth_is_bounded() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            json_fields(deep.as_bytes()),
            Err(BodyError::Malformed("JSON nested too deeply"))
        );
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(90), "]".repeat(90));
        assert!(json_fields(ok.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let s = format!("{{\"a\":\"{}\"}}", "[".repeat(1000));
        assert!(json_fields(s.as_bytes()).is_ok());
    }

    fn multipart(parts: &[(&str, &str)], boundary: &str) -> Bytes {
        let mut out = String::new();
        for (headers, value) in parts {
            out.push_str(&format!("--{boundary}\r\n{headers}\r\n\r\n{value}\r\n"));
        }
        out.push_str(&format!("--{boundary}--\r\n"));
        Bytes::from(out)
    }

    async fn parts(parts: &[(&str, &str)]) -> Result<Vec<(String, String)>, BodyError> {
        let body = multipart(parts, "XyZ");
        multipart_fields(body, "XyZ".into())
            .await
            .map(|f| names(&f))
    }

    #[tokio::test]
    async fn multipart_parts_by_name() {
        let f = parts(&[
            ("Content-Disposition: form-data; name=\"ref\"", "main"),
            ("Content-Disposition: form-data; name=\"token\"", "glcbt-t"),
        ])
        .await
        .unwrap();
        assert_eq!(f, vec![("token".into(), "glcbt-t".into())]);
        // Unquoted, other case, brackets, RFC 5987, file parts, Content-ID, Content-Type, and
        // Rack's unanchored regexes matching inside another header.
        for headers in [
            "X-Note: Content-Disposition: form-data; name=\"job_token\"",
            "Content-Disposition: form-data; name=\"a\"\r\nX-Note: x; name=job_token",
            "X-Note: see Content-ID: job_token",
            "content-disposition: form-data; NAME=job_token",
            "Content-Disposition: form-data; name=\"job_token[]\"",
            "Content-Disposition: form-data; name*=utf-8''job%5Ftoken",
            "Content-Disposition: form-data; name=\"f\"; filename=\"job_token\"",
            "Content-Disposition: form-data; name=\"jo\\b_token\"",
            "Content-ID: job_token",
            "Content-Type: job_token",
        ] {
            let f = parts(&[(headers, "glcbt-v")]).await.unwrap();
            assert!(f.iter().any(|(_, v)| v == "glcbt-v"), "{headers}: {f:?}");
        }
        // A large non-credential part is not kept.
        let big = "x".repeat(100_000);
        let f = parts(&[("Content-Disposition: form-data; name=\"content\"", &big)])
            .await
            .unwrap();
        assert!(f.is_empty());
    }

    #[tokio::test]
    async fn malformed_multipart_is_refused() {
        let good = multipart(&[("Content-Disposition: form-data; name=\"a\"", "1")], "B");
        // Missing closing boundary.
        let cut = good.slice(..good.len() - 6);
        assert!(multipart_fields(cut, "B".into()).await.is_err());
        // No boundary at all.
        assert!(multipart_fields(Bytes::from_static(b"hello"), "B".into())
            .await
            .is_err());
        // A different boundary.
        assert!(multipart_fields(good, "C".into()).await.is_err());
    }

    #[tokio::test]
    async fn forwarded_bodies_drop_trailers() {
        use http_body_util::{BodyExt, StreamBody};
        let mut trailers = HeaderMap::new();
        trailers.insert("job-token", HeaderValue::from_static("glcbt-smuggled"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"b"))),
            Ok(Frame::trailers(trailers)),
        ];
        let inner = StreamBody::new(Once2(frames.into()));
        let body = ForwardBody::with_prefix(vec![Bytes::from_static(b"a")], inner);
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"ab"));
        let full = ForwardBody::<Incoming>::full(Bytes::from_static(b"xyz"), None);
        assert_eq!(full.size_hint().exact(), Some(3));
        assert!(!full.is_end_stream());
    }

    struct Once2(VecDeque<Result<Frame<Bytes>, Infallible>>);

    impl futures_core::Stream for Once2 {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    /// The streaming scanner fed in pieces finds what the buffered parser finds, wherever the
    /// body is split, and refuses what it refuses (it may refuse more, never less).
    #[test]
    fn json_scanner_agrees_with_the_buffered_parser() {
        let docs: &[&[u8]] = &[
            br#"{"job_token":"a"}"#,
            br#" { "ref" : "main" , "token" : [ "b" , null ] , "x" : { "job_token" : "no" } } "#,
            br#"{"a":"}\"{","job\u005ftoken":"c","n":[1,[2,{"token":"d"}]],"t":true}"#,
            br#"{"private_token":null,"bearer_token":"e","e":-1.5e3}"#,
            br#"{}"#,
            br#"[{"job_token":"x"}]"#,
            br#""job_token""#,
            br#"{"job_token":5}"#,
            br#"{"job_token":{"a":"b"}}"#,
            br#"{"a":1,}"#,
            br#"{"a" 1}"#,
            br#"{"a":1}x"#,
            br#"{"a":1 /* c */}"#,
            br#"{'job_token':'x'}"#,
            br#"{"a":1"#,
        ];
        for doc in docs {
            let whole = json_fields(doc);
            for split in 0..=doc.len() {
                let mut scanner = JsonScanner::new(1 << 20);
                let got = scanner.feed(&doc[..split]).and_then(|mut a| {
                    a.extend(scanner.feed(&doc[split..])?);
                    a.extend(scanner.finish()?);
                    Ok(a)
                });
                let text = String::from_utf8_lossy(doc);
                match (&whole, &got) {
                    (Ok(w), Ok(g)) => assert_eq!(names(w), names(g), "{text} split {split}"),
                    (Err(_), Err(_)) => {}
                    // Non-object documents are not validated by the scanner (the forge refuses
                    // invalid ones; none carries parameters).
                    (Err(_), Ok(g)) if !doc.trim_ascii_start().starts_with(b"{") => {
                        assert!(g.is_empty())
                    }
                    _ => panic!("{text} split {split}: buffered {whole:?}, scanner {got:?}"),
                }
            }
        }
        // Depth and size are bounded.
        let deep = format!("{{\"a\":{}", "[".repeat(200));
        assert!(JsonScanner::new(1 << 20).feed(deep.as_bytes()).is_err());
        let long = format!("{{\"token\":\"{}\"}}", "x".repeat(100));
        assert!(JsonScanner::new(50).feed(long.as_bytes()).is_err());
    }

    fn feed_in_pieces(doc: &[u8], cuts: &[usize]) -> Result<Fields, BodyError> {
        let mut scanner = JsonScanner::new(1 << 20);
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (doc.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain([doc.len()]) {
            out.extend(scanner.feed(&doc[at..cut])?);
            at = cut;
        }
        out.extend(scanner.finish()?);
        Ok(out)
    }

    /// Steps a multipart body through the pump's parser in pieces.
    fn step_in_pieces(body: &[u8], boundary: &str, cuts: &[usize]) -> Result<Fields, BodyError> {
        let mut stepper = Stepper::new(boundary.into(), 1 << 20);
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain([body.len()]) {
            out.extend(stepper.step(Some(Bytes::copy_from_slice(&body[at..cut])))?);
            at = cut;
        }
        out.extend(stepper.step(None)?);
        Ok(out)
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i32>().prop_map(|n| serde_json::json!(n)),
            "[ -~\\n\"\\\\{}\\[\\]é]{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec(
                    ("(job_token|token|a|b\\[\\]|private_token)", inner),
                    0..4
                )
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        #[test]
        fn scanner_matches_the_parser_on_json_objects(
            members in proptest::collection::vec(("(job_token|token|access_token|ref|a\\\"b|job\\\\u005ftoken)", json_value()), 0..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            pretty in any::<bool>(),
        ) {
            // Written by hand so that duplicate keys survive.
            let sep = if pretty { " ,\n  " } else { "," };
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\":{}", if pretty { serde_json::to_string_pretty(v).unwrap() } else { v.to_string() }))
                .collect();
            let doc = format!("{{{}}}", body.join(sep));
            let whole = json_fields(doc.as_bytes());
            let pieces = feed_in_pieces(doc.as_bytes(), &cuts);
            match (&whole, &pieces) {
                (Ok(w), Ok(p)) => prop_assert_eq!(names(w), names(p)),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "{doc}: {whole:?} vs {pieces:?}"),
            }
        }

        #[test]
        fn scanner_never_panics(doc in proptest::collection::vec(any::<u8>(), 0..200), cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
            let _ = feed_in_pieces(&doc, &cuts);
        }

        #[test]
        fn stepper_matches_the_buffered_multipart_parser(
            fields in proptest::collection::vec(("(token|job_token|content|ref)", "[ -~]{0,40}"), 0..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            truncate in proptest::option::of(any::<usize>()),
        ) {
            let parts: Vec<(String, String)> = fields
                .iter()
                .map(|(n, v)| (format!("Content-Disposition: form-data; name=\"{n}\""), v.clone()))
                .collect();
            let refs: Vec<(&str, &str)> = parts.iter().map(|(h, v)| (h.as_str(), v.as_str())).collect();
            let mut body = multipart(&refs, "b0und").to_vec();
            if let Some(t) = truncate {
                body.truncate(t % (body.len() + 1));
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let whole = rt.block_on(multipart_fields(Bytes::from(body.clone()), "b0und".into()));
            let pieces = step_in_pieces(&body, "b0und", &cuts);
            match (&whole, &pieces) {
                (Ok(w), Ok(p)) => prop_assert_eq!(names(w), names(p)),
                (Err(_), Err(_)) => {}
                // An empty body is no multipart error when buffered.
                (Ok(w), Err(_)) if body.is_empty() => prop_assert!(w.is_empty()),
                _ => prop_assert!(false, "{whole:?} vs {pieces:?}"),
            }
        }
    }

    #[test]
    fn first_significant_skips_whitespace_and_bom() {
        assert_eq!(first_significant(b" \r\n\t{", true), Some(b'{'));
        assert_eq!(first_significant(b"\xEF\xBB\xBF {", true), Some(b'{'));
        assert_eq!(first_significant(b"\xEF\xBB\xBF", false), Some(0xEF));
        assert_eq!(first_significant(b"  ", true), None);
    }
}
