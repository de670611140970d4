//! `Db`: every SQL statement of gated, run synchronously on the store's owner thread (or
//! directly by tests). Callers pass `now`; nothing here reads the clock except UUIDv7 ids.
//!
//! This file holds `Db` itself (open, reconnect, probe, close) and the helpers every table
//! family shares; each family's statements are an `impl Db` block in a file of its own under
//! `db/`: passes, outbox, lists, commands, peers, media, state. They are child modules so that
//! `Db`'s fields and the shared helpers stay private to the store's database layer.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use uuid::Uuid;

use super::{StoreError, schema};
use crate::core::time::{ClockSense, ClockState, FLOOR_SLACK_MS, judge_clock};
use crate::core::{
    self, Calendar, Context, Credential, CredentialKind, Direction, Exception, FactorChange,
    FirstFactor, InvitationMatch, LastPass, Lookups, Mode, PassbackMode, Policy, Reason, Span,
    StaffMatch, UnixMs, Validity, Verdict,
};
use gated_contract::{
    Alarm, CredentialJson, CredentialRef, Delta, Entries, ListName, ListVersions,
    MAX_ATTEST_LIFETIME_MS, MAX_COMMAND_SKEW_MS, MAX_ECHO_BYTES, NO_RELEASE, Override, PassEvent,
    Refusal, Snapshot, bounded, format_ts, parse_date, parse_ts,
};

mod commands;
mod lists;
mod media;
mod outbox;
mod passes;
mod peers;
mod state;

pub use commands::{CLEAR_PASSBACK, CLEAR_PASSBACK_ALL, Stamp};
pub(super) use lists::keyed_tables;
pub use lists::{Applied, Generations, LIST_STEP, SnapshotStep};
pub(super) use outbox::insert_alarm;
pub use outbox::{OutboxRow, OutboxStats, Stream};
pub use passes::{FirstSeen, MailboxPos, PassInput, PassOutcome};
pub use state::{Behind, Contact, OfflineCounts, Outage};

use lists::load_calendar;
use outbox::HIGH_WATER_PERCENT;
use state::{LAST_OFFLINE, OFFLINE_COUNTS};

/// Who this gate is; stamped on every event.
#[derive(Clone, Debug)]
pub struct GateId {
    pub site: String,
    pub gate: String,
}

pub struct Db {
    conn: Connection,
    /// The device and inode of the file opened: a new connection must find the same one.
    file: (u64, u64),
    gate: GateId,
    policy: Policy,
    quota: u64,
    pending: u64,
    high_alarm_raised: bool,
    /// The mode passes are decided under. Held here, and changed only by `set_mode` after its
    /// commit, so that the store's one queue orders mode changes and passes: a pass decided
    /// after a lockdown was acked is decided under the lockdown.
    mode: Mode,
    /// The `calendar` list in force, held whole (a few hundred dates at most).
    calendar: Calendar,
    /// What the clock watcher last reported.
    sense: ClockSense,
    /// When this gated was built: a clock before it has reset.
    built: UnixMs,
    /// The latest time an event was recorded at with a trusted clock (persisted).
    floor: Option<UnixMs>,
    /// An admin attested the clock after the jump the watcher reports: the jump no longer
    /// makes it untrusted. Until the watcher sees another jump, or the jump is confirmed.
    jump_attested: bool,
    /// Contact with the centre, when the gate has one (`[mqtt]`).
    contact: Option<Contact>,
    /// What the gate decided since it lost contact (persisted with the passes it counts).
    offline_counts: OfflineCounts,
    /// The latest time without contact that has ended (persisted), for the status.
    last_offline: Option<Outage>,
    /// Two-factor lanes: the first factor waiting on each lane. Not persisted: after a
    /// restart both factors are asked again.
    first_factors: std::collections::HashMap<u16, FirstFactor>,
}

/// This build's time, from `build.rs`.
pub fn build_time() -> UnixMs {
    option_env!("GATED_BUILD_MS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Db {
    pub fn open(path: &Path, gate: GateId, policy: Policy, quota: u64) -> Result<Db, StoreError> {
        let mut conn = connect(path)?;
        let file = file_id(path)?;
        quick_check(&conn, path)?;
        schema::migrate(&mut conn)?.map_err(StoreError::Invalid)?;
        claim(&mut conn, &gate, path)?;
        let pending: u64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        let high_alarm_raised = pending * 100 >= quota * HIGH_WATER_PERCENT;
        let mut db = Db {
            conn,
            gate,
            policy,
            quota,
            pending,
            high_alarm_raised,
            mode: Mode::Normal,
            calendar: Calendar::default(),
            sense: ClockSense::default(),
            // The daemon sets this build's time (`set_build_time`); a store opened by a tool
            // or a test judges the clock without it.
            built: 0,
            floor: None,
            jump_attested: false,
            contact: None,
            offline_counts: OfflineCounts::default(),
            last_offline: None,
            first_factors: Default::default(),
            file,
        };
        db.mode = db.read_mode()?;
        // Unreadable (written by another version): start the count over rather than refuse
        // to open; the passes themselves are in the event log.
        db.offline_counts = db
            .read_state(OFFLINE_COUNTS)?
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default();
        db.last_offline = db
            .read_state(LAST_OFFLINE)?
            .and_then(|v| serde_json::from_str(&v).ok());
        db.floor = db.read_state("clock_floor")?.and_then(|v| v.parse().ok());
        db.calendar = load_calendar(&db.conn)?;
        Ok(db)
    }

    /// Opens a new connection to the store at `path` in place of this one, keeping what is
    /// held in memory (mode, clock, contact, counts). A connection that saw its file system go
    /// read-only, or that SQLite opened read-only, stays so after the disk is writable again:
    /// only a new one writes. The old connection is closed once the new one is open.
    pub fn reconnect(&mut self, path: &Path) -> Result<(), StoreError> {
        let conn = connect_existing(path)?;
        // The same file, not one put in its place meanwhile (a backup restored, a mount
        // changed): its seq counters could be behind the ones this process has issued.
        let now = file_id(path)?;
        if now != self.file {
            return Err(StoreError::Invalid(format!(
                "{} is no longer the file this gate opened (device and inode changed): gated \
                 does not write to a store replaced under it; it exits and opens it anew",
                path.display()
            )));
        }
        match made_for(&conn)? {
            Some(made) => same_gate(path, &made, &self.gate)?,
            None => {
                return Err(StoreError::Invalid(format!(
                    "{}: the store reopened says for no gate it was made",
                    path.display()
                )));
            }
        }
        drop(std::mem::replace(&mut self.conn, conn));
        Ok(())
    }

    /// The write probe of an idle store: one row of `state` rewritten and committed (one
    /// page in the log, synced, later copied back by a checkpoint). Fails as a pass would on
    /// a store that cannot write.
    pub fn probe(&mut self, now: UnixMs) -> Result<(), StoreError> {
        let tx = write(&mut self.conn)?;
        set_state(&tx, "write_probe", &now.to_string())?;
        tx.commit()?;
        Ok(())
    }

    /// For tests: this connection becomes one SQLite opened read-only, as it does without a
    /// word when the file system is read-only and the `-wal` and `-shm` are there.
    #[cfg(test)]
    pub(super) fn stick_read_only(&mut self, path: &Path) {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open read-only");
        self.conn = conn;
    }

    /// What `open` would refuse about the database at `path`, read without changing it: a
    /// schema from a newer gated, or a store made for another gate.
    pub fn check(path: &Path, gate: &GateId) -> Result<(), StoreError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: e,
            })?;
        quick_check(&conn, path)?;
        // 0: a database with no schema yet (a store made by an older gated in place).
        if schema::version(&conn)?.map_err(StoreError::Invalid)? == 0 {
            return Ok(());
        }
        match made_for(&conn)? {
            Some(made) => same_gate(path, &made, gate),
            None => Ok(()),
        }
    }

    /// Drops the pages the connection holds in its cache, so that the next read goes to the
    /// file, as it does for pages a larger database evicted.
    #[cfg(test)]
    pub(super) fn forget_cached_pages(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("PRAGMA shrink_memory")?;
        Ok(())
    }

    /// Checkpoints the log into the database and closes it, so that the file alone holds it
    /// (a new database is renamed into place after this).
    pub(super) fn close(self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.conn.close().map_err(|(_, e)| StoreError::Sqlite(e))
    }

    /// Leaves checkpoints to the store's checkpoint thread (`Store::open`): SQLite no longer
    /// runs one inside the commit that takes the log past 1000 pages.
    pub(super) fn checkpoint_elsewhere(&mut self) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Runs `f` with `synchronous = NORMAL`: for writes that are worth nothing after a power
    /// cut (rows of a list not yet in force, cleanup that the next apply redoes, the deletion
    /// of rows the broker acknowledged, which at worst are sent again). In WAL mode the next
    /// FULL commit syncs the whole log, these writes included. The setting is a flag of the
    /// connection; it is set back to FULL whatever `f` returned.
    fn relaxed<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let r = f(&mut self.conn);
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        r
    }

    fn read_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM state WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }
}

// ---- statements run inside a transaction ---------------------------------------------------

/// `PRAGMA quick_check` (a pass over every page, without the index cross-checks): a damaged
/// store is refused at start rather than failing every pass "malformed" later.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    match damage_found(conn)? {
        None => Ok(()),
        Some(detail) => Err(StoreError::Corrupt {
            path: path.display().to_string(),
            detail,
        }),
    }
}

/// What `PRAGMA quick_check` finds wrong with the database, if anything.
fn damage_found(conn: &Connection) -> Result<Option<String>, StoreError> {
    let found: Vec<String> = match conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
    {
        Ok(found) => found,
        Err(e) if is_corrupt(&e) => return Ok(Some(e.to_string())),
        Err(e) => return Err(StoreError::Sqlite(e)),
    };
    if found.len() == 1 && found[0] == "ok" {
        Ok(None)
    } else {
        Ok(Some(format!("quick_check: {}", found.join("; "))))
    }
}

/// The device and inode of the file at `path`.
fn file_id(path: &Path) -> Result<(u64, u64), StoreError> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).map_err(|e| StoreError::File {
        path: path.display().to_string(),
        what: "cannot read the metadata of",
        source: e,
    })?;
    Ok((m.dev(), m.ino()))
}

/// Opens the database at `path` and sets up the connection as every write of gated expects
/// it (WAL, synced commits, the busy wait). Shared by `Db::open` and `Db::reconnect`.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    connect_with(path, rusqlite::OpenFlags::default())
}

/// Like `connect`, for a database that must exist already: SQLite's default would create an
/// empty one where the store went missing (a mount gone), and gated must never start on one
/// as a new gate.
pub(super) fn connect_existing(path: &Path) -> Result<Connection, StoreError> {
    connect_with(
        path,
        rusqlite::OpenFlags::default() - rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
    )
}

fn connect_with(path: &Path, flags: rusqlite::OpenFlags) -> Result<Connection, StoreError> {
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        source: e,
    })?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Invalid(format!(
            "{}: journal_mode is {mode}, not wal (is it on a file system without shared memory?)",
            path.display()
        )));
    }
    // FULL: the WAL is synced at each commit, so a committed pass survives power loss (G2).
    // Group commit in `record_passes` bounds what that costs.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Every statement of a pass, of the uplink and of a list apply stays prepared: with
    // rusqlite's default of 16 they evicted each other and were parsed again.
    conn.set_prepared_statement_cache_capacity(64);
    // When the log starts over after a checkpoint, its file is trimmed back to 64 MiB if a
    // large list had made it grow.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    wait_when_busy(&mut conn)?;
    Ok(conn)
}

/// Damage found in the database at `path`, read without changing it (no log replayed into
/// it, nothing created but SQLite's `-shm`): `None` when `quick_check` finds it sound.
pub(super) fn damage(path: &Path) -> Result<Option<String>, StoreError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: e,
        })?;
    // A header that is not SQLite's fails already here.
    match damage_found(&conn) {
        Err(StoreError::Sqlite(e)) if is_corrupt(&e) => Ok(Some(e.to_string())),
        r => r,
    }
}

/// SQLite says the file is damaged (SQLITE_CORRUPT) or is no database (SQLITE_NOTADB).
pub(super) fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Makes `conn` wait up to 5 s for a lock another connection holds (the checkpoint thread's
/// RESTART holds the write lock while it copies and syncs), retrying every 100 µs. SQLite's
/// own busy timeout sleeps in growing steps, up to 100 ms at a time: a pass could sleep 50 ms
/// for a lock freed after 2.
pub(super) fn wait_when_busy(conn: &mut Connection) -> rusqlite::Result<()> {
    const LIMIT: Duration = Duration::from_secs(5);
    std::thread_local! {
        /// When the current wait began (SQLite calls the handler with attempt 0 first).
        static SINCE: std::cell::Cell<Option<std::time::Instant>> =
            const { std::cell::Cell::new(None) };
    }
    fn retry(attempt: i32) -> bool {
        let now = std::time::Instant::now();
        let since = SINCE.with(|s| {
            if attempt == 0 || s.get().is_none() {
                s.set(Some(now));
            }
            s.get().unwrap_or(now)
        });
        if now.duration_since(since) >= LIMIT {
            return false;
        }
        std::thread::sleep(Duration::from_micros(100));
        true
    }
    conn.busy_handler(Some(retry))
}

/// Begins a write transaction, taking the write lock at once (IMMEDIATE): a deferred one that
/// read first and then met another writer (or a blocking checkpoint of another connection)
/// would fail at once with SQLITE_BUSY instead of waiting for its busy timeout.
fn write(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

fn to_json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// The gate a store was made for, as recorded in it; `None` for a store made before gated
/// recorded it.
pub(super) fn made_for(conn: &Connection) -> rusqlite::Result<Option<GateId>> {
    let read = |key: &str| {
        conn.query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
            r.get::<_, String>(0)
        })
        .optional()
    };
    Ok(match (read("site")?, read("gate")?) {
        (Some(site), Some(gate)) => Some(GateId { site, gate }),
        _ => None,
    })
}

pub(super) fn same_gate(path: &Path, made: &GateId, gate: &GateId) -> Result<(), StoreError> {
    if made.site == gate.site && made.gate == gate.gate {
        return Ok(());
    }
    Err(StoreError::OtherGate {
        path: path.display().to_string(),
        made_site: made.site.clone(),
        made_gate: made.gate.clone(),
        site: gate.site.clone(),
        gate: gate.gate.clone(),
    })
}

/// Refuses a store made for another gate: two gates on one store would send events under one
/// name and share one outbox. A new store records the gate it is made for; a store made before
/// gated recorded it takes the gate of the first config that opens it.
fn claim(conn: &mut Connection, gate: &GateId, path: &Path) -> Result<(), StoreError> {
    let tx = write(conn)?;
    match made_for(&tx)? {
        Some(made) => same_gate(path, &made, gate),
        None => {
            set_state(&tx, "site", &gate.site)?;
            set_state(&tx, "gate", &gate.gate)?;
            tx.commit()?;
            tracing::info!(site = %gate.site, gate = %gate.gate, "store: {} recorded as this gate's", path.display());
            Ok(())
        }
    }
}

fn set_state(tx: &Transaction, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}

/// A time kept in `state`, in Unix ms.
fn state_ms(tx: &Transaction, key: &str) -> rusqlite::Result<Option<UnixMs>> {
    let v: Option<String> = tx
        .prepare_cached("SELECT value FROM state WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()))
}
