//! The store: one SQLite file in WAL mode, owned by one thread.
//!
//! Architecture invariant: only the owner thread touches the connection. Others hold a cheap
//! `Store` handle and send it jobs; pass records that arrive together are decided and committed
//! in one transaction (group commit), so one fsync serves every lane that swiped meanwhile.

mod db;
mod files;
mod salvage;
mod schema;

pub use db::{
    Applied, Behind, CLEAR_PASSBACK, CLEAR_PASSBACK_ALL, Db, FirstSeen, GateId, Generations,
    LIST_STEP, MailboxPos, OfflineCounts, Outage, OutboxRow, OutboxStats, PassInput, PassOutcome,
    SnapshotStep, Stamp, Stream, build_time,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::core::Policy;
use crate::sync::contract::{ListName, Refusal, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: cannot open {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("store: sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Invalid(String),
    #[error("store: {what} {path}: {source}")]
    File {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "store: {path} is in use by {holder} (it holds {lock}): stop it first, or give this \
         gate a store.path of its own"
    )]
    InUse {
        path: String,
        holder: String,
        lock: String,
    },
    #[error(
        "store: {path} was made for site `{made_site}` gate `{made_gate}`, and this config is \
         site `{site}` gate `{gate}`: a store belongs to one gate. Give this gate a store.path \
         of its own, or run the config of the gate the store was made for"
    )]
    OtherGate {
        path: String,
        made_site: String,
        made_gate: String,
        site: String,
        gate: String,
    },
    /// A database file of no bytes where a store was: gated writes a new database under
    /// another name and renames it into place, so it never leaves one. Started as a new gate,
    /// it would number events from 1 again and forget the mode.
    #[error(
        "store: {path} is empty (0 bytes): it is not a store gated made, and starting on it \
         would make a new gate (event seq back to 1, the mode reset). If the store was lost, \
         remove the empty file to start this gate anew; if it was truncated, restore it"
    )]
    Empty { path: String },
    /// `PRAGMA quick_check` found damage that a salvage cannot get past (the seq counters or
    /// the gate's state cannot be read). Nothing in the file is changed.
    #[error(
        "store: {path} is damaged and cannot be salvaged ({detail}). It was left as it is; \
         gated does not start on it, nor as a new gate. Copy it aside with its -wal (its \
         outbox holds the events not yet sent) and restore the store from a backup; or, to \
         start this gate anew, remove it: event seq then starts at 1 again (tell the centre), \
         and the lists come back from the centre's retained snapshots"
    )]
    Corrupt { path: String, detail: String },
    #[error("store: the owner thread has stopped")]
    Stopped,
}

impl StoreError {
    /// SQLite found the database damaged (SQLITE_CORRUPT) or not a database (SQLITE_NOTADB).
    pub fn is_corrupt(&self) -> bool {
        match self {
            Self::Sqlite(e) | Self::Open { source: e, .. } => db::is_corrupt(e),
            Self::Corrupt { .. } => true,
            _ => false,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A job on the database; returns what SQLite said if it found the database damaged.
type RunJob = Box<dyn FnOnce(&mut Db) -> Option<String> + Send>;

enum Job {
    Pass(PassInput, Reply<PassOutcome>),
    Run(RunJob),
}

/// How many pass records at most share one transaction.
const MAX_GROUP: usize = 64;
/// Jobs waiting for the owner thread; a full queue makes callers wait (back-pressure).
const QUEUE: usize = 1024;

/// A handle to the store's owner thread. Clone it freely.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::SyncSender<Job>,
    /// Passes sent and not yet taken up by the owner thread: a list step that sees one ends
    /// early, so that list updates never hold up a lane.
    waiting: Arc<AtomicUsize>,
    /// Who the owner thread tells when writes begin to fail and when they succeed again.
    on_write: OnWrite,
}

impl Store {
    /// Takes the store's lock, opens (creating private and migrating) the database, and starts
    /// its owner thread. Refuses a store that another gated holds or that was made for another
    /// gate; warns about files that others can read.
    pub fn open(
        path: &Path,
        gate: GateId,
        policy: Policy,
        quota: u64,
    ) -> Result<Store, StoreError> {
        files::create_dirs(path)?;
        // Before the database is created or migrated: a second gated changes nothing.
        let lock = files::lock(path)?;
        if let Some(aside) = files::read_marker(path)? {
            // A salvage was cut short after the damaged store's log was removed: the file at
            // `path` must not be opened without it.
            salvage::resume(path, &gate, &aside, crate::clock::now_ms())?;
        } else if path.exists() {
            files::refuse_empty(path)?;
            // Found damaged: copied aside and salvaged into a new store, or refused (when
            // its seq counters or its gate cannot be read).
            if let Some(damage) = db::damage(path)? {
                salvage::salvage(path, &gate, &damage, crate::clock::now_ms())?;
            }
        } else {
            // A new database is made whole under another name and renamed into place, so that
            // an empty file at `path` is never gated's own and can be refused.
            let new = files::new_path(path);
            files::remove_new(&new)?;
            files::create_db(&new)?;
            Db::open(&new, gate.clone(), policy.clone(), quota)?.close()?;
            files::put_in_place(&new, path)?;
        }
        let mut db = Db::open(path, gate, policy, quota)?;
        db.checkpoint_elsewhere()?;
        let checkpoints = Checkpointer::open(path)?;
        let db_path = path.to_path_buf();
        for (file, mode) in files::too_wide(path) {
            tracing::warn!(
                "store: {} has mode {mode:04o}: it holds names, card ids and face thumbnails, \
                 and others on this machine can read it; `chmod 600` it",
                file.display()
            );
        }
        let (stopped, stop) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("gated-checkpoint".into())
            // The checkpoint thread ends last (after the owner's last job, with a last
            // checkpoint): the lock goes with it.
            .spawn(move || {
                checkpoints.run(&stop);
                drop(lock);
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start the checkpoint thread: {e}")))?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let waiting = Arc::new(AtomicUsize::new(0));
        let taken = waiting.clone();
        let on_write = OnWrite::default();
        let owner_state = Owner {
            db,
            path: db_path,
            health: WriteHealth::new(Instant::now()),
            on_write: on_write.clone(),
        };
        std::thread::Builder::new()
            .name("gated-store".into())
            .spawn(move || {
                owner(owner_state, rx, &taken);
                drop(stopped); // the checkpoint thread makes a last checkpoint and ends
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start the store thread: {e}")))?;
        Ok(Store {
            tx,
            waiting,
            on_write,
        })
    }

    /// Has `f` called (on the owner thread: it must not block) when writes begin to fail and
    /// when they succeed again. One receiver per store; a second call is ignored. `f` must not
    /// hold a `Store`: the owner thread ends when the last one is dropped, and it keeps `f`.
    pub fn on_write_health(&self, f: impl Fn(WriteEvent) + Send + Sync + 'static) {
        if self.on_write.set(Box::new(f)).is_err() {
            tracing::warn!("store: a second write-health receiver was ignored");
        }
    }

    /// Whether another gated holds the store at `path` (its lock). `false` also when the lock
    /// cannot be tried (a read-only file system, say): that is no running gate.
    pub fn held_by_another(path: &Path) -> bool {
        matches!(files::lock(path), Err(StoreError::InUse { .. }))
    }

    /// What `open` would refuse, found without changing the store (for `gated check-config`):
    /// a place where the store cannot be made, a database from a newer gated, or one made for
    /// another gate. Nothing is created where there is no store yet; beside a stopped one,
    /// SQLite may leave an empty `-wal` and `-shm` (with the database's mode and owner). Whether another gated holds the store is not checked:
    /// that is the state of the machine, not of the config, and a config is checked while
    /// its gate runs.
    pub fn check(path: &Path, gate: &GateId) -> Result<(), StoreError> {
        if files::read_marker(path)?.is_some() {
            // An interrupted salvage, which `open` finishes from its copy aside.
            Ok(())
        } else if path.exists() {
            files::refuse_empty(path)?;
            match db::damage(path)? {
                Some(damage) => salvage::check(path, gate, &damage),
                None => Db::check(path, gate),
            }
        } else {
            files::check_place(path)
        }
    }

    /// Decides and records one pass. When this returns `Recorded`, the event is committed
    /// and the relay may be commanded (G1).
    pub async fn pass(&self, input: PassInput) -> Result<PassOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.send(Job::Pass(input, reply)).await {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Runs `f` on the owner thread.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Run(Box::new(move |db| {
            let r = f(db);
            let corrupt = match &r {
                Err(e) if e.is_corrupt() => Some(e.to_string()),
                _ => None,
            };
            let _ = reply.send(r);
            corrupt
        })))
        .await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Replaces a list without holding up decisions: the new list is written as a new
    /// generation in steps of at most `LIST_STEP`, each its own job, and a step ends early
    /// when a pass is waiting. One short transaction then brings it into force: the list is
    /// applied. The generation it replaced stays until `drop_replaced`, which the downlink
    /// calls after the ack. The downlink applies one update at a time; a second concurrent
    /// apply of the same list would fail at the switch.
    pub async fn apply_snapshot(
        &self,
        s: Snapshot,
    ) -> Result<Result<Applied, Refusal>, StoreError> {
        let s = Arc::new(s);
        let (list, version) = (s.list, s.version);
        let generation = match self
            .call(move |db| db.snapshot_begin(list, version))
            .await?
        {
            Err(r) => return Ok(Err(r)),
            Ok(SnapshotStep::AlreadyInForce { version }) => {
                return Ok(Ok(Applied::AlreadyInForce { version }));
            }
            Ok(SnapshotStep::Write { generation }) => generation,
        };
        // What an interrupted apply left must go first: the new generation is written without
        // replacing anything. If it cannot be dropped, this apply stops here.
        self.drop_generations(list, Generations::Unfinished).await?;
        let mut start = 0;
        while start < s.entries.len() {
            let (chunk, stop) = (s.clone(), self.step_limit());
            let written = self
                .call(move |db| db.snapshot_write(list, generation, &chunk.entries, start, &stop()))
                .await?;
            match written {
                Ok(next) => start = next,
                Err(r) => {
                    if let Err(e) = self.drop_generations(list, Generations::Unfinished).await {
                        // The next apply drops it first, or stops.
                        tracing::warn!(list = list.as_str(), error = %e, "could not drop a refused list's rows");
                    }
                    return Ok(Err(r));
                }
            }
        }
        let s2 = s.clone();
        self.call(move |db| db.snapshot_commit(list, version, generation, s2.issued_at.as_deref()))
            .await
    }

    /// Deletes the generations that snapshots replaced, of every list, in steps between
    /// passes. Also finishes a cleanup that a restart interrupted.
    pub async fn drop_replaced(&self) {
        for list in ListName::ALL {
            if let Err(e) = self.drop_generations(list, Generations::Stale).await {
                // The list in force is not affected; the next list message tries again.
                tracing::warn!(list = list.as_str(), error = %e, "list cleanup failed; it is retried after the next list message");
            }
        }
    }

    /// Deletes the given generations in steps.
    async fn drop_generations(&self, list: ListName, which: Generations) -> Result<(), StoreError> {
        loop {
            let deleted = self
                .call({
                    let stop = self.step_limit();
                    move |db| db.drop_generations(list, which, &stop())
                })
                .await?;
            if deleted == 0 {
                return Ok(());
            }
        }
    }

    /// When a list step should end: after `LIST_STEP`, or at once when a pass is waiting.
    /// The clock starts when the step starts on the owner thread, not when it is queued.
    fn step_limit(&self) -> impl Fn() -> Box<dyn Fn() -> bool> + Send + 'static {
        let waiting = self.waiting.clone();
        move || {
            let (began, waiting) = (Instant::now(), waiting.clone());
            Box::new(move || waiting.load(Ordering::SeqCst) > 0 || began.elapsed() >= LIST_STEP)
        }
    }

    async fn send(&self, job: Job) -> Result<(), StoreError> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(StoreError::Stopped),
            Err(mpsc::TrySendError::Full(job)) => {
                // Rare: wait for room off the async worker threads.
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(job).map_err(|_| StoreError::Stopped))
                    .await
                    .map_err(|_| StoreError::Stopped)?
            }
        }
    }
}

/// How often the checkpoint thread copies the log back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The log length (in 4 KiB frames) past which the checkpoint thread makes it start over.
const RESTART_AT: i64 = 1000;

/// Copies committed pages from the WAL back into the database file, on a connection and a
/// thread of its own, every 50 ms. Left to SQLite, the commit that took the log past 1000
/// pages copied them all and synced the database, and that commit could be a pass: a lane
/// waited for it. Small and often, because the disk is shared: a checkpoint's fsync holds up
/// the passes' fsyncs meanwhile, and a short one holds them up less. Four variants were
/// measured with `bench/run phase apply` and `phase swipes`; see bench/analysis.md.
struct Checkpointer {
    conn: rusqlite::Connection,
    path: PathBuf,
}

impl Checkpointer {
    fn open(path: &Path) -> Result<Checkpointer, StoreError> {
        // Never creates one: a store gone missing (a mount gone) stays missing, and is seen.
        let flags = rusqlite::OpenFlags::default() - rusqlite::OpenFlags::SQLITE_OPEN_CREATE;
        let mut conn =
            rusqlite::Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: e,
            })?;
        // The log is synced before pages are copied and the database after: nothing a pass
        // committed can be lost when the log later starts over.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // A RESTART waits for the owner's transaction in progress.
        db::wait_when_busy(&mut conn)?;
        Ok(Checkpointer {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// A PASSIVE checkpoint, which takes no lock the owner thread waits for. The log starts
    /// over only when a write begins with all of it copied back, which under steady writes (a
    /// backlog draining) never happens by itself: once the log is past `RESTART_AT` frames, a
    /// RESTART checkpoint follows. It holds writers back while it copies the frames written
    /// since the PASSIVE one and syncs, and while a reader of an older snapshot finishes. The
    /// daemon has no such reader; an outside one (the sqlite3 shell, a backup) can hold passes
    /// up for as long as it reads, up to the 5 s busy limit.
    fn checkpoint(&self) -> rusqlite::Result<()> {
        let frames: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
        if frames >= RESTART_AT {
            self.conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
        }
        Ok(())
    }

    /// Checkpoints every `CHECKPOINT_EVERY` until `stop`'s sender is dropped, then once more.
    fn run(mut self, stop: &mpsc::Receiver<()>) {
        let mut failures = 0u64;
        // After an error a new connection may cure: when to open one, and the delay after.
        let mut reconnect: Option<(Instant, Duration)> = None;
        loop {
            let last = !matches!(
                stop.recv_timeout(CHECKPOINT_EVERY),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            match self.checkpoint() {
                Ok(()) => {
                    failures = 0;
                    reconnect = None;
                }
                Err(e) => {
                    let e = StoreError::Sqlite(e);
                    if needs_reconnect(&e) {
                        let now = Instant::now();
                        match reconnect {
                            None => reconnect = Some((now + RETRY_FIRST, RETRY_FIRST)),
                            Some((at, delay)) if now >= at => {
                                // Like the owner's: the connection may stay read-only.
                                match Checkpointer::open(&self.path) {
                                    Ok(c) => self.conn = c.conn,
                                    Err(e) => {
                                        tracing::debug!(error = %e, "store: the checkpoint connection could not be opened again")
                                    }
                                }
                                let delay = (delay * 2).min(RETRY_MAX);
                                reconnect = Some((now + delay, delay));
                            }
                            Some(_) => {}
                        }
                    }
                    // Logged once, then once a minute while it lasts, not 20 times a second.
                    if failures.is_multiple_of(1200) {
                        tracing::warn!(error = %e, failures = failures + 1, "store: WAL checkpoint failed; the log grows until one succeeds");
                    }
                    failures += 1;
                }
            }
            if last {
                return;
            }
        }
    }
}

/// How long writes may keep failing before the process ends (exit code `GIVE_UP_EXIT`), so
/// that systemd starts it again: the bound for a store that the owner thread's own retries
/// (a new connection, with backoff) do not bring back.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// EX_TEMPFAIL: the store could not write; a restart may do better.
const GIVE_UP_EXIT: i32 = 75;
/// EX_TEMPFAIL too: the store was found damaged while running; the next start salvages it.
pub const CORRUPT_EXIT: i32 = 75;
/// While writes fail, one log line per this long (a full disk gave 66 a second).
const LOG_EVERY: Duration = Duration::from_secs(10);
/// An idle store (no pass recorded and no probe written for this long) is written once, so
/// that a disk that fails while nobody swipes is seen before the next swipe. The cost: one
/// small commit (a 4 KiB page in the log, synced, then copied back by a checkpoint) per 30 s
/// of idleness, about 8 KiB at the file level, 24 MiB a day on an idle SD card; none while
/// passes are recorded.
const PROBE_EVERY: Duration = Duration::from_secs(30);
/// While writes fail, the owner thread tries again (and, after a read-only, I/O or
/// cannot-open error, on a new connection) after 1 s, then 2, 4 and 8 s, then every 8 s.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(8);

/// What the store's owner thread tells the gate about its writes, once per change.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteEvent {
    /// Writes began to fail: what failed and why.
    Failing { detail: String },
    /// Writes succeed again; the `store_recovered` alarm saying so is in the outbox.
    Recovered { detail: String },
    /// SQLite found the database damaged: what it said. Told on a thread of its own, which
    /// may block (to see the alarm leave); the process ends when the receiver returns
    /// (`CORRUPT_EXIT`), and meanwhile the owner thread runs nothing on the database.
    Corrupt { detail: String },
}

type OnWrite = Arc<OnceLock<Box<dyn Fn(WriteEvent) + Send + Sync>>>;

/// What to do about a failed write.
#[derive(Debug, PartialEq)]
enum Failing {
    /// Log it (the first, then one per `LOG_EVERY`, with the count since the last line).
    Log {
        failures: u64,
    },
    Quiet,
    /// Failing for longer than `GIVE_UP_AFTER`: end the process.
    GiveUp,
}

/// The owner thread's record of its writes: since when they fail, what was logged, and when
/// to try again or probe.
struct WriteHealth {
    since: Option<Instant>,
    logged: Option<Instant>,
    unlogged: u64,
    /// Passes refused since writes began to fail.
    passes: u64,
    /// The last write that succeeded (or the start): an idle store is probed after it.
    last_ok: Instant,
    /// While failing: when to try again, and the delay that led there.
    retry_at: Option<Instant>,
    delay: Duration,
    /// The last failure was of the kind a new connection may cure.
    reconnect: bool,
}

impl WriteHealth {
    fn new(now: Instant) -> Self {
        Self {
            since: None,
            logged: None,
            unlogged: 0,
            passes: 0,
            last_ok: now,
            retry_at: None,
            delay: RETRY_FIRST,
            reconnect: false,
        }
    }

    fn failing(&self) -> bool {
        self.since.is_some()
    }

    /// A write failed (`reconnect`: of a kind a new connection may cure). The first failure
    /// of a scheduled try moves the next try further (1 s doubling to 8 s).
    fn failed(&mut self, now: Instant, reconnect: bool) -> Failing {
        let since = *self.since.get_or_insert(now);
        self.unlogged += 1;
        self.reconnect = reconnect;
        match self.retry_at {
            None => {
                self.delay = RETRY_FIRST;
                self.retry_at = Some(now + self.delay);
            }
            Some(at) if now >= at => {
                self.delay = (self.delay * 2).min(RETRY_MAX);
                self.retry_at = Some(now + self.delay);
            }
            Some(_) => {}
        }
        if now.duration_since(since) >= GIVE_UP_AFTER {
            return Failing::GiveUp;
        }
        if self
            .logged
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            self.logged = Some(now);
            let failures = std::mem::take(&mut self.unlogged);
            return Failing::Log { failures };
        }
        Failing::Quiet
    }

    /// A write succeeded: how long writes had failed and how many passes were refused, if
    /// they had failed.
    fn succeeded(&mut self, now: Instant) -> Option<(Duration, u64)> {
        self.last_ok = now;
        let since = self.since.take()?;
        let passes = std::mem::take(&mut self.passes);
        *self = Self::new(now);
        Some((now.duration_since(since), passes))
    }

    /// How long the owner thread may wait for a job before it must try a write of its own:
    /// the next try while failing, the next probe otherwise.
    fn wait(&self, now: Instant) -> Duration {
        let at = match self.retry_at {
            Some(at) if self.failing() => at,
            _ => self.last_ok + PROBE_EVERY,
        };
        at.saturating_duration_since(now)
    }

    /// A probe succeeded while passes fail: the connection writes, so no new one is needed;
    /// the next try comes after the backoff as after a failure.
    fn probe_held(&mut self, now: Instant) {
        self.reconnect = false;
        self.delay = (self.delay * 2).min(RETRY_MAX);
        self.retry_at = Some(now + self.delay);
    }

    /// Whether to open a new connection before the next write.
    fn reconnect_due(&self, now: Instant) -> bool {
        self.reconnect && self.failing() && self.retry_at.is_some_and(|at| now >= at)
    }
}

/// Errors after which the connection may stay unable to write even once the disk can again:
/// read-only (SQLite opens a database read-only without a word when it cannot write it),
/// I/O errors, and files it cannot open.
fn needs_reconnect(e: &StoreError) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, ReadOnly, SystemIoFailure};
    let source = match e {
        StoreError::Sqlite(s) | StoreError::Open { source: s, .. } => s,
        _ => return false,
    };
    matches!(
        source.sqlite_error_code(),
        Some(ReadOnly | SystemIoFailure | CannotOpen)
    )
}

/// The owner thread's state: the one connection and what it knows of its writes.
struct Owner {
    db: Db,
    path: PathBuf,
    health: WriteHealth,
    on_write: OnWrite,
}

impl Owner {
    fn tell(&self, e: WriteEvent) {
        if let Some(f) = self.on_write.get() {
            f(e);
        }
    }

    /// Before a write while failing: a new connection, when one may help and its time came.
    /// `false` when it could not be opened (counted as a failed write).
    fn reconnect_if_due(&mut self) -> bool {
        let now = Instant::now();
        if !self.health.reconnect_due(now) {
            return true;
        }
        match self.db.reconnect(&self.path) {
            Ok(()) => {
                tracing::info!("store: opened a new connection to the store after write errors");
                true
            }
            Err(e) => {
                self.failed(&e, "a new connection to the store could not be opened");
                false
            }
        }
    }

    /// A write failed: logged (rate-limited), told once per episode, and the process ends
    /// past `GIVE_UP_AFTER`.
    fn failed(&mut self, e: &StoreError, what: &str) {
        let first = !self.health.failing();
        match self.health.failed(Instant::now(), needs_reconnect(e)) {
            Failing::Log { failures } => {
                tracing::error!(error = %e, failures, "store: {what} (logged at most once per 10 s)");
            }
            Failing::Quiet => {}
            Failing::GiveUp => {
                tracing::error!(error = %e, "store: writes have failed for 60 s; gated exits so that systemd starts it again on a fresh connection");
                std::process::exit(GIVE_UP_EXIT);
            }
        }
        if first {
            let detail = format!(
                "{what} ({e}); no credential is decided or released until the store can \
                 write (free exits and overrides aside). gated retries by itself and exits \
                 after {} s of failures so that it is restarted. Check the disk holding the \
                 store (full, read-only, damaged)",
                GIVE_UP_AFTER.as_secs()
            );
            self.tell(WriteEvent::Failing { detail });
        }
    }

    /// A write succeeded. After failures: the `store_recovered` alarm is recorded (a write
    /// too: if it fails, the store is failing still) and the gate told.
    fn wrote(&mut self) {
        let now = Instant::now();
        if !self.health.failing() {
            self.health.last_ok = now;
            return;
        }
        let since = self.health.since.map_or(Duration::ZERO, |s| now - s);
        let detail = format!(
            "the store writes again after {} ms of failures; {} pass(es) could not be recorded \
             meanwhile (their swipes stayed in the readers and are recorded now, refused \
             stale_swipe when older than policy.max_swipe_age)",
            since.as_millis(),
            self.health.passes
        );
        match self
            .db
            .record_alarm("store_recovered", "store", &detail, crate::clock::now_ms())
        {
            Ok(_) => {
                self.health.succeeded(now);
                tracing::warn!("store: {detail}");
                self.tell(WriteEvent::Recovered { detail });
            }
            Err(e) => self.failed(&e, "the store_recovered alarm could not be recorded"),
        }
    }

    /// No job came for a while: a try while failing, a probe of the idle store otherwise.
    /// `Some`: SQLite found the database damaged, and what it said.
    fn probe(&mut self) -> Option<String> {
        if !self.reconnect_if_due() {
            return None;
        }
        match self.db.probe(crate::clock::now_ms()) {
            // A probe rewrites one row in place; a pass needs room for new rows, and a full
            // disk gives the one and refuses the other: after passes failed, only a pass
            // recorded ends the episode (the readers try their waiting swipe at each poll).
            Ok(()) if self.health.passes > 0 => self.health.probe_held(Instant::now()),
            Ok(()) => self.wrote(),
            Err(e) if e.is_corrupt() => return Some(e.to_string()),
            Err(e) => self.failed(&e, "the store could not write (a write probe failed)"),
        }
        None
    }

    fn passes(&mut self, inputs: &[PassInput]) -> Result<Vec<PassOutcome>, StoreError> {
        if !self.reconnect_if_due() {
            self.health.passes += inputs.len() as u64;
            return Err(StoreError::Invalid(
                "the store cannot write (no connection could be opened)".into(),
            ));
        }
        match self.db.record_passes(inputs) {
            Ok(o) => Ok(o),
            Err(e) => {
                self.health.passes += inputs.len() as u64;
                let at = match inputs.first().map(|i| (&i.from, i.lane)) {
                    Some((Some(from), _)) => format!("at {}", from.reader),
                    Some((None, lane)) => format!("on lane {lane}"),
                    None => String::new(),
                };
                self.failed(&e, &format!("the store could not record a pass {at}"));
                Err(e)
            }
        }
    }
}

/// The database was found damaged while running. On a thread of its own, the gate is told
/// (`WriteEvent::Corrupt`: it alarms the centre) and then the process ends (not in unit
/// tests), so that the next start salvages the store (`salvage.rs`). Meanwhile no job runs on
/// the damaged database: passes are held unanswered (nobody is released, and no lane raises
/// its own alarm over it), every other job is dropped, so that its caller (the status, the
/// uplink) hears the store has stopped instead of waiting for it.
fn corrupted(
    detail: &str,
    on_write: &OnWrite,
    held: Vec<Reply<PassOutcome>>,
    rx: &mpsc::Receiver<Job>,
) {
    tracing::error!(
        error = detail,
        "store: the database is damaged; gated takes no other decision and exits (code \
         {CORRUPT_EXIT}) so that its next start copies it aside and salvages it"
    );
    let (on_write, detail) = (on_write.clone(), detail.to_string());
    let ending = std::thread::Builder::new()
        .name("gated-store-corrupt".into())
        .spawn(move || {
            if let Some(f) = on_write.get() {
                f(WriteEvent::Corrupt { detail });
            }
            #[cfg(not(test))]
            std::process::exit(CORRUPT_EXIT);
        });
    if let Err(e) = ending {
        tracing::error!(error = %e, "store: cannot start the thread that alarms; exiting now");
        #[cfg(not(test))]
        std::process::exit(CORRUPT_EXIT);
    }
    let mut held = held;
    while let Ok(job) = rx.recv() {
        match job {
            Job::Pass(_, reply) => held.push(reply),
            Job::Run(_) => {}
        }
    }
}

fn owner(mut o: Owner, rx: mpsc::Receiver<Job>, waiting: &AtomicUsize) {
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv_timeout(o.health.wait(Instant::now())) {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(detail) = o.probe() {
                        return corrupted(&detail, &o.on_write, Vec::new(), &rx);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return, // every handle dropped
            },
        };
        match job {
            Job::Run(f) => {
                if let Some(detail) = f(&mut o.db) {
                    return corrupted(&detail, &o.on_write, Vec::new(), &rx);
                }
            }
            Job::Pass(first, reply) => {
                waiting.fetch_sub(1, Ordering::SeqCst);
                let mut inputs = vec![first];
                let mut replies = vec![reply];
                while inputs.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Job::Pass(i, r)) => {
                            waiting.fetch_sub(1, Ordering::SeqCst);
                            inputs.push(i);
                            replies.push(r);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                match o.passes(&inputs) {
                    Ok(outcomes) => {
                        for (r, out) in replies.into_iter().zip(outcomes) {
                            let _ = r.send(Ok(out));
                        }
                        // After the replies: the lanes open before the recovery is recorded.
                        o.wrote();
                    }
                    Err(e) if e.is_corrupt() => {
                        return corrupted(&e.to_string(), &o.on_write, replies, &rx);
                    }
                    Err(e) => {
                        // Each caller gets the error's text (`Invalid` adds the layer's name).
                        let msg = e.to_string();
                        let msg = msg.strip_prefix("store: ").unwrap_or(&msg).to_string();
                        for r in replies {
                            let _ = r.send(Err(StoreError::Invalid(msg.clone())));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
