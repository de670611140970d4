//! `[policy]` and the gate's time zone: the rules of the pure core (`core::Policy`), the
//! schedules they name, and the peers whose passes count here.

use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::{RawGate, RawPolicy};
use crate::config::{ConfigError, EntryCountsAt, is_safe_name, parse_duration};
use crate::core::time::{Span, minute_of_day};
use crate::core::{Passback, Policy, Schedule};

impl Checker<'_> {
    /// The rules, the peer gates and when a visitor's entry counts. `gspan` is `[gate]`'s, for
    /// its time zone.
    pub(super) fn policy(
        &self,
        raw: Option<Spanned<RawPolicy>>,
        gate: &RawGate,
        gspan: std::ops::Range<usize>,
    ) -> Result<(Policy, Vec<String>, EntryCountsAt), ConfigError> {
        let tz = match &gate.timezone {
            None => chrono_tz::Tz::UTC,
            Some(name) => match name.parse::<chrono_tz::Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    return self.err(
                        gspan,
                        "gate.timezone",
                        format!("`{name}` is not an IANA time zone (like `Asia/Shanghai`)"),
                    );
                }
            },
        };
        let mut peers = Vec::new();
        let mut visitor_entry = EntryCountsAt::Grant;
        let mut policy = Policy {
            tz,
            ..Policy::default()
        };
        if let Some(p) = raw {
            let span = p.span();
            let p = p.into_inner();
            if !(0.0..=1.0).contains(&p.min_face_score) {
                return self.err(span, "policy.min_face_score", "must be within 0..=1");
            }
            policy.min_face_score = p.min_face_score;
            visitor_entry = p.visitor_entry;
            if let Some(text) = p.max_swipe_age {
                // Below a second it would refuse swipes a healthy gate decides in time; above a
                // minute the person who swiped has long gone.
                match parse_duration(&text) {
                    Ok(d) if (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d) => {
                        policy.max_swipe_age_ms = d.as_millis() as i64;
                    }
                    Ok(_) => return self.err(span, "policy.max_swipe_age", "must be 1s..=60s"),
                    Err(e) => return self.err(span, "policy.max_swipe_age", e),
                }
            }
            for (name, raw) in p.schedule {
                let key = format!("policy.schedule.{name}");
                if !is_safe_name(&name) {
                    return self.err(span, &key, "a schedule name is 1..=64 of [A-Za-z0-9_-]");
                }
                let mut week: [Vec<Span>; 7] = Default::default();
                let days = [
                    ("mon", raw.mon),
                    ("tue", raw.tue),
                    ("wed", raw.wed),
                    ("thu", raw.thu),
                    ("fri", raw.fri),
                    ("sat", raw.sat),
                    ("sun", raw.sun),
                ];
                for (i, (day, spans)) in days.into_iter().enumerate() {
                    for text in spans {
                        match Span::parse(&text) {
                            Ok(span) => week[i].push(span),
                            Err(e) => return self.err(span.clone(), &format!("{key}.{day}"), e),
                        }
                    }
                }
                policy.schedules.insert(
                    name,
                    Schedule {
                        week,
                        calendar: raw.calendar,
                    },
                );
            }
            for (group, schedule) in p.groups {
                if !policy.schedules.contains_key(&schedule) {
                    return self.err(
                        span,
                        &format!("policy.groups.{group}"),
                        format!("no [policy.schedule.{schedule}] is defined"),
                    );
                }
                policy.groups.insert(group, schedule);
            }
            if let Some(h) = p.hours {
                self.check_schedule(&span, "policy.hours", &h, &policy)?;
                policy.gate_hours = Some(h);
            }
            if let Some(a) = p.anti_passback {
                let reset_at = match a.reset_at.as_deref().map(minute_of_day) {
                    None => None,
                    Some(Ok(m)) if m < crate::core::time::DAY_MINUTES => Some(m),
                    Some(Ok(_)) => {
                        return self.err(
                            span,
                            "policy.anti_passback.reset_at",
                            "use 00:00, not 24:00",
                        );
                    }
                    Some(Err(e)) => return self.err(span, "policy.anti_passback.reset_at", e),
                };
                policy.passback = Passback {
                    mode: a.mode,
                    reset_at,
                };
            }
            for (i, g) in p.peers.into_iter().enumerate() {
                let key = format!("policy.peers[{i}]");
                if !is_safe_name(&g) {
                    return self.err(span, &key, format!("`{g}` must be 1..=64 of [A-Za-z0-9_-]"));
                }
                if g == gate.gate || peers.contains(&g) {
                    return self.err(span, &key, format!("`{g}` is this gate or listed twice"));
                }
                peers.push(g);
            }
            if let Some(x) = p.exit {
                let rules = &mut policy.exit;
                if let Some(text) = x.grace {
                    // A schedule's grace is judged a minute at a time: a day is plenty.
                    match parse_duration(&text) {
                        Ok(d) if d <= Duration::from_secs(86_400) => {
                            rules.grace_ms = d.as_millis() as i64;
                        }
                        Ok(_) => return self.err(span, "policy.exit.grace", "at most 24h"),
                        Err(e) => return self.err(span, "policy.exit.grace", e),
                    }
                }
                rules.window = x.window.unwrap_or(rules.window);
                rules.schedule = x.schedule.unwrap_or(rules.schedule);
                rules.offline_limit = x.offline_limit.unwrap_or(rules.offline_limit);
                rules.uses_entry = x.uses_entry;
            }
            if let Some(m) = p.max_offline {
                for (key, v, slot) in [
                    ("staff", m.staff, &mut policy.staff_max_offline),
                    ("visitors", m.visitors, &mut policy.visitors_max_offline),
                ] {
                    if let Some(text) = v {
                        match parse_duration(&text) {
                            Ok(d) => *slot = Some(d.as_millis() as i64),
                            Err(e) => {
                                return self.err(
                                    span.clone(),
                                    &format!("policy.max_offline.{key}"),
                                    e,
                                );
                            }
                        }
                    }
                }
            }
        }
        Ok((policy, peers, visitor_entry))
    }
}
