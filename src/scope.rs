//! The scope file: its serde model, loading, validation and warnings.
//!
//! Loading reads the file, parses it, validates it and compiles it into a [`Policy`]. Validation
//! reports every problem it finds at once, each as `<file>:<line>: <what is wrong>; <what to
//! do>`:
//! - TOML syntax errors (all of them; the file is not looked at further when there are any);
//! - unknown keys and values of the wrong type: the serde model below is the single source of
//!   truth (`deny_unknown_fields`); when the whole file does not deserialize, each table, key and
//!   list element is tried alone so that every bad key or value is named, not just the first;
//! - a `[[project]]` naming no project, duplicate projects (same id, or same path in any letter
//!   case; both lines named), an entry allowing itself, paths that are not forge project paths
//!   (or group paths in `allow_groups`), allowlists longer than `max_allowlist`;
//! - `[[token]]` entries without a 64-hex-digit `sha256` or a `project`, duplicate digests.
//!
//! Warnings (the file still loads) name allowlist entries that can only match one form of a
//! project's name (design.md, policy rule 7), entries listed twice, and tokens whose project has
//! no entry.
//!
//! Omitted keys: an omitted `[defaults]` key means `outbound = true`, `inbound = true`,
//! `report_only = false`. A `[[project]]` that omits `report_only`, a limit table, or `enabled`
//! inside a limit table takes the `[defaults]` value (an omitted table has empty allowlists).
//! So `[project.outbound]` with only `allow = [...]` lists targets without switching the limit
//! on or off: that is the defaults' business unless `enabled` says otherwise.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserialize;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::policy::{file_digest, Defaults, LimitSpec, Policy, ProjectSpec, TokenSpec};
use crate::project::{is_valid_group_path, is_valid_project_path, ProjectRef};

/// Limits that come from the settings file.
#[derive(Clone, Debug)]
pub struct ScopeLimits {
    /// Most entries in one allowlist (`allow` and `allow_groups` count separately, per
    /// direction, as GitLab counts them).
    pub max_allowlist: usize,
}

impl Default for ScopeLimits {
    fn default() -> Self {
        ScopeLimits { max_allowlist: 200 }
    }
}

/// A loaded scope file.
#[derive(Debug)]
pub struct Loaded {
    pub policy: Policy,
    /// `<file>:<line>: <warning>` lines for `scopegate check`, in file order.
    pub warnings: Vec<String>,
}

/// One problem in a scope file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeIssue {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// `<what is wrong>; <what to do>`.
    pub message: String,
}

impl fmt::Display for ScopeIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

fn display_issues(issues: &[ScopeIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("cannot read scope file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Display: one line per issue, `<file>:<line>: <what is wrong>; <what to do>`.
    #[error("{}", display_issues(.issues))]
    Invalid { issues: Vec<ScopeIssue> },
}

// ---------------------------------------------------------------------------------------------
// The serde model: exactly the keys of design.md's "Scope file". Every field is optional at the
// serde level (presence is checked with better messages afterwards), which also lets each key be
// deserialized alone when collecting every error.

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeFile {
    pub defaults: Option<DefaultsTable>,
    #[serde(default)]
    pub project: Vec<Spanned<ProjectEntry>>,
    #[serde(default)]
    pub token: Vec<Spanned<TokenEntry>>,
}

/// `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsTable {
    pub outbound: Option<bool>,
    pub inbound: Option<bool>,
    pub report_only: Option<bool>,
}

/// One `[[project]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectEntry {
    pub id: Option<Spanned<ProjectId>>,
    pub path: Option<Spanned<String>>,
    pub report_only: Option<bool>,
    pub outbound: Option<LimitTable>,
    pub inbound: Option<LimitTable>,
}

/// `[project.outbound]` or `[project.inbound]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitTable {
    pub enabled: Option<bool>,
    #[serde(default)]
    pub allow: Vec<Spanned<ProjectName>>,
    #[serde(default)]
    pub allow_groups: Vec<Spanned<String>>,
}

/// One `[[token]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub sha256: Option<Spanned<String>>,
    pub project: Option<Spanned<ProjectName>>,
}

/// A numeric project id: a positive TOML integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjectId(pub u64);

/// A project named in the file: a TOML integer (id) or a string (full path, as written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectName {
    Id(u64),
    Path(String),
}

fn positive<E: de::Error>(v: i64, exp: &dyn de::Expected) -> Result<u64, E> {
    match u64::try_from(v) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(E::invalid_value(de::Unexpected::Signed(v), exp)),
    }
}

impl<'de> Deserialize<'de> for ProjectId {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ProjectId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a project id (a positive integer, without quotes)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ProjectId, E> {
                positive(v, &self).map(ProjectId)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ProjectId, E> {
                if v == 0 {
                    return Err(E::invalid_value(de::Unexpected::Unsigned(v), &self));
                }
                Ok(ProjectId(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for ProjectName {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ProjectName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a project id (integer) or full project path (string)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ProjectName, E> {
                positive(v, &self).map(ProjectName::Id)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ProjectName, E> {
                if v == 0 {
                    return Err(E::invalid_value(de::Unexpected::Unsigned(v), &self));
                }
                Ok(ProjectName::Id(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ProjectName, E> {
                Ok(ProjectName::Path(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ProjectName, E> {
                Ok(ProjectName::Path(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProjectName::Id(id) => write!(f, "{id}"),
            ProjectName::Path(p) => write!(f, "\"{p}\""),
        }
    }
}

impl ProjectName {
    fn to_ref(&self) -> ProjectRef {
        match self {
            ProjectName::Id(id) => ProjectRef::Id(*id),
            ProjectName::Path(p) => ProjectRef::path(p),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// Read + parse + validate + compile. `path` is used in messages.
pub fn load_file(path: &Path, limits: &ScopeLimits) -> Result<Loaded, ScopeError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ScopeError::Io {
        path: name.clone(),
        source,
    })?;
    load_str(&name, &text, limits)
}

/// Parse + validate + compile text; `source` names the file in messages.
pub fn load_str(source: &str, text: &str, limits: &ScopeLimits) -> Result<Loaded, ScopeError> {
    let mut ctx = Ctx {
        file: source,
        lines: Lines::new(text),
        issues: Vec::new(),
        warnings: Vec::new(),
    };
    let Some(file) = parse(text, &mut ctx) else {
        return Err(ctx.into_error());
    };
    let (defaults, projects, tokens) = validate(file, limits, &mut ctx);
    if !ctx.issues.is_empty() {
        return Err(ctx.into_error());
    }
    ctx.warnings.sort_by_key(|(line, _)| *line);
    let warnings = ctx.warnings.into_iter().map(|(_, w)| w).collect();
    Ok(Loaded {
        policy: Policy::build(defaults, projects, tokens, file_digest(text.as_bytes())),
        warnings,
    })
}

/// Where each line starts, to turn byte offsets (toml's spans) into 1-based line numbers.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines(starts)
    }
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset).max(1)
    }
}

struct Ctx<'a> {
    file: &'a str,
    lines: Lines,
    issues: Vec<ScopeIssue>,
    warnings: Vec<(usize, String)>,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        self.lines.line(span.start)
    }
    fn error(&mut self, span: &Range<usize>, message: String) {
        self.issues.push(ScopeIssue {
            file: self.file.to_owned(),
            line: self.line(span),
            message,
        });
    }
    fn warn(&mut self, span: &Range<usize>, message: String) {
        let line = self.line(span);
        self.warnings
            .push((line, format!("{}:{line}: {message}", self.file)));
    }
    fn into_error(mut self) -> ScopeError {
        self.issues.sort_by_key(|i| i.line);
        self.issues.dedup();
        ScopeError::Invalid {
            issues: self.issues,
        }
    }
}

/// What to do about a deserialization error, from serde's (stable) message shapes.
fn serde_hint(message: &str) -> &'static str {
    if message.starts_with("unknown field") {
        "remove the key or correct its spelling"
    } else if message.contains("expected a sequence") {
        "write a list `[ ... ]`; a project or token entry is a `[[project]]` or `[[token]]` table (double brackets)"
    } else if message.contains("expected struct") || message.contains("expected a map") {
        "write a table here"
    } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
        "write the value in the expected form"
    } else {
        "correct this value"
    }
}

fn syntax_hint(message: &str) -> &'static str {
    if message.starts_with("duplicate key") {
        "keep only one of the two (for another project, start a new [[project]] table)"
    } else {
        "fix the TOML syntax"
    }
}

/// Syntax and model errors, all of them; `None` when there are any.
fn parse(text: &str, ctx: &mut Ctx<'_>) -> Option<ScopeFile> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in &syntax {
            let span = e.span().unwrap_or(0..0);
            let message = format!("{}; {}", e.message(), syntax_hint(e.message()));
            ctx.error(&span, message);
        }
        return None;
    }
    let root = Spanned::new(doc.span(), DeValue::Table(doc.into_inner()));
    let first = match ScopeFile::deserialize(ValueDeserializer::from(root)) {
        Ok(file) => return Some(file),
        Err(e) => e,
    };
    // The tree was consumed; parse again (it parsed once, so it does again) to find every error.
    let (doc, _) = DeTable::parse_recoverable(text);
    let root = Spanned::new(doc.span(), DeValue::Table(doc.into_inner()));
    let mut found = Vec::new();
    every_error::<ScopeFile>(&root, &root, &mut Vec::new(), first, &mut found);
    let mut seen = HashSet::new();
    for (span, message) in found {
        if seen.insert((span.clone(), message.clone())) {
            let message = format!("{message}; {}", serde_hint(&message));
            ctx.error(&span, message);
        }
    }
    None
}

#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Elem(usize),
}

/// A copy of `node` that keeps only what lies on `path` (and everything below its end).
fn restrict<'i>(node: &Spanned<DeValue<'i>>, path: &[Step<'_>]) -> Spanned<DeValue<'i>> {
    let Some((step, rest)) = path.split_first() else {
        return node.clone();
    };
    match (node.get_ref(), *step) {
        (DeValue::Table(table), Step::Key(key)) => {
            let mut only = DeTable::new();
            if let Some((k, child)) = table.get_key_value(key) {
                only.insert(k.clone(), restrict(child, rest));
            }
            Spanned::new(node.span(), DeValue::Table(only))
        }
        (DeValue::Array(array), Step::Elem(i)) => {
            let mut only = DeArray::new();
            if let Some(child) = array.get(i) {
                only.push(restrict(child, rest));
            }
            Spanned::new(node.span(), DeValue::Array(only))
        }
        _ => node.clone(),
    }
}

/// `err` is what deserializing the document restricted to `path` (ending at `node`) gave. Try
/// each child of `node` alone; report the errors of the smallest parts that fail by themselves,
/// or `err` itself when none does. Only failing parts are descended into, so a large file with
/// few errors costs one small deserialization per sibling of each failing part.
fn every_error<'a, 'i, T: DeserializeOwned>(
    root: &'a Spanned<DeValue<'i>>,
    node: &'a Spanned<DeValue<'i>>,
    path: &mut Vec<Step<'a>>,
    err: toml::de::Error,
    found: &mut Vec<(Range<usize>, String)>,
) {
    let children: Vec<(Step<'a>, &'a Spanned<DeValue<'i>>)> = match node.get_ref() {
        DeValue::Table(table) => table
            .iter()
            .map(|(k, v)| (Step::Key(k.get_ref().as_ref()), v))
            .collect(),
        DeValue::Array(array) => array
            .iter()
            .enumerate()
            .map(|(i, v)| (Step::Elem(i), v))
            .collect(),
        _ => Vec::new(),
    };
    let mut child_failed = false;
    for (step, child) in children {
        path.push(step);
        if let Err(e) = T::deserialize(ValueDeserializer::from(restrict(root, path))) {
            child_failed = true;
            every_error::<T>(root, child, path, e, found);
        }
        path.pop();
    }
    if !child_failed {
        found.push((err.span().unwrap_or(node.span()), err.message().to_owned()));
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// One allowlist entry kept for the second pass (warnings need the whole file).
struct AllowRef {
    span: Range<usize>,
    dir: &'static str,
    /// How the owning project is named in messages (shared by all its entries).
    owner: Rc<str>,
    name: ProjectName,
}

impl AllowRef {
    fn what(&self) -> String {
        let whom = if self.dir == "outbound" {
            "targets"
        } else {
            "origin projects"
        };
        format!("{} allow entry of {} ({whom}):", self.dir, self.owner)
    }
}

/// How one project is listed, for messages and for the rule-7 warnings.
#[derive(Default)]
struct Listing {
    /// id → (line, listed with a path too)
    ids: HashMap<u64, (usize, bool)>,
    /// lowercased path → (line, listed with an id too)
    paths: HashMap<String, (usize, bool)>,
}

fn validate(
    file: ScopeFile,
    limits: &ScopeLimits,
    ctx: &mut Ctx<'_>,
) -> (Defaults, Vec<ProjectSpec>, Vec<TokenSpec>) {
    let d = file.defaults.unwrap_or_default();
    let defaults = Defaults {
        outbound: d.outbound.unwrap_or(true),
        inbound: d.inbound.unwrap_or(true),
        report_only: d.report_only.unwrap_or(false),
    };

    let mut listing = Listing::default();
    let mut allow_refs = Vec::new();
    let mut projects = Vec::with_capacity(file.project.len());
    for entry in file.project {
        let span = entry.span();
        let entry = entry.into_inner();
        if let Some(spec) = project(
            entry,
            &span,
            &defaults,
            limits,
            &mut listing,
            &mut allow_refs,
            ctx,
        ) {
            projects.push(spec);
        }
    }

    for r in &allow_refs {
        match &r.name {
            ProjectName::Id(id) => match listing.ids.get(id) {
                Some((_, true)) => {}
                Some((line, false)) => ctx.warn(
                    &r.span,
                    format!(
                        "{} {id} matches only requests that name project {id} by its id: its [[project]] entry (line {line}) has no path; add its `path` there so that requests naming it by path match too",
                        r.what()
                    ),
                ),
                None => ctx.warn(
                    &r.span,
                    format!(
                        "{} {id} matches only requests that name project {id} by its id: the file does not list its path; add a [[project]] with `id = {id}` and its `path` so that requests naming it by path match too",
                        r.what()
                    ),
                ),
            },
            ProjectName::Path(p) => match listing.paths.get(&p.to_ascii_lowercase()) {
                Some((_, true)) => {}
                Some((line, false)) => ctx.warn(
                    &r.span,
                    format!(
                        "{} \"{p}\" matches only requests that name that project by its path: its [[project]] entry (line {line}) has no id; add its `id` there so that requests naming it by id match too",
                        r.what()
                    ),
                ),
                None => ctx.warn(
                    &r.span,
                    format!(
                        "{} \"{p}\" matches only requests that name that project by its path: the file does not list its id; add a [[project]] with `path = \"{p}\"` and its `id` so that requests naming it by id match too",
                        r.what()
                    ),
                ),
            },
        }
    }

    let mut tokens = Vec::with_capacity(file.token.len());
    let mut digests: HashMap<[u8; 32], usize> = HashMap::new();
    for entry in file.token {
        let span = entry.span();
        let line = ctx.line(&span);
        let entry = entry.into_inner();
        let sha256 = match &entry.sha256 {
            None => {
                ctx.error(&span, "[[token]] has no sha256; add `sha256 = \"<64 hex digits>\"`, the SHA-256 of the token (`printf %s \"$TOKEN\" | sha256sum`)".to_owned());
                None
            }
            Some(s) => match parse_digest(s.get_ref()) {
                None => {
                    ctx.error(&s.span(), format!("sha256 \"{}\" is not 64 hexadecimal digits; write the SHA-256 of the token, never the token itself (`printf %s \"$TOKEN\" | sha256sum`)", s.get_ref()));
                    None
                }
                Some(digest) => match digests.get(&digest) {
                    Some(first) => {
                        ctx.error(&s.span(), format!("this sha256 is already mapped by the [[token]] at line {first}; remove one of the two entries"));
                        None
                    }
                    None => {
                        digests.insert(digest, line);
                        Some(digest)
                    }
                },
            },
        };
        let project = match &entry.project {
            None => {
                ctx.error(&span, "[[token]] has no project; add `project = <id>` or `project = \"group/project\"`, the project the token acts for".to_owned());
                None
            }
            Some(p) => {
                let name = p.get_ref();
                match name {
                    ProjectName::Path(path) if !is_valid_project_path(path) => {
                        ctx.error(
                            &p.span(),
                            format!(
                                "token project \"{path}\" is not a valid project path; {PATH_HINT}"
                            ),
                        );
                        None
                    }
                    ProjectName::Id(id) if !listing.ids.contains_key(id) => {
                        ctx.warn(&p.span(), format!("token maps to project {id}, which has no [[project]] entry: [defaults] govern it and it is known only by its id; add a [[project]] with `id = {id}` and its `path` if that is not intended"));
                        Some(name.to_ref())
                    }
                    ProjectName::Path(path)
                        if !listing.paths.contains_key(&path.to_ascii_lowercase()) =>
                    {
                        ctx.warn(&p.span(), format!("token maps to project \"{path}\", which has no [[project]] entry: [defaults] govern it and it is known only by its path; add a [[project]] with `path = \"{path}\"` and its `id` if that is not intended"));
                        Some(name.to_ref())
                    }
                    _ => Some(name.to_ref()),
                }
            }
        };
        if let (Some(sha256), Some(project)) = (sha256, project) {
            tokens.push(TokenSpec { sha256, project });
        }
    }
    (defaults, projects, tokens)
}

const PATH_HINT: &str = "write the full path as the forge shows it, like \"group/subgroup/project\" (letters, digits, `_`, `.`, `-`; no `.git`)";

fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[allow(clippy::too_many_arguments)]
fn project(
    entry: ProjectEntry,
    span: &Range<usize>,
    defaults: &Defaults,
    limits: &ScopeLimits,
    listing: &mut Listing,
    allow_refs: &mut Vec<AllowRef>,
    ctx: &mut Ctx<'_>,
) -> Option<ProjectSpec> {
    let line = ctx.line(span);
    let mut ok = true;
    if entry.id.is_none() && entry.path.is_none() {
        ctx.error(span, "[[project]] names no project; add `id = <numeric id>`, `path = \"group/project\"`, or both".to_owned());
        return None;
    }
    let id = entry.id.as_ref().map(|s| s.get_ref().0);
    let path = match &entry.path {
        Some(p) if !is_valid_project_path(p.get_ref()) => {
            ctx.error(
                &p.span(),
                format!(
                    "\"{}\" is not a valid project path; {PATH_HINT}",
                    p.get_ref()
                ),
            );
            ok = false;
            None
        }
        Some(p) => Some(p.get_ref().clone()),
        None => None,
    };
    let lower = path.as_deref().map(str::to_ascii_lowercase);
    if let (Some(id), Some(s)) = (id, &entry.id) {
        if let Some((first, _)) = listing.ids.get(&id) {
            ctx.error(&s.span(), format!("project id {id} is already listed by the [[project]] at line {first}; merge the two entries into one"));
            ok = false;
        } else {
            listing.ids.insert(id, (line, entry.path.is_some()));
        }
    }
    if let (Some(p), Some(s)) = (&lower, &entry.path) {
        if let Some((first, _)) = listing.paths.get(p) {
            ctx.error(&s.span(), format!("project path \"{}\" is already listed by the [[project]] at line {first} (paths compare in any letter case); merge the two entries into one", s.get_ref()));
            ok = false;
        } else {
            listing.paths.insert(p.clone(), (line, entry.id.is_some()));
        }
    }
    let name: Rc<str> = match (&path, id) {
        (Some(p), _) => format!("\"{p}\"").into(),
        (None, Some(id)) => format!("project {id}").into(),
        (None, None) => "this project".into(),
    };
    let mut spec = ProjectSpec::new(id, path.as_deref(), defaults);
    spec.line = Some(line);
    spec.report_only = entry.report_only.unwrap_or(defaults.report_only);
    for (dir, table, default_on) in [
        ("outbound", entry.outbound, defaults.outbound),
        ("inbound", entry.inbound, defaults.inbound),
    ] {
        let Some(table) = table else { continue };
        let limit = LimitSpec {
            enabled: table.enabled.unwrap_or(default_on),
            allow: Vec::with_capacity(table.allow.len()),
            allow_groups: Vec::with_capacity(table.allow_groups.len()),
        };
        let limit = match limit_table(
            dir,
            table,
            limit,
            id,
            lower.as_deref(),
            &name,
            limits,
            allow_refs,
            ctx,
        ) {
            Some(limit) => limit,
            None => {
                ok = false;
                continue;
            }
        };
        match dir {
            "outbound" => spec.outbound = limit,
            _ => spec.inbound = limit,
        }
    }
    ok.then_some(spec)
}

#[allow(clippy::too_many_arguments)]
fn limit_table(
    dir: &'static str,
    table: LimitTable,
    mut limit: LimitSpec,
    own_id: Option<u64>,
    own_path: Option<&str>,
    name: &Rc<str>,
    limits: &ScopeLimits,
    allow_refs: &mut Vec<AllowRef>,
    ctx: &mut Ctx<'_>,
) -> Option<LimitSpec> {
    let mut ok = true;
    if let Some(over) = table.allow.get(limits.max_allowlist) {
        ctx.error(&over.span(), format!("the {dir} allow list of {name} has {} entries, more than max_allowlist ({}); remove entries, allow whole groups with allow_groups, or raise max_allowlist in the settings", table.allow.len(), limits.max_allowlist));
        ok = false;
    }
    if let Some(over) = table.allow_groups.get(limits.max_allowlist) {
        ctx.error(&over.span(), format!("the {dir} allow_groups list of {name} has {} entries, more than max_allowlist ({}); remove entries, allow a common parent group, or raise max_allowlist in the settings", table.allow_groups.len(), limits.max_allowlist));
        ok = false;
    }
    let mut seen = HashSet::new();
    for entry in table.allow {
        let span = entry.span();
        let entry = entry.into_inner();
        let itself = match &entry {
            ProjectName::Id(id) => own_id == Some(*id),
            ProjectName::Path(p) => {
                if !is_valid_project_path(p) {
                    ctx.error(&span, format!("{dir} allow entry \"{p}\" of {name} is not a valid project path; {PATH_HINT} (a group goes in allow_groups)"));
                    ok = false;
                    continue;
                }
                own_path == Some(p.to_ascii_lowercase().as_str())
            }
        };
        if itself {
            ctx.error(&span, format!("{name} allows itself ({entry}) in its {dir} allow list; remove the entry: a job token always reaches its own project"));
            ok = false;
            continue;
        }
        let r = entry.to_ref();
        if !seen.insert(r.clone()) {
            ctx.warn(
                &span,
                format!("{entry} is listed twice in the {dir} allow list of {name}; remove one"),
            );
            continue;
        }
        allow_refs.push(AllowRef {
            span,
            dir,
            owner: Rc::clone(name),
            name: entry,
        });
        limit.allow.push(r);
    }
    let mut seen = HashSet::new();
    for group in table.allow_groups {
        let span = group.span();
        let group = group.into_inner();
        if !is_valid_group_path(&group) {
            ctx.error(&span, format!("{dir} allow_groups entry \"{group}\" of {name} is not a valid group path; write the group's full path as the forge shows it, like \"group/subgroup\""));
            ok = false;
            continue;
        }
        if !seen.insert(group.to_ascii_lowercase()) {
            ctx.warn(&span, format!("group \"{group}\" is listed twice in the {dir} allow_groups list of {name}; remove one"));
            continue;
        }
        limit.allow_groups.push(group);
    }
    ok.then_some(limit)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::decide::{decide, AllowReason, Decision, Limit, Mode};
    use crate::project::ProjectIdentity;
    use sha2::{Digest, Sha256};

    const EXAMPLE: &str = include_str!("../config/scopes.toml");

    fn load(text: &str) -> Result<Loaded, ScopeError> {
        load_str("scopes.toml", text, &ScopeLimits::default())
    }

    fn issues(text: &str) -> Vec<ScopeIssue> {
        match load(text) {
            Err(ScopeError::Invalid { issues }) => issues,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("loaded although invalid:\n{text}"),
        }
    }

    /// (line, message) pairs, for compact assertions.
    fn lines(text: &str) -> Vec<(usize, String)> {
        issues(text)
            .into_iter()
            .map(|i| (i.line, i.message))
            .collect()
    }

    fn assert_one(text: &str, line: usize, needle: &str) {
        let found = lines(text);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].0, line, "{found:#?}");
        assert!(found[0].1.contains(needle), "{found:#?}");
        assert!(found[0].1.contains("; "), "no advice in {found:#?}");
    }

    #[test]
    fn example_scope_file_loads_cleanly() {
        let loaded = load(EXAMPLE).unwrap();
        assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
        let p = &loaded.policy;
        assert_eq!(p.project_count(), 3);
        assert_eq!(p.token_count(), 0);
        assert_eq!(p.digest(), file_digest(EXAMPLE.as_bytes()));
        let bot = p.identify_origin(10, None);
        assert_eq!(bot.path.as_deref(), Some("acme/deploy-bot"));
        let allow = Decision::Allow(AllowReason::InScope);
        let app = p.identify(&ProjectRef::path("acme/app"));
        assert_eq!(decide(p, Mode::Enforce, &bot, &app), allow);
        assert_eq!(
            decide(p, Mode::Enforce, &bot, &p.identify(&ProjectRef::Id(12))),
            allow
        );
        let other = p.identify(&ProjectRef::path("acme/other"));
        assert_eq!(
            decide(p, Mode::Enforce, &bot, &other),
            Decision::Deny(Limit::Outbound)
        );
        // A project nobody listed gets [defaults]: limited.
        let new = p.identify_origin(99, Some("customer/new"));
        assert_eq!(
            decide(p, Mode::Enforce, &new, &app),
            Decision::Deny(Limit::Outbound)
        );
    }

    #[test]
    fn load_file_reads_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scopes.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        let loaded = load_file(&path, &ScopeLimits::default()).unwrap();
        assert_eq!(loaded.policy.project_count(), 3);
        std::fs::write(&path, "[[project]]\nid = 'x'\n").unwrap();
        let err = load_file(&path, &ScopeLimits::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}:2: ", path.display())),
            "{text}"
        );
        let missing = dir.path().join("nope.toml");
        let err = load_file(&missing, &ScopeLimits::default()).unwrap_err();
        assert!(matches!(err, ScopeError::Io { .. }));
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }

    #[test]
    fn empty_file_is_valid_and_limits_everything() {
        for text in ["", "# nothing\n", "[defaults]\n"] {
            let loaded = load(text).unwrap();
            assert_eq!(loaded.policy.project_count(), 0);
            assert_eq!(loaded.policy.defaults(), Defaults::default());
            assert!(loaded.warnings.is_empty());
        }
        assert_eq!(load("").unwrap().policy.digest(), Policy::empty().digest());
    }

    #[test]
    fn omitted_keys_take_the_defaults() {
        let text = "[defaults]\noutbound = false\ninbound = true\nreport_only = true\n\n\
                    [[project]]\nid = 1\n\n\
                    [[project]]\nid = 2\nreport_only = false\n[project.outbound]\nallow = [1]\n[project.inbound]\nenabled = false\n";
        let p = load(text).unwrap().policy;
        let one = p.project(&ProjectRef::Id(1)).unwrap();
        assert!(!one.outbound().enabled() && one.inbound().enabled() && one.report_only());
        assert_eq!(one.outbound().project_entries(), 0);
        let two = p.project(&ProjectRef::Id(2)).unwrap();
        // `enabled` omitted inside a present table: the default (off here).
        assert!(!two.outbound().enabled());
        assert_eq!(two.outbound().allowed_ids().collect::<Vec<_>>(), vec![1]);
        assert!(!two.inbound().enabled() && !two.report_only());
        assert_eq!(two.line(), Some(9));
        // Omitted [defaults] keys: limited, enforced.
        let p = load("[defaults]\ninbound = false\n").unwrap().policy;
        assert_eq!(
            p.defaults(),
            Defaults {
                outbound: true,
                inbound: false,
                report_only: false
            }
        );
    }

    #[test]
    fn syntax_errors_all_with_lines() {
        let found = lines("[defaults]\noutbound = true\noutbound = false\n[project\nx = = 1\n");
        assert!(found.len() >= 3, "{found:#?}");
        assert!(
            found
                .iter()
                .any(|(l, m)| *l == 3 && m.contains("duplicate key")),
            "{found:#?}"
        );
        assert!(found.iter().any(|(l, _)| *l == 4), "{found:#?}");
        assert!(found.iter().any(|(l, _)| *l == 5), "{found:#?}");
        assert!(found.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        assert_one("[defaults]\noutbond = true\n", 2, "unknown field `outbond`");
        assert_one(
            "[[project]]\nid = 1\npaht = \"a/b\"\n",
            3,
            "unknown field `paht`",
        );
        assert_one(
            "[[project]]\nid = 1\n[project.outbound]\nenabled = true\nallowed = [2]\n",
            5,
            "unknown field `allowed`",
        );
        assert_one(
            "[[token]]\nsha256 = \"\"\nproject = 1\nsecret = 'x'\n",
            4,
            "unknown field `secret`",
        );
        assert_one(
            "\n[settings]\nmode = 'report'\n",
            2,
            "unknown field `settings`",
        );
    }

    #[test]
    fn wrong_types_are_errors_with_their_line() {
        assert_one("[defaults]\noutbound = \"yes\"\n", 2, "invalid type");
        assert_one("[[project]]\nid = \"10\"\n", 2, "expected a project id");
        assert_one("[[project]]\nid = -3\n", 2, "expected a project id");
        assert_one("[[project]]\nid = 0\n", 2, "expected a project id");
        assert_one(
            "[[project]]\nid = 1\n[project.inbound]\nallow = [2, 1.5]\n",
            4,
            "expected a project id (integer) or full project path",
        );
        assert_one(
            "[[project]]\nid = 1\n[project.inbound]\nallow = [true]\n",
            4,
            "expected a project id (integer) or full project path",
        );
        assert_one(
            "[[project]]\nid = 1\n[project.outbound]\nallow_groups = [3]\n",
            4,
            "invalid type",
        );
        assert_one(
            "[[project]]\nid = 1\n[project.outbound]\nallow = \"a/b\"\n",
            4,
            "expected a sequence",
        );
        assert_one("[project]\nid = 1\n", 1, "[[project]]");
    }

    #[test]
    fn several_errors_of_every_kind_are_reported_at_once() {
        let text = "\
[defaults]
outbound = 1
bogus = true

[[project]]
id = 'ten'
path = 'acme/a'
extra = 1
[project.outbound]
allow = [1, {}]
allow_groups = ['ok', 2]

[[project]]
path = 'not a path'

[[project]]
id = 10
path = 'acme/a.git'

[[token]]
sha256 = 'abc'
";
        let found = lines(text);
        let at = |line: usize| found.iter().filter(|(l, _)| *l == line).count();
        assert_eq!(at(2), 1, "{found:#?}");
        assert_eq!(at(3), 1, "{found:#?}");
        assert_eq!(at(6), 1, "{found:#?}");
        assert_eq!(at(8), 1, "{found:#?}");
        assert_eq!(at(10), 1, "{found:#?}");
        assert_eq!(at(11), 1, "{found:#?}");
        // Model errors stop before semantic checks: fix types first.
        assert_eq!(found.len(), 6, "{found:#?}");
        // Semantic errors are all reported together too.
        let text = "\
[[project]]
path = 'not a path'

[[project]]
id = 10
path = 'acme/a.git'

[[project]]
report_only = true

[[token]]
sha256 = 'abc'
project = 'x'
";
        let found = lines(text);
        let lines_only: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines_only, vec![2, 6, 8, 12, 13], "{found:#?}");
        let err = load(text).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 5, "{err}");
        assert!(err.lines().all(|l| l.starts_with("scopes.toml:")), "{err}");
    }

    #[test]
    fn project_naming_no_project() {
        assert_one("[[project]]\nreport_only = true\n", 1, "names no project");
        assert_one(
            "[[project]]\nid = 1\n\n[[project]]\n[project.outbound]\nenabled = false\n",
            4,
            "names no project",
        );
    }

    #[test]
    fn duplicate_projects_name_both_lines() {
        assert_one(
            "[[project]]\nid = 1\n\n[[project]]\nid = 1\npath = 'a/b'\n",
            5,
            "at line 1",
        );
        let found =
            lines("[[project]]\npath = 'Acme/App'\n\n[[project]]\nid = 2\npath = 'acme/app'\n");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].0, 6);
        assert!(
            found[0].1.contains("line 1") && found[0].1.contains("merge"),
            "{found:#?}"
        );
    }

    #[test]
    fn entries_allowing_themselves() {
        assert_one(
            "[[project]]\nid = 1\n[project.outbound]\nallow = [2,\n 1]\n",
            5,
            "allows itself",
        );
        assert_one(
            "[[project]]\nid = 1\npath = 'a/b'\n[project.inbound]\nallow = ['A/B']\n",
            5,
            "allows itself",
        );
        // A project listed by path only that allows its own id cannot be detected; nor should a
        // group that contains the project be rejected.
        assert!(
            load("[[project]]\npath = 'a/b'\n[project.inbound]\nallow_groups = ['a']\n").is_ok()
        );
    }

    #[test]
    fn invalid_paths() {
        assert_one(
            "[[project]]\npath = 'acme'\n",
            2,
            "not a valid project path",
        );
        assert_one(
            "[[project]]\nid = 1\n[project.outbound]\nallow = ['acme/app/']\n",
            4,
            "not a valid project path",
        );
        assert_one(
            "[[project]]\nid = 1\n[project.inbound]\nallow_groups = ['acme/', 'ok/fine']\n",
            4,
            "not a valid group path",
        );
        assert_one(
            "[[project]]\nid = 1\n[project.inbound]\nallow_groups = ['a b']\n",
            4,
            "not a valid group path",
        );
    }

    #[test]
    fn allowlists_over_the_limit_count_each_list_separately() {
        let limits = ScopeLimits { max_allowlist: 2 };
        let ok = "[[project]]\nid = 1\n[project.outbound]\nallow = [2, 3]\nallow_groups = ['a', 'b']\n[project.inbound]\nallow = [2, 3]\nallow_groups = ['a', 'b']\n";
        assert!(load_str("s", ok, &limits).is_ok());
        let over = "[[project]]\nid = 1\n[project.outbound]\nallow = [2, 3,\n 4]\nallow_groups = ['a', 'b', 'c']\n[project.inbound]\nallow = [2, 3]\n";
        let Err(ScopeError::Invalid { issues }) = load_str("s", over, &limits) else {
            panic!("over the limit loaded");
        };
        let got: Vec<usize> = issues.iter().map(|i| i.line).collect();
        assert_eq!(got, vec![5, 6], "{issues:#?}");
        assert!(issues[0].message.contains("max_allowlist (2)"));
        // Default limit: 200.
        let many: Vec<String> = (2..=202).map(|i| i.to_string()).collect();
        let text = format!(
            "[[project]]\nid = 1\n[project.outbound]\nallow = [{}]\n",
            many.join(", ")
        );
        assert_one(&text, 4, "201 entries");
    }

    #[test]
    fn token_entries() {
        let digest = hex::encode(Sha256::digest(b"glcbt-secret"));
        let text = format!("[[project]]\nid = 10\npath = 'acme/bot'\n\n[[token]]\nsha256 = '{}'\nproject = 'Acme/Bot'\n", digest.to_uppercase());
        let loaded = load(&text).unwrap();
        assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
        let d: [u8; 32] = Sha256::digest(b"glcbt-secret").into();
        assert_eq!(
            loaded.policy.static_token(&d),
            Some(ProjectIdentity {
                id: Some(10),
                path: Some("acme/bot".into())
            })
        );
        // A token of an unlisted project: allowed, with a warning.
        let text = format!("[[token]]\nsha256 = '{digest}'\nproject = 77\n");
        let loaded = load(&text).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(
            loaded.warnings[0].starts_with("scopes.toml:3: "),
            "{:?}",
            loaded.warnings
        );
        assert_eq!(
            loaded.policy.static_token(&d),
            Some(ProjectIdentity::from_ref(&ProjectRef::Id(77)))
        );
        // Errors.
        assert_one(
            "[[token]]\nsha256 = 'abcd'\nproject = 1\n",
            2,
            "64 hexadecimal",
        );
        assert_one(
            &format!("[[token]]\nsha256 = '{}zz'\nproject = 1\n", &digest[..62]),
            2,
            "64 hexadecimal",
        );
        assert_one("[[token]]\nproject = 1\n", 1, "no sha256");
        assert_one(
            &format!("[[token]]\nsha256 = '{digest}'\n"),
            1,
            "no project",
        );
        assert_one(
            &format!("[[token]]\nsha256 = '{digest}'\nproject = 'nogroup'\n"),
            3,
            "not a valid project path",
        );
        assert_one(
            &format!("[[token]]\nsha256 = '{digest}'\nproject = [1]\n"),
            3,
            "expected a project id",
        );
        let dup = format!("[[token]]\nsha256 = '{digest}'\nproject = 1\n\n[[token]]\nsha256 = '{}'\nproject = 2\n", digest.to_uppercase());
        assert_one(&dup, 6, "at line 1");
    }

    #[test]
    fn warnings_for_entries_matching_one_form_only() {
        let text = "\
[[project]]
id = 1
path = 'acme/bot'
[project.outbound]
allow = [2, 3, 'acme/lib', 'acme/other', 4, 'acme/both']
[project.inbound]
allow = [2, 2]

[[project]]
id = 2
path = 'acme/app'

[[project]]
id = 3

[[project]]
path = 'acme/lib'

[[project]]
id = 4
path = 'Acme/Both'
";
        let loaded = load(text).unwrap();
        let w = &loaded.warnings;
        assert_eq!(w.len(), 4, "{w:#?}");
        assert!(
            w[0].contains("3 matches only requests that name project 3 by its id")
                && w[0].contains("line 13"),
            "{w:#?}"
        );
        assert!(
            w[1].contains("\"acme/lib\" matches only") && w[1].contains("line 16"),
            "{w:#?}"
        );
        assert!(
            w[2].contains("\"acme/other\" matches only") && w[2].contains("does not list its id"),
            "{w:#?}"
        );
        assert!(
            w[3].starts_with("scopes.toml:7: ") && w[3].contains("listed twice"),
            "{w:#?}"
        );
        assert!(
            w[..3].iter().all(|l| l.starts_with("scopes.toml:5: ")),
            "{w:#?}"
        );
    }

    #[test]
    fn spans_survive_many_projects() {
        let mut text = String::new();
        for i in 1..=2000u64 {
            text.push_str(&format!(
                "[[project]]\nid = {i}\npath = 'g{}/p{i}'\n\n",
                i % 7
            ));
        }
        text.push_str("[[project]]\nid = 5\n");
        let found = lines(&text);
        assert_eq!(found, vec![(8002, found[0].1.clone())]);
        assert!(found[0].1.contains("at line 17"), "{found:?}");
    }

    /// TOML for `specs` as ops would write it: keys equal to their default are left out.
    fn render(d: &Defaults, specs: &[ProjectSpec]) -> String {
        use std::fmt::Write as _;
        let mut t = String::from("[defaults]\n");
        if !d.outbound {
            t.push_str("outbound = false\n");
        }
        if !d.inbound {
            t.push_str("inbound = false\n");
        }
        if d.report_only {
            t.push_str("report_only = true\n");
        }
        for s in specs {
            t.push_str("\n[[project]]\n");
            if let Some(id) = s.id {
                writeln!(t, "id = {id}").unwrap();
            }
            if let Some(p) = &s.path {
                writeln!(t, "path = \"{p}\"").unwrap();
            }
            if s.report_only != d.report_only {
                writeln!(t, "report_only = {}", s.report_only).unwrap();
            }
            for (name, l, default) in [
                ("outbound", &s.outbound, d.outbound),
                ("inbound", &s.inbound, d.inbound),
            ] {
                if l.enabled == default && l.allow.is_empty() && l.allow_groups.is_empty() {
                    continue;
                }
                writeln!(t, "[project.{name}]").unwrap();
                if l.enabled != default {
                    writeln!(t, "enabled = {}", l.enabled).unwrap();
                }
                let allow: Vec<String> = l
                    .allow
                    .iter()
                    .map(|r| match r {
                        ProjectRef::Id(id) => id.to_string(),
                        ProjectRef::Path(p) => format!("\"{}\"", p.to_ascii_uppercase()),
                    })
                    .collect();
                if !allow.is_empty() {
                    writeln!(t, "allow = [{}]", allow.join(", ")).unwrap();
                }
                let groups: Vec<String> = l.allow_groups.iter().map(|g| format!("'{g}'")).collect();
                writeln!(t, "allow_groups = [{}]", groups.join(", ")).unwrap();
            }
        }
        t
    }

    proptest::proptest! {
        #[test]
        fn loading_rendered_specs_decides_like_building_them(
            d in crate::decide::props::defaults(),
            mut specs in crate::decide::props::projects(),
        ) {
            use crate::decide::props::{identity, PATHS};
            // The file may not let a project allow itself.
            for s in &mut specs {
                let (id, path) = (s.id, s.path.clone());
                for l in [&mut s.outbound, &mut s.inbound] {
                    l.allow.retain(|r| match r {
                        ProjectRef::Id(n) => Some(*n) != id,
                        ProjectRef::Path(p) => Some(&**p) != path.as_deref(),
                    });
                }
            }
            let text = render(&d, &specs);
            let loaded = load(&text).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{text}")))?;
            let built = Policy::build(d, specs, vec![], String::new());
            let p = &loaded.policy;
            proptest::prop_assert_eq!(p.defaults(), built.defaults());
            proptest::prop_assert_eq!(p.project_count(), built.project_count());
            let names: Vec<ProjectIdentity> = (0..PATHS.len())
                .flat_map(|i| (0..3).map(move |f| identity(i, f)))
                .collect();
            for o in &names {
                for t in &names {
                    for mode in [Mode::Enforce, Mode::Report] {
                        proptest::prop_assert_eq!(
                            decide(p, mode, o, t),
                            decide(&built, mode, o, t),
                            "{} -> {} in\n{}", o, t, text
                        );
                    }
                }
            }
        }
    }
}
