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

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

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

/// What the daemon does when the store is found damaged while it runs (`Store::on_corrupt`):
/// alarm the centre past the outbox, which is in the damaged file. Called once, on a thread of
/// its own; the process ends when it returns (`CORRUPT_EXIT`), and meanwhile the owner thread
/// runs nothing on the database (`corrupted`).
type CorruptHook = Box<dyn Fn(&str) + Send + Sync>;

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
    on_corrupt: Arc<std::sync::OnceLock<CorruptHook>>,
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
        if path.exists() {
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
        let on_corrupt = Arc::new(std::sync::OnceLock::new());
        let hook = on_corrupt.clone();
        std::thread::Builder::new()
            .name("gated-store".into())
            .spawn(move || {
                owner(db, rx, &taken, &hook);
                drop(stopped); // the checkpoint thread makes a last checkpoint and ends
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start the store thread: {e}")))?;
        Ok(Store {
            tx,
            waiting,
            on_corrupt,
        })
    }

    /// Sets what is done when SQLite reports the database damaged during operation, before
    /// the process ends (once; a second call is ignored). Without it nothing is alarmed.
    pub fn on_corrupt(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.on_corrupt.set(Box::new(hook));
    }

    /// What `open` would refuse, found without changing the store (for `gated check-config`):
    /// a place where the store cannot be made, a database from a newer gated, or one made for
    /// another gate. Nothing is created where there is no store yet; beside a stopped one,
    /// SQLite may leave an empty `-wal` and `-shm` (with the database's mode and owner). Whether another gated holds the store is not checked:
    /// that is the state of the machine, not of the config, and a config is checked while
    /// its gate runs.
    pub fn check(path: &Path, gate: &GateId) -> Result<(), StoreError> {
        if path.exists() {
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
}

impl Checkpointer {
    fn open(path: &Path) -> Result<Checkpointer, StoreError> {
        let mut conn = rusqlite::Connection::open(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: e,
        })?;
        // The log is synced before pages are copied and the database after: nothing a pass
        // committed can be lost when the log later starts over.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // A RESTART waits for the owner's transaction in progress.
        db::wait_when_busy(&mut conn)?;
        Ok(Checkpointer { conn })
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
    fn run(self, stop: &mpsc::Receiver<()>) {
        let mut failures = 0u64;
        loop {
            let last = !matches!(
                stop.recv_timeout(CHECKPOINT_EVERY),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            match self.checkpoint() {
                Ok(()) => failures = 0,
                Err(e) => {
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

/// How long passes may keep failing to be written before the process ends (exit code
/// `GIVE_UP_EXIT`), so that systemd starts it again on a fresh connection: a connection that
/// saw its file system go read-only stays read-only after it is writable again.
const GIVE_UP_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// EX_TEMPFAIL: the store could not write; a restart may do better.
const GIVE_UP_EXIT: i32 = 75;
/// EX_TEMPFAIL too: the store was found damaged while running; the next start salvages it.
pub const CORRUPT_EXIT: i32 = 75;
/// While passes fail, one log line per this long (a full disk gave 66 a second).
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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

/// The owner thread's record of failing writes.
#[derive(Default)]
struct WriteHealth {
    since: Option<Instant>,
    logged: Option<Instant>,
    unlogged: u64,
}

impl WriteHealth {
    fn failed(&mut self, now: Instant) -> Failing {
        let since = *self.since.get_or_insert(now);
        self.unlogged += 1;
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

    /// A write succeeded: how long writes had failed, if they had.
    fn succeeded(&mut self, now: Instant) -> Option<std::time::Duration> {
        let since = self.since.take()?;
        self.logged = None;
        self.unlogged = 0;
        Some(now.duration_since(since))
    }
}

/// The database was found damaged while running. On a thread of its own, the hook alarms
/// the centre and then the process ends (not in unit tests), so that the next start salvages
/// the store (`salvage.rs`). Meanwhile no job runs on the damaged database: passes are held
/// unanswered (nobody is released, and no lane raises its own alarm over it), every other
/// job is dropped, so that its caller (the status, the uplink) hears the store has stopped
/// instead of waiting for it.
fn corrupted(
    detail: &str,
    hook: &Arc<std::sync::OnceLock<CorruptHook>>,
    held: Vec<Reply<PassOutcome>>,
    rx: &mpsc::Receiver<Job>,
) {
    tracing::error!(
        error = detail,
        "store: the database is damaged; gated takes no other decision and exits (code \
         {CORRUPT_EXIT}) so that its next start copies it aside and salvages it"
    );
    let (hook, detail) = (hook.clone(), detail.to_string());
    let ending = std::thread::Builder::new()
        .name("gated-store-corrupt".into())
        .spawn(move || {
            if let Some(hook) = hook.get() {
                hook(&detail);
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

fn owner(
    mut db: Db,
    rx: mpsc::Receiver<Job>,
    waiting: &AtomicUsize,
    hook: &Arc<std::sync::OnceLock<CorruptHook>>,
) {
    let mut next: Option<Job> = None;
    let mut health = WriteHealth::default();
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return, // every handle dropped: shut down
            },
        };
        match job {
            Job::Run(f) => {
                if let Some(detail) = f(&mut db) {
                    return corrupted(&detail, hook, Vec::new(), &rx);
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
                match db.record_passes(&inputs) {
                    Ok(outcomes) => {
                        if let Some(failed) = health.succeeded(Instant::now()) {
                            tracing::warn!(
                                after_ms = failed.as_millis() as u64,
                                "store: passes are recorded again"
                            );
                        }
                        for (r, o) in replies.into_iter().zip(outcomes) {
                            let _ = r.send(Ok(o));
                        }
                    }
                    Err(e) if e.is_corrupt() => {
                        return corrupted(&e.to_string(), hook, replies, &rx);
                    }
                    Err(e) => {
                        match health.failed(Instant::now()) {
                            Failing::Log { failures } => {
                                tracing::error!(error = %e, failures, "store: recording passes failed (logged at most once per 10 s)");
                            }
                            Failing::Quiet => {}
                            Failing::GiveUp => {
                                tracing::error!(error = %e, "store: passes have failed to be recorded for 60 s; gated exits so that systemd starts it again on a fresh connection");
                                std::process::exit(GIVE_UP_EXIT);
                            }
                        }
                        let msg = e.to_string();
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
