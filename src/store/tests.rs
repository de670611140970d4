//! Store tests against a real SQLite file.

use super::*;
use crate::core::{ClockSense, ClockState, Credential, CredentialKind, Direction, Mode, Reason};
use crate::sync::contract::{ListName, NO_RELEASE, Refusal, parse_delta, parse_snapshot};

const NOW: i64 = 1_795_000_000_000;

fn gate() -> GateId {
    GateId {
        site: "hq".into(),
        gate: "east-1".into(),
    }
}

fn open(dir: &tempfile::TempDir) -> Db {
    Db::open(&dir.path().join("g.db"), gate(), Policy::default(), 1000).expect("open db")
}

fn card(id: &str) -> Credential {
    Credential {
        kind: CredentialKind::Card,
        id: id.into(),
        score: None,
    }
}

fn pass(id: &str, from: Option<(&str, u16)>) -> PassInput {
    PassInput {
        from: from.map(|(r, s)| MailboxPos {
            reader: r.into(),
            head_seq: s,
        }),
        lane: 0,
        direction: Direction::In,
        credential: card(id),
        now: NOW,
        seen: None,
    }
}

fn staff_snapshot(version: u64, cards: &[(&str, &str)]) -> crate::sync::contract::Snapshot {
    let entries: Vec<String> = cards
        .iter()
        .map(|(subj, c)| {
            format!(
                r#"{{"subject":"{subj}","credentials":[{{"kind":"card","id":"{c}"}}],"gates":["*"]}}"#
            )
        })
        .collect();
    let body = format!(
        r#"{{"list":"staff","site":"hq","version":{version},"entries":[{}]}}"#,
        entries.join(",")
    );
    parse_snapshot(ListName::Staff, body.as_bytes()).expect("test snapshot")
}

/// A command stamp issued at `issued`, valid until `expires`.
fn stamp(nonce: &str, issued: i64, expires: i64) -> Stamp {
    Stamp {
        nonce: nonce.into(),
        issued_at: issued,
        expires_at: expires,
    }
}

fn record_one(db: &mut Db, input: PassInput) -> PassOutcome {
    db.record_passes(&[input]).expect("record").remove(0)
}

fn reason(o: &PassOutcome) -> Reason {
    match o {
        PassOutcome::Recorded { verdict, .. } => verdict.reason,
        PassOutcome::AlreadyRecorded => panic!("expected a decision"),
    }
}

#[test]
fn seq_has_no_gaps_across_reopen_and_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    for i in 0..3 {
        record_one(&mut db, pass(&format!("c{i}"), None));
    }
    let rows = db.pending(0, 10).expect("pending");
    assert_eq!(rows.len(), 3);
    db.acked(&[rows[0].rowid, rows[1].rowid, rows[2].rowid])
        .expect("ack");
    drop(db);
    let mut db = open(&dir);
    let o = record_one(&mut db, pass("c9", None));
    let PassOutcome::Recorded { event, .. } = o else {
        panic!("recorded")
    };
    assert_eq!(event.seq, 4, "seq continues after acks and a restart");
    assert_eq!(db.outbox_stats().expect("stats").pending, 1);
}

#[test]
fn outbox_positions_only_grow_even_after_it_empties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    record_one(&mut db, pass("a", None));
    let first = db.pending(0, 10).expect("pending");
    db.acked(&[first[0].rowid]).expect("ack");
    record_one(&mut db, pass("b", None));
    let next = db.pending(first[0].rowid, 10).expect("pending");
    assert_eq!(
        next.len(),
        1,
        "a row added after the outbox emptied sorts after the cursor"
    );
    assert!(next[0].rowid > first[0].rowid);
}

#[test]
fn a_mailbox_event_is_decided_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    assert_eq!(
        reason(&record_one(&mut db, pass("x", Some(("r1", 7))))),
        Reason::UnknownCredential
    );
    assert!(matches!(
        record_one(&mut db, pass("x", Some(("r1", 7)))),
        PassOutcome::AlreadyRecorded
    ));
    // Same seq, other credential (the reader rebooted): a new pass.
    assert!(matches!(
        record_one(&mut db, pass("y", Some(("r1", 7)))),
        PassOutcome::Recorded { .. }
    ));
    // Another reader with the same seq is its own mailbox.
    assert!(matches!(
        record_one(&mut db, pass("x", Some(("r2", 7)))),
        PassOutcome::Recorded { .. }
    ));
    assert_eq!(db.pending(0, 100).expect("pending").len(), 3);
}

#[test]
fn snapshot_versions_stale_and_repeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    let s2 = staff_snapshot(2, &[("E1", "100")]);
    assert_eq!(
        db.apply_snapshot(&s2).expect("db"),
        Ok(Applied::Applied { version: 2 })
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("100", None))),
        Reason::Staff
    );
    assert_eq!(
        db.apply_snapshot(&s2).expect("db"),
        Ok(Applied::AlreadyInForce { version: 2 })
    );
    let s1 = staff_snapshot(1, &[("E9", "900")]);
    assert_eq!(
        db.apply_snapshot(&s1).expect("db").unwrap_err().code(),
        "stale"
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("900", None))),
        Reason::UnknownCredential
    );
    // The version in force survives a restart, so an old snapshot replayed later is refused.
    drop(db);
    let mut db = open(&dir);
    assert_eq!(db.list_version(ListName::Staff).expect("v"), 2);
    assert_eq!(
        db.apply_snapshot(&s1).expect("db").unwrap_err().code(),
        "stale"
    );
    let s3 = staff_snapshot(3, &[("E2", "200")]);
    db.apply_snapshot(&s3).expect("db").expect("applied");
    assert_eq!(
        reason(&record_one(&mut db, pass("100", None))),
        Reason::UnknownCredential
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("200", None))),
        Reason::Staff
    );
}

#[test]
fn a_refused_snapshot_leaves_the_list_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    db.apply_snapshot(&staff_snapshot(1, &[("E1", "100")]))
        .expect("db")
        .expect("applied");
    // Two subjects with one card: refused, rolled back.
    let bad = staff_snapshot(2, &[("E2", "200"), ("E3", "200")]);
    let r = db.apply_snapshot(&bad).expect("db").unwrap_err();
    assert_eq!(r.code(), "malformed");
    assert!(r.detail().contains("card:200"), "{r}");
    assert_eq!(db.list_version(ListName::Staff).expect("v"), 1);
    assert_eq!(
        reason(&record_one(&mut db, pass("100", None))),
        Reason::Staff
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("200", None))),
        Reason::UnknownCredential
    );
}

#[test]
fn deltas_apply_only_on_their_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    db.apply_snapshot(&staff_snapshot(5, &[("E1", "100"), ("E2", "200")]))
        .expect("db")
        .expect("applied");
    let gap = parse_delta(
        ListName::Staff,
        br#"{"list":"staff","site":"hq","version":7,"base":6,"remove":["E1"]}"#,
    )
    .expect("delta");
    assert_eq!(
        db.apply_delta(&gap).expect("db").unwrap_err().code(),
        "version_gap"
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("100", None))),
        Reason::Staff
    );
    let d = parse_delta(
        ListName::Staff,
        br#"{"list":"staff","site":"hq","version":6,"base":5,"remove":["E1"],
            "upsert":[{"subject":"E3","credentials":[{"kind":"card","id":"300"}],"gates":["east-1"]}]}"#,
    )
    .expect("delta");
    assert_eq!(
        db.apply_delta(&d).expect("db"),
        Ok(Applied::Applied { version: 6 })
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("100", None))),
        Reason::UnknownCredential
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("200", None))),
        Reason::Staff
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("300", None))),
        Reason::Staff
    );
}

#[test]
fn invitation_entries_are_counted_and_survive_a_new_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    let body = |v: u64| {
        format!(
            r#"{{"list":"visitors","site":"hq","version":{v},"entries":[{{"invitation":"INV-1",
            "visitor":"Zhang San","host":"E1","credentials":[{{"kind":"qr","id":"tok"}}],
            "gates":["east-1"],"max_entries":2}}]}}"#
        )
    };
    let snap = parse_snapshot(ListName::Visitors, body(1).as_bytes()).expect("snap");
    db.apply_snapshot(&snap).expect("db").expect("applied");
    let qr = |input: &mut PassInput| input.credential.kind = CredentialKind::Qr;
    let mut p = pass("tok", None);
    qr(&mut p);
    assert_eq!(reason(&record_one(&mut db, p.clone())), Reason::Visitor);
    let snap = parse_snapshot(ListName::Visitors, body(2).as_bytes()).expect("snap");
    db.apply_snapshot(&snap).expect("db").expect("applied");
    assert_eq!(reason(&record_one(&mut db, p.clone())), Reason::Visitor);
    assert_eq!(reason(&record_one(&mut db, p)), Reason::EntriesExhausted);
    assert_eq!(db.invitation_used("INV-1").expect("used"), 2);
}

#[test]
fn outbox_high_water_raises_one_alarm_and_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir); // quota 1000
    let inputs: Vec<PassInput> = (0..850).map(|i| pass(&format!("c{i}"), None)).collect();
    for chunk in inputs.chunks(50) {
        db.record_passes(chunk).expect("record");
    }
    let rows = db.pending(0, 2000).expect("pending");
    let alarms: Vec<_> = rows.iter().filter(|r| r.stream == Stream::Alarm).collect();
    assert_eq!(alarms.len(), 1, "one outbox_high alarm");
    assert!(alarms[0].payload.contains("outbox_high"));
    assert_eq!(rows.len(), 851, "no event was deleted");
}

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
async fn concurrent_passes_share_commits_and_keep_seq_dense() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open(&dir.path().join("g.db"), gate(), Policy::default(), 100_000).expect("store");
    let mut tasks = Vec::new();
    for lane in 0..8u16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                let mut p = pass(&format!("{lane}-{i}"), Some((&format!("r{lane}"), i + 1)));
                p.lane = lane;
                match store.pass(p).await.expect("pass") {
                    PassOutcome::Recorded { event, .. } => seqs.push(event.seq),
                    PassOutcome::AlreadyRecorded => panic!("new mailbox events"),
                }
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    let pending = store
        .call(|db| db.outbox_stats())
        .await
        .expect("stats")
        .pending;
    assert_eq!(pending, 400);
}

fn count(db_path: &std::path::Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(db_path).expect("open");
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_snapshot_lets_passes_through_and_switches_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let store = Store::open(&path, gate(), Policy::default(), 1_000_000).expect("store");
    store
        .apply_snapshot(staff_snapshot(1, &[("OLD", "1")]))
        .await
        .expect("db")
        .expect("applied");
    // Version 2: 10k entries (many steps), without the old card, with a new one at the end.
    let cards: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("E{i}"), format!("{}", 100_000 + i)))
        .collect();
    let refs: Vec<(&str, &str)> = cards
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let apply = {
        let store = store.clone();
        let snap = staff_snapshot(2, &refs);
        tokio::spawn(async move { store.apply_snapshot(snap).await })
    };
    // Swipe the old and the newest card in turn while the apply runs. Each decision shows
    // which list it saw: the old card granted or the new one refused means the old list.
    let saw_old = |card: &str, r: Reason| (card == "1") == (r == Reason::Staff);
    let mut seen = Vec::new();
    let mut during = 0;
    for card in ["1", "109999"].iter().cycle() {
        if apply.is_finished() {
            break;
        }
        seen.push(saw_old(
            card,
            reason(&store.pass(pass(card, None)).await.expect("pass")),
        ));
        during += 1;
    }
    assert_eq!(
        apply.await.expect("join").expect("db"),
        Ok(Applied::Applied { version: 2 })
    );
    for card in ["1", "109999"] {
        seen.push(saw_old(
            card,
            reason(&store.pass(pass(card, None)).await.expect("pass")),
        ));
    }
    // Old list, then new list, and never back: no decision saw a mix.
    let switch = seen
        .iter()
        .position(|old| !old)
        .expect("the new list came into force");
    assert!(seen[switch..].iter().all(|old| !old), "{seen:?}");
    assert!(
        during > 0,
        "passes were decided while the snapshot was being written"
    );
    eprintln!("{during} passes decided during a 10k-entry snapshot apply");
    // The old generation stays until the cleanup that the downlink runs after the ack.
    assert_eq!(count(&path, "staff"), 10_001, "before the cleanup");
    store.drop_replaced().await;
    assert_eq!(
        count(&path, "staff"),
        10_000,
        "the old generation was deleted"
    );
    assert_eq!(count(&path, "staff_credential"), 10_000);
}

#[test]
fn a_refused_chunk_and_an_interrupted_apply_leave_the_list_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let mut db = Db::open(&path, gate(), Policy::default(), 1000).expect("open");
    db.apply_snapshot(&staff_snapshot(1, &[("E1", "100")]))
        .expect("db")
        .expect("applied");

    // An apply that stops after writing (a crash): invisible, and cleared by the next apply.
    let s2 = staff_snapshot(2, &[("E2", "200")]);
    let Ok(SnapshotStep::Write { generation }) = db.snapshot_begin(ListName::Staff, 2).expect("db")
    else {
        panic!("begin")
    };
    // A step that is told to stop (a pass is waiting) writes one entry and says where the
    // next step starts.
    let next = db
        .snapshot_write(ListName::Staff, generation, &s2.entries, 0, &|| true)
        .expect("db")
        .expect("written");
    assert_eq!(next, 1);
    assert_eq!(
        reason(&record_one(&mut db, pass("200", None))),
        Reason::UnknownCredential
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("100", None))),
        Reason::Staff
    );

    // A later snapshot whose last entry holds a duplicate card: refused whole, though
    // thousands of entries were written before it.
    let mut cards: Vec<(String, String)> = (0..2010)
        .map(|i| (format!("E{i}"), format!("{}", 500_000 + i)))
        .collect();
    cards.push(("DUP".into(), "500001".into()));
    let refs: Vec<(&str, &str)> = cards
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let r = db
        .apply_snapshot(&staff_snapshot(3, &refs))
        .expect("db")
        .unwrap_err();
    assert_eq!(r.code(), "malformed", "{r}");
    assert_eq!(db.list_version(ListName::Staff).expect("v"), 1);
    assert_eq!(
        reason(&record_one(&mut db, pass("100", None))),
        Reason::Staff
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("500000", None))),
        Reason::UnknownCredential
    );
    drop(db);
    assert_eq!(
        count(&path, "staff"),
        1,
        "nothing of the refused or interrupted applies remains"
    );
}

#[test]
fn a_nonce_is_used_once_even_across_reopen_and_forgotten_after_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expires = NOW + 60_000;
    {
        let mut db = open(&dir);
        assert_eq!(
            db.claim_nonce(&stamp("n-0001", NOW, expires), NOW)
                .expect("db"),
            Ok(())
        );
        let again = db
            .claim_nonce(&stamp("n-0001", NOW, expires), NOW)
            .expect("db");
        assert_eq!(again.expect_err("replay").code(), "replayed");
    }
    let mut db = open(&dir);
    let after_reopen = db
        .claim_nonce(&stamp("n-0001", NOW, expires), NOW + 1)
        .expect("db");
    assert_eq!(after_reopen.expect_err("replay").code(), "replayed");
    // Once its command has expired the nonce is dropped (the command is refused as expired
    // before its nonce is looked at).
    db.claim_nonce(&stamp("n-0002", expires, NOW + 120_000), expires + 1)
        .expect("db")
        .expect("fresh");
    let left: i64 = rusqlite::Connection::open(dir.path().join("g.db"))
        .expect("second connection")
        .query_row("SELECT count(*) FROM command_nonce", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 1, "the expired nonce was purged");
}

#[test]
fn an_override_and_a_mode_change_are_recorded_with_their_nonce() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    let ov = crate::sync::contract::Override {
        source: "remote".into(),
        input: "open".into(),
        by: Some("ops".into()),
    };
    let e = db
        .record_override(
            1,
            Direction::Out,
            Reason::OverrideRemote,
            ov.clone(),
            Some(&stamp("n-open-1", NOW, NOW + 1000)),
            NOW,
        )
        .expect("db")
        .expect("recorded");
    assert_eq!(
        (e.lane, e.reason, e.override_.as_ref()),
        (1, Reason::OverrideRemote, Some(&ov))
    );
    // The same nonce again records nothing.
    let replay = db
        .record_override(
            1,
            Direction::Out,
            Reason::OverrideRemote,
            ov,
            Some(&stamp("n-open-1", NOW, NOW + 1000)),
            NOW,
        )
        .expect("db");
    assert!(replay.is_err());
    assert_eq!(db.outbox_stats().expect("stats").pending, 1);

    let a = db
        .set_mode(
            Mode::Lockdown,
            "remote",
            "normal -> lockdown",
            Some(&stamp("n-mode-1", NOW, NOW + 1000)),
            NOW,
        )
        .expect("db")
        .expect("set");
    assert_eq!(a.alarm, "mode_changed");
    drop(db);
    assert_eq!(open(&dir).mode(), Mode::Lockdown, "the mode is persisted");
}

#[test]
fn a_clock_set_back_does_not_revive_an_expired_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    let day = 24 * 3600 * 1000;
    db.claim_nonce(&stamp("n-first", NOW, NOW + 60_000), NOW)
        .expect("db")
        .expect("fresh");
    // Two days later another command is judged: the first nonce is forgotten.
    db.claim_nonce(
        &stamp("n-second", NOW + 2 * day, NOW + 2 * day + 60_000),
        NOW + 2 * day,
    )
    .expect("db")
    .expect("fresh");
    // The clock is set back to within the first command's window: replaying it is refused
    // as expired, judged by the latest time commands were judged at.
    let replay = db
        .claim_nonce(&stamp("n-first", NOW, NOW + 60_000), NOW + 30_000)
        .expect("db")
        .expect_err("expired");
    assert_eq!(replay.code(), "expired", "{replay}");
    assert!(replay.detail().contains("never goes back"), "{replay}");
    // The command clock survives a restart.
    drop(db);
    let mut db = open(&dir);
    let again = db
        .claim_nonce(&stamp("n-first", NOW, NOW + 60_000), NOW + 30_000)
        .expect("db")
        .expect_err("expired");
    assert_eq!(again.code(), "expired");
}

#[test]
fn passes_are_decided_under_the_mode_the_store_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    db.apply_snapshot(&staff_snapshot(1, &[("E1", "0001")]))
        .expect("db")
        .expect("applied");
    assert_eq!(
        reason(&record_one(&mut db, pass("0001", None))),
        Reason::Staff
    );
    // The lockdown is committed (and acked) before the next pass job runs: that pass is
    // decided under it, whatever mode its reader last saw.
    db.set_mode(Mode::Lockdown, "remote", "normal -> lockdown", None, NOW)
        .expect("db")
        .expect("set");
    assert_eq!(
        reason(&record_one(&mut db, pass("0001", None))),
        Reason::Lockdown
    );
    db.set_mode(Mode::Normal, "remote", "lockdown -> normal", None, NOW)
        .expect("db")
        .expect("set");
    assert_eq!(
        reason(&record_one(&mut db, pass("0001", None))),
        Reason::Staff
    );
}

#[test]
fn a_command_from_the_future_is_refused_unless_the_command_clock_vouches_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    let hour = 3600 * 1000;
    let future = db
        .claim_nonce(&stamp("n-future", NOW + hour, NOW + 2 * hour), NOW)
        .expect("db")
        .expect_err("not yet valid");
    assert_eq!(future.code(), "not_yet_valid", "{future}");
    // Within the skew the clocks may have, it is taken.
    db.claim_nonce(&stamp("n-skew", NOW + 60_000, NOW + hour), NOW)
        .expect("db")
        .expect("within skew");
    // A gate that has judged a command at NOW + 1 h takes commands of that time even while
    // its own clock reads earlier (a reboot without a real-time clock).
    db.claim_nonce(&stamp("n-later", NOW + hour, NOW + 2 * hour), NOW + hour)
        .expect("db")
        .expect("fresh");
    db.claim_nonce(
        &stamp("n-after-boot", NOW + hour + 1000, NOW + 2 * hour),
        NOW - hour,
    )
    .expect("db")
    .expect("vouched for by the command clock");
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

// ---- issue 6: rules that need state --------------------------------------------------------

fn open_with(dir: &tempfile::TempDir, name: &str, gate: &str, policy: Policy) -> Db {
    let id = GateId {
        site: "hq".into(),
        gate: gate.into(),
    };
    Db::open(&dir.path().join(name), id, policy, 1000).expect("open db")
}

fn hard_passback() -> Policy {
    Policy {
        passback: crate::core::Passback {
            mode: crate::core::PassbackMode::Hard,
            reset_at: None,
        },
        ..Policy::default()
    }
}

fn at(id: &str, direction: Direction, now: i64) -> PassInput {
    PassInput {
        direction,
        now,
        ..pass(id, None)
    }
}

fn events_of(db: &Db) -> Vec<crate::sync::contract::PassEvent> {
    db.pending(0, 1000)
        .expect("pending")
        .into_iter()
        .filter(|r| r.stream == Stream::Event)
        .map(|r| serde_json::from_str(&r.payload).expect("event json"))
        .collect()
}

#[test]
fn anti_passback_state_is_kept_and_learned_from_other_gates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut east = open_with(&dir, "east.db", "east-1", hard_passback());
    let mut west = open_with(&dir, "west.db", "west-1", hard_passback());
    for db in [&mut east, &mut west] {
        db.apply_snapshot(&staff_snapshot(1, &[("E1", "c1")]))
            .expect("apply")
            .expect("applied");
    }
    assert_eq!(
        reason(&record_one(&mut east, at("c1", Direction::In, NOW))),
        Reason::Staff
    );
    assert_eq!(
        reason(&record_one(&mut east, at("c1", Direction::In, NOW + 1))),
        Reason::AntiPassback
    );
    // West has not heard of it: it judges on its own state.
    assert_eq!(
        reason(&record_one(&mut west, at("c1", Direction::Out, NOW + 2))),
        Reason::Staff
    );
    // Each learns the other's events; a redelivery counts once; its own are skipped.
    let from_east = events_of(&east);
    let from_west = events_of(&west);
    assert_eq!(west.learn(&from_east, NOW + 3).expect("learn"), 2);
    assert_eq!(west.learn(&from_east, NOW + 3).expect("learn"), 0);
    assert_eq!(west.learn(&from_west, NOW + 3).expect("learn"), 0);
    assert_eq!(east.learn(&from_west, NOW + 3).expect("learn"), 1);
    assert_eq!(
        west.peers().expect("peers"),
        vec![("east-1".to_string(), 2)]
    );
    // East is replaced and numbers from 1 again: a lower seq with a later id is learned, and
    // alarmed; a redelivery of an old event (lower seq, earlier id) is not.
    let mut renewed = from_east[0].clone();
    renewed.id = uuid::Uuid::now_v7().to_string();
    renewed.direction = Direction::Out;
    renewed.ts = crate::sync::contract::format_ts(NOW + 3);
    let pending_before = west.pending(0, 1000).expect("pending").len();
    assert_eq!(
        west.learn(&[from_east[0].clone(), renewed], NOW + 3)
            .expect("learn"),
        1
    );
    let alarms: Vec<String> = west
        .pending(0, 1000)
        .expect("pending")
        .into_iter()
        .skip(pending_before)
        .map(|r| r.payload)
        .collect();
    assert!(
        alarms.len() == 1 && alarms[0].contains("peer_seq_reset"),
        "{alarms:?}"
    );
    assert_eq!(
        west.peers().expect("peers"),
        vec![("east-1".to_string(), 1)]
    );
    // Hostile peer events: a seq SQLite cannot hold is skipped without failing the batch, and
    // a time far ahead is believed only up to a minute ahead of this gate's clock.
    let mut forged = from_east[0].clone();
    forged.gate = "north-1".into();
    forged.seq = u64::MAX;
    let mut ahead = from_east[0].clone();
    ahead.gate = "north-1".into();
    ahead.seq = 1;
    ahead.subject = Some("E9".into());
    ahead.ts = crate::sync::contract::format_ts(NOW + 365 * 86_400_000);
    assert_eq!(west.learn(&[forged, ahead], NOW + 3).expect("learn"), 1);
    assert_eq!(
        west.last_pass("E9").expect("state").map(|l| l.at),
        Some(NOW + 3 + 60_000)
    );
    // West's own later `out` stays newer than east's earlier `in`.
    assert_eq!(
        west.last_pass("E1").expect("state").map(|l| l.direction),
        Some(Direction::Out)
    );
    // East learned the `out`: E1 may come in again there, and not twice.
    assert_eq!(
        reason(&record_one(&mut east, at("c1", Direction::In, NOW + 4))),
        Reason::Staff
    );
    assert_eq!(
        reason(&record_one(&mut east, at("c1", Direction::In, NOW + 5))),
        Reason::AntiPassback
    );
    // A guard clears it at east; west forgets it too when it learns the override's event.
    let ov = crate::sync::contract::Override {
        source: "remote".into(),
        input: CLEAR_PASSBACK.into(),
        by: Some("ops".into()),
    };
    east.clear_passback("E1", ov, None, NOW + 6)
        .expect("store")
        .expect("cleared");
    assert_eq!(east.last_pass("E1").expect("state"), None);
    assert_eq!(
        reason(&record_one(&mut east, at("c1", Direction::In, NOW + 7))),
        Reason::Staff
    );
    let mut west_view = open_with(&dir, "west2.db", "west-1", hard_passback());
    let all = events_of(&east);
    let upto_clear: Vec<_> = all.iter().filter(|e| e.seq <= 5).cloned().collect();
    west_view.learn(&upto_clear, NOW + 8).expect("learn");
    assert_eq!(west_view.last_pass("E1").expect("state"), None);
}

/// After an evacuation: a subject who went out under emergency release (or hold-open) is out,
/// here and at the peer gates that learn the pass, and comes back in in normal mode.
#[test]
fn a_pass_under_an_open_mode_moves_the_subject_here_and_at_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut east = open_with(&dir, "east.db", "east-1", hard_passback());
    let mut west = open_with(&dir, "west.db", "west-1", hard_passback());
    for db in [&mut east, &mut west] {
        db.apply_snapshot(&staff_snapshot(1, &[("E1", "c1"), ("E2", "c2")]))
            .expect("apply")
            .expect("applied");
    }
    for (card, open) in [("c1", Mode::EmergencyRelease), ("c2", Mode::HoldOpen)] {
        east.assume_mode(Mode::Normal);
        assert_eq!(
            reason(&record_one(&mut east, at(card, Direction::In, NOW))),
            Reason::Staff
        );
        east.assume_mode(open);
        let out = record_one(&mut east, at(card, Direction::Out, NOW + 1));
        assert!(reason(&out).is_granted(), "{out:?}");
        east.assume_mode(Mode::Normal);
        assert_eq!(
            reason(&record_one(&mut east, at(card, Direction::In, NOW + 2))),
            Reason::Staff,
            "{open:?}"
        );
    }
    // West learns east's passes in order: each subject's last one is the `in` after the
    // release, so a second `in` at west is refused, and an `out` is granted.
    west.learn(&events_of(&east), NOW + 3).expect("learn");
    assert_eq!(
        west.last_pass("E1").expect("state").map(|l| l.direction),
        Some(Direction::In)
    );
    // Learned alone, the pass under emergency release moves the subject out.
    let mut north = open_with(&dir, "north.db", "north-1", hard_passback());
    north
        .apply_snapshot(&staff_snapshot(1, &[("E1", "c1")]))
        .expect("apply")
        .expect("applied");
    assert_eq!(
        reason(&record_one(&mut north, at("c1", Direction::In, NOW))),
        Reason::Staff
    );
    let released: Vec<_> = events_of(&east)
        .into_iter()
        .filter(|e| e.reason == Reason::EmergencyRelease)
        .collect();
    assert_eq!(released.len(), 1, "{released:?}");
    north.learn(&released, NOW + 3).expect("learn");
    assert_eq!(
        reason(&record_one(&mut north, at("c1", Direction::In, NOW + 4))),
        Reason::Staff
    );
}

/// The worst case of docs/policy.md: while k gates are cut off from each other, each admits an
/// invitation up to its own count, so at most k × max_entries entries in all; once they hear
/// of each other's entries, none admits more.
#[test]
fn invitation_entries_at_gates_cut_off_from_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = r#"{"list":"visitors","site":"hq","version":1,"entries":[{"invitation":"INV-1",
        "credentials":[{"kind":"card","id":"q1"}],"gates":["*"],"max_entries":2}]}"#;
    let visitors = parse_snapshot(ListName::Visitors, body.as_bytes()).expect("snapshot");
    let mut gates: Vec<Db> = ["east-1", "west-1", "north-1"]
        .iter()
        .map(|g| {
            let mut db = open_with(&dir, &format!("{g}.db"), g, Policy::default());
            db.apply_snapshot(&visitors)
                .expect("apply")
                .expect("applied");
            db
        })
        .collect();
    let mut admitted = 0;
    for db in &mut gates {
        for i in 0..4 {
            if reason(&record_one(db, at("q1", Direction::In, NOW + i))) == Reason::Visitor {
                admitted += 1;
            }
        }
    }
    assert_eq!(admitted, 3 * 2, "each gate admits max_entries on its own");
    let all: Vec<_> = gates.iter().flat_map(events_of).collect();
    for db in &mut gates {
        db.learn(&all, NOW + 10).expect("learn");
        assert_eq!(db.invitation_used("INV-1").expect("used"), 6);
        assert_eq!(
            reason(&record_one(db, at("q1", Direction::In, NOW + 11))),
            Reason::EntriesExhausted
        );
    }
}

/// A visitor's exit uses no entry, here or at a peer that learns it, and a release nobody
/// used on the way out gives nothing back.
#[test]
fn a_visitor_exit_uses_no_entry_here_or_at_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = r#"{"list":"visitors","site":"hq","version":1,"entries":[{"invitation":"INV-1",
        "credentials":[{"kind":"card","id":"q1"}],"gates":["*"],"max_entries":1}]}"#;
    let visitors = parse_snapshot(ListName::Visitors, body.as_bytes()).expect("snapshot");
    let mut east = open_with(&dir, "east.db", "east-1", Policy::default());
    let mut west = open_with(&dir, "west.db", "west-1", Policy::default());
    for db in [&mut east, &mut west] {
        db.apply_snapshot(&visitors)
            .expect("apply")
            .expect("applied");
    }
    assert_eq!(
        reason(&record_one(&mut east, at("q1", Direction::In, NOW))),
        Reason::Visitor
    );
    let out = record_one(&mut east, at("q1", Direction::Out, NOW + 1));
    assert_eq!(reason(&out), Reason::Visitor);
    assert_eq!(east.invitation_used("INV-1").expect("used"), 1);
    let PassOutcome::Recorded { event, .. } = out else {
        panic!("recorded")
    };
    east.record_passage(&event, false, Some("INV-1"), NOW + 2)
        .expect("passage");
    assert_eq!(east.invitation_used("INV-1").expect("used"), 1);
    west.learn(&events_of(&east), NOW + 3).expect("learn");
    assert_eq!(west.invitation_used("INV-1").expect("used"), 1);
    assert_eq!(
        reason(&record_one(&mut west, at("q1", Direction::Out, NOW + 4))),
        Reason::Visitor
    );
    assert_eq!(
        reason(&record_one(&mut west, at("q1", Direction::In, NOW + 5))),
        Reason::EntriesExhausted
    );
}

#[test]
fn the_clock_floor_follows_trusted_events_only_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    let body = r#"{"list":"visitors","site":"hq","version":1,"entries":[{"invitation":"INV-1",
        "credentials":[{"kind":"card","id":"q1"}],"valid_until":"2099-01-01T00:00:00Z",
        "gates":["*"]}]}"#;
    db.apply_snapshot(&parse_snapshot(ListName::Visitors, body.as_bytes()).expect("snapshot"))
        .expect("apply")
        .expect("applied");
    assert_eq!(
        reason(&record_one(&mut db, at("q1", Direction::In, NOW))),
        Reason::Visitor
    );
    drop(db);
    let mut db = open(&dir);
    // The clock went back (a Pi without RTC after a power cut): before the last event.
    assert_eq!(
        reason(&record_one(&mut db, at("q1", Direction::In, NOW - 60_000))),
        Reason::ClockUntrusted
    );
    assert_eq!(
        db.clock_state(NOW - 60_000),
        ClockState::Untrusted(crate::core::Untrust::BeforeLastEvent)
    );
    // A jump seen by the watcher lowers the floor back to the time before it.
    db.lower_floor(NOW - 120_000).expect("lower");
    assert!(db.clock_state(NOW - 60_000).trusted());
    db.lower_floor(NOW).expect("a higher value changes nothing");
    assert!(db.clock_state(NOW - 60_000).trusted());
    // An untrusted event did not lower or raise the floor; the right time is trusted again.
    assert_eq!(
        reason(&record_one(&mut db, at("q1", Direction::In, NOW + 1))),
        Reason::Visitor
    );
    db.set_build_time(NOW + 10_000);
    assert_eq!(
        db.clock_state(NOW + 2),
        ClockState::Untrusted(crate::core::Untrust::BeforeBuild)
    );
    db.set_build_time(0);
    db.set_clock_sense(ClockSense {
        synced: Some(false),
        jumped: false,
    });
    assert_eq!(
        reason(&record_one(&mut db, at("q1", Direction::In, NOW + 3))),
        Reason::ClockUntrusted
    );
    // Staff with no window still pass.
    db.apply_snapshot(&staff_snapshot(1, &[("E1", "c1")]))
        .expect("apply")
        .expect("applied");
    assert_eq!(
        reason(&record_one(&mut db, at("c1", Direction::In, NOW + 4))),
        Reason::Staff
    );
}

#[test]
fn max_offline_counts_from_the_last_contact_even_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hour = 3_600_000;
    let policy = Policy {
        staff_max_offline: Some(24 * hour),
        ..Policy::default()
    };
    let mut db = open_with(&dir, "g.db", "east-1", policy.clone());
    db.apply_snapshot(&staff_snapshot(1, &[("E1", "c1")]))
        .expect("apply")
        .expect("applied");
    db.expect_centre().expect("centre");
    // Never in contact: the limit applies at once (fail closed).
    assert_eq!(
        reason(&record_one(&mut db, at("c1", Direction::In, NOW))),
        Reason::OfflineLimit
    );
    db.contact(true, NOW).expect("contact");
    assert_eq!(
        reason(&record_one(&mut db, at("c1", Direction::In, NOW + 1))),
        Reason::Staff
    );
    db.contact(false, NOW + hour).expect("lost");
    assert_eq!(db.offline_since(), Some(Some(NOW + hour)));
    assert_eq!(
        reason(&record_one(
            &mut db,
            at("c1", Direction::Out, NOW + 25 * hour)
        )),
        Reason::Staff
    );
    drop(db);
    let mut db = open_with(&dir, "g.db", "east-1", policy);
    db.expect_centre().expect("centre");
    assert_eq!(
        reason(&record_one(
            &mut db,
            at("c1", Direction::In, NOW + 25 * hour + 1)
        )),
        Reason::OfflineLimit
    );
    // A contact recorded while the clock ran a day ahead does not keep the limit off once
    // the clock is right again: a last contact later than now counts as never.
    db.contact(true, NOW + 50 * hour).expect("contact");
    db.contact(false, NOW + 50 * hour).expect("lost");
    assert_eq!(
        reason(&record_one(
            &mut db,
            at("c1", Direction::In, NOW + 26 * hour)
        )),
        Reason::OfflineLimit
    );
    // The deny list still applies, and still comes first.
    let deny = r#"{"list":"deny","site":"hq","version":1,"entries":[{"kind":"card","id":"c1"}]}"#;
    db.apply_snapshot(&parse_snapshot(ListName::Deny, deny.as_bytes()).expect("deny"))
        .expect("apply")
        .expect("applied");
    assert_eq!(
        reason(&record_one(
            &mut db,
            at("c1", Direction::In, NOW + 26 * hour)
        )),
        Reason::Denylisted
    );
}

#[test]
fn a_two_factor_lane_pairs_card_and_face_across_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut policy = Policy::default();
    policy.lanes.insert(
        0,
        crate::core::LaneRules {
            two_factor_ms: Some(10_000),
            ..Default::default()
        },
    );
    let mut db = open_with(&dir, "g.db", "east-1", policy);
    let body = r#"{"list":"staff","site":"hq","version":1,"entries":[{"subject":"E1",
        "credentials":[{"kind":"card","id":"c1"},{"kind":"face","id":"P1"}],"gates":["*"]}]}"#;
    db.apply_snapshot(&parse_snapshot(ListName::Staff, body.as_bytes()).expect("staff"))
        .expect("apply")
        .expect("applied");
    assert_eq!(
        reason(&record_one(&mut db, at("c1", Direction::In, NOW))),
        Reason::SecondFactorRequired
    );
    let face = PassInput {
        credential: Credential {
            kind: CredentialKind::Face,
            id: "P1".into(),
            score: Some(0.95),
        },
        ..at("P1", Direction::In, NOW + 3_000)
    };
    assert_eq!(reason(&record_one(&mut db, face.clone())), Reason::Staff);
    // The pair is used up: the face alone again waits for a card.
    let again = PassInput {
        now: NOW + 4_000,
        ..face
    };
    assert_eq!(
        reason(&record_one(&mut db, again)),
        Reason::SecondFactorRequired
    );
}

#[test]
fn the_calendar_list_closes_a_schedule_on_its_dates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut policy = Policy::default();
    let day = vec![crate::core::Span {
        start: 0,
        end: 24 * 60,
    }];
    policy.schedules.insert(
        "always".into(),
        crate::core::Schedule {
            week: std::array::from_fn(|_| day.clone()),
            calendar: true,
        },
    );
    let mut db = open_with(&dir, "g.db", "east-1", policy);
    let body = r#"{"list":"staff","site":"hq","version":1,"entries":[{"subject":"E1",
        "credentials":[{"kind":"card","id":"c1"}],"gates":["*"],"schedule":"always"}]}"#;
    db.apply_snapshot(&parse_snapshot(ListName::Staff, body.as_bytes()).expect("staff"))
        .expect("apply")
        .expect("applied");
    assert_eq!(
        reason(&record_one(&mut db, at("c1", Direction::In, NOW))),
        Reason::Staff
    );
    // NOW is 2026-11-18 11:06 UTC: a holiday that day.
    let cal = r#"{"list":"calendar","site":"hq","version":1,"entries":[
        {"date":"2026-11-18","name":"Closed","hours":[]},
        {"date":"2026-11-20","hours":["09:00-10:00"]}]}"#;
    db.apply_snapshot(&parse_snapshot(ListName::Calendar, cal.as_bytes()).expect("calendar"))
        .expect("apply")
        .expect("applied");
    assert_eq!(db.list_versions().expect("versions").calendar, 1);
    assert_eq!(
        reason(&record_one(&mut db, at("c1", Direction::In, NOW + 1))),
        Reason::OutsideSchedule
    );
    drop(db);
    // The calendar in force is read again at start.
    let mut policy = Policy::default();
    policy.schedules.insert(
        "always".into(),
        crate::core::Schedule {
            week: std::array::from_fn(|_| day.clone()),
            calendar: true,
        },
    );
    let mut db = open_with(&dir, "g.db", "east-1", policy);
    assert_eq!(
        reason(&record_one(&mut db, at("c1", Direction::In, NOW + 2))),
        Reason::OutsideSchedule
    );
    // A malformed calendar date is refused by the parser, naming it.
    let bad = r#"{"list":"calendar","site":"hq","version":2,"entries":[{"date":"2026-13-01"}]}"#;
    let r = parse_snapshot(ListName::Calendar, bad.as_bytes()).expect_err("refused");
    assert!(r.detail().contains("2026-13-01"), "{r}");
}

#[test]
fn a_calendar_date_that_names_schedules_overrides_only_those() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = || {
        let mut policy = Policy::default();
        let day = vec![crate::core::Span {
            start: 0,
            end: 24 * 60,
        }];
        for name in ["office", "night"] {
            policy.schedules.insert(
                name.into(),
                crate::core::Schedule {
                    week: std::array::from_fn(|_| day.clone()),
                    calendar: true,
                },
            );
        }
        policy
    };
    let mut db = open_with(&dir, "g.db", "east-1", policy());
    let body = r#"{"list":"staff","site":"hq","version":1,"entries":[
        {"subject":"E1","credentials":[{"kind":"card","id":"c1"}],"gates":["*"],"schedule":"office"},
        {"subject":"E2","credentials":[{"kind":"card","id":"c2"}],"gates":["*"],"schedule":"night"}]}"#;
    db.apply_snapshot(&parse_snapshot(ListName::Staff, body.as_bytes()).expect("staff"))
        .expect("apply")
        .expect("applied");
    // NOW is 2026-11-18 11:06 UTC: an office holiday that day.
    let cal = r#"{"list":"calendar","site":"hq","version":1,"entries":[
        {"date":"2026-11-18","name":"Office closed","hours":[],"schedules":["office"]}]}"#;
    db.apply_snapshot(&parse_snapshot(ListName::Calendar, cal.as_bytes()).expect("calendar"))
        .expect("apply")
        .expect("applied");
    let check = |db: &mut Db, t: i64| {
        assert_eq!(
            reason(&record_one(db, at("c1", Direction::In, t))),
            Reason::OutsideSchedule
        );
        assert_eq!(
            reason(&record_one(db, at("c2", Direction::In, t + 1))),
            Reason::Staff
        );
    };
    check(&mut db, NOW);
    drop(db);
    // The names are kept in the store and read again at start.
    let mut db = open_with(&dir, "g.db", "east-1", policy());
    check(&mut db, NOW + 10);
    // An empty list of names would override nothing: refused, naming it.
    let bad = r#"{"list":"calendar","site":"hq","version":2,"entries":[
        {"date":"2026-11-18","hours":[],"schedules":[]}]}"#;
    let r = parse_snapshot(ListName::Calendar, bad.as_bytes()).expect_err("refused");
    assert!(r.detail().contains("entries[0].schedules"), "{r}");
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

#[test]
fn an_outage_is_kept_across_a_restart_and_reported_with_its_decisions_once_contact_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hour = 3_600_000;
    let policy = Policy {
        staff_max_offline: Some(24 * hour),
        ..Policy::default()
    };
    let mut db = open_with(&dir, "g.db", "east-1", policy.clone());
    db.apply_snapshot(&staff_snapshot(1, &[("E1", "c1")]))
        .expect("apply")
        .expect("applied");
    db.expect_centre().expect("centre");
    db.contact(true, NOW).expect("contact");
    // Decisions in contact are not counted.
    record_one(&mut db, at("c1", Direction::In, NOW + 1));
    assert_eq!(db.last_offline(), None, "a first connection is no outage");
    db.contact(false, NOW + hour).expect("lost");
    record_one(&mut db, at("c1", Direction::Out, NOW + 2 * hour));
    record_one(&mut db, at("nobody", Direction::In, NOW + 3 * hour));
    drop(db);
    // Restarted while still offline: the count so far survives.
    let mut db = open_with(&dir, "g.db", "east-1", policy);
    db.expect_centre().expect("centre");
    assert_eq!(
        reason(&record_one(
            &mut db,
            at("c1", Direction::In, NOW + 26 * hour)
        )),
        Reason::OfflineLimit
    );
    db.contact(true, NOW + 27 * hour).expect("back");
    assert_eq!(
        db.last_offline(),
        Some(Outage {
            since: Some(NOW + hour),
            until: NOW + 27 * hour,
            counts: OfflineCounts {
                granted: 1,
                denied: 2,
                offline_limit: 1
            },
        })
    );
    assert_eq!(db.offline_counts(), OfflineCounts::default());
    // Still connected: the next status tick changes nothing, and the report is kept.
    db.contact(true, NOW + 28 * hour).expect("tick");
    record_one(&mut db, at("c1", Direction::Out, NOW + 28 * hour));
    assert_eq!(db.offline_counts(), OfflineCounts::default());
    assert_eq!(db.last_offline().map(|o| o.until), Some(NOW + 27 * hour));
}

#[test]
fn a_clear_for_an_unknown_subject_is_refused_and_records_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut east = open_with(&dir, "east.db", "east-1", hard_passback());
    east.apply_snapshot(&staff_snapshot(1, &[("E1", "c1")]))
        .expect("apply")
        .expect("applied");
    let ov = || crate::sync::contract::Override {
        source: "remote".into(),
        input: CLEAR_PASSBACK.into(),
        by: Some("ops".into()),
    };
    let refused = east
        .clear_passback(
            "E2",
            ov(),
            Some(&stamp("n-unknown-1", NOW, NOW + 60_000)),
            NOW,
        )
        .expect("store");
    assert!(
        matches!(&refused, Err(Refusal::UnknownSubject(d)) if d.contains("`E2`")),
        "{refused:?}"
    );
    assert!(events_of(&east).is_empty(), "nothing recorded");
    // A staff entry in force, even without a state yet, is known.
    east.clear_passback("E1", ov(), None, NOW + 1)
        .expect("store")
        .expect("cleared");
    // A state learned from a peer, for a subject not in this gate's lists, is known too.
    let mut west = open_with(&dir, "west.db", "west-1", hard_passback());
    west.apply_snapshot(&staff_snapshot(1, &[("W9", "c9")]))
        .expect("apply")
        .expect("applied");
    record_one(&mut west, at("c9", Direction::In, NOW + 2));
    east.learn(&events_of(&west), NOW + 3).expect("learn");
    east.clear_passback("W9", ov(), None, NOW + 4)
        .expect("store")
        .expect("cleared");
}

#[test]
fn clear_passback_all_forgets_everyone_here_and_at_the_peers_up_to_its_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut east = open_with(&dir, "east.db", "east-1", hard_passback());
    let mut west = open_with(&dir, "west.db", "west-1", hard_passback());
    for db in [&mut east, &mut west] {
        db.apply_snapshot(&staff_snapshot(
            1,
            &[("E1", "c1"), ("E2", "c2"), ("E3", "c3")],
        ))
        .expect("apply")
        .expect("applied");
    }
    record_one(&mut east, at("c1", Direction::In, NOW));
    record_one(&mut east, at("c2", Direction::In, NOW + 1));
    west.learn(&events_of(&east), NOW + 2).expect("learn");
    let ov = crate::sync::contract::Override {
        source: "remote".into(),
        input: CLEAR_PASSBACK_ALL.into(),
        by: Some("ops".into()),
    };
    let (event, cleared) = east
        .clear_passback_all(ov, None, NOW + 10)
        .expect("store")
        .expect("cleared");
    assert_eq!(cleared, 2);
    assert_eq!(event.subject, None);
    assert_eq!(event.flags, vec![NO_RELEASE.to_string()]);
    assert!(!event.released(), "no lane opens");
    for s in ["E1", "E2"] {
        assert_eq!(east.last_pass(s).expect("state"), None, "{s} at east");
    }
    assert_eq!(
        reason(&record_one(&mut east, at("c1", Direction::In, NOW + 11))),
        Reason::Staff
    );
    // West passed E3 after the clear (by its time): that state stands when it learns it.
    record_one(&mut west, at("c3", Direction::In, NOW + 20));
    west.learn(&[event], NOW + 21).expect("learn");
    for s in ["E1", "E2"] {
        assert_eq!(west.last_pass(s).expect("state"), None, "{s} at west");
    }
    assert_eq!(
        west.last_pass("E3").expect("state").map(|l| l.direction),
        Some(Direction::In)
    );
}

#[test]
fn a_responder_kept_in_the_store_passes_a_lockdown_and_a_delta_can_take_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    let body = r#"{"list":"staff","site":"hq","version":1,"entries":[
        {"subject":"E1","credentials":[{"kind":"card","id":"0001"}],"gates":["*"]},
        {"subject":"R7","credentials":[{"kind":"card","id":"0007"}],"gates":["*"],
         "lockdown_exempt":true}]}"#;
    db.apply_snapshot(&parse_snapshot(ListName::Staff, body.as_bytes()).expect("snapshot"))
        .expect("db")
        .expect("applied");
    db.set_mode(Mode::Lockdown, "remote", "normal -> lockdown", None, NOW)
        .expect("db")
        .expect("set");
    assert_eq!(
        reason(&record_one(&mut db, pass("0001", None))),
        Reason::Lockdown
    );
    assert_eq!(
        reason(&record_one(&mut db, pass("0007", None))),
        Reason::LockdownExempt
    );
    let delta = r#"{"list":"staff","site":"hq","version":2,"base":1,"upsert":[
        {"subject":"R7","credentials":[{"kind":"card","id":"0007"}],"gates":["*"]}]}"#;
    db.apply_delta(&parse_delta(ListName::Staff, delta.as_bytes()).expect("delta"))
        .expect("db")
        .expect("applied");
    assert_eq!(
        reason(&record_one(&mut db, pass("0007", None))),
        Reason::Lockdown
    );
}

/// The visitors list of the clock tests: INV-1 (card q1), limited in time.
fn visitor_limited_in_time(db: &mut Db) {
    let body = r#"{"list":"visitors","site":"hq","version":1,"entries":[{"invitation":"INV-1",
        "credentials":[{"kind":"card","id":"q1"}],"valid_until":"2099-01-01T00:00:00Z",
        "gates":["*"]}]}"#;
    db.apply_snapshot(&parse_snapshot(ListName::Visitors, body.as_bytes()).expect("snapshot"))
        .expect("apply")
        .expect("applied");
}

const YEAR: i64 = 365 * 24 * 3600 * 1000;

/// A gate that ran a year ahead: a pass recorded, and a command judged, at NOW + YEAR.
fn ran_a_year_ahead(db: &mut Db) {
    visitor_limited_in_time(db);
    assert_eq!(
        reason(&record_one(db, at("q1", Direction::In, NOW + YEAR))),
        Reason::Visitor
    );
    db.claim_nonce(
        &stamp("n-ahead", NOW + YEAR, NOW + YEAR + 60_000),
        NOW + YEAR,
    )
    .expect("db")
    .expect("fresh");
}

#[test]
fn a_time_attestation_recovers_a_clock_that_ran_ahead_once_and_not_for_an_old_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    // A command of the right time, before the clock ran ahead: its nonce is forgotten while
    // the clock reads a year ahead.
    db.claim_nonce(&stamp("n-before", NOW - 1000, NOW + 60_000), NOW - 1000)
        .expect("db")
        .expect("fresh");
    ran_a_year_ahead(&mut db);
    // Back at the right time: behind what the gate has seen, on both counts.
    assert_eq!(
        db.clock_state(NOW),
        ClockState::Untrusted(crate::core::Untrust::BeforeLastEvent)
    );
    let behind = db.clock_behind(NOW).expect("db").expect("behind");
    assert_eq!(
        (behind.event, behind.command, behind.gate.as_str()),
        (Some(NOW + YEAR), Some(NOW + YEAR), "east-1")
    );
    let expired = db
        .claim_nonce(&stamp("n-now", NOW, NOW + 60_000), NOW)
        .expect("db")
        .expect_err("expired on the command clock");
    assert!(
        expired.detail().contains("gatectl cmd attest-time"),
        "{expired}"
    );

    // An attestation vouches for the clock as it reads: one from a clock 10 min later is
    // refused, and so is one valid longer than the bound.
    let later = db
        .attest_time(&stamp("a-later", NOW + 600_000, NOW + 660_000), "key", NOW)
        .expect("db")
        .expect_err("the clocks differ");
    assert_eq!(later.code(), "not_yet_valid", "{later}");
    let long = db
        .attest_time(&stamp("a-long", NOW, NOW + 3_600_000), "key", NOW)
        .expect("db")
        .expect_err("too long");
    assert_eq!(long.code(), "expired", "{long}");
    assert!(!db.clock_state(NOW).trusted(), "a refusal changes nothing");

    let detail = db
        .attest_time(&stamp("a-right", NOW, NOW + 60_000), "key `ops`", NOW)
        .expect("db")
        .expect("attested");
    assert!(detail.contains("key `ops`"), "{detail}");
    assert!(db.clock_state(NOW).trusted());
    assert_eq!(db.clock_behind(NOW).expect("db"), None);
    // The same attestation again is a replay.
    let replay = db
        .attest_time(&stamp("a-right", NOW, NOW + 60_000), "key", NOW + 1000)
        .expect("db")
        .expect_err("replayed");
    assert_eq!(replay.code(), "replayed", "{replay}");
    // The command from before: unexpired and its nonce forgotten, yet refused, because it
    // was issued before the attestation.
    let old = db
        .claim_nonce(&stamp("n-before", NOW - 1000, NOW + 60_000), NOW + 1000)
        .expect("db")
        .expect_err("from before the attestation");
    assert_eq!(old.code(), "stale", "{old}");
    db.claim_nonce(&stamp("n-after", NOW + 1000, NOW + 60_000), NOW + 1000)
        .expect("db")
        .expect("a command after the attestation is taken");
    // All of it survives a restart; the attestation is recorded as an alarm.
    drop(db);
    let mut db = open(&dir);
    assert!(db.clock_state(NOW + 2000).trusted());
    assert_eq!(
        db.claim_nonce(&stamp("n-before", NOW - 1000, NOW + 60_000), NOW + 2000)
            .expect("db")
            .map_err(|r| r.code()),
        Err("stale")
    );
    let alarms: Vec<String> = db
        .pending(0, 1000)
        .expect("pending")
        .into_iter()
        .filter(|r| r.stream == Stream::Alarm)
        .map(|r| r.payload)
        .collect();
    assert!(
        alarms.iter().any(|a| a.contains("clock_attested")),
        "{alarms:?}"
    );
}

#[test]
fn a_lockdown_is_judged_on_the_gates_own_clock_and_taken_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    ran_a_year_ahead(&mut db);
    let hold = db
        .set_mode(
            Mode::HoldOpen,
            "remote",
            "d",
            Some(&stamp("n-hold", NOW, NOW + 60_000)),
            NOW,
        )
        .expect("db")
        .expect_err("expired on the command clock");
    assert_eq!(hold.code(), "expired");
    let lock = stamp("n-lock", NOW, NOW + 60_000);
    db.set_mode(Mode::Lockdown, "remote", "d", Some(&lock), NOW)
        .expect("db")
        .expect("a lockdown is taken");
    assert_eq!(db.mode(), Mode::Lockdown);
    // A later command judged while the command clock is still ahead does not make the
    // lockdown's nonce forgotten: it is refused as a replay while it is valid.
    let _ = db.claim_nonce(&stamp("n-other", NOW + 1000, NOW + 60_000), NOW + 1000);
    let again = db
        .set_mode(Mode::Lockdown, "remote", "d", Some(&lock), NOW + 2000)
        .expect("db")
        .expect_err("replayed");
    assert_eq!(again.code(), "replayed", "{again}");
    // Past its expiry on the gate's own clock, a lockdown is refused like any command.
    let old = db
        .set_mode(
            Mode::Lockdown,
            "remote",
            "d",
            Some(&stamp("n-old-lock", NOW - 120_000, NOW - 60_000)),
            NOW,
        )
        .expect("db")
        .expect_err("expired");
    assert_eq!(old.code(), "expired", "{old}");
}

#[test]
fn an_attested_jump_counts_again_when_the_clock_jumps_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    let jumped = ClockSense {
        synced: None,
        jumped: true,
    };
    db.set_clock_sense(jumped);
    assert_eq!(
        db.clock_state(NOW),
        ClockState::Untrusted(crate::core::Untrust::Jumped)
    );
    db.attest_time(&stamp("a-jump", NOW, NOW + 60_000), "key", NOW)
        .expect("db")
        .expect("attested");
    assert!(db.clock_state(NOW).trusted());
    // The watcher reports the same sense again: still attested.
    db.set_clock_sense(jumped);
    assert!(db.clock_state(NOW).trusted());
    // A new jump (the watcher lowers the floor for each one) is untrusted again.
    db.lower_floor(NOW).expect("lower");
    assert_eq!(
        db.clock_state(NOW),
        ClockState::Untrusted(crate::core::Untrust::Jumped)
    );
}

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
    let alarm: crate::sync::contract::Alarm = serde_json::from_str(&rows[3].1).expect("alarm json");
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
    let alarm: crate::sync::contract::Alarm =
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
    let alarm: crate::sync::contract::Alarm =
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
    let now = crate::clock::now_ms();
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
    let alarm: crate::sync::contract::Alarm =
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
    let alarm: crate::sync::contract::Alarm =
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

// ---- a store that cannot write (issue 22, item 2) --------------------------------------------

/// Failing writes are logged once and then once per 10 s with their count (not 66 lines a
/// second), and after 60 s of nothing but failures the process is to end; one success resets.
#[test]
fn failing_writes_are_logged_sparingly_and_given_up_after_a_bound() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
    let mut h = WriteHealth::new(t0);
    assert_eq!(h.failed(at(0), false), Failing::Log { failures: 1 });
    let quiet = (1..660)
        .filter(|i| h.failed(at(i * 15), false) == Failing::Quiet)
        .count();
    assert_eq!(quiet, 659, "66 failures a second for 10 s: no line");
    assert_eq!(h.failed(at(10_000), false), Failing::Log { failures: 660 });
    assert_eq!(h.failed(at(59_999), false), Failing::Log { failures: 1 });
    assert_eq!(h.failed(at(60_000), false), Failing::GiveUp);

    h.passes = 3;
    assert_eq!(
        h.succeeded(at(60_500)),
        Some((std::time::Duration::from_millis(60_500), 3))
    );
    assert_eq!(h.succeeded(at(60_600)), None, "recovered once");
    assert_eq!(h.failed(at(61_000), false), Failing::Log { failures: 1 });
    assert_eq!(h.failed(at(120_999), false), Failing::Log { failures: 1 });
    assert_eq!(
        h.failed(at(121_000), false),
        Failing::GiveUp,
        "the bound starts again"
    );
}

/// While writes fail the owner thread tries again after 1 s, doubling to 8 s, and opens a
/// new connection only after the kind of error a new one may cure; an idle store is probed
/// 30 s after its last write.
#[test]
fn failing_writes_are_retried_with_backoff_and_an_idle_store_is_probed() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
    let s = std::time::Duration::from_secs;
    let mut h = WriteHealth::new(t0);
    assert_eq!(h.wait(t0), s(30), "idle: the probe");
    h.failed(at(0), true);
    assert_eq!(h.wait(at(0)), s(1));
    assert!(!h.reconnect_due(at(999)) && h.reconnect_due(at(1000)));
    h.failed(at(500), true); // a pass in between does not move the next try
    assert_eq!(h.wait(at(500)), std::time::Duration::from_millis(500));
    let mut t = 1000;
    for want in [2, 4, 8, 8] {
        h.failed(at(t), true);
        assert_eq!(h.wait(at(t)), s(want), "after the try at {t} ms");
        t += want * 1000;
    }
    h.failed(at(t), false);
    assert!(
        !h.reconnect_due(at(t + 60_000)),
        "busy: the same connection"
    );
    h.succeeded(at(t + 1));
    assert_eq!(h.wait(at(t + 1)), s(30));
}

fn sqlite_error(code: i32) -> StoreError {
    StoreError::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(code),
        None,
    ))
}

#[test]
fn read_only_io_and_open_errors_call_for_a_new_connection_busy_and_full_do_not() {
    use rusqlite::ffi;
    for code in [
        ffi::SQLITE_READONLY,
        ffi::SQLITE_READONLY_RECOVERY,
        ffi::SQLITE_IOERR,
        ffi::SQLITE_IOERR_WRITE,
        ffi::SQLITE_IOERR_FSYNC,
        ffi::SQLITE_CANTOPEN,
    ] {
        assert!(needs_reconnect(&sqlite_error(code)), "{code}");
    }
    for code in [ffi::SQLITE_BUSY, ffi::SQLITE_FULL, ffi::SQLITE_CORRUPT] {
        assert!(!needs_reconnect(&sqlite_error(code)), "{code}");
    }
}

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

/// The checkpoint thread's connection, like the owner's, is replaced after a read-only error:
/// pages committed to the log reach the database file again.
#[test]
fn the_checkpoint_thread_opens_a_new_connection_after_a_read_only_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let mut db = open(&dir);
    let mut c = Checkpointer::open(&path).expect("checkpointer");
    c.conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("read-only");
    db.probe(NOW).expect("write");
    let before = std::fs::read(&path).expect("read");
    let (stop_tx, stop) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || c.run(&stop));
    let end = Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read(&path).expect("read") == before {
        assert!(
            Instant::now() < end,
            "the log was not copied into the database within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(stop_tx);
    t.join().expect("checkpoint thread");
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
    let store = open_store(&path).expect("open");
    assert!(Store::held_by_another(&path));
    drop(store);
    // The lock goes with the store's threads: wait for them to end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Store::held_by_another(&path) {
        assert!(std::time::Instant::now() < deadline, "still held");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
