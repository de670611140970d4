//! List tests: snapshots (whole and chunked), deltas, the calendar, invitation entries.

use super::*;

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
