//! Tests of a damaged or empty store: refused, salvaged at start, or found while running.

use super::*;

// ---- a damaged or empty store (issue 22, item 3) ---------------------------------------------

fn open_store(path: &std::path::Path) -> Result<Store, StoreError> {
    Store::open(path, gate(), Policy::default(), 1000)
}

/// A store that was truncated to nothing would start as a new gate (seq 1, mode reset): it is
/// refused by name, by `run` and by `check-config`. A store gated makes itself is never empty,
/// even while it is being made.
#[test]
fn an_empty_database_file_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    std::fs::File::create(&path).expect("empty file");
    let err = open_store(&path).err().expect("an empty store is refused");
    assert!(matches!(err, StoreError::Empty { .. }), "{err}");
    assert!(err.to_string().contains("is empty (0 bytes)"), "{err}");
    let err = Store::check(&path, &gate()).expect_err("check-config refuses it too");
    assert!(matches!(err, StoreError::Empty { .. }), "{err}");
    assert_eq!(
        std::fs::metadata(&path).expect("kept").len(),
        0,
        "left as it was"
    );

    let fresh = dir.path().join("new.db");
    drop(open_store(&fresh).expect("a new store opens"));
    assert!(std::fs::metadata(&fresh).expect("made").len() > 0);
    assert!(
        !files::new_path(&fresh).exists(),
        "nothing left under the new name"
    );
    Store::check(&fresh, &gate()).expect("and passes check-config");
}

/// Overwrites the root page of `table` with deterministic noise (no rng dependency): the
/// page's header and cells become garbage, as a random page written into the file would.
fn damage_page(path: &std::path::Path, table: &str) {
    damage_page_at(path, page_of(path, table));
}

/// Where `table`'s root page is in the database file: (page number, page size).
fn page_of(path: &std::path::Path, table: &str) -> (i64, i64) {
    {
        let conn = rusqlite::Connection::open(path).expect("open");
        let root = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .expect("the table's root page");
        let size = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page size");
        (root, size)
    }
}

/// Overwrites page `root` (of size `page_size`) with noise, not opening the database.
fn damage_page_at(path: &std::path::Path, (root, page_size): (i64, i64)) {
    let mut noise = vec![0u8; page_size as usize];
    let mut x: u32 = 0x9e37_79b9;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    use std::io::{Seek as _, SeekFrom, Write as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("db file");
    f.seek(SeekFrom::Start(((root - 1) * page_size) as u64))
        .expect("seek");
    f.write_all(&noise).expect("write page");
}

/// A store with a staff list (version 2, 400 cards), three passes of which the broker
/// acknowledged the first, and an alarm: closed, as a gate leaves it at shutdown.
fn store_with_history(path: &std::path::Path) {
    let mut db = Db::open(path, gate(), Policy::default(), 1000).expect("open db");
    let cards: Vec<(String, String)> = (0..400)
        .map(|i| (format!("subject-{i:04}"), format!("card-{i:06}")))
        .collect();
    let cards: Vec<(&str, &str)> = cards.iter().map(|(s, c)| (&**s, &**c)).collect();
    for v in [1, 2] {
        db.apply_snapshot(&staff_snapshot(v, &cards))
            .expect("db")
            .expect("applied");
    }
    for _ in 0..3 {
        assert_eq!(
            reason(&record_one(&mut db, pass("card-000007", None))),
            Reason::Staff
        );
    }
    let first = db.pending(0, 1).expect("pending")[0].rowid;
    db.acked(&[first]).expect("acked");
    db.record_alarm("device_fault", "reader-1", "no answer", NOW)
        .expect("alarm");
    db.close().expect("close");
}

/// The outbox rows of a store, as (stream, seq, payload), read with a connection of its own.
fn outbox_of(path: &std::path::Path) -> Vec<(String, i64, String)> {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut st = conn
        .prepare("SELECT stream, seq, payload FROM outbox ORDER BY rowid")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// The copies a salvage set aside beside `path`.
fn set_aside(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let name = format!(
        "{}.damaged-",
        path.file_name().expect("name").to_string_lossy()
    );
    let mut found: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .expect("name")
                .to_string_lossy()
                .starts_with(&name)
        })
        .collect();
    found.sort();
    found
}

/// One page of the staff table overwritten: the gate starts on a salvaged store instead of
/// refusing for ever. The damaged file is kept aside whole and private; the outbox, the seq
/// counters and the state come over; the staff list is left empty and waits for its snapshot:
/// the version it held is taken again, an older one still refused. A `store_salvaged` alarm
/// names the copy and what was lost.
#[tokio::test]
async fn a_damaged_staff_table_is_salvaged_and_the_outbox_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    store_with_history(&path);
    let outbox_before = outbox_of(&path);
    assert_eq!(outbox_before.len(), 3, "two events and an alarm wait");
    damage_page(&path, "staff");
    let before = std::fs::read(&path).expect("read");
    Store::check(&path, &gate()).expect("check-config accepts a store `run` can salvage");
    assert!(
        std::fs::read(&path).expect("read") == before,
        "check-config changes nothing"
    );

    let store = open_store(&path).expect("a damaged store is salvaged, not refused");
    let aside = set_aside(&path);
    // The database, and the log SQLite left beside it (empty: it was closed cleanly).
    assert_eq!(aside.len(), 2, "{aside:?}");
    assert!(aside[1].to_string_lossy().ends_with("-wal"), "{aside:?}");
    assert!(
        std::fs::read(&aside[0]).expect("read aside") == before,
        "the damaged file is kept aside whole"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&aside[0])
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the copy aside is private");
    assert!(!files::new_path(&path).exists(), "nothing left under .new");

    let (versions, pending) = store
        .call(|db| Ok((db.list_versions()?, db.pending(0, 100)?)))
        .await
        .expect("store");
    assert_eq!(versions.staff, 0, "the staff list is not held");
    let rows: Vec<(Stream, String)> = pending.into_iter().map(|r| (r.stream, r.payload)).collect();
    for (i, (_, _, payload)) in outbox_before.iter().enumerate() {
        assert_eq!(&rows[i].1, payload, "outbox row {i} kept as it was");
    }
    assert_eq!(rows.len(), 4, "the outbox and the salvage alarm: {rows:?}");
    let alarm: gated_contract::Alarm = serde_json::from_str(&rows[3].1).expect("alarm json");
    assert_eq!(alarm.alarm, "store_salvaged");
    assert_eq!(alarm.seq, 2, "the alarm seq continues");
    let aside_name = aside[0].display().to_string();
    assert!(alarm.detail.contains(&aside_name), "{}", alarm.detail);
    assert!(alarm.detail.contains("staff"), "{}", alarm.detail);

    // Fail closed until the list is back; the event seq continues.
    let o = store.pass(pass("card-000007", None)).await.expect("pass");
    assert_eq!(reason(&o), Reason::UnknownCredential);
    let PassOutcome::Recorded { event, .. } = o else {
        unreachable!()
    };
    assert_eq!(event.seq, 4, "event seq continues after 3");

    let cards = [("subject-0007", "card-000007")];
    let stale = store
        .apply_snapshot(staff_snapshot(1, &cards))
        .await
        .expect("store");
    assert!(matches!(stale, Err(Refusal::Stale(_))), "{stale:?}");
    // A delta on the version lost has no rows to change: it waits for the snapshot.
    let delta = parse_delta(
        ListName::Staff,
        br#"{"list":"staff","site":"hq","version":3,"base":2,"remove":["subject-0001"]}"#,
    )
    .expect("delta");
    let gap = store
        .call(move |db| db.apply_delta(&delta))
        .await
        .expect("store");
    assert_eq!(gap.expect_err("refused").code(), "version_gap");
    let again = store
        .apply_snapshot(staff_snapshot(2, &cards))
        .await
        .expect("store");
    assert_eq!(again, Ok(Applied::Applied { version: 2 }));
    let o = store.pass(pass("card-000007", None)).await.expect("pass");
    assert_eq!(reason(&o), Reason::Staff);
    let repeat = store
        .apply_snapshot(staff_snapshot(2, &cards))
        .await
        .expect("store");
    assert_eq!(repeat, Ok(Applied::AlreadyInForce { version: 2 }));
}

/// The outbox itself damaged: what it held cannot be sent, so the alarm says which seqs were
/// lost, and the next event continues past the highest ever issued (a gap, never a reuse).
#[tokio::test]
async fn a_damaged_outbox_is_named_in_the_alarm_and_seq_continues_past_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    store_with_history(&path);
    damage_page(&path, "outbox");
    let store = open_store(&path).expect("salvaged");
    let pending = store.call(|db| db.pending(0, 100)).await.expect("store");
    assert_eq!(pending.len(), 1, "only the salvage alarm: {pending:?}");
    let alarm: gated_contract::Alarm =
        serde_json::from_str(&pending[0].payload).expect("alarm json");
    assert_eq!(alarm.alarm, "store_salvaged");
    assert_eq!(alarm.seq, 2);
    assert!(alarm.detail.contains("event seq 2..3"), "{}", alarm.detail);
    assert!(alarm.detail.contains("alarm seq 1..1"), "{}", alarm.detail);
    let o = store.pass(pass("card-000007", None)).await.expect("pass");
    let PassOutcome::Recorded { event, verdict } = o else {
        panic!("recorded")
    };
    assert_eq!(event.seq, 4, "past the highest seq ever issued");
    assert_eq!(verdict.reason, Reason::Staff, "the lists were kept");
}

/// A gate killed with commits still in its log (`-wal`): the log is copied aside with the
/// database and read in the salvage, so the events it held are kept.
#[tokio::test]
async fn a_damaged_store_killed_with_events_in_its_log_keeps_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("g.db");
    store_with_history(&live);
    let mut db = Db::open(&live, gate(), Policy::default(), 1000).expect("open db");
    for _ in 0..2 {
        record_one(&mut db, pass("card-000007", None));
    }
    // What a SIGKILL leaves: the database file and its log, copied while the store is open.
    let path = dir.path().join("k.db");
    std::fs::copy(&live, &path).expect("copy db");
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    let mut live_wal = live.clone().into_os_string();
    live_wal.push("-wal");
    std::fs::copy(&live_wal, &wal).expect("copy wal");
    let wal_bytes = std::fs::read(&wal).expect("wal");
    assert!(!wal_bytes.is_empty(), "the log holds commits");
    let staff = page_of(&live, "staff");
    drop(db);
    // Not opened by SQLite: closing it would write the log into it.
    damage_page_at(&path, staff);
    let store = open_store(&path).expect("salvaged");
    let pending = store.call(|db| db.pending(0, 100)).await.expect("store");
    let seqs: Vec<i64> = pending
        .iter()
        .filter(|r| r.stream == Stream::Event)
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.payload).expect("json")["seq"]
                .as_i64()
                .expect("seq")
        })
        .collect();
    assert_eq!(seqs, [2, 3, 4, 5], "the events in the log are kept");
    let aside = set_aside(&path);
    let aside_wal = aside.iter().find(|p| p.to_string_lossy().ends_with("-wal"));
    assert!(
        std::fs::read(aside_wal.expect("the log is copied aside")).expect("read") == wal_bytes,
        "the log copied aside whole"
    );
}

/// A page damaged under a running store: the pass that meets it is not decided, the hook
/// (the daemon's direct alarm) is called with SQLite's word for it, and nothing more runs on
/// the damaged database (in the daemon the process then ends, and its next start salvages).
#[tokio::test]
async fn a_store_damaged_while_running_decides_nothing_more_and_calls_its_hook() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    store_with_history(&path);
    let staff = page_of(&path, "staff");
    let store = open_store(&path).expect("open");
    let (tx, rx) = std::sync::mpsc::channel();
    store.on_write_health(move |e| {
        if let crate::store::WriteEvent::Corrupt { detail } = e {
            let _ = tx.send(detail);
        }
    });
    damage_page_at(&path, staff);
    // The page is read from the file again, as in a database too large for the cache.
    store
        .call(|db| db.forget_cached_pages())
        .await
        .expect("cache dropped");
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        store.pass(pass("card-000007", None)),
    )
    .await;
    assert!(
        first.is_err(),
        "the pass that met the damage is held, not decided: {first:?}"
    );
    let detail = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the hook is called");
    assert!(detail.contains("malformed"), "{detail}");
    // Until the process ends: a pass is held, not decided; any other job hears the store
    // has stopped instead of waiting for it.
    let held = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        store.pass(pass("card-000007", None)),
    )
    .await;
    assert!(held.is_err(), "a pass is held unanswered: {held:?}");
    let r = store.call(|db| db.list_versions()).await;
    assert!(matches!(r, Err(StoreError::Stopped)), "{r:?}");
}

/// Tables other than the lists and the outbox lost are named with what it means; with the
/// nonces lost, commands issued before the salvage are refused.
#[tokio::test]
async fn lost_passback_and_nonces_are_named_and_old_commands_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    store_with_history(&path);
    damage_page(&path, "passback");
    damage_page(&path, "command_nonce");
    let store = open_store(&path).expect("salvaged");
    let pending = store.call(|db| db.pending(0, 100)).await.expect("store");
    let alarm: gated_contract::Alarm =
        serde_json::from_str(&pending.last().expect("alarm").payload).expect("alarm json");
    assert_eq!(alarm.alarm, "store_salvaged");
    for named in [
        "passback (anti-passback starts over",
        "command_nonce (commands issued before the salvage are refused stale",
        "outbox kept (3 rows)",
    ] {
        assert!(alarm.detail.contains(named), "{named}: {}", alarm.detail);
    }
    // A signed command issued before the salvage, not expired: its nonce may have been used
    // and lost with the damage. It is refused, and one issued after is taken.
    let now = crate::wall::now_ms();
    let (old, fresh) = (
        stamp("n-before", now - 60_000, now + 60_000),
        stamp("n-after", now + 1_000, now + 60_000),
    );
    let (old, fresh) = store
        .call(move |db| {
            Ok((
                db.claim_nonce(&old, now + 1_000)?,
                db.claim_nonce(&fresh, now + 1_000)?,
            ))
        })
        .await
        .expect("store");
    assert!(matches!(old, Err(Refusal::Stale(_))), "{old:?}");
    assert_eq!(fresh, Ok(()));
}

/// Review of the salvage: without `list_version` the version each list held is unknown, and
/// a salvage that let any older signed snapshot in would undo anti-rollback. Refused, and the
/// file left as it was.
#[test]
fn a_store_whose_list_versions_cannot_be_read_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    store_with_history(&path);
    damage_page(&path, "list_version");
    let before = std::fs::read(&path).expect("read");
    let err = open_store(&path).err().expect("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("list_version"), "{err}");
    assert!(
        std::fs::read(&path).expect("read") == before,
        "left as it was"
    );
    assert!(set_aside(&path).is_empty(), "nothing left aside");
}

/// Review of the salvage: a deny list lost to the damage left revoked cards granted until its
/// snapshot came. Until then nothing that needs the lists is granted.
#[tokio::test]
async fn with_the_deny_list_lost_no_card_is_granted_until_its_snapshot_comes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    store_with_history(&path);
    damage_page(&path, "deny");
    let store = open_store(&path).expect("salvaged");
    let o = store.pass(pass("card-000007", None)).await.expect("pass");
    assert_eq!(reason(&o), Reason::StoreUnavailable);
    let deny =
        r#"{"list":"deny","site":"hq","version":1,"entries":[{"kind":"card","id":"card-000008"}]}"#;
    let applied = store
        .apply_snapshot(parse_snapshot(ListName::Deny, deny.as_bytes()).expect("deny"))
        .await
        .expect("store");
    assert_eq!(applied, Ok(Applied::Applied { version: 1 }));
    let o = store.pass(pass("card-000007", None)).await.expect("pass");
    assert_eq!(reason(&o), Reason::Staff);
    let o = store.pass(pass("card-000008", None)).await.expect("pass");
    assert_eq!(reason(&o), Reason::Denylisted);
}

/// Review of the salvage: a crash after the damaged store's log was removed and before the
/// new store was in place left the damaged file without its log, and the next start opened
/// it (its seq behind the one issued). The marker makes the start rebuild from the copy.
#[tokio::test]
async fn a_salvage_cut_short_after_the_log_was_removed_is_finished_from_the_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    store_with_history(&path);
    let outbox_before = outbox_of(&path);
    damage_page(&path, "staff");
    // What `salvage` did before the crash: the copy aside, the marker, the log removed.
    let aside = files::set_aside(&path, "20261208T000000Z").expect("aside");
    files::write_marker(&path, &aside).expect("marker");
    files::remove_log(&path).expect("log removed");
    Store::check(&path, &gate()).expect("check-config leaves it to run");
    let store = open_store(&path).expect("the salvage is finished");
    assert!(
        files::read_marker(&path).expect("read").is_none(),
        "marker gone"
    );
    let pending = store.call(|db| db.pending(0, 100)).await.expect("store");
    for (i, (_, _, payload)) in outbox_before.iter().enumerate() {
        assert_eq!(&pending[i].payload, payload, "outbox row {i} kept");
    }
    let alarm: gated_contract::Alarm =
        serde_json::from_str(&pending.last().expect("alarm").payload).expect("alarm json");
    assert_eq!(alarm.alarm, "store_salvaged");
    assert!(
        alarm.detail.contains("was interrupted; resumed"),
        "{}",
        alarm.detail
    );
}

/// Only an index damaged: every table reads whole, so nothing is lost (the new store builds
/// its indexes again), and the alarm says so.
#[tokio::test]
async fn a_damaged_index_alone_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    store_with_history(&path);
    damage_page(&path, "staff_credential_subject");
    let store = open_store(&path).expect("salvaged");
    let (versions, pending) = store
        .call(|db| Ok((db.list_versions()?, db.pending(0, 100)?)))
        .await
        .expect("store");
    assert_eq!(versions.staff, 2, "the staff list is kept");
    let alarm: gated_contract::Alarm =
        serde_json::from_str(&pending.last().expect("alarm").payload).expect("alarm json");
    assert_eq!(alarm.alarm, "store_salvaged");
    assert!(
        alarm.detail.contains("nothing lost; 3 outbox rows kept"),
        "{}",
        alarm.detail
    );
    let o = store.pass(pass("card-000007", None)).await.expect("pass");
    assert_eq!(reason(&o), Reason::Staff);
}

/// Without its seq counters the gate cannot go on numbering: it is refused, not started as a
/// new gate, and nothing is changed or left behind.
#[test]
fn a_store_whose_seq_counters_cannot_be_read_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    store_with_history(&path);
    damage_page(&path, "seq_counter");
    let before = std::fs::read(&path).expect("read");
    let err = open_store(&path).err().expect("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("seq_counter"), "{err}");
    let err = Store::check(&path, &gate()).expect_err("check-config refuses it too");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(
        std::fs::read(&path).expect("read") == before,
        "the file is left as it was"
    );
    assert!(
        set_aside(&path).is_empty(),
        "no copy left: {:?}",
        set_aside(&path)
    );
    assert!(!files::new_path(&path).exists());
}
