//! Fuzzing harnesses, shared by the cargo-fuzz targets in `fuzz/` and by the corpus replay
//! test `tests/fuzz_corpus.rs` (which runs in plain `cargo test`, without nightly).
//!
//! Each function takes the raw bytes of one fuzz input, decodes them into the arguments of the
//! function under test, calls it, and checks invariants that must hold for *every* input. A
//! broken invariant panics on purpose: that is how libFuzzer (and the replay test) see a finding.
//! Nothing here is used by the gateway itself.
//!
//! Input formats (text, so that a corpus file can be read and written by hand):
//! - [`credentials`]: the first line is the query string when it starts with `?` (any other
//!   first line is a header line); every other line is a header `name:value` (one optional
//!   space after the colon is dropped). Lines that do not make a valid header are skipped.
//! - [`target`]: `METHOD SP raw-path[?query]` on one line (all bytes after the first space
//!   are the path; the first `?` starts the query). An invalid method reads as `GET`.
//! - [`scope_file`]: the whole input is the scope file text (invalid UTF-8 replaced).
//! - [`body`]: the first line names the parser, `json` or `multipart BOUNDARY`; the second
//!   line lists chunk sizes (decimal, space-separated, used in turn; none or none valid:
//!   1, 2, 3, 5, 7); the rest is the body, cut into chunks of those sizes for the streaming
//!   parser.

use std::ops::Range;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use bytes::Bytes;

use crate::body::json::{json_fields, JsonScanner};
use crate::body::multipart::{multipart_fields, Stepper};
use crate::body::{BodyError, Fields};
use crate::credentials::{self, Credentials};
use crate::project::{is_valid_group_path, is_valid_project_path, ProjectRef};
use crate::scope::{self, ScopeLimits};
use crate::target::{self, GroupRef, RegistryScope, Target};

/// The job-token prefixes the credentials harness runs with: the default and a custom one
/// (an instance may add its own, design.md).
const PREFIXES: [&str; 2] = ["glcbt-", "mycorp-glcbt-"];

/// Decoded input of the credentials harness.
pub struct CredentialsInput {
    pub headers: HeaderMap,
    pub query: Option<String>,
}

/// Decode a credentials fuzz input (see the module docs for the format).
pub fn decode_credentials(data: &[u8]) -> CredentialsInput {
    let mut headers = HeaderMap::new();
    let mut query = None;
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if i == 0 {
            if let Some(q) = line.strip_prefix(b"?") {
                query = Some(String::from_utf8_lossy(q).into_owned());
                continue;
            }
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    CredentialsInput { headers, query }
}

/// `credentials::extract` on arbitrary headers and query: never panics, is deterministic, and
/// whatever it returns is well formed.
pub fn credentials(data: &[u8]) {
    let input = decode_credentials(data);
    let prefixes: Vec<Box<str>> = PREFIXES.iter().map(|&p| p.into()).collect();
    let first = credentials::extract(&input.headers, input.query.as_deref(), &prefixes);
    let again = credentials::extract(&input.headers, input.query.as_deref(), &prefixes);
    assert_eq!(
        summary(&first),
        summary(&again),
        "extract is not deterministic"
    );
    let Ok(creds) = first else {
        return;
    };
    let is_token_text = |t: &str| !t.is_empty() && t.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if let Some(job) = &creds.job_token {
        assert!(
            is_token_text(job.expose()),
            "job token is not visible ASCII"
        );
        assert!(
            !creds.unclassified.contains(job),
            "the job token is also listed as unclassified"
        );
    }
    assert!(
        creds.unclassified.len() <= 4,
        "more unclassified candidates than a request may ask the forge about"
    );
    for (i, u) in creds.unclassified.iter().enumerate() {
        assert!(is_token_text(u.expose()), "candidate is not visible ASCII");
        assert!(
            !PREFIXES.iter().any(|p| u.expose().starts_with(p)),
            "a prefixed value was left unclassified"
        );
        assert!(
            !creds.unclassified[..i].contains(u),
            "duplicate unclassified candidate"
        );
    }
    // Never missed: a non-blank visible-ASCII `JOB-TOKEN` header (any spelling Rack folds
    // into `HTTP_JOB_TOKEN`) is always a job token.
    for (name, value) in &input.headers {
        let folded = name.as_str().replace('_', "-");
        let bytes = value.as_bytes();
        if folded == "job-token"
            && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
            && !bytes.is_empty()
        {
            assert!(creds.job_token.is_some(), "JOB-TOKEN header not seen");
        }
    }
}

/// Digests of the job token and of the unclassified candidates.
type Digests = (Option<[u8; 32]>, Vec<[u8; 32]>);

/// Comparable view of an extraction result (digests only).
fn summary(r: &Result<Credentials, credentials::CredentialError>) -> Result<Digests, String> {
    match r {
        Ok(c) => Ok((
            c.job_token.as_ref().map(|t| t.sha256()),
            c.unclassified.iter().map(|t| t.sha256()).collect(),
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Decoded input of the target harness.
pub struct TargetInput {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
}

/// Decode a target fuzz input (see the module docs for the format).
pub fn decode_target(data: &[u8]) -> TargetInput {
    let text = String::from_utf8_lossy(data);
    let (method, rest) = match text.split_once(' ') {
        Some((m, rest)) => (
            Method::from_bytes(m.as_bytes()).unwrap_or(Method::GET),
            rest,
        ),
        None => (Method::GET, &text[..]),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (rest.to_owned(), None),
    };
    TargetInput {
        method,
        path,
        query,
    }
}

/// `target::parse` on an arbitrary method, path and query: never panics, is deterministic,
/// and every target it returns is well formed (spans inside the path and on character
/// boundaries, and replacing a span by a numeric id names the same route by id).
pub fn target(data: &[u8]) {
    let input = decode_target(data);
    let (method, path, query) = (&input.method, &input.path, input.query.as_deref());
    let parsed = target::parse(method, path, query);
    assert_eq!(
        parsed,
        target::parse(method, path, query),
        "parse is not deterministic"
    );
    // Only `/jwt/auth` reads the query.
    if !path.starts_with("/jwt/") {
        assert_eq!(
            parsed,
            target::parse(method, path, None),
            "the query changed the target of {path:?}"
        );
    }
    let Ok(parsed) = parsed else {
        return;
    };
    match &parsed {
        Target::Project {
            project,
            kind,
            id_span,
            alias,
        } => {
            check_project_ref(project);
            if let Some(alias) = alias {
                check_project_ref(alias);
            }
            if let Some(span) = id_span {
                check_span(path, span);
                let spliced = splice(path, span, 77);
                assert_eq!(
                    target::parse(method, &spliced, query),
                    Ok(Target::Project {
                        project: ProjectRef::Id(77),
                        kind: *kind,
                        id_span: None,
                        alias: None,
                    }),
                    "numeric id spliced into {path:?} names another route"
                );
            }
        }
        Target::Group { group, id_span } => {
            if let GroupRef::Path(p) = group {
                assert!(is_valid_group_path(p), "invalid group path {p:?}");
                assert_eq!(p.to_ascii_lowercase(), **p, "group path not lowercased");
            }
            if let Some(span) = id_span {
                check_span(path, span);
                let spliced = splice(path, span, 77);
                assert_eq!(
                    target::parse(method, &spliced, query),
                    Ok(Target::Group {
                        group: GroupRef::Id(77),
                        id_span: None,
                    }),
                    "numeric id spliced into {path:?} names another route"
                );
            }
        }
        Target::Registry { scopes, .. } => {
            assert!(scopes.len() <= target::MAX_REGISTRY_SCOPES);
            for scope in scopes {
                if let RegistryScope::Repository {
                    image, candidates, ..
                } = scope
                {
                    assert_eq!(image.to_ascii_lowercase(), **image, "image not lowercased");
                    assert!(
                        (1..=3).contains(&candidates.len()),
                        "a repository scope needs 1 to 3 candidate projects"
                    );
                    for c in candidates {
                        let ProjectRef::Path(p) = c else {
                            panic!("a registry candidate named by id");
                        };
                        check_project_ref(c);
                        assert!(
                            **p == **image
                                || image.strip_prefix(&**p).is_some_and(|r| r.starts_with('/')),
                            "candidate {p:?} is not a prefix of the image {image:?}"
                        );
                    }
                }
            }
        }
        Target::Job { .. }
        | Target::InstancePackages
        | Target::ProjectLess
        | Target::Unattributed => {}
    }
}

fn check_project_ref(project: &ProjectRef) {
    if let ProjectRef::Path(p) = project {
        assert!(is_valid_project_path(p), "invalid project path {p:?}");
        assert_eq!(p.to_ascii_lowercase(), **p, "project path not lowercased");
    }
}

fn check_span(path: &str, span: &Range<usize>) {
    assert!(
        span.start < span.end && span.end <= path.len(),
        "span {span:?} outside {path:?}"
    );
    assert!(
        path.is_char_boundary(span.start) && path.is_char_boundary(span.end),
        "span {span:?} not on char boundaries of {path:?}"
    );
}

fn splice(path: &str, span: &Range<usize>, id: u64) -> String {
    format!("{}{}{}", &path[..span.start], id, &path[span.end..])
}

/// `scope::load_str` on arbitrary text: never panics; when the text loads, loading it again
/// gives the same policy (digest and counts); when it does not, every issue names a line of
/// the text.
pub fn scope_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let limits = ScopeLimits { max_allowlist: 8 };
    match scope::load_str("fuzz.toml", &text, &limits) {
        Ok(first) => {
            let Ok(again) = scope::load_str("fuzz.toml", &text, &limits) else {
                panic!("the same text loaded once and failed the second time");
            };
            assert_eq!(first.policy.digest(), again.policy.digest());
            assert_eq!(first.policy.project_count(), again.policy.project_count());
            assert_eq!(first.policy.token_count(), again.policy.token_count());
            assert_eq!(first.warnings, again.warnings);
        }
        Err(scope::ScopeError::Invalid { issues }) => {
            assert!(!issues.is_empty(), "invalid without an issue");
            let lines = text.split('\n').count();
            for issue in &issues {
                assert!(
                    (1..=lines).contains(&issue.line),
                    "issue on line {} of a {lines}-line file",
                    issue.line
                );
            }
        }
        Err(scope::ScopeError::Io { .. }) => panic!("load_str does no I/O"),
    }
}

/// The body parsers on arbitrary bytes: never panic; the streaming parsers (what a body over
/// the inspection cap goes through) give the same answer however the body is cut into chunks,
/// so that TCP segmentation cannot change what the gateway reads; and for multipart, the
/// whole-body parse and the stream read the same credential parts.
pub fn body(data: &[u8]) {
    let (head, rest) = split_line(data);
    let (sizes, body) = split_line(rest);
    let mut sizes: Vec<usize> = String::from_utf8_lossy(sizes)
        .split(' ')
        .filter_map(|n| n.parse().ok())
        .filter(|&n| (1..=65_536).contains(&n))
        .collect();
    if sizes.is_empty() {
        sizes = vec![1, 2, 3, 5, 7];
    }
    let chunks = cut(body, &sizes);
    if head == b"json" {
        // The whole-body parser: total (no panic), deterministic.
        assert_eq!(json_fields(body), json_fields(body));
        let once = json_streamed(&[body]);
        let pieces = json_streamed(&chunks);
        assert_eq!(
            once, pieces,
            "the JSON scanner's answer depends on the chunks"
        );
    } else if let Some(boundary) = head.strip_prefix(b"multipart ") {
        let Ok(boundary) = std::str::from_utf8(boundary) else {
            return;
        };
        if boundary.is_empty() {
            return;
        }
        let once = multipart_streamed(&[body], boundary);
        let pieces = multipart_streamed(&chunks, boundary);
        assert_eq!(
            once, pieces,
            "the multipart stream's answer depends on the chunks"
        );
        if !body.is_empty() {
            let whole = multipart_whole(body, boundary);
            assert_eq!(
                whole.is_ok(),
                once.is_ok(),
                "whole-body and streamed multipart disagree on validity: {whole:?} / {once:?}"
            );
            if let (Ok(whole), Ok(once)) = (&whole, &once) {
                assert_eq!(
                    whole, once,
                    "whole-body and streamed multipart read other parts"
                );
            }
        }
    }
}

/// (first line, the rest); the whole input and nothing when there is no newline.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

fn cut<'a>(body: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut rest = body;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// Every credential field the JSON scanner reports over `chunks`, as a held body is scanned.
fn json_streamed(chunks: &[&[u8]]) -> Result<Fields, BodyError> {
    let mut scanner = JsonScanner::new(1 << 20);
    let mut fields = Vec::new();
    for chunk in chunks {
        fields.extend(scanner.feed(chunk)?);
    }
    fields.extend(scanner.finish()?);
    Ok(fields)
}

/// Every credential part the multipart stepper reports over `chunks`, as a held body is read.
fn multipart_streamed(chunks: &[&[u8]], boundary: &str) -> Result<Fields, BodyError> {
    let mut stepper = Stepper::new(boundary.to_owned(), usize::MAX);
    let mut fields = Vec::new();
    for chunk in chunks {
        fields.extend(stepper.step(Some(Bytes::copy_from_slice(chunk)))?);
    }
    fields.extend(stepper.step(None)?);
    Ok(fields)
}

/// The whole-body multipart parse. Its stream holds the whole body, so the parse never waits:
/// one poll finishes it.
fn multipart_whole(body: &[u8], boundary: &str) -> Result<Fields, BodyError> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut parse = std::pin::pin!(multipart_fields(
        Bytes::copy_from_slice(body),
        boundary.to_owned()
    ));
    match parse.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the whole-body multipart parse waited for nothing"),
    }
}
