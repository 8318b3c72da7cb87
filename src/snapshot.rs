//! The one immutable policy snapshot the gateway decides on, held behind one `ArcSwap`, and
//! the reload that replaces it: read → parse → validate → compile → swap, keeping the last good
//! snapshot on any error.
//!
//! Two kinds of reload share one procedure:
//! - [`PolicyStore::reload`] (start-up, SIGHUP, `POST /-/reload`) always swaps in what it read;
//! - [`PolicyStore::reload_if_changed`] (the file watcher and the poll, see [`crate::reload`])
//!   swaps only when the file's content digest differs from the running snapshot's, and reports
//!   a given bad content only once, so that watcher noise never bumps a generation or a counter.
//!
//! Either way a file that changes while it is being read is not taken.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::policy::{file_digest, Policy};
use crate::scope::{self, ScopeError, ScopeLimits};

/// A compiled scope file plus what ops need to know about it.
#[derive(Debug)]
pub struct Snapshot {
    pub policy: Policy,
    /// Bumped by every successful reload; 0 is the built-in empty policy.
    pub generation: u64,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    pub fn loaded_at_rfc3339(&self) -> String {
        humantime::format_rfc3339_seconds(self.loaded_at).to_string()
    }
}

/// Owner of the current snapshot and of the reload procedure.
pub struct PolicyStore {
    current: ArcSwap<Snapshot>,
    path: PathBuf,
    limits: ScopeLimits,
    /// The last failed reload's message; cleared by a successful one.
    last_error: Mutex<Option<String>>,
    /// What the last reported failure was about: the rejected content's digest, or the read
    /// error's message. A conditional reload that meets the same problem again stays quiet.
    rejected: Mutex<Option<String>>,
    /// Serialises reloads so generations are assigned in order and no stale read wins.
    reload_lock: tokio::sync::Mutex<()>,
    loaded: AtomicBool,
}

/// What a conditional reload did when it did not fail.
#[derive(Debug)]
pub enum Reloaded {
    /// A new snapshot is in force.
    Swapped(Arc<Snapshot>),
    /// The file holds what is in force (or what was already rejected and reported): nothing done.
    Unchanged,
}

/// How a reload treats what it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attempt {
    /// Skip content equal to the running snapshot's or to the last rejected one.
    only_if_changed: bool,
    /// Remember, log and return a failure for `/-/policy`; when false a failure is only
    /// returned (the caller will try again shortly and report then).
    report: bool,
    /// What asked for the reload, for the log.
    trigger: &'static str,
}

impl PolicyStore {
    /// A store holding the empty (everything limited) policy until the first load.
    pub fn new(path: PathBuf, limits: ScopeLimits) -> Self {
        PolicyStore {
            current: ArcSwap::from_pointee(Snapshot {
                policy: Policy::empty(),
                generation: 0,
                loaded_at: SystemTime::now(),
            }),
            path,
            limits,
            last_error: Mutex::new(None),
            rejected: Mutex::new(None),
            reload_lock: tokio::sync::Mutex::new(()),
            loaded: AtomicBool::new(false),
        }
    }

    /// The snapshot to decide on. Hold the returned `Arc` for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    /// Re-read the scope file and swap in what it holds, even when it is unchanged (start-up,
    /// SIGHUP, `POST /-/reload`). On success the new snapshot is in force when this returns; on
    /// failure the running snapshot stays and the error is remembered for `/-/policy`.
    pub async fn reload(&self) -> Result<Arc<Snapshot>, ScopeError> {
        let attempt = Attempt {
            only_if_changed: false,
            report: true,
            trigger: "explicit",
        };
        match self.reload_with(attempt).await? {
            Reloaded::Swapped(snapshot) => Ok(snapshot),
            Reloaded::Unchanged => Ok(self.load()),
        }
    }

    /// Re-read the scope file and swap only if its content differs from the running snapshot's
    /// (the watcher and the poll). Content that was already rejected is not reported again.
    /// With `report` false a failure is returned but neither logged as an error nor shown at
    /// `/-/policy`: the caller retries once the writer had time to finish, and reports then.
    pub async fn reload_if_changed(
        &self,
        trigger: &'static str,
        report: bool,
    ) -> Result<Reloaded, ScopeError> {
        self.reload_with(Attempt {
            only_if_changed: true,
            report,
            trigger,
        })
        .await
    }

    async fn reload_with(&self, attempt: Attempt) -> Result<Reloaded, ScopeError> {
        let _guard = self.reload_lock.lock().await;
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || read_stable(&path))
            .await
            .unwrap_or_else(|join| Err(self.task_failed(&join)));
        let (text, digest) = match read {
            Ok(read) => read,
            Err(err) => {
                let key = format!("read: {err}");
                return self.failed(err, key, attempt);
            }
        };
        if attempt.only_if_changed {
            if digest == self.current.load().policy.digest() {
                self.file_matches_running_snapshot();
                return Ok(Reloaded::Unchanged);
            }
            if self.is_rejected(&digest) {
                return Ok(Reloaded::Unchanged);
            }
        }
        let name = self.path.display().to_string();
        let limits = self.limits.clone();
        // Parsing a 100k-project file takes a while: keep it off the request workers.
        let loaded = tokio::task::spawn_blocking(move || scope::load_str(&name, &text, &limits))
            .await
            .unwrap_or_else(|join| Err(self.task_failed(&join)));
        match loaded {
            Ok(loaded) => Ok(Reloaded::Swapped(self.swap_in(loaded, attempt.trigger))),
            Err(err) => self.failed(err, digest, attempt),
        }
    }

    /// A reload failed on `key` (a rejected content's digest or a read error).
    fn failed(
        &self,
        err: ScopeError,
        key: String,
        attempt: Attempt,
    ) -> Result<Reloaded, ScopeError> {
        if !attempt.report {
            tracing::debug!(error = %err, path = %self.path.display(), trigger = attempt.trigger, "scope file not taken yet; will look again");
            return Err(err);
        }
        if attempt.only_if_changed && self.is_rejected(&key) {
            return Ok(Reloaded::Unchanged);
        }
        tracing::error!(error = %err, path = %self.path.display(), trigger = attempt.trigger, "scope file rejected; keeping the running snapshot");
        set(&self.last_error, Some(err.to_string()));
        set(&self.rejected, Some(key));
        Err(err)
    }

    fn is_rejected(&self, key: &str) -> bool {
        self.rejected
            .lock()
            .map(|r| r.as_deref() == Some(key))
            .unwrap_or(false)
    }

    /// The file is back to what is in force: an earlier failure no longer describes it.
    fn file_matches_running_snapshot(&self) {
        if self.last_error().is_some() {
            tracing::info!(path = %self.path.display(), "scope file matches the running snapshot again");
        }
        set(&self.last_error, None);
        set(&self.rejected, None);
    }

    fn task_failed(&self, join: &tokio::task::JoinError) -> ScopeError {
        ScopeError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(format!("reload task failed: {join}")),
        }
    }

    /// Put a policy that was just loaded from the scope file's current text in force (the
    /// management API writes the file and installs what it wrote, so the change is in force
    /// before it answers). Ordered with reloads: a reload that read the file earlier cannot
    /// swap its older snapshot in after this one.
    pub async fn install(&self, loaded: scope::Loaded) -> Arc<Snapshot> {
        let _guard = self.reload_lock.lock().await;
        self.swap_in(loaded, "management API")
    }

    /// Swap a loaded policy in; the caller holds `reload_lock`.
    fn swap_in(&self, loaded: scope::Loaded, trigger: &'static str) -> Arc<Snapshot> {
        let generation = self.current.load().generation + 1;
        let snapshot = Arc::new(Snapshot {
            policy: loaded.policy,
            generation,
            loaded_at: SystemTime::now(),
        });
        let old = self.current.swap(Arc::clone(&snapshot));
        retire(old);
        self.loaded.store(true, Ordering::Release);
        set(&self.last_error, None);
        set(&self.rejected, None);
        for w in &loaded.warnings {
            tracing::warn!(warning = %w, "scope file");
        }
        tracing::info!(
            generation,
            digest = snapshot.policy.digest(),
            projects = snapshot.policy.project_count(),
            path = %self.path.display(),
            trigger,
            "scope file loaded"
        );
        snapshot
    }

    /// The scope limits the file is validated with.
    pub fn limits(&self) -> &ScopeLimits {
        &self.limits
    }

    /// The `/-/policy` document.
    pub fn describe(&self) -> serde_json::Value {
        let snap = self.load();
        serde_json::json!({
            "generation": snap.generation,
            "digest": snap.policy.digest(),
            "loaded_at": snap.loaded_at_rfc3339(),
            "projects": snap.policy.project_count(),
            "tokens": snap.policy.token_count(),
            "path": self.path.display().to_string(),
            "last_error": self.last_error(),
        })
    }
}

fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
    if let Ok(mut slot) = slot.lock() {
        *slot = value;
    }
}

/// What identifies one version of a file without reading it: the resolved target's device and
/// inode (a rename or a symlink swap changes them), size, and modification and change times
/// (`ctime` moves on every write and cannot be set back by tools that preserve `mtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// When the file last changed (its `ctime`), by the file system's clock.
    pub fn changed_at(&self) -> SystemTime {
        let (secs, nanos) = self.ctime;
        match (u64::try_from(secs), u32::try_from(nanos)) {
            (Ok(secs), Ok(nanos)) => SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
            _ => SystemTime::UNIX_EPOCH,
        }
    }
}

/// Read the file (following symlinks) and its digest, refusing a file that changed while it
/// was read: a writer is still at work, and the next event or poll will read it again.
fn read_stable(path: &Path) -> Result<(String, String), ScopeError> {
    let io = |source: std::io::Error| ScopeError::Io {
        path: path.display().to_string(),
        source,
    };
    let before = std::fs::metadata(path).map_err(io)?;
    let bytes = std::fs::read(path).map_err(io)?;
    let after = std::fs::metadata(path).map_err(io)?;
    if FileStamp::of(&before) != FileStamp::of(&after) || bytes.len() as u64 != after.len() {
        return Err(io(std::io::Error::other(
            "the file changed while it was being read (a writer is still at work); it will be read again",
        )));
    }
    let digest = file_digest(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })?;
    Ok((text, digest))
}

/// Drop a replaced snapshot off the request workers: a 100k-project policy takes a while to
/// free, and whichever request released it last would otherwise pay for that. Requests hold a
/// snapshot only while deciding, so waiting for them is short; after a minute it is freed
/// wherever its last holder lets go.
fn retire(old: Arc<Snapshot>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while Arc::strong_count(&old) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
    });
}
