//! `gatectl tail`: live events, alarms and acks.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{Site, say, warn};
use crate::admin::Failure;
use crate::admin::mqtt::{ConnectOptions, Session};
use crate::admin::show;
use gated_contract::{Ack, Alarm, PassEvent};

/// `tail` remembers this many ids to drop duplicates.
const DEDUP_IDS: usize = 100_000;

pub struct TailRequest {
    pub gate: Option<String>,
    pub json: bool,
    pub acks: bool,
    pub count: Option<u64>,
    pub timeout: Option<Duration>,
}

/// What one message shows as, if anything.
pub(super) fn tail_line(
    leaf: &str,
    gate: &str,
    v: &Value,
    json: bool,
    dedup: &mut show::Dedup,
    last_seq: &mut BTreeMap<String, u64>,
) -> Option<String> {
    if let Some(id) = v.get("id").and_then(Value::as_str)
        && !dedup.first_time(&format!("{leaf}/{id}"))
    {
        return None;
    }
    if leaf == "event"
        && let Some(seq) = v.get("seq").and_then(Value::as_u64)
    {
        if let Some(last) = last_seq.get(gate)
            && seq > last.saturating_add(1)
        {
            let missed = if seq - 1 == last + 1 {
                format!("event #{} was", last + 1)
            } else {
                format!("events #{}..#{} were", last + 1, seq - 1)
            };
            warn(format_args!(
                "{}: {missed} not seen here (sent while tail was not connected)",
                show::clean(gate)
            ));
        }
        if last_seq.get(gate).is_none_or(|l| seq > *l) {
            last_seq.insert(gate.to_string(), seq);
        }
    }
    if json {
        return Some(v.to_string());
    }
    let typed = match leaf {
        "event" => serde_json::from_value::<PassEvent>(v.clone())
            .ok()
            .map(|e| show::event_line(&e)),
        "alarm" => serde_json::from_value::<Alarm>(v.clone())
            .ok()
            .map(|a| show::alarm_line(&a)),
        "ack" => serde_json::from_value::<Ack>(v.clone())
            .ok()
            .map(|a| show::ack_line(gate, &a)),
        _ => None,
    };
    Some(typed.unwrap_or_else(|| {
        format!(
            "{} {leaf}: {}",
            show::clean(gate),
            show::clean(&v.to_string())
        )
    }))
}

/// `gatectl tail`: live events and alarms (and acks, if asked) until Ctrl-C, `--count` lines or
/// `--timeout`.
pub async fn tail(site: &Site, req: TailRequest, out: &mut dyn Write) -> Result<(), Failure> {
    let what = "tail";
    if let Some(g) = &req.gate
        && !gated_contract::is_safe_name(g)
    {
        return Err(Failure::new(what, format!("--gate `{g}` is not a gate id")).with_exit(64));
    }
    let t = site.topics(req.gate.as_deref().unwrap_or("+"));
    let mut filters = vec![t.event(), t.alarm()];
    if req.acks {
        filters.push(t.ack());
    }
    let mut opts = ConnectOptions::new(
        site.broker.clone(),
        &site.secrets,
        site.tls.as_ref(),
        "tail",
    );
    opts.reconnect = true;
    let mut session = Session::connect(&opts)
        .await
        .map_err(|e| Failure::new(what, e))?;
    session
        .subscribe(&filters)
        .await
        .map_err(|e| Failure::new(what, e))?;
    eprintln!(
        "gatectl: tail: listening on {} (Ctrl-C to stop)",
        filters.join(", ")
    );
    let end = req.timeout.map(|t| Instant::now() + t);
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86400);
    let mut dedup = show::Dedup::new(DEDUP_IDS);
    let mut last_seq = BTreeMap::new();
    let mut printed = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if req.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
        let next = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            r = session.next(end.unwrap_or(far)) => r,
        };
        let m = match next {
            Ok(Some(m)) => m,
            Ok(None) => {
                return match req.count {
                    Some(n) => Err(Failure::new(
                        what,
                        format!(
                            "timed out after {} s with {printed} of {n} lines",
                            req.timeout.unwrap_or_default().as_secs()
                        ),
                    )),
                    None => Ok(()),
                };
            }
            Err(e) => {
                warn(format_args!(
                    "{e}; reconnecting (events published meanwhile are not shown: their seq \
                     numbers will say so)"
                ));
                continue;
            }
        };
        let leaf = m.topic.rsplit('/').next().unwrap_or("");
        let Some(gate) = show::gate_of(&m.topic, &site.root, &site.site, leaf) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
            warn(format_args!("{}: not JSON, skipped", show::clean(&m.topic)));
            continue;
        };
        if let Some(line) = tail_line(leaf, gate, &v, req.json, &mut dedup, &mut last_seq) {
            say(out, line)?;
            printed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_drops_duplicates_and_shows_json_as_one_line() {
        let mut d = show::Dedup::new(10);
        let mut seqs = BTreeMap::new();
        let e = serde_json::json!({"id":"a","seq":1,"site":"hq","gate":"g","lane":0,
            "direction":"in","ts":"2026-11-21T08:01:02.345Z","credential":null,"subject":null,
            "decision":"denied","reason":"unknown_credential","override":null,"passed":null,
            "snapshot":null});
        let line = tail_line("event", "g", &e, true, &mut d, &mut seqs).expect("shown");
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).expect("json"), e);
        assert_eq!(tail_line("event", "g", &e, true, &mut d, &mut seqs), None);
        let mut e2 = e.clone();
        e2["id"] = "b".into();
        e2["seq"] = 2.into();
        let line = tail_line("event", "g", &e2, false, &mut d, &mut seqs).expect("shown");
        assert!(
            line.contains("#2 lane 0 in  DENIED  unknown_credential"),
            "{line}"
        );
        // Something that is not an event still shows, cleaned.
        let odd = serde_json::json!({"hello":"\u{1b}"});
        let line = tail_line("event", "g", &odd, false, &mut d, &mut seqs).expect("shown");
        assert!(!line.contains('\u{1b}'));
    }
}
