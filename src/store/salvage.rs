//! Salvage of a damaged store at start (issue 22, item 3). Refusing a damaged store closed
//! the gate for ever; starting it as a new one would number events from 1 again. Instead:
//!
//! 1. the damaged file is copied aside whole, with its `-wal`, as
//!    `<db>.damaged-<UTC time>` (0600, never over an existing file): whatever a later tool can
//!    still read from it (events the outbox held) is kept;
//! 2. a new database is made under `<db>.new` and every table that reads cleanly is carried
//!    over (the outbox, the seq counters, the state, passback, nonces, ...);
//! 3. a list whose tables cannot be read whole is left empty and marked lost: it keeps the
//!    version it held, so that the retained snapshot of that version is taken again and an
//!    older one is still refused (anti-rollback);
//! 4. a `store_salvaged` alarm, in the new outbox, names the copy and what was lost;
//! 5. the new database is renamed into place, like a new store.
//!
//! Without its seq counters or its state (the gate it was made for, the mode) the gate cannot
//! go on as itself: that store is refused `StoreError::Corrupt`, as before, and left as it is.

use std::fmt::Write as _;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _};

use super::db::{
    GateId, insert_alarm, is_corrupt, keyed_tables, made_for, same_gate, wait_when_busy,
};
use super::{StoreError, files, schema};
use crate::core::UnixMs;
use gated_contract::{ListName, MAX_DETAIL_BYTES, bounded};

/// Tables without which the gate cannot go on as itself. Without `list_version`, the version
/// each list held is unknown, and any older signed snapshot would be taken (anti-rollback).
const CORE: [(&str, &str); 3] = [
    ("seq_counter", "the event and alarm seq counters"),
    (
        "state",
        "the gate this store was made for, the mode and the clock floor",
    ),
    (
        "list_version",
        "the version of each list, which no older snapshot may replace",
    ),
];

/// Salvages the damaged store at `path` (its `damage` as `quick_check` found it) into a new
/// one in its place, or refuses it, leaving it as it was.
pub fn salvage(path: &Path, gate: &GateId, damage: &str, now: UnixMs) -> Result<(), StoreError> {
    let stamp = chrono::DateTime::from_timestamp_millis(now)
        .unwrap_or_default()
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    let aside = files::set_aside(path, &stamp)?;
    let new = files::new_path(path);
    let built = files::remove_new(&new)
        .and_then(|()| files::create_db(&new))
        .and_then(|()| rebuild(&new, &aside, path, gate, damage, now));
    // SQLite made an index of the log beside the copy to read it: not part of the copy.
    files::remove_shm(&aside);
    let lost = match built {
        Ok(lost) => lost,
        Err(e) => {
            // Refused: the store is left as it was, and nothing of the attempt stays.
            let _ = files::remove_new(&new);
            files::remove_aside(&aside);
            return Err(e);
        }
    };
    // The old log holds frames of the damaged file: beside the new one it would be replayed
    // into it. Its copy is aside, and from here until the new database is in place that copy
    // is the only one: the marker makes a start after a crash rebuild from it (`resume`).
    files::write_marker(path, &aside)?;
    files::remove_log(path)?;
    files::put_in_place(&new, path)?;
    files::remove_marker(path)?;
    tracing::error!(
        "store: {} was damaged ({damage}); it is copied aside to {} and salvaged: {lost}",
        path.display(),
        aside.display()
    );
    Ok(())
}

/// Finishes a salvage that a crash or power cut interrupted after the damaged store's log was
/// removed (`files::write_marker`): the new store is built again from the copy `aside`, which
/// holds the damaged store whole, and put in place. The file at `path` is not read: without
/// its log it may look sound and hold an older seq.
pub fn resume(path: &Path, gate: &GateId, aside: &Path, now: UnixMs) -> Result<(), StoreError> {
    let damage = format!(
        "a salvage from {} was interrupted; resumed",
        aside.display()
    );
    let new = files::new_path(path);
    files::remove_new(&new)?;
    files::create_db(&new)?;
    let lost = rebuild(&new, aside, path, gate, &damage, now)?;
    files::remove_shm(aside);
    files::remove_log(path)?;
    files::put_in_place(&new, path)?;
    files::remove_marker(path)?;
    tracing::error!("store: {}: {damage}: {lost}", path.display());
    Ok(())
}

/// What `salvage` would refuse, read without changing anything (for `gated check-config`).
pub fn check(path: &Path, gate: &GateId, damage: &str) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            source: e,
        })?;
    let refuse = |why: String| StoreError::Corrupt {
        path: path.display().to_string(),
        detail: format!("{damage}; {why}"),
    };
    for (table, holds) in CORE {
        let read: rusqlite::Result<Vec<String>> = conn
            .prepare(&format!("SELECT * FROM {table}"))
            .and_then(|mut q| q.query_map([], |r| r.get::<_, String>(0))?.collect());
        match read {
            Ok(_) => {}
            Err(e) if is_corrupt(&e) => {
                return Err(refuse(format!(
                    "its table {table} ({holds}) cannot be read: {e}"
                )));
            }
            Err(e) => return Err(StoreError::Sqlite(e)),
        }
    }
    match made_for(&conn) {
        Ok(Some(made)) => same_gate(path, &made, gate)?,
        Ok(None) => {}
        Err(e) => {
            return Err(refuse(format!(
                "the gate it was made for cannot be read: {e}"
            )));
        }
    }
    tracing::warn!(
        "store: {} is damaged ({damage}); `gated run` copies it aside and salvages it",
        path.display()
    );
    Ok(())
}

/// Rows of one stream the outbox lost: (stream, count, first seq, last seq).
type LostRows = (String, u64, u64, u64);

/// What a salvage could not carry over, for the alarm and the log.
#[derive(Default)]
struct Lost {
    /// Lists left empty, with the version they were of (`None`: unknown).
    lists: Vec<(ListName, Option<u64>)>,
    /// Other tables left empty.
    tables: Vec<String>,
    /// The outbox: `None` if kept; else per stream (count, first seq, last seq) as its index
    /// still tells, or why that is unknown.
    outbox: Option<Result<Vec<LostRows>, String>>,
    kept_outbox: u64,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lists.is_empty() && self.tables.is_empty() && self.outbox.is_none() {
            return write!(f, "nothing lost; {} outbox rows kept", self.kept_outbox);
        }
        let mut parts = Vec::new();
        for (list, version) in &self.lists {
            parts.push(match version {
                Some(v) => format!(
                    "list {} (version {v}): empty until its snapshot of version {v} or newer \
                     comes",
                    list.as_str()
                ),
                None => format!(
                    "list {} (version unknown): empty until its snapshot comes",
                    list.as_str()
                ),
            });
        }
        match &self.outbox {
            None => parts.push(format!("outbox kept ({} rows)", self.kept_outbox)),
            Some(Ok(streams)) if streams.is_empty() => {
                parts.push("outbox unreadable, it held no row".into())
            }
            Some(Ok(streams)) => {
                let lost: Vec<String> = streams
                    .iter()
                    .map(|(s, n, lo, hi)| format!("{n} rows, {s} seq {lo}..{hi}"))
                    .collect();
                parts.push(format!(
                    "outbox LOST: {} (not sent; in the copy aside; seq continues after them)",
                    lost.join(", ")
                ));
            }
            Some(Err(why)) => parts.push(format!(
                "outbox LOST, which rows unknown ({why}); in the copy aside; seq continues"
            )),
        }
        if !self.tables.is_empty() {
            let named: Vec<String> = self
                .tables
                .iter()
                .map(|t| match consequence(t) {
                    Some(c) => format!("{t} ({c})"),
                    None => t.clone(),
                })
                .collect();
            parts.push(format!("tables left empty: {}", named.join(", ")));
        }
        write!(f, "lost: {}", parts.join("; "))
    }
}

/// What losing a table other than a list or the outbox means at the gate, for the alarm.
fn consequence(table: &str) -> Option<&'static str> {
    Some(match table {
        "passback" => "anti-passback starts over: everyone's last pass is forgotten",
        "invitation_usage" => "invitation entries already used count again",
        "command_nonce" => {
            "commands issued before the salvage are refused stale: send again what is still wanted"
        }
        "reader_head" => "a swipe still queued in a reader may be decided once more",
        "peer" => "events of the other gates may be learned twice",
        "snapshot" => "face snapshots not yet uploaded are gone",
        _ => return None,
    })
}

/// Builds the new database at `new` from what reads cleanly in the copy `aside`, with the
/// `store_salvaged` alarm in its outbox; closed and checkpointed, ready to be renamed.
fn rebuild(
    new: &Path,
    aside: &Path,
    path: &Path,
    gate: &GateId,
    damage: &str,
    now: UnixMs,
) -> Result<Lost, StoreError> {
    let refuse = |why: String| StoreError::Corrupt {
        path: path.display().to_string(),
        detail: format!("{damage}; {why}"),
    };
    let mut conn = Connection::open(new).map_err(|e| StoreError::Open {
        path: new.display().to_string(),
        source: e,
    })?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Invalid(format!(
            "{}: journal_mode is {mode}, not wal",
            new.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    wait_when_busy(&mut conn)?;
    schema::migrate(&mut conn)?.map_err(StoreError::Invalid)?;
    // Read only: the copy aside stays as it was copied.
    conn.execute("ATTACH DATABASE ?1 AS old", [read_only_uri(aside)])?;
    let old_version: i64 = conn
        .query_row("PRAGMA old.user_version", [], |r| r.get(0))
        .map_err(|e| refuse(format!("its header cannot be read: {e}")))?;
    if schema::version(&conn)?.map_err(StoreError::Invalid)? < old_version as usize {
        return Err(StoreError::Invalid(format!(
            "{}: the damaged store has schema version {old_version}, newer than this gated \
             knows: salvage it with the gated that made it",
            path.display()
        )));
    }
    let old_tables: Vec<String> = conn
        .prepare("SELECT name FROM old.sqlite_master WHERE type = 'table'")
        .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| refuse(format!("its list of tables cannot be read: {e}")))?;
    let has = |t: &str| old_tables.iter().any(|o| o == t);

    // Which tables read whole, found before anything is written: a read that fails inside
    // the writing transaction left it failing every later write ("malformed").
    let mut unreadable = std::collections::HashMap::new();
    for table in &old_tables {
        if let Err(e) = read_whole(&conn, table)? {
            unreadable.insert(table.clone(), e);
        }
    }
    let readable = |t: &str| -> Result<(), String> {
        match unreadable.get(t) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    };

    let mut lost = Lost::default();
    let tx = conn.transaction()?;
    for (table, holds) in CORE {
        if !has(table) {
            return Err(refuse(format!(
                "it has no table {table} ({holds}): it cannot be salvaged as this gate"
            )));
        }
        if let Err(e) = readable(table) {
            return Err(refuse(format!(
                "its table {table} ({holds}) cannot be read ({e}): without it this gate \
                 cannot go on as itself"
            )));
        }
        copy(&tx, table, has(table))?;
    }
    if let Some(made) = made_for(&tx)? {
        same_gate(path, &made, gate)?;
    }

    // The outbox: what cannot be sent again from anywhere.
    match readable("outbox") {
        Ok(()) => {
            copy(&tx, "outbox", has("outbox"))?;
            lost.kept_outbox = tx.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
        }
        Err(e) => lost.outbox = Some(lost_outbox(&tx).map_err(|i| format!("{e}; {i}"))),
    }
    // Rowids only grow (the uplink's cursor); AUTOINCREMENT keeps its high mark here.
    if readable("sqlite_sequence").is_ok()
        && let Some(high) = tx
            .query_row(
                "SELECT seq FROM old.sqlite_sequence WHERE name = 'outbox'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
    {
        tx.execute("DELETE FROM sqlite_sequence WHERE name = 'outbox'", [])?;
        tx.execute(
            "INSERT INTO sqlite_sequence (name, seq)
             VALUES ('outbox', max(?1, (SELECT coalesce(max(rowid), 0) FROM outbox)))",
            [high],
        )?;
    }
    // Seq never goes back: past every seq issued, whatever was lost.
    if let Some(Ok(streams)) = &lost.outbox {
        for (stream, _, _, hi) in streams {
            tx.execute(
                "UPDATE seq_counter SET last = max(last, ?2) WHERE stream = ?1",
                rusqlite::params![stream, hi],
            )?;
        }
    }
    tx.execute(
        "UPDATE seq_counter SET last = max(last,
            coalesce((SELECT max(seq) FROM outbox WHERE outbox.stream = seq_counter.stream), 0))",
        [],
    )?;

    // The lists: each whole, or empty and marked lost at the version it held (`list_version`
    // is core: it was copied above).
    for list in ListName::ALL {
        if keyed_tables(list).iter().all(|(t, _)| readable(t).is_ok()) {
            for (table, _) in keyed_tables(list) {
                copy(&tx, table, has(table))?;
            }
            continue;
        }
        let version = tx.query_row(
            "SELECT version FROM list_version WHERE list = ?1",
            [list.as_str()],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE list_version SET lost = 1 WHERE list = ?1",
            [list.as_str()],
        )?;
        lost.lists.push((list, Some(version)));
    }
    // Nonces lost: a signed command not yet expired could be carried out again. Commands
    // issued before now are refused `stale` from here on (as after a time attestation);
    // the centre sends again what it still wants done.
    if readable("command_nonce").is_err() {
        tx.execute(
            "INSERT INTO state (key, value) VALUES ('command_floor', ?1)
             ON CONFLICT (key) DO UPDATE SET value = max(CAST(value AS INTEGER), ?1)",
            [now],
        )?;
    }

    // Everything else, table by table.
    let list_tables: Vec<&str> = ListName::ALL
        .into_iter()
        .flat_map(|l| keyed_tables(l).iter().map(|(t, _)| *t))
        .collect();
    let rest: Vec<String> = tx
        .prepare(
            "SELECT name FROM main.sqlite_master WHERE type = 'table'
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for table in rest {
        let done = ["seq_counter", "state", "outbox", "list_version"];
        if done.contains(&table.as_str()) || list_tables.contains(&table.as_str()) {
            continue;
        }
        if readable(&table).is_ok() {
            copy(&tx, &table, has(&table))?;
        } else {
            lost.tables.push(table);
        }
    }

    let mut detail = format!(
        "the store was damaged ({}); copied aside whole to {}",
        bounded(damage, 200),
        aside.display()
    );
    let _ = write!(detail, "; salvaged into a new store: {lost}");
    insert_alarm(
        &tx,
        gate,
        "store_salvaged",
        "store",
        &bounded(&detail, MAX_DETAIL_BYTES),
        now,
    )?;
    tx.commit()?;
    conn.execute("DETACH DATABASE old", [])?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    conn.close().map_err(|(_, e)| StoreError::Sqlite(e))?;
    Ok(lost)
}

/// Reads every row and column of a table of the old database: `Ok(Err(why))` when SQLite
/// finds it damaged. A table that reads whole here is copied whole (the same pages).
fn read_whole(conn: &Connection, table: &str) -> Result<Result<(), String>, StoreError> {
    let read = || -> rusqlite::Result<()> {
        let own = own_tree(conn, table)?;
        let mut q = conn.prepare(&format!("SELECT * FROM old.\"{table}\" {own}"))?;
        let n = q.column_count();
        let mut rows = q.query([])?;
        while let Some(row) = rows.next()? {
            for i in 0..n {
                row.get_ref(i)?; // a column on an overflow page is read only when asked for
            }
        }
        Ok(())
    };
    match read() {
        Ok(()) => Ok(Ok(())),
        Err(e) if is_corrupt(&e) => Ok(Err(e.to_string())),
        Err(e) => Err(StoreError::Sqlite(e)),
    }
}

/// The clause that makes a scan of `table` in the old database read the table's own tree,
/// not an index that covers its columns (which the planner prefers, being smaller): then a
/// damaged index loses nothing, since the new store builds its indexes again. `NOT INDEXED`
/// does that for a rowid table; a WITHOUT ROWID table is its primary key's index, named.
fn own_tree(conn: &Connection, table: &str) -> rusqlite::Result<String> {
    let pk: Option<String> = conn
        .prepare(&format!("PRAGMA old.index_list(\"{table}\")"))?
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(3)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .find(|(_, origin)| origin == "pk")
        .map(|(name, _)| name);
    let without_rowid: bool = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'old' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    Ok(match pk {
        Some(pk) if without_rowid => format!("INDEXED BY \"{pk}\""),
        _ => "NOT INDEXED".to_string(),
    })
}

/// Copies a table of the old database (read whole before) into the new. Columns are matched
/// by name: a store of an older schema has fewer, and the migrations gave the new one their
/// defaults.
fn copy(conn: &Connection, table: &str, in_old: bool) -> rusqlite::Result<()> {
    if !in_old {
        return Ok(()); // an older schema: nothing to carry
    }
    let columns = |schema: &str| -> rusqlite::Result<Vec<String>> {
        conn.prepare(&format!("PRAGMA {schema}.table_info(\"{table}\")"))?
            .query_map([], |r| r.get::<_, String>(1))?
            .collect()
    };
    let new = columns("main")?;
    let both: Vec<String> = columns("old")?
        .into_iter()
        .filter(|c| new.contains(c))
        .map(|c| format!("\"{c}\""))
        .collect();
    let both = both.join(", ");
    let own = own_tree(conn, table)?;
    // OR REPLACE: rows the migrations put in the new database (counters at 0, list versions
    // at 0) give way to the old ones.
    conn.execute_batch(&format!(
        "INSERT OR REPLACE INTO main.\"{table}\" ({both})
         SELECT {both} FROM old.\"{table}\" {own}"
    ))
}

/// What the unreadable outbox held, per stream, from its (stream, seq) index, which is a tree
/// of its own and may still read.
fn lost_outbox(tx: &Connection) -> Result<Vec<LostRows>, String> {
    let index: String = tx
        .query_row(
            "SELECT name FROM old.sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'
             AND name LIKE 'sqlite_autoindex_%'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| format!("its index cannot be read either: {e}"))?;
    tx.prepare(&format!(
        "SELECT stream, count(*), min(seq), max(seq) FROM old.outbox INDEXED BY \"{index}\"
         GROUP BY stream ORDER BY stream DESC"
    ))
    .and_then(|mut q| {
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect()
    })
    .map_err(|e| format!("its index cannot be read either: {e}"))
}

/// `file:` URI opening `path` read-only (`%`, `?` and `#` would end or escape the path).
fn read_only_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for c in path.display().to_string().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro");
    uri
}
