//! Lists and backlogs of a given size, written through gated's own store code into a real
//! SQLite file, as the daemon would have written them.

use std::path::Path;

use anyhow::{Context as _, Result};
use gated::core::{Credential, CredentialKind, Direction, Policy};
use gated::store::{Db, GateId, PassInput};
use gated_contract::{ListName, Snapshot, parse_snapshot};

use crate::infra::{GATE, SITE};

/// A fixed "now" (2026-11-22), inside every validity window below.
pub const NOW: i64 = 1_795_300_000_000;

pub fn gate_id() -> GateId {
    GateId {
        site: SITE.into(),
        gate: GATE.into(),
    }
}

pub fn open(path: &Path) -> Result<Db> {
    Db::open(path, gate_id(), Policy::default(), 2_000_000).context("open the benchmark database")
}

/// Card id of staff member `i`.
pub fn card(i: usize) -> String {
    format!("C{i:08}")
}

/// Face id of staff member `i`.
pub fn face(i: usize) -> String {
    format!("F{i:08}")
}

/// QR code of invitation `i`.
pub fn qr(i: usize) -> String {
    format!("Q{i:08}")
}

/// The JSON body of a staff snapshot with `n` people, each with one card and one face. The
/// names change with `version`, so a new version rewrites every row.
pub fn staff_body(version: u64, n: usize) -> String {
    let mut s = format!(
        r#"{{"list":"staff","site":"{SITE}","version":{version},"issued_at":"2026-11-22T06:00:00Z","entries":["#
    );
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s += &format!(
            r#"{{"subject":"E{i:08}","name":"Person {i} v{version}","credentials":[{{"kind":"card","id":"{}"}},{{"kind":"face","id":"{}"}}],"valid_from":null,"valid_until":"2099-12-31T23:59:59Z","gates":["*"]}}"#,
            card(i),
            face(i)
        );
    }
    s += "]}";
    s
}

/// The JSON body of a visitors snapshot with `n` invitations, each a QR code good for 2
/// entries at every gate.
pub fn visitors_body(version: u64, n: usize) -> String {
    let mut s = format!(
        r#"{{"list":"visitors","site":"{SITE}","version":{version},"issued_at":"2026-11-22T06:00:00Z","entries":["#
    );
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s += &format!(
            r#"{{"invitation":"INV{i:08}","visitor":"Visitor {i}","host":"E{:08}","credentials":[{{"kind":"qr","id":"{}"}}],"valid_from":"2026-11-01T00:00:00Z","valid_until":"2026-12-31T00:00:00Z","gates":["{GATE}"],"max_entries":2}}"#,
            i % 1000,
            qr(i)
        );
    }
    s += "]}";
    s
}

pub fn snapshot(list: ListName, body: &str) -> Result<Snapshot> {
    parse_snapshot(list, body.as_bytes())
        .map_err(|r| anyhow::anyhow!("generated list refused: {r:?}"))
}

/// Brings `staff` people and `visitors` invitations into force.
pub fn lists(db: &mut Db, version: u64, staff: usize, visitors: usize) -> Result<()> {
    let s = snapshot(ListName::Staff, &staff_body(version, staff))?;
    db.apply_snapshot(&s)?
        .map_err(|r| anyhow::anyhow!("staff list refused: {r:?}"))?;
    if visitors > 0 {
        let v = snapshot(ListName::Visitors, &visitors_body(version, visitors))?;
        db.apply_snapshot(&v)?
            .map_err(|r| anyhow::anyhow!("visitors list refused: {r:?}"))?;
    }
    Ok(())
}

/// A swipe of staff card `i` on `lane`, with no mailbox position.
pub fn swipe(i: usize, lane: u16) -> PassInput {
    PassInput {
        from: None,
        lane,
        direction: if i.is_multiple_of(2) {
            Direction::In
        } else {
            Direction::Out
        },
        credential: Credential {
            kind: CredentialKind::Card,
            id: card(i),
            score: None,
        },
        now: NOW,
        seen: None,
    }
}

/// Records `n` passes (decided against the lists in force, as swipes would be) that stay in
/// the outbox: the backlog of a gate whose uplink has been down. Batches of 10,000 per
/// transaction, to write a million in seconds.
pub fn backlog(db: &mut Db, n: usize, staff: usize) -> Result<()> {
    let staff = staff.max(1);
    let mut done = 0;
    while done < n {
        let batch: Vec<PassInput> = (done..(done + 10_000).min(n))
            .map(|i| swipe((i * 7919) % staff, (i % 8) as u16))
            .collect();
        db.record_passes(&batch)?;
        done += batch.len();
    }
    Ok(())
}
