//! The store: one SQLite file in WAL mode, owned by one thread.
//!
//! Architecture invariant: only the owner thread touches the connection. Others hold a cheap
//! `Store` handle and send it jobs; pass records that arrive together are decided and committed
//! in one transaction (group commit), so one fsync serves every lane that swiped meanwhile.
//!
//! This file is the handle; `owner.rs` is the owner thread and the health of its writes,
//! `checkpoint.rs` the checkpoint thread, `db.rs` (with `db/`) every SQL statement.

mod checkpoint;
mod db;
mod files;
mod owner;
mod salvage;
mod schema;

pub use db::{
    Applied, Behind, CLEAR_PASSBACK, CLEAR_PASSBACK_ALL, Db, FirstSeen, GateId, Generations,
    LIST_STEP, MailboxPos, OfflineCounts, Outage, OutboxRow, OutboxStats, PassInput, PassOutcome,
    SnapshotStep, Stamp, Stream, build_time,
};
pub use owner::{CORRUPT_EXIT, WriteEvent};

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use tokio::sync::oneshot;

use checkpoint::Checkpointer;
use owner::{OnWrite, Owner, owner};

use crate::core::Policy;
use gated_contract::{ListName, Refusal, Snapshot};

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
            salvage::resume(path, &gate, &aside, crate::wall::now_ms())?;
        } else if path.exists() {
            files::refuse_empty(path)?;
            // Found damaged: copied aside and salvaged into a new store, or refused (when
            // its seq counters or its gate cannot be read).
            if let Some(damage) = db::damage(path)? {
                salvage::salvage(path, &gate, &damage, crate::wall::now_ms())?;
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
        let owner_state = Owner::new(db, db_path, on_write.clone());
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

#[cfg(test)]
mod tests;
