//! The lists: snapshots applied in steps into a new generation and switched in one commit,
//! deltas applied in place, the generations left behind cleaned up.

use super::*;

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

impl Db {
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
pub(in crate::store) fn keyed_tables(list: ListName) -> &'static [(&'static str, &'static str)] {
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

pub(super) fn parse_gates(s: String) -> Vec<String> {
    // Written by `gates_json` from validated input; a corrupt value grants nowhere.
    serde_json::from_str(&s).unwrap_or_default()
}

/// The calendar in force. Rows were validated by the contract parser; one that no longer
/// parses is skipped with an error in the log rather than closing or opening anything.
pub(super) fn load_calendar(conn: &Connection) -> Result<Calendar, StoreError> {
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
