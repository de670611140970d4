//! The checkpoint thread: the log copied back into the database file, small and often, on a
//! connection of its own.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::owner::{RETRY_FIRST, RETRY_MAX, needs_reconnect};
use super::{StoreError, db};

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
pub(super) struct Checkpointer {
    conn: rusqlite::Connection,
    path: PathBuf,
}

impl Checkpointer {
    pub(super) fn open(path: &Path) -> Result<Checkpointer, StoreError> {
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
    pub(super) fn run(mut self, stop: &mpsc::Receiver<()>) {
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

#[cfg(test)]
mod tests;
