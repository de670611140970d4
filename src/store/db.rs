//! `Db`: every SQL statement of gated, run synchronously on the store's owner thread (or
//! directly by tests). Callers pass `now`; nothing here reads the clock except UUIDv7 ids.

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
use crate::sync::contract::{
    Alarm, CredentialJson, CredentialRef, Delta, Entries, ListName, ListVersions,
    MAX_ATTEST_LIFETIME_MS, MAX_COMMAND_SKEW_MS, MAX_ECHO_BYTES, NO_RELEASE, Override, PassEvent,
    Refusal, Snapshot, bounded, format_ts, parse_date, parse_ts,
};

/// Who this gate is; stamped on every event.
#[derive(Clone, Debug)]
pub struct GateId {
    pub site: String,
    pub gate: String,
}

/// Which mailbox event a pass came from, so a restart never decides it twice.
#[derive(Clone, Debug)]
pub struct MailboxPos {
    pub reader: String,
    pub head_seq: u16,
}

/// A remote command's guard against replay: its nonce and when it is valid.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamp {
    pub nonce: String,
    pub issued_at: UnixMs,
    pub expires_at: UnixMs,
}

/// Which clock a command's expiry is judged on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judge {
    /// The command clock, which never goes back: every command but a lockdown.
    CommandClock,
    /// The gate's clock as it reads: a lockdown, which only closes, so that a gate whose
    /// clock once ran ahead can always be locked down.
    OwnClock,
}

/// A credential to decide and record.
#[derive(Clone, Debug)]
pub struct PassInput {
    pub from: Option<MailboxPos>,
    pub lane: u16,
    pub direction: Direction,
    pub credential: Credential,
    pub now: UnixMs,
    /// When the presentation was first seen; `None` for input that cannot wait in a queue.
    pub seen: Option<FirstSeen>,
}

/// When gated first saw a presented credential, and since when it can have waited.
#[derive(Clone, Copy, Debug)]
pub struct FirstSeen {
    /// Wall time at which gated first saw it, for the record only (`seen_at`).
    pub at: UnixMs,
    /// Its age is measured from this monotonic instant, the latest at which its source is
    /// known not to have held it yet (or when it was read), so that a wall clock that jumps
    /// makes no swipe stale or fresh. `None`: found queued in a device gated could not watch
    /// (its link was down, or gated was not running): it may have waited for any time.
    pub since: Option<std::time::Instant>,
}

impl FirstSeen {
    /// Read right now from a source that keeps nothing (a Wiegand frame).
    pub fn now(at: UnixMs) -> Self {
        Self {
            at,
            since: Some(std::time::Instant::now()),
        }
    }

    /// Its age as the core judges it, at this moment.
    fn age(&self) -> core::SwipeAge {
        match self.since {
            Some(t) => {
                core::SwipeAge::Known(i64::try_from(t.elapsed().as_millis()).unwrap_or(i64::MAX))
            }
            None => core::SwipeAge::Unknown,
        }
    }
}

#[derive(Clone, Debug)]
// Almost every outcome is `Recorded`; boxing it would add an allocation to every pass.
#[allow(clippy::large_enum_variant)]
pub enum PassOutcome {
    /// Decided and committed: the relay may now be commanded (G1).
    Recorded { verdict: Verdict, event: PassEvent },
    /// This mailbox event was recorded before (a restart, or an ack that did not arrive): ack
    /// it again, decide nothing.
    AlreadyRecorded,
}

/// One row of the outbox, ready to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRow {
    pub rowid: i64,
    pub stream: Stream,
    pub payload: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Event,
    Alarm,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Alarm => "alarm",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutboxStats {
    pub pending: u64,
    pub oldest_ts: Option<UnixMs>,
}

/// What an applied list update did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Applied {
        version: u64,
    },
    /// The version already in force came again (the retained snapshot on reconnect).
    AlreadyInForce {
        version: u64,
    },
}

/// The outbox fill level at which an `outbox_high` alarm is raised (G4).
const HIGH_WATER_PERCENT: u64 = 80;

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

/// The gate's contact with the centre (its broker connection).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Contact {
    pub connected: bool,
    /// When the gate last was in contact (persisted in `state`, at most a minute old).
    pub last: Option<UnixMs>,
    persisted: Option<UnixMs>,
}

/// Credential decisions taken without contact with the centre.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OfflineCounts {
    pub granted: u64,
    pub denied: u64,
    /// Of `denied`: refused `offline_limit`.
    pub offline_limit: u64,
}

/// A time without contact with the centre that has ended, and what the gate decided in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outage {
    /// The last contact before it, as persisted (at most a minute early); `None` when the
    /// gate had never been in contact.
    pub since: Option<UnixMs>,
    /// When contact came back.
    pub until: UnixMs,
    pub counts: OfflineCounts,
}

/// How often `last_contact` is written while connected.
const CONTACT_PERSIST_MS: i64 = 60_000;

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

    // ---- passes ------------------------------------------------------------------------------

    /// Decides and records a batch of passes in one transaction: one fsync for all (group
    /// commit). All or nothing: on error none is recorded and every caller is told.
    pub fn record_passes(&mut self, inputs: &[PassInput]) -> Result<Vec<PassOutcome>, StoreError> {
        let mut factors = self.first_factors.clone();
        let mut floor = self.floor;
        let mut counts = self.offline_counts;
        let tx = write(&mut self.conn)?;
        let incomplete = lists_incomplete(&tx)?;
        let mut out = Vec::with_capacity(inputs.len());
        let mut added = 0;
        for input in inputs {
            let clock = judge_clock(input.now, floor, self.built, self.sense);
            let rules = Rules {
                gate: &self.gate,
                policy: &self.policy,
                mode: self.mode,
                calendar: &self.calendar,
                clock,
                offline_ms: offline_ms(self.contact, input.now),
                swipe_age: input.seen.map(|s| s.age()),
                lists_incomplete: incomplete,
            };
            let o = record_pass(&tx, &rules, &mut factors, input)?;
            if let PassOutcome::Recorded { verdict, .. } = &o {
                added += 1;
                if rules.offline_ms.is_some() {
                    counts.count(verdict.reason);
                }
                // The floor moves only with a trusted clock: a clock set years ahead must not
                // leave the gate distrusting every correct time after it.
                if clock.trusted() && floor.is_none_or(|f| input.now > f) {
                    floor = Some(input.now);
                }
            }
            out.push(o);
        }
        if floor != self.floor
            && let Some(f) = floor
        {
            set_state(&tx, "clock_floor", &f.to_string())?;
        }
        if counts != self.offline_counts {
            set_state(&tx, OFFLINE_COUNTS, &to_json(&counts)?)?;
        }
        tx.commit()?;
        self.first_factors = factors;
        self.floor = floor;
        self.offline_counts = counts;
        self.pending += added;
        // The passes are committed: whatever happens to the alarm, they stay recorded and
        // their lanes may open.
        self.after_insert(inputs.last().map_or(0, |i| i.now));
        Ok(out)
    }

    pub fn record_alarm(
        &mut self,
        alarm: &str,
        source: &str,
        detail: &str,
        now: UnixMs,
    ) -> Result<Alarm, StoreError> {
        let tx = write(&mut self.conn)?;
        let a = insert_alarm(&tx, &self.gate, alarm, source, detail, now)?;
        // A device's open fault outlives a restart, in the same transaction as its alarm, so
        // that the next start continues the episode (`open_device_faults`).
        match alarm {
            "device_fault" => set_state(&tx, &format!("{DEVICE_FAULT_KEY}{source}"), detail)?,
            "device_recovered" => {
                tx.prepare_cached("DELETE FROM state WHERE key = ?1")?
                    .execute([format!("{DEVICE_FAULT_KEY}{source}")])?;
            }
            _ => {}
        }
        tx.commit()?;
        self.pending += 1;
        Ok(a)
    }

    /// The devices whose `device_fault` has had no `device_recovered` yet.
    pub fn open_device_faults(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM state WHERE key >= ?1 AND key < ?2 ORDER BY key")?;
        let rows = stmt.query_map([DEVICE_FAULT_KEY, DEVICE_FAULT_END], |r| {
            r.get::<_, String>(0)
        })?;
        let mut out = Vec::new();
        for key in rows {
            out.push(key?[DEVICE_FAULT_KEY.len()..].to_string());
        }
        Ok(out)
    }

    /// Raises `outbox_high` once when the outbox crosses 80% of its quota, and again after it
    /// has fallen below 70%. Nothing is ever deleted to make room (G4).
    fn after_insert(&mut self, now: UnixMs) {
        if !self.high_alarm_raised && self.pending * 100 >= self.quota * HIGH_WATER_PERCENT {
            self.high_alarm_raised = true;
            let detail = format!(
                "{} of {} outbox entries await the broker; nothing is deleted to make room",
                self.pending, self.quota
            );
            if let Err(e) = self.record_alarm("outbox_high", "outbox", &detail, now) {
                tracing::error!(error = %e, "{detail}; the alarm could not be recorded");
            }
        }
    }

    // ---- outbox ------------------------------------------------------------------------------

    /// Up to `limit` unacknowledged rows after `after_rowid`, oldest first.
    pub fn pending(&self, after_rowid: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT rowid, stream, payload FROM outbox WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )?;
        let rows = st
            .query_map(params![after_rowid, limit as i64], |r| {
                let stream: String = r.get(1)?;
                Ok(OutboxRow {
                    rowid: r.get(0)?,
                    stream: if stream == "alarm" {
                        Stream::Alarm
                    } else {
                        Stream::Event
                    },
                    payload: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The broker acknowledged these rows: they leave the outbox. Not synced: rows whose
    /// deletion a power cut undoes are sent again, which at-least-once allows (G3).
    pub fn acked(&mut self, rowids: &[i64]) -> Result<(), StoreError> {
        let removed = self.relaxed(|conn| {
            let tx = write(conn)?;
            let mut removed = 0;
            {
                let mut st = tx.prepare_cached("DELETE FROM outbox WHERE rowid = ?1")?;
                for id in rowids {
                    removed += st.execute([id])? as u64;
                }
            }
            tx.commit()?;
            Ok(removed)
        })?;
        self.pending = self.pending.saturating_sub(removed);
        if self.high_alarm_raised && self.pending * 100 < self.quota * 70 {
            self.high_alarm_raised = false;
        }
        Ok(())
    }

    pub fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let oldest: Option<i64> = self
            .conn
            .query_row("SELECT ts FROM outbox ORDER BY rowid LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(OutboxStats {
            pending: self.pending,
            oldest_ts: oldest,
        })
    }

    // ---- lists -------------------------------------------------------------------------------

    /// The version of each list the gate holds, for the status: 0 for a list it does not hold,
    /// whether none was received yet or a salvage lost it (it waits for its snapshot).
    pub fn list_versions(&self) -> Result<ListVersions, StoreError> {
        let held = |list| -> Result<u64, StoreError> {
            let f = in_force(&self.conn, list)?;
            Ok(if f.lost { 0 } else { f.version })
        };
        Ok(ListVersions {
            staff: held(ListName::Staff)?,
            visitors: held(ListName::Visitors)?,
            deny: held(ListName::Deny)?,
            calendar: held(ListName::Calendar)?,
        })
    }

    /// The version in force, or, for a list a salvage lost, the version it held (the oldest
    /// it takes again).
    pub fn list_version(&self, list: ListName) -> Result<u64, StoreError> {
        Ok(in_force(&self.conn, list)?.version)
    }

    /// Replaces a list in one call: every step of the chunked apply, back to back. The daemon
    /// uses `Store::apply_snapshot`, which lets passes run between the steps.
    pub fn apply_snapshot(&mut self, s: &Snapshot) -> Result<Result<Applied, Refusal>, StoreError> {
        let list = s.list;
        let generation = match self.snapshot_begin(list, s.version)? {
            Err(r) => return Ok(Err(r)),
            Ok(SnapshotStep::AlreadyInForce { version }) => {
                return Ok(Ok(Applied::AlreadyInForce { version }));
            }
            Ok(SnapshotStep::Write { generation }) => generation,
        };
        let never = || false;
        while self.drop_generations(list, Generations::Unfinished, &never)? > 0 {}
        if let Err(r) = self.snapshot_write(list, generation, &s.entries, 0, &never)? {
            while self.drop_generations(list, Generations::Unfinished, &never)? > 0 {}
            return Ok(Err(r));
        }
        let applied = self.snapshot_commit(list, s.version, generation, s.issued_at.as_deref())?;
        while self.drop_generations(list, Generations::Stale, &never)? > 0 {}
        Ok(applied)
    }

    /// Snapshot step 1: checks the version against the one in force and picks the generation
    /// to write the new list into. What an interrupted apply left there must be dropped
    /// (`Generations::Unfinished`) before writing.
    pub fn snapshot_begin(
        &mut self,
        list: ListName,
        version: u64,
    ) -> Result<Result<SnapshotStep, Refusal>, StoreError> {
        let current = in_force(&self.conn, list)?;
        if let Err(r) = check_newer(list, version, &current) {
            return Ok(r.map(|a| match a {
                Applied::AlreadyInForce { version } | Applied::Applied { version } => {
                    SnapshotStep::AlreadyInForce { version }
                }
            }));
        }
        Ok(Ok(SnapshotStep::Write {
            generation: current.generation + 1,
        }))
    }

    /// Snapshot step 2: writes entries from `start` on into generation `generation`, invisible
    /// to decisions, until `stop` says so (checked after each entry, so at least one is
    /// written). Returns where the next step starts (`entries.len()` when done).
    ///
    /// The generation is new (step 1 picked it, and what an interrupted apply left there was
    /// dropped) and the parser refuses a key that appears twice, so nothing is replaced.
    /// Committed without a sync of its own: rows no decision can see yet are worth nothing
    /// after a power cut, and the switch (step 3) syncs the whole log before it counts.
    pub fn snapshot_write(
        &mut self,
        list: ListName,
        generation: i64,
        entries: &Entries,
        start: usize,
        stop: &dyn Fn() -> bool,
    ) -> Result<Result<usize, Refusal>, StoreError> {
        self.relaxed(|conn| {
            let tx = write(conn)?;
            let mut next = start;
            while next < entries.len() {
                if let Err(r) =
                    upsert_entries(&tx, list, generation, entries, next..next + 1, Fresh::Yes)?
                {
                    return Ok(Err(r));
                }
                next += 1;
                if stop() {
                    break;
                }
            }
            tx.commit()?;
            Ok(Ok(next))
        })
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

    /// Snapshot step 3: brings generation `generation` into force, if its version is still
    /// newer and no other apply switched the list meanwhile. One short transaction: this is
    /// the atomic switch from the old list to the new.
    pub fn snapshot_commit(
        &mut self,
        list: ListName,
        version: u64,
        generation: i64,
        issued_at: Option<&str>,
    ) -> Result<Result<Applied, Refusal>, StoreError> {
        let tx = write(&mut self.conn)?;
        let current = in_force(&tx, list)?;
        if let Err(r) = check_newer(list, version, &current) {
            return Ok(r);
        }
        if current.generation + 1 != generation {
            return Err(StoreError::Invalid(format!(
                "{} generation {generation} was written while {} came into force",
                list.as_str(),
                current.generation
            )));
        }
        tx.execute(
            "UPDATE list_version SET version = ?2, gen = ?3, issued_at = ?4, lost = 0
             WHERE list = ?1",
            params![list.as_str(), version, generation, issued_at],
        )?;
        tx.commit()?;
        if list == ListName::Calendar {
            self.calendar = load_calendar(&self.conn)?;
        }
        Ok(Ok(Applied::Applied { version }))
    }

    /// Deletes rows of the list's tables from the generations named, relative to the one in
    /// force, in batches until none is left or `stop` says so. Returns how many rows went;
    /// call until 0. Not synced: a cleanup lost to a power cut is done again later.
    pub fn drop_generations(
        &mut self,
        list: ListName,
        which: Generations,
        stop: &dyn Fn() -> bool,
    ) -> Result<usize, StoreError> {
        const BATCH: i64 = 16;
        self.relaxed(|conn| {
            let tx = write(conn)?;
            let generation = in_force(&tx, list)?.generation;
            let cond = match which {
                Generations::Stale => "gen < ?1",
                Generations::Unfinished => "gen > ?1",
            };
            let mut n = 0;
            loop {
                let mut batch = 0;
                for (table, key) in keyed_tables(list) {
                    batch += tx
                        .prepare_cached(&format!(
                            "DELETE FROM {table} WHERE ({key}) IN
                             (SELECT {key} FROM {table} WHERE {cond} LIMIT ?2)"
                        ))?
                        .execute(params![generation, BATCH])?;
                }
                n += batch;
                if batch == 0 || stop() {
                    break;
                }
            }
            tx.commit()?;
            Ok(n)
        })
    }

    /// Applies changes on top of `base`, only when `base` is the version in force. A delta is
    /// small: it changes the generation in force in place, in one transaction.
    pub fn apply_delta(&mut self, d: &Delta) -> Result<Result<Applied, Refusal>, StoreError> {
        let tx = write(&mut self.conn)?;
        let current = in_force(&tx, d.list)?;
        if let Err(r) = check_newer(d.list, d.version, &current) {
            return Ok(r);
        }
        if current.lost {
            return Ok(Err(Refusal::VersionGap(format!(
                "the rows of {} version {} were lost to a damaged store; waiting for the snapshot",
                d.list.as_str(),
                current.version
            ))));
        }
        if d.base != current.version {
            return Ok(Err(Refusal::VersionGap(format!(
                "delta is based on version {} but {} is in force; waiting for the snapshot",
                d.base, current.version
            ))));
        }
        for key in &d.remove {
            remove_entry(&tx, d.list, current.generation, key)?;
        }
        if let Err(refusal) = upsert_entries(
            &tx,
            d.list,
            current.generation,
            &d.upsert,
            0..d.upsert.len(),
            Fresh::No,
        )? {
            return Ok(Err(refusal));
        }
        tx.execute(
            "UPDATE list_version SET version = ?2 WHERE list = ?1",
            params![d.list.as_str(), d.version],
        )?;
        tx.commit()?;
        if d.list == ListName::Calendar {
            self.calendar = load_calendar(&self.conn)?;
        }
        Ok(Ok(Applied::Applied { version: d.version }))
    }

    // ---- overrides and commands --------------------------------------------------------------

    /// Records an override pass (a remote `open`, a panel button): granted with `reason`, no
    /// credential. With a nonce, the nonce is claimed in the same transaction, so a replayed
    /// command can never open twice. Committed before the caller drives the relay (G1).
    pub fn record_override(
        &mut self,
        lane: u16,
        direction: Direction,
        reason: core::Reason,
        override_: Override,
        stamp: Option<&Stamp>,
        now: UnixMs,
    ) -> Result<Result<PassEvent, Refusal>, StoreError> {
        let draft = EventDraft {
            override_: Some(override_),
            ..EventDraft::bare(lane, direction, reason)
        };
        self.record_event(draft, stamp, now, |_| Ok(()))
    }

    /// `record_event` for an event with no command behind it: with no nonce to claim, nothing
    /// can be refused.
    fn record_local(
        &mut self,
        draft: EventDraft,
        now: UnixMs,
        also: impl FnOnce(&Transaction) -> rusqlite::Result<()>,
    ) -> Result<PassEvent, StoreError> {
        self.record_event(draft, None, now, also)?
            .map_err(|r| StoreError::Invalid(format!("an event with no nonce was refused: {r}")))
    }

    /// Records one event that no credential decided (an override, a button press), in its own
    /// transaction with `also` and, for a command, its nonce.
    fn record_event(
        &mut self,
        draft: EventDraft,
        stamp: Option<&Stamp>,
        now: UnixMs,
        also: impl FnOnce(&Transaction) -> rusqlite::Result<()>,
    ) -> Result<Result<PassEvent, Refusal>, StoreError> {
        let tx = write(&mut self.conn)?;
        if let Some(stamp) = stamp
            && let Err(r) = claim_nonce(&tx, stamp, now, Judge::CommandClock)?
        {
            return Ok(Err(r));
        }
        also(&tx)?;
        let event = insert_event(&tx, &self.gate, draft, now)?;
        tx.commit()?;
        self.pending += 1;
        self.after_insert(now);
        Ok(Ok(event))
    }

    /// Persists a new mode and records the change as a `mode_changed` alarm naming who made
    /// it (G8), in one transaction with the command's nonce.
    pub fn set_mode(
        &mut self,
        mode: Mode,
        source: &str,
        detail: &str,
        stamp: Option<&Stamp>,
        now: UnixMs,
    ) -> Result<Result<Alarm, Refusal>, StoreError> {
        let tx = write(&mut self.conn)?;
        // A lockdown only closes: a gate whose command clock ran ahead must still take one.
        let judge = match mode {
            Mode::Lockdown => Judge::OwnClock,
            _ => Judge::CommandClock,
        };
        if let Some(stamp) = stamp
            && let Err(r) = claim_nonce(&tx, stamp, now, judge)?
        {
            return Ok(Err(r));
        }
        let value = serde_json::to_string(&mode).map_err(|e| StoreError::Invalid(e.to_string()))?;
        tx.execute(
            "INSERT INTO state (key, value) VALUES ('mode', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [value],
        )?;
        let alarm = insert_alarm(&tx, &self.gate, "mode_changed", source, detail, now)?;
        tx.commit()?;
        self.mode = mode;
        self.pending += 1;
        self.after_insert(now);
        Ok(Ok(alarm))
    }

    /// Claims a command nonce on its own (for commands that record nothing else).
    pub fn claim_nonce(
        &mut self,
        stamp: &Stamp,
        now: UnixMs,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let tx = write(&mut self.conn)?;
        let r = claim_nonce(&tx, stamp, now, Judge::CommandClock)?;
        tx.commit()?;
        Ok(r)
    }

    // ---- small state -------------------------------------------------------------------------

    /// Decides passes under `mode` from now on without persisting it: for an emergency release
    /// that the store could not record (G9: it does not wait for the store).
    pub fn assume_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// The mode passes are decided under (as persisted, or assumed).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn read_mode(&self) -> Result<Mode, StoreError> {
        let v = self.read_state("mode")?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default())
    }

    fn read_state(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM state WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// Decides `credential` on lane 0, direction in, against the lists in force, as a pass
    /// would be, without recording anything (no event, no entry used): what the benchmarks
    /// time as one decision.
    pub fn decide(&self, credential: &Credential, now: UnixMs) -> Result<Verdict, StoreError> {
        let rules = Rules {
            gate: &self.gate,
            policy: &self.policy,
            mode: self.mode,
            calendar: &self.calendar,
            clock: self.clock_state(now),
            offline_ms: offline_ms(self.contact, now),
            swipe_age: None,
            lists_incomplete: lists_incomplete(&self.conn)?,
        };
        Ok(decide(
            &self.conn,
            &rules,
            None,
            0,
            Direction::In,
            credential,
            now,
        )?)
    }

    // ---- clock and contact -------------------------------------------------------------------

    /// What the clock watcher observed; decisions from now on judge the clock with it.
    pub fn set_clock_sense(&mut self, sense: ClockSense) {
        self.jump_attested &= sense.jumped;
        self.sense = sense;
    }

    /// The clock as a decision at `now` would judge it.
    pub fn clock_state(&self, now: UnixMs) -> ClockState {
        let sense = ClockSense {
            jumped: self.sense.jumped && !self.jump_attested,
            ..self.sense
        };
        judge_clock(now, self.floor, self.built, sense)
    }

    /// Whether the clock reads earlier than what this gate has already seen: the latest
    /// trusted event, or the command clock. `None` when it does not (by more than the slack
    /// the clock rules allow).
    pub fn clock_behind(&self, now: UnixMs) -> Result<Option<Behind>, StoreError> {
        let command = self
            .read_state("command_clock")?
            .and_then(|v| v.parse::<UnixMs>().ok());
        let ahead = |t: Option<UnixMs>| t.filter(|&t| now < t.saturating_sub(FLOOR_SLACK_MS));
        let b = Behind {
            gate: self.gate.gate.clone(),
            event: ahead(self.floor),
            command: ahead(command),
        };
        Ok((b.event.is_some() || b.command.is_some()).then_some(b))
    }

    /// An admin's signed attestation that the clock reads right now (`attest_time`; the
    /// caller has checked its signature and its challenge): the latest trusted event time and
    /// the command clock go back to `now`, a jump the watcher reported no longer counts, and
    /// commands issued before the attestation are refused from now on (their nonces may have
    /// been forgotten while the clock ran ahead). Recorded as a `clock_attested` alarm, in
    /// one transaction with the nonce.
    ///
    /// It vouches for the clock as it reads; it does not set it: a clock more than the
    /// command skew away from the attested time is refused, and time sync must fix it first.
    pub fn attest_time(
        &mut self,
        stamp: &Stamp,
        by: &str,
        now: UnixMs,
    ) -> Result<Result<String, Refusal>, StoreError> {
        if let Err(r) = check_attested_time(stamp, now) {
            return Ok(Err(r));
        }
        let tx = write(&mut self.conn)?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO command_nonce (nonce, expires_at) VALUES (?1, ?2) \
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![stamp.nonce, stamp.expires_at])?;
        if inserted == 0 {
            return Ok(Err(Refusal::Replayed(format!(
                "nonce `{}` was used before; a command is carried out once",
                stamp.nonce
            ))));
        }
        let command = state_ms(&tx, "command_clock")?;
        let attested =
            state_ms(&tx, "command_floor")?.map_or(stamp.issued_at, |f| f.max(stamp.issued_at));
        set_state(&tx, "command_clock", &now.to_string())?;
        set_state(&tx, "command_floor", &attested.to_string())?;
        let floor = self.floor.map(|f| f.min(now));
        if let Some(f) = floor {
            set_state(&tx, "clock_floor", &f.to_string())?;
        }
        let was = |t: Option<UnixMs>| t.map_or("none".to_string(), format_ts);
        let detail = format!(
            "the clock was attested by {by} at {}: the latest event time went from {} to {}, \
             the command clock from {} to {}{}; commands issued before {} are refused",
            format_ts(now),
            was(self.floor),
            was(floor),
            was(command),
            format_ts(now),
            if self.sense.jumped {
                ", and the clock jump seen before no longer counts"
            } else {
                ""
            },
            format_ts(attested)
        );
        insert_alarm(&tx, &self.gate, "clock_attested", "clock", &detail, now)?;
        tx.commit()?;
        self.floor = floor;
        self.jump_attested = self.sense.jumped;
        self.pending += 1;
        self.after_insert(now);
        Ok(Ok(detail))
    }

    /// Lowers the clock floor to `at` if it is above: the clock jumped, and events recorded
    /// just before the jump was seen may carry the jumped time. A new jump also undoes an
    /// attestation of an earlier one.
    pub fn lower_floor(&mut self, at: UnixMs) -> Result<(), StoreError> {
        self.jump_attested = false;
        if self.floor.is_some_and(|f| f > at) {
            let tx = write(&mut self.conn)?;
            set_state(&tx, "clock_floor", &at.to_string())?;
            tx.commit()?;
            self.floor = Some(at);
        }
        Ok(())
    }

    /// Pretends this gated was built at `at` (tests of the clock rules).
    pub fn set_build_time(&mut self, at: UnixMs) {
        self.built = at;
    }

    /// The gate has a centre (`[mqtt]`): from now on `max_offline` counts from the last
    /// contact, as persisted, until `contact` says it is connected.
    pub fn expect_centre(&mut self) -> Result<(), StoreError> {
        let last = self
            .read_state("last_contact")?
            .and_then(|v| v.parse().ok());
        self.contact = Some(Contact {
            connected: false,
            last,
            persisted: last,
        });
        Ok(())
    }

    /// The link reports its connection to the centre: on connect, on loss, and now and then
    /// while connected. The time of the last contact is persisted at most once a minute (and
    /// on loss), with a relaxed sync: a gate restarted offline counts from a contact at most a
    /// minute earlier than the real one, never later.
    pub fn contact(&mut self, connected: bool, now: UnixMs) -> Result<(), StoreError> {
        let Some(mut c) = self.contact else {
            return Ok(());
        };
        let was = c.connected;
        c.connected = connected;
        if connected && !was {
            self.end_outage(c.last, now)?;
        }
        if connected || was {
            // The clock as it reads now, not the latest ever seen: a contact time saved while
            // the clock ran ahead would otherwise keep the offline limit off until that date.
            c.last = Some(now);
        }
        let due = c
            .persisted
            .is_none_or(|p| (now - p).abs() >= CONTACT_PERSIST_MS)
            || (was && !connected);
        if let (true, Some(last)) = (due && c.last != c.persisted, c.last) {
            self.relaxed(|conn| {
                let tx = write(conn)?;
                set_state(&tx, "last_contact", &last.to_string())?;
                tx.commit()?;
                Ok(())
            })?;
            c.persisted = Some(last);
        }
        self.contact = Some(c);
        Ok(())
    }

    /// Contact is back: the time without it, and what was decided meanwhile, becomes
    /// `last_offline` and the count starts over, in one transaction. A start is an outage
    /// too (since the last contact persisted before it), unless the gate never had contact
    /// and decided nothing: a new gate's first connection.
    fn end_outage(&mut self, since: Option<UnixMs>, now: UnixMs) -> Result<(), StoreError> {
        if since.is_none() && self.offline_counts == OfflineCounts::default() {
            return Ok(());
        }
        let outage = Outage {
            since,
            until: now,
            counts: self.offline_counts,
        };
        let tx = write(&mut self.conn)?;
        set_state(&tx, LAST_OFFLINE, &to_json(&outage)?)?;
        set_state(&tx, OFFLINE_COUNTS, &to_json(&OfflineCounts::default())?)?;
        tx.commit()?;
        self.last_offline = Some(outage);
        self.offline_counts = OfflineCounts::default();
        Ok(())
    }

    /// The latest time without contact that has ended, for the status.
    pub fn last_offline(&self) -> Option<Outage> {
        self.last_offline
    }

    /// What has been decided since contact was lost (zero while in contact).
    pub fn offline_counts(&self) -> OfflineCounts {
        self.offline_counts
    }

    /// Since when the gate has had no contact with the centre; `None` while in contact or
    /// without a centre.
    pub fn offline_since(&self) -> Option<Option<UnixMs>> {
        self.contact.filter(|c| !c.connected).map(|c| c.last)
    }

    // ---- the other gates of the site ---------------------------------------------------------

    /// Learns from other gates' pass events, read from the broker: subjects' in/out state
    /// (anti-passback) and invitation entries used. An event already learned (its gate's seq
    /// at or below the last one learned) changes nothing, so the broker's redeliveries are
    /// harmless. A lower seq with a later id (UUIDv7 ids grow with time) is a gate that
    /// started its numbering over, a replaced box or database: it is learned, and raised as a
    /// `peer_seq_reset` alarm. Returns how many events were new. One transaction, not synced: what a power
    /// cut loses is learned again only if the broker sends it again; until then the gate
    /// judges on its own passes, as when it is cut off.
    pub fn learn(&mut self, events: &[PassEvent], now: UnixMs) -> Result<usize, StoreError> {
        let gate = self.gate.clone();
        let exit = self.policy.exit;
        let mut resets: Vec<(String, u64, u64)> = Vec::new();
        let learned = self.relaxed(|conn| {
            let tx = write(conn)?;
            let mut learned = 0;
            for e in events {
                // Hostile input: another site's, our own, or a seq SQLite cannot hold (it
                // would fail the whole batch) is skipped. That the event comes from the gate
                // it names is the link's check (the topic's gate).
                if e.site != gate.site || e.gate == gate.gate || e.seq > i64::MAX as u64 {
                    continue;
                }
                let last: Option<(u64, String)> = tx
                    .prepare_cached("SELECT seq, id FROM peer WHERE gate = ?1")?
                    .query_row([&e.gate], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((seq, id)) = &last
                    && e.seq <= *seq
                {
                    if e.id.as_str() <= id.as_str() {
                        continue;
                    }
                    resets.push((e.gate.clone(), *seq, e.seq));
                }
                tx.prepare_cached(
                    "INSERT INTO peer (gate, seq, id, at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (gate) DO UPDATE SET seq = excluded.seq, id = excluded.id,
                       at = excluded.at",
                )?
                .execute(params![e.gate, e.seq, e.id, now])?;
                learned += 1;
                if e.override_
                    .as_ref()
                    .is_some_and(|o| o.input == CLEAR_PASSBACK_ALL)
                {
                    // Only what was known when the peer cleared it: a pass after the clear
                    // (here or learned) stands.
                    if let Ok(at) = parse_ts(&e.ts) {
                        let at = at.min(now.saturating_add(PEER_SKEW_MS));
                        tx.prepare_cached("DELETE FROM passback WHERE at <= ?1")?
                            .execute([at])?;
                    }
                    continue;
                }
                let Some(subject) = &e.subject else { continue };
                let Ok(at) = parse_ts(&e.ts) else { continue };
                // A peer whose clock runs ahead must not plant a state that never resets and
                // that no later pass replaces.
                let at = at.min(now.saturating_add(PEER_SKEW_MS));
                if e.override_
                    .as_ref()
                    .is_some_and(|o| o.input == CLEAR_PASSBACK)
                {
                    tx.prepare_cached("DELETE FROM passback WHERE subject = ?1 AND at <= ?2")?
                        .execute(params![subject, at])?;
                    continue;
                }
                if !e.reason.moves_passback() {
                    continue;
                }
                set_passback(&tx, subject, e.direction, at, &e.gate, true)?;
                // Counted by this gate's rule: the site's gates share it.
                if e.reason == Reason::Visitor && exit.uses_entry(e.direction) {
                    use_entry(&tx, subject)?;
                }
            }
            tx.commit()?;
            Ok(learned)
        })?;
        for (peer, before, now_seq) in resets {
            let detail = format!(
                "gate `{peer}` numbers its events from {now_seq} again (it was at {before}): \
                 a replaced box or database; its events are learned from here on"
            );
            tracing::warn!("{detail}");
            self.record_alarm("peer_seq_reset", &peer, &detail, now)?;
        }
        Ok(learned)
    }

    /// The last event seq learned from each other gate.
    pub fn peers(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT gate, seq FROM peer ORDER BY gate")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// A subject's anti-passback state, as the next decision would read it.
    pub fn last_pass(&self, subject: &str) -> Result<Option<LastPass>, StoreError> {
        Ok(last_pass(&self.conn, subject)?)
    }

    /// A press of a lane's request button: decided by the core (mode, the lane's free exit)
    /// and recorded with no credential. `None` when the button does not release this lane
    /// direction (nothing is recorded). Committed before the caller drives the relay (G1).
    pub fn record_button(
        &mut self,
        lane: u16,
        direction: Direction,
        now: UnixMs,
    ) -> Result<Option<PassEvent>, StoreError> {
        let free = self
            .policy
            .lanes
            .get(&lane)
            .map_or(core::FreeExit::No, |l| l.free(direction));
        let Some(reason) = core::decide_button(self.mode, free) else {
            return Ok(None);
        };
        let draft = EventDraft::bare(lane, direction, reason);
        self.record_local(draft, now, |_| Ok(())).map(Some)
    }

    /// A later fact about a granted pass (docs/design.md: a new event with reason `passage` and a
    /// `ref` to the pass): the passage sensor counted someone (`passed` true), or the release
    /// ended with nobody through (false). In the second case `give_back` returns the
    /// invitation entry the pass used, in the same transaction.
    pub fn record_passage(
        &mut self,
        pass: &PassEvent,
        passed: bool,
        give_back: Option<&str>,
        now: UnixMs,
    ) -> Result<PassEvent, StoreError> {
        let draft = EventDraft::fact_of(pass, Some(passed), None);
        // Only a pass that used an entry gives one back (a visitor's exit uses none).
        let give_back = give_back.filter(|_| !passed && self.policy.uses_entry(pass.direction));
        self.record_local(draft, now, |tx| {
            if let Some(invitation) = give_back {
                tx.prepare_cached(
                    "UPDATE invitation_usage SET used = used - 1
                     WHERE invitation = ?1 AND used > 0",
                )?
                .execute([invitation])?;
            }
            Ok(())
        })
    }

    /// A face terminal's snapshot of a pass, as a thumbnail: kept (the oldest beyond `keep`
    /// are deleted, uploaded or not) and recorded as a later fact of the pass (reason
    /// `passage`, `ref` to it) whose `snapshot` names it: `snapshot/{pass id}`, the last part of
    /// the topic it is uploaded on.
    pub fn store_snapshot(
        &mut self,
        pass: &PassEvent,
        jpeg: &[u8],
        keep: u32,
        now: UnixMs,
    ) -> Result<PassEvent, StoreError> {
        let draft = EventDraft::fact_of(pass, None, Some(format!("snapshot/{}", pass.id)));
        self.record_local(draft, now, |tx| {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO snapshot (event_id, ts, jpeg, uploaded)
                 VALUES (?1, ?2, ?3, 0)",
            )?
            .execute(params![pass.id, now, jpeg])?;
            let gone = tx
                .prepare_cached(
                    "DELETE FROM snapshot WHERE event_id NOT IN
                     (SELECT event_id FROM snapshot ORDER BY ts DESC, event_id DESC LIMIT ?1)",
                )?
                .execute([keep])?;
            if gone > 0 {
                tracing::info!(deleted = gone, keep, "old snapshots deleted (retention)");
            }
            Ok(())
        })
    }

    /// Snapshots not uploaded yet, oldest first, leaving out `skip` (in flight).
    pub fn snapshots_to_upload(
        &self,
        skip: &[String],
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // Ids first: the images of those in flight are not read for nothing.
        let ids: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT event_id FROM snapshot WHERE uploaded = 0 ORDER BY ts, event_id",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut jpeg = self
            .conn
            .prepare_cached("SELECT jpeg FROM snapshot WHERE event_id = ?1")?;
        let mut out = Vec::new();
        for id in ids.into_iter().filter(|id| !skip.contains(id)).take(limit) {
            let bytes: Vec<u8> = jpeg.query_row([&id], |r| r.get(0))?;
            out.push((id, bytes));
        }
        Ok(out)
    }

    /// The broker has taken this snapshot.
    pub fn snapshot_uploaded(&self, event_id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE snapshot SET uploaded = 1 WHERE event_id = ?1")?
            .execute([event_id])?;
        Ok(())
    }

    /// Someone went through a lane with no grant waiting, while the gate's mode held it open
    /// (`reason` `hold_open` or `emergency_release`): recorded, with no credential.
    pub fn record_free_passage(
        &mut self,
        lane: u16,
        direction: Direction,
        reason: core::Reason,
        now: UnixMs,
    ) -> Result<PassEvent, StoreError> {
        let draft = EventDraft {
            passed: Some(true),
            ..EventDraft::bare(lane, direction, reason)
        };
        self.record_local(draft, now, |_| Ok(()))
    }

    /// A guard's override: forgets `subject`'s anti-passback state, and records it as an
    /// override event naming the subject (G8), which the other gates of the site learn from.
    pub fn clear_passback(
        &mut self,
        subject: &str,
        override_: Override,
        stamp: Option<&Stamp>,
        now: UnixMs,
    ) -> Result<Result<PassEvent, Refusal>, StoreError> {
        let draft = EventDraft {
            subject: Some(subject.to_string()),
            override_: Some(override_),
            flags: vec![NO_RELEASE.to_string()],
            ..EventDraft::bare(0, Direction::In, Reason::OverrideRemote)
        };
        if !knows_subject(&self.conn, subject)? {
            return Ok(Err(Refusal::UnknownSubject(format!(
                "`{}` is in no staff entry or invitation in force and has no anti-passback \
                 state here; nothing was cleared",
                bounded(subject, MAX_ECHO_BYTES)
            ))));
        }
        self.record_event(draft, stamp, now, |tx| {
            tx.prepare_cached("DELETE FROM passback WHERE subject = ?1")?
                .execute([subject])?;
            Ok(())
        })
    }

    /// A guard's override after a drill: forgets every subject's anti-passback state, and
    /// records it as an override event without a subject, which the other gates learn from.
    pub fn clear_passback_all(
        &mut self,
        override_: Override,
        stamp: Option<&Stamp>,
        now: UnixMs,
    ) -> Result<Result<(PassEvent, usize), Refusal>, StoreError> {
        let draft = EventDraft {
            override_: Some(override_),
            flags: vec![NO_RELEASE.to_string()],
            ..EventDraft::bare(0, Direction::In, Reason::OverrideRemote)
        };
        let mut cleared = 0;
        let event = self.record_event(draft, stamp, now, |tx| {
            cleared = tx.prepare_cached("DELETE FROM passback")?.execute([])?;
            Ok(())
        })?;
        Ok(event.map(|e| (e, cleared)))
    }

    /// Used entries of an invitation (for tests and status).
    pub fn invitation_used(&self, invitation: &str) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT used FROM invitation_usage WHERE invitation = ?1",
                [invitation],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }
}

// ---- statements run inside a transaction ---------------------------------------------------

/// Makes `conn` wait up to 5 s for a lock another connection holds (the checkpoint thread's
/// RESTART holds the write lock while it copies and syncs), retrying every 100 µs. SQLite's
/// own busy timeout sleeps in growing steps, up to 100 ms at a time: a pass could sleep 50 ms
/// for a lock freed after 2.
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

/// The fields of an event that the caller decides; id, seq and ts are the store's.
#[derive(Clone, Debug)]
struct EventDraft {
    pub lane: u16,
    pub direction: Direction,
    pub credential: Option<Credential>,
    pub subject: Option<String>,
    pub reason: core::Reason,
    pub override_: Option<Override>,
    pub flags: Vec<String>,
    /// A later fact about a pass: whether someone went through, and the pass it is about.
    pub passed: Option<bool>,
    pub ref_: Option<String>,
    pub snapshot: Option<String>,
    /// When the credential was first seen, if it could have waited before this decision.
    pub seen_at: Option<UnixMs>,
}

impl EventDraft {
    /// An event of a lane with no credential, subject or override.
    fn bare(lane: u16, direction: Direction, reason: core::Reason) -> EventDraft {
        EventDraft {
            lane,
            direction,
            credential: None,
            subject: None,
            reason,
            override_: None,
            flags: Vec::new(),
            passed: None,
            ref_: None,
            snapshot: None,
            seen_at: None,
        }
    }

    /// A later fact about `pass` (docs/design.md): reason `passage`, `ref` to it, the same lane,
    /// direction, credential and subject.
    fn fact_of(pass: &PassEvent, passed: Option<bool>, snapshot: Option<String>) -> EventDraft {
        EventDraft {
            lane: pass.lane,
            direction: pass.direction,
            credential: pass.credential.as_ref().map(|c| Credential {
                kind: c.kind,
                id: c.id.clone(),
                score: c.score,
            }),
            subject: pass.subject.clone(),
            reason: core::Reason::Passage,
            override_: None,
            flags: Vec::new(),
            passed,
            ref_: Some(pass.id.clone()),
            snapshot,
            seen_at: None,
        }
    }
}

/// `state` keys of the outage report (item `last_offline` of the status).
const OFFLINE_COUNTS: &str = "offline_counts";
const LAST_OFFLINE: &str = "last_offline";

impl OfflineCounts {
    fn count(&mut self, reason: Reason) {
        if reason.is_granted() {
            self.granted += 1;
        } else {
            self.denied += 1;
            if reason == Reason::OfflineLimit {
                self.offline_limit += 1;
            }
        }
    }
}

fn to_json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// The `override.input` of the event that records a `clear_passback` override.
pub const CLEAR_PASSBACK: &str = "clear_passback";
/// The `override.input` of the event that records a `clear_passback_all` override.
pub const CLEAR_PASSBACK_ALL: &str = "clear_passback_all";

/// Whether `subject` is a staff entry or an invitation in force, or has an anti-passback
/// state here (learned from a peer, or left by an entry since removed).
fn knows_subject(conn: &Connection, subject: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM staff WHERE subject = ?1
                          AND gen = (SELECT gen FROM list_version WHERE list = 'staff'))
             OR EXISTS (SELECT 1 FROM invitation WHERE invitation = ?1
                          AND gen = (SELECT gen FROM list_version WHERE list = 'visitors'))
             OR EXISTS (SELECT 1 FROM passback WHERE subject = ?1)",
    )?
    .query_row([subject], |r| r.get(0))
}

/// What a decision is judged under, besides the credential and its entries.
struct Rules<'a> {
    gate: &'a GateId,
    policy: &'a Policy,
    mode: Mode,
    calendar: &'a Calendar,
    clock: ClockState,
    offline_ms: Option<i64>,
    /// How long the credential waited before this decision, judged as late as possible.
    swipe_age: Option<core::SwipeAge>,
    /// The deny list or the calendar was lost to a damaged store (`lists_incomplete`).
    lists_incomplete: bool,
}

/// Whether a salvage lost the deny list or the calendar and its snapshot has not come: the
/// core then grants nothing that needs the lists (`Lookups::incomplete`).
fn lists_incomplete(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT count(*) FROM list_version WHERE lost = 1 AND list IN ('deny', 'calendar')",
    )?
    .query_row([], |r| r.get::<_, i64>(0))
    .map(|n| n > 0)
}

fn offline_ms(contact: Option<Contact>, now: UnixMs) -> Option<i64> {
    match contact {
        None => None,
        Some(c) if c.connected => None,
        // A last contact later than now cannot be judged: offline since ever (fail closed).
        Some(c) => Some(
            c.last
                .filter(|l| *l <= now)
                .map_or(i64::MAX, |l| now.saturating_sub(l)),
        ),
    }
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

/// `state` keys of open device faults: this prefix and the device's name.
const DEVICE_FAULT_KEY: &str = "device_fault/";
/// Just past every key with that prefix ('/' + 1 = '0').
const DEVICE_FAULT_END: &str = "device_fault0";

fn set_state(tx: &Transaction, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}

/// How far ahead of this gate's clock a peer's event time is believed.
const PEER_SKEW_MS: i64 = 60_000;

/// Records a subject's pass for anti-passback. A pass at this gate always replaces what was
/// known, whatever the times say (the gates' clocks differ, and this one may have been reset);
/// one learned from a peer only if it is not older than what is known.
fn set_passback(
    tx: &Transaction,
    subject: &str,
    d: Direction,
    at: UnixMs,
    gate: &str,
    learned: bool,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO passback (subject, direction, at, gate) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (subject) DO UPDATE SET direction = excluded.direction,
           at = excluded.at, gate = excluded.gate
         WHERE NOT ?5 OR excluded.at >= passback.at",
    )?
    .execute(params![subject, d.as_str(), at, gate, learned])?;
    Ok(())
}

fn use_entry(tx: &Transaction, invitation: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO invitation_usage (invitation, used) VALUES (?1, 1)
         ON CONFLICT (invitation) DO UPDATE SET used = used + 1",
    )?
    .execute([invitation])?;
    Ok(())
}

fn record_pass(
    tx: &Transaction,
    rules: &Rules,
    factors: &mut std::collections::HashMap<u16, FirstFactor>,
    input: &PassInput,
) -> Result<PassOutcome, StoreError> {
    let gate = rules.gate;
    let cred = &input.credential;
    if let Some(pos) = &input.from {
        let seen: Option<(i64, String, String)> = tx
            .prepare_cached("SELECT head_seq, kind, cred_id FROM reader_head WHERE reader = ?1")?
            .query_row([&pos.reader], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        // The credential must match too: a reader that rebooted and restarted its numbering
        // must not have a new pass swallowed as a duplicate.
        if seen.is_some_and(|(s, k, id)| {
            s == i64::from(pos.head_seq) && k == cred.kind.as_str() && id == cred.id
        }) {
            return Ok(PassOutcome::AlreadyRecorded);
        }
    }
    let verdict = decide(
        tx,
        rules,
        factors.get(&input.lane),
        input.lane,
        input.direction,
        cred,
        input.now,
    )?;
    if let Some(inv) = &verdict.consumes_entry {
        use_entry(tx, inv)?;
    }
    if rules.policy.passback.mode != PassbackMode::Off
        && let Some(subject) = verdict.moves()
    {
        set_passback(tx, subject, input.direction, input.now, &gate.gate, false)?;
    }
    match &verdict.factor {
        FactorChange::Keep => {}
        FactorChange::Set(f) => {
            factors.insert(input.lane, f.clone());
        }
        FactorChange::Clear => {
            factors.remove(&input.lane);
        }
    }
    let flags = if verdict.passback_flag {
        vec!["anti_passback".to_string()]
    } else {
        Vec::new()
    };
    let event = insert_event(
        tx,
        gate,
        EventDraft {
            lane: input.lane,
            direction: input.direction,
            credential: Some(cred.clone()),
            subject: verdict.subject.clone(),
            reason: verdict.reason,
            override_: None,
            flags,
            passed: None,
            ref_: None,
            snapshot: None,
            seen_at: input.seen.map(|s| s.at),
        },
        input.now,
    )?;
    if let Some(pos) = &input.from {
        tx.prepare_cached(
            "INSERT INTO reader_head (reader, head_seq, kind, cred_id, event_id)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (reader) DO UPDATE SET head_seq = excluded.head_seq,
               kind = excluded.kind, cred_id = excluded.cred_id, event_id = excluded.event_id",
        )?
        .execute(params![
            pos.reader,
            pos.head_seq,
            cred.kind.as_str(),
            cred.id,
            event.id
        ])?;
    }
    Ok(PassOutcome::Recorded { verdict, event })
}

/// Refuses an expired command, or a nonce seen before; remembers a new nonce until its command
/// expires.
///
/// Time here is the command clock: the latest time any command was judged at, which never goes
/// back. A Pi has no real-time clock and its time sync is not authenticated; if the clock were
/// set back, a command whose nonce had been forgotten would look unexpired again and could be
/// replayed. Judged against the command clock it stays expired.
fn claim_nonce(
    tx: &Transaction,
    stamp: &Stamp,
    now: UnixMs,
    judge: Judge,
) -> rusqlite::Result<Result<(), Refusal>> {
    let (nonce, expires_at) = (stamp.nonce.as_str(), stamp.expires_at);
    let latest = state_ms(tx, "command_clock")?.unwrap_or(0);
    let at = now.max(latest);
    let judged = match judge {
        Judge::CommandClock => at,
        Judge::OwnClock => now,
    };
    if judged > expires_at {
        let behind = if latest > now && judge == Judge::CommandClock {
            format!(
                "; the gate's clock reads {} but it has judged commands at {} before, and time \
                 never goes back for commands. If its clock ran ahead by mistake and is right \
                 now, an admin attests it: gatectl cmd attest-time (a lockdown is taken \
                 meanwhile)",
                format_ts(now),
                format_ts(latest)
            )
        } else {
            String::new()
        };
        return Ok(Err(Refusal::Expired(format!(
            "expired at {}, it is now {}{behind}",
            format_ts(expires_at),
            format_ts(judged)
        ))));
    }
    // While the clock ran ahead, nonces of commands still valid in real time may have been
    // forgotten: a command issued before the clock was last attested could be replayed.
    if judge == Judge::CommandClock
        && let Some(attested) = state_ms(tx, "command_floor")?
        && stamp.issued_at < attested
    {
        return Ok(Err(Refusal::Stale(format!(
            "issued at {}, before this gate's clock was attested, or its damaged store \
             salvaged, at {}: a command from before that is not taken (its nonce may have been \
             forgotten while the clock ran ahead, or lost with the damage); send it again",
            format_ts(stamp.issued_at),
            format_ts(attested)
        ))));
    }
    // A command from the future (beyond the skew the clocks may have) would otherwise be valid
    // until then, whatever its lifetime. Judged against the command clock too, so that a gate
    // booted with its clock behind still takes commands once it has judged a later one.
    if stamp.issued_at > at.saturating_add(MAX_COMMAND_SKEW_MS) {
        return Ok(Err(Refusal::NotYetValid(format!(
            "issued at {}, but it is now {} here (more than {} min ahead: check the clocks)",
            format_ts(stamp.issued_at),
            format_ts(at),
            MAX_COMMAND_SKEW_MS / 60_000
        ))));
    }
    tx.prepare_cached(
        "INSERT INTO state (key, value) VALUES ('command_clock', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([at.to_string()])?;
    // Forgotten only once the gate's own clock is past them too: a lockdown is judged on that
    // clock, and a command clock that ran ahead must not make nonces forgotten early.
    tx.prepare_cached("DELETE FROM command_nonce WHERE expires_at < ?1")?
        .execute([now])?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO command_nonce (nonce, expires_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?
        .execute(params![nonce, expires_at])?;
    if inserted == 0 {
        return Ok(Err(Refusal::Replayed(format!(
            "nonce `{nonce}` was used before; a command is carried out once"
        ))));
    }
    Ok(Ok(()))
}

/// An attestation vouches for the gate's clock only if it reads what the admin's did, within
/// the skew commands allow, and the attestation is not past its own expiry on it.
fn check_attested_time(stamp: &Stamp, now: UnixMs) -> Result<(), Refusal> {
    let fix = "an attestation vouches for the clock as it reads, it does not set it: fix time \
               sync (or set the clock) first, then attest";
    if stamp.issued_at > now.saturating_add(MAX_COMMAND_SKEW_MS) {
        return Err(Refusal::NotYetValid(format!(
            "attested time {}, but this gate's clock reads {} (more than {} min behind); {fix}",
            format_ts(stamp.issued_at),
            format_ts(now),
            MAX_COMMAND_SKEW_MS / 60_000
        )));
    }
    if now > stamp.expires_at || stamp.expires_at - stamp.issued_at > MAX_ATTEST_LIFETIME_MS {
        return Err(Refusal::Expired(format!(
            "attested time {} (valid until {}), but this gate's clock reads {}; an attestation \
             is valid for at most {} min; {fix}",
            format_ts(stamp.issued_at),
            format_ts(stamp.expires_at),
            format_ts(now),
            MAX_ATTEST_LIFETIME_MS / 60_000
        )));
    }
    Ok(())
}

/// The clock reads earlier than what this gate has already seen (`Db::clock_behind`).
#[derive(Clone, Debug, PartialEq)]
pub struct Behind {
    /// This gate's id, for the command that recovers it.
    pub gate: String,
    /// The latest event recorded with a trusted clock, if the clock reads before it.
    pub event: Option<UnixMs>,
    /// The command clock, if the clock reads before it.
    pub command: Option<UnixMs>,
}

/// A time kept in `state`, in Unix ms.
fn state_ms(tx: &Transaction, key: &str) -> rusqlite::Result<Option<UnixMs>> {
    let v: Option<String> = tx
        .prepare_cached("SELECT value FROM state WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()))
}

fn next_seq(tx: &Transaction, stream: Stream) -> rusqlite::Result<u64> {
    tx.prepare_cached("UPDATE seq_counter SET last = last + 1 WHERE stream = ?1 RETURNING last")?
        .query_row([stream.as_str()], |r| r.get(0))
}

fn insert_outbox(
    tx: &Transaction,
    stream: Stream,
    seq: u64,
    id: &str,
    now: UnixMs,
    payload: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO outbox (stream, seq, id, ts, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![stream.as_str(), seq, id, now, payload])?;
    Ok(())
}

fn insert_event(
    tx: &Transaction,
    gate: &GateId,
    d: EventDraft,
    now: UnixMs,
) -> Result<PassEvent, StoreError> {
    let seq = next_seq(tx, Stream::Event)?;
    let event = PassEvent {
        id: Uuid::now_v7().to_string(),
        seq,
        site: gate.site.clone(),
        gate: gate.gate.clone(),
        lane: d.lane,
        direction: d.direction,
        ts: format_ts(now),
        credential: d.credential.map(|c| CredentialJson {
            kind: c.kind,
            id: c.id,
            score: c.score,
        }),
        subject: d.subject,
        decision: d.reason.decision(),
        reason: d.reason,
        override_: d.override_,
        passed: d.passed,
        snapshot: d.snapshot,
        ref_: d.ref_,
        flags: d.flags,
        seen_at: d.seen_at.map(format_ts),
    };
    let payload = serde_json::to_string(&event).map_err(|e| StoreError::Invalid(e.to_string()))?;
    insert_outbox(tx, Stream::Event, seq, &event.id, now, &payload)?;
    Ok(event)
}

pub(super) fn insert_alarm(
    tx: &Transaction,
    gate: &GateId,
    alarm: &str,
    source: &str,
    detail: &str,
    now: UnixMs,
) -> Result<Alarm, StoreError> {
    let seq = next_seq(tx, Stream::Alarm)?;
    let a = Alarm {
        id: Uuid::now_v7().to_string(),
        seq,
        site: gate.site.clone(),
        gate: gate.gate.clone(),
        ts: format_ts(now),
        alarm: alarm.to_string(),
        source: source.to_string(),
        detail: detail.to_string(),
    };
    let payload = serde_json::to_string(&a).map_err(|e| StoreError::Invalid(e.to_string()))?;
    insert_outbox(tx, Stream::Alarm, seq, &a.id, now, &payload)?;
    Ok(a)
}

/// How long one step of a list apply or cleanup holds the store at most. A step also ends as
/// soon as a pass is waiting (`Store::step_limit`), so that a pass waits for one entry and a
/// commit, not for the step.
pub const LIST_STEP: Duration = Duration::from_millis(2);

/// Whether the generation written to is new, so that no entry needs replacing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fresh {
    Yes,
    No,
}

/// Generations other than the one in force: older ones (replaced, to clean up) or newer ones
/// (written by an apply that has not come, or never will come, into force).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generations {
    Stale,
    Unfinished,
}

/// Where a snapshot apply stands after its first step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotStep {
    AlreadyInForce { version: u64 },
    Write { generation: i64 },
}

struct InForce {
    version: u64,
    generation: i64,
    /// A salvage could not read the list's rows (`salvage.rs`): none are held, and `version`
    /// is the one they were of.
    lost: bool,
}

fn in_force(conn: &Connection, list: ListName) -> rusqlite::Result<InForce> {
    conn.prepare_cached("SELECT version, gen, lost FROM list_version WHERE list = ?1")?
        .query_row([list.as_str()], |r| {
            Ok(InForce {
                version: r.get(0)?,
                generation: r.get(1)?,
                lost: r.get(2)?,
            })
        })
}

/// `Ok(())` when `version` is newer than the one in force; otherwise the answer to give:
/// the same version again is a no-op (the retained snapshot on reconnect), an older one is
/// refused as stale. A list a salvage lost takes its own version again: anti-rollback still
/// refuses anything older than what the gate held.
fn check_newer(
    list: ListName,
    version: u64,
    current: &InForce,
) -> Result<(), Result<Applied, Refusal>> {
    let current_version = current.version;
    if current.lost && version == current_version {
        return Ok(());
    }
    let current = current_version;
    if version == current {
        return Err(Ok(Applied::AlreadyInForce { version }));
    }
    if version < current {
        return Err(Err(Refusal::Stale(format!(
            "{} version {version} is older than {current} in force",
            list.as_str()
        ))));
    }
    Ok(())
}

/// A list's tables with their primary keys (they are WITHOUT ROWID).
pub(super) fn keyed_tables(list: ListName) -> &'static [(&'static str, &'static str)] {
    match list {
        ListName::Staff => &[
            ("staff", "gen, subject"),
            ("staff_credential", "kind, cred_id, gen"),
        ],
        ListName::Visitors => &[
            ("invitation", "gen, invitation"),
            ("invitation_credential", "kind, cred_id, gen"),
        ],
        ListName::Deny => &[("deny", "kind, cred_id, gen")],
        ListName::Calendar => &[("calendar", "gen, date")],
    }
}

fn ts_opt(s: &Option<String>) -> Option<UnixMs> {
    // Already validated by the contract parser; an unparsable time cannot reach here.
    s.as_deref().and_then(|s| parse_ts(s).ok())
}

fn gates_json(gates: &[String]) -> String {
    serde_json::Value::from(gates.to_vec()).to_string()
}

fn remove_entry(
    tx: &Transaction,
    list: ListName,
    generation: i64,
    key: &str,
) -> rusqlite::Result<()> {
    match list {
        ListName::Staff => {
            tx.execute(
                "DELETE FROM staff WHERE gen = ?1 AND subject = ?2",
                params![generation, key],
            )?;
            tx.execute(
                "DELETE FROM staff_credential WHERE gen = ?1 AND subject = ?2",
                params![generation, key],
            )?;
        }
        ListName::Visitors => {
            tx.execute(
                "DELETE FROM invitation WHERE gen = ?1 AND invitation = ?2",
                params![generation, key],
            )?;
            tx.execute(
                "DELETE FROM invitation_credential WHERE gen = ?1 AND invitation = ?2",
                params![generation, key],
            )?;
        }
        ListName::Deny => {
            if let Some((kind, id)) = key.split_once(':') {
                tx.execute(
                    "DELETE FROM deny WHERE gen = ?1 AND kind = ?2 AND cred_id = ?3",
                    params![generation, kind, id],
                )?;
            }
        }
        ListName::Calendar => {
            tx.execute(
                "DELETE FROM calendar WHERE gen = ?1 AND date = ?2",
                params![generation, key],
            )?;
        }
    }
    Ok(())
}

/// Inserts or replaces `entries[range]` in generation `gen` (inserts only, into a `Fresh`
/// one). A credential already held by another entry is refused: one card must never open as
/// two people.
fn upsert_entries(
    tx: &Transaction,
    list: ListName,
    generation: i64,
    entries: &Entries,
    range: std::ops::Range<usize>,
    fresh: Fresh,
) -> Result<Result<(), Refusal>, StoreError> {
    match entries {
        Entries::Staff(v) => {
            let mut ins = tx.prepare_cached(
                "INSERT INTO staff (gen, subject, name, valid_from, valid_until, gates, schedule, grp,
                   lockdown_exempt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut cred = tx.prepare_cached(
                "INSERT INTO staff_credential (kind, cred_id, gen, subject) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in v.get(range).unwrap_or_default() {
                if fresh == Fresh::No {
                    remove_entry(tx, list, generation, &e.subject)?;
                }
                ins.execute(params![
                    generation,
                    e.subject,
                    e.name,
                    ts_opt(&e.valid_from),
                    ts_opt(&e.valid_until),
                    gates_json(&e.gates),
                    e.schedule,
                    e.group,
                    e.lockdown_exempt
                ])?;
                for c in &e.credentials {
                    if let Err(r) = insert_credential(&mut cred, c, generation, &e.subject)? {
                        return Ok(Err(r));
                    }
                }
            }
        }
        Entries::Visitors(v) => {
            let mut ins = tx.prepare_cached(
                "INSERT INTO invitation (gen, invitation, visitor, host, valid_from, valid_until,
                                         gates, max_entries, schedule)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut cred = tx.prepare_cached(
                "INSERT INTO invitation_credential (kind, cred_id, gen, invitation)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in v.get(range).unwrap_or_default() {
                if fresh == Fresh::No {
                    remove_entry(tx, list, generation, &e.invitation)?;
                }
                ins.execute(params![
                    generation,
                    e.invitation,
                    e.visitor,
                    e.host,
                    ts_opt(&e.valid_from),
                    ts_opt(&e.valid_until),
                    gates_json(&e.gates),
                    e.max_entries,
                    e.schedule
                ])?;
                for c in &e.credentials {
                    if let Err(r) = insert_credential(&mut cred, c, generation, &e.invitation)? {
                        return Ok(Err(r));
                    }
                }
            }
        }
        Entries::Deny(v) => {
            let mut ins = tx.prepare_cached(
                "INSERT INTO deny (kind, cred_id, gen, reason) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, cred_id, gen) DO UPDATE SET reason = excluded.reason",
            )?;
            for e in v.get(range).unwrap_or_default() {
                ins.execute(params![e.kind.as_str(), e.id, generation, e.reason])?;
            }
        }
        Entries::Calendar(v) => {
            let mut ins = tx.prepare_cached(
                "INSERT INTO calendar (gen, date, name, hours, schedules) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (gen, date) DO UPDATE SET name = excluded.name, hours = excluded.hours,
                                                       schedules = excluded.schedules",
            )?;
            for e in v.get(range).unwrap_or_default() {
                let hours = serde_json::Value::from(e.hours.clone()).to_string();
                let schedules = e
                    .schedules
                    .as_ref()
                    .map(|s| serde_json::Value::from(s.clone()).to_string());
                ins.execute(params![generation, e.date, e.name, hours, schedules])?;
            }
        }
    }
    Ok(Ok(()))
}

fn insert_credential(
    st: &mut rusqlite::CachedStatement<'_>,
    c: &CredentialRef,
    generation: i64,
    owner: &str,
) -> Result<Result<(), Refusal>, StoreError> {
    match st.execute(params![c.kind.as_str(), c.id, generation, owner]) {
        Ok(_) => Ok(Ok(())),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Ok(Err(Refusal::Malformed(format!(
                "credential {}:{} of `{owner}` is already held by another entry",
                c.kind.as_str(),
                c.id
            ))))
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_gates(s: String) -> Vec<String> {
    // Written by `gates_json` from validated input; a corrupt value grants nowhere.
    serde_json::from_str(&s).unwrap_or_default()
}

/// The calendar in force. Rows were validated by the contract parser; one that no longer
/// parses is skipped with an error in the log rather than closing or opening anything.
fn load_calendar(conn: &Connection) -> Result<Calendar, StoreError> {
    let mut st = conn.prepare(
        "SELECT date, hours, schedules FROM calendar
         WHERE gen = (SELECT gen FROM list_version WHERE list = 'calendar')",
    )?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut cal = Calendar::default();
    for (date, hours, schedules) in rows {
        let spans: Option<Vec<Span>> = serde_json::from_str::<Vec<String>>(&hours)
            .ok()
            .and_then(|h| h.iter().map(|s| Span::parse(s).ok()).collect());
        // `Some(None)`: the date overrides every schedule; `None`: the row is corrupt.
        let names = match &schedules {
            None => Some(None),
            Some(s) => serde_json::from_str::<std::collections::BTreeSet<String>>(s)
                .ok()
                .map(Some),
        };
        match (parse_date(&date), spans, names) {
            (Ok(d), Some(hours), Some(schedules)) => {
                cal.days.insert(d, Exception { hours, schedules });
            }
            _ => tracing::error!(
                date,
                hours,
                schedules,
                "store: calendar row does not parse; skipped"
            ),
        }
    }
    Ok(cal)
}

/// The decision on one credential: the store lookup, then the pure core.
fn decide(
    conn: &Connection,
    rules: &Rules,
    first_factor: Option<&FirstFactor>,
    lane: u16,
    direction: Direction,
    cred: &Credential,
    now: UnixMs,
) -> rusqlite::Result<Verdict> {
    let passback = rules.policy.passback.mode != PassbackMode::Off;
    let mut lookups = lookup(conn, cred.kind, &cred.id, passback)?;
    lookups.incomplete = rules.lists_incomplete;
    let ctx = Context {
        gate: &rules.gate.gate,
        lane,
        direction,
        mode: rules.mode,
        now,
        clock: rules.clock,
        offline_ms: rules.offline_ms,
        calendar: rules.calendar,
        first_factor,
        swipe_age: rules.swipe_age,
    };
    Ok(core::decide(cred, &lookups, &ctx, rules.policy))
}

fn last_pass(conn: &Connection, subject: &str) -> rusqlite::Result<Option<LastPass>> {
    conn.prepare_cached("SELECT direction, at FROM passback WHERE subject = ?1")?
        .query_row([subject], |r| {
            let d: String = r.get(0)?;
            Ok(LastPass {
                direction: if d == "out" {
                    Direction::Out
                } else {
                    Direction::In
                },
                at: r.get(1)?,
            })
        })
        .optional()
}

/// Each list is looked up in two queries of one table each, by primary key: the credential,
/// then its entry. As one JOIN, SQLite's plan depends on the bound values (its STAT4 build
/// marks the statement for re-preparing whenever they change), and every lookup paid for a
/// full parse and plan, about ten times the cost of the queries themselves.
fn lookup(
    conn: &Connection,
    kind: CredentialKind,
    id: &str,
    passback: bool,
) -> rusqlite::Result<Lookups> {
    let last = |subject: &str| {
        if passback {
            last_pass(conn, subject)
        } else {
            Ok(None)
        }
    };
    let k = kind.as_str();
    let denied = conn
        .prepare_cached(
            "SELECT coalesce(reason, '') FROM deny
             WHERE kind = ?1 AND cred_id = ?2
               AND gen = (SELECT gen FROM list_version WHERE list = 'deny')",
        )?
        .query_row([k, id], |r| r.get::<_, String>(0))
        .optional()?;
    let holder = conn
        .prepare_cached(
            "SELECT gen, subject FROM staff_credential
             WHERE kind = ?1 AND cred_id = ?2
               AND gen = (SELECT gen FROM list_version WHERE list = 'staff')",
        )?
        .query_row([k, id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    let staff = match holder {
        None => None,
        Some((generation, subject)) => {
            let last = last(&subject)?;
            conn.prepare_cached(
                "SELECT valid_from, valid_until, gates, schedule, grp, lockdown_exempt FROM staff
                 WHERE gen = ?1 AND subject = ?2",
            )?
            .query_row(params![generation, subject], |r| {
                Ok(StaffMatch {
                    subject: subject.clone(),
                    validity: Validity {
                        valid_from: r.get(0)?,
                        valid_until: r.get(1)?,
                        gates: parse_gates(r.get(2)?),
                    },
                    schedule: r.get(3)?,
                    group: r.get(4)?,
                    lockdown_exempt: r.get(5)?,
                    last,
                })
            })
            .optional()?
        }
    };
    let holder = conn
        .prepare_cached(
            "SELECT gen, invitation FROM invitation_credential
             WHERE kind = ?1 AND cred_id = ?2
               AND gen = (SELECT gen FROM list_version WHERE list = 'visitors')",
        )?
        .query_row([k, id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    let invitation = match holder {
        None => None,
        Some((generation, invitation)) => {
            let used: u32 = conn
                .prepare_cached("SELECT used FROM invitation_usage WHERE invitation = ?1")?
                .query_row([&invitation], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let last = last(&invitation)?;
            conn.prepare_cached(
                "SELECT valid_from, valid_until, gates, max_entries, schedule FROM invitation
                 WHERE gen = ?1 AND invitation = ?2",
            )?
            .query_row(params![generation, invitation], |r| {
                Ok(InvitationMatch {
                    invitation: invitation.clone(),
                    validity: Validity {
                        valid_from: r.get(0)?,
                        valid_until: r.get(1)?,
                        gates: parse_gates(r.get(2)?),
                    },
                    max_entries: r.get(3)?,
                    used,
                    schedule: r.get(4)?,
                    last,
                })
            })
            .optional()?
        }
    };
    Ok(Lookups {
        denied,
        staff,
        invitation,
        incomplete: false,
    })
}
