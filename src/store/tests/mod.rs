//! Store tests against a real SQLite file.

use super::*;
use crate::core::{ClockSense, ClockState, Credential, CredentialKind, Direction, Mode, Reason};
use gated_contract::{ListName, NO_RELEASE, Refusal, parse_delta, parse_snapshot};

mod commands;
mod lists;
mod opening;
mod outbox;
mod passes;
mod peers;
mod salvage;
mod state;

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

fn staff_snapshot(version: u64, cards: &[(&str, &str)]) -> gated_contract::Snapshot {
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

fn count(db_path: &std::path::Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(db_path).expect("open");
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
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

fn events_of(db: &Db) -> Vec<gated_contract::PassEvent> {
    db.pending(0, 1000)
        .expect("pending")
        .into_iter()
        .filter(|r| r.stream == Stream::Event)
        .map(|r| serde_json::from_str(&r.payload).expect("event json"))
        .collect()
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
