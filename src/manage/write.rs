//! Writes to the scope file that lose nothing.
//!
//! One writer at a time (a `tokio::sync::Mutex` per gateway). Each change:
//! 1. refuses with [`WriteError::ReadOnly`] (409) when the file, or the directory it lives in,
//!    is not writable: a read-only file or directory, a read-only mount such as a Kubernetes
//!    ConfigMap. The policy is then managed elsewhere. Permission bits are checked explicitly
//!    (a gateway running as root could otherwise write a file ops marked read-only);
//! 2. reads the file as it is on disk *now*, so that edits ops made since the running snapshot
//!    was loaded are kept: the change is applied to the new content;
//! 3. edits it with `toml_edit`, which keeps comments, blank lines, key order and quoting;
//! 4. validates the edited text with the normal loader, so an invalid file is never written;
//! 5. writes it to a temporary file in the same directory (same owner and mode as the scope
//!    file), flushes it to disk, renames it over the scope file and flushes the directory. A
//!    reader, or a crash at any point, sees the old file or the new one, never a mix;
//! 6. puts the new policy in force (`PolicyStore::install`) before the caller answers.
//!
//! A failure (disk full, permissions, an injected fault in tests) removes the temporary file,
//! leaves the scope file and the policy in force as they were, and is reported as
//! [`WriteError::Failed`] (500). Only one gateway process should write a given scope file: the
//! lock is per process.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table, TableLike, Value};

use crate::policy::Policy;
use crate::scope::{self, Loaded, ScopeLimits};
use crate::snapshot::PolicyStore;

/// An edit the API refused (duplicate entry, over the limit, …): status and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The scope file cannot be written here: it is managed elsewhere (409).
    #[error("{0}")]
    ReadOnly(String),
    /// The edit itself was refused; nothing was written.
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// Reading, validating or writing failed; the file and the policy in force are unchanged.
    #[error("{0}")]
    Failed(String),
}

/// Where an injected fault strikes (tests of the failure paths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    /// After the temporary file was created, before anything was written to it.
    BeforeWrite,
    /// After the temporary file was written and flushed, before the rename.
    BeforeRename,
}

/// The scope file's single writer.
pub struct ScopeWriter {
    store: Arc<PolicyStore>,
    lock: tokio::sync::Mutex<()>,
    counter: AtomicU64,
    fault: Mutex<Option<FailPoint>>,
}

impl ScopeWriter {
    pub fn new(store: Arc<PolicyStore>) -> Self {
        ScopeWriter {
            store,
            lock: tokio::sync::Mutex::new(()),
            counter: AtomicU64::new(0),
            fault: Mutex::new(None),
        }
    }

    pub fn store(&self) -> &Arc<PolicyStore> {
        &self.store
    }

    /// Make every following write fail at `point` (tests); `None` heals.
    pub fn inject_fault(&self, point: Option<FailPoint>) {
        if let Ok(mut f) = self.fault.lock() {
            *f = point;
        }
    }

    /// Apply `edit` to the scope file as it is on disk now, write the result safely, and put
    /// it in force. `edit` sees the document and the policy compiled from the same text.
    /// Returns what `edit` returned and the generation now in force.
    pub async fn apply<T, F>(&self, edit: F) -> Result<(T, u64), WriteError>
    where
        F: FnOnce(&mut ScopeDoc, &Policy) -> Result<T, Refusal> + Send + 'static,
        T: Send + 'static,
    {
        let _one_writer = self.lock.lock().await;
        let path = self.store.path().to_path_buf();
        let limits = self.store.limits().clone();
        let fault = self.fault.lock().map(|f| *f).unwrap_or(None);
        let seq = self.counter.fetch_add(1, Ordering::Relaxed);
        let (value, loaded) =
            tokio::task::spawn_blocking(move || write_blocking(&path, &limits, fault, seq, edit))
                .await
                .map_err(|e| WriteError::Failed(format!("the write task failed: {e}")))??;
        let snapshot = self.store.install(loaded).await;
        Ok((value, snapshot.generation))
    }
}

/// Everything `apply` does off the async workers.
fn write_blocking<T, F>(
    path: &Path,
    limits: &ScopeLimits,
    fault: Option<FailPoint>,
    seq: u64,
    edit: F,
) -> Result<(T, Loaded), WriteError>
where
    F: FnOnce(&mut ScopeDoc, &Policy) -> Result<T, Refusal>,
{
    let name = path.display().to_string();
    // A symlinked scope file is written where it really lives; the link stays.
    let real = fs::canonicalize(path)
        .map_err(|e| WriteError::Failed(format!("cannot read the scope file {name}: {e}")))?;
    let dir = real
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    check_writable(&real, &dir, &name)?;
    let text = fs::read_to_string(&real)
        .map_err(|e| WriteError::Failed(format!("cannot read the scope file {name}: {e}")))?;
    let current = scope::load_str(&name, &text, limits).map_err(|e| {
        WriteError::Failed(format!(
            "the scope file on disk does not load, so it cannot be changed through the API until it is fixed (scopegate check): {e}"
        ))
    })?;
    let mut doc = ScopeDoc::parse(&text).map_err(WriteError::Failed)?;
    let value = edit(&mut doc, &current.policy).map_err(WriteError::Refused)?;
    let new_text = doc.to_text();
    if new_text == text {
        return Ok((value, current));
    }
    let loaded = scope::load_str(&name, &new_text, limits).map_err(|e| {
        WriteError::Failed(format!(
            "the change would make the scope file invalid, so nothing was written: {e}"
        ))
    })?;
    remove_stale_temporaries(&real, &dir);
    atomic_replace(&real, &dir, new_text.as_bytes(), fault, seq)?;
    Ok((value, loaded))
}

fn managed_elsewhere(what: &str) -> WriteError {
    WriteError::ReadOnly(format!(
        "{what}: the job token scope of this gateway is managed elsewhere (ops edit the scope file, or it is mounted read-only, e.g. from a ConfigMap); change it there"
    ))
}

/// 409 when the file or its directory cannot (or must not) be written.
fn check_writable(real: &Path, dir: &Path, name: &str) -> Result<(), WriteError> {
    let meta = fs::metadata(real)
        .map_err(|e| WriteError::Failed(format!("cannot read the scope file {name}: {e}")))?;
    if meta.permissions().mode() & 0o222 == 0 {
        return Err(managed_elsewhere(&format!(
            "the scope file {name} is read-only"
        )));
    }
    match fs::metadata(dir) {
        Ok(m) if m.permissions().mode() & 0o222 == 0 => {
            return Err(managed_elsewhere(&format!(
                "the directory of the scope file {name} is read-only"
            )))
        }
        _ => {}
    }
    // Opening for append changes nothing, and finds read-only mounts and foreign owners.
    match OpenOptions::new().append(true).open(real) {
        Ok(_) => Ok(()),
        Err(e) if is_read_only(&e) => Err(managed_elsewhere(&format!(
            "the scope file {name} cannot be written ({e})"
        ))),
        Err(e) => Err(WriteError::Failed(format!(
            "cannot open the scope file {name} for writing: {e}"
        ))),
    }
}

fn is_read_only(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied
    )
}

fn temp_prefix(real: &Path) -> String {
    let file = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scopes".into());
    format!(".{file}.scopegate-")
}

/// Temporary files a killed writer left behind (another process id) are removed.
fn remove_stale_temporaries(real: &Path, dir: &Path) {
    let prefix = temp_prefix(real);
    let own = format!("{prefix}{}-", std::process::id());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") && !name.starts_with(&own) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Temporary file, flush, rename over, flush the directory.
fn atomic_replace(
    real: &Path,
    dir: &Path,
    bytes: &[u8],
    fault: Option<FailPoint>,
    seq: u64,
) -> Result<(), WriteError> {
    let meta = fs::metadata(real).map_err(|e| WriteError::Failed(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o7777;
    let tmp = dir.join(format!(
        "{}{}-{seq}.tmp",
        temp_prefix(real),
        std::process::id()
    ));
    let written = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // Same mode and (where allowed) owner as the file it replaces.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        if fault == Some(FailPoint::BeforeWrite) {
            return Err(io::Error::other("injected fault before writing"));
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        if fault == Some(FailPoint::BeforeRename) {
            return Err(io::Error::other("injected fault before the rename"));
        }
        fs::rename(&tmp, real)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        if is_read_only(&e) {
            return Err(managed_elsewhere(&format!(
                "the scope file's directory {} cannot be written ({e})",
                dir.display()
            )));
        }
        return Err(WriteError::Failed(format!(
            "cannot write the scope file {}: {e}; it was not changed",
            real.display()
        )));
    }
    // The rename is done and visible; a failed directory flush only weakens durability.
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot flush the scope file's directory");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Editing the document.

/// Which limit of a project.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn key(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A project as the forge (or the authorization log) names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub id: Option<u64>,
    /// Full path as the forge spells it.
    pub path: Option<String>,
}

/// An allowlist entry as written in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Id(u64),
    Path(String),
}

impl Entry {
    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Entry::Id(id), Value::Integer(i)) => u64::try_from(*i.value()).ok() == Some(*id),
            (Entry::Path(p), Value::String(s)) => s.value().eq_ignore_ascii_case(p),
            _ => false,
        }
    }
    fn to_value(&self) -> Value {
        match self {
            Entry::Id(id) => Value::from(i64::try_from(*id).unwrap_or(i64::MAX)),
            Entry::Path(p) => Value::from(p.as_str()),
        }
    }
}

/// The scope file as a format-preserving document.
pub struct ScopeDoc {
    doc: DocumentMut,
}

enum EntryMut<'a> {
    Table(&'a mut Table),
    Inline(&'a mut InlineTable),
}

impl EntryMut<'_> {
    fn table(&mut self) -> &mut dyn TableLike {
        match self {
            EntryMut::Table(t) => *t,
            EntryMut::Inline(t) => *t,
        }
    }
}

fn id_of(t: &dyn TableLike) -> Option<u64> {
    t.get("id")
        .and_then(Item::as_integer)
        .and_then(|i| u64::try_from(i).ok())
}

fn path_of(t: &dyn TableLike) -> Option<&str> {
    t.get("path").and_then(Item::as_str)
}

const ADDED_BY: &str = "# added through scopegate's management API\n";

impl ScopeDoc {
    pub fn parse(text: &str) -> Result<ScopeDoc, String> {
        text.parse::<DocumentMut>()
            .map(|doc| ScopeDoc { doc })
            .map_err(|e| format!("the scope file does not parse: {e}"))
    }

    pub fn to_text(&self) -> String {
        self.doc.to_string()
    }

    /// Every `[[project]]` entry, whether written as tables or as an inline array.
    fn entries(&mut self) -> Vec<EntryMut<'_>> {
        match self.doc.get_mut("project") {
            Some(Item::ArrayOfTables(aot)) => aot.iter_mut().map(EntryMut::Table).collect(),
            Some(Item::Value(Value::Array(a))) => a
                .iter_mut()
                .filter_map(Value::as_inline_table_mut)
                .map(EntryMut::Inline)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Index of the entry that governs `who`, as `Policy::entry_of` picks it: the entry
    /// listing its id, else the one listing its path (unless that one lists another id).
    fn find(&mut self, who: &Named) -> Option<usize> {
        let mut entries = self.entries();
        if let Some(id) = who.id {
            if let Some(i) = entries
                .iter_mut()
                .position(|e| id_of(e.table()) == Some(id))
            {
                return Some(i);
            }
        }
        let path = who.path.as_deref()?;
        entries.iter_mut().position(|e| {
            let t = e.table();
            path_of(t).is_some_and(|p| p.eq_ignore_ascii_case(path))
                && id_of(t).is_none_or(|id| Some(id) == who.id)
        })
    }

    /// Whether any entry lists this id, or this path (any letter case).
    pub fn lists(&mut self, id: Option<u64>, path: Option<&str>) -> bool {
        self.entries().iter_mut().any(|e| {
            let t = e.table();
            (id.is_some() && id_of(t) == id)
                || path.is_some_and(|p| path_of(t).is_some_and(|q| q.eq_ignore_ascii_case(p)))
        })
    }

    /// Append a `[[project]]` entry naming `who` (its path left out when another entry already
    /// claims it). Returns its index.
    fn create(&mut self, who: &Named) -> usize {
        let path = who
            .path
            .clone()
            .filter(|p| !self.lists(None, Some(p.as_str())));
        let id = who.id.and_then(|id| i64::try_from(id).ok());
        match self.doc.get_mut("project") {
            Some(Item::Value(Value::Array(a))) => {
                let mut t = InlineTable::new();
                if let Some(id) = id {
                    t.insert("id", Value::from(id));
                }
                if let Some(p) = &path {
                    t.insert("path", Value::from(p.as_str()));
                }
                a.push(t);
                a.len() - 1
            }
            _ => {
                let mut t = Table::new();
                t.decor_mut().set_prefix(format!("\n{ADDED_BY}"));
                if let Some(id) = id {
                    t.insert("id", toml_edit::value(id));
                }
                if let Some(p) = &path {
                    t.insert("path", toml_edit::value(p.as_str()));
                }
                match self.doc.get_mut("project") {
                    Some(Item::ArrayOfTables(aot)) => {
                        aot.push(t);
                        aot.len() - 1
                    }
                    _ => {
                        let mut aot = ArrayOfTables::new();
                        aot.push(t);
                        self.doc.insert("project", Item::ArrayOfTables(aot));
                        0
                    }
                }
            }
        }
    }

    /// The entry of `who`, created (id and path) when the file has none.
    fn entry_or_create(&mut self, who: &Named) -> usize {
        match self.find(who) {
            Some(i) => i,
            None => self.create(who),
        }
    }

    /// `who`'s `[project.<dir>]` table, created when missing.
    fn limit_table(&mut self, who: &Named, dir: Direction) -> Option<&mut dyn TableLike> {
        let index = self.entry_or_create(who);
        let entry = self.entries().into_iter().nth(index)?;
        let key = dir.key();
        match entry {
            EntryMut::Table(t) => {
                if !t.contains_key(key) {
                    t.insert(key, Item::Table(Table::new()));
                }
                t.get_mut(key)?.as_table_like_mut()
            }
            EntryMut::Inline(t) => {
                if !t.contains_key(key) {
                    t.insert(key, Value::InlineTable(InlineTable::new()));
                }
                t.get_mut(key)?
                    .as_inline_table_mut()
                    .map(|t| t as &mut dyn TableLike)
            }
        }
    }

    /// Make sure `who` has an entry (e.g. a project's first change creates it).
    pub fn ensure_entry(&mut self, who: &Named) {
        self.entry_or_create(who);
    }

    /// Turn `who`'s limit on or off (keeping the comment on the `enabled` line).
    pub fn set_enabled(&mut self, who: &Named, dir: Direction, enabled: bool) -> bool {
        let Some(t) = self.limit_table(who, dir) else {
            return false;
        };
        match t.get_mut("enabled").and_then(Item::as_value_mut) {
            Some(v) => {
                let decor = v.decor().clone();
                *v = Value::from(enabled);
                *v.decor_mut() = decor;
            }
            None => {
                t.insert("enabled", toml_edit::value(enabled));
            }
        }
        true
    }

    /// Set `who`'s `report_only` (keeping the comment on its line).
    pub fn set_report_only(&mut self, who: &Named, report_only: bool) {
        let index = self.entry_or_create(who);
        let Some(mut entry) = self.entries().into_iter().nth(index) else {
            return;
        };
        let t = entry.table();
        match t.get_mut("report_only").and_then(Item::as_value_mut) {
            Some(v) => {
                let decor = v.decor().clone();
                *v = Value::from(report_only);
                *v.decor_mut() = decor;
            }
            None => {
                t.insert("report_only", toml_edit::value(report_only));
            }
        }
    }

    fn list(&mut self, who: &Named, dir: Direction, key: &str) -> Option<&mut toml_edit::Array> {
        let t = self.limit_table(who, dir)?;
        if !t.get(key).is_some_and(Item::is_array) {
            t.insert(key, Item::Value(Value::Array(toml_edit::Array::new())));
        }
        t.get_mut(key)?.as_array_mut()
    }

    /// Append `entry` to `who`'s `allow` list of `dir`.
    pub fn add_allow(&mut self, who: &Named, dir: Direction, entry: &Entry) -> bool {
        match self.list(who, dir, "allow") {
            Some(a) => {
                push_like_siblings(a, entry.to_value());
                true
            }
            None => false,
        }
    }

    /// Append a group to `who`'s `allow_groups` list of `dir`.
    pub fn add_group(&mut self, who: &Named, dir: Direction, group: &str) -> bool {
        match self.list(who, dir, "allow_groups") {
            Some(a) => {
                push_like_siblings(a, Value::from(group));
                true
            }
            None => false,
        }
    }

    /// Remove every element of `who`'s `key` list in `dir` that one of `entries` names.
    /// Returns how many were removed. Creates nothing.
    fn remove_from(&mut self, who: &Named, dir: Direction, key: &str, entries: &[Entry]) -> usize {
        let Some(index) = self.find(who) else {
            return 0;
        };
        let Some(mut entry) = self.entries().into_iter().nth(index) else {
            return 0;
        };
        let Some(list) = entry
            .table()
            .get_mut(dir.key())
            .and_then(Item::as_table_like_mut)
            .and_then(|t| t.get_mut(key))
            .and_then(Item::as_array_mut)
        else {
            return 0;
        };
        let mut removed = 0;
        let mut i = 0;
        while i < list.len() {
            let hit = list
                .get(i)
                .is_some_and(|v| entries.iter().any(|e| e.matches(v)));
            if hit {
                remove_keeping_layout(list, i);
                removed += 1;
            } else {
                i += 1;
            }
        }
        removed
    }

    pub fn remove_allow(&mut self, who: &Named, dir: Direction, entries: &[Entry]) -> usize {
        self.remove_from(who, dir, "allow", entries)
    }

    pub fn remove_group(&mut self, who: &Named, dir: Direction, group: &str) -> usize {
        self.remove_from(who, dir, "allow_groups", &[Entry::Path(group.to_string())])
    }

    /// Replace `who`'s `allow` and `allow_groups` lists of `dir` with these (suggest --apply).
    pub fn set_lists(&mut self, who: &Named, dir: Direction, allow: &[Entry], groups: &[String]) {
        if let Some(a) = self.list(who, dir, "allow") {
            let wanted: Vec<Value> = allow.iter().map(Entry::to_value).collect();
            replace_all(a, wanted);
        }
        if let Some(a) = self.list(who, dir, "allow_groups") {
            let wanted: Vec<Value> = groups.iter().map(|g| Value::from(g.as_str())).collect();
            replace_all(a, wanted);
        }
    }
}

/// Keep existing elements that are still wanted (with their comments), drop the others, and
/// append the new ones.
fn replace_all(a: &mut toml_edit::Array, wanted: Vec<Value>) {
    let same = |x: &Value, y: &Value| match (x, y) {
        (Value::Integer(a), Value::Integer(b)) => a.value() == b.value(),
        (Value::String(a), Value::String(b)) => a.value().eq_ignore_ascii_case(b.value()),
        _ => false,
    };
    let mut i = 0;
    while i < a.len() {
        if a.get(i).is_some_and(|v| wanted.iter().any(|w| same(v, w))) {
            i += 1;
        } else {
            remove_keeping_layout(a, i);
        }
    }
    for w in wanted {
        if !a.iter().any(|v| same(v, &w)) {
            push_like_siblings(a, w);
        }
    }
}

/// Append with the layout of the elements already there (one per line stays one per line).
fn push_like_siblings(a: &mut toml_edit::Array, mut v: Value) {
    let prefix = match a.len() {
        0 => String::new(),
        n => {
            let last = a
                .get(n - 1)
                .and_then(|l| l.decor().prefix())
                .and_then(|p| p.as_str())
                .unwrap_or(" ");
            match last.rfind('\n') {
                // Indentation only: a comment above the last element stays with it.
                Some(i) => format!("\n{}", &last[i + 1..]),
                None if last.is_empty() => " ".to_string(),
                None => last.to_string(),
            }
        }
    };
    // A comment ending the last element's line sits in the trailing: keep it on that line.
    let trailing = trailing_of(a);
    let (comment, rest) = split_line_comment(&trailing);
    if !comment.is_empty() {
        let rest = rest.to_string();
        v.decor_mut().set_prefix(format!("{comment}{prefix}"));
        a.set_trailing(rest);
    } else {
        v.decor_mut().set_prefix(prefix);
    }
    a.push_formatted(v);
}

/// The comment ending a line, when `s` (a prefix or the array's trailing) starts with one:
/// `("   # note", "\n    ...")`; else `("", s)`.
fn split_line_comment(s: &str) -> (&str, &str) {
    match s.find('\n') {
        Some(n) if s[..n].contains('#') => s.split_at(n),
        None if s.contains('#') => (s, ""),
        _ => ("", s),
    }
}

fn prefix_of(v: &Value) -> String {
    v.decor()
        .prefix()
        .and_then(|p| p.as_str())
        .unwrap_or("")
        .to_string()
}

fn trailing_of(a: &toml_edit::Array) -> String {
    a.trailing().as_str().unwrap_or("").to_string()
}

/// Remove element `i` with its comments, keeping the others'. A comment at the end of an
/// element's line lives in the prefix of the element after it (or in the array's trailing).
fn remove_keeping_layout(a: &mut toml_edit::Array, i: usize) {
    let removed = prefix_of(&a.remove(i));
    // What the removed prefix holds: the end of the previous element's line (kept), then the
    // removed element's own leading layout.
    let (prev_comment, own) = split_line_comment(&removed);
    let own_line_start = if i == 0 { removed.as_str() } else { own };
    match a.get(i).map(prefix_of) {
        Some(next) => {
            // The next prefix starts with the removed element's line end: it goes too.
            let (_, rest) = split_line_comment(&next);
            let prefix = if i == 0 {
                match (rest.find('\n'), own_line_start.rfind('\n')) {
                    (Some(n), Some(r)) => format!("{}{}", &own_line_start[..=r], &rest[n + 1..]),
                    _ => own_line_start.to_string(),
                }
            } else {
                format!("{prev_comment}{rest}")
            };
            if let Some(v) = a.get_mut(i) {
                v.decor_mut().set_prefix(prefix);
            }
        }
        None => {
            let trailing = trailing_of(a);
            let (_, rest) = split_line_comment(&trailing);
            let trailing = format!("{prev_comment}{rest}");
            a.set_trailing(trailing);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const FILE: &str = r#"# top comment
[defaults]
outbound = true
inbound = true

[[project]]
id = 12
path = "acme/app"   # the app

[project.outbound]
enabled = false

[project.inbound]
enabled = false   # owners decide
allow = [
    10,   # the bot
    "acme/lib",
]
allow_groups = ["acme/platform"]

[[token]]
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
project = 12
"#;

    fn app() -> Named {
        Named {
            id: Some(12),
            path: Some("acme/app".into()),
        }
    }

    fn load(text: &str) -> Loaded {
        scope::load_str("t.toml", text, &ScopeLimits::default()).unwrap()
    }

    #[test]
    fn toggling_keeps_comments_and_layout() {
        let mut d = ScopeDoc::parse(FILE).unwrap();
        assert!(d.set_enabled(&app(), Direction::Inbound, true));
        let out = d.to_text();
        assert_eq!(
            out,
            FILE.replace("enabled = false   # owners", "enabled = true   # owners")
        );
        load(&out);
    }

    #[test]
    fn adding_and_removing_entries_keeps_the_rest() {
        let mut d = ScopeDoc::parse(FILE).unwrap();
        d.add_allow(&app(), Direction::Inbound, &Entry::Id(30));
        d.add_group(&app(), Direction::Inbound, "globex");
        let out = d.to_text();
        assert!(out.contains("    \"acme/lib\",\n    30,\n]"), "{out}");
        assert!(
            out.contains(r#"allow_groups = ["acme/platform", "globex"]"#),
            "{out}"
        );
        assert!(out.contains("# the bot") && out.contains("# top comment"));
        let policy = load(&out).policy;
        let e = policy.project(&crate::project::ProjectRef::Id(12)).unwrap();
        assert_eq!(e.inbound().project_entries(), 3);

        let mut d = ScopeDoc::parse(&out).unwrap();
        assert_eq!(
            d.remove_allow(&app(), Direction::Inbound, &[Entry::Id(10)]),
            1
        );
        assert_eq!(
            d.remove_allow(
                &app(),
                Direction::Inbound,
                &[Entry::Path("ACME/lib".into())]
            ),
            1
        );
        assert_eq!(d.remove_group(&app(), Direction::Inbound, "GLOBEX"), 1);
        assert_eq!(d.remove_group(&app(), Direction::Inbound, "nope"), 0);
        let out = d.to_text();
        assert!(out.contains("allow = [\n    30,\n]"), "{out}");
        load(&out);
    }

    #[test]
    fn a_project_without_an_entry_gets_one() {
        let mut d = ScopeDoc::parse(FILE).unwrap();
        let new = Named {
            id: Some(40),
            path: Some("globex/tool".into()),
        };
        d.set_enabled(&new, Direction::Inbound, true);
        d.add_allow(&new, Direction::Inbound, &Entry::Id(12));
        let out = d.to_text();
        assert!(out.starts_with(&FILE[..FILE.find("[[token]]").unwrap()]));
        let policy = load(&out).policy;
        let e = policy.project(&crate::project::ProjectRef::Id(40)).unwrap();
        assert_eq!(e.path(), Some("globex/tool"));
        assert!(e.inbound().enabled());
        assert!(!e.outbound().enabled() || policy.defaults().outbound);
        assert!(out.contains(ADDED_BY), "{out}");
        // An empty file works too.
        let mut d = ScopeDoc::parse("").unwrap();
        d.add_group(&new, Direction::Outbound, "acme");
        let out = d.to_text();
        let policy = load(&out).policy;
        assert_eq!(
            policy
                .project(&crate::project::ProjectRef::Id(40))
                .unwrap()
                .outbound()
                .group_entries(),
            1
        );
    }

    #[test]
    fn inline_entries_are_edited_in_place() {
        let text = "project = [{ id = 1, path = \"a/b\", inbound = { enabled = false } }]\n";
        let mut d = ScopeDoc::parse(text).unwrap();
        let who = Named {
            id: Some(1),
            path: Some("a/b".into()),
        };
        d.set_enabled(&who, Direction::Inbound, true);
        d.add_allow(&who, Direction::Inbound, &Entry::Id(2));
        let out = d.to_text();
        let policy = load(&out).policy;
        let e = policy.project(&crate::project::ProjectRef::Id(1)).unwrap();
        assert!(e.inbound().enabled());
        assert_eq!(e.inbound().project_entries(), 1);
    }

    #[test]
    fn the_entry_is_found_as_the_policy_finds_it() {
        let text = "[[project]]\npath = \"a/b\"\n\n[[project]]\nid = 7\npath = \"c/d\"\n";
        let mut d = ScopeDoc::parse(text).unwrap();
        // By path when the entry lists no id.
        let ab = Named {
            id: Some(1),
            path: Some("A/B".into()),
        };
        assert_eq!(d.find(&ab), Some(0));
        // A path entry that lists another id is not this project's.
        let moved = Named {
            id: Some(8),
            path: Some("c/d".into()),
        };
        assert_eq!(d.find(&moved), None);
        // Creating one then leaves the claimed path out (it would be a duplicate).
        d.ensure_entry(&moved);
        let out = d.to_text();
        load(&out);
        assert!(out.contains("id = 8"), "{out}");
    }

    #[test]
    fn removing_keeps_the_comments_of_the_others() {
        let text = "[[project]]\nid = 1\npath = \"a/b\"\n[project.inbound]\nallow = [\n    10,   # ten\n    # libs\n    20,\n    30,  # thirty\n]\n";
        let who = Named {
            id: Some(1),
            path: Some("a/b".into()),
        };
        let mut d = ScopeDoc::parse(text).unwrap();
        d.remove_allow(&who, Direction::Inbound, &[Entry::Id(10)]);
        assert!(
            d.to_text()
                .contains("allow = [\n    # libs\n    20,\n    30,  # thirty\n]"),
            "{}",
            d.to_text()
        );
        let mut d = ScopeDoc::parse(text).unwrap();
        d.remove_allow(&who, Direction::Inbound, &[Entry::Id(30)]);
        assert!(d.to_text().contains("    20,\n]"), "{}", d.to_text());
        let mut d = ScopeDoc::parse(text).unwrap();
        d.remove_allow(&who, Direction::Inbound, &[Entry::Id(20)]);
        assert!(
            d.to_text()
                .contains("    10,   # ten\n    30,  # thirty\n]"),
            "{}",
            d.to_text()
        );
    }

    #[test]
    fn set_lists_keeps_wanted_elements_and_their_comments() {
        let mut d = ScopeDoc::parse(FILE).unwrap();
        d.set_lists(
            &app(),
            Direction::Inbound,
            &[Entry::Id(10), Entry::Id(31)],
            &["acme/platform".into(), "globex".into()],
        );
        let out = d.to_text();
        assert!(out.contains("10,   # the bot\n    31,\n]"), "{out}");
        assert!(!out.contains("acme/lib"), "{out}");
        load(&out);
    }
}
