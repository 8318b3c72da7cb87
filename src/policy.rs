//! The compiled, immutable policy: what `decide` reads on every request.
//!
//! A [`Policy`] is built once per scope-file load (see `scope::load_file`) from plain,
//! already-validated specs, and never changes afterwards: a reload builds a new one. Everything a
//! decision needs is an index probe: projects by id and by lowercased path, allowlists as hash
//! sets (ids, lowercased paths, lowercased group paths). A decision therefore costs a handful of
//! hash probes plus one probe per ancestor group of the origin's or target's path, however many
//! projects and allowlist entries the file holds.
//!
//! Paths are stored ASCII-lowercased; the forge compares them case-insensitively.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::project::{ProjectIdentity, ProjectRef};

/// `[defaults]`: what applies to projects that have no `[[project]]` entry, and what an entry
/// takes for the keys it omits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// Outbound limit ("Limit access from this project") on.
    pub outbound: bool,
    /// Inbound limit ("Limit access to this project") on.
    pub inbound: bool,
    /// Denials are only reported (forwarded, counted as `would_deny`).
    pub report_only: bool,
}

impl Default for Defaults {
    /// An omitted `[defaults]` key means limited, and enforced.
    fn default() -> Self {
        Defaults {
            outbound: true,
            inbound: true,
            report_only: false,
        }
    }
}

/// One limit (outbound or inbound) of one project, as written in the scope file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitSpec {
    pub enabled: bool,
    /// Projects, by id or by full path.
    pub allow: Vec<ProjectRef>,
    /// Full group paths; each covers its subgroups.
    pub allow_groups: Vec<String>,
}

/// One `[[project]]` entry with every omitted key already resolved from `[defaults]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectSpec {
    pub id: Option<u64>,
    pub path: Option<String>,
    pub report_only: bool,
    pub outbound: LimitSpec,
    pub inbound: LimitSpec,
    /// Line of the entry in the scope file, for explanations.
    pub line: Option<usize>,
}

impl ProjectSpec {
    /// An entry that sets nothing of its own: limits and `report_only` from `defaults`, empty
    /// allowlists.
    pub fn new(id: Option<u64>, path: Option<&str>, defaults: &Defaults) -> Self {
        ProjectSpec {
            id,
            path: path.map(str::to_owned),
            report_only: defaults.report_only,
            outbound: LimitSpec {
                enabled: defaults.outbound,
                ..LimitSpec::default()
            },
            inbound: LimitSpec {
                enabled: defaults.inbound,
                ..LimitSpec::default()
            },
            line: None,
        }
    }
}

/// One `[[token]]` entry: a long-lived token, known by its SHA-256, mapped to its project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSpec {
    pub sha256: [u8; 32],
    pub project: ProjectRef,
}

/// Which allowlist entry let a project through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowMatch<'a> {
    /// A project entry written as a numeric id.
    Id(u64),
    /// A project entry written as a full path (lowercased).
    Path(&'a str),
    /// A group entry (lowercased) that is an ancestor of the project's path.
    Group(&'a str),
}

impl std::fmt::Display for AllowMatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowMatch::Id(id) => write!(f, "project id {id}"),
            AllowMatch::Path(p) => write!(f, "project path {p}"),
            AllowMatch::Group(g) => write!(f, "group {g}"),
        }
    }
}

/// The hasher of the policy's indexes: foldhash, several times faster than std's SipHash on
/// short keys, which matters at a dozen probes per decision. Keys come from the (trusted)
/// scope file and the seed is random per map, so request-chosen lookups cannot aim at
/// collisions. Token digests keep std's keyed SipHash.
type IndexHasher = foldhash::fast::RandomState;

type Set<T> = HashSet<T, IndexHasher>;
type Map<K, V> = HashMap<K, V, IndexHasher>;

/// One compiled limit: on/off and its allowlists as hash sets.
#[derive(Debug, Default)]
pub struct LimitPolicy {
    enabled: bool,
    ids: Set<u64>,
    paths: Set<Box<str>>,
    groups: Set<Box<str>>,
    /// Segments in the deepest group entry: ancestors deeper than that cannot match.
    group_depth: usize,
}

impl LimitPolicy {
    fn compile(spec: &LimitSpec) -> Self {
        let mut ids = Set::default();
        let mut paths = Set::default();
        for entry in &spec.allow {
            match entry {
                ProjectRef::Id(id) => {
                    ids.insert(*id);
                }
                ProjectRef::Path(p) => {
                    paths.insert(p.to_ascii_lowercase().into_boxed_str());
                }
            }
        }
        let groups: Set<Box<str>> = spec
            .allow_groups
            .iter()
            .map(|g| g.to_ascii_lowercase().into_boxed_str())
            .collect();
        let group_depth = groups
            .iter()
            .map(|g| g.split('/').count())
            .max()
            .unwrap_or(0);
        LimitPolicy {
            enabled: spec.enabled,
            ids,
            paths,
            groups,
            group_depth,
        }
    }

    fn off_or_empty(enabled: bool) -> Self {
        LimitPolicy {
            enabled,
            ..LimitPolicy::default()
        }
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Project entries written as ids (unordered).
    pub fn allowed_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.ids.iter().copied()
    }

    /// Project entries written as paths, lowercased (unordered).
    pub fn allowed_paths(&self) -> impl Iterator<Item = &str> + '_ {
        self.paths.iter().map(|p| &**p)
    }

    /// Group entries, lowercased (unordered).
    pub fn allowed_groups(&self) -> impl Iterator<Item = &str> + '_ {
        self.groups.iter().map(|g| &**g)
    }

    /// Number of project entries (ids and paths).
    pub fn project_entries(&self) -> usize {
        self.ids.len() + self.paths.len()
    }

    /// Number of group entries.
    pub fn group_entries(&self) -> usize {
        self.groups.len()
    }

    /// The allowlist entry that lets `who` through, if any (whether or not the limit is on).
    ///
    /// An id entry matches when `who` has that id; a path entry when `who` has that path; a group
    /// entry when it is an ancestor group of `who`'s path (any depth). Costs one probe per form
    /// plus one per ancestor group; allocates only if `who.path` is not lowercase (it should be).
    pub fn matches(&self, who: &ProjectIdentity) -> Option<AllowMatch<'_>> {
        if let Some(id) = who.id {
            if self.ids.contains(&id) {
                return Some(AllowMatch::Id(id));
            }
        }
        let path = lowercase(who.path.as_deref()?);
        if let Some(p) = self.paths.get(&*path) {
            return Some(AllowMatch::Path(p));
        }
        path.match_indices('/')
            .take(self.group_depth)
            .find_map(|(i, _)| self.groups.get(&path[..i]))
            .map(|g| AllowMatch::Group(g))
    }
}

/// A lowercased view of `s`, borrowed when it already is (the normal case).
fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// One compiled `[[project]]` entry.
#[derive(Debug)]
pub struct ProjectPolicy {
    id: Option<u64>,
    path: Option<Arc<str>>,
    report_only: bool,
    outbound: LimitPolicy,
    inbound: LimitPolicy,
    line: Option<usize>,
}

impl ProjectPolicy {
    pub fn id(&self) -> Option<u64> {
        self.id
    }
    /// Lowercased full path, when the entry lists one.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
    /// The project as the entry names it (both forms when it lists both).
    pub fn identity(&self) -> ProjectIdentity {
        ProjectIdentity {
            id: self.id,
            path: self.path.clone(),
        }
    }
    pub fn report_only(&self) -> bool {
        self.report_only
    }
    pub fn outbound(&self) -> &LimitPolicy {
        &self.outbound
    }
    pub fn inbound(&self) -> &LimitPolicy {
        &self.inbound
    }
    /// Line of the entry in the scope file, when it came from one.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
}

/// What applies to one project: its entry, or `[defaults]` when it has none.
#[derive(Clone, Copy, Debug)]
pub struct Effective<'a> {
    /// The project's entry; `None` means `[defaults]` apply.
    pub entry: Option<&'a ProjectPolicy>,
    pub outbound: &'a LimitPolicy,
    pub inbound: &'a LimitPolicy,
    pub report_only: bool,
}

/// A token digest whose equality is decided in constant time.
#[derive(Debug)]
struct TokenDigest([u8; 32]);

impl PartialEq for TokenDigest {
    fn eq(&self, other: &Self) -> bool {
        crate::credentials::digest_eq(&self.0, &other.0)
    }
}
impl Eq for TokenDigest {}
impl Hash for TokenDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The map's hasher is seeded at random per process (foldhash `RandomState`), so the bucket a
        // digest lands in tells nothing about the stored digests.
        state.write(&self.0);
    }
}

/// The compiled scope file. Immutable; share it behind an `Arc` and swap it whole on reload.
///
/// `Debug` prints a summary (digest, counts, defaults), never the entries or token digests.
pub struct Policy {
    digest: String,
    defaults: Defaults,
    projects: Vec<ProjectPolicy>,
    by_id: Map<u64, usize>,
    by_path: Map<Arc<str>, usize>,
    tokens: Map<TokenDigest, ProjectIdentity>,
    default_outbound: LimitPolicy,
    default_inbound: LimitPolicy,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("digest", &self.digest)
            .field("projects", &self.projects.len())
            .field("tokens", &self.tokens.len())
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// `"sha256:<hex>"` of some bytes: how a policy names the file it was built from.
pub fn file_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Policy {
    /// The policy of an empty scope file: every project limited both ways, nothing allowed but
    /// a project reaching itself.
    pub fn empty() -> Policy {
        Policy::build(
            Defaults::default(),
            Vec::new(),
            Vec::new(),
            file_digest(b""),
        )
    }

    /// Compiles validated specs. Validation (see `scope`) rejects duplicate projects; should
    /// two specs still name the same id or path, the first one wins the index.
    pub fn build(
        defaults: Defaults,
        projects: Vec<ProjectSpec>,
        tokens: Vec<TokenSpec>,
        digest: String,
    ) -> Policy {
        let n = projects.len();
        let mut by_id = Map::with_capacity_and_hasher(n, IndexHasher::default());
        let mut by_path = Map::with_capacity_and_hasher(n, IndexHasher::default());
        let mut compiled = Vec::with_capacity(n);
        for (index, spec) in projects.into_iter().enumerate() {
            let path: Option<Arc<str>> = spec.path.map(|mut p| {
                p.make_ascii_lowercase();
                p.into()
            });
            if let Some(id) = spec.id {
                by_id.entry(id).or_insert(index);
            }
            if let Some(p) = &path {
                by_path.entry(p.clone()).or_insert(index);
            }
            compiled.push(ProjectPolicy {
                id: spec.id,
                path,
                report_only: spec.report_only,
                outbound: LimitPolicy::compile(&spec.outbound),
                inbound: LimitPolicy::compile(&spec.inbound),
                line: spec.line,
            });
        }
        let mut policy = Policy {
            digest,
            defaults,
            projects: compiled,
            by_id,
            by_path,
            tokens: Map::with_capacity_and_hasher(tokens.len(), IndexHasher::default()),
            default_outbound: LimitPolicy::off_or_empty(defaults.outbound),
            default_inbound: LimitPolicy::off_or_empty(defaults.inbound),
        };
        for token in tokens {
            let identity = policy.identify(&token.project);
            policy
                .tokens
                .entry(TokenDigest(token.sha256))
                .or_insert(identity);
        }
        policy
    }

    /// `"sha256:<hex>"` of the scope file's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Number of `[[project]]` entries.
    pub fn project_count(&self) -> usize {
        self.projects.len()
    }

    /// Number of `[[token]]` entries.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// `[defaults]` as loaded.
    pub fn defaults(&self) -> Defaults {
        self.defaults
    }

    /// Every `[[project]]` entry, in file order.
    pub fn projects(&self) -> impl ExactSizeIterator<Item = &ProjectPolicy> + '_ {
        self.projects.iter()
    }

    /// `[[token]]` lookup by the SHA-256 of the token. The digest is compared in constant time.
    pub fn static_token(&self, token_sha256: &[u8; 32]) -> Option<ProjectIdentity> {
        self.tokens.get(&TokenDigest(*token_sha256)).cloned()
    }

    /// The entry for a project named one way.
    pub fn project(&self, r: &ProjectRef) -> Option<&ProjectPolicy> {
        match r {
            ProjectRef::Id(id) => self.by_id.get(id),
            ProjectRef::Path(p) => self.by_path.get(&*lowercase(p)),
        }
        .map(|&i| &self.projects[i])
    }

    /// Everything the scope file knows about a project named one way: both forms when it lists
    /// both, else just the form given (paths lowercased).
    pub fn identify(&self, r: &ProjectRef) -> ProjectIdentity {
        match self.project(r) {
            Some(entry) => entry.identity(),
            None => match r {
                ProjectRef::Id(id) => ProjectIdentity {
                    id: Some(*id),
                    path: None,
                },
                ProjectRef::Path(p) => ProjectIdentity {
                    id: None,
                    path: Some(Arc::from(p.to_ascii_lowercase())),
                },
            },
        }
    }

    /// An origin as the forge described it (id, and path when known), completed from the file:
    /// the forge's id always; the forge's path when it gave one (it is current; the file's may
    /// predate a rename), else the path the file lists for that id.
    pub fn identify_origin(&self, id: u64, path: Option<&str>) -> ProjectIdentity {
        let listed = self
            .by_id
            .get(&id)
            .and_then(|&i| self.projects[i].path.as_ref());
        let path = match (path, listed) {
            // Mostly the forge and the file agree: share the file's copy.
            (Some(p), Some(l)) if p.eq_ignore_ascii_case(l) => Some(Arc::clone(l)),
            (Some(p), _) => Some(Arc::from(p.to_ascii_lowercase())),
            (None, listed) => listed.cloned(),
        };
        ProjectIdentity { id: Some(id), path }
    }

    /// The entry that governs `who`: the entry listing its id, else the entry listing its path —
    /// unless that entry lists a different id (then the path now belongs to another project
    /// than the file says, and neither entry is `who`'s). No allocation for lowercase paths.
    pub fn entry_of(&self, who: &ProjectIdentity) -> Option<&ProjectPolicy> {
        if let Some(id) = who.id {
            if let Some(&i) = self.by_id.get(&id) {
                return Some(&self.projects[i]);
            }
        }
        let path = lowercase(who.path.as_deref()?);
        let entry = &self.projects[*self.by_path.get(&*path)?];
        match (entry.id, who.id) {
            (Some(a), Some(b)) if a != b => None,
            _ => Some(entry),
        }
    }

    /// What applies to `who`: its entry's limits and `report_only`, or `[defaults]`.
    pub fn effective(&self, who: &ProjectIdentity) -> Effective<'_> {
        match self.entry_of(who) {
            Some(entry) => Effective {
                entry: Some(entry),
                outbound: &entry.outbound,
                inbound: &entry.inbound,
                report_only: entry.report_only,
            },
            None => Effective {
                entry: None,
                outbound: &self.default_outbound,
                inbound: &self.default_inbound,
                report_only: self.defaults.report_only,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spec(id: Option<u64>, path: Option<&str>) -> ProjectSpec {
        ProjectSpec::new(id, path, &Defaults::default())
    }

    #[test]
    fn empty_policy_names_the_empty_file() {
        let p = Policy::empty();
        assert_eq!(
            p.digest(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!((p.project_count(), p.token_count()), (0, 0));
        assert_eq!(p.defaults(), Defaults::default());
    }

    #[test]
    fn identify_completes_only_from_entries_listing_both_forms() {
        let p = Policy::build(
            Defaults::default(),
            vec![
                spec(Some(1), Some("Acme/App")),
                spec(Some(2), None),
                spec(None, Some("acme/lib")),
            ],
            vec![],
            file_digest(b"x"),
        );
        let both = ProjectIdentity {
            id: Some(1),
            path: Some("acme/app".into()),
        };
        assert_eq!(p.identify(&ProjectRef::Id(1)), both);
        assert_eq!(p.identify(&ProjectRef::path("ACME/app")), both);
        assert_eq!(p.identify(&ProjectRef::Path("ACME/APP".into())), both);
        assert_eq!(p.identify(&ProjectRef::Id(2)).path, None);
        assert_eq!(p.identify(&ProjectRef::path("acme/lib")).id, None);
        assert_eq!(
            p.identify(&ProjectRef::Id(9)),
            ProjectIdentity::from_ref(&ProjectRef::Id(9))
        );
        assert_eq!(
            p.identify(&ProjectRef::Path("X/Y".into())).path.as_deref(),
            Some("x/y")
        );
    }

    #[test]
    fn identify_origin_prefers_the_forges_path() {
        let p = Policy::build(
            Defaults::default(),
            vec![spec(Some(1), Some("acme/app"))],
            vec![],
            String::new(),
        );
        assert_eq!(p.identify_origin(1, None).path.as_deref(), Some("acme/app"));
        assert_eq!(
            p.identify_origin(1, Some("Acme/Renamed")).path.as_deref(),
            Some("acme/renamed")
        );
        assert_eq!(
            p.identify_origin(7, None),
            ProjectIdentity::from_ref(&ProjectRef::Id(7))
        );
        // Still governed by its id's entry after the rename.
        let o = p.identify_origin(1, Some("acme/renamed"));
        assert_eq!(p.entry_of(&o).and_then(|e| e.id()), Some(1));
    }

    #[test]
    fn a_path_entry_naming_another_id_does_not_govern() {
        let p = Policy::build(
            Defaults::default(),
            vec![
                spec(Some(1), Some("acme/app")),
                spec(None, Some("acme/lib")),
            ],
            vec![],
            String::new(),
        );
        let moved = ProjectIdentity {
            id: Some(5),
            path: Some("acme/app".into()),
        };
        assert!(p.entry_of(&moved).is_none());
        let lib = ProjectIdentity {
            id: Some(6),
            path: Some("acme/lib".into()),
        };
        assert_eq!(p.entry_of(&lib).and_then(|e| e.path()), Some("acme/lib"));
    }

    #[test]
    fn static_tokens_are_found_by_digest_and_completed() {
        let d1: [u8; 32] = Sha256::digest(b"tok-1").into();
        let d2: [u8; 32] = Sha256::digest(b"tok-2").into();
        let d3: [u8; 32] = Sha256::digest(b"tok-3").into();
        let p = Policy::build(
            Defaults::default(),
            vec![spec(Some(10), Some("acme/deploy-bot"))],
            vec![
                TokenSpec {
                    sha256: d1,
                    project: ProjectRef::path("ACME/deploy-bot"),
                },
                TokenSpec {
                    sha256: d2,
                    project: ProjectRef::Id(77),
                },
            ],
            String::new(),
        );
        assert_eq!(p.token_count(), 2);
        assert_eq!(
            p.static_token(&d1),
            Some(ProjectIdentity {
                id: Some(10),
                path: Some("acme/deploy-bot".into())
            })
        );
        assert_eq!(
            p.static_token(&d2),
            Some(ProjectIdentity::from_ref(&ProjectRef::Id(77)))
        );
        assert_eq!(p.static_token(&d3), None);
        let debug = format!("{p:?}");
        assert!(
            debug.contains("tokens: 2") && !debug.contains(&hex::encode(d1)),
            "{debug}"
        );
    }

    #[test]
    fn group_matches_walk_ancestors() {
        let l = LimitPolicy::compile(&LimitSpec {
            enabled: true,
            allow: vec![ProjectRef::Id(3), ProjectRef::path("a/x")],
            allow_groups: vec!["A/B".into()],
        });
        let who = |p: &str| ProjectIdentity {
            id: None,
            path: Some(p.into()),
        };
        assert_eq!(l.matches(&who("a/b/c/d")), Some(AllowMatch::Group("a/b")));
        assert_eq!(l.matches(&who("a/b/c")), Some(AllowMatch::Group("a/b")));
        assert_eq!(l.matches(&who("A/B/C")), Some(AllowMatch::Group("a/b")));
        assert_eq!(l.matches(&who("a/bc/d")), None);
        assert_eq!(l.matches(&who("a/b")), None);
        assert_eq!(l.matches(&who("a/X")), Some(AllowMatch::Path("a/x")));
        assert_eq!(
            l.matches(&ProjectIdentity::from_ref(&ProjectRef::Id(3))),
            Some(AllowMatch::Id(3))
        );
        assert_eq!(l.matches(&ProjectIdentity::default()), None);
        assert_eq!((l.project_entries(), l.group_entries()), (2, 1));
        let deep = LimitPolicy::compile(&LimitSpec {
            enabled: true,
            allow: vec![],
            allow_groups: vec!["x".into(), "a/b/c/d".into()],
        });
        assert_eq!(deep.group_depth, 4);
        assert_eq!(
            deep.matches(&who("a/b/c/d/p")),
            Some(AllowMatch::Group("a/b/c/d"))
        );
        assert_eq!(
            deep.matches(&who("a/b/c/d/e/p")),
            Some(AllowMatch::Group("a/b/c/d"))
        );
        assert_eq!(deep.matches(&who("a/b/c/p")), None);
        assert_eq!(deep.matches(&who("x/y/z/p")), Some(AllowMatch::Group("x")));
    }
}
