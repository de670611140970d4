//! The store's owner thread: the one connection, its jobs (passes grouped into one
//! transaction), and the health of its writes (retries, a new connection, the probe of an idle
//! store, the end of the process when writes keep failing or the database is damaged).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use super::{Db, Job, PassInput, PassOutcome, Reply, StoreError};

/// How many pass records at most share one transaction.
const MAX_GROUP: usize = 64;

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
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(1);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(8);

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

pub(super) type OnWrite = Arc<OnceLock<Box<dyn Fn(WriteEvent) + Send + Sync>>>;

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
pub(super) fn needs_reconnect(e: &StoreError) -> bool {
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
pub(super) struct Owner {
    db: Db,
    path: PathBuf,
    health: WriteHealth,
    on_write: OnWrite,
}

impl Owner {
    pub(super) fn new(db: Db, path: PathBuf, on_write: OnWrite) -> Owner {
        Owner {
            db,
            path,
            health: WriteHealth::new(Instant::now()),
            on_write,
        }
    }

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
            .record_alarm("store_recovered", "store", &detail, crate::wall::now_ms())
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
        match self.db.probe(crate::wall::now_ms()) {
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

pub(super) fn owner(mut o: Owner, rx: mpsc::Receiver<Job>, waiting: &AtomicUsize) {
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
