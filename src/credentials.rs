//! Every place a request carries a CI/CD job token, read exactly as the forge reads it.
//!
//! The forge is GitLab: Rails + Rack 2.2 + Doorkeeper. Each parser below follows the Ruby
//! code it stands in for (named on each function), because a token the gateway does not
//! see is a token it does not scope (design.md, "Credential transports" and "Security
//! principles"). Where the forge's own reading is ambiguous or version-dependent the
//! gateway reads *more* candidates, never fewer: an extra candidate can only cost a 400,
//! 401 or 403, a missed one would let a token through unscoped.
//!
//! Request bodies are decoded by `crate::body`; their credential parameters come back here
//! ([`extract_with_body`], [`check_late_field`]) to be classified like every other carrier.
//!
//! Nothing here logs, prints or compares a token in clear: [`JobToken`] shows only a digest
//! prefix, and every comparison of two secrets is constant-time.

use std::borrow::Cow;
use std::fmt;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The Basic-auth user name GitLab reserves for job tokens (`Gitlab::Auth::CI_JOB_USER`).
const CI_JOB_USER: &[u8] = b"gitlab-ci-token";

/// At most this many different prefix-less values from shared carriers on one request.
/// Each one costs the caller a forge lookup, so a request may not ask for hundreds.
const MAX_UNCLASSIFIED: usize = 4;

/// A job-token candidate. Never printed, logged or compared in clear.
#[derive(Clone)]
pub struct JobToken {
    value: Box<str>,
    digest: [u8; 32],
}

impl JobToken {
    pub fn new(value: &str) -> JobToken {
        let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        JobToken {
            value: value.into(),
            digest,
        }
    }

    /// The token itself: only for sending to the forge.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// SHA-256 of the token, computed once at construction.
    pub fn sha256(&self) -> [u8; 32] {
        self.digest
    }
}

impl PartialEq for JobToken {
    fn eq(&self, other: &Self) -> bool {
        digest_eq(&self.digest, &other.digest)
    }
}

impl Eq for JobToken {}

impl fmt::Debug for JobToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobToken(sha256:")?;
        for b in &self.digest[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…)")
    }
}

#[derive(Debug, Default)]
pub struct Credentials {
    /// The job token this request carries, if any: every job-token candidate on the request
    /// had this same value.
    pub job_token: Option<JobToken>,
    /// Distinct prefix-less values from shared carriers (Authorization: Bearer, `token`,
    /// `access_token`, `bearer_token` parameters) that may or may not be job tokens: the
    /// caller asks the forge about them. Excludes any value equal to `job_token`.
    pub unclassified: Vec<JobToken>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("the request carries more than one different CI/CD job token")]
    Conflicting,
    #[error("malformed credential: {0}")]
    Malformed(&'static str),
}

const NOT_VISIBLE_ASCII_HEADER: CredentialError =
    CredentialError::Malformed("a credential header is not visible ASCII");
const NOT_TOKEN_TEXT: CredentialError =
    CredentialError::Malformed("a credential holds characters other than visible ASCII");
const BAD_ESCAPE: CredentialError =
    CredentialError::Malformed("invalid %-escape in a credential parameter");
const TWO_AUTHORIZATIONS: CredentialError =
    CredentialError::Malformed("more than one Authorization header");
const TOO_MANY: CredentialError =
    CredentialError::Malformed("too many different credentials on one request");

/// `query` is the raw query string (without `?`), exactly as received.
/// `prefixes` are the job-token prefixes (default `["glcbt-"]`); a value starting with any of
/// them (case-sensitive) is a job token wherever it is found.
///
/// Allocates nothing when the request carries no credential.
pub fn extract(
    headers: &HeaderMap,
    query: Option<&str>,
    prefixes: &[Box<str>],
) -> Result<Credentials, CredentialError> {
    extract_from(headers, query, None, prefixes)
}

/// [`extract`], plus the credentials `body` (see `crate::body`) found in the request body:
/// they are candidates like any other, so a body token that differs from a header token is a
/// conflict.
pub fn extract_with_body(
    headers: &HeaderMap,
    query: Option<&str>,
    body: Option<&BodyCredentials>,
    prefixes: &[Box<str>],
) -> Result<Credentials, CredentialError> {
    extract_from(headers, query, body, prefixes)
}

/// What a request body carries that may be a credential. Never printed in clear.
#[derive(Default)]
pub struct BodyCredentials {
    /// An urlencoded form body, parsed here with the query's grammar (Rack's
    /// `parse_query(form_vars, '&')`: form bodies split on `&` only).
    pub form: Option<bytes::Bytes>,
    /// Decoded (parameter name, value) pairs from multipart parts and JSON keys, only those
    /// whose name [`is_credential_param`].
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl BodyCredentials {
    pub fn form(form: bytes::Bytes) -> Self {
        BodyCredentials {
            form: Some(form),
            fields: Vec::new(),
        }
    }

    pub fn fields(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        BodyCredentials { form: None, fields }
    }
}

impl fmt::Debug for BodyCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyCredentials")
            .field("form_bytes", &self.form.as_ref().map(|b| b.len()))
            .field("fields", &self.fields.len())
            .finish()
    }
}

/// Whether an already-decoded parameter name (a multipart part's name, a JSON key) names a
/// credential, read like Rack's `normalize_params` (`job_token`, `job_token[]`,
/// `[job_token]`, …).
pub fn is_credential_param(name: &[u8]) -> bool {
    decoded_param_carrier(name).is_some()
}

/// What a credential field found late in a streamed body (after the request was decided on
/// its other credentials) is to the decision already made.
#[derive(Debug, PartialEq, Eq)]
pub enum LateField {
    /// Blank, or a personal/deploy credential: not a job-token candidate.
    NotACandidate,
    /// The job token the request was decided on.
    SameAsDecided,
    /// A job-token candidate the decision did not see (a job token or a value only the forge
    /// could classify): too late to decide on.
    Undecided,
}

/// Classify `value`, read from the body parameter `name`, against `decided`, the job token the
/// request was decided on. A different job token is a conflict, as anywhere else.
pub fn check_late_field(
    name: &[u8],
    value: &[u8],
    decided: Option<&JobToken>,
    prefixes: &[Box<str>],
) -> Result<LateField, CredentialError> {
    let Some(carrier) = decoded_param_carrier(name) else {
        return Ok(LateField::NotACandidate);
    };
    let collector = Collector {
        prefixes,
        job: None,
        unclassified: Vec::new(),
    };
    let Some(found) = collector.classify(value, carrier)? else {
        return Ok(LateField::NotACandidate);
    };
    let same = decided.is_some_and(|t| *t == token_from_bytes(value));
    Ok(match (found, decided) {
        _ if same => LateField::SameAsDecided,
        (Found::Job, Some(_)) => return Err(CredentialError::Conflicting),
        _ => LateField::Undecided,
    })
}

fn decoded_param_carrier(name: &[u8]) -> Option<Carrier> {
    let start = name.iter().position(|&b| b != b'[' && b != b']')?;
    let rest = &name[start..];
    let end = rest
        .iter()
        .position(|&b| b == b'[' || b == b']')
        .unwrap_or(rest.len());
    carrier_named(&rest[..end])
}

fn extract_from<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    body: Option<&'a BodyCredentials>,
    prefixes: &[Box<str>],
) -> Result<Credentials, CredentialError> {
    let mut found = Collector {
        prefixes,
        job: None,
        unclassified: Vec::new(),
    };
    let mut authorization_seen = false;
    for (name, value) in headers {
        let Some(kind) = header_kind(name.as_str().as_bytes()) else {
            continue;
        };
        let text = value
            .to_str()
            .map_err(|_| NOT_VISIBLE_ASCII_HEADER)?
            .as_bytes();
        match kind {
            HeaderKind::Authorization => {
                if authorization_seen {
                    return Err(TWO_AUTHORIZATIONS);
                }
                authorization_seen = true;
                found.authorization(text)?;
            }
            HeaderKind::JobToken => found.offer(text, Carrier::Explicit)?,
            HeaderKind::PersonalOrDeploy => found.offer(text, Carrier::Personal)?,
        }
    }
    if let Some(query) = query {
        found.query(query.as_bytes(), b"&;")?;
    }
    if let Some(body) = body {
        if let Some(form) = &body.form {
            found.query(form, b"&")?;
        }
        for (name, value) in &body.fields {
            if let Some(carrier) = decoded_param_carrier(name) {
                found.offer(value, carrier)?;
            }
        }
    }
    Ok(found.finish())
}

/// How a carrier's value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrier {
    /// `JOB-TOKEN`, `job_token`, Basic user `gitlab-ci-token`: always a job token.
    Explicit,
    /// Bearer, `token`, `access_token`, `bearer_token`: a job token when prefixed, else a
    /// value the caller asks the forge about.
    Shared,
    /// `PRIVATE-TOKEN`, `private_token`, `DEPLOY-TOKEN`, `deploy_token`, Basic passwords of
    /// other users: a job token when prefixed, else a personal or deploy credential that is
    /// none of the gateway's business.
    Personal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Job,
    Unclassified,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeaderKind {
    Authorization,
    JobToken,
    PersonalOrDeploy,
}

/// Rack turns a header name into `HTTP_` + upper case with `-` → `_`, so `JOB-TOKEN`,
/// `job-token` and `JOB_TOKEN` all reach GitLab as `HTTP_JOB_TOKEN`.
fn header_kind(name: &[u8]) -> Option<HeaderKind> {
    match name.len() {
        9 if rack_header_eq(name, b"job-token") => Some(HeaderKind::JobToken),
        12 if rack_header_eq(name, b"deploy-token") => Some(HeaderKind::PersonalOrDeploy),
        13 if rack_header_eq(name, b"authorization") => Some(HeaderKind::Authorization),
        13 if rack_header_eq(name, b"private-token") => Some(HeaderKind::PersonalOrDeploy),
        _ => None,
    }
}

/// `name` equals `want` (lower case, `-` separated) the way Rack's env keys compare.
pub(crate) fn rack_header_eq(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len()
        && name.iter().zip(want).all(|(&n, &w)| {
            let n = if n == b'_' {
                b'-'
            } else {
                n.to_ascii_lowercase()
            };
            n == w
        })
}

struct Collector<'a, 'p> {
    prefixes: &'p [Box<str>],
    /// The first job-token candidate; every later one must equal it.
    job: Option<Cow<'a, [u8]>>,
    /// Distinct prefix-less values from shared carriers.
    unclassified: Vec<Cow<'a, [u8]>>,
}

impl<'a> Collector<'a, '_> {
    /// What `value`, read from `carrier`, is: None when it is no candidate at all.
    fn classify(&self, value: &[u8], carrier: Carrier) -> Result<Option<Found>, CredentialError> {
        // GitLab reads every carrier with `.presence`: blank values are no credential.
        if is_blank(value) {
            return Ok(None);
        }
        let prefixed = self
            .prefixes
            .iter()
            .any(|p| value.starts_with(p.as_bytes()));
        let found = match carrier {
            _ if prefixed => Found::Job,
            Carrier::Explicit => Found::Job,
            Carrier::Shared => Found::Unclassified,
            Carrier::Personal => return Ok(None),
        };
        // A candidate goes to the forge in a header and is hashed: it must be plain visible
        // ASCII. No job token (nor any other forge token) is anything else, so the forge
        // would reject such a value anyway.
        if !value.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(NOT_TOKEN_TEXT);
        }
        Ok(Some(found))
    }

    fn store(&mut self, found: Found, value: Cow<'a, [u8]>) -> Result<(), CredentialError> {
        match found {
            Found::Job => match &self.job {
                Some(seen) if !ct_eq(seen, &value) => return Err(CredentialError::Conflicting),
                Some(_) => {}
                None => self.job = Some(value),
            },
            Found::Unclassified => {
                if !self.unclassified.iter().any(|u| ct_eq(u, &value)) {
                    if self.unclassified.len() >= MAX_UNCLASSIFIED {
                        return Err(TOO_MANY);
                    }
                    self.unclassified.push(value);
                }
            }
        }
        Ok(())
    }

    /// A value borrowed from the request.
    fn offer(&mut self, value: &'a [u8], carrier: Carrier) -> Result<(), CredentialError> {
        match self.classify(value, carrier)? {
            Some(found) => self.store(found, Cow::Borrowed(value)),
            None => Ok(()),
        }
    }

    /// A value decoded from the request: copied only when it is a candidate.
    fn offer_decoded(
        &mut self,
        value: Cow<'a, [u8]>,
        carrier: Carrier,
    ) -> Result<(), CredentialError> {
        match self.classify(&value, carrier)? {
            Some(found) => self.store(found, value),
            None => Ok(()),
        }
    }

    fn offer_copy(&mut self, value: &[u8], carrier: Carrier) -> Result<(), CredentialError> {
        match self.classify(value, carrier)? {
            Some(found) => self.store(found, Cow::Owned(value.to_vec())),
            None => Ok(()),
        }
    }

    /// The `Authorization` header, read by both of the forge's readers:
    /// - Doorkeeper (`Doorkeeper::OAuth::Token.from_bearer_authorization`): the header matches
    ///   `/^Bearer /i` and the token is the header with that removed, verbatim;
    /// - Rails (`ActionController::HttpAuthentication::Basic`): `auth_scheme`/`auth_param` are
    ///   `authorization.to_s.split(" ", 2)`, the scheme compared case-insensitively to
    ///   `basic`, the param decoded with `Base64.decode64` and split at the first `:`.
    ///
    /// Beyond the forge: a prefixed value in any other scheme (`Token glcbt-…`,
    /// `Bearer<TAB>glcbt-…`, a bare `glcbt-…`) or in the Basic user name is a job token too.
    fn authorization(&mut self, header: &'a [u8]) -> Result<(), CredentialError> {
        if header.len() >= 7 && header[..7].eq_ignore_ascii_case(b"bearer ") {
            return self.offer(&header[7..], Carrier::Shared);
        }
        // `request.authorization.present?`: a blank header is no credential.
        let Some((scheme, param)) = ruby_split_space_2(header) else {
            return Ok(());
        };
        if scheme.eq_ignore_ascii_case(b"basic") {
            let decoded = ruby_decode64(param.unwrap_or(b""));
            // `decoded.split(":", 2)`: login and password, or the login alone.
            let (login, password) = match decoded.iter().position(|&b| b == b':') {
                Some(i) => (&decoded[..i], Some(&decoded[i + 1..])),
                None => (&decoded[..], None),
            };
            if let Some(password) = password {
                // GitLab: `login.present? && password.present?` and login == CI_JOB_USER.
                let carrier = if login == CI_JOB_USER {
                    Carrier::Explicit
                } else {
                    Carrier::Personal
                };
                self.offer_copy(password, carrier)?;
            }
            self.offer_copy(login, Carrier::Personal)
        } else {
            self.offer(scheme, Carrier::Personal)?;
            match param {
                Some(param) => self.offer(param, Carrier::Personal),
                None => Ok(()),
            }
        }
    }

    /// The query string, split like Rack 2.2's `QueryParser#parse_nested_query(qs, "&;")`:
    /// pairs separated by `/[&;] */n`, each split at its first `=`, key and value decoded
    /// with `URI.decode_www_form_component`. Rack keeps the last occurrence of a name; the
    /// gateway checks them all. `separators`: `&;` for the query, `&` for a form body.
    fn query(&mut self, query: &'a [u8], separators: &[u8]) -> Result<(), CredentialError> {
        for (i, pair) in query.split(|b| separators.contains(b)).enumerate() {
            // The separator takes the spaces after it; the first pair keeps its own.
            let pair = if i == 0 {
                pair
            } else {
                let spaces = pair.iter().take_while(|&&b| b == b' ').count();
                &pair[spaces..]
            };
            self.pair(pair)?;
        }
        Ok(())
    }

    fn pair(&mut self, pair: &'a [u8]) -> Result<(), CredentialError> {
        if !pair.first().is_some_and(|&b| may_start_credential_key(b)) {
            return Ok(());
        }
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], Some(&pair[i + 1..])),
            None => (pair, None),
        };
        // Cheap: no allocation, and most keys are rejected at their first byte or two.
        let Some(carrier) = param_carrier(key) else {
            return Ok(());
        };
        // Rack raises on any bad escape in the key or the value (the forge answers 400).
        if has_invalid_escape(key) {
            return Err(BAD_ESCAPE);
        }
        // `name` without `=` is nil in Rack: no credential.
        let Some(value) = value else {
            return Ok(());
        };
        let value = form_decode(value).ok_or(BAD_ESCAPE)?;
        self.offer_decoded(value, carrier)
    }

    fn finish(self) -> Credentials {
        let job = self.job.as_deref();
        let job_token = job.map(token_from_bytes);
        let unclassified = self
            .unclassified
            .iter()
            .filter(|u| !job.is_some_and(|j| ct_eq(j, u)))
            .map(|u| token_from_bytes(u))
            .collect();
        Credentials {
            job_token,
            unclassified,
        }
    }
}

/// Candidates are checked to be visible ASCII before they are stored, so this never loses
/// anything; a lossy conversion keeps it panic-free regardless.
fn token_from_bytes(value: &[u8]) -> JobToken {
    // `classify` admits visible ASCII only, so the lossy path is never taken in practice.
    match std::str::from_utf8(value) {
        Ok(text) => JobToken::new(text),
        Err(_) => JobToken::new(&String::from_utf8_lossy(value)),
    }
}

/// Constant-time equality of two SHA-256 digests (a word-wise XOR/OR fold with no early exit,
/// several times cheaper than a byte-wise `subtle` compare on the hot path).
pub fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    constant_time_eq::constant_time_eq_32(a, b)
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Ruby's `ascii_isspace`, used by `String#split(" ")`, and the ASCII part of `[[:space:]]`
/// that ActiveSupport's `blank?` uses.
fn is_ruby_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// ActiveSupport `String#blank?` for ASCII text: empty or only whitespace.
fn is_blank(value: &[u8]) -> bool {
    value.iter().all(|&b| is_ruby_space(b))
}

/// Ruby's awk-style `str.split(" ", 2)`: leading whitespace skipped, the first field ends at
/// the next whitespace, the second field starts after that run of whitespace and runs to the
/// end, verbatim (`"Basic   x y "` → `["Basic", "x y "]`, `"Basic "` → `["Basic", ""]`,
/// `"Basic"` → `["Basic"]`). None for a blank string (`[]`).
fn ruby_split_space_2(s: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let start = s.iter().position(|&b| !is_ruby_space(b))?;
    let rest = &s[start..];
    let Some(end) = rest.iter().position(|&b| is_ruby_space(b)) else {
        return Some((rest, None));
    };
    let after = &rest[end..];
    let param = after
        .iter()
        .position(|&b| !is_ruby_space(b))
        .map_or(&after[after.len()..], |p| &after[p..]);
    Some((&rest[..end], Some(param)))
}

/// The value of one base64 character, or -1: Ruby's `b64_xtable`.
const B64_VALUE: [i8; 256] = {
    let mut table = [-1i8; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < 64 {
        table[alphabet[i] as usize] = i as i8;
        i += 1;
    }
    table
};

/// Ruby's `Base64.decode64(s)`, which is `s.unpack1("m")`: the lenient branch of the `'m'`
/// directive in `pack.c` (`pack_unpack_internal`, `case 'm'`, `len != 0`). Never fails:
/// - a character outside `A-Za-z0-9+/` (whitespace, `-`, `_`, `%`, non-ASCII, …) is skipped;
/// - `=` is skipped too while looking for the 1st and 2nd character of a quantum, but seen
///   while looking for the 3rd or 4th it ends the whole decoding (the rest is ignored);
/// - a final partial quantum of 2 or 3 characters gives 1 or 2 bytes, 1 character gives
///   nothing; missing padding is fine and leftover bits are not checked.
fn ruby_decode64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    let value = |b: u8| B64_VALUE[usize::from(b)];
    let n = input.len();
    let mut i = 0;
    let (mut a, mut b, mut c): (i8, i8, i8) = (-1, -1, -1);
    while i < n {
        a = -1;
        b = -1;
        c = -1;
        while i < n && value(input[i]) == -1 {
            i += 1;
        }
        if i >= n {
            break;
        }
        a = value(input[i]);
        i += 1;
        while i < n && value(input[i]) == -1 {
            i += 1;
        }
        if i >= n {
            break;
        }
        b = value(input[i]);
        i += 1;
        while i < n && value(input[i]) == -1 && input[i] != b'=' {
            i += 1;
        }
        if i >= n || input[i] == b'=' {
            break;
        }
        c = value(input[i]);
        i += 1;
        while i < n && value(input[i]) == -1 && input[i] != b'=' {
            i += 1;
        }
        if i >= n || input[i] == b'=' {
            break;
        }
        let d = value(input[i]);
        i += 1;
        let (a8, b8, c8, d8) = (a as u8, b as u8, c as u8, d as u8);
        out.push(a8 << 2 | b8 >> 4);
        out.push(b8 << 4 | c8 >> 2);
        out.push(c8 << 6 | d8);
        a = -1;
    }
    if a != -1 && b != -1 {
        let (a8, b8) = (a as u8, b as u8);
        out.push(a8 << 2 | b8 >> 4);
        if c != -1 {
            out.push(b8 << 4 | (c as u8) >> 2);
        }
    }
    out
}

/// The credential parameter a raw query key names, if any.
///
/// The name is taken from the decoded key as Rack 2.2's `normalize_params` does:
/// `name =~ /\A[\[\]]*([^\[\]]+)\]*/` — leading `[` and `]` skipped, then everything up to
/// the next bracket — so `job_token`, `job_token[]`, `job_token[a]`, `[job_token]` and
/// `job%5Ftoken` all name `job_token`. (Rack 3 and Rails 8 take the key up to the first
/// `[`; every key they read as `job_token` is one this reads as `job_token`.) Decodes on the
/// fly into a stack buffer only when the key holds `%` or `+`: no allocation, and most keys
/// are rejected at their first byte.
fn param_carrier(raw_key: &[u8]) -> Option<Carrier> {
    if !may_start_credential_key(*raw_key.first()?) {
        return None;
    }
    if !raw_key.iter().any(|&b| b == b'%' || b == b'+') {
        // Decoding would change nothing.
        let start = raw_key.iter().position(|&b| b != b'[' && b != b']')?;
        let rest = &raw_key[start..];
        let end = rest
            .iter()
            .position(|&b| b == b'[' || b == b']')
            .unwrap_or(rest.len());
        return carrier_named(&rest[..end]);
    }
    const LONGEST: usize = 13; // "private_token"
    let mut name = [0u8; LONGEST];
    let mut len = 0;
    for byte in FormDecoded::new(raw_key) {
        match byte {
            b'[' | b']' if len == 0 => {}
            b'[' | b']' => break,
            b'a'..=b'z' | b'_' if len < LONGEST => {
                name[len] = byte;
                len += 1;
            }
            _ => return None,
        }
    }
    carrier_named(&name[..len])
}

/// Undecoded, a credential key starts with a bracket, an escape or a name's first letter.
fn may_start_credential_key(first: u8) -> bool {
    matches!(
        first,
        b'j' | b't' | b'a' | b'b' | b'p' | b'd' | b'[' | b']' | b'%'
    )
}

fn carrier_named(name: &[u8]) -> Option<Carrier> {
    match name {
        b"job_token" => Some(Carrier::Explicit),
        b"token" | b"access_token" | b"bearer_token" => Some(Carrier::Shared),
        b"private_token" | b"deploy_token" => Some(Carrier::Personal),
        _ => None,
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The escape at `s[i]` (`%XX`), if it is one.
fn escape_at(s: &[u8], i: usize) -> Option<u8> {
    let hi = hex_value(*s.get(i + 1)?)?;
    let lo = hex_value(*s.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

/// `URI.decode_www_form_component` raises when `/%(?!\h\h)/` matches.
fn has_invalid_escape(s: &[u8]) -> bool {
    s.iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' && escape_at(s, i).is_none())
}

/// `URI.decode_www_form_component`: `+` is a space, `%XX` a byte; None when an escape is
/// invalid. Borrows when there is nothing to decode.
fn form_decode(s: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !s.iter().any(|&b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    if has_invalid_escape(s) {
        return None;
    }
    Some(Cow::Owned(FormDecoded::new(s).collect()))
}

/// Streaming `decode_www_form_component`; an invalid escape stays a literal `%` (callers
/// check validity separately where it matters).
struct FormDecoded<'s> {
    s: &'s [u8],
    i: usize,
}

impl<'s> FormDecoded<'s> {
    fn new(s: &'s [u8]) -> Self {
        FormDecoded { s, i: 0 }
    }
}

impl Iterator for FormDecoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = *self.s.get(self.i)?;
        self.i += 1;
        Some(match b {
            b'+' => b' ',
            b'%' => match escape_at(self.s, self.i - 1) {
                Some(decoded) => {
                    self.i += 2;
                    decoded
                }
                None => b'%',
            },
            _ => b,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    use proptest::prelude::*;

    const T1: &str = "glcbt-64_aaaaaaaaaaaaaaaaaaaa";
    const T2: &str = "glcbt-64_bbbbbbbbbbbbbbbbbbbb";

    fn prefixes() -> Vec<Box<str>> {
        vec!["glcbt-".into()]
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn run(pairs: &[(&str, &[u8])], query: Option<&str>) -> Result<Credentials, CredentialError> {
        extract(&headers(pairs), query, &prefixes())
    }

    fn job(pairs: &[(&str, &[u8])], query: Option<&str>) -> Option<String> {
        run(pairs, query)
            .unwrap()
            .job_token
            .map(|t| t.expose().to_owned())
    }

    fn unclassified(pairs: &[(&str, &[u8])], query: Option<&str>) -> Vec<String> {
        run(pairs, query)
            .unwrap()
            .unclassified
            .iter()
            .map(|t| t.expose().to_owned())
            .collect()
    }

    fn b64(input: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn basic(user: &str, password: &str) -> Vec<u8> {
        format!("Basic {}", b64(format!("{user}:{password}").as_bytes())).into_bytes()
    }

    fn malformed<T>(r: Result<T, CredentialError>) -> bool {
        matches!(r, Err(CredentialError::Malformed(_)))
    }

    // ---- JobToken ----

    #[test]
    fn job_token_digest_and_equality() {
        let t = JobToken::new("abc");
        assert_eq!(
            hex::encode(t.sha256()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(t.expose(), "abc");
        assert_eq!(t, JobToken::new("abc"));
        assert_ne!(t, JobToken::new("abd"));
        assert_eq!(format!("{t:?}"), "JobToken(sha256:ba7816bf8f01…)");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let creds = run(
            &[("job-token", T1.as_bytes())],
            Some("token=plain-secret-value"),
        )
        .unwrap();
        let shown = format!("{creds:?} {creds:#?}");
        assert!(!shown.contains(T1), "{shown}");
        assert!(!shown.contains("plain-secret-value"), "{shown}");
    }

    // ---- nothing ----

    #[test]
    fn no_credentials() {
        let c = run(
            &[
                ("accept", b"*/*"),
                ("x-token", T1.as_bytes()),
                ("cookie", T1.as_bytes()),
            ],
            None,
        )
        .unwrap();
        assert!(c.job_token.is_none() && c.unclassified.is_empty());
        let c = run(
            &[],
            Some("per_page=20&page=1&ref=glcbt-x&tokens=glcbt-y&xtoken=glcbt-z"),
        )
        .unwrap();
        assert!(c.job_token.is_none() && c.unclassified.is_empty());
        let c = run(&[], Some("")).unwrap();
        assert!(c.job_token.is_none() && c.unclassified.is_empty());
    }

    // ---- JOB-TOKEN header ----

    #[test]
    fn job_token_header_any_case_and_underscore() {
        for name in [
            "JOB-TOKEN",
            "Job-Token",
            "job-token",
            "JOB_TOKEN",
            "job_token",
            "Job_Token",
        ] {
            assert_eq!(
                job(&[(name, b"legacy-no-prefix")], None).as_deref(),
                Some("legacy-no-prefix"),
                "{name}"
            );
        }
        assert_eq!(job(&[("jobtoken", T1.as_bytes())], None), None);
        assert_eq!(job(&[("job-tokens", T1.as_bytes())], None), None);
    }

    #[test]
    fn job_token_header_blank_is_no_candidate() {
        assert_eq!(job(&[("job-token", b"")], None), None);
        assert_eq!(job(&[("job-token", b" \t ")], None), None);
        assert_eq!(
            job(&[("job-token", b""), ("job-token", T1.as_bytes())], None).as_deref(),
            Some(T1)
        );
    }

    #[test]
    fn job_token_header_twice() {
        let same = [("job-token", T1.as_bytes()), ("job_token", T1.as_bytes())];
        assert_eq!(job(&same, None).as_deref(), Some(T1));
        let different = [("job-token", T1.as_bytes()), ("JOB-TOKEN", T2.as_bytes())];
        assert_eq!(
            run(&different, None).unwrap_err(),
            CredentialError::Conflicting
        );
    }

    #[test]
    fn credential_header_must_be_visible_ascii() {
        assert!(malformed(run(&[("job-token", b"glcbt-\xc3\xa9")], None)));
        assert!(malformed(run(&[("private-token", b"\xff")], None)));
        assert!(malformed(run(&[("authorization", b"Bearer \xff")], None)));
        // Interior whitespace: not a token the forge could have issued.
        assert!(malformed(run(&[("job-token", b"glcbt-a b")], None)));
        assert!(malformed(run(&[("job-token", b"glcbt-a\tb")], None)));
        // Other headers may hold anything.
        assert!(run(&[("x-custom", b"\xff\xfe")], None)
            .unwrap()
            .job_token
            .is_none());
    }

    // ---- PRIVATE-TOKEN / DEPLOY-TOKEN headers ----

    #[test]
    fn private_and_deploy_token_headers() {
        for name in [
            "PRIVATE-TOKEN",
            "private_token",
            "Deploy-Token",
            "DEPLOY_TOKEN",
        ] {
            assert_eq!(
                job(&[(name, T1.as_bytes())], None).as_deref(),
                Some(T1),
                "{name}"
            );
            let c = run(&[(name, b"glpat-personal")], None).unwrap();
            assert!(c.job_token.is_none() && c.unclassified.is_empty(), "{name}");
        }
        // Personal credentials may hold spaces: they are not ours to judge.
        assert!(run(&[("private-token", b"a b")], None)
            .unwrap()
            .job_token
            .is_none());
    }

    // ---- Authorization: Bearer ----

    #[test]
    fn bearer() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let header = format!("{scheme} {T1}");
            assert_eq!(
                job(&[("authorization", header.as_bytes())], None).as_deref(),
                Some(T1),
                "{header}"
            );
        }
        assert_eq!(
            unclassified(&[("authorization", b"Bearer oauth-or-legacy")], None),
            vec!["oauth-or-legacy"]
        );
        assert_eq!(
            job(&[("authorization", b"Bearer oauth-or-legacy")], None),
            None
        );
        // Doorkeeper removes exactly "Bearer ": a second space stays in the token.
        assert!(malformed(run(
            &[("authorization", format!("Bearer  {T1}").as_bytes())],
            None
        )));
        assert!(malformed(run(&[("authorization", b"Bearer a b")], None)));
        // Nothing after the scheme: no token.
        assert!(run(&[("authorization", b"Bearer")], None)
            .unwrap()
            .unclassified
            .is_empty());
        assert!(run(&[("authorization", b"Bearer ")], None)
            .unwrap()
            .unclassified
            .is_empty());
        // Not Doorkeeper's pattern; prefixed values still count as job tokens.
        assert_eq!(
            job(
                &[("authorization", format!("Bearer\t{T1}").as_bytes())],
                None
            )
            .as_deref(),
            Some(T1)
        );
        assert!(run(&[("authorization", b"Bearer\tplain")], None)
            .unwrap()
            .unclassified
            .is_empty());
        assert!(run(&[("authorization", b"Bearerx plain")], None)
            .unwrap()
            .unclassified
            .is_empty());
    }

    #[test]
    fn other_schemes() {
        assert_eq!(
            job(&[("authorization", format!("Token {T1}").as_bytes())], None).as_deref(),
            Some(T1)
        );
        assert_eq!(
            job(&[("authorization", T1.as_bytes())], None).as_deref(),
            Some(T1)
        );
        let c = run(
            &[("authorization", b"Digest username=\"a\", realm=\"b\"")],
            None,
        )
        .unwrap();
        assert!(c.job_token.is_none() && c.unclassified.is_empty());
        let c = run(&[("authorization", b"Negotiate YIIB")], None).unwrap();
        assert!(c.job_token.is_none() && c.unclassified.is_empty());
    }

    #[test]
    fn two_authorization_headers() {
        let two = [
            ("authorization", b"Bearer a".as_slice()),
            ("authorization", b"Bearer a".as_slice()),
        ];
        assert!(malformed(run(&two, None)));
    }

    // ---- Authorization: Basic ----

    #[test]
    fn basic_ci_job_user() {
        assert_eq!(
            job(&[("authorization", &basic("gitlab-ci-token", T1))], None).as_deref(),
            Some(T1)
        );
        // Explicit carrier: prefix or not.
        assert_eq!(
            job(
                &[("authorization", &basic("gitlab-ci-token", "legacy"))],
                None
            )
            .as_deref(),
            Some("legacy")
        );
        // The password runs to the end, colons included.
        assert_eq!(
            job(&[("authorization", &basic("gitlab-ci-token", "a:b"))], None).as_deref(),
            Some("a:b")
        );
        // The user name is compared exactly.
        assert_eq!(
            job(
                &[("authorization", &basic("GITLAB-CI-TOKEN", "legacy"))],
                None
            ),
            None
        );
        assert_eq!(
            job(
                &[("authorization", &basic("gitlab-ci-token ", "legacy"))],
                None
            ),
            None
        );
    }

    #[test]
    fn basic_scheme_spelling_and_whitespace() {
        let enc = b64(format!("gitlab-ci-token:{T1}").as_bytes());
        for header in [
            format!("basic {enc}"),
            format!("BASIC {enc}"),
            format!("Basic    {enc}"),
            format!("Basic\t{enc}"),
            format!("Basic \t {enc}"),
            format!(" Basic {enc}"),
            format!("Basic {enc} "),
        ] {
            assert_eq!(
                job(&[("authorization", header.as_bytes())], None).as_deref(),
                Some(T1),
                "{header:?}"
            );
        }
        // No separator: the scheme is the whole header.
        assert_eq!(
            job(&[("authorization", format!("Basic{enc}").as_bytes())], None),
            None
        );
    }

    #[test]
    fn basic_lenient_base64() {
        let enc = b64(format!("gitlab-ci-token:{T1}").as_bytes());
        // Junk characters anywhere are skipped by Ruby's decode64.
        let junk: String = enc.chars().flat_map(|c| [c, '*']).collect();
        assert_eq!(
            job(
                &[("authorization", format!("Basic {junk}").as_bytes())],
                None
            )
            .as_deref(),
            Some(T1)
        );
        let spaced: String = enc.chars().flat_map(|c| [c, ' ', '\t']).collect();
        assert_eq!(
            job(
                &[("authorization", format!("Basic {spaced}").as_bytes())],
                None
            )
            .as_deref(),
            Some(T1)
        );
        // Missing padding.
        let unpadded = enc.trim_end_matches('=');
        assert_eq!(
            job(
                &[("authorization", format!("Basic {unpadded}").as_bytes())],
                None
            )
            .as_deref(),
            Some(T1)
        );
        // '=' in the 3rd/4th place ends decoding: the rest is ignored.
        // ("gitlab-ci-token:abc" is 19 bytes: its encoding ends in "==".)
        let cut = format!("Basic {}xxxxYWJj", b64(b"gitlab-ci-token:abc"));
        assert!(cut.ends_with("==xxxxYWJj"));
        assert_eq!(
            job(&[("authorization", cut.as_bytes())], None).as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn basic_missing_or_blank_parts() {
        assert_eq!(
            job(
                &[(
                    "authorization",
                    format!("Basic {}", b64(b"gitlab-ci-token")).as_bytes()
                )],
                None
            ),
            None
        );
        assert_eq!(
            job(&[("authorization", &basic("gitlab-ci-token", ""))], None),
            None
        );
        assert_eq!(
            job(
                &[("authorization", &basic("gitlab-ci-token", "  \t"))],
                None
            ),
            None
        );
        assert_eq!(job(&[("authorization", b"Basic")], None), None);
        assert_eq!(job(&[("authorization", b"Basic ")], None), None);
        assert_eq!(job(&[("authorization", b"Basic !!!!")], None), None);
        assert_eq!(job(&[("authorization", b"   ")], None), None);
        // Not visible ASCII once decoded: rejected.
        let binary = format!("Basic {}", b64(b"gitlab-ci-token:glcbt-\xff"));
        assert!(malformed(run(
            &[("authorization", binary.as_bytes())],
            None
        )));
        let spaced = format!("Basic {}", b64(b"gitlab-ci-token:glcbt- x"));
        assert!(malformed(run(
            &[("authorization", spaced.as_bytes())],
            None
        )));
    }

    #[test]
    fn basic_other_users() {
        // A prefixed password under any user name is a job token.
        assert_eq!(
            job(&[("authorization", &basic("oauth2", T1))], None).as_deref(),
            Some(T1)
        );
        assert_eq!(
            job(&[("authorization", &basic("", T1))], None).as_deref(),
            Some(T1)
        );
        // A prefix-less one is a personal credential: not a candidate, not unclassified.
        let c = run(
            &[("authorization", &basic("alice", "hunter2 with spaces é"))],
            None,
        )
        .unwrap();
        assert!(c.job_token.is_none() && c.unclassified.is_empty());
        let c = run(&[("authorization", &basic("oauth2", "glpat-xyz"))], None).unwrap();
        assert!(c.job_token.is_none() && c.unclassified.is_empty());
        // A prefixed user name counts too (some clients put the token there).
        assert_eq!(
            job(&[("authorization", &basic(T1, "x"))], None).as_deref(),
            Some(T1)
        );
        assert_eq!(
            job(
                &[(
                    "authorization",
                    format!("Basic {}", b64(T1.as_bytes())).as_bytes()
                )],
                None
            )
            .as_deref(),
            Some(T1)
        );
        assert_eq!(
            run(&[("authorization", &basic(T1, T2))], None).unwrap_err(),
            CredentialError::Conflicting
        );
    }

    // ---- Ruby's Base64.decode64 ----

    #[test]
    fn decode64_matches_ruby() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"YWJj", b"abc"),
            (b"YWJjZA==", b"abcd"),
            (b"YWJjZA", b"abcd"),
            (b"YWJjZA=", b"abcd"),
            (b"YWJjZGU=", b"abcde"),
            (b"YWJjZGU", b"abcde"),
            (b"Y", b""),
            (b"YQ", b"a"),
            // Leftover bits are not checked.
            (b"YR", b"a"),
            (b"YWK", b"ab"),
            // Whitespace and newlines (ruby/spec).
            (b"YWJj\nREVG\n", b"abcDEF"),
            (b" Y W\tJ j ", b"abc"),
            // Invalid characters are skipped (ruby/spec: "dGV%zdA==" → "test").
            (b"dGV%zdA==", b"test"),
            (b"YW-J_j", b"abc"),
            (b"Y\xc3\xa9WJj", b"abc"),
            (b"\x00YWJj\x00", b"abc"),
            // '=' where the 1st or 2nd character of a quantum is expected is skipped.
            (b"=YWJj", b"abc"),
            (b"====YWJj", b"abc"),
            (b"Y=WJj", b"abc"),
            (b"YWJj=ZA==", b"abcd"),
            // '=' where the 3rd or 4th is expected ends everything.
            (b"YQ==YWJj", b"a"),
            (b"YW=Jj", b"a"),
            (b"YWJ=j", b"ab"),
            (b"YWJ =j", b"ab"),
            (b"YQ=", b"a"),
            (b"YWJj====", b"abc"),
            (b"====", b""),
            (b"A===", b""),
        ];
        for (input, want) in cases {
            assert_eq!(
                ruby_decode64(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn decode64_round_trips_all_lengths() {
        let data: Vec<u8> = (0u8..=255).collect();
        for len in 0..data.len() {
            assert_eq!(ruby_decode64(b64(&data[..len]).as_bytes()), &data[..len]);
        }
    }

    #[test]
    fn ruby_awk_split() {
        assert_eq!(ruby_split_space_2(b""), None);
        assert_eq!(ruby_split_space_2(b" \t"), None);
        assert_eq!(ruby_split_space_2(b"Basic"), Some((&b"Basic"[..], None)));
        assert_eq!(
            ruby_split_space_2(b"Basic "),
            Some((&b"Basic"[..], Some(&b""[..])))
        );
        assert_eq!(
            ruby_split_space_2(b"  Basic \t x y "),
            Some((&b"Basic"[..], Some(&b"x y "[..])))
        );
    }

    // ---- query ----

    #[test]
    fn query_job_token() {
        assert_eq!(
            job(&[], Some("job_token=legacy")).as_deref(),
            Some("legacy")
        );
        assert_eq!(
            job(&[], Some(&format!("a=1&job_token={T1}&b=2"))).as_deref(),
            Some(T1)
        );
        assert_eq!(job(&[], Some("job_token")), None);
        assert_eq!(job(&[], Some("job_token=")), None);
        assert_eq!(job(&[], Some("job_token=+")), None);
        assert_eq!(job(&[], Some("job_token=%20%09")), None);
        // Names are case-sensitive.
        assert_eq!(job(&[], Some("JOB_TOKEN=x&Job_Token=y")), None);
        assert_eq!(
            job(
                &[],
                Some("job-token=x&jobtoken=y&job_tokens=z&xjob_token=w")
            ),
            None
        );
    }

    #[test]
    fn query_separators() {
        assert_eq!(
            job(&[], Some(&format!("a=1;job_token={T1}"))).as_deref(),
            Some(T1)
        );
        assert_eq!(
            job(&[], Some(&format!("a=1;   job_token={T1}"))).as_deref(),
            Some(T1)
        );
        assert_eq!(
            job(&[], Some(&format!("a=1&  job_token={T1}"))).as_deref(),
            Some(T1)
        );
        assert_eq!(
            job(&[], Some(&format!("&&;;job_token={T1}&&"))).as_deref(),
            Some(T1)
        );
        assert_eq!(
            job(&[], Some(&format!("job_token={T1};rest"))).as_deref(),
            Some(T1)
        );
        // Only spaces after a separator are dropped: a leading one stays in the key.
        assert_eq!(job(&[], Some(&format!(" job_token={T1}"))), None);
        // `=` inside the value belongs to it.
        assert_eq!(job(&[], Some("job_token=a=b")).as_deref(), Some("a=b"));
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            job(&[], Some("job_token=glcbt-a%2Bb")).as_deref(),
            Some("glcbt-a+b")
        );
        assert_eq!(
            job(&[], Some("job_token=glcbt-a%2bb")).as_deref(),
            Some("glcbt-a+b")
        );
        assert_eq!(
            job(&[], Some("job_token=%67lcbt-x")).as_deref(),
            Some("glcbt-x")
        );
        // `+` is a space: a token cannot hold one.
        assert!(malformed(run(&[], Some("job_token=glcbt+x"))));
        assert_eq!(job(&[], Some("job%5Ftoken=x")).as_deref(), Some("x"));
        assert_eq!(job(&[], Some("job%5ftoken=x")).as_deref(), Some("x"));
        assert_eq!(
            job(&[], Some("%6A%6F%62%5F%74%6F%6B%65%6E=x")).as_deref(),
            Some("x")
        );
        assert_eq!(job(&[], Some("job+token=x")), None);
        // A prefixed value found via an encoded key of a shared carrier.
        assert_eq!(
            job(&[], Some(&format!("acc%65ss_token={T1}"))).as_deref(),
            Some(T1)
        );
    }

    #[test]
    fn query_brackets() {
        for q in [
            "job_token[]=x",
            "job_token[a]=x",
            "job_token[][a]=x",
            "job_token[=x",
            "job_token]=x",
            "[job_token]=x",
            "[]job_token=x",
            "]]job_token[[=x",
            "job_token%5B%5D=x",
            "%5Bjob_token%5D=x",
        ] {
            assert_eq!(job(&[], Some(q)).as_deref(), Some("x"), "{q}");
        }
        assert_eq!(job(&[], Some("a[job_token]=x")), None);
        assert_eq!(job(&[], Some("[]=x&[[]]=y")), None);
    }

    #[test]
    fn query_duplicates() {
        assert_eq!(
            job(&[], Some(&format!("job_token={T1}&job_token={T1}"))).as_deref(),
            Some(T1)
        );
        assert_eq!(
            run(&[], Some(&format!("job_token={T1}&job_token={T2}"))).unwrap_err(),
            CredentialError::Conflicting
        );
        // Rack keeps the last; we check all, so an earlier different one conflicts too.
        assert_eq!(
            run(&[], Some("job_token=a;job_token=b")).unwrap_err(),
            CredentialError::Conflicting
        );
        assert_eq!(
            run(&[], Some(&format!("job_token[]={T1}&job_token={T2}"))).unwrap_err(),
            CredentialError::Conflicting
        );
        // A blank one is no candidate.
        assert_eq!(
            job(&[], Some(&format!("job_token=&job_token={T1}"))).as_deref(),
            Some(T1)
        );
    }

    #[test]
    fn query_invalid_escapes() {
        for q in [
            "job_token=%zz",
            "job_token=%",
            "job_token=%4",
            "job_token=ab%4g",
            "job_token[%zz]=x",
            "job_token[%]=x",
            "private_token=%zz",
            "token=%",
            "deploy_token=a%",
        ] {
            assert!(malformed(run(&[], Some(q))), "{q}");
        }
        // Not a credential parameter: not ours (the forge answers 400 on its own).
        for q in [
            "per_page=%zz",
            "a%=b",
            "job%zztoken=x",
            "%=%",
            "ref=%&page=1",
        ] {
            let c = run(&[], Some(q)).unwrap();
            assert!(c.job_token.is_none() && c.unclassified.is_empty(), "{q}");
        }
    }

    #[test]
    fn query_shared_carriers() {
        for name in ["token", "access_token", "bearer_token"] {
            assert_eq!(
                job(&[], Some(&format!("{name}={T1}"))).as_deref(),
                Some(T1),
                "{name}"
            );
            assert_eq!(
                unclassified(&[], Some(&format!("{name}=glrt-runner"))),
                vec!["glrt-runner"],
                "{name}"
            );
        }
        for name in ["private_token", "deploy_token"] {
            assert_eq!(
                job(&[], Some(&format!("{name}={T1}"))).as_deref(),
                Some(T1),
                "{name}"
            );
            let c = run(&[], Some(&format!("{name}=glpat-x"))).unwrap();
            assert!(c.job_token.is_none() && c.unclassified.is_empty(), "{name}");
        }
        // Distinct values only, in order of appearance.
        assert_eq!(
            unclassified(
                &[("authorization", b"Bearer one")],
                Some("token=two&access_token=one&bearer_token=two")
            ),
            vec!["one", "two"]
        );
    }

    #[test]
    fn unclassified_excludes_the_job_token() {
        let c = run(
            &[],
            Some("job_token=legacy&token=legacy&access_token=other"),
        )
        .unwrap();
        assert_eq!(c.job_token.as_ref().map(|t| t.expose()), Some("legacy"));
        assert_eq!(
            c.unclassified
                .iter()
                .map(|t| t.expose())
                .collect::<Vec<_>>(),
            vec!["other"]
        );
        let c = run(
            &[("authorization", b"Bearer legacy")],
            Some("job_token=legacy"),
        )
        .unwrap();
        assert!(c.unclassified.is_empty());
    }

    #[test]
    fn too_many_unclassified() {
        let q: Vec<String> = (0..MAX_UNCLASSIFIED)
            .map(|i| format!("token=v{i}"))
            .collect();
        assert_eq!(
            run(&[], Some(&q.join("&"))).unwrap().unclassified.len(),
            MAX_UNCLASSIFIED
        );
        let q = format!("{}&access_token=one-more", q.join("&"));
        assert!(malformed(run(&[], Some(&q))));
        // Repeats of one value are one value.
        let q = vec!["token=same"; 100].join("&");
        assert_eq!(run(&[], Some(&q)).unwrap().unclassified.len(), 1);
    }

    #[test]
    fn late_body_fields() {
        let p = prefixes();
        let decided = JobToken::new(T1);
        let check = |name: &str, value: &str, d: Option<&JobToken>| {
            check_late_field(name.as_bytes(), value.as_bytes(), d, &p)
        };
        assert_eq!(
            check("token", T1, Some(&decided)),
            Ok(LateField::SameAsDecided)
        );
        assert_eq!(
            check("job_token[]", T1, Some(&decided)),
            Ok(LateField::SameAsDecided)
        );
        assert_eq!(
            check("job_token", T2, Some(&decided)),
            Err(CredentialError::Conflicting)
        );
        assert_eq!(
            check("private_token", T2, Some(&decided)),
            Err(CredentialError::Conflicting)
        );
        assert_eq!(check("job_token", T1, None), Ok(LateField::Undecided));
        assert_eq!(
            check("token", "glptt-x", Some(&decided)),
            Ok(LateField::Undecided)
        );
        assert_eq!(
            check("private_token", "glpat-x", None),
            Ok(LateField::NotACandidate)
        );
        assert_eq!(check("token", "  ", None), Ok(LateField::NotACandidate));
        assert_eq!(
            check("content", T2, Some(&decided)),
            Ok(LateField::NotACandidate)
        );
        assert!(malformed(check("job_token", "a b", None)));
    }

    #[test]
    fn configurable_prefixes() {
        let custom: Vec<Box<str>> = vec!["acme-glcbt-".into(), "glcbt-".into()];
        let c = extract(
            &headers(&[("authorization", b"Bearer acme-glcbt-xyz")]),
            None,
            &custom,
        )
        .unwrap();
        assert_eq!(
            c.job_token.map(|t| t.expose().to_owned()).as_deref(),
            Some("acme-glcbt-xyz")
        );
        // Case-sensitive.
        let c = extract(
            &headers(&[("authorization", b"Bearer GLCBT-xyz")]),
            None,
            &custom,
        )
        .unwrap();
        assert!(c.job_token.is_none());
        // No prefixes: explicit carriers still count, shared ones are all unclassified.
        let c = extract(
            &headers(&[("job-token", b"a")]),
            Some(&format!("token={T1}")),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.job_token.map(|t| t.expose().to_owned()).as_deref(),
            Some("a")
        );
        assert_eq!(c.unclassified.len(), 1);
    }

    // ---- across carriers ----

    #[test]
    fn conflicts_across_carriers() {
        let b = basic("gitlab-ci-token", T2);
        assert_eq!(
            run(&[("job-token", T1.as_bytes()), ("authorization", &b)], None).unwrap_err(),
            CredentialError::Conflicting
        );
        assert_eq!(
            run(&[("authorization", &b)], Some(&format!("job_token={T1}"))).unwrap_err(),
            CredentialError::Conflicting
        );
        let bearer = format!("Bearer {T1}");
        assert_eq!(
            run(
                &[
                    ("authorization", bearer.as_bytes()),
                    ("private-token", T2.as_bytes())
                ],
                None
            )
            .unwrap_err(),
            CredentialError::Conflicting
        );
        assert_eq!(
            run(
                &[("deploy-token", T2.as_bytes())],
                Some(&format!("token={T1}"))
            )
            .unwrap_err(),
            CredentialError::Conflicting
        );
        // An explicit prefix-less token and a prefixed one elsewhere.
        assert_eq!(
            run(
                &[("job-token", b"legacy")],
                Some(&format!("private_token={T1}"))
            )
            .unwrap_err(),
            CredentialError::Conflicting
        );
        // The same token everywhere is one candidate (runners do that).
        let all = run(
            &[
                ("job-token", T1.as_bytes()),
                ("private-token", T1.as_bytes()),
                ("authorization", &basic("gitlab-ci-token", T1)),
            ],
            Some(&format!("job_token={T1}&token={T1}&private_token={T1}")),
        )
        .unwrap();
        assert_eq!(all.job_token, Some(JobToken::new(T1)));
        assert!(all.unclassified.is_empty());
        // A prefix-less shared value does not conflict: the caller asks the forge.
        let c = run(&[("job-token", T1.as_bytes())], Some("token=glrt-runner")).unwrap();
        assert_eq!(c.job_token, Some(JobToken::new(T1)));
        assert_eq!(c.unclassified, vec![JobToken::new("glrt-runner")]);
    }

    // ---- properties ----

    const NAMES: &[&str] = &[
        "authorization",
        "job-token",
        "job_token",
        "private-token",
        "private_token",
        "deploy-token",
        "deploy_token",
        "accept",
        "x-job-token",
    ];

    fn header_strategy() -> impl Strategy<Value = (usize, Vec<u8>)> {
        (
            0..NAMES.len(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..40),
                "(Basic|Bearer|basic|BEARER|Token)[ \t]{0,3}[A-Za-z0-9+/=:_ \t.-]{0,40}"
                    .prop_map(String::into_bytes),
                "glcbt-[!-~]{0,20}".prop_map(String::into_bytes),
            ],
        )
    }

    fn query_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(
                "(job_token|token|access_token|bearer_token|private_token|deploy_token|job%5Ftoken|a|\\[|\\]|%|%2|%zz|\\+|=|&|;| )*",
                0..8
            )
            .prop_map(|v| v.concat()),
        ]
    }

    /// Percent-encode every byte: Rack decodes it back whatever it is.
    fn enc(s: &str) -> String {
        utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
    }

    /// Put `token` on the request in the carrier `which`.
    fn place(which: usize, token: &str, map: &mut HeaderMap, query: &mut Vec<String>) {
        let mut header = |name: &str, value: String| {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(&value).unwrap(),
            );
        };
        match which {
            0 => header("job-token", token.to_owned()),
            1 => header("job_token", token.to_owned()),
            2 => query.push(format!("job_token={}", enc(token))),
            3 => query.push(format!("{}={}", enc("job_token"), enc(token))),
            4 => query.push(format!("job_token[]={}", enc(token))),
            5 => header(
                "authorization",
                String::from_utf8(basic("gitlab-ci-token", token)).unwrap(),
            ),
            6 => header(
                "authorization",
                format!(
                    "basic\t{}",
                    b64(format!("gitlab-ci-token:{token}").as_bytes())
                ),
            ),
            // Shared and personal carriers: prefixed tokens only.
            7 => header("authorization", format!("Bearer glcbt-{token}")),
            8 => header("private-token", format!("glcbt-{token}")),
            9 => header("deploy_token", format!("glcbt-{token}")),
            10 => query.push(format!("token=glcbt-{}", enc(token))),
            11 => query.push(format!("access_token=glcbt-{}", enc(token))),
            12 => query.push(format!("bearer_token=glcbt-{}", enc(token))),
            13 => query.push(format!("private_token=glcbt-{}", enc(token))),
            14 => header(
                "authorization",
                String::from_utf8(basic("someone", &format!("glcbt-{token}"))).unwrap(),
            ),
            _ => query.push(format!("deploy_token=glcbt-{}", enc(token))),
        }
    }

    const EXPLICIT: usize = 7;
    const CARRIERS: usize = 16;

    fn uses_authorization(which: usize) -> bool {
        matches!(which, 5 | 6 | 7 | 14)
    }

    fn expected(which: usize, token: &str) -> String {
        if which < EXPLICIT {
            token.to_owned()
        } else {
            format!("glcbt-{token}")
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn never_panics(hs in proptest::collection::vec(header_strategy(), 0..6), q in proptest::option::of(query_strategy())) {
            let mut map = HeaderMap::new();
            for (name, value) in hs {
                if let Ok(v) = HeaderValue::from_bytes(&value) {
                    map.append(HeaderName::from_static(NAMES[name]), v);
                }
            }
            let _ = extract(&map, q.as_deref(), &prefixes());
            let _ = extract(&map, q.as_deref(), &[]);
            let _ = extract(&map, q.as_deref(), &["".into()]);
        }

        #[test]
        fn decode64_never_panics(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            let out = ruby_decode64(&input);
            prop_assert!(out.len() <= input.len() * 3 / 4 + 1);
        }

        #[test]
        fn explicit_carrier_always_found(
            token in "[!-~]{1,48}",
            which in 0..CARRIERS,
            noise in proptest::collection::vec("[a-z_]{1,8}=[a-z0-9%]{0,8}", 0..4),
        ) {
            let mut map = HeaderMap::new();
            map.append("accept", HeaderValue::from_static("*/*"));
            let mut query: Vec<String> = noise.into_iter().filter(|p| param_carrier(p.split('=').next().unwrap_or("").as_bytes()).is_none()).collect();
            place(which, &token, &mut map, &mut query);
            let q = query.join("&");
            let creds = extract(&map, Some(&q), &prefixes()).unwrap();
            let want = expected(which, &token);
            prop_assert_eq!(creds.job_token.as_ref().map(|t| t.expose()), Some(want.as_str()));
            prop_assert_eq!(creds.job_token, Some(JobToken::new(&want)));
        }

        #[test]
        fn two_different_tokens_conflict(
            t1 in "[!-~]{1,32}",
            t2 in "[!-~]{1,32}",
            c1 in 0..CARRIERS,
            c2 in 0..CARRIERS,
        ) {
            let (w1, w2) = (expected(c1, &t1), expected(c2, &t2));
            prop_assume!(w1 != w2);
            prop_assume!(!(uses_authorization(c1) && uses_authorization(c2)));
            let mut map = HeaderMap::new();
            let mut query = Vec::new();
            place(c1, &t1, &mut map, &mut query);
            place(c2, &t2, &mut map, &mut query);
            let q = query.join(";");
            prop_assert_eq!(extract(&map, Some(&q), &prefixes()).unwrap_err(), CredentialError::Conflicting);
        }

        #[test]
        fn debug_never_contains_the_token(token in "[A-Za-z0-9_-]{16,64}", which in 0..CARRIERS) {
            let t = JobToken::new(&token);
            let shown = format!("{t:?}");
            prop_assert!(!shown.contains(&token));
            let mut map = HeaderMap::new();
            let mut query = Vec::new();
            place(which, &token, &mut map, &mut query);
            query.push(format!("token={token}x"));
            let creds = extract(&map, Some(&query.join("&")), &prefixes()).unwrap();
            let shown = format!("{creds:?}{creds:#?}");
            prop_assert!(!shown.contains(token.as_str()));
        }
    }
}
