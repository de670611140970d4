//! Alarms sent to the broker past the outbox, for what the store cannot record yet (G8, G9):
//! the uplink publishes each once on the gate's alarm topic, marked `"unrecorded": true` and
//! without a `seq` (numbers come from the store). It is a warning, not the record: the record
//! follows through the outbox once the store can write, with its own `id` and `seq`.
//!
//! Held in memory, bounded: past `MAX_WAITING` the oldest is dropped (logged), so a store
//! that stays down cannot grow it. An alarm handed to a connection that is then lost is not
//! sent again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use super::contract::{MAX_DETAIL_BYTES, MAX_ECHO_BYTES, Topics, bounded, format_ts};
use crate::core::UnixMs;

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

#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    site: &'a str,
    gate: &'a str,
    ts: String,
    alarm: &'a str,
    source: &'a str,
    detail: &'a str,
    unrecorded: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    demo: bool,
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
        let b = Body {
            id: &self.id,
            site: &topics.site,
            gate: &topics.gate,
            ts: format_ts(self.ts),
            alarm: &self.alarm,
            source: &self.source,
            detail: &self.detail,
            unrecorded: true,
            demo,
        };
        serde_json::to_vec(&b).expect("a struct of strings always serializes")
    }
}

/// The alarms waiting for the uplink, oldest first.
#[derive(Clone, Default)]
pub struct Direct {
    queue: Arc<Mutex<VecDeque<Unrecorded>>>,
    /// Wakes an uplink that is waiting for the store (`waiting`).
    pushed: Arc<tokio::sync::Notify>,
    /// How many were pushed, and how many the broker acknowledged, for `wait_acked`.
    counts: Arc<(Mutex<Counts>, std::sync::Condvar)>,
}

#[derive(Default)]
struct Counts {
    pushed: u64,
    acked: u64,
}

impl Direct {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Unrecorded>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once an alarm was pushed (or had been since the last call).
    pub async fn waiting(&self) {
        self.pushed.notified().await;
    }

    /// Queues an alarm; returns its ticket for `wait_acked`.
    pub fn push(&self, a: Unrecorded) -> u64 {
        let ticket = {
            let mut c = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
            c.pushed += 1;
            c.pushed
        };
        let mut q = self.queue();
        if q.len() >= MAX_WAITING
            && let Some(old) = q.pop_front()
        {
            tracing::error!(
                alarm = old.alarm,
                source = old.source,
                "unrecorded alarm dropped: too many wait for the broker"
            );
        }
        q.push_back(a);
        drop(q);
        self.pushed.notify_one();
        ticket
    }

    /// The broker acknowledged one of them (the uplink calls this on its PUBACK).
    pub fn acked(&self) {
        let mut c = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        c.acked += 1;
        drop(c);
        self.counts.1.notify_all();
    }

    /// Blocks the calling thread (never an async worker) until as many alarms were
    /// acknowledged as had been pushed up to `ticket`, or for `bound` at most: for a process
    /// about to end. True if they were. An alarm dropped with its connection (or past
    /// `MAX_WAITING`) is never acked, and makes every later wait last its bound.
    pub fn wait_acked(&self, ticket: u64, bound: std::time::Duration) -> bool {
        let (lock, cv) = &*self.counts;
        let c = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (c, _) = cv
            .wait_timeout_while(c, bound, |c| c.acked < ticket)
            .unwrap_or_else(PoisonError::into_inner);
        c.acked >= ticket
    }

    pub fn pop(&self) -> Option<Unrecorded> {
        self.queue().pop_front()
    }

    /// Puts back one that could not be handed over, first in line.
    pub fn unpop(&self, a: Unrecorded) {
        self.queue().push_front(a);
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
        let first = d.pop().expect("one");
        assert_eq!(first.source, "relay3");
        d.unpop(first);
        let mut n = 0;
        while d.pop().is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_WAITING);
    }

    #[test]
    fn waiting_for_an_ack_ends_with_it_or_at_the_bound() {
        let d = Direct::default();
        let t = d.push(Unrecorded::new("store_corrupt", "store", "x", 0));
        let short = std::time::Duration::from_millis(50);
        assert!(!d.wait_acked(t, short), "nothing acked yet");
        let d2 = d.clone();
        let acker = std::thread::spawn(move || d2.acked());
        assert!(d.wait_acked(t, std::time::Duration::from_secs(5)));
        acker.join().expect("acker");
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
