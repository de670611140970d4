//! What gatectl sends, as data: snapshot, delta and command bodies; edits of a list; versions;
//! fresh codes and nonces. No I/O: `ops` reads the broker and calls these.
//!
//! Every body is built, then parsed back with the gate's own parser (`parse_snapshot`,
//! `parse_delta`, `parse_command`); only a body that passes is returned for signing.

use std::collections::BTreeMap;

use rand::RngCore as _;
use serde::Serialize;

use crate::core::{Direction, UnixMs};
use gated_contract::envelope::Verifier;
use gated_contract::{
    CommandBody, CommandKind, DenyEntry, Entries, ListName, MAX_COMMAND_LIFETIME_MS, Refusal,
    Snapshot, StaffEntry, VisitorEntry, format_ts, parse_command, parse_delta, parse_snapshot,
    parse_ts,
};

#[derive(Serialize)]
struct SnapshotOut<'a, T> {
    list: ListName,
    site: &'a str,
    version: u64,
    issued_at: String,
    entries: &'a [T],
}

#[derive(Serialize)]
struct DeltaOut<'a, T> {
    list: ListName,
    site: &'a str,
    version: u64,
    base: u64,
    upsert: &'a [T],
    remove: &'a [String],
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs with string keys: serializing them cannot fail.
    serde_json::to_vec(v).expect("list bodies serialize")
}

/// The snapshot body of `entries` as version `version`, checked by the gate's parser.
pub fn snapshot_body(
    site: &str,
    version: u64,
    now: UnixMs,
    entries: &Entries,
) -> Result<Vec<u8>, Refusal> {
    fn body<T: Serialize>(
        list: ListName,
        site: &str,
        version: u64,
        now: UnixMs,
        e: &[T],
    ) -> Vec<u8> {
        to_json(&SnapshotOut {
            list,
            site,
            version,
            issued_at: format_ts(now),
            entries: e,
        })
    }
    let (list, bytes) = match entries {
        Entries::Staff(v) => (
            ListName::Staff,
            body(ListName::Staff, site, version, now, v),
        ),
        Entries::Visitors(v) => (
            ListName::Visitors,
            body(ListName::Visitors, site, version, now, v),
        ),
        Entries::Deny(v) => (ListName::Deny, body(ListName::Deny, site, version, now, v)),
        Entries::Calendar(v) => (
            ListName::Calendar,
            body(ListName::Calendar, site, version, now, v),
        ),
    };
    parse_snapshot(list, &bytes)?;
    Ok(bytes)
}

/// The delta body `base` → `version`, checked by the gate's parser.
pub fn delta_body(
    site: &str,
    version: u64,
    base: u64,
    upsert: &Entries,
    remove: &[String],
) -> Result<Vec<u8>, Refusal> {
    fn body<T: Serialize>(
        list: ListName,
        site: &str,
        (version, base): (u64, u64),
        upsert: &[T],
        remove: &[String],
    ) -> Vec<u8> {
        to_json(&DeltaOut {
            list,
            site,
            version,
            base,
            upsert,
            remove,
        })
    }
    let v = (version, base);
    let (list, bytes) = match upsert {
        Entries::Staff(u) => (ListName::Staff, body(ListName::Staff, site, v, u, remove)),
        Entries::Visitors(u) => (
            ListName::Visitors,
            body(ListName::Visitors, site, v, u, remove),
        ),
        Entries::Deny(u) => (ListName::Deny, body(ListName::Deny, site, v, u, remove)),
        Entries::Calendar(u) => (
            ListName::Calendar,
            body(ListName::Calendar, site, v, u, remove),
        ),
    };
    parse_delta(list, &bytes)?;
    Ok(bytes)
}

/// The list an `Entries` belongs to.
pub fn list_of(e: &Entries) -> ListName {
    match e {
        Entries::Staff(_) => ListName::Staff,
        Entries::Visitors(_) => ListName::Visitors,
        Entries::Deny(_) => ListName::Deny,
        Entries::Calendar(_) => ListName::Calendar,
    }
}

/// What a remote command asks, before it has a nonce and a time.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandRequest {
    pub site: String,
    pub gate: String,
    pub cmd: CommandKind,
    pub lane: Option<u16>,
    pub direction: Option<Direction>,
    /// For `clear_passback`: the subject.
    pub subject: Option<String>,
    /// For `attest_time`: the challenge from the gate's status.
    pub challenge: Option<String>,
    /// How long the gate may carry it out, from `now`.
    pub ttl_ms: i64,
}

/// A command body with a fresh nonce, valid from `now` for the request's ttl, checked by the
/// gate's parser. Returns the nonce (the `ref` of its ack) and the body.
pub fn command_body(req: &CommandRequest, now: UnixMs) -> Result<(String, Vec<u8>), Refusal> {
    if !(1000..=MAX_COMMAND_LIFETIME_MS).contains(&req.ttl_ms) {
        return Err(Refusal::Malformed(format!(
            "the ttl must be 1..={} s",
            MAX_COMMAND_LIFETIME_MS / 1000
        )));
    }
    let nonce = new_nonce();
    let body = CommandBody {
        site: req.site.clone(),
        gate: req.gate.clone(),
        cmd: req.cmd,
        lane: req.lane,
        direction: req.direction,
        subject: req.subject.clone(),
        challenge: req.challenge.clone(),
        nonce: nonce.clone(),
        issued_at: format_ts(now),
        expires_at: format_ts(now + req.ttl_ms),
    };
    let bytes = to_json(&body);
    parse_command(&bytes)?;
    Ok((nonce, bytes))
}

// ---- codes -----------------------------------------------------------------------------------

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, upper case, no padding.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// A visitor's code: 128 random bits as 26 base32 characters. Upper-case letters and digits
/// are what a QR code's alphanumeric mode packs densely, and what a reader mailbox carries
/// (ASCII, at most 64 bytes).
pub fn new_token() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    base32(&b)
}

/// A command nonce: 16 random bytes in hex.
pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An invitation id: `INV-` and 40 random bits.
pub fn new_invitation_id() -> String {
    let mut b = [0u8; 5];
    rand::rng().fill_bytes(&mut b);
    format!("INV-{}", base32(&b))
}

// ---- the retained snapshot and versions --------------------------------------------------------

/// The retained snapshot of a list, opened and checked.
pub fn open_retained(
    verifier: &Verifier,
    list: ListName,
    site: &str,
    payload: &[u8],
) -> Result<(Snapshot, Option<String>), Refusal> {
    let opened = verifier.open(payload)?;
    let snap = parse_snapshot(list, &opened.body)?;
    if snap.site != site {
        return Err(Refusal::WrongSite(format!(
            "it is for site `{}`, not `{site}`",
            snap.site
        )));
    }
    Ok((snap, opened.key))
}

/// The version after the retained snapshot, which is signed. Versions the gates report in
/// their status are not signed: a compromised gate could report `i64::MAX` and, if it were
/// believed, make the next push the last version there can ever be. They only warn.
pub fn next_version(retained: Option<u64>) -> u64 {
    retained.unwrap_or(0).saturating_add(1)
}

/// The gates that report a newer version of `list` than `base`, as a warning: they will refuse
/// what is built on `base` (as stale, or as a gap), and keep what they hold. It happens when
/// another admin is publishing at the same moment, when the broker lost its retained messages,
/// or when a gate's status is wrong.
pub fn ahead_of(list: ListName, base: u64, reported: &BTreeMap<String, u64>) -> Option<String> {
    let ahead: Vec<String> = reported
        .iter()
        .filter(|(_, v)| **v > base)
        .map(|(g, v)| format!("{g} reports {}@{v}", list.as_str()))
        .collect();
    if ahead.is_empty() {
        return None;
    }
    Some(format!(
        "{} (above {}@{base}, the signed retained version): those gates will refuse this \
         and keep what they hold. If the broker lost the retained list, push the whole list \
         with `gatectl push {} --file F --force-version N` above their version",
        ahead.join(", "),
        list.as_str(),
        list.as_str()
    ))
}

// ---- edits -----------------------------------------------------------------------------------

/// A change to a list: the delta's `upsert` and `remove`, and the whole list after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Edit {
    pub upsert: Entries,
    pub remove: Vec<String>,
    pub next: Entries,
}

/// How long an invitation stays in the visitors list past its window, by default: while it is
/// there its code is refused `expired` (the visitor came back a day late, and the guard sees
/// why), not `unknown_credential`. Bounded, so the list does not grow for ever.
pub const KEEP_EXPIRED_DAYS: u32 = 30;

/// `days` in milliseconds.
pub fn days_ms(days: u32) -> i64 {
    i64::from(days) * 24 * 3600 * 1000
}

fn expired_for_longer(e: &VisitorEntry, now: UnixMs, keep_ms: i64) -> bool {
    e.valid_until
        .as_deref()
        .and_then(|t| parse_ts(t).ok())
        .is_some_and(|until| until.saturating_add(keep_ms) < now)
}

/// Splits invitations into those to keep at `now` and the ids of those whose window ended
/// more than `keep_ms` ago.
fn prune(current: &[VisitorEntry], now: UnixMs, keep_ms: i64) -> (Vec<VisitorEntry>, Vec<String>) {
    let (gone, kept): (Vec<&VisitorEntry>, Vec<&VisitorEntry>) = current
        .iter()
        .partition(|e| expired_for_longer(e, now, keep_ms));
    (
        kept.into_iter().cloned().collect(),
        gone.into_iter().map(|e| e.invitation.clone()).collect(),
    )
}

/// Adds an invitation; invitations whose window ended more than `keep_ms` ago leave the list
/// on the way.
pub fn invite(
    current: &[VisitorEntry],
    inv: VisitorEntry,
    now: UnixMs,
    keep_ms: i64,
) -> Result<Edit, String> {
    if current.iter().any(|e| e.invitation == inv.invitation) {
        return Err(format!(
            "invitation `{}` is already in the visitors list",
            inv.invitation
        ));
    }
    for c in &inv.credentials {
        if let Some(other) = current.iter().find(|e| e.credentials.contains(c)) {
            return Err(format!(
                "the code is already held by invitation `{}`",
                other.invitation
            ));
        }
    }
    let (mut next, remove) = prune(current, now, keep_ms);
    next.push(inv.clone());
    Ok(Edit {
        upsert: Entries::Visitors(vec![inv]),
        remove,
        next: Entries::Visitors(next),
    })
}

/// Removes an invitation (and those whose window ended more than `keep_ms` ago).
pub fn revoke_invitation(
    current: &[VisitorEntry],
    id: &str,
    now: UnixMs,
    keep_ms: i64,
) -> Result<Edit, String> {
    if !current.iter().any(|e| e.invitation == id) {
        return Err(format!("invitation `{id}` is not in the visitors list"));
    }
    let (kept, mut remove) = prune(current, now, keep_ms);
    let next: Vec<VisitorEntry> = kept.into_iter().filter(|e| e.invitation != id).collect();
    if !remove.iter().any(|r| r == id) {
        remove.push(id.to_string());
    }
    Ok(Edit {
        upsert: Entries::Visitors(Vec::new()),
        remove,
        next: Entries::Visitors(next),
    })
}

/// Staff entries of a file whose `valid_until` is already past at `now`, as `(line, subject,
/// valid_until)`, `lines` being where each entry starts. Such an entry opens nothing: usually
/// an export that kept people who left, or a date typed in the wrong year.
pub fn past_staff(entries: &Entries, lines: &[u64], now: UnixMs) -> Vec<(u64, String, String)> {
    let Entries::Staff(v) = entries else {
        return Vec::new();
    };
    v.iter()
        .zip(lines)
        .filter_map(|(e, line)| {
            let until = e.valid_until.as_deref()?;
            parse_ts(until)
                .ok()
                .filter(|u| *u < now)
                .map(|_| (*line, e.subject.clone(), until.to_string()))
        })
        .collect()
}

/// Removes a staff member.
pub fn revoke_staff(current: &[StaffEntry], subject: &str) -> Result<Edit, String> {
    if !current.iter().any(|e| e.subject == subject) {
        return Err(format!("subject `{subject}` is not in the staff list"));
    }
    Ok(Edit {
        upsert: Entries::Staff(Vec::new()),
        remove: vec![subject.to_string()],
        next: Entries::Staff(
            current
                .iter()
                .filter(|e| e.subject != subject)
                .cloned()
                .collect(),
        ),
    })
}

/// Puts a credential on the deny list.
pub fn deny(current: &[DenyEntry], entry: DenyEntry) -> Result<Edit, String> {
    if let Some(e) = current
        .iter()
        .find(|e| e.kind == entry.kind && e.id == entry.id)
    {
        return Err(format!(
            "{}:{} is already on the deny list{}",
            e.kind.as_str(),
            e.id,
            e.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
    }
    let mut next = current.to_vec();
    next.push(entry.clone());
    Ok(Edit {
        upsert: Entries::Deny(vec![entry]),
        remove: Vec::new(),
        next: Entries::Deny(next),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CredentialKind;
    use gated_contract::CredentialRef;
    use gated_contract::envelope::AdminKey;

    fn inv(id: &str, token: &str, until: Option<&str>) -> VisitorEntry {
        VisitorEntry {
            invitation: id.into(),
            visitor: Some("Zhang San".into()),
            host: Some("E1001".into()),
            credentials: vec![CredentialRef {
                kind: CredentialKind::Qr,
                id: token.into(),
            }],
            valid_from: None,
            valid_until: until.map(str::to_string),
            gates: vec!["east-1".into()],
            max_entries: Some(2),
            schedule: None,
        }
    }

    const NOW: UnixMs = 1_800_000_000_000; // 2027-01-15

    #[test]
    fn tokens_are_26_base32_characters_and_differ() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b""), "");
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 26);
        assert!(a.bytes().all(|c| BASE32.contains(&c)));
        assert_ne!(a, b);
        assert_eq!(new_nonce().len(), 32);
        assert!(new_invitation_id().starts_with("INV-"));
    }

    #[test]
    fn bodies_pass_the_gates_parsers() {
        let e = Entries::Visitors(vec![inv("INV-1", "T1", Some("2027-02-01T00:00:00Z"))]);
        let s = snapshot_body("hq", 8, NOW, &e).expect("valid");
        let parsed = parse_snapshot(ListName::Visitors, &s).expect("parses");
        assert_eq!((parsed.version, parsed.entries), (8, e.clone()));
        let d = delta_body("hq", 8, 7, &e, &["INV-0".into()]).expect("valid");
        let parsed = parse_delta(ListName::Visitors, &d).expect("parses");
        assert_eq!((parsed.base, parsed.remove), (7, vec!["INV-0".to_string()]));
        // A version the gate would refuse is refused here.
        assert!(snapshot_body("hq", 0, NOW, &e).is_err());
        assert!(delta_body("hq", 7, 7, &e, &[]).is_err());
    }

    #[test]
    fn commands_are_checked_before_signing() {
        let mut req = CommandRequest {
            site: "hq".into(),
            gate: "east-1".into(),
            cmd: CommandKind::Open,
            lane: Some(0),
            direction: Some(Direction::In),
            subject: None,
            challenge: None,
            ttl_ms: 60_000,
        };
        let (nonce, body) = command_body(&req, NOW).expect("valid");
        let c = parse_command(&body).expect("parses");
        assert_eq!((c.nonce, c.expires_at - c.issued_at), (nonce, 60_000));
        req.lane = None;
        assert!(command_body(&req, NOW).is_err(), "open needs a lane");
        req.cmd = CommandKind::Lockdown;
        req.direction = None;
        assert!(command_body(&req, NOW).is_ok());
        req.ttl_ms = MAX_COMMAND_LIFETIME_MS + 1;
        assert!(command_body(&req, NOW).is_err());
    }

    #[test]
    fn the_next_version_follows_the_signed_retained_one_and_gates_ahead_only_warn() {
        assert_eq!(next_version(None), 1);
        assert_eq!(next_version(Some(7)), 8);
        let mut reported = BTreeMap::new();
        reported.insert("east-1".to_string(), 7);
        assert_eq!(ahead_of(ListName::Visitors, 7, &reported), None);
        // A gate reporting a huge version (a compromised or broken status) does not move the
        // version gatectl signs; it is named in a warning.
        reported.insert("west-2".to_string(), i64::MAX as u64);
        let w = ahead_of(ListName::Visitors, 7, &reported).expect("warned");
        assert!(
            w.contains("west-2 reports visitors@") && w.contains("--force-version"),
            "{w}"
        );
    }

    #[test]
    fn an_invitation_joins_the_list_and_long_expired_ones_leave() {
        let keep = days_ms(KEEP_EXPIRED_DAYS);
        let current = vec![
            inv("INV-old", "T0", Some("2020-01-01T00:00:00Z")),
            inv("INV-1", "T1", None),
            // Ended yesterday: kept, so that its code is refused `expired`.
            inv("INV-late", "T3", Some("2027-01-14T00:00:00Z")),
        ];
        let new = inv("INV-2", "T2", Some("2027-02-01T00:00:00Z"));
        let e = invite(&current, new.clone(), NOW, keep).expect("added");
        assert_eq!(e.remove, vec!["INV-old".to_string()]);
        assert_eq!(e.upsert, Entries::Visitors(vec![new.clone()]));
        let Entries::Visitors(next) = &e.next else {
            panic!("visitors")
        };
        let ids: Vec<&str> = next.iter().map(|v| v.invitation.as_str()).collect();
        assert_eq!(ids, ["INV-1", "INV-late", "INV-2"]);
        // The retention is the caller's: with none, every invitation past its window leaves.
        let e = invite(&current, new.clone(), NOW, 0).expect("added");
        assert_eq!(
            e.remove,
            vec!["INV-old".to_string(), "INV-late".to_string()]
        );
        // Kept for exactly the retention, and gone a millisecond later.
        let until = parse_ts("2027-01-14T00:00:00Z").expect("time");
        let at = |now| {
            revoke_invitation(&current, "INV-1", now, keep)
                .expect("revoked")
                .remove
        };
        assert!(!at(until + keep).contains(&"INV-late".to_string()));
        assert!(at(until + keep + 1).contains(&"INV-late".to_string()));
        assert!(invite(&current, inv("INV-1", "T9", None), NOW, keep).is_err());
        assert!(invite(&current, inv("INV-9", "T1", None), NOW, keep).is_err());
    }

    #[test]
    fn staff_entries_already_past_are_named_with_their_lines() {
        let staff = |subject: &str, until: Option<&str>| StaffEntry {
            subject: subject.into(),
            name: None,
            credentials: vec![],
            valid_from: None,
            valid_until: until.map(str::to_string),
            gates: vec!["*".into()],
            schedule: None,
            group: None,
            lockdown_exempt: false,
        };
        let e = Entries::Staff(vec![
            staff("E1", Some("2026-12-31T23:59:59Z")),
            staff("E2", None),
            staff("E3", Some("2027-02-01T00:00:00Z")),
        ]);
        assert_eq!(
            past_staff(&e, &[2, 3, 4], NOW),
            vec![(2, "E1".to_string(), "2026-12-31T23:59:59Z".to_string())]
        );
        assert!(past_staff(&Entries::Deny(vec![]), &[], NOW).is_empty());
    }

    #[test]
    fn revocations_need_the_entry_and_denials_a_new_credential() {
        let current = vec![inv("INV-1", "T1", None)];
        let e = revoke_invitation(&current, "INV-1", NOW, 0).expect("revoked");
        assert_eq!(e.remove, vec!["INV-1".to_string()]);
        assert!(e.next.is_empty());
        assert!(revoke_invitation(&current, "INV-2", NOW, 0).is_err());
        let staff = vec![StaffEntry {
            subject: "E1".into(),
            name: None,
            credentials: vec![],
            valid_from: None,
            valid_until: None,
            gates: vec!["*".into()],
            schedule: None,
            group: None,
            lockdown_exempt: false,
        }];
        assert!(revoke_staff(&staff, "E1").expect("revoked").next.is_empty());
        assert!(revoke_staff(&staff, "E2").is_err());
        let d = DenyEntry {
            kind: CredentialKind::Card,
            id: "0099".into(),
            reason: Some("lost".into()),
        };
        let e = deny(&[], d.clone()).expect("denied");
        assert_eq!(e.next.len(), 1);
        let again = deny(std::slice::from_ref(&d), d.clone()).expect_err("twice");
        assert!(again.contains("already on the deny list (lost)"), "{again}");
    }

    #[test]
    fn the_retained_snapshot_must_be_signed_by_a_trusted_key_for_this_site() {
        let k = AdminKey::generate("ops").expect("key");
        let stranger = AdminKey::generate("other").expect("key");
        let v = Verifier::new([(k.id.clone(), k.verifying_key())].into(), false);
        let e = Entries::Deny(vec![]);
        let body = snapshot_body("hq", 3, NOW, &e).expect("valid");
        let (s, key) = open_retained(&v, ListName::Deny, "hq", &k.seal(&body)).expect("opens");
        assert_eq!((s.version, key.as_deref()), (3, Some("ops")));
        let r = open_retained(&v, ListName::Deny, "hq", &stranger.seal(&body)).expect_err("x");
        assert_eq!(r.code(), "unknown_key");
        let r = open_retained(&v, ListName::Deny, "other", &k.seal(&body)).expect_err("x");
        assert_eq!(r.code(), "wrong_site");
    }
}
