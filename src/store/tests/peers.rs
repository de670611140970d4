//! Tests of what a gate learns from the other gates of its site.

use super::*;

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
    renewed.ts = gated_contract::format_ts(NOW + 3);
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
    ahead.ts = gated_contract::format_ts(NOW + 365 * 86_400_000);
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
    let ov = gated_contract::Override {
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
