//! Tests of the clock floor, attestation, and the contact with the centre.

use super::*;

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
