//! Command tests: nonces, overrides, the mode, anti-passback clears, the command clock.

use super::*;

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
    let ov = gated_contract::Override {
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

#[test]
fn a_clear_for_an_unknown_subject_is_refused_and_records_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut east = open_with(&dir, "east.db", "east-1", hard_passback());
    east.apply_snapshot(&staff_snapshot(1, &[("E1", "c1")]))
        .expect("apply")
        .expect("applied");
    let ov = || gated_contract::Override {
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
    let ov = gated_contract::Override {
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
