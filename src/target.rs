//! Which project a request acts on, read from the raw request path exactly as the forge
//! (GitLab: nginx → Workhorse → Rails/Grape) reads it.
//!
//! Only requests that carry a job token come here. The parser recognises the project API
//! (`/api/v4/projects/:id/...`), the group API (`/api/v4/groups/:id/...`), the instance-level
//! package API (`/api/v4/packages/...`), the job API, the container registry and dependency
//! proxy token endpoint (`/jwt/auth`), a short list of project-less routes, the Git smart
//! HTTP / LFS routes and a few project web routes under `/<project>/-/...`. Everything else
//! is [`Target::Unattributed`], which the handler denies. Anything the forge could read in a
//! different way than the gateway does is refused with a [`TargetError`] (HTTP 400). The
//! route table in the README (section "Route coverage") lists every family.
//!
//! Facts this relies on (GitLab source):
//! - `lib/api/helpers.rb` `find_project`: an `:id` of ASCII digits is a lookup by id, a value
//!   containing `/` after URL decoding is a full-path lookup, anything else finds nothing.
//!   The `:id` segment is `[^/]+` (`NAMESPACE_OR_PROJECT_REQUIREMENTS`), decoded once.
//!   `find_group` is the same except that any non-numeric value is a full-path lookup (a
//!   top-level group's path has no `/`).
//! - Grape builds `params` as the query/body params deep-merged *with the routing args on
//!   top*, so `?id=` in the query cannot replace the `:id` of the path. The query therefore
//!   never changes the target, except on `/jwt/auth`, whose `scope` and `service` parameters
//!   *are* the target.
//! - `config/routes/git_http.rb`: `*repository_path` must match `<full path>.git` (the regex is
//!   case-sensitive, as is Workhorse's `^/.+\.git/` and `Gitlab::RepoPath`'s
//!   `delete_suffix('.git')`); `<full path>/info/refs` redirects to the `.git` form.
//! - `Gitlab::RepoPath.parse`: strips `.git`, then tries a project with the whole path, then
//!   the `.wiki` suffix (project wiki), `snippets/<n>` (snippet), `.design` suffix (design
//!   repository). Suffixes are compared case-sensitively.
//! - `Gitlab::PathRegex`: no namespace or project segment may end in `.git` (case-sensitive in
//!   GitLab), so the first segment ending in `.git` ends the repository path. No namespace
//!   may be named `-` or a reserved top-level word (`TOP_LEVEL_ROUTES`, compared
//!   case-insensitively), so everything before the first `/-/` of a web route is the
//!   namespace/project path.
//! - `JwtController#scopes_param` reads `scope` only from the raw query string
//!   (`Rack::Utils.parse_query(request.query_string)['scope']`, every occurrence) and splits
//!   each value on whitespace; `ContainerRegistryAuthenticationService#process_scope` splits a
//!   scope as `type:name:actions` (`split(':', 3)`, actions split on `,`);
//!   `ContainerRegistry::Path` downcases the name, requires
//!   `container_repository_name_regex` and 2..19 components, and resolves the project with
//!   `Project.where_full_path_in(nodes.first(3))`: the name's longest three prefixes of at
//!   least two components. Push and delete are granted only to the job's own project
//!   (`build_can_push?`, `build_can_delete?`).
//! - `DependencyProxyAuthenticationService` ignores `scope` entirely: the token it returns is
//!   bound to the job's *user*, not to a project.
//! - nginx merges `//` and resolves dot segments (also percent-encoded ones) and Workhorse
//!   `path.Clean`s the path for its own routing, while Rails sees the raw path: any path
//!   where those readings could differ is refused.
//!
//! Choices where the forge's reading depends on its database, or is not worth following:
//! - A percent-encoded fixed segment (`/api/v4/%70rojects/5`), a version other than `v4`, or
//!   any `/api/...` route not listed here is Unattributed, never an error: Unattributed is
//!   denied, so misreading a route as Unattributed can only be too strict. GraphQL
//!   (`/api/graphql`, which never accepts a job token) and the internal API
//!   (`/api/v4/internal/...`) are Unattributed on purpose.
//! - `.wiki.git` and `.design.git` repositories belong to the project without the suffix. The
//!   forge first looks for a project literally named `x.wiki` / `x.design` (valid but rare
//!   names); the gateway cannot tell without the database, so it names that literal path as
//!   the target's `alias` and the handler decides both.
//! - Snippet repositories (`snippets/<n>.git`, `<project>/snippets/<n>.git`) are Unattributed:
//!   the forge reads them as a project of that full path if one exists, else as a snippet.
//! - `.GIT` (any case but lower) is refused: for the forge it is part of the project name.
//! - `<full path>/info/refs` (no `.git`) is a Git route of that project when the path is a
//!   valid project path, else Unattributed (the forge only redirects valid paths, and the
//!   redirect itself acts on nothing).
//! - Web routes: GitLab's web controllers do not read job tokens at all (they have no Grape
//!   `route_setting :authentication`), so a job token there authenticates nothing. The
//!   gateway still only lets such a request through when it is in scope: the download
//!   routes `/<project>/-/archive/…`, `/-/raw/…`, `/-/jobs/artifacts/…`,
//!   `/-/jobs/<id>/artifacts…` and `/-/packages[/…]` are attributed to the project named
//!   before `/-/` (a valid, unencoded project path whose first segment is not a reserved
//!   top-level route); every other web route, and group web routes, are Unattributed.

use std::borrow::Cow;
use std::ops::Range;

use crate::project::{is_valid_group_path, is_valid_project_path, ProjectRef};

/// What kind of route a request is, for logs and metrics (bounded set of labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    ProjectApi,
    Git,
    Lfs,
    /// A project web route under `/<project>/-/...` (see the module docs for the list).
    Web,
    JobApi,
    GroupApi,
    InstancePackages,
    /// `/jwt/auth` with scopes, or for the dependency proxy.
    RegistryAuth,
    ProjectLess,
    Unattributed,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::ProjectApi => "project_api",
            RouteKind::Git => "git",
            RouteKind::Lfs => "lfs",
            RouteKind::Web => "web",
            RouteKind::JobApi => "job_api",
            RouteKind::GroupApi => "group_api",
            RouteKind::InstancePackages => "instance_packages",
            RouteKind::RegistryAuth => "registry_auth",
            RouteKind::ProjectLess => "project_less",
            RouteKind::Unattributed => "unattributed",
        }
    }
}

/// A group as a request names it: by id or by full path (ASCII-lowercased, the forge looks
/// groups up case-insensitively). Kept apart from [`ProjectRef`] so that a group can never be
/// decided as if it were a project.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GroupRef {
    Id(u64),
    Path(Box<str>),
}

impl std::fmt::Display for GroupRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupRef::Id(id) => write!(f, "group {id}"),
            GroupRef::Path(p) => write!(f, "group {p}"),
        }
    }
}

/// Which token `/jwt/auth` is asked for (its `service` parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryService {
    /// `service=container_registry`: a registry token limited to the requested scopes.
    ContainerRegistry,
    /// `service=dependency_proxy`: a token for the group dependency proxies, bound to the job's
    /// user and valid for every group that user can read; the forge ignores `scope`.
    DependencyProxy,
}

/// One `scope` value of a `/jwt/auth` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryScope {
    /// `repository:<image path>:<actions>` (also `repository(<class>):…`).
    Repository {
        /// The image path as the forge reads it (ASCII-lowercased), for messages and logs.
        image: Box<str>,
        /// The projects the forge may resolve the image path to: its longest three prefixes
        /// of at least two components that are valid project paths, longest first,
        /// lowercased (`ContainerRegistry::Path#repository_project`). Never empty.
        ///
        /// The forge's routes are unique, so at most one of them is a project: a project
        /// cannot be the namespace of another project, nor share a path with a group.
        candidates: Vec<ProjectRef>,
        /// Any action other than `pull` was asked (`push`, `delete`, `*`, or one the gateway
        /// does not know).
        write: bool,
    },
    /// `registry:<name>:<actions>` (the forge knows only `registry:catalog:*`): the list of
    /// every repository of the instance, granted to admins. Acts on no single project.
    Registry,
}

/// At most this many scopes on one `/jwt/auth` request; more is refused (HTTP 400).
pub const MAX_REGISTRY_SCOPES: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The request acts on one project.
    Project {
        project: ProjectRef,
        kind: RouteKind,
        /// Byte range of the `:id` segment in the raw path when an API route names the project
        /// by (encoded) path, so the forwarder can put the numeric id there. None otherwise.
        id_span: Option<Range<usize>>,
        /// Another project the forge may read the request as. A repository path ending in
        /// `.wiki.git` / `.design.git` is the wiki or design repository of `project`, unless a
        /// project literally named `x.wiki` / `x.design` exists, which the forge tries first
        /// (`Gitlab::RepoPath.parse`). **The handler must decide both** and keep the stricter.
        alias: Option<ProjectRef>,
    },
    /// `/api/v4/jobs/:id` and everything below it: the handler compares `job_id` with the
    /// token's own job.
    Job { job_id: u64 },
    /// `/api/v4/groups/:id` and everything below it (group-level package registries:
    /// `/groups/:id/-/packages/{maven,npm,pypi,composer,nuget,debian,...}`, the group
    /// package list, group Terraform modules, ...).
    ///
    /// **How the handler must decide: deny** (403), whatever the origin. A group-level route
    /// reads the packages of *every* project in the group (and its subgroups) that the job's
    /// user can see; the forge's job-token checks on these routes are per package project at
    /// best, and the gateway cannot enumerate a group's projects without the forge's
    /// database. Allowing the route because the origin's outbound allowlist covers the group
    /// would still skip the *inbound* limit of each project inside it, which rule 3 of the
    /// policy requires. Most package formats also have project-level read routes
    /// (`/projects/:id/packages/...`: Maven, npm, PyPI, NuGet, Generic, Helm, Debian, ...),
    /// which are decided normally; Composer's package index exists only at group level, so
    /// Composer installs with a job token stay denied until an opt-in exists. A later opt-in
    /// could allow a group when the scope file declares it "open" (every project in it admits
    /// every origin), but that needs a new scope-file key and is not the default.
    Group {
        group: GroupRef,
        /// Byte range of the `:id` segment when it names the group by (encoded) path.
        id_span: Option<Range<usize>>,
    },
    /// `/api/v4/packages/...`: the instance-level package routes (npm `/packages/npm/...`,
    /// Maven `/packages/maven/...`, Conan `/packages/conan/v1/...`, Terraform modules
    /// `/packages/terraform/modules/v1/...`, ...). The forge finds the project from the
    /// package name in its database (npm scope → root namespace, Maven path, Conan recipe
    /// user → project path).
    ///
    /// **How the handler must decide: deny** (403). Resolving the package to a project would
    /// need the forge's database (or a lookup call per request); until that exists the
    /// project-level routes (`/projects/:id/packages/<format>/...`) are the way for bots.
    InstancePackages,
    /// `/jwt/auth`: a registry token asked with at least one `scope`, or any dependency proxy
    /// token. Every `scope` parameter (several are allowed, each also split on whitespace) is
    /// in `scopes`; a scope the gateway cannot read is an error (400), never dropped.
    ///
    /// **How the handler must decide** (each scope on its own; allow only when every scope
    /// is allowed):
    /// - `service` = [`RegistryService::DependencyProxy`]: **deny**. The forge ignores the
    ///   scopes and mints a token bound to the job's user, valid for every group dependency
    ///   proxy that user can read (gl#494694 used this flow to escalate a job token); no
    ///   project scope applies to it.
    /// - [`RegistryScope::Registry`] (`registry:catalog:*`): **deny**, it is instance-wide.
    /// - [`RegistryScope::Repository`]: if one candidate is the origin project's path (as the
    ///   forge reported it for the token), the scope is the origin's own project: allowed,
    ///   `write` included (routes are unique, so no other candidate can be a project).
    ///   Otherwise `write` → **deny** (the forge grants push and delete only to the job's own
    ///   project); a pull is allowed only when **every** candidate is allowed as a target
    ///   (the gateway cannot tell which prefix is the project). Refinement the handler may
    ///   apply: a candidate the scope file lists *by path* is taken as the project and the
    ///   others ignored, accepting that a stale scope-file path could then misattribute.
    Registry {
        service: RegistryService,
        scopes: Vec<RegistryScope>,
    },
    /// A documented route that acts on no project. The whole list:
    /// - `GET`/`HEAD` `/api/v4/job` (exact path, no trailing slash, no format suffix): the
    ///   token's own job (how bots and the gateway learn the origin);
    /// - `GET`/`HEAD` `/api/v4/job/allowed_agents`: the agents the token's own job may use;
    /// - `/jwt/auth?service=container_registry` without any `scope`: a login probe (`docker
    ///   login`); the token the forge returns grants no repository access.
    ProjectLess,
    /// Nothing the gateway can attribute to a project (denied when a job token is present).
    Unattributed,
}

impl Target {
    pub fn kind(&self) -> RouteKind {
        match self {
            Target::Project { kind, .. } => *kind,
            Target::Job { .. } => RouteKind::JobApi,
            Target::Group { .. } => RouteKind::GroupApi,
            Target::InstancePackages => RouteKind::InstancePackages,
            Target::Registry { .. } => RouteKind::RegistryAuth,
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
    #[error("double-encoded project or group id")]
    DoubleEncodedProjectId,
    #[error("undecodable project or group id")]
    UndecodableProjectId,
    #[error("control character in project or group id")]
    ControlCharacterInProjectId,
    #[error("backslash in project or group id")]
    BackslashInProjectId,
    #[error("project or group id out of range")]
    ProjectIdOutOfRange,
    #[error("project id is neither a number nor a full project path")]
    InvalidProjectId,
    #[error("a project path ending the route with a '.' may be read as a format suffix")]
    FormatSuffixOnProjectId,
    #[error("group id is neither a number nor a full group path")]
    InvalidGroupId,
    #[error("percent-encoding in repository path")]
    EncodedRepositoryPath,
    #[error("'.git' suffix not in lower case")]
    GitSuffixCase,
    #[error("repository path is not a valid project path")]
    InvalidRepositoryPath,
    #[error("malformed percent-encoding in the query of a registry token request")]
    MalformedRegistryQuery,
    #[error("registry scope is not 'repository:<image path>:<actions>' or 'registry:catalog:*'")]
    MalformedRegistryScope,
    #[error("registry image path names no possible project")]
    InvalidRegistryImagePath,
    #[error("too many registry scopes on one request")]
    TooManyRegistryScopes,
}

/// Work out the target of a request.
///
/// `path` is the raw request path (origin form, without the query), exactly as received.
/// `query` is the raw query string; it changes the target only on `/jwt/auth` (its `service`
/// and `scope` parameters): elsewhere Grape lets the path's routing args win over query
/// params, and the Git routes take nothing from it.
pub fn parse(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> Result<Target, TargetError> {
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
    if let Some(rest) = body.strip_prefix("jwt/") {
        // `get 'jwt/auth' => 'jwt#auth'`; a trailing slash routes the same.
        return if rest == "auth" {
            parse_registry_auth(query)
        } else {
            Ok(Target::Unattributed)
        };
    }
    parse_repository_or_web(body)
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
        // Also `/api/graphql`: GraphQL never accepts a job token.
        return Ok(Target::Unattributed);
    }
    let offset = offset + adv;
    let (resource, rest, adv) = next_segment(rest);
    let offset = offset + adv;
    Ok(match resource {
        "projects" => parse_project_id(rest, offset)?.unwrap_or(Target::Unattributed),
        "groups" => parse_group_id(rest, offset)?.unwrap_or(Target::Unattributed),
        // `/api/v4/packages/<format>/...`; `/api/v4/packages` alone is no route.
        "packages" if !rest.is_empty() => Target::InstancePackages,
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
        // Everything else, the internal API (`/api/v4/internal/...`) included.
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
    let (raw, after, _) = next_segment(rest);
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        let id = parse_u64(raw).ok_or(TargetError::ProjectIdOutOfRange)?;
        return Ok(Some(Target::Project {
            project: ProjectRef::Id(id),
            kind: RouteKind::ProjectApi,
            id_span: None,
            alias: None,
        }));
    }
    let decoded = decode_id_path(raw)?;
    if !is_valid_project_path(&decoded) {
        return Err(TargetError::InvalidProjectId);
    }
    // Grape adds an optional `(.:format)` to every route, and from Grape 2.4 a trailing
    // extension is parsed off a route's last param (GitLab suppresses that only where it sets
    // `NO_FORMAT_SUFFIX_REQUIREMENT`): `/projects/acme%2Fapp.json` is project `acme/app` for
    // the forge, `acme/app.json` for a literal reading. A final path-named `:id` with a dot
    // (also `%2E`) can be read both ways, so it is refused.
    if after.is_empty() && decoded.contains('.') {
        return Err(TargetError::FormatSuffixOnProjectId);
    }
    Ok(Some(Target::Project {
        project: ProjectRef::Path(decoded.into_boxed_str()),
        kind: RouteKind::ProjectApi,
        id_span: Some(offset..offset + raw.len()),
        alias: None,
    }))
}

/// The `:id` of `/api/v4/groups/:id[/...]`, like [`parse_project_id`]; a group path may be
/// a single segment (a top-level group).
fn parse_group_id(rest: &str, offset: usize) -> Result<Option<Target>, TargetError> {
    let (raw, _, _) = next_segment(rest);
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        let id = parse_u64(raw).ok_or(TargetError::ProjectIdOutOfRange)?;
        return Ok(Some(Target::Group {
            group: GroupRef::Id(id),
            id_span: None,
        }));
    }
    let decoded = decode_id_path(raw)?;
    if !is_valid_group_path(&decoded) {
        return Err(TargetError::InvalidGroupId);
    }
    Ok(Some(Target::Group {
        group: GroupRef::Path(decoded.into_boxed_str()),
        id_span: Some(offset..offset + raw.len()),
    }))
}

/// Percent-decode a path-named `:id` exactly once into a lowercased path (the same value
/// `ProjectRef::path` makes, built with a single allocation). The caller checks the grammar.
fn decode_id_path(raw: &str) -> Result<String, TargetError> {
    let escapes = raw.bytes().filter(|&b| b == b'%').count();
    let mut out = Vec::with_capacity(raw.len().saturating_sub(2 * escapes));
    for b in percent_encoding::percent_decode_str(raw) {
        match b {
            b'%' => return Err(TargetError::DoubleEncodedProjectId),
            b'\\' => return Err(TargetError::BackslashInProjectId),
            0x00..=0x1f | 0x7f => return Err(TargetError::ControlCharacterInProjectId),
            _ => out.push(b.to_ascii_lowercase()),
        }
    }
    String::from_utf8(out).map_err(|_| TargetError::UndecodableProjectId)
}

/// Git smart HTTP and LFS routes (`config/routes/git_http.rb`) and project web routes
/// (`/<project>/-/...`). `body` is the path without its leading slash and without a trailing
/// slash.
fn parse_repository_or_web(body: &str) -> Result<Target, TargetError> {
    // The repository path ends at the first segment ending in `.git`: GitLab forbids that
    // suffix in every namespace and project segment. Matched case-insensitively here so that
    // `.GIT` is seen, and refused below. A `-` segment before it starts a web route: no
    // namespace or project may be named `-`.
    let mut start = 0;
    let found = loop {
        let end = slash_in(&body[start..]).map_or(body.len(), |i| start + i);
        let seg = &body[start..end];
        if seg == "-" {
            return Ok(parse_web(body, start));
        }
        if ends_with_ignore_case(seg, ".git") {
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
                // The redirect itself serves nothing: no alias to decide.
                if let Ok(Some((project, _))) = repository_project(repo) {
                    return Ok(Target::Project {
                        project,
                        kind: RouteKind::Git,
                        id_span: None,
                        alias: None,
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
        Some((project, alias)) => Ok(Target::Project {
            project,
            kind,
            id_span: None,
            alias,
        }),
        None => Ok(Target::Unattributed),
    }
}

/// A web route: `dash` is the offset in `body` of its first `-` segment. The project is the
/// path before it, when the route after it is one of the download routes listed in the
/// module docs; anything else is Unattributed (denied), never an error.
fn parse_web(body: &str, dash: usize) -> Target {
    let Some(project) = body.get(..dash.saturating_sub(1)).filter(|p| !p.is_empty()) else {
        return Target::Unattributed;
    };
    let route = body.get(dash + 2..).unwrap_or("");
    let first = project.split('/').next().unwrap_or("");
    if project.contains('%')
        || is_reserved_top_level(first)
        || !is_valid_project_path(project)
        || !is_project_download_route(route)
    {
        return Target::Unattributed;
    }
    Target::Project {
        project: ProjectRef::path(project),
        kind: RouteKind::Web,
        id_span: None,
        alias: None,
    }
}

/// The web routes after `/-/` that are attributed to the project before it.
fn is_project_download_route(route: &str) -> bool {
    if has_nonempty_tail(route, "archive/")
        || has_nonempty_tail(route, "raw/")
        || has_nonempty_tail(route, "jobs/artifacts/")
        || route == "packages"
        || has_nonempty_tail(route, "packages/")
    {
        return true;
    }
    // `jobs/<id>/artifacts[/...]`
    let Some(rest) = route.strip_prefix("jobs/") else {
        return false;
    };
    let (id, rest, _) = next_segment(rest);
    parse_u64(id).is_some() && (rest == "artifacts" || has_nonempty_tail(rest, "artifacts/"))
}

/// `Gitlab::PathRegex::TOP_LEVEL_ROUTES` (compared case-insensitively): no namespace can have
/// these paths, so a web path starting with one names no project.
fn is_reserved_top_level(seg: &str) -> bool {
    const RESERVED: [&str; 34] = [
        "-",
        ".well-known",
        "404.html",
        "422.html",
        "500.html",
        "502.html",
        "503.html",
        "abuse_reports",
        "admin",
        "api",
        "assets",
        "autocomplete",
        "dashboard",
        "deploy.html",
        "explore",
        "favicon.ico",
        "files",
        "groups",
        "health_check",
        "help",
        "import",
        "jwt",
        "login",
        "oauth",
        "profile",
        "projects",
        "public",
        "robots.txt",
        "s",
        "search",
        "sitemap",
        "snippets",
        "uploads",
        "users",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(seg))
}

/// The project a repository path (without `.git`) belongs to, following
/// `Gitlab::RepoPath.parse`: `.wiki` and `.design` repositories belong to the project without
/// the suffix; snippet repositories (`snippets/<n>`, `<project>/snippets/<n>`) are `None`
/// (the forge may read them as a snippet or as a project of that path: unattributable).
///
/// The forge tries a project with the whole path first, so a real project literally named
/// `x.wiki` / `x.design` would be read as itself: that literal path is returned as the alias,
/// and both are decided (telling the two apart would need the forge's database).
fn repository_project(stem: &str) -> Result<Option<(ProjectRef, Option<ProjectRef>)>, TargetError> {
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
    // The literal path, when it is one a project could have: the forge tries it first.
    let alias =
        (path.len() < stem.len() && is_valid_project_path(stem)).then(|| ProjectRef::path(stem));
    Ok(Some((ProjectRef::path(path), alias)))
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

// ---------------------------------------------------------------------------------------------
// `/jwt/auth`: the container registry and dependency proxy token endpoint.

/// The target of `/jwt/auth?<query>`.
///
/// The forge reads `service` from Rails' `params` (last value wins) and `scope` from the raw
/// query (every occurrence). Rack 2 splits the query on `&` and `;`, Rack 3 on `&` only; the
/// gateway reads every pair of *both* splittings, so that it sees every scope either reading
/// could give the forge. `service` must then be one known value however it is read;
/// anything else is Unattributed (the forge answers 404 to an unknown service, but a
/// request the gateway cannot read is denied, not guessed).
fn parse_registry_auth(query: Option<&str>) -> Result<Target, TargetError> {
    let mut service: Option<RegistryService> = None;
    let mut service_ok = true;
    let mut scopes = Vec::new();
    let query = query.unwrap_or("");
    for (i, pair) in query.split('&').enumerate() {
        let pair = if i == 0 {
            pair
        } else {
            pair.trim_start_matches(' ')
        };
        registry_pair(pair, &mut service, &mut service_ok, &mut scopes)?;
        if pair.contains(';') {
            for (j, sub) in pair.split(';').enumerate() {
                let sub = if j == 0 {
                    sub
                } else {
                    sub.trim_start_matches(' ')
                };
                registry_pair(sub, &mut service, &mut service_ok, &mut scopes)?;
            }
        }
    }
    let Some(service) = service.filter(|_| service_ok) else {
        return Ok(Target::Unattributed);
    };
    if service == RegistryService::ContainerRegistry && scopes.is_empty() {
        return Ok(Target::ProjectLess);
    }
    Ok(Target::Registry { service, scopes })
}

/// One `key=value` pair of a `/jwt/auth` query.
fn registry_pair(
    pair: &str,
    service: &mut Option<RegistryService>,
    service_ok: &mut bool,
    scopes: &mut Vec<RegistryScope>,
) -> Result<(), TargetError> {
    if pair.is_empty() {
        return Ok(());
    }
    let (key, value) = match pair.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (pair, None),
    };
    // Rack raises on a bad escape anywhere in the query: the forge fails the request.
    let key = form_decode(key).ok_or(TargetError::MalformedRegistryQuery)?;
    let value = match value {
        Some(v) => Some(form_decode(v).ok_or(TargetError::MalformedRegistryQuery)?),
        None => None,
    };
    // Rack's nested-params name: leading brackets skipped, up to the next bracket.
    let name = key.trim_start_matches(['[', ']']);
    let name = name.split(['[', ']']).next().unwrap_or("");
    if name == "service" {
        let this = match (key.as_ref(), value.as_deref()) {
            ("service", Some("container_registry")) => Some(RegistryService::ContainerRegistry),
            ("service", Some("dependency_proxy")) => Some(RegistryService::DependencyProxy),
            _ => None,
        };
        match (this, *service) {
            (Some(s), None) => *service = Some(s),
            (Some(s), Some(seen)) if s == seen => {}
            _ => *service_ok = false,
        }
    }
    if key == "scope" {
        if let Some(value) = value {
            // `scopes.flat_map(&:split)`: Ruby splits on ASCII whitespace. A non-ASCII value
            // could be split differently (and names no valid image anyway).
            if !value.is_ascii() {
                return Err(TargetError::MalformedRegistryScope);
            }
            for scope in value.split(is_ruby_space).filter(|s| !s.is_empty()) {
                if scopes.len() >= MAX_REGISTRY_SCOPES {
                    return Err(TargetError::TooManyRegistryScopes);
                }
                scopes.push(parse_registry_scope(scope)?);
            }
        }
    }
    Ok(())
}

/// Ruby's `ascii_isspace` (what `String#split` with no pattern splits on).
fn is_ruby_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// One scope: `type:name:actions` (`scope.split(':', 3)`; the actions may hold more `:`).
fn parse_registry_scope(scope: &str) -> Result<RegistryScope, TargetError> {
    let mut parts = scope.splitn(3, ':');
    let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next()) else {
        // The forge raises on a scope without actions (`nil.split`).
        return Err(TargetError::MalformedRegistryScope);
    };
    let repository =
        kind == "repository" || (kind.starts_with("repository(") && kind.ends_with(')'));
    if kind == "registry" {
        return Ok(RegistryScope::Registry);
    }
    if !repository {
        return Err(TargetError::MalformedRegistryScope);
    }
    // `actions.split(',')`: trailing empty fields dropped; anything but `pull` writes.
    let actions = actions.trim_end_matches(',');
    let write = !actions.is_empty() && actions.split(',').any(|a| a != "pull");
    let image = name.to_ascii_lowercase();
    Ok(RegistryScope::Repository {
        candidates: registry_candidates(&image)?,
        image: image.into_boxed_str(),
        write,
    })
}

/// `ContainerRegistry::Path`: the (downcased) name checked against
/// `container_repository_name_regex`, 2..19 components; its longest three prefixes of at
/// least two components that are valid project paths.
fn registry_candidates(name: &str) -> Result<Vec<ProjectRef>, TargetError> {
    let components = name.split('/').count();
    if !is_container_repository_name(name) || !(2..20).contains(&components) {
        return Err(TargetError::InvalidRegistryImagePath);
    }
    let mut candidates = Vec::with_capacity(3);
    let mut end = name.len();
    for _ in 0..3 {
        let prefix = &name[..end];
        if prefix.split('/').count() < 2 {
            break;
        }
        if is_valid_project_path(prefix) {
            candidates.push(ProjectRef::Path(prefix.into()));
        }
        match prefix.rfind('/') {
            Some(i) => end = i,
            None => break,
        }
    }
    if candidates.is_empty() {
        return Err(TargetError::InvalidRegistryImagePath);
    }
    Ok(candidates)
}

/// `\A[a-z0-9]+(([._/]|__|-*)[a-z0-9])*\z`: runs of `[a-z0-9]` joined by one `.`, `_` or `/`,
/// by `__`, or by any number of `-`.
fn is_container_repository_name(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !b.first().is_some_and(|&c| alnum(c)) || !b.last().is_some_and(|&c| alnum(c)) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = matches!(sep, b"." | b"_" | b"/" | b"__") || sep.iter().all(|&c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `URI.decode_www_form_component`: `+` is a space, `%XX` a byte; None for an invalid escape
/// or a result that is not UTF-8. Borrows when there is nothing to decode.
fn form_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_digit(*b.get(i + 1)?)?;
                let lo = hex_digit(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
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
            alias: None,
        })
    }

    fn by_path(path: &str, span: Range<usize>) -> Result<Target, TargetError> {
        Ok(Target::Project {
            project: ProjectRef::path(path),
            kind: RouteKind::ProjectApi,
            id_span: Some(span),
            alias: None,
        })
    }

    fn repo(path: &str, kind: RouteKind) -> Result<Target, TargetError> {
        Ok(Target::Project {
            project: ProjectRef::path(path),
            kind,
            id_span: None,
            alias: None,
        })
    }

    /// A repository the forge may read as `path` or as the project literally named `alias`.
    fn repo_or(path: &str, alias: &str, kind: RouteKind) -> Result<Target, TargetError> {
        Ok(Target::Project {
            project: ProjectRef::path(path),
            kind,
            id_span: None,
            alias: Some(ProjectRef::path(alias)),
        })
    }

    const P: usize = "/api/v4/projects/".len();
    const G: usize = "/api/v4/groups/".len();

    fn group_id(id: u64) -> Result<Target, TargetError> {
        Ok(Target::Group {
            group: GroupRef::Id(id),
            id_span: None,
        })
    }

    fn group_path(path: &str, span: Range<usize>) -> Result<Target, TargetError> {
        Ok(Target::Group {
            group: GroupRef::Path(path.into()),
            id_span: Some(span),
        })
    }

    fn jwt(query: &str) -> Result<Target, TargetError> {
        parse(&Method::GET, "/jwt/auth", Some(query))
    }

    fn repo_scope(candidates: &[&str], write: bool) -> RegistryScope {
        RegistryScope::Repository {
            image: candidates[0].to_ascii_lowercase().into(),
            candidates: candidates.iter().map(|c| ProjectRef::path(c)).collect(),
            write,
        }
    }

    fn registry(scopes: Vec<RegistryScope>) -> Result<Target, TargetError> {
        Ok(Target::Registry {
            service: RegistryService::ContainerRegistry,
            scopes,
        })
    }

    fn web(path: &str) -> Result<Target, TargetError> {
        Ok(Target::Project {
            project: ProjectRef::path(path),
            kind: RouteKind::Web,
            id_span: None,
            alias: None,
        })
    }

    #[test]
    fn group_routes() {
        use TargetError as E;
        let cases: Vec<(&str, Result<Target, TargetError>)> = vec![
            ("/api/v4/groups/5", group_id(5)),
            ("/api/v4/groups/5/", group_id(5)),
            ("/api/v4/groups/007/-/packages/npm/@acme/app", group_id(7)),
            ("/api/v4/groups/5/packages", group_id(5)),
            (
                "/api/v4/groups/5/-/packages/maven/com/acme/app/1.0/app-1.0.jar",
                group_id(5),
            ),
            (
                "/api/v4/groups/5/-/packages/pypi/simple/requests",
                group_id(5),
            ),
            (
                "/api/v4/groups/acme/-/packages/composer/packages",
                group_path("acme", G..G + 4),
            ),
            ("/api/v4/groups/Acme", group_path("acme", G..G + 4)),
            (
                "/api/v4/groups/acme%2FPlatform/-/packages/nuget/index.json",
                group_path("acme/platform", G..G + 15),
            ),
            ("/api/v4/groups/%61cme/x", group_path("acme", G..G + 6)),
            ("/api/v4/groups", Ok(Target::Unattributed)),
            ("/api/v4/groups/", Ok(Target::Unattributed)),
            ("/api/v4/%67roups/5", Ok(Target::Unattributed)),
            ("/api/v4/groups/-5/x", Err(E::InvalidGroupId)),
            ("/api/v4/groups/acme.git/x", Err(E::InvalidGroupId)),
            ("/api/v4/groups/acme%2F/x", Err(E::InvalidGroupId)),
            (
                "/api/v4/groups/acme%252Fx/x",
                Err(E::DoubleEncodedProjectId),
            ),
            ("/api/v4/groups/acme%2F..%2Fx/x", Err(E::InvalidGroupId)),
            ("/api/v4/groups/a%00/x", Err(E::ControlCharacterInProjectId)),
            (
                "/api/v4/groups/18446744073709551616/x",
                Err(E::ProjectIdOutOfRange),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(get(path), want, "path {path:?}");
        }
    }

    #[test]
    fn instance_packages_graphql_and_internal_api() {
        for path in [
            "/api/v4/packages/npm/@acme%2fapp",
            "/api/v4/packages/npm/-/package/@acme/app/dist-tags",
            "/api/v4/packages/maven/com/acme/app/1.0/app-1.0.jar",
            "/api/v4/packages/conan/v1/conans/search",
            "/api/v4/packages/conan/v1/users/authenticate",
            "/api/v4/packages/pypi/simple",
            "/api/v4/packages/terraform/modules/v1/acme/vpc/aws/versions",
            "/api/v4/packages/x/",
        ] {
            assert_eq!(get(path), Ok(Target::InstancePackages), "path {path:?}");
        }
        for path in [
            "/api/v4/packages",
            "/api/v4/packages/",
            "/api/graphql",
            "/api/graphql/",
            "/api/v4/graphql",
            "/api/v4/internal/allowed",
            "/api/v4/internal/dast/site_validations/1/transition",
            "/api/v4/internal/kubernetes/agent_info",
            "/-/graphql-explorer",
        ] {
            for m in [Method::GET, Method::POST] {
                assert_eq!(
                    parse(&m, path, None),
                    Ok(Target::Unattributed),
                    "{m} {path:?}"
                );
            }
        }
    }

    #[test]
    fn web_routes() {
        let cases: Vec<(&str, Result<Target, TargetError>)> = vec![
            ("/acme/app/-/archive/main/app-main.zip", web("acme/app")),
            (
                "/Acme/Sub/App/-/archive/v1.0/app-v1.0.tar.gz",
                web("acme/sub/app"),
            ),
            ("/acme/app/-/raw/main/README.md", web("acme/app")),
            ("/acme/app/-/jobs/artifacts/main/download", web("acme/app")),
            (
                "/acme/app/-/jobs/artifacts/main/raw/a/b.txt",
                web("acme/app"),
            ),
            ("/acme/app/-/jobs/42/artifacts/download", web("acme/app")),
            ("/acme/app/-/jobs/42/artifacts", web("acme/app")),
            ("/acme/app/-/packages", web("acme/app")),
            ("/acme/app/-/packages/7", web("acme/app")),
            // Not a download route, or no project before `/-/`.
            ("/acme/app/-/jobs/42", Ok(Target::Unattributed)),
            ("/acme/app/-/jobs/x/artifacts", Ok(Target::Unattributed)),
            ("/acme/app/-/jobs/artifacts", Ok(Target::Unattributed)),
            ("/acme/app/-/archive", Ok(Target::Unattributed)),
            ("/acme/app/-/raw", Ok(Target::Unattributed)),
            ("/acme/app/-/blob/main/x", Ok(Target::Unattributed)),
            ("/acme/app/-/merge_requests/1", Ok(Target::Unattributed)),
            ("/acme/app/-/settings/ci_cd", Ok(Target::Unattributed)),
            ("/acme/app/-/packagesx", Ok(Target::Unattributed)),
            ("/acme/-/archive/main/x.zip", Ok(Target::Unattributed)),
            ("/-/archive/main/x.zip", Ok(Target::Unattributed)),
            ("/groups/acme/-/packages", Ok(Target::Unattributed)),
            ("/groups/acme/sub/-/archive/x", Ok(Target::Unattributed)),
            ("/Groups/acme/-/archive/x", Ok(Target::Unattributed)),
            ("/users/acme/-/raw/x", Ok(Target::Unattributed)),
            ("/acme%2Fapp/x/-/raw/main/x", Ok(Target::Unattributed)),
            ("/acme/a%70p/-/raw/main/x", Ok(Target::Unattributed)),
            ("/acme/-app/-/raw/main/x", Ok(Target::Unattributed)),
            ("/acme/app/-/-/raw/main/x", Ok(Target::Unattributed)),
            // The first `-` segment ends the project path; a later one is the route's.
            ("/acme/app/-/raw/main/-/x", web("acme/app")),
            // `.git` before `-`: a repository route, not a web route.
            ("/acme/app.git/-/raw/main/x", Ok(Target::Unattributed)),
            (
                "/acme/app.git/info/lfs/objects/-/x",
                repo("acme/app", RouteKind::Lfs),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(get(path), want, "path {path:?}");
        }
    }

    #[test]
    fn registry_token_scopes() {
        use TargetError as E;
        const CR: &str = "service=container_registry";
        let own = |scope: &str| jwt(&format!("{CR}&scope={scope}"));
        let cases: Vec<(String, Result<Target, TargetError>)> = vec![
            // A login probe: no scope at all.
            (CR.into(), Ok(Target::ProjectLess)),
            (
                format!("{CR}&account=bot&client_id=docker"),
                Ok(Target::ProjectLess),
            ),
            (format!("{CR}&scope="), Ok(Target::ProjectLess)),
            (format!("{CR}&scope=+"), Ok(Target::ProjectLess)),
            (format!("{CR}&scope"), Ok(Target::ProjectLess)),
            (
                format!("{CR}&scope[]=repository:a/b:push"),
                Ok(Target::ProjectLess),
            ),
            // One image; candidates are the longest 3 prefixes of at least 2 components.
            (
                format!("{CR}&scope=repository:acme/app:pull"),
                registry(vec![repo_scope(&["acme/app"], false)]),
            ),
            (
                format!("{CR}&scope=repository:acme/app/img:pull,push"),
                registry(vec![repo_scope(&["acme/app/img", "acme/app"], true)]),
            ),
            (
                format!("{CR}&scope=repository:a/b/c/d/e:pull"),
                registry(vec![repo_scope(&["a/b/c/d/e", "a/b/c/d", "a/b/c"], false)]),
            ),
            (
                format!("{CR}&scope=repository:Acme/App:pull"),
                registry(vec![repo_scope(&["acme/app"], false)]),
            ),
            // Actions: only `pull` reads.
            (
                format!("{CR}&scope=repository:a/b:delete"),
                registry(vec![repo_scope(&["a/b"], true)]),
            ),
            (
                format!("{CR}&scope=repository:a/b:*"),
                registry(vec![repo_scope(&["a/b"], true)]),
            ),
            (
                format!("{CR}&scope=repository:a/b:pull,"),
                registry(vec![repo_scope(&["a/b"], false)]),
            ),
            (
                format!("{CR}&scope=repository:a/b:"),
                registry(vec![repo_scope(&["a/b"], false)]),
            ),
            (
                format!("{CR}&scope=repository:a/b:,pull"),
                registry(vec![repo_scope(&["a/b"], true)]),
            ),
            (
                format!("{CR}&scope=repository:a/b:pull:x"),
                registry(vec![repo_scope(&["a/b"], true)]),
            ),
            (
                format!("{CR}&scope=repository:a/b:PULL"),
                registry(vec![repo_scope(&["a/b"], true)]),
            ),
            // Resource classes.
            (
                format!("{CR}&scope=repository(plugin):a/b:pull"),
                registry(vec![repo_scope(&["a/b"], false)]),
            ),
            // Several scopes, several ways.
            (
                format!("{CR}&scope=repository:a/b:pull&scope=repository:c/d/e:push"),
                registry(vec![
                    repo_scope(&["a/b"], false),
                    repo_scope(&["c/d/e", "c/d"], true),
                ]),
            ),
            (
                format!("{CR}&scope=repository:a/b:pull+repository:c/d:pull%20repository:e/f:pull"),
                registry(vec![
                    repo_scope(&["a/b"], false),
                    repo_scope(&["c/d"], false),
                    repo_scope(&["e/f"], false),
                ]),
            ),
            (
                format!("scope=repository%3Aa%2Fb%3Apull&{CR}"),
                registry(vec![repo_scope(&["a/b"], false)]),
            ),
            (
                format!("%73cope=repository:a/b:pull&{CR}"),
                registry(vec![repo_scope(&["a/b"], false)]),
            ),
            // `;`: Rack 2 splits there, Rack 3 does not; both readings are kept.
            (
                format!("{CR}&scope=repository:a/b:pull;x,push"),
                registry(vec![
                    repo_scope(&["a/b"], true),
                    repo_scope(&["a/b"], false),
                ]),
            ),
            (
                format!("{CR};scope=repository:a/b:pull"),
                Ok(Target::Unattributed),
            ),
            // Instance-wide.
            (
                format!("{CR}&scope=registry:catalog:*"),
                registry(vec![RegistryScope::Registry]),
            ),
            (
                format!("{CR}&scope=registry:catalog:*&scope=repository:a/b:pull"),
                registry(vec![RegistryScope::Registry, repo_scope(&["a/b"], false)]),
            ),
            // Unreadable scopes: 400.
            (
                format!("{CR}&scope=repository:a/b"),
                Err(E::MalformedRegistryScope),
            ),
            (
                format!("{CR}&scope=repository"),
                Err(E::MalformedRegistryScope),
            ),
            (
                format!("{CR}&scope=foo:a/b:pull"),
                Err(E::MalformedRegistryScope),
            ),
            (
                format!("{CR}&scope=Repository:a/b:pull"),
                Err(E::MalformedRegistryScope),
            ),
            (
                format!("{CR}&scope=:a/b:pull"),
                Err(E::MalformedRegistryScope),
            ),
            (
                format!("{CR}&scope=repository:%C3%A9/b:pull"),
                Err(E::MalformedRegistryScope),
            ),
            (
                format!("{CR}&scope=repository:app:pull"),
                Err(E::InvalidRegistryImagePath),
            ),
            (
                format!("{CR}&scope=repository::pull"),
                Err(E::InvalidRegistryImagePath),
            ),
            (
                format!("{CR}&scope=repository:a//b:pull"),
                Err(E::InvalidRegistryImagePath),
            ),
            (
                format!("{CR}&scope=repository:a/b/:pull"),
                Err(E::InvalidRegistryImagePath),
            ),
            (
                format!("{CR}&scope=repository:a/../b:pull"),
                Err(E::InvalidRegistryImagePath),
            ),
            (
                format!("{CR}&scope=repository:-a/b:pull"),
                Err(E::InvalidRegistryImagePath),
            ),
            (
                format!("{CR}&scope=repository:a/b.git:pull"),
                Err(E::InvalidRegistryImagePath),
            ),
            (
                format!("{CR}&scope=repository:a/b;c/d:pull"),
                Err(E::InvalidRegistryImagePath),
            ),
            (
                format!("{CR}&scope=repository:{}:pull", ["a"; 20].join("/")),
                Err(E::InvalidRegistryImagePath),
            ),
            (
                format!("{CR}&scope=repository:a/b:pull%zz"),
                Err(E::MalformedRegistryQuery),
            ),
            (format!("{CR}&x%=1"), Err(E::MalformedRegistryQuery)),
            (
                format!(
                    "{CR}{}",
                    "&scope=repository:a/b:pull".repeat(MAX_REGISTRY_SCOPES + 1)
                ),
                Err(E::TooManyRegistryScopes),
            ),
            // The service must be one known value, however it is read.
            ("scope=repository:a/b:pull".into(), Ok(Target::Unattributed)),
            (
                "service=other&scope=repository:a/b:pull".into(),
                Ok(Target::Unattributed),
            ),
            (
                "service=container_registry&service=dependency_proxy".into(),
                Ok(Target::Unattributed),
            ),
            (
                "service[]=container_registry".into(),
                Ok(Target::Unattributed),
            ),
            (
                "service=container_registry&[service]=x".into(),
                Ok(Target::Unattributed),
            ),
            (
                "service=container_registry;x".into(),
                Ok(Target::Unattributed),
            ),
            (
                "service=container_registry&service=container_registry".into(),
                Ok(Target::ProjectLess),
            ),
            (
                "%73ervice=container_registry".into(),
                Ok(Target::ProjectLess),
            ),
            ("".into(), Ok(Target::Unattributed)),
        ];
        for (query, want) in cases {
            assert_eq!(jwt(&query), want, "query {query:?}");
        }
        // The dependency proxy ignores scopes: always a Registry target (denied).
        assert_eq!(
            jwt("service=dependency_proxy"),
            Ok(Target::Registry {
                service: RegistryService::DependencyProxy,
                scopes: vec![],
            })
        );
        assert_eq!(
            jwt("service=dependency_proxy&scope=repository:acme/dependency_proxy/containers/alpine:pull"),
            Ok(Target::Registry {
                service: RegistryService::DependencyProxy,
                scopes: vec![repo_scope(
                    &[
                        "acme/dependency_proxy/containers/alpine",
                        "acme/dependency_proxy/containers",
                        "acme/dependency_proxy",
                    ],
                    false
                )],
            })
        );
        // Other paths under /jwt, and the method, change nothing.
        assert_eq!(
            own("repository:a/b:pull"),
            registry(vec![repo_scope(&["a/b"], false)])
        );
        assert_eq!(
            parse(
                &Method::GET,
                "/jwt/auth/",
                Some("service=container_registry")
            ),
            Ok(Target::ProjectLess)
        );
        for path in [
            "/jwt",
            "/jwt/",
            "/jwt/auth.json",
            "/jwt/other",
            "/jwt/auth/x",
            "/JWT/auth",
            "/jwt/%61uth",
        ] {
            assert_eq!(
                parse(&Method::GET, path, Some("service=container_registry")),
                Ok(Target::Unattributed),
                "path {path:?}"
            );
        }
    }

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
            // Grape reads a final `<path>.<ext>` as `<path>` + format: refused.
            (
                "/api/v4/projects/acme%2Fapp.json",
                Err(E::FormatSuffixOnProjectId),
            ),
            (
                "/api/v4/projects/acme%2Fapp.json/",
                Err(E::FormatSuffixOnProjectId),
            ),
            (
                "/api/v4/projects/acme%2Fapp%2Ejson",
                Err(E::FormatSuffixOnProjectId),
            ),
            (
                "/api/v4/projects/acme.x%2Fapp",
                Err(E::FormatSuffixOnProjectId),
            ),
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
            (
                "/acme/app.wiki.git/info/refs",
                repo_or("acme/app", "acme/app.wiki", Git),
            ),
            (
                "/acme/app.design.git/git-upload-pack",
                repo_or("acme/app", "acme/app.design", Git),
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
                repo_or("acme/app", "acme/app.wiki", Lfs),
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
        assert_eq!(
            get("/api/v4/groups/1").map(|t| t.kind()),
            Ok(RouteKind::GroupApi)
        );
        assert_eq!(
            get("/api/v4/packages/npm/x").map(|t| t.kind()),
            Ok(RouteKind::InstancePackages)
        );
        assert_eq!(
            get("/a/b/-/raw/main/x").map(|t| t.kind()),
            Ok(RouteKind::Web)
        );
        assert_eq!(
            jwt("service=dependency_proxy").map(|t| t.kind()),
            Ok(RouteKind::RegistryAuth)
        );
        let labels: Vec<&str> = [
            RouteKind::ProjectApi,
            RouteKind::Git,
            RouteKind::Lfs,
            RouteKind::Web,
            RouteKind::JobApi,
            RouteKind::GroupApi,
            RouteKind::InstancePackages,
            RouteKind::RegistryAuth,
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
                "web",
                "job_api",
                "group_api",
                "instance_packages",
                "registry_auth",
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
