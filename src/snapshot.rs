//! The one immutable policy snapshot the gateway decides on, held behind one `ArcSwap`, and
//! the reload that replaces it: read → parse → validate → compile → swap, keeping the last good
//! snapshot on any error.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::policy::Policy;
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
    /// Serialises reloads so generations are assigned in order and no stale read wins.
    reload_lock: tokio::sync::Mutex<()>,
    loaded: AtomicBool,
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

    /// Re-read the scope file. On success the new snapshot is in force when this returns; on
    /// failure the running snapshot stays and the error is remembered for `/-/policy`.
    pub async fn reload(&self) -> Result<Arc<Snapshot>, ScopeError> {
        let _guard = self.reload_lock.lock().await;
        let path = self.path.clone();
        let limits = self.limits.clone();
        // Parsing a 100k-project file takes a while: keep it off the request workers.
        let loaded = tokio::task::spawn_blocking(move || scope::load_file(&path, &limits))
            .await
            .unwrap_or_else(|join| {
                Err(ScopeError::Io {
                    path: self.path.display().to_string(),
                    source: std::io::Error::other(format!("reload task failed: {join}")),
                })
            });
        match loaded {
            Ok(loaded) => Ok(self.swap_in(loaded)),
            Err(err) => {
                tracing::error!(error = %err, path = %self.path.display(), "scope file rejected; keeping the running snapshot");
                if let Ok(mut e) = self.last_error.lock() {
                    *e = Some(err.to_string());
                }
                Err(err)
            }
        }
    }

    /// Put a policy that was just loaded from the scope file's current text in force (the
    /// management API writes the file and installs what it wrote, so the change is in force
    /// before it answers). Ordered with reloads: a reload that read the file earlier cannot
    /// swap its older snapshot in after this one.
    pub async fn install(&self, loaded: scope::Loaded) -> Arc<Snapshot> {
        let _guard = self.reload_lock.lock().await;
        self.swap_in(loaded)
    }

    /// Swap a loaded policy in; the caller holds `reload_lock`.
    fn swap_in(&self, loaded: scope::Loaded) -> Arc<Snapshot> {
        let generation = self.current.load().generation + 1;
        let snapshot = Arc::new(Snapshot {
            policy: loaded.policy,
            generation,
            loaded_at: SystemTime::now(),
        });
        self.current.store(Arc::clone(&snapshot));
        self.loaded.store(true, Ordering::Release);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
        for w in &loaded.warnings {
            tracing::warn!(warning = %w, "scope file");
        }
        tracing::info!(
            generation,
            digest = snapshot.policy.digest(),
            projects = snapshot.policy.project_count(),
            path = %self.path.display(),
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
