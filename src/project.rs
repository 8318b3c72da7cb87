//! How a request or a scope file names a project.
//!
//! The forge knows a project by a numeric id and by a full path (`group/sub/name`), and looks
//! paths up case-insensitively. The gateway keeps both forms apart on purpose: a name is only
//! translated into the other form when the scope file (or, for an origin, the forge) says which
//! project it is (design.md, policy rule 7).

use std::fmt;
use std::sync::Arc;

/// A project as one request or one allowlist entry names it: by id or by full path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProjectRef {
    Id(u64),
    /// Full path, ASCII-lowercased (the forge compares paths case-insensitively).
    Path(Box<str>),
}

impl ProjectRef {
    /// A path reference, lowercased so that comparisons are case-insensitive.
    pub fn path(path: &str) -> Self {
        ProjectRef::Path(path.to_ascii_lowercase().into_boxed_str())
    }
}

impl fmt::Display for ProjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProjectRef::Id(id) => write!(f, "{id}"),
            ProjectRef::Path(p) => f.write_str(p),
        }
    }
}

/// Everything known about one project's identity: the id, the path, or both when the scope
/// file lists both (or the forge told us, for an origin).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectIdentity {
    pub id: Option<u64>,
    /// ASCII-lowercased full path. Shared: identities are cloned on every request (the
    /// decision, the access log, the authorization log), and a clone is then only a count.
    pub path: Option<Arc<str>>,
}

impl ProjectIdentity {
    pub fn from_ref(r: &ProjectRef) -> Self {
        match r {
            ProjectRef::Id(id) => ProjectIdentity {
                id: Some(*id),
                path: None,
            },
            ProjectRef::Path(p) => ProjectIdentity {
                id: None,
                path: Some(Arc::from(&**p)),
            },
        }
    }

    /// Same project: the ids agree, or the (lowercased) paths agree.
    pub fn same_as(&self, other: &ProjectIdentity) -> bool {
        matches!((self.id, other.id), (Some(a), Some(b)) if a == b)
            || matches!((&self.path, &other.path), (Some(a), Some(b)) if a == b)
    }

    /// The ancestor groups of the path, nearest last: `a/b/c` → `a`, `a/b`.
    pub fn ancestor_groups(&self) -> impl Iterator<Item = &str> {
        let path: &str = self.path.as_deref().unwrap_or("");
        path.match_indices('/').map(move |(i, _)| &path[..i])
    }
}

/// Text written piece by piece: the gateway's own words, outside text (which a JSON body must
/// escape), numbers. One message written through `fmt` and straight into a JSON body (a denial,
/// rendered on the request path, without the formatting machinery) stays one text.
pub trait Words {
    fn words(&mut self, s: &'static str);
    fn text(&mut self, s: &str);
    fn number(&mut self, n: u64);
}

/// [`Words`] into a formatter; the first error is kept and ends the writing.
pub struct FmtWords<'a, 'b> {
    f: &'a mut fmt::Formatter<'b>,
    pub result: fmt::Result,
}

impl<'a, 'b> FmtWords<'a, 'b> {
    pub fn new(f: &'a mut fmt::Formatter<'b>) -> Self {
        FmtWords { f, result: Ok(()) }
    }
}

impl Words for FmtWords<'_, '_> {
    fn words(&mut self, s: &'static str) {
        self.text(s);
    }
    fn text(&mut self, s: &str) {
        if self.result.is_ok() {
            self.result = self.f.write_str(s);
        }
    }
    fn number(&mut self, n: u64) {
        if self.result.is_ok() {
            self.result = write!(self.f, "{n}");
        }
    }
}

impl ProjectIdentity {
    /// How messages name the project (its `Display`).
    pub fn write_words(&self, w: &mut impl Words) {
        match (&self.path, self.id) {
            (Some(p), Some(id)) => {
                w.text(p);
                w.words(" (id ");
                w.number(id);
                w.words(")");
            }
            (Some(p), None) => w.text(p),
            (None, Some(id)) => {
                w.words("project ");
                w.number(id);
            }
            (None, None) => w.words("an unknown project"),
        }
    }
}

impl fmt::Display for ProjectIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut w = FmtWords::new(f);
        self.write_words(&mut w);
        w.result
    }
}

/// GitLab caps group nesting at 20 levels; deeper paths cannot name a project.
const MAX_DEPTH: usize = 21;

/// One segment of a forge path (GitLab's `path_regex.rb`): `[a-zA-Z0-9_.][a-zA-Z0-9_.-]*`,
/// not ending in `.`, `.git` or `.atom`.
fn is_valid_segment(bytes: &[u8]) -> bool {
    let Some(&first) = bytes.first() else {
        return false;
    };
    // GitLab compares these suffixes case-sensitively (`b.GIT` is a valid project name).
    bytes.len() <= 255
        && (first.is_ascii_alphanumeric() || first == b'_' || first == b'.')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !bytes.ends_with(b".")
        && !bytes.ends_with(b".git")
        && !bytes.ends_with(b".atom")
}

/// A full project path: at least a namespace and a name, every segment valid.
pub fn is_valid_project_path(path: &str) -> bool {
    valid_segments(path, 2, MAX_DEPTH)
}

/// A full group path: one or more valid segments.
pub fn is_valid_group_path(path: &str) -> bool {
    valid_segments(path, 1, MAX_DEPTH - 1)
}

/// Between `min` and `max` segments, each valid; one pass over the bytes.
fn valid_segments(path: &str, min: usize, max: usize) -> bool {
    let mut n = 0;
    for seg in path.as_bytes().split(|&b| b == b'/') {
        n += 1;
        if n > max || !is_valid_segment(seg) {
            return false;
        }
    }
    n >= min
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_of_a_nested_path() {
        let p = ProjectIdentity::from_ref(&ProjectRef::path("A/b/C"));
        assert_eq!(p.ancestor_groups().collect::<Vec<_>>(), vec!["a", "a/b"]);
        assert_eq!(ProjectIdentity::default().ancestor_groups().count(), 0);
    }

    #[test]
    fn same_project_by_either_form() {
        let both = ProjectIdentity {
            id: Some(1),
            path: Some("a/b".into()),
        };
        assert!(both.same_as(&ProjectIdentity::from_ref(&ProjectRef::Id(1))));
        assert!(both.same_as(&ProjectIdentity::from_ref(&ProjectRef::path("A/B"))));
        assert!(!both.same_as(&ProjectIdentity::from_ref(&ProjectRef::Id(2))));
        assert!(!ProjectIdentity::default().same_as(&ProjectIdentity::default()));
    }

    #[test]
    fn forge_path_grammar() {
        assert!(is_valid_project_path("acme/deploy-bot"));
        assert!(is_valid_project_path("a/b/c.d_e"));
        assert!(!is_valid_project_path("acme"));
        assert!(!is_valid_project_path("acme/app.git"));
        assert!(!is_valid_project_path("acme/app."));
        assert!(!is_valid_project_path("acme//app"));
        assert!(!is_valid_project_path("acme/-app"));
        assert!(!is_valid_project_path("acme/a%2Fb"));
        assert!(!is_valid_project_path("acme/.."));
        assert!(is_valid_group_path("acme"));
        assert!(is_valid_group_path("acme/platform"));
        assert!(!is_valid_group_path(""));
    }
}
