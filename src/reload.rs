//! Live reload of the scope file: a debounced watcher on the file's directory plus a slow poll,
//! both feeding [`PolicyStore::reload_if_changed`] (SIGHUP and `POST /-/reload` go through
//! [`crate::admin::Admin::reload`] as before).
//!
//! - **Why the directory.** Editors save by writing a temporary file and renaming it over the
//!   original, and Kubernetes updates a mounted ConfigMap by swapping a `..data` symlink: in both
//!   cases a watch on the file itself would follow the old inode and go deaf. So the directory is
//!   watched (not recursively), and its events are filtered down to the names the file's content
//!   depends on: the file's own name and every symlink hop inside the directory (`..data` and the
//!   `..<timestamp>` directory it points to), recomputed after every check. A symlink that leads
//!   out of the directory also gets the target's directory watched.
//! - **Debounce.** `notify-debouncer-full` holds each path's events for `reload_debounce`; then,
//!   before reading, the reloader waits until the file's `ctime` is one debounce window old, so
//!   that a file is read only once its writer has been quiet for that long.
//! - **Only real changes.** The file is read once, its digest compared with the running
//!   snapshot's: equal means nothing to do (no generation bump). Content already rejected is not
//!   reported again.
//! - **Half-written files.** A file that changes while it is read is not taken. When a check
//!   from the watcher or the poll fails, the reloader waits one debounce window and tries once
//!   more before it reports the failure (counted, logged, shown at `/-/policy`): a writer that
//!   paused mid-file gets that long to finish without raising an alarm. Either way the running
//!   snapshot stays until a good file is read.
//! - **Poll.** Every `reload_poll` (default 30 s, `0s` disables) the resolved file is `stat`ed;
//!   when device, inode, size, `mtime` or `ctime` moved, or the last look was too close to the
//!   file's last change to trust the timestamps, it is read and compared by digest. This covers
//!   file systems without inotify (NFS, some FUSE mounts) and a watcher that could not start.
//! - **Never fatal.** A watcher that cannot start or reports errors is logged and left to the
//!   poll and SIGHUP; it is retried at each poll tick, and rebuilt when the directory itself was
//!   replaced.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::snapshot::{FileStamp, PolicyStore, Reloaded};

/// How many symlink hops are followed when working out which names to watch.
const MAX_HOPS: usize = 32;
/// File timestamps closer than this to the moment they were looked at are not trusted to tell
/// versions apart (coarse clocks: ext4 jiffies, NFS and FAT seconds).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The reload settings (see `config/scopegate.toml`).
#[derive(Clone, Debug)]
pub struct ReloadSettings {
    /// Watch the scope file's directory.
    pub watch: bool,
    /// How long the file must be quiet before it is read.
    pub debounce: Duration,
    /// How often the file is compared with the running snapshot anyway; zero disables.
    pub poll: Duration,
}

impl From<&Settings> for ReloadSettings {
    fn from(s: &Settings) -> Self {
        ReloadSettings {
            watch: s.reload_watch,
            debounce: s.reload_debounce,
            poll: s.reload_poll,
        }
    }
}

/// Watches the scope file and reloads it when its content changes. Build it with [`new`]
/// (the watch is in place when it returns), then drive it with [`run`].
///
/// [`new`]: Reloader::new
/// [`run`]: Reloader::run
pub struct Reloader {
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    settings: ReloadSettings,
    /// The scope file, absolute (as configured, symlinks not resolved).
    path: PathBuf,
    /// Woken by the watcher for relevant events; holds at most one wake-up.
    wake: Arc<Notify>,
    /// What the watcher's event handler lets through.
    filter: Arc<ArcSwap<Filter>>,
    watch: Option<DirWatch>,
    /// The file as last compared with the running snapshot, for the poll's cheap `stat` check.
    seen: Option<Seen>,
}

struct DirWatch {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    /// The watched directory's identity when the watch was set up.
    dir_id: Option<(u64, u64)>,
    /// The directory of a symlink target outside the scope file's directory, also watched.
    outside: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    stamp: FileStamp,
    at: SystemTime,
}

/// Which events can change what the scope file reads.
#[derive(Debug, Default)]
struct Filter {
    dir: PathBuf,
    names: HashSet<OsString>,
}

impl Filter {
    fn relevant(&self, event: &Event) -> bool {
        if event.need_rescan() {
            return true;
        }
        match event.kind {
            // Our own reads open the file: never a change.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return false,
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => return false,
            _ => {}
        }
        event.paths.is_empty()
            || event
                .paths
                .iter()
                .any(|p| p == &self.dir || p.file_name().is_some_and(|n| self.names.contains(n)))
    }
}

/// What to watch for a scope file at `path` (absolute).
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    dir: PathBuf,
    names: HashSet<OsString>,
    /// The resolved file's directory when it lies outside `dir`.
    outside: Option<PathBuf>,
}

fn plan(path: &Path) -> Plan {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut names = HashSet::new();
    if let Some(name) = path.file_name() {
        names.insert(name.to_os_string());
    }
    // Walk the symlink chain; every hop that lives directly in `dir` is a name whose change
    // (a rename, a symlink swap, a removal) changes what the file reads.
    let mut todo = vec![path.to_path_buf()];
    let mut hops = 0;
    while let Some(p) = todo.pop() {
        hops += 1;
        if hops > MAX_HOPS {
            break;
        }
        if let Ok(target) = std::fs::read_link(&p) {
            if let Some(parent) = p.parent() {
                todo.push(normalize(&parent.join(target)));
            }
        }
        let Ok(rest) = p.strip_prefix(&dir) else {
            continue;
        };
        let Some(Component::Normal(first)) = rest.components().next() else {
            continue;
        };
        names.insert(first.to_os_string());
        let entry = dir.join(first);
        if entry != p {
            if let Ok(target) = std::fs::read_link(&entry) {
                todo.push(normalize(&dir.join(target)));
            }
        }
    }
    let mut outside = None;
    if let (Ok(file), Ok(real_dir)) = (std::fs::canonicalize(path), std::fs::canonicalize(&dir)) {
        if !file.starts_with(&real_dir) {
            if let Some(name) = file.file_name() {
                names.insert(name.to_os_string());
            }
            outside = file.parent().map(Path::to_path_buf);
        }
    }
    Plan {
        dir,
        names,
        outside,
    }
}

/// Collapse `.` and `..` lexically (enough for choosing names to watch; the poll backs it up).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl Reloader {
    /// Set up the watch (when enabled). Call it before the first load so that no change made
    /// in between goes unseen.
    pub fn new(store: Arc<PolicyStore>, metrics: Arc<Metrics>, settings: ReloadSettings) -> Self {
        let path = std::path::absolute(store.path()).unwrap_or_else(|_| store.path().to_owned());
        let plan = plan(&path);
        let mut reloader = Reloader {
            store,
            metrics,
            settings,
            path,
            wake: Arc::new(Notify::new()),
            filter: Arc::new(ArcSwap::from_pointee(Filter {
                dir: plan.dir,
                names: plan.names,
            })),
            watch: None,
            seen: None,
        };
        if reloader.settings.watch {
            reloader.start_watch(true);
        }
        reloader
    }

    /// Whether the directory watch is running.
    pub fn watching(&self) -> bool {
        self.watch.is_some()
    }

    fn start_watch(&mut self, first: bool) {
        let wake = Arc::clone(&self.wake);
        let filter = Arc::clone(&self.filter);
        let handler = move |result: DebounceEventResult| match result {
            Ok(events) => {
                let filter = filter.load();
                if events.iter().any(|e| filter.relevant(e)) {
                    wake.notify_one();
                }
            }
            Err(errors) => {
                for error in errors {
                    tracing::warn!(%error, "scope file watcher");
                }
                // Events may have been lost: look at the file.
                wake.notify_one();
            }
        };
        let dir = self.filter.load().dir.clone();
        let started = new_debouncer(self.settings.debounce, None, handler).and_then(|mut d| {
            d.watch(&dir, RecursiveMode::NonRecursive)?;
            Ok(d)
        });
        match started {
            Ok(debouncer) => {
                tracing::info!(dir = %dir.display(), debounce = ?self.settings.debounce, "watching the scope file's directory");
                self.watch = Some(DirWatch {
                    debouncer,
                    dir_id: dir_id(&dir),
                    outside: None,
                });
                self.refresh_plan();
            }
            Err(error) => {
                if first {
                    tracing::warn!(%error, dir = %dir.display(), poll = ?self.settings.poll, "cannot watch the scope file's directory; relying on the poll and SIGHUP");
                } else {
                    tracing::debug!(%error, dir = %dir.display(), "scope file watcher still cannot start");
                }
                self.watch = None;
            }
        }
    }

    /// Recompute the names to watch (a symlink swap changes them) and the outside directory.
    fn refresh_plan(&mut self) {
        let plan = plan(&self.path);
        if let Some(watch) = self.watch.as_mut() {
            if watch.outside != plan.outside {
                if let Some(old) = watch.outside.take() {
                    let _ = watch.debouncer.unwatch(&old);
                }
                if let Some(new) = &plan.outside {
                    match watch.debouncer.watch(new, RecursiveMode::NonRecursive) {
                        Ok(()) => watch.outside = Some(new.clone()),
                        Err(error) => {
                            tracing::warn!(%error, dir = %new.display(), "cannot watch the scope file's target directory; relying on the poll")
                        }
                    }
                }
            }
        }
        self.filter.store(Arc::new(Filter {
            dir: plan.dir,
            names: plan.names,
        }));
    }

    /// Keep the watch alive: start it if it could not start before, rebuild it when the
    /// directory it watched was replaced (its inotify watch then sees nothing any more).
    fn mend_watch(&mut self) {
        if !self.settings.watch {
            return;
        }
        let dir = self.filter.load().dir.clone();
        let replaced = self
            .watch
            .as_ref()
            .is_some_and(|w| w.dir_id != dir_id(&dir));
        if replaced {
            tracing::info!(dir = %dir.display(), "the scope file's directory was replaced; watching it again");
            self.watch = None;
        }
        if self.watch.is_none() {
            self.start_watch(false);
        }
    }

    /// React to watcher events and poll ticks until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut poll = (!self.settings.poll.is_zero()).then(|| {
            let mut i = tokio::time::interval_at(
                tokio::time::Instant::now() + self.settings.poll,
                self.settings.poll,
            );
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => "watch",
                _ = tick(&mut poll) => "poll",
            };
            if trigger == "poll" {
                self.mend_watch();
                if self.unchanged_since_seen().await {
                    continue;
                }
            }
            if !self.check(trigger, &shutdown).await {
                return;
            }
            self.refresh_plan();
        }
    }

    /// The poll's cheap test: the resolved file's stamp is the one last compared, and that
    /// comparison happened well after the file's last change.
    async fn unchanged_since_seen(&self) -> bool {
        let Some(seen) = self.seen else {
            return false;
        };
        let Some(now) = self.stamp().await else {
            return false;
        };
        now.stamp == seen.stamp
            && seen
                .at
                .duration_since(seen.stamp.changed_at())
                .is_ok_and(|d| d >= RACY_WINDOW.max(self.settings.debounce))
    }

    async fn stamp(&self) -> Option<Seen> {
        let meta = tokio::fs::metadata(&self.path).await.ok()?;
        Some(Seen {
            stamp: FileStamp::of(&meta),
            at: SystemTime::now(),
        })
    }

    /// Compare the file with the running snapshot and reload it if it changed. False when
    /// shutdown interrupted it.
    async fn check(&mut self, trigger: &'static str, shutdown: &CancellationToken) -> bool {
        if !self.settle(shutdown).await {
            return false;
        }
        let seen = self.stamp().await;
        match self.store.reload_if_changed(trigger, false).await {
            Ok(outcome) => self.count(&outcome),
            Err(_) => {
                // Perhaps a writer paused mid-file: give it one more debounce window, then
                // report whatever the file holds.
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(self.settings.debounce) => {}
                }
                if !self.settle(shutdown).await {
                    return false;
                }
                let seen = self.stamp().await;
                match self.store.reload_if_changed(trigger, true).await {
                    Ok(outcome) => self.count(&outcome),
                    Err(_) => self.metrics.reload(false, self.store.load().generation),
                }
                self.seen = seen;
                return true;
            }
        }
        self.seen = seen;
        true
    }

    fn count(&self, outcome: &Reloaded) {
        match outcome {
            Reloaded::Swapped(snapshot) => self.metrics.reload(true, snapshot.generation),
            Reloaded::Unchanged => self.metrics.reload_unchanged(),
        }
    }

    /// Wait until the file has not changed for one debounce window (its writer is done, or at
    /// least paused), but no longer than ten windows: a file that never settles is read anyway
    /// and must then survive the stable-read check. False when shutdown interrupted it.
    async fn settle(&self, shutdown: &CancellationToken) -> bool {
        let debounce = self.settings.debounce;
        let deadline = tokio::time::Instant::now() + debounce * 10;
        loop {
            let Some(seen) = self.stamp().await else {
                // Missing or unreadable: the reload will say so.
                return true;
            };
            let age = seen
                .at
                .duration_since(seen.stamp.changed_at())
                .unwrap_or(Duration::ZERO);
            let now = tokio::time::Instant::now();
            if age >= debounce || now >= deadline {
                return true;
            }
            let wait = (debounce - age).min(deadline - now);
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

async fn tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, RenameMode};
    use std::os::unix::fs::symlink;

    fn names(plan: &Plan) -> Vec<String> {
        let mut v: Vec<String> = plan
            .names
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn event(kind: EventKind, paths: &[&Path]) -> Event {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(p.to_path_buf());
        }
        e
    }

    #[test]
    fn a_plain_file_is_watched_by_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scopes.toml");
        std::fs::write(&file, "").unwrap();
        let plan = plan(&file);
        assert_eq!(plan.dir, dir.path());
        assert_eq!(names(&plan), ["scopes.toml"]);
        assert_eq!(plan.outside, None);
    }

    #[test]
    fn a_configmap_chain_is_followed_through_data_and_the_timestamp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..2026_01_01_00_00_00.1")).unwrap();
        std::fs::write(d.join("..2026_01_01_00_00_00.1/scopes.toml"), "").unwrap();
        symlink("..2026_01_01_00_00_00.1", d.join("..data")).unwrap();
        symlink("..data/scopes.toml", d.join("scopes.toml")).unwrap();
        let plan = plan(&d.join("scopes.toml"));
        assert_eq!(
            names(&plan),
            ["..2026_01_01_00_00_00.1", "..data", "scopes.toml"]
        );
        assert_eq!(plan.outside, None, "the target lives inside the directory");
    }

    #[test]
    fn a_symlink_out_of_the_directory_watches_the_target_directory() {
        let conf = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("real.toml");
        std::fs::write(&target, "").unwrap();
        symlink(&target, conf.path().join("scopes.toml")).unwrap();
        let plan = plan(&conf.path().join("scopes.toml"));
        assert!(plan.names.contains(&OsString::from("real.toml")));
        assert_eq!(
            plan.outside,
            Some(std::fs::canonicalize(elsewhere.path()).unwrap())
        );
    }

    #[test]
    fn a_symlink_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let plan = plan(&dir.path().join("a"));
        assert_eq!(names(&plan), ["a", "b"]);
    }

    #[test]
    fn the_filter_ignores_reads_and_unrelated_files() {
        let dir = Path::new("/etc/scopegate");
        let filter = Filter {
            dir: dir.to_path_buf(),
            names: ["scopes.toml", "..data"]
                .into_iter()
                .map(OsString::from)
                .collect(),
        };
        let file = dir.join("scopes.toml");
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let close_read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        let close_write = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let data = EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any));
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let create = EventKind::Create(CreateKind::File);
        assert!(!filter.relevant(&event(open, &[&file])));
        assert!(!filter.relevant(&event(close_read, &[&file])));
        assert!(filter.relevant(&event(close_write, &[&file])));
        assert!(filter.relevant(&event(data, &[&file])));
        assert!(!filter.relevant(&event(data, &[&dir.join("notes.txt")])));
        assert!(!filter.relevant(&event(create, &[&dir.join(".scopes.toml.swp")])));
        // An editor's save: temp file renamed over the scope file.
        assert!(filter.relevant(&event(rename, &[&dir.join(".scopes.toml.tmp"), &file])));
        // A ConfigMap update: `..data_tmp` renamed over `..data`; the scope file is not touched.
        assert!(filter.relevant(&event(
            rename,
            &[&dir.join("..data_tmp"), &dir.join("..data")]
        )));
        assert!(!filter.relevant(&event(create, &[&dir.join("..2026_02")])));
        // The directory itself went away.
        assert!(filter.relevant(&event(
            EventKind::Remove(notify::event::RemoveKind::Folder),
            &[dir]
        )));
        // Lost events.
        assert!(
            filter.relevant(&Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan))
        );
    }
}
