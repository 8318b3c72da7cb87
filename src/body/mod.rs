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
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::Method;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::credentials::{self, BodyCredentials, JobToken, LateField};
use crate::error::GatewayError;

pub(crate) mod json;
pub(crate) mod multipart;

use json::{json_fields, JsonScanner};
use multipart::{multipart_fields, Stepper};

/// (parameter name, value) pairs read from a body: credential parameters only.
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Fields as text, for the parsers' tests.
#[cfg(test)]
fn field_names(fields: &Fields) -> Vec<(String, String)> {
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
            let mut lead = FirstSignificant::default();
            let first = loop {
                let Some(chunk) = next_data(&mut body).await? else {
                    break lead.finish();
                };
                len += chunk.len();
                let first = lead.push(&chunk);
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
            let fields = if matches!(first_significant(&bytes), Some(b'{' | b'/')) {
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

/// The UTF-8 byte order mark, skipped at the very start of a JSON body.
const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// A BOM at the very start of a body read in chunks, skipped wherever the chunks cut it: what
/// the gateway reads may not depend on how the body arrived.
#[derive(Debug, Default)]
struct LeadingBom {
    /// Bytes of the BOM matched so far.
    matched: usize,
    /// A byte other than a leading BOM has been seen.
    content: bool,
}

impl LeadingBom {
    /// The content in `chunk`, in two parts: the bytes of a partial BOM that turned out to be
    /// content (they come first), and the rest of the chunk.
    fn skip<'c>(&mut self, mut chunk: &'c [u8]) -> (&'static [u8], &'c [u8]) {
        while !self.content && self.matched < BOM.len() {
            let Some((&b, rest)) = chunk.split_first() else {
                return (&[], chunk);
            };
            if b != BOM[self.matched] {
                self.content = true;
                return (&BOM[..self.matched], chunk);
            }
            self.matched += 1;
            chunk = rest;
        }
        if !chunk.is_empty() {
            self.content = true;
        }
        (&[], chunk)
    }

    /// At the end of the body: the partial BOM it ended in, which was content.
    fn finish(&mut self) -> &'static [u8] {
        if self.content || self.matched == 0 || self.matched == BOM.len() {
            return &[];
        }
        self.content = true;
        &BOM[..self.matched]
    }

    /// Whether anything but a leading BOM has been seen.
    fn seen_content(&self) -> bool {
        self.content
    }
}

/// The first byte of a body that is not JSON whitespace nor part of a UTF-8 BOM at its very
/// start, found chunk by chunk.
#[derive(Default)]
struct FirstSignificant(LeadingBom);

impl FirstSignificant {
    fn push(&mut self, chunk: &[u8]) -> Option<u8> {
        let (partial_bom, rest) = self.0.skip(chunk);
        partial_bom.first().copied().or_else(|| {
            rest.iter()
                .copied()
                .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        })
    }

    /// At the end of the body: the first byte of a partial BOM it ended in, if any.
    fn finish(&mut self) -> Option<u8> {
        self.0.finish().first().copied()
    }
}

/// [`FirstSignificant`] of a whole body.
fn first_significant(bytes: &[u8]) -> Option<u8> {
    let mut lead = FirstSignificant::default();
    lead.push(bytes).or_else(|| lead.finish())
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
    use std::convert::Infallible;

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

    #[test]
    fn first_significant_skips_whitespace_and_bom() {
        assert_eq!(first_significant(b" \r\n\t{"), Some(b'{'));
        assert_eq!(first_significant(b"\xEF\xBB\xBF {"), Some(b'{'));
        assert_eq!(first_significant(b"\xEF\xBB\xBF"), None);
        assert_eq!(first_significant(b"  "), None);
        // Only at the very start: a second BOM is content.
        assert_eq!(first_significant(b"\xEF\xBB\xBF\xEF\xBB\xBF{"), Some(0xEF));
        // A partial BOM is content, at the end of the body too.
        assert_eq!(first_significant(b"\xEF\xBB{"), Some(0xEF));
        assert_eq!(first_significant(b"\xEF"), Some(0xEF));
    }

    /// However the body's chunks cut it (a BOM included), the first significant byte is the
    /// one the whole body has: a client choosing its chunks cannot make a JSON body look like
    /// something the gateway streams uninspected.
    #[test]
    fn first_significant_does_not_depend_on_the_chunks() {
        for body in [
            &b"\xEF\xBB\xBF{\"private_token\":\"x\"}"[..],
            b"\xEF\xBB\xBF  \n{}",
            b"\xEF\xBB[1]",
            b"\xEF",
            b"  \xEF\xBB\xBF{",
            b"\r\n {",
            b"",
        ] {
            let whole = first_significant(body);
            for size in 1..=4 {
                let mut lead = FirstSignificant::default();
                let mut first = None;
                for chunk in body.chunks(size) {
                    first = lead.push(chunk);
                    if first.is_some() {
                        break;
                    }
                }
                let first = first.or_else(|| lead.finish());
                assert_eq!(first, whole, "{body:?} in chunks of {size}");
            }
        }
    }
}
