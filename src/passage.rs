//! Passage sensing: the relay boards' passage counters, matched with the grants of their lanes.
//!
//! A granted release waits on its lane direction (first granted, first matched) until the
//! sensor counts someone through, or until the release has ended (`release_ms` plus `SLACK`)
//! AND a read of its board's counters that started after that end has succeeded: a board that
//! cannot be read says nothing of who went through. Each outcome is a later fact (docs/design.md:
//! reason `passage`, `ref` to the pass): `passed` true or false. With
//! `[policy] visitor_entry = "passage"`, an invitation's entry used by a grant nobody went
//! through is given back, but only if no other grant waited on that lane direction with it
//! (two releases with one person through cannot say whose it was).
//!
//! A passage with no grant waiting is given `GRACE` for its grant to arrive (a pass is
//! reported just after its pulse, and the counters are read every 200 ms, so the two can cross).
//! After that it is a `door_forced` alarm, unless the gate's mode holds the lanes open
//! (hold-open, emergency release): then it is recorded as a pass of that mode, with no
//! credential, so that a free lane still records every person.
//!
//! `Tracker` is the pure part (time is an argument); `run` is the task around it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::config::EntryCountsAt;
use crate::core::{Direction, Reason};
use crate::gate::Shared;
use crate::hw::relay::Counted;
use gated_contract::PassEvent;

/// How long after its release ends a grant still waits for its passage.
pub const SLACK: Duration = Duration::from_secs(2);
/// How long a passage waits for its grant before it counts as forced.
pub const GRACE: Duration = Duration::from_secs(1);

type Key = (u16, Direction);

struct Waiting {
    event: PassEvent,
    until: Instant,
    give_back: Option<String>,
    /// No other grant waited on the lane direction at the same time.
    alone: bool,
}

/// Grants waiting on one lane direction at most (a board unread for a long time while people
/// are granted): beyond, the oldest is recorded unused, with nothing given back.
const MAX_WAITING: usize = 1000;

/// A fact to record.
#[derive(Debug, PartialEq)]
pub enum Fact {
    /// Someone went through on this pass.
    Passed(PassEvent),
    /// The release ended with nobody through; give back this invitation's entry, if any.
    Unused(PassEvent, Option<String>),
    /// `count` went through while the mode held the lane open: passes of that mode.
    Free {
        lane: u16,
        direction: Direction,
        count: u16,
        reason: Reason,
    },
    /// `count` went through with no grant: a door-forced alarm.
    Forced {
        lane: u16,
        direction: Direction,
        count: u16,
    },
}

#[derive(Default)]
pub struct Tracker {
    grants: HashMap<Key, VecDeque<Waiting>>,
    /// Passages with no grant yet: when they were counted, and how many.
    early: HashMap<Key, VecDeque<(Instant, u16)>>,
}

impl Tracker {
    /// A granted release of `event`'s lane direction, for `release`.
    pub fn grant(
        &mut self,
        event: PassEvent,
        release: Duration,
        give_back: Option<String>,
        now: Instant,
    ) -> Vec<Fact> {
        let key = (event.lane, event.direction);
        if let Some(early) = self.early.get_mut(&key)
            && let Some((_, n)) = early.front_mut()
        {
            // Someone was counted just before the grant was reported: it was this pass.
            *n -= 1;
            if *n == 0 {
                early.pop_front();
            }
            return vec![Fact::Passed(event)];
        }
        let q = self.grants.entry(key).or_default();
        let alone = q.is_empty();
        for w in q.iter_mut() {
            w.alone = false;
        }
        q.push_back(Waiting {
            event,
            until: now + release + SLACK,
            give_back,
            alone,
        });
        let mut facts = Vec::new();
        while q.len() > MAX_WAITING {
            if let Some(w) = q.pop_front() {
                facts.push(Fact::Unused(w.event, None));
            }
        }
        facts
    }

    /// `count` people counted through a lane direction; `mode` is the gate's mode's reason
    /// when it holds the lanes open (`hold_open`, `emergency_release`).
    pub fn passage(
        &mut self,
        lane: u16,
        direction: Direction,
        count: u16,
        mode: Option<Reason>,
        now: Instant,
    ) -> Vec<Fact> {
        let key = (lane, direction);
        let mut facts = Vec::new();
        let mut left = count;
        if let Some(q) = self.grants.get_mut(&key) {
            while left > 0 {
                let Some(w) = q.pop_front() else { break };
                facts.push(Fact::Passed(w.event));
                left -= 1;
            }
        }
        if left > 0 {
            match mode {
                Some(reason) => facts.push(Fact::Free {
                    lane,
                    direction,
                    count: left,
                    reason,
                }),
                None => self.early.entry(key).or_default().push_back((now, left)),
            }
        }
        facts
    }

    /// Grants whose release has ended unused, and passages that waited in vain for a grant.
    /// `read_since(lane)` is when the last successful read of the lane's counters started.
    pub fn tick(&mut self, now: Instant, read_since: impl Fn(u16) -> Option<Instant>) -> Vec<Fact> {
        let mut facts = Vec::new();
        for (&(lane, _), q) in &mut self.grants {
            let read = read_since(lane);
            while q
                .front()
                .is_some_and(|w| w.until <= now && read.is_some_and(|r| r >= w.until))
            {
                if let Some(w) = q.pop_front() {
                    let give_back = w.give_back.filter(|_| w.alone);
                    facts.push(Fact::Unused(w.event, give_back));
                }
            }
        }
        for (&(lane, direction), q) in &mut self.early {
            while q
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) >= GRACE)
            {
                if let Some((_, count)) = q.pop_front() {
                    facts.push(Fact::Forced {
                        lane,
                        direction,
                        count,
                    });
                }
            }
        }
        facts
    }
}

/// Whether a granted event releases its lane (and so waits for a passage).
fn releases(e: &PassEvent) -> bool {
    matches!(
        e.reason,
        Reason::Staff
            | Reason::Visitor
            | Reason::FreeExit
            | Reason::LockdownExempt
            | Reason::OverridePanel
            | Reason::OverrideRemote
    ) && e.released()
}

/// The lanes with a passage sensor: by (board, channel), the lane id and its release time.
pub type Sensed = BTreeMap<(String, u16), (u16, u16)>;

/// The task: grants from the decisions every lane reports, passages from the boards.
pub async fn run(
    sensed: Sensed,
    visitor_entry: EntryCountsAt,
    mut decisions: broadcast::Receiver<crate::gate::Decided>,
    mut passages: mpsc::Receiver<Counted>,
    shared: Shared,
) {
    let release: HashMap<u16, u16> = sensed.values().copied().collect();
    let board_of: HashMap<u16, String> = sensed
        .iter()
        .map(|((board, _), (lane, _))| (*lane, board.clone()))
        .collect();
    let mut reads: HashMap<String, Instant> = HashMap::new();
    let mut tracker = Tracker::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let facts = tokio::select! {
            d = decisions.recv() => match d {
                Ok(d) => {
                    let e = d.event;
                    match release.get(&e.lane) {
                        Some(&ms) if e.reason.is_granted() && releases(&e) => {
                            let give_back = (visitor_entry == EntryCountsAt::Passage
                                && e.reason == Reason::Visitor)
                                .then(|| e.subject.clone())
                                .flatten();
                            let ms = Duration::from_millis(u64::from(ms));
                            tracker.grant(e, ms, give_back, Instant::now())
                        }
                        _ => Vec::new(),
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "passage tracking fell behind the decisions");
                    Vec::new()
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            p = passages.recv() => {
                let p = match p {
                    None => return,
                    Some(Counted::Read { board, started }) => {
                        reads.insert(board, started);
                        continue;
                    }
                    Some(Counted::Passage(p)) => p,
                };
                let Some(&(lane, _)) = sensed.get(&(p.board.clone(), p.channel)) else {
                    continue;
                };
                let reason = shared.mode.borrow().open_reason();
                tracker.passage(lane, p.direction, p.count, reason, Instant::now())
            }
            _ = tick.tick() => tracker.tick(Instant::now(), |lane| {
                board_of.get(&lane).and_then(|b| reads.get(b)).copied()
            }),
        };
        for fact in facts {
            record(&shared, fact).await;
        }
    }
}

/// Records one fact. A fact the store cannot take is logged and lost: the pass itself was
/// recorded before its release, and this is only what came of it.
async fn record(shared: &Shared, fact: Fact) {
    let now = crate::wall::now_ms();
    let r = match fact {
        Fact::Passed(pass) => shared
            .store
            .call(move |db| db.record_passage(&pass, true, None, now))
            .await
            .map(|e| vec![e]),
        Fact::Unused(pass, give_back) => shared
            .store
            .call(move |db| db.record_passage(&pass, false, give_back.as_deref(), now))
            .await
            .map(|e| vec![e]),
        Fact::Free {
            lane,
            direction,
            count,
            reason,
        } => {
            shared
                .store
                .call(move |db| {
                    (0..count)
                        .map(|_| db.record_free_passage(lane, direction, reason, now))
                        .collect()
                })
                .await
        }
        Fact::Forced {
            lane,
            direction,
            count,
        } => {
            let detail = format!(
                "{count} passage(s) through lane {lane} {} with no grant",
                direction.as_str()
            );
            tracing::warn!("{detail}");
            let _ = shared
                .alarm("door_forced", &format!("lane{lane}"), &detail)
                .await;
            Ok(Vec::new())
        }
    };
    match r {
        Ok(events) => {
            for e in events {
                shared.publish_decision("passage", &e);
            }
        }
        Err(e) => crate::limited_error!(error = %e, "passage not recorded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(id: &str, lane: u16, reason: Reason) -> PassEvent {
        PassEvent {
            id: id.into(),
            seq: 1,
            site: "hq".into(),
            gate: "g".into(),
            lane,
            direction: Direction::In,
            ts: String::new(),
            credential: None,
            subject: Some("INV-1".into()),
            decision: reason.decision(),
            reason,
            override_: None,
            passed: None,
            snapshot: None,
            ref_: None,
            flags: Vec::new(),
            seen_at: None,
        }
    }

    #[test]
    fn passages_match_grants_in_order_and_unused_grants_expire() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let ms = Duration::from_millis(3000);
        assert!(
            t.grant(pass("a", 0, Reason::Staff), ms, None, t0)
                .is_empty()
        );
        assert!(
            t.grant(pass("b", 0, Reason::Visitor), ms, Some("INV-1".into()), t0)
                .is_empty()
        );
        let f = t.passage(0, Direction::In, 1, None, t0 + Duration::from_secs(1));
        assert_eq!(f, vec![Fact::Passed(pass("a", 0, Reason::Staff))]);
        let end = t0 + ms + SLACK;
        let read_at = |at: Instant| move |_lane: u16| Some(at);
        // Not yet over: nothing.
        assert!(t.tick(t0 + Duration::from_secs(4), read_at(end)).is_empty());
        // Over, but the board has not been read since: nothing yet (it may be down, and the
        // visitor through).
        assert!(t.tick(end, |_| None).is_empty());
        assert!(t.tick(end, read_at(end - SLACK)).is_empty());
        // Read after the end: unused. "b" waited with "a", so nothing is given back.
        let f = t.tick(end, read_at(end));
        assert_eq!(f, vec![Fact::Unused(pass("b", 0, Reason::Visitor), None)]);
        // Alone, an unused visitor grant gives its entry back.
        t.grant(pass("c", 0, Reason::Visitor), ms, Some("INV-1".into()), t0);
        let f = t.tick(end, read_at(end));
        assert_eq!(
            f,
            vec![Fact::Unused(
                pass("c", 0, Reason::Visitor),
                Some("INV-1".into())
            )]
        );
    }

    #[test]
    fn a_passage_before_its_grant_is_matched_and_one_without_is_forced() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let ms = Duration::from_millis(3000);
        // Counted 100 ms before the grant was reported: the same pass.
        assert!(t.passage(1, Direction::In, 1, None, t0).is_empty());
        let f = t.grant(
            pass("a", 1, Reason::Staff),
            ms,
            None,
            t0 + Duration::from_millis(100),
        );
        assert_eq!(f, vec![Fact::Passed(pass("a", 1, Reason::Staff))]);
        assert!(
            t.tick(t0 + GRACE * 2, |_| None).is_empty(),
            "nothing left waiting"
        );
        // Two through with no grant: forced, after the grace.
        assert!(t.passage(1, Direction::In, 2, None, t0).is_empty());
        assert!(t.tick(t0 + GRACE / 2, |_| None).is_empty());
        assert_eq!(
            t.tick(t0 + GRACE, |_| None),
            vec![Fact::Forced {
                lane: 1,
                direction: Direction::In,
                count: 2
            }]
        );
        // One grant, three through: one passed, two forced.
        t.grant(pass("c", 1, Reason::Staff), ms, None, t0);
        let f = t.passage(1, Direction::In, 3, None, t0);
        assert_eq!(f, vec![Fact::Passed(pass("c", 1, Reason::Staff))]);
        assert_eq!(
            t.tick(t0 + GRACE, |_| None),
            vec![Fact::Forced {
                lane: 1,
                direction: Direction::In,
                count: 2
            }]
        );
    }

    #[test]
    fn while_the_mode_holds_lanes_open_passages_are_passes_of_the_mode() {
        let mut t = Tracker::default();
        let f = t.passage(0, Direction::Out, 3, Some(Reason::HoldOpen), Instant::now());
        assert_eq!(
            f,
            vec![Fact::Free {
                lane: 0,
                direction: Direction::Out,
                count: 3,
                reason: Reason::HoldOpen
            }]
        );
    }

    #[test]
    fn only_releases_wait_for_a_passage() {
        assert!(releases(&pass("a", 0, Reason::Staff)));
        assert!(releases(&pass("a", 0, Reason::FreeExit)));
        assert!(!releases(&pass("a", 0, Reason::EmergencyRelease)));
        assert!(!releases(&pass("a", 0, Reason::Passage)));
        let mut clear = pass("a", 0, Reason::OverrideRemote);
        clear.override_ = Some(gated_contract::Override {
            source: "remote".into(),
            input: crate::store::CLEAR_PASSBACK.into(),
            by: None,
        });
        assert!(!releases(&clear));
    }
}
