//! The authorization log: every job-token decision, aggregated per (target, origin) pair.
//!
//! Each pair keeps when it was first and last seen and how many requests were allowed, denied
//! and only reported (`would_deny`). It is what project maintainers read before they switch
//! their inbound limit on, and what `scopegate suggest` builds an allowlist from.
//!
//! Off the request path: the handler hands each decision to [`AuthLog::record`], which only
//! tries to put it on a bounded channel. When the channel is full the decision is dropped and
//! counted (`scopegate_authlog_dropped_total`); a request never waits for the log. A writer task
//! aggregates what arrives and writes it to SQLite in one transaction per batch (at least every
//! `authlog.flush_interval`, or when a batch is full). The table is bounded: past
//! `authlog.max_pairs` pairs, those seen longest ago are dropped. The database lives in
//! `<state_dir>/authorizations.sqlite3` (WAL mode) and survives restarts; `state_dir =
//! ":memory:"` keeps it in memory.
//!
//! A project reaching itself is not logged: no limit applies to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::project::ProjectIdentity;
use crate::settings::{AuthLogSettings, MEMORY};

/// Decisions aggregated before a write, at most.
const BATCH: usize = 4096;

pub const DB_FILE: &str = "authorizations.sqlite3";

#[derive(Debug, thiserror::Error)]
pub enum AuthLogError {
    #[error("authorization log {path}: {message}")]
    Open { path: String, message: String },
    #[error("authorization log: {0}")]
    Query(String),
}

impl From<rusqlite::Error> for AuthLogError {
    fn from(e: rusqlite::Error) -> Self {
        AuthLogError::Query(e.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Allowed,
    Denied,
    WouldDeny,
}

enum Msg {
    /// The pending pairs reached a batch: write them now.
    Write,
    Flush(oneshot::Sender<()>),
}

/// One (target, origin) pair as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pair {
    pub target_id: Option<u64>,
    pub target_path: Option<String>,
    pub origin_id: Option<u64>,
    pub origin_path: Option<String>,
    /// Unix milliseconds.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
}

impl Pair {
    /// Observed callers that kept (or would keep) working: allowed or only reported.
    pub fn legitimate(&self) -> bool {
        self.allowed > 0 || self.would_deny > 0
    }

    /// GitLab-like JSON (`origin_project`, counts, RFC 3339 times).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "origin_project": {
                "id": self.origin_id,
                "path_with_namespace": self.origin_path,
            },
            "origin_project_id": self.origin_id,
            "origin_project_path": self.origin_path,
            "target_project": {
                "id": self.target_id,
                "path_with_namespace": self.target_path,
            },
            "allowed": self.allowed,
            "denied": self.denied,
            "would_deny": self.would_deny,
            "first_seen_at": rfc3339(self.first_seen_ms),
            "last_seen_at": rfc3339(self.last_seen_ms),
            "last_authorized_at": rfc3339(self.last_seen_ms),
        })
    }

    /// Fold another row of the same origin (stored under the other name form) into this one.
    fn merge(&mut self, other: &Pair) {
        self.target_id = self.target_id.or(other.target_id);
        self.target_path = self.target_path.take().or(other.target_path.clone());
        self.origin_id = self.origin_id.or(other.origin_id);
        self.origin_path = self.origin_path.take().or(other.origin_path.clone());
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.would_deny += other.would_deny;
    }
}

pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How a project is keyed: by id when known (ids survive renames), else by path. Stored as
/// `id:<id>` or `path:<path>` (its `Display`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PairKey {
    Id(u64),
    Path(std::sync::Arc<str>),
}

impl PairKey {
    fn of(p: &ProjectIdentity) -> Option<PairKey> {
        match (p.id, &p.path) {
            (Some(id), _) => Some(PairKey::Id(id)),
            (None, Some(path)) => Some(PairKey::Path(path.clone())),
            (None, None) => None,
        }
    }
}

impl std::fmt::Display for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairKey::Id(id) => write!(f, "id:{id}"),
            PairKey::Path(path) => write!(f, "path:{path}"),
        }
    }
}

/// The log's handle: cheap to record to, shared by the handler, the APIs and the writer.
pub struct AuthLog {
    tx: Option<mpsc::Sender<Msg>>,
    /// Decisions aggregated per pair until the writer takes them: recording is a map update
    /// under a short lock, not a message and a wake-up per request.
    pending: Arc<Mutex<Pending>>,
    /// Distinct pairs pending at most (`authlog.queue`); a new pair beyond is dropped.
    max_pending: usize,
    db: Option<Arc<Mutex<Connection>>>,
    dropped: Counter,
    written: AtomicU64,
}

impl std::fmt::Debug for AuthLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLog")
            .field("enabled", &self.tx.is_some())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl AuthLog {
    /// A log that records nothing and reads as empty.
    pub fn disabled() -> AuthLog {
        AuthLog {
            tx: None,
            pending: Arc::default(),
            max_pending: 0,
            db: None,
            dropped: Counter::default(),
            written: AtomicU64::new(0),
        }
    }

    /// Open (or create) the log in `state_dir` and start its writer task.
    pub fn start(
        settings: &AuthLogSettings,
        state_dir: &Path,
        dropped: Counter,
    ) -> Result<(Arc<AuthLog>, Option<JoinHandle<()>>), AuthLogError> {
        if !settings.enabled {
            return Ok((Arc::new(AuthLog::disabled()), None));
        }
        let conn = open(state_dir, true)?;
        let db = Arc::new(Mutex::new(conn));
        let (tx, rx) = mpsc::channel(16);
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let log = Arc::new(AuthLog {
            tx: Some(tx),
            pending: Arc::clone(&pending),
            max_pending: settings.queue.max(1),
            db: Some(Arc::clone(&db)),
            dropped,
            written: AtomicU64::new(0),
        });
        let writer = tokio::spawn(writer(
            rx,
            pending,
            db,
            Arc::downgrade(&log),
            settings.flush_interval,
            settings.max_pairs.max(1),
        ));
        Ok((log, Some(writer)))
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Report one decision (`"allow"`, `"deny"` or `"would_deny"`). Never waits: when the
    /// queue is full the decision is dropped and counted.
    pub fn record(&self, origin: &ProjectIdentity, target: &ProjectIdentity, decision: &str) {
        let Some(tx) = &self.tx else { return };
        if origin.same_as(target) {
            return;
        }
        let kind = match decision {
            "allow" => Kind::Allowed,
            "would_deny" => Kind::WouldDeny,
            _ => Kind::Denied,
        };
        let (Some(tk), Some(ok)) = (PairKey::of(target), PairKey::of(origin)) else {
            return;
        };
        let at_ms = now_ms();
        let (added, batch_full) = {
            // A panic elsewhere while holding the lock leaves counters only: keep going.
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let added = pending.add((tk, ok), target, origin, kind, at_ms, self.max_pending);
            (added, pending.pairs.len() >= BATCH.min(self.max_pending))
        };
        if !added {
            self.dropped.inc();
        }
        if batch_full {
            // Best effort: a nudge already queued is as good.
            let _ = tx.try_send(Msg::Write);
        }
    }

    /// Decisions dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Decisions written to the database so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Wait until every decision recorded before this call is in the database.
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (ack, done) = oneshot::channel();
        if tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// The pairs whose target is this project (by id or by path), one per origin, most
    /// recently seen first.
    pub async fn for_target(
        &self,
        id: Option<u64>,
        path: Option<&str>,
    ) -> Result<Vec<Pair>, AuthLogError> {
        // Readers see every decision made before they asked, whatever the flush interval.
        self.flush().await;
        let Some(db) = &self.db else {
            return Ok(Vec::new());
        };
        let db = Arc::clone(db);
        let path = path.map(str::to_ascii_lowercase);
        tokio::task::spawn_blocking(move || {
            let conn = db
                .lock()
                .map_err(|_| AuthLogError::Query("database lock poisoned".into()))?;
            query_target(&conn, id, path.as_deref())
        })
        .await
        .map_err(|e| AuthLogError::Query(e.to_string()))?
    }

    /// Every pair, most recently seen first (ops, on the admin listener).
    pub async fn all(&self) -> Result<Vec<Pair>, AuthLogError> {
        self.flush().await;
        let Some(db) = &self.db else {
            return Ok(Vec::new());
        };
        let db = Arc::clone(db);
        tokio::task::spawn_blocking(move || {
            let conn = db
                .lock()
                .map_err(|_| AuthLogError::Query("database lock poisoned".into()))?;
            query_all(&conn)
        })
        .await
        .map_err(|e| AuthLogError::Query(e.to_string()))?
    }
}

/// Where the database file of a state directory is.
pub fn db_path(state_dir: &Path) -> Option<PathBuf> {
    (state_dir != Path::new(MEMORY)).then(|| state_dir.join(DB_FILE))
}

/// Open the log's database (creating the directory and schema when `create`).
pub fn open(state_dir: &Path, create: bool) -> Result<Connection, AuthLogError> {
    let shown = state_dir.display().to_string();
    let err = |message: String| AuthLogError::Open {
        path: shown.clone(),
        message,
    };
    let conn = match db_path(state_dir) {
        None => Connection::open_in_memory().map_err(|e| err(e.to_string()))?,
        Some(file) => {
            if create {
                std::fs::create_dir_all(state_dir)
                    .map_err(|e| err(format!("cannot create the state directory: {e}")))?;
            } else if !file.exists() {
                return Err(err(format!(
                    "no authorization log here ({} does not exist)",
                    file.display()
                )));
            }
            let conn = Connection::open(&file).map_err(|e| err(e.to_string()))?;
            conn.busy_timeout(Duration::from_secs(5))
                .map_err(|e| err(e.to_string()))?;
            // WAL: readers (the API, `scopegate suggest`) never block the writer.
            let _: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(|e| err(e.to_string()))?;
            conn.execute_batch("PRAGMA synchronous=NORMAL")
                .map_err(|e| err(e.to_string()))?;
            conn
        }
    };
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS authorizations (
            target_key  TEXT NOT NULL,
            origin_key  TEXT NOT NULL,
            target_id   INTEGER,
            target_path TEXT,
            origin_id   INTEGER,
            origin_path TEXT,
            first_seen  INTEGER NOT NULL,
            last_seen   INTEGER NOT NULL,
            allowed     INTEGER NOT NULL DEFAULT 0,
            denied      INTEGER NOT NULL DEFAULT 0,
            would_deny  INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (target_key, origin_key)
        );
        CREATE INDEX IF NOT EXISTS authorizations_last_seen ON authorizations(last_seen);
        CREATE INDEX IF NOT EXISTS authorizations_target_id ON authorizations(target_id);
        CREATE INDEX IF NOT EXISTS authorizations_target_path ON authorizations(target_path);",
    )
    .map_err(|e| err(e.to_string()))?;
    Ok(conn)
}

const COLUMNS: &str = "target_id, target_path, origin_id, origin_path, first_seen, last_seen, allowed, denied, would_deny";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pair> {
    let id = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Pair {
        target_id: id(r.get(0)?),
        target_path: r.get(1)?,
        origin_id: id(r.get(2)?),
        origin_path: r.get(3)?,
        first_seen_ms: r.get(4)?,
        last_seen_ms: r.get(5)?,
        allowed: count(r.get(6)?),
        denied: count(r.get(7)?),
        would_deny: count(r.get(8)?),
    })
}

/// Pairs of one target, merged per origin (a target or origin stored once by path and once by
/// id is one pair), most recently seen first.
pub fn query_target(
    conn: &Connection,
    id: Option<u64>,
    path: Option<&str>,
) -> Result<Vec<Pair>, AuthLogError> {
    let id = id.and_then(|i| i64::try_from(i).ok());
    let path = path.map(str::to_ascii_lowercase);
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM authorizations
         WHERE (?1 IS NOT NULL AND target_id = ?1) OR (?2 IS NOT NULL AND target_path = ?2)"
    ))?;
    let rows = stmt
        .query_map(params![id, path], row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(merge_by_origin(rows))
}

fn merge_by_origin(rows: Vec<Pair>) -> Vec<Pair> {
    let mut merged: Vec<Pair> = Vec::new();
    for r in rows {
        let same = merged.iter_mut().find(|m| {
            (m.origin_id.is_some() && m.origin_id == r.origin_id)
                || (m.origin_path.is_some() && m.origin_path == r.origin_path)
        });
        match same {
            Some(m) => m.merge(&r),
            None => merged.push(r),
        }
    }
    merged.sort_by(|a, b| {
        b.last_seen_ms
            .cmp(&a.last_seen_ms)
            .then(a.origin_id.cmp(&b.origin_id))
            .then(a.origin_path.cmp(&b.origin_path))
    });
    merged
}

pub fn query_all(conn: &Connection) -> Result<Vec<Pair>, AuthLogError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM authorizations ORDER BY last_seen DESC, target_key, origin_key"
    ))?;
    let rows = stmt.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Pending pairs by (target, origin); updated on every job-token request, so hashed with
/// foldhash rather than SipHash. Its seed is random per process and the map holds at most
/// `authlog.queue` pairs, so crafted target paths cannot make it degrade without bound.
type PairMap = HashMap<(PairKey, PairKey), Pair, foldhash::fast::RandomState>;

/// Aggregated, not yet written.
#[derive(Default)]
struct Pending {
    pairs: PairMap,
    events: u64,
}

impl Pending {
    /// Count one decision for the (target, origin) pair `key`. False when the pair is new and
    /// `max_pairs` are already pending: the decision is dropped.
    fn add(
        &mut self,
        key: (PairKey, PairKey),
        target: &ProjectIdentity,
        origin: &ProjectIdentity,
        kind: Kind,
        at_ms: i64,
        max_pairs: usize,
    ) -> bool {
        let full = self.pairs.len() >= max_pairs;
        let p = match self.pairs.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if full => return false,
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Pair {
                first_seen_ms: at_ms,
                last_seen_ms: at_ms,
                ..Pair::default()
            }),
        };
        self.events += 1;
        p.target_id = p.target_id.or(target.id);
        if p.target_path.is_none() {
            p.target_path = target.path.as_deref().map(str::to_owned);
        }
        p.origin_id = p.origin_id.or(origin.id);
        if p.origin_path.is_none() {
            p.origin_path = origin.path.as_deref().map(str::to_owned);
        }
        p.first_seen_ms = p.first_seen_ms.min(at_ms);
        p.last_seen_ms = p.last_seen_ms.max(at_ms);
        match kind {
            Kind::Allowed => p.allowed += 1,
            Kind::Denied => p.denied += 1,
            Kind::WouldDeny => p.would_deny += 1,
        }
        true
    }
}

async fn writer(
    mut rx: mpsc::Receiver<Msg>,
    pending: Arc<Mutex<Pending>>,
    db: Arc<Mutex<Connection>>,
    log: std::sync::Weak<AuthLog>,
    every: Duration,
    max_pairs: usize,
) {
    let take = || std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            _ = tick.tick() => {
                write(take(), &db, &log, max_pairs).await;
                continue;
            }
        };
        match msg {
            Some(Msg::Write) => write(take(), &db, &log, max_pairs).await,
            Some(Msg::Flush(ack)) => {
                write(take(), &db, &log, max_pairs).await;
                let _ = ack.send(());
            }
            None => {
                write(take(), &db, &log, max_pairs).await;
                return;
            }
        }
    }
}

/// Write a batch in one transaction, then trim the table to `max_pairs`. A failed batch is
/// logged and dropped (the log is best effort; requests never depend on it).
async fn write(
    pending: Pending,
    db: &Arc<Mutex<Connection>>,
    log: &std::sync::Weak<AuthLog>,
    max_pairs: usize,
) {
    if pending.pairs.is_empty() {
        return;
    }
    let events = pending.events;
    let db = Arc::clone(db);
    let result = tokio::task::spawn_blocking(move || -> Result<(), AuthLogError> {
        let mut conn = db
            .lock()
            .map_err(|_| AuthLogError::Query("database lock poisoned".into()))?;
        write_batch(&mut conn, pending.pairs, max_pairs)
    })
    .await
    .map_err(|e| AuthLogError::Query(e.to_string()))
    .and_then(|r| r);
    match result {
        Ok(()) => {
            if let Some(log) = log.upgrade() {
                log.written.fetch_add(events, Ordering::Relaxed);
            }
        }
        Err(e) => tracing::error!(error = %e, "authorization log: a batch could not be written"),
    }
}

fn write_batch(
    conn: &mut Connection,
    pairs: PairMap,
    max_pairs: usize,
) -> Result<(), AuthLogError> {
    let tx = conn.transaction()?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO authorizations (target_key, origin_key, target_id, target_path, origin_id,
                origin_path, first_seen, last_seen, allowed, denied, would_deny)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (target_key, origin_key) DO UPDATE SET
                target_id = coalesce(excluded.target_id, target_id),
                target_path = coalesce(excluded.target_path, target_path),
                origin_id = coalesce(excluded.origin_id, origin_id),
                origin_path = coalesce(excluded.origin_path, origin_path),
                first_seen = min(first_seen, excluded.first_seen),
                last_seen = max(last_seen, excluded.last_seen),
                allowed = allowed + excluded.allowed,
                denied = denied + excluded.denied,
                would_deny = would_deny + excluded.would_deny",
        )?;
        let int = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
        let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for ((tk, ok), p) in pairs {
            upsert.execute(params![
                tk.to_string(),
                ok.to_string(),
                int(p.target_id),
                p.target_path,
                int(p.origin_id),
                p.origin_path,
                p.first_seen_ms,
                p.last_seen_ms,
                count(p.allowed),
                count(p.denied),
                count(p.would_deny),
            ])?;
        }
    }
    let total: i64 = tx.query_row("SELECT count(*) FROM authorizations", [], |r| r.get(0))?;
    let cap = i64::try_from(max_pairs).unwrap_or(i64::MAX);
    if total > cap {
        tx.execute(
            "DELETE FROM authorizations WHERE rowid IN
                (SELECT rowid FROM authorizations ORDER BY last_seen ASC LIMIT ?1)",
            params![total - cap],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Number of pairs stored (tests, ops).
pub fn count(conn: &Connection) -> Result<u64, AuthLogError> {
    let n: Option<i64> = conn
        .query_row("SELECT count(*) FROM authorizations", [], |r| r.get(0))
        .optional()?;
    Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn who(id: u64, path: &str) -> ProjectIdentity {
        ProjectIdentity {
            id: Some(id),
            path: Some(path.into()),
        }
    }

    fn settings() -> AuthLogSettings {
        AuthLogSettings {
            flush_interval: Duration::from_millis(20),
            ..AuthLogSettings::default()
        }
    }

    #[tokio::test]
    async fn counts_per_pair_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, writer) =
                AuthLog::start(&settings(), dir.path(), Counter::default()).unwrap();
            let app = who(12, "acme/app");
            for _ in 0..3 {
                log.record(&who(10, "acme/bot"), &app, "allow");
            }
            log.record(&who(30, "globex/tool"), &app, "deny");
            log.record(&who(30, "globex/tool"), &app, "would_deny");
            log.record(&app, &app, "allow"); // itself: not logged
            log.flush().await;
            let pairs = log.for_target(Some(12), None).await.unwrap();
            assert_eq!(pairs.len(), 2);
            let bot = pairs.iter().find(|p| p.origin_id == Some(10)).unwrap();
            assert_eq!((bot.allowed, bot.denied, bot.would_deny), (3, 0, 0));
            let globex = pairs.iter().find(|p| p.origin_id == Some(30)).unwrap();
            assert_eq!(
                (globex.allowed, globex.denied, globex.would_deny),
                (0, 1, 1)
            );
            assert!(globex.legitimate());
            drop(log);
            writer.unwrap().await.unwrap();
        }
        let conn = open(dir.path(), false).unwrap();
        let pairs = query_target(&conn, None, Some("ACME/app")).unwrap();
        assert_eq!(pairs.len(), 2);
    }

    #[tokio::test]
    async fn rows_of_one_origin_under_both_name_forms_merge() {
        let (log, _w) = AuthLog::start(&settings(), Path::new(MEMORY), Counter::default()).unwrap();
        let by_path = ProjectIdentity {
            id: None,
            path: Some("acme/app".into()),
        };
        log.record(&who(10, "acme/bot"), &by_path, "allow");
        log.record(&who(10, "acme/bot"), &who(12, "acme/app"), "allow");
        log.flush().await;
        let pairs = log.for_target(Some(12), Some("acme/app")).await.unwrap();
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].allowed, 2);
        assert_eq!(log.all().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn the_table_is_bounded_by_last_seen() {
        let s = AuthLogSettings {
            max_pairs: 5,
            ..settings()
        };
        let (log, _w) = AuthLog::start(&s, Path::new(MEMORY), Counter::default()).unwrap();
        for i in 0..12u64 {
            log.record(&who(100 + i, &format!("o/p{i}")), &who(1, "t/t"), "allow");
            log.flush().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let pairs = log.all().await.unwrap();
        assert_eq!(pairs.len(), 5);
        // The newest survive.
        assert!(
            pairs.iter().all(|p| p.origin_id.unwrap() >= 107),
            "{pairs:?}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let s = AuthLogSettings {
            queue: 1,
            flush_interval: Duration::from_secs(3600),
            ..AuthLogSettings::default()
        };
        let (log, _w) = AuthLog::start(&s, Path::new(MEMORY), Counter::default()).unwrap();
        // A current-thread runtime: the writer cannot run while this loop does.
        for i in 0..100u64 {
            log.record(&who(100 + i, "o/p"), &who(1, "t/t"), "allow");
        }
        assert!(log.dropped() >= 98, "{}", log.dropped());
        log.flush().await;
    }

    #[tokio::test]
    async fn readers_see_decisions_before_the_flush_interval() {
        let s = AuthLogSettings {
            flush_interval: Duration::from_secs(3600),
            ..AuthLogSettings::default()
        };
        let (log, _w) = AuthLog::start(&s, Path::new(MEMORY), Counter::default()).unwrap();
        log.record(&who(7, "o/p"), &who(1, "t/t"), "deny");
        let pairs = log.for_target(Some(1), None).await.unwrap();
        assert_eq!(pairs.len(), 1, "{pairs:?}");
        assert_eq!(pairs[0].denied, 1);
        assert_eq!(log.all().await.unwrap().len(), 1);
    }

    #[test]
    fn disabled_log_records_nothing() {
        let log = AuthLog::disabled();
        log.record(&who(1, "a/b"), &who(2, "c/d"), "allow");
        assert_eq!(log.dropped(), 0);
        assert!(!log.enabled());
    }
}
