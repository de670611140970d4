//! Tests of the store file: WAL, checkpoints, its gate, its lock and modes, a connection
//! stuck read-only.

use super::*;

#[test]
fn journal_is_wal_on_a_real_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(&dir));
    let conn = rusqlite::Connection::open(dir.path().join("g.db")).expect("open");
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("pragma");
    assert_eq!(mode, "wal");
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("pragma");
    assert!(v >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_thread_makes_the_log_start_over() {
    // The owner thread never checkpoints (a pass would wait for it). Without the checkpoint
    // thread the log only grows: these 2500 passes write about 50 MB to it. With it, the
    // log starts over every thousand frames or so (4 MB, more when the restart has to wait
    // for a busy owner).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let store = Store::open(&path, gate(), Policy::default(), 1_000_000).expect("store");
    store
        .apply_snapshot(staff_snapshot(1, &[("E1", "100")]))
        .await
        .expect("db")
        .expect("applied");
    for i in 0..2500u16 {
        store
            .pass(pass("100", Some(("r1", i + 1))))
            .await
            .expect("pass");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let wal = std::fs::metadata(dir.path().join("g.db-wal")).map_or(0, |m| m.len());
    assert!(
        wal < 25 << 20,
        "the log grew to {wal} bytes: is the checkpoint thread running?"
    );
}

// ---- issue 13: one store, one gate, private files -------------------------------------------

#[test]
fn a_store_records_its_gate_and_refuses_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let east2 = GateId {
        site: "hq".into(),
        gate: "east-2".into(),
    };
    // Nothing there yet: only the place is checked.
    Store::check(&path, &east2).expect("a store can be made here");
    drop(open(&dir));
    Store::check(&path, &gate()).expect("the same gate");
    for e in [
        Store::check(&path, &east2).err(),
        Db::open(&path, east2.clone(), Policy::default(), 1000).err(),
    ] {
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("site `hq` gate `east-1`") && e.contains("site `hq` gate `east-2`"),
            "{e}"
        );
    }
    // A store from before the record takes the first gate that opens it.
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute("DELETE FROM state WHERE key IN ('site', 'gate')", [])
        .expect("forget");
    drop(conn);
    Store::check(&path, &east2).expect("nothing recorded: any gate may take it");
    drop(Db::open(&path, east2, Policy::default(), 1000).expect("adopted"));
    assert!(Db::open(&path, gate(), Policy::default(), 1000).is_err());
}

#[tokio::test]
async fn a_store_is_opened_once_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new").join("g.db");
    let store = Store::open(&path, gate(), Policy::default(), 1000).expect("store");
    let e = Store::open(&path, gate(), Policy::default(), 1000)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let held = format!("is in use by gated pid {}", std::process::id());
    assert!(e.contains(&held), "{e}");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&files::lock_path(&path)), 0o600);
    assert_eq!(mode(path.parent().expect("dir")), 0o700);
    assert!(files::too_wide(&path).is_empty());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    assert_eq!(files::too_wide(&path), vec![(path.clone(), 0o640)]);
    drop(store);
}

// ---- a store that cannot write (issue 22, item 2) --------------------------------------------

/// A connection that cannot write (here one SQLite opened read-only, as it does without a
/// word on a read-only file system) is replaced by the owner thread: the store recovers by
/// itself (the connection never would), tells it once each way, and records
/// `store_recovered` with what failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stuck_read_only_is_replaced_and_the_recovery_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let store = Store::open(&path, gate(), Policy::default(), 1000).expect("store");
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    store.on_write_health(move |e| {
        let _ = tx.lock().expect("lock").send(e);
    });
    let p = path.clone();
    store
        .call(move |db| {
            db.stick_read_only(&p);
            Ok(())
        })
        .await
        .expect("call");
    let e = store
        .pass(pass("1", Some(("reader1", 1))))
        .await
        .expect_err("a read-only connection records nothing");
    assert!(e.to_string().contains("readonly"), "{e}");
    let failing = rx
        .recv_timeout(std::time::Duration::from_secs(1))
        .expect("told it fails");
    assert!(
        matches!(&failing, WriteEvent::Failing { detail } if detail.contains("reader1")),
        "{failing:?}"
    );
    // The reader tries its waiting swipe again at each poll; the owner thread opens a new
    // connection by itself after 1 s, and the next try is recorded.
    let end = Instant::now() + std::time::Duration::from_secs(5);
    let o = loop {
        match store.pass(pass("1", Some(("reader1", 1)))).await {
            Ok(o) => break o,
            Err(e) => assert!(Instant::now() < end, "not recovered within 5 s: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(matches!(o, PassOutcome::Recorded { .. }));
    let recovered = rx
        .recv_timeout(std::time::Duration::from_secs(1))
        .expect("told it recovered");
    assert!(
        matches!(&recovered, WriteEvent::Recovered { detail }
            if detail.contains("pass(es) could not be recorded")),
        "{recovered:?}"
    );
    let rows = store.call(|db| db.pending(0, 10)).await.expect("outbox");
    assert!(
        rows.iter()
            .any(|r| r.stream == Stream::Alarm && r.payload.contains("store_recovered")),
        "the recovery is recorded in the outbox"
    );
    assert!(rx.try_recv().is_err(), "told once each way");
}

/// Review of the reconnect: a new connection made SQLite create an empty database where the
/// store had gone (a mount gone), or wrote to another file put in its place (a backup, whose
/// seq is behind). Neither is taken: the connection is only replaced by one to the same file.
#[test]
fn a_new_connection_is_only_to_the_same_file_and_never_creates_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let mut db = Db::open(&path, gate(), Policy::default(), 1000).expect("open");
    db.reconnect(&path).expect("the same file");
    let moved = dir.path().join("moved.db");
    std::fs::rename(&path, &moved).expect("move away");
    let e = db.reconnect(&path).expect_err("gone");
    assert!(!path.exists(), "no empty database made in its place: {e}");
    // A copy put in its place: same gate, another file.
    std::fs::copy(&moved, &path).expect("copy back");
    let e = db.reconnect(&path).expect_err("another file");
    assert!(e.to_string().contains("no longer the file"), "{e}");
}

/// The start report connects only when no other gated holds the store (it would take over
/// that gate's client id on the broker).
#[test]
fn another_gated_holding_the_store_is_seen_by_its_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let store = Store::open(&path, gate(), Policy::default(), 1000).expect("open");
    assert!(Store::held_by_another(&path));
    drop(store);
    // The lock goes with the store's threads: wait for them to end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Store::held_by_another(&path) {
        assert!(std::time::Instant::now() < deadline, "still held");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
