//! Alarms sent to the broker past the outbox, for what the store cannot record yet (G8, G9):
//! the uplink publishes each once on the gate's alarm topic, marked `"unrecorded": true` and
//! without a `seq` (numbers come from the store). It is a warning, not the record: the record
//! follows through the outbox once the store can write, with its own `id` and `seq`.
//!
//! Held in memory, bounded: past `MAX_WAITING` the oldest is dropped (logged), so a store
//! that stays down cannot grow it. An alarm handed to a connection is kept until its PUBACK:
//! one whose connection is lost first is sent again on the next (`resend`), before any newer
//! one. Held in memory only: a restart forgets them (the record, once the store can write,
//! is what survives).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use crate::core::UnixMs;
use gated_contract::{
    MAX_DETAIL_BYTES, MAX_ECHO_BYTES, Topics, UnrecordedAlarm, bounded, format_ts,
};

/// Alarms waiting for the uplink at most.
pub const MAX_WAITING: usize = 32;

/// One alarm the store has not recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Unrecorded {
    pub id: String,
    pub ts: UnixMs,
    pub alarm: String,
    pub source: String,
    pub detail: String,
}

impl Unrecorded {
    pub fn new(alarm: &str, source: &str, detail: &str, now: UnixMs) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            ts: now,
            alarm: alarm.to_string(),
            source: bounded(source, MAX_ECHO_BYTES).into_owned(),
            detail: bounded(detail, MAX_DETAIL_BYTES).into_owned(),
        }
    }

    /// The message as the centre gets it on the alarm topic.
    pub fn body(&self, topics: &Topics, demo: bool) -> Vec<u8> {
        let b = UnrecordedAlarm {
            id: self.id.clone(),
            site: topics.site.clone(),
            gate: topics.gate.clone(),
            ts: format_ts(self.ts),
            alarm: self.alarm.clone(),
            source: self.source.clone(),
            detail: self.detail.clone(),
            unrecorded: true,
            demo,
        };
        serde_json::to_vec(&b).expect("a struct of strings always serializes")
    }
}

/// The alarms waiting for the uplink, oldest first, and those handed to its connection and
/// not acknowledged yet.
#[derive(Clone, Default)]
pub struct Direct {
    queues: Arc<Mutex<Queues>>,
    /// Notified at each PUBACK, for `wait_acked`.
    acks: Arc<std::sync::Condvar>,
    /// Wakes an uplink that is waiting for the store (`waiting`).
    pushed: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Queues {
    waiting: VecDeque<Unrecorded>,
    /// Handed to the connection, awaiting their PUBACK, in the order they were handed.
    sent: VecDeque<Unrecorded>,
}

impl Direct {
    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once an alarm was pushed (or had been since the last call).
    pub async fn waiting(&self) {
        self.pushed.notified().await;
    }

    pub fn push(&self, a: Unrecorded) {
        let mut q = self.queues();
        q.waiting.push_back(a);
        q.bound();
        drop(q);
        self.pushed.notify_one();
    }

    /// The next alarm to hand over; it is kept as sent until `acked` or `resend`.
    pub fn take(&self) -> Option<Unrecorded> {
        let mut q = self.queues();
        let a = q.waiting.pop_front()?;
        q.sent.push_back(a.clone());
        Some(a)
    }

    /// Puts back the one `take` gave that could not be handed over, first in line.
    pub fn untake(&self, id: &str) {
        let mut q = self.queues();
        if let Some(at) = q.sent.iter().position(|a| a.id == id) {
            let a = q.sent.remove(at).expect("found");
            q.waiting.push_front(a);
        }
    }

    /// The broker has it: it is not sent again.
    pub fn acked(&self, id: &str) {
        self.queues().sent.retain(|a| a.id != id);
        self.acks.notify_all();
    }

    /// Blocks the calling thread (never an async worker) until the alarm `id` has left the
    /// queues, or for `bound` at most: for a process about to end. True if it left: the
    /// broker acknowledged it (or, rarely, it was dropped as the oldest past `MAX_WAITING`,
    /// which is logged).
    pub fn wait_acked(&self, id: &str, bound: std::time::Duration) -> bool {
        let q = self.queues();
        let held = |q: &mut Queues| q.waiting.iter().chain(q.sent.iter()).any(|a| a.id == id);
        let (mut q, _) = self
            .acks
            .wait_timeout_while(q, bound, |q| held(q))
            .unwrap_or_else(PoisonError::into_inner);
        !held(&mut q)
    }

    /// The connection they were handed to is gone (its un-acked publishes with it, since the
    /// session is clean): those not acknowledged go again, first, oldest first.
    pub fn resend(&self) {
        let mut q = self.queues();
        while let Some(a) = q.sent.pop_back() {
            q.waiting.push_front(a);
        }
        q.bound();
    }
}

impl Queues {
    /// Past `MAX_WAITING` alarms in all, the oldest waiting ones are dropped.
    fn bound(&mut self) {
        while self.waiting.len() + self.sent.len() > MAX_WAITING {
            let Some(old) = self.waiting.pop_front() else {
                return;
            };
            tracing::error!(
                alarm = old.alarm,
                source = old.source,
                "unrecorded alarm dropped: too many wait for the broker"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waiting_alarms_are_bounded_and_the_oldest_go_first() {
        let d = Direct::default();
        for i in 0..MAX_WAITING + 3 {
            d.push(Unrecorded::new("fire_alarm", &format!("relay{i}"), "x", 0));
        }
        let first = d.take().expect("one");
        assert_eq!(first.source, "relay3");
        d.untake(&first.id);
        let mut n = 0;
        while d.take().is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_WAITING);
    }

    /// Issue 22, item 6: an alarm handed to a connection that was lost before its PUBACK was
    /// never sent again.
    #[test]
    fn an_alarm_not_acknowledged_is_sent_again_on_the_next_connection() {
        let d = Direct::default();
        for source in ["a", "b", "c"] {
            d.push(Unrecorded::new("store_error", source, "x", 0));
        }
        let (a, b) = (d.take().expect("a"), d.take().expect("b"));
        d.acked(&a.id);
        // The connection is lost with b in flight, and d comes meanwhile.
        d.push(Unrecorded::new("store_error", "d", "x", 0));
        d.resend();
        let order: Vec<String> = std::iter::from_fn(|| d.take()).map(|x| x.source).collect();
        assert_eq!(order, ["b", "c", "d"], "b again first, a not again");
        assert_eq!(b.source, "b");
        // Acked on this connection: nothing left to resend.
        let sent: Vec<String> = d.queues().sent.iter().map(|x| x.id.clone()).collect();
        for id in sent {
            d.acked(&id);
        }
        d.resend();
        assert!(d.take().is_none());
    }

    #[test]
    fn an_unrecorded_alarm_says_so_and_has_no_seq() {
        let topics = Topics {
            root: "acs".into(),
            site: "hq".into(),
            gate: "g1".into(),
        };
        let a = Unrecorded::new("fire_alarm", "relay1", "released", 0);
        let v: serde_json::Value = serde_json::from_slice(&a.body(&topics, false)).expect("json");
        assert_eq!(v["unrecorded"], true);
        assert_eq!((&v["site"], &v["gate"]), (&"hq".into(), &"g1".into()));
        assert!(v.get("seq").is_none() && v.get("demo").is_none(), "{v}");
    }
}
