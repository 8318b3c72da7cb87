//! Which project a request acts on, read from the raw request path exactly as the forge
//! (GitLab: nginx → Workhorse → Rails/Grape) reads it.
//!
//! Only requests that carry a job token come here. The parser is deliberately narrow: it
//! recognises the project API (`/api/v4/projects/:id/...`), the job API, a short list of
//! project-less routes, and the Git smart HTTP / LFS routes. Everything else is
//! [`Target::Unattributed`], which the handler denies. Anything the forge could read in a
//! different way than the gateway does is refused with a [`TargetError`] (HTTP 400).
//!
//! Facts this relies on (GitLab source):
//! - `lib/api/helpers.rb` `find_project`: an `:id` of ASCII digits is a lookup by id, a value
//!   containing `/` after URL decoding is a full-path lookup, anything else finds nothing.
//!   The `:id` segment is `[^/]+` (`NAMESPACE_OR_PROJECT_REQUIREMENTS`), decoded once.
//! - Grape builds `params` as the query/body params deep-merged *with the routing args on
//!   top*, so `?id=` in the query cannot replace the `:id` of the path. The query therefore
//!   never changes the target.
//! - `config/routes/git_http.rb`: `*repository_path` must match `<full path>.git` (the regex is
//!   case-sensitive, as is Workhorse's `^/.+\.git/` and `Gitlab::RepoPath`'s
//!   `delete_suffix('.git')`); `<full path>/info/refs` redirects to the `.git` form.
//! - `Gitlab::RepoPath.parse`: strips `.git`, then tries a project with the whole path, then
//!   the `.wiki` suffix (project wiki), `snippets/<n>` (snippet), `.design` suffix (design
//!   repository). Suffixes are compared case-sensitively.
//! - `Gitlab::PathRegex`: no namespace or project segment may end in `.git` (case-sensitive in
//!   GitLab), so the first segment ending in `.git` ends the repository path.
//! - nginx merges `//` and resolves dot segments (also percent-encoded ones) and Workhorse
//!   `path.Clean`s the path for its own routing, while Rails sees the raw path: any path
//!   where those readings could differ is refused.
//!
//! Choices where the forge's reading depends on its database, or is not worth following:
//! - A percent-encoded fixed segment (`/api/v4/%70rojects/5`), a version other than `v4`, or
//!   any `/api/...` route not listed here is Unattributed, never an error: Unattributed is
//!   denied, so misreading a route as Unattributed can only be too strict.
//! - `.wiki.git` and `.design.git` repositories belong to the project without the suffix. The
//!   forge first looks for a project literally named `x.wiki` / `x.design`; such names are
//!   valid but rare, and the gateway cannot tell without the database (a known gap).
//! - Snippet repositories (`snippets/<n>.git`, `<project>/snippets/<n>.git`) are Unattributed:
//!   the forge reads them as a project of that full path if one exists, else as a snippet.
//! - `.GIT` (any case but lower) is refused: for the forge it is part of the project name.
//! - `<full path>/info/refs` (no `.git`) is a Git route of that project when the path is a
//!   valid project path, else Unattributed (the forge only redirects valid paths, and the
//!   redirect itself acts on nothing).

use std::ops::Range;

use crate::project::{is_valid_project_path, ProjectRef};

/// What kind of route a request is, for logs and metrics (bounded set of labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    ProjectApi,
    Git,
    Lfs,
    JobApi,
    ProjectLess,
    Unattributed,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::ProjectApi => "project_api",
            RouteKind::Git => "git",
            RouteKind::Lfs => "lfs",
            RouteKind::JobApi => "job_api",
            RouteKind::ProjectLess => "project_less",
            RouteKind::Unattributed => "unattributed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The request acts on one project.
    Project {
        project: ProjectRef,
        kind: RouteKind,
        /// Byte range of the `:id` segment in the raw path when an API route names the project
        /// by (encoded) path, so the forwarder can put the numeric id there. None otherwise.
        id_span: Option<Range<usize>>,
    },
    /// `/api/v4/jobs/:id` and everything below it: the handler compares `job_id` with the
    /// token's own job.
    Job { job_id: u64 },
    /// A documented route that acts on no project. The whole list (exact paths, no trailing
    /// slash, no format suffix, `GET` and `HEAD` only):
    /// - `/api/v4/job`: the token's own job (how bots and the gateway learn the origin);
    /// - `/api/v4/job/allowed_agents`: the agents the token's own job may use.
    ProjectLess,
    /// Nothing the gateway can attribute to a project (denied when a job token is present).
    Unattributed,
}

impl Target {
    pub fn kind(&self) -> RouteKind {
        match self {
            Target::Project { kind, .. } => *kind,
            Target::Job { .. } => RouteKind::JobApi,
            Target::ProjectLess => RouteKind::ProjectLess,
            Target::Unattributed => RouteKind::Unattributed,
        }
    }
}

/// Why a path was refused (HTTP 400). The messages are static: they never echo the path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("request path does not start with '/'")]
    NotOriginForm,
    #[error("control character in path")]
    ControlCharacter,
    #[error("non-ASCII byte in path")]
    NonAscii,
    #[error("backslash in path")]
    Backslash,
    #[error("malformed percent-encoding in path")]
    MalformedPercent,
    #[error("empty path segment")]
    EmptySegment,
    #[error("dot segment in path")]
    DotSegment,
    #[error("double-encoded project id")]
    DoubleEncodedProjectId,
    #[error("undecodable project id")]
    UndecodableProjectId,
    #[error("control character in project id")]
    ControlCharacterInProjectId,
    #[error("backslash in project id")]
    BackslashInProjectId,
    #[error("project id out of range")]
    ProjectIdOutOfRange,
    #[error("project id is neither a number nor a full project path")]
    InvalidProjectId,
    #[error("percent-encoding in repository path")]
    EncodedRepositoryPath,
    #[error("'.git' suffix not in lower case")]
    GitSuffixCase,
    #[error("repository path is not a valid project path")]
    InvalidRepositoryPath,
}

/// Work out the target of a request.
///
/// `path` is the raw request path (origin form, without the query), exactly as received.
/// `query` is accepted for the interface's sake but never changes the target: Grape lets the
/// path's routing args win over query params, and the Git routes take nothing from it.
pub fn parse(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> Result<Target, TargetError> {
    let _ = query;
    check_path(path.as_bytes())?;
    // `check_path` guarantees a leading '/', no "//" and at most one trailing '/'.
    let body = path.get(1..).unwrap_or("");
    let body = body.strip_suffix('/').unwrap_or(body);

    let trailing_slash = body.len() < path.len().saturating_sub(1);

    if let Some(rest) = body.strip_prefix("api/") {
        return parse_api(method, rest, 1 + 4, trailing_slash);
    }
    if body == "api" {
        return Ok(Target::Unattributed);
    }
    parse_git(body)
}

/// Byte classes for [`check_path`]: 0 plain, otherwise the byte needs a closer look.
const PLAIN: u8 = 0;
const SLASH: u8 = 1;
const PERCENT: u8 = 2;
const BACKSLASH: u8 = 3;
const CONTROL: u8 = 4;
const NON_ASCII: u8 = 5;

static CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match b as u8 {
            b'/' => SLASH,
            b'%' => PERCENT,
            b'\\' => BACKSLASH,
            0x00..=0x1f | 0x7f => CONTROL,
            0x80..=0xff => NON_ASCII,
            _ => PLAIN,
        };
        b += 1;
    }
    t
};

/// One linear pass over the raw path: character classes, percent-encoding, empty and dot
/// segments.
fn check_path(bytes: &[u8]) -> Result<(), TargetError> {
    if bytes.first() != Some(&b'/') {
        return Err(TargetError::NotOriginForm);
    }
    let len = bytes.len();
    let mut seg_start = 1;
    let mut i = 1;
    loop {
        // Walk over plain bytes in a tight loop; handle the next special byte below.
        while i < len && CLASS[usize::from(bytes[i])] == PLAIN {
            i += 1;
        }
        if i >= len {
            break;
        }
        match CLASS[usize::from(bytes[i])] {
            SLASH => {
                // An empty segment before another slash: "//" (nginx would merge it).
                if i == seg_start {
                    return Err(TargetError::EmptySegment);
                }
                check_segment(&bytes[seg_start..i])?;
                seg_start = i + 1;
            }
            PERCENT => {
                // The two hex digits are plain bytes: the scan walks over them harmlessly.
                let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return Err(TargetError::MalformedPercent);
                }
            }
            BACKSLASH => return Err(TargetError::Backslash),
            CONTROL => return Err(TargetError::ControlCharacter),
            _ => return Err(TargetError::NonAscii),
        }
        i += 1;
    }
    // The last segment; empty only after a single trailing slash or for the root path "/".
    check_segment(bytes.get(seg_start..).unwrap_or_default())
}

fn check_segment(seg: &[u8]) -> Result<(), TargetError> {
    if matches!(seg.first(), Some(b'.' | b'%')) && is_dot_segment(seg) {
        return Err(TargetError::DotSegment);
    }
    Ok(())
}

/// `.` or `..`, each dot possibly written `%2e` / `%2E`.
fn is_dot_segment(seg: &[u8]) -> bool {
    let mut dots = 0;
    let mut i = 0;
    while i < seg.len() {
        if seg[i] == b'.' {
            i += 1;
        } else if seg[i] == b'%'
            && seg.get(i + 1) == Some(&b'2')
            && matches!(seg.get(i + 2), Some(b'e' | b'E'))
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

/// Position of the first '/': a plain loop, cheaper than `memchr` on the short segments of
/// a request path.
fn slash_in(s: &str) -> Option<usize> {
    s.bytes().position(|b| b == b'/')
}

/// Split off the next segment: `(segment, rest, rest_offset)`, where `rest` starts after the
/// separating '/' (empty when none) and `rest_offset` is its offset relative to `s`.
fn next_segment(s: &str) -> (&str, &str, usize) {
    match slash_in(s) {
        Some(i) => (&s[..i], &s[i + 1..], i + 1),
        None => (s, "", s.len()),
    }
}

/// Everything under `/api/`. `rest` is the path after `/api/` (no trailing slash), `offset`
/// its byte offset in the raw path. A fixed segment written with percent-encoding
/// (`%70rojects`) never equals its literal and so makes the request Unattributed: always safe,
/// because Unattributed is denied.
fn parse_api(
    method: &http::Method,
    rest: &str,
    offset: usize,
    trailing_slash: bool,
) -> Result<Target, TargetError> {
    let (version, rest, adv) = next_segment(rest);
    if version != "v4" {
        return Ok(Target::Unattributed);
    }
    let offset = offset + adv;
    let (resource, rest, adv) = next_segment(rest);
    let offset = offset + adv;
    Ok(match resource {
        "projects" => parse_project_id(rest, offset)?.unwrap_or(Target::Unattributed),
        "jobs" => {
            let (id, _, _) = next_segment(rest);
            match parse_u64(id) {
                Some(job_id) => Target::Job { job_id },
                None => Target::Unattributed,
            }
        }
        // Only the exact documented paths are project-less (not `/api/v4/job/`).
        "job"
            if (rest.is_empty() || rest == "allowed_agents")
                && !trailing_slash
                && is_read(method) =>
        {
            Target::ProjectLess
        }
        _ => Target::Unattributed,
    })
}

fn is_read(method: &http::Method) -> bool {
    *method == http::Method::GET || *method == http::Method::HEAD
}

/// ASCII digits only (leading zeros fine, like Ruby's `to_i`), fitting a u64.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// The `:id` of `/api/v4/projects/:id[/...]`; `rest` starts at `:id`, `offset` is its byte
/// offset in the raw path. `Ok(None)`: no `:id` at all.
fn parse_project_id(rest: &str, offset: usize) -> Result<Option<Target>, TargetError> {
    let (raw, _, _) = next_segment(rest);
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        let id = parse_u64(raw).ok_or(TargetError::ProjectIdOutOfRange)?;
        return Ok(Some(Target::Project {
            project: ProjectRef::Id(id),
            kind: RouteKind::ProjectApi,
            id_span: None,
        }));
    }
    let project = decode_project_path(raw)?;
    Ok(Some(Target::Project {
        project,
        kind: RouteKind::ProjectApi,
        id_span: Some(offset..offset + raw.len()),
    }))
}

/// Percent-decode a path-named `:id` exactly once into a lowercased project path (the same
/// value `ProjectRef::path` makes, built with a single allocation).
fn decode_project_path(raw: &str) -> Result<ProjectRef, TargetError> {
    let escapes = raw.bytes().filter(|&b| b == b'%').count();
    let mut out = Vec::with_capacity(raw.len() - 2 * escapes);
    for b in percent_encoding::percent_decode_str(raw) {
        match b {
            b'%' => return Err(TargetError::DoubleEncodedProjectId),
            b'\\' => return Err(TargetError::BackslashInProjectId),
            0x00..=0x1f | 0x7f => return Err(TargetError::ControlCharacterInProjectId),
            _ => out.push(b.to_ascii_lowercase()),
        }
    }
    let decoded = String::from_utf8(out).map_err(|_| TargetError::UndecodableProjectId)?;
    if !is_valid_project_path(&decoded) {
        return Err(TargetError::InvalidProjectId);
    }
    Ok(ProjectRef::Path(decoded.into_boxed_str()))
}

/// Git smart HTTP and LFS routes (`config/routes/git_http.rb`). `body` is the path without
/// its leading slash and without a trailing slash.
fn parse_git(body: &str) -> Result<Target, TargetError> {
    // The repository path ends at the first segment ending in `.git`: GitLab forbids that
    // suffix in every namespace and project segment. Matched case-insensitively here so that
    // `.GIT` is seen, and refused below.
    let mut start = 0;
    let found = loop {
        let end = slash_in(&body[start..]).map_or(body.len(), |i| start + i);
        if ends_with_ignore_case(&body[start..end], ".git") {
            break Some(end);
        }
        if end >= body.len() {
            break None;
        }
        start = end + 1;
    };

    let Some(end) = found else {
        // `<full path>/info/refs` without `.git`: GitLab redirects it to the `.git` form
        // (only when the path is a valid repository path; anything else is not a Git route
        // for the forge, so it stays unattributed).
        if let Some(repo) = body.strip_suffix("/info/refs") {
            if !repo.contains('%') {
                if let Ok(Some(project)) = repository_project(repo) {
                    return Ok(Target::Project {
                        project,
                        kind: RouteKind::Git,
                        id_span: None,
                    });
                }
            }
        }
        return Ok(Target::Unattributed);
    };

    let rest = body.get(end + 1..).unwrap_or("");
    let kind = match rest {
        "info/refs" | "git-upload-pack" | "git-receive-pack" => RouteKind::Git,
        _ if has_nonempty_tail(rest, "info/lfs/") || has_nonempty_tail(rest, "gitlab-lfs/") => {
            RouteKind::Lfs
        }
        _ => return Ok(Target::Unattributed),
    };
    let repo = &body[..end];
    if repo.contains('%') {
        return Err(TargetError::EncodedRepositoryPath);
    }
    // The forge's `.git` is case-sensitive: for it, `/a/b.GIT/info/refs` names the project
    // `a/b.GIT` (a valid GitLab name), not `a/b`.
    let Some(stem) = repo.strip_suffix(".git") else {
        return Err(TargetError::GitSuffixCase);
    };
    match repository_project(stem)? {
        Some(project) => Ok(Target::Project {
            project,
            kind,
            id_span: None,
        }),
        None => Ok(Target::Unattributed),
    }
}

/// The project a repository path (without `.git`) belongs to, following
/// `Gitlab::RepoPath.parse`: `.wiki` and `.design` repositories belong to the project without
/// the suffix; snippet repositories (`snippets/<n>`, `<project>/snippets/<n>`) are `None`
/// (the forge may read them as a snippet or as a project of that path: unattributable).
///
/// The forge tries a project with the whole path first, so a real project literally named
/// `x.wiki` / `x.design` would be read as itself; the gateway attributes the request to `x`,
/// the common case. Telling the two apart needs the forge's database.
fn repository_project(stem: &str) -> Result<Option<ProjectRef>, TargetError> {
    if is_snippet_repository(stem) {
        return Ok(None);
    }
    let path = stem
        .strip_suffix(".wiki")
        .or_else(|| stem.strip_suffix(".design"))
        .unwrap_or(stem);
    if !is_valid_project_path(path) {
        return Err(TargetError::InvalidRepositoryPath);
    }
    Ok(Some(ProjectRef::path(path)))
}

/// `snippets/<digits>` or `<anything>/snippets/<digits>`.
fn is_snippet_repository(stem: &str) -> bool {
    let Some((head, id)) = stem.rsplit_once('/') else {
        return false;
    };
    let word = head.rsplit_once('/').map_or(head, |(_, w)| w);
    word == "snippets" && !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

fn has_nonempty_tail(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use proptest::prelude::*;

    fn get(path: &str) -> Result<Target, TargetError> {
        parse(&Method::GET, path, None)
    }

    fn by_id(id: u64) -> Result<Target, TargetError> {
        Ok(Target::Project {
            project: ProjectRef::Id(id),
            kind: RouteKind::ProjectApi,
            id_span: None,
        })
    }

    fn by_path(path: &str, span: Range<usize>) -> Result<Target, TargetError> {
        Ok(Target::Project {
            project: ProjectRef::path(path),
            kind: RouteKind::ProjectApi,
            id_span: Some(span),
        })
    }

    fn repo(path: &str, kind: RouteKind) -> Result<Target, TargetError> {
        Ok(Target::Project {
            project: ProjectRef::path(path),
            kind,
            id_span: None,
        })
    }

    const P: usize = "/api/v4/projects/".len();

    #[test]
    fn table_of_tricky_paths() {
        use RouteKind::{Git, Lfs};
        use TargetError as E;
        let cases: Vec<(&str, Result<Target, TargetError>)> = vec![
            // Project API by numeric id.
            ("/api/v4/projects/123/merge_requests", by_id(123)),
            ("/api/v4/projects/123", by_id(123)),
            ("/api/v4/projects/123/", by_id(123)),
            ("/api/v4/projects/007/issues", by_id(7)),
            ("/api/v4/projects/0", by_id(0)),
            ("/api/v4/projects/18446744073709551615/x", by_id(u64::MAX)),
            (
                "/api/v4/projects/18446744073709551616/x",
                Err(E::ProjectIdOutOfRange),
            ),
            (
                "/api/v4/projects/99999999999999999999999/x",
                Err(E::ProjectIdOutOfRange),
            ),
            ("/api/v4/projects/5.json", Err(E::InvalidProjectId)),
            ("/api/v4/projects/-5/x", Err(E::InvalidProjectId)),
            ("/api/v4/projects/+5/x", Err(E::InvalidProjectId)),
            ("/api/v4/projects/%35/x", Err(E::InvalidProjectId)),
            (
                "/api/v4/projects/5%0A/x",
                Err(E::ControlCharacterInProjectId),
            ),
            ("/api/v4/projects/acme/x", Err(E::InvalidProjectId)),
            // Project API by encoded full path.
            (
                "/api/v4/projects/acme%2Fapp/merge_requests",
                by_path("acme/app", P..P + 10),
            ),
            (
                "/api/v4/projects/acme%2fapp",
                by_path("acme/app", P..P + 10),
            ),
            (
                "/api/v4/projects/Acme%2FSub%2fApp/x",
                by_path("acme/sub/app", P..P + 16),
            ),
            (
                "/api/v4/projects/a%2Fb%2Fc%2Fd/",
                by_path("a/b/c/d", P..P + 13),
            ),
            (
                "/api/v4/projects/acme%2Fmy-app.v2/x",
                by_path("acme/my-app.v2", P..P + 16),
            ),
            (
                "/api/v4/projects/%61cme%2Fapp/x",
                by_path("acme/app", P..P + 12),
            ),
            (
                "/api/v4/projects/acme%252Fapp/x",
                Err(E::DoubleEncodedProjectId),
            ),
            (
                "/api/v4/projects/acme%2Fapp%25/x",
                Err(E::DoubleEncodedProjectId),
            ),
            (
                "/api/v4/projects/acme%2F%FF/x",
                Err(E::UndecodableProjectId),
            ),
            ("/api/v4/projects/acme%2F%C3%A9/x", Err(E::InvalidProjectId)),
            (
                "/api/v4/projects/acme%5Capp%2Fx/y",
                Err(E::BackslashInProjectId),
            ),
            (
                "/api/v4/projects/acme%2F..%2Fother/x",
                Err(E::InvalidProjectId),
            ),
            ("/api/v4/projects/acme%2F/x", Err(E::InvalidProjectId)),
            ("/api/v4/projects/%2Facme/x", Err(E::InvalidProjectId)),
            (
                "/api/v4/projects/acme%2Fapp.git/x",
                Err(E::InvalidProjectId),
            ),
            (
                "/api/v4/projects/acme%2Fapp%00/x",
                Err(E::ControlCharacterInProjectId),
            ),
            ("/api/v4/projects/acme%2Fapp;x/y", Err(E::InvalidProjectId)),
            // %2F in later segments is the route's business, not ours.
            ("/api/v4/projects/5/repository/files/a%2Fb/raw", by_id(5)),
            (
                "/api/v4/projects/acme%2Fapp/repository/files/a%2Fb%2Ec/raw",
                by_path("acme/app", P..P + 10),
            ),
            ("/api/v4/projects/5/repository/files/a%252Fb/raw", by_id(5)),
            // Nothing after /projects.
            ("/api/v4/projects", Ok(Target::Unattributed)),
            ("/api/v4/projects/", Ok(Target::Unattributed)),
            // Percent-encoded fixed segments, other cases and versions: unattributed.
            ("/api/v4/%70rojects/5/x", Ok(Target::Unattributed)),
            ("/api/%76%34/projects/5/x", Ok(Target::Unattributed)),
            ("/%61pi/v4/projects/5/x", Ok(Target::Unattributed)),
            ("/api/v4/Projects/5/x", Ok(Target::Unattributed)),
            ("/API/v4/projects/5/x", Ok(Target::Unattributed)),
            ("/api/v3/projects/5/x", Ok(Target::Unattributed)),
            ("/api/v4/groups/5/x", Ok(Target::Unattributed)),
            ("/api/v4/user", Ok(Target::Unattributed)),
            ("/api/graphql", Ok(Target::Unattributed)),
            ("/api", Ok(Target::Unattributed)),
            ("/api/", Ok(Target::Unattributed)),
            ("/api/v4/acme/app.git/info/refs", Ok(Target::Unattributed)),
            // Job API.
            ("/api/v4/jobs/42", Ok(Target::Job { job_id: 42 })),
            ("/api/v4/jobs/42/artifacts", Ok(Target::Job { job_id: 42 })),
            ("/api/v4/jobs/042/trace/", Ok(Target::Job { job_id: 42 })),
            ("/api/v4/jobs/request", Ok(Target::Unattributed)),
            ("/api/v4/jobs/42.json", Ok(Target::Unattributed)),
            ("/api/v4/jobs", Ok(Target::Unattributed)),
            (
                "/api/v4/jobs/99999999999999999999",
                Ok(Target::Unattributed),
            ),
            ("/api/v4/job", Ok(Target::ProjectLess)),
            ("/api/v4/job/allowed_agents", Ok(Target::ProjectLess)),
            ("/api/v4/job/", Ok(Target::Unattributed)),
            ("/api/v4/job.json", Ok(Target::Unattributed)),
            ("/api/v4/job/allowed_agents/", Ok(Target::Unattributed)),
            ("/api/v4/job/other", Ok(Target::Unattributed)),
            // Refused anywhere in the path.
            ("/api/v4/projects/%2e%2e/x", Err(E::DotSegment)),
            ("/api/v4/projects/5/../6/x", Err(E::DotSegment)),
            ("/api/v4/projects/5/./x", Err(E::DotSegment)),
            ("/api/v4/projects/5/.%2E/x", Err(E::DotSegment)),
            ("/api/v4/projects/5/%2E./x", Err(E::DotSegment)),
            ("/api/v4/projects/5/%2e", Err(E::DotSegment)),
            ("/api/v4/projects/5/..", Err(E::DotSegment)),
            ("/api/v4/projects/5/../", Err(E::DotSegment)),
            ("/..", Err(E::DotSegment)),
            ("/.", Err(E::DotSegment)),
            ("/api/v4/projects/5/.../x", by_id(5)),
            ("/api/v4/projects/5/.x/x", by_id(5)),
            ("/api//v4/projects/5/x", Err(E::EmptySegment)),
            ("//api/v4/projects/5/x", Err(E::EmptySegment)),
            ("/api/v4/projects//5/x", Err(E::EmptySegment)),
            ("/api/v4/projects/5//", Err(E::EmptySegment)),
            ("//", Err(E::EmptySegment)),
            ("/api/v4/projects/5\\x", Err(E::Backslash)),
            ("/api/v4/projects/5/x\ty", Err(E::ControlCharacter)),
            ("/api/v4/projects/5/x\u{7f}", Err(E::ControlCharacter)),
            ("/api/v4/projects/5/\u{e9}", Err(E::NonAscii)),
            ("/api/v4/projects/5/%zz", Err(E::MalformedPercent)),
            ("/api/v4/projects/5/%2", Err(E::MalformedPercent)),
            ("/api/v4/projects/5/%", Err(E::MalformedPercent)),
            ("/api/v4/projects/5/%g0", Err(E::MalformedPercent)),
            ("api/v4/projects/5", Err(E::NotOriginForm)),
            ("*", Err(E::NotOriginForm)),
            ("", Err(E::NotOriginForm)),
            // Git smart HTTP.
            ("/acme/app.git/info/refs", repo("acme/app", Git)),
            ("/acme/app.git/git-upload-pack", repo("acme/app", Git)),
            ("/acme/app.git/git-receive-pack", repo("acme/app", Git)),
            ("/acme/app.git/info/refs/", repo("acme/app", Git)),
            (
                "/Acme/Sub/Deep/App.git/info/refs",
                repo("acme/sub/deep/app", Git),
            ),
            ("/acme/app.wiki.git/info/refs", repo("acme/app", Git)),
            (
                "/acme/app.design.git/git-upload-pack",
                repo("acme/app", Git),
            ),
            ("/acme/app.WIKI.git/info/refs", repo("acme/app.wiki", Git)),
            ("/acme/app.GIT/info/refs", Err(E::GitSuffixCase)),
            ("/acme/app.Git/git-upload-pack", Err(E::GitSuffixCase)),
            // GitLab allows a project named `app.GIT` (the suffix rule is case-sensitive).
            ("/acme/app.GIT.git/info/refs", repo("acme/app.git", Git)),
            ("/acme/app/info/refs", repo("acme/app", Git)),
            ("/acme/sub/app/info/refs", repo("acme/sub/app", Git)),
            ("/acme/app.wiki/info/refs", repo("acme/app", Git)),
            ("/app/info/refs", Ok(Target::Unattributed)),
            ("/acme/-/info/refs", Ok(Target::Unattributed)),
            ("/acme%2Fapp/info/refs", Ok(Target::Unattributed)),
            ("/app.git/info/refs", Err(E::InvalidRepositoryPath)),
            ("/acme/-app.git/info/refs", Err(E::InvalidRepositoryPath)),
            ("/acme/app..git/info/refs", Err(E::InvalidRepositoryPath)),
            ("/acme/.git/info/refs", Err(E::InvalidRepositoryPath)),
            ("/acme/a%70p.git/info/refs", Err(E::EncodedRepositoryPath)),
            (
                "/acme%2Fsub/app.git/info/refs",
                Err(E::EncodedRepositoryPath),
            ),
            ("/acme/app.git/info/refs%2F", Ok(Target::Unattributed)),
            ("/acme/app.git", Ok(Target::Unattributed)),
            ("/acme/app.git/", Ok(Target::Unattributed)),
            ("/acme/app.git/HEAD", Ok(Target::Unattributed)),
            ("/acme/app.git/objects/info/packs", Ok(Target::Unattributed)),
            ("/acme/app.git/x/info/refs", Ok(Target::Unattributed)),
            ("/acme.git/app.git/info/refs", Ok(Target::Unattributed)),
            ("/snippets/12.git/info/refs", Ok(Target::Unattributed)),
            (
                "/acme/app/snippets/12.git/git-upload-pack",
                Ok(Target::Unattributed),
            ),
            ("/acme/app/snippets/12/info/refs", Ok(Target::Unattributed)),
            (
                "/acme/app/snippets/x.git/info/refs",
                repo("acme/app/snippets/x", Git),
            ),
            // LFS.
            (
                "/acme/app.git/info/lfs/objects/batch",
                repo("acme/app", Lfs),
            ),
            ("/acme/app.git/info/lfs/objects", repo("acme/app", Lfs)),
            ("/acme/app.git/info/lfs/locks/verify", repo("acme/app", Lfs)),
            (
                "/acme/sub/app.git/gitlab-lfs/objects/0123abcd/12",
                repo("acme/sub/app", Lfs),
            ),
            (
                "/acme/app.wiki.git/info/lfs/objects/batch",
                repo("acme/app", Lfs),
            ),
            ("/acme/app.git/info/lfs", Ok(Target::Unattributed)),
            ("/acme/app.git/info/lfs/", Ok(Target::Unattributed)),
            ("/acme/app.git/gitlab-lfs", Ok(Target::Unattributed)),
            (
                "/acme/app.GIT/info/lfs/objects/batch",
                Err(E::GitSuffixCase),
            ),
            // Everything else.
            ("/", Ok(Target::Unattributed)),
            ("/acme/app", Ok(Target::Unattributed)),
            ("/acme/app/-/jobs/42", Ok(Target::Unattributed)),
            (
                "/acme/app/-/archive/main/app-main.zip",
                Ok(Target::Unattributed),
            ),
            ("/jwt/auth", Ok(Target::Unattributed)),
            ("/-/health", Ok(Target::Unattributed)),
        ];
        for (path, want) in cases {
            assert_eq!(get(path), want, "path {path:?}");
        }
    }

    #[test]
    fn job_routes_are_project_less_only_for_reads() {
        for m in [Method::GET, Method::HEAD] {
            assert_eq!(parse(&m, "/api/v4/job", None), Ok(Target::ProjectLess));
            assert_eq!(
                parse(&m, "/api/v4/job/allowed_agents", None),
                Ok(Target::ProjectLess)
            );
        }
        for m in [
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert_eq!(parse(&m, "/api/v4/job", None), Ok(Target::Unattributed));
            assert_eq!(
                parse(&m, "/api/v4/job/allowed_agents", None),
                Ok(Target::Unattributed)
            );
        }
        // Other routes do not depend on the method.
        assert_eq!(
            parse(&Method::PUT, "/api/v4/jobs/7", None),
            Ok(Target::Job { job_id: 7 })
        );
        assert_eq!(
            parse(&Method::POST, "/api/v4/projects/7/trigger/pipeline", None),
            by_id(7)
        );
    }

    #[test]
    fn query_never_changes_the_target() {
        for q in [
            None,
            Some("id=9"),
            Some("id=other%2Fproj"),
            Some("service=git-upload-pack"),
            Some("%zz"),
        ] {
            assert_eq!(parse(&Method::GET, "/api/v4/projects/5/x", q), by_id(5));
            assert_eq!(
                parse(&Method::GET, "/api/v4/job", q),
                Ok(Target::ProjectLess)
            );
        }
    }

    #[test]
    fn kinds_and_labels() {
        assert_eq!(
            get("/api/v4/projects/1").map(|t| t.kind()),
            Ok(RouteKind::ProjectApi)
        );
        assert_eq!(
            get("/a/b.git/info/refs").map(|t| t.kind()),
            Ok(RouteKind::Git)
        );
        assert_eq!(
            get("/a/b.git/info/lfs/objects/batch").map(|t| t.kind()),
            Ok(RouteKind::Lfs)
        );
        assert_eq!(
            get("/api/v4/jobs/1").map(|t| t.kind()),
            Ok(RouteKind::JobApi)
        );
        assert_eq!(
            get("/api/v4/job").map(|t| t.kind()),
            Ok(RouteKind::ProjectLess)
        );
        assert_eq!(get("/x").map(|t| t.kind()), Ok(RouteKind::Unattributed));
        let labels: Vec<&str> = [
            RouteKind::ProjectApi,
            RouteKind::Git,
            RouteKind::Lfs,
            RouteKind::JobApi,
            RouteKind::ProjectLess,
            RouteKind::Unattributed,
        ]
        .into_iter()
        .map(RouteKind::as_str)
        .collect();
        assert_eq!(
            labels,
            [
                "project_api",
                "git",
                "lfs",
                "job_api",
                "project_less",
                "unattributed"
            ]
        );
    }

    /// Put `id` where the span says; the result must be the same route with a numeric id.
    fn splice(path: &str, span: &Range<usize>, id: u64) -> String {
        format!("{}{}{}", &path[..span.start], id, &path[span.end..])
    }

    #[test]
    fn id_span_replacement_gives_the_numeric_route() {
        for (path, want) in [
            (
                "/api/v4/projects/acme%2Fapp/merge_requests/3/notes",
                "/api/v4/projects/77/merge_requests/3/notes",
            ),
            ("/api/v4/projects/acme%2Fapp", "/api/v4/projects/77"),
            ("/api/v4/projects/acme%2Fapp/", "/api/v4/projects/77/"),
            (
                "/api/v4/projects/a%2Fb%2Fc/repository/files/x%2Fy/raw",
                "/api/v4/projects/77/repository/files/x%2Fy/raw",
            ),
        ] {
            let Ok(Target::Project {
                id_span: Some(span),
                ..
            }) = get(path)
            else {
                panic!("no span for {path}");
            };
            let spliced = splice(path, &span, 77);
            assert_eq!(spliced, want);
            assert_eq!(get(&spliced), by_id(77));
        }
    }

    #[test]
    fn long_paths_are_linear_and_safe() {
        let long = format!("/api/v4/projects/5/{}", "a/".repeat(4000));
        assert_eq!(get(&long), by_id(5));
        let long_git = format!("/{}app.git/info/refs", "g/".repeat(4000));
        assert_eq!(get(&long_git), Err(TargetError::InvalidRepositoryPath));
        let long_id = format!("/api/v4/projects/{}/x", "a%2F".repeat(2000));
        assert_eq!(get(&long_id), Err(TargetError::InvalidProjectId));
        let dots = format!("/{}", "%2e".repeat(3000));
        assert_eq!(get(&dots), Ok(Target::Unattributed));
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,12}".prop_filter("valid forge segment", |s| {
            is_valid_project_path(&format!("x/{s}"))
        })
    }

    fn project_path() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 2..6).prop_map(|v| v.join("/"))
    }

    fn dot_segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            ".", "..", "%2e", "%2E", "%2e%2e", "%2E%2E", ".%2e", ".%2E", "%2e.", "%2E.", "%2e%2E",
            "%2E%2e",
        ])
    }

    fn raw_segment() -> impl Strategy<Value = String> {
        "([a-zA-Z0-9_.~-]|%[0-9a-fA-F]{2}){0,8}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>(), m in prop::sample::select(vec![Method::GET, Method::POST])) {
            let _ = parse(&m, &s, None);
            let _ = parse(&m, &format!("/{s}"), Some(&s));
            let _ = parse(&m, &format!("/api/v4/projects/{s}"), None);
        }

        #[test]
        fn path_like_strings_never_panic(s in "(/([a-zA-Z0-9.%_-]|%2[eEfF]|\\.git|info|refs|api|v4|projects|jobs?){0,4}){0,10}/?") {
            let _ = parse(&Method::GET, &s, None);
            let _ = parse(&Method::GET, &format!("/api/v4/projects{s}"), None);
            let _ = parse(&Method::GET, &format!("/a/b.git{s}"), None);
        }

        #[test]
        fn encoded_project_paths_round_trip(p in project_path(), cases in prop::collection::vec(any::<bool>(), 8)) {
            let mut encoded = String::new();
            for (i, seg) in p.split('/').enumerate() {
                if i > 0 {
                    encoded.push_str(if cases[i % cases.len()] { "%2F" } else { "%2f" });
                }
                encoded.push_str(seg);
            }
            let path = format!("/api/v4/projects/{encoded}/x");
            let span = P..P + encoded.len();
            prop_assert_eq!(get(&path), by_path(&p, span.clone()));
            prop_assert_eq!(get(&splice(&path, &span, 9)), by_id(9));
            // The same project over Git.
            prop_assert_eq!(get(&format!("/{p}.git/info/refs")), repo(&p, RouteKind::Git));
        }

        #[test]
        fn any_dot_segment_is_refused(
            before in prop::collection::vec(raw_segment(), 0..5),
            dot in dot_segment(),
            after in prop::collection::vec(raw_segment(), 0..5),
            trailing in any::<bool>(),
        ) {
            let mut path = String::new();
            for s in before.iter().map(String::as_str).chain([dot]).chain(after.iter().map(String::as_str)) {
                path.push('/');
                path.push_str(s);
            }
            if trailing {
                path.push('/');
            }
            prop_assert!(get(&path).is_err(), "accepted {}", path);
            let under_project = format!("/api/v4/projects/5{path}");
            prop_assert!(parse(&Method::POST, &under_project, None).is_err(), "accepted {}", under_project);
        }
    }
}
