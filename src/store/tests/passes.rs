//! Pass tests: a mailbox event decided once, two-factor lanes.

use super::*;

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
