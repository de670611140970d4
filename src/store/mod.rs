//! The store: one SQLite file in WAL mode, owned by one thread.
//!
//! Architecture invariant: only the owner thread touches the connection. Others hold a cheap
//! `Store` handle and send it jobs; pass records that arrive together are decided and committed
//! in one transaction (group commit), so one fsync serves every lane that swiped meanwhile.

mod db;
mod schema;

pub use db::{
    Applied, Db, GateId, Generations, MailboxPos, OutboxRow, OutboxStats, PassInput, PassOutcome,
    SNAPSHOT_CHUNK, SnapshotStep, Stamp, Stream,
};

use std::path::Path;
use std::sync::{Arc, mpsc};

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
    #[error("store: the owner thread has stopped")]
    Stopped,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Pass(PassInput, Reply<PassOutcome>),
    Run(Box<dyn FnOnce(&mut Db) + Send>),
}

/// How many pass records at most share one transaction.
const MAX_GROUP: usize = 64;
/// Jobs waiting for the owner thread; a full queue makes callers wait (back-pressure).
const QUEUE: usize = 1024;

/// A handle to the store's owner thread. Clone it freely.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::SyncSender<Job>,
}

impl Store {
    /// Opens (creating and migrating) the database and starts its owner thread.
    pub fn open(
        path: &Path,
        gate: GateId,
        policy: Policy,
        quota: u64,
    ) -> Result<Store, StoreError> {
        let db = Db::open(path, gate, policy, quota)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("gated-store".into())
            .spawn(move || owner(db, rx))
            .map_err(|e| StoreError::Invalid(format!("cannot start the store thread: {e}")))?;
        Ok(Store { tx })
    }

    /// Decides and records one pass. When this returns `Recorded`, the event is committed
    /// and the relay may be commanded (G1).
    pub async fn pass(&self, input: PassInput) -> Result<PassOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Pass(input, reply)).await?;
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
            let _ = reply.send(f(db));
        })))
        .await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Replaces a list without holding up decisions: the new list is written as a new
    /// generation in chunks of `SNAPSHOT_CHUNK` entries, each its own job, so passes queued
    /// meanwhile run between chunks. One short transaction then brings it into force, and the
    /// old generation is deleted in chunks after that. The downlink applies one update at a
    /// time; a second concurrent apply of the same list would fail at the switch.
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
                // The retained snapshot on reconnect: a chance to finish a cleanup that a
                // restart interrupted.
                self.drop_generations(list, Generations::Stale).await;
                return Ok(Ok(Applied::AlreadyInForce { version }));
            }
            Ok(SnapshotStep::Write { generation }) => generation,
        };
        self.drop_generations(list, Generations::Unfinished).await;
        let n = s.entries.len();
        for start in (0..n).step_by(SNAPSHOT_CHUNK) {
            let (chunk, range) = (s.clone(), start..(start + SNAPSHOT_CHUNK).min(n));
            let written = self
                .call(move |db| db.snapshot_write(list, generation, &chunk.entries, range))
                .await?;
            if let Err(r) = written {
                self.drop_generations(list, Generations::Unfinished).await;
                return Ok(Err(r));
            }
        }
        let s2 = s.clone();
        let applied = self
            .call(move |db| db.snapshot_commit(list, version, generation, s2.issued_at.as_deref()))
            .await?;
        self.drop_generations(list, Generations::Stale).await;
        Ok(applied)
    }

    /// Deletes the given generations in chunks. A failure is logged, not returned: the list in
    /// force is not affected, and the next snapshot tries again.
    async fn drop_generations(&self, list: ListName, which: Generations) {
        loop {
            match self
                .call(move |db| db.drop_generations(list, which, SNAPSHOT_CHUNK))
                .await
            {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(list = list.as_str(), ?which, error = %e, "list cleanup failed; it will be retried with the next snapshot");
                    return;
                }
            }
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

fn owner(mut db: Db, rx: mpsc::Receiver<Job>) {
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return, // every handle dropped: shut down
            },
        };
        match job {
            Job::Run(f) => f(&mut db),
            Job::Pass(first, reply) => {
                let mut inputs = vec![first];
                let mut replies = vec![reply];
                while inputs.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Job::Pass(i, r)) => {
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
                        for (r, o) in replies.into_iter().zip(outcomes) {
                            let _ = r.send(Ok(o));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, passes = inputs.len(), "store: recording passes failed");
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
