//! What an operator reads: one line per event, alarm or ack, and the status table. Everything
//! shown comes from the network, so every string is cleaned of control characters first (a
//! credential read off a reader can hold an escape sequence).

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};

use serde_json::Value;

use crate::core::{Decision, UnixMs};
use gated_contract::{Ack, Alarm, PassEvent, parse_ts};

/// `s` with control characters escaped, so it cannot drive the terminal.
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(s.chars().flat_map(char::escape_debug).collect())
    } else {
        Cow::Borrowed(s)
    }
}

fn code<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => "?".into(),
    }
}

/// `2026-11-21T08:01:02.345Z east-1 #1042 lane 0 in  GRANTED staff      card:0012345678 E1001`
pub fn event_line(e: &PassEvent) -> String {
    if e.decision == Decision::Granted && !e.released() {
        return state_override_line(e);
    }
    let decision = code(&e.decision).to_ascii_uppercase();
    let reason = code(&e.reason);
    let credential = match &e.credential {
        Some(c) => {
            let score = c.score.map(|s| format!(" ({s:.2})")).unwrap_or_default();
            format!("{}:{}{score}", c.kind.as_str(), clean(&c.id))
        }
        None => "-".into(),
    };
    let mut line = format!(
        "{} {} #{} lane {} {:<3} {decision:<7} {reason:<10} {credential} {}",
        clean(&e.ts),
        clean(&e.gate),
        e.seq,
        e.lane,
        e.direction.as_str(),
        e.subject.as_deref().map_or(Cow::Borrowed("-"), clean),
    );
    if let Some(o) = &e.override_ {
        line.push_str(&format!(
            " override {}/{}",
            clean(&o.source),
            clean(&o.input)
        ));
        if let Some(by) = &o.by {
            line.push_str(&format!(" by {}", clean(by)));
        }
    }
    match e.passed {
        Some(true) => line.push_str(" passed"),
        Some(false) => line.push_str(" not-passed"),
        None => {}
    }
    if let Some(s) = &e.snapshot {
        line.push_str(&format!(" snapshot {}", clean(s)));
    }
    if let Some(r) = &e.ref_ {
        line.push_str(&format!(" ref {}", clean(r)));
    }
    line
}

/// An override that changed state and released no lane (`clear_passback`,
/// `clear_passback_all`): the contract
/// records it as a granted event, for peer gates to learn, but nothing opened.
/// `2026-11-21T08:01:02.345Z east-1 #1043 CLEARED anti-passback state of E1001 by ops-2026 (no lane released)`
fn state_override_line(e: &PassEvent) -> String {
    let subject = e.subject.as_deref().map_or(Cow::Borrowed("-"), clean);
    let what = match e.override_.as_ref().map(|o| o.input.as_str()) {
        Some("clear_passback") => format!("CLEARED anti-passback state of {subject}"),
        Some("clear_passback_all") => "CLEARED anti-passback state of every subject".into(),
        Some(input) => format!("OVERRIDE {} {subject}", clean(input)),
        None => format!("{} {subject}", code(&e.reason)),
    };
    let by = e
        .override_
        .as_ref()
        .and_then(|o| o.by.as_deref())
        .map(|b| format!(" by {}", clean(b)))
        .unwrap_or_default();
    format!(
        "{} {} #{} {what}{by} (no lane released)",
        clean(&e.ts),
        clean(&e.gate),
        e.seq
    )
}

/// `2026-11-21T08:01:02.345Z east-1 ALARM device_fault reader1: timeout …`
pub fn alarm_line(a: &Alarm) -> String {
    format!(
        "{} {} ALARM {} {}: {}",
        clean(&a.ts),
        clean(&a.gate),
        clean(&a.alarm),
        clean(&a.source),
        clean(&a.detail)
    )
}

/// `east-1: staff@43 ok` or `east-1: staff@43 REFUSED stale: …`
pub fn ack_result(gate: &str, a: &Ack) -> String {
    if a.ok {
        match &a.detail {
            Some(d) => format!("{}: {} ok ({})", clean(gate), clean(&a.ref_), clean(d)),
            None => format!("{}: {} ok", clean(gate), clean(&a.ref_)),
        }
    } else {
        format!(
            "{}: {} REFUSED {}: {}",
            clean(gate),
            clean(&a.ref_),
            clean(a.error.as_deref().unwrap_or("?")),
            clean(a.detail.as_deref().unwrap_or(""))
        )
    }
}

/// An ack as a `tail` line: its time, then `ack_result`.
pub fn ack_line(gate: &str, a: &Ack) -> String {
    format!("{} {} ACK {}", clean(&a.ts), clean(gate), {
        let r = ack_result(gate, a);
        r.split_once(": ")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or(r)
    })
}

/// Remembers the last `cap` ids seen: consumers dedupe on `id` (events are sent again after a
/// lost PUBACK), in bounded memory.
pub struct Dedup {
    seen: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
}

impl Dedup {
    pub fn new(cap: usize) -> Dedup {
        Dedup {
            seen: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// True the first time `id` is seen (within the last `cap` ids).
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// `{root}/{site}/{gate}/{leaf}` → `gate`.
pub fn gate_of<'a>(topic: &'a str, root: &str, site: &str, leaf: &str) -> Option<&'a str> {
    let rest = topic
        .strip_prefix(root)?
        .strip_prefix('/')?
        .strip_prefix(site)?
        .strip_prefix('/')?;
    let gate = rest.strip_suffix(leaf)?.strip_suffix('/')?;
    (!gate.is_empty() && !gate.contains('/')).then_some(gate)
}

/// How long ago, briefly: `4s`, `12m`, `3h`, `2d`.
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The status table: one row per gate, from its retained status (which may be only the last
/// will, `{"online":false}`). `STAFF_V`, `VISITORS_V` and `DENY_V` are the versions of the
/// lists in force (the `N` of `staff@N`), not how many people are on them: a status carries no
/// counts.
pub fn status_table(rows: &[(String, Value)], now: UnixMs) -> String {
    let header = [
        "GATE",
        "ONLINE",
        "MODE",
        "STAFF_V",
        "VISITORS_V",
        "DENY_V",
        "OUTBOX",
        "AGE",
        "PROBLEMS",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for (gate, s) in rows {
        let text = |v: &Value| match v {
            Value::String(s) => clean(s).into_owned(),
            Value::Null => "-".into(),
            v => clean(&v.to_string()).into_owned(),
        };
        let online = match s.get("online").and_then(Value::as_bool) {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "?",
        };
        let list = |l: &str| text(s.pointer(&format!("/lists/{l}")).unwrap_or(&Value::Null));
        let mut problems: Vec<String> = s
            .get("devices")
            .and_then(Value::as_object)
            .map(|d| {
                d.iter()
                    .filter(|(_, st)| st.as_str() != Some("ok"))
                    .map(|(name, st)| format!("{}:{}", clean(name), text(st)))
                    .collect()
            })
            .unwrap_or_default();
        // `free_running` is a gate told not to require time sync (`clock.sync = "none"`).
        if let Some(c) = s.get("clock").and_then(Value::as_str)
            && c != "synced"
            && c != "free_running"
        {
            problems.push(format!("clock:{}", clean(c)));
        }
        let age = s
            .get("ts")
            .and_then(Value::as_str)
            .and_then(|t| parse_ts(t).ok())
            .map_or("-".into(), |t| age(now - t));
        table.push(vec![
            clean(gate).into_owned(),
            online.into(),
            text(s.get("mode").unwrap_or(&Value::Null)),
            list("staff"),
            list("visitors"),
            list("deny"),
            text(s.pointer("/outbox/pending").unwrap_or(&Value::Null)),
            age,
            if problems.is_empty() {
                "-".into()
            } else {
                problems.join(" ")
            },
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CredentialKind, Decision, Direction, Reason};
    use gated_contract::{CredentialJson, Override};

    fn event() -> PassEvent {
        PassEvent {
            id: "x".into(),
            seq: 1042,
            site: "hq".into(),
            gate: "east-1".into(),
            lane: 0,
            direction: Direction::In,
            ts: "2026-11-21T08:01:02.345Z".into(),
            credential: Some(CredentialJson {
                kind: CredentialKind::Card,
                id: "0012345678".into(),
                score: None,
            }),
            subject: Some("E1001".into()),
            decision: Decision::Granted,
            reason: Reason::Staff,
            override_: None,
            passed: None,
            snapshot: None,
            ref_: None,
            flags: Vec::new(),
            seen_at: None,
        }
    }

    #[test]
    fn an_event_reads_as_one_line() {
        assert_eq!(
            event_line(&event()),
            "2026-11-21T08:01:02.345Z east-1 #1042 lane 0 in  GRANTED staff      card:0012345678 E1001"
        );
        let mut e = event();
        e.credential = None;
        e.subject = None;
        e.reason = Reason::OverrideRemote;
        e.override_ = Some(Override {
            source: "remote".into(),
            input: "open".into(),
            by: Some("ops".into()),
        });
        assert!(
            event_line(&e).ends_with("GRANTED override_remote - - override remote/open by ops"),
            "{}",
            event_line(&e)
        );
    }

    #[test]
    fn clearing_anti_passback_is_not_shown_as_a_grant() {
        let mut e = event();
        e.credential = None;
        e.reason = Reason::OverrideRemote;
        e.override_ = Some(Override {
            source: "remote".into(),
            input: "clear_passback".into(),
            by: Some("ops".into()),
        });
        let want = "2026-11-21T08:01:02.345Z east-1 #1042 CLEARED anti-passback state of E1001 \
                    by ops (no lane released)";
        // From a gate that predates the flag, and from one that sends it.
        assert_eq!(event_line(&e), want);
        e.flags = vec!["no_release".into()];
        assert_eq!(event_line(&e), want);
    }

    #[test]
    fn clearing_everyones_anti_passback_says_so() {
        let mut e = event();
        e.credential = None;
        e.subject = None;
        e.reason = Reason::OverrideRemote;
        e.flags = vec!["no_release".into()];
        e.override_ = Some(Override {
            source: "remote".into(),
            input: "clear_passback_all".into(),
            by: Some("ops".into()),
        });
        assert_eq!(
            event_line(&e),
            "2026-11-21T08:01:02.345Z east-1 #1042 CLEARED anti-passback state of every subject \
             by ops (no lane released)"
        );
    }

    #[test]
    fn terminal_escapes_from_the_network_are_defused() {
        let mut e = event();
        e.credential = Some(CredentialJson {
            kind: CredentialKind::Card,
            id: "\u{1b}[2J".into(),
            score: None,
        });
        assert!(!event_line(&e).contains('\u{1b}'));
        assert_eq!(clean("a\nb"), "a\\nb");
    }

    #[test]
    fn alarms_and_acks() {
        let a = Alarm {
            id: "a".into(),
            seq: 3,
            site: "hq".into(),
            gate: "east-1".into(),
            ts: "2026-11-21T08:01:02.345Z".into(),
            alarm: "device_fault".into(),
            source: "reader1".into(),
            detail: "timeout".into(),
        };
        assert_eq!(
            alarm_line(&a),
            "2026-11-21T08:01:02.345Z east-1 ALARM device_fault reader1: timeout"
        );
        let ack = Ack {
            ref_: "staff@43".into(),
            ok: false,
            error: Some("stale".into()),
            detail: Some("version 44 is in force".into()),
            ts: "2026-11-21T08:01:02.345Z".into(),
            sha256: None,
        };
        assert_eq!(
            ack_result("east-1", &ack),
            "east-1: staff@43 REFUSED stale: version 44 is in force"
        );
        assert_eq!(
            ack_line("east-1", &ack),
            "2026-11-21T08:01:02.345Z east-1 ACK staff@43 REFUSED stale: version 44 is in force"
        );
    }

    #[test]
    fn dedup_is_bounded() {
        let mut d = Dedup::new(2);
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        assert!(d.first_time("b"));
        assert!(d.first_time("c"));
        assert!(d.first_time("a"), "forgotten after `cap` newer ids");
        assert!(!d.first_time("c"));
    }

    #[test]
    fn topics_name_their_gate() {
        assert_eq!(
            gate_of("acs/hq/east-1/event", "acs", "hq", "event"),
            Some("east-1")
        );
        assert_eq!(gate_of("acs/hq/lists/staff", "acs", "hq", "event"), None);
        assert_eq!(gate_of("acs/hqx/g/event", "acs", "hq", "event"), None);
    }

    #[test]
    fn the_status_table() {
        let now = parse_ts("2026-11-21T08:01:10.000Z").expect("ts");
        let rows = vec![
            (
                "east-1".to_string(),
                serde_json::json!({"online":true,"version":"0.1.0","ts":"2026-11-21T08:01:02.345Z",
                    "mode":"normal","lists":{"staff":42,"visitors":7,"deny":3},
                    "outbox":{"pending":0,"oldest_ts":null},
                    "devices":{"relay1":"ok","reader1":"timeout"},"clock":"synced"}),
            ),
            ("west-2".to_string(), serde_json::json!({"online":false})),
        ];
        let t = status_table(&rows, now);
        let lines: Vec<&str> = t.lines().collect();
        // List versions, named as versions: they are not head counts.
        assert_eq!(
            lines[0],
            "GATE    ONLINE  MODE    STAFF_V  VISITORS_V  DENY_V  OUTBOX  AGE  PROBLEMS"
        );
        assert_eq!(
            lines[1],
            "east-1  yes     normal  42       7           3       0       7s   reader1:timeout"
        );
        assert_eq!(
            lines[2],
            "west-2  NO      -       -        -           -       -       -    -"
        );
    }
}
