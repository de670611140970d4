//! Swipes that waited in a reader's mailbox while the gate could not take them (the reader's
//! link down, the daemon stopped) are recorded `stale_swipe` with when they were first seen,
//! and release nothing: whoever stands at the lane later is not the one who swiped.

use std::time::{Duration, Instant};

use hw_sim::{Fault, KIND_CARD};
use serde_json::Value;

use crate::harness::*;

const CARD: &str = "0012345678";

/// Pulses the board has taken for lane 0, entry.
fn lane0_pulses(w: &World) -> usize {
    w.devices
        .relay
        .pulses()
        .iter()
        .filter(|p| p.lane == 0 && !p.exit)
        .count()
}

/// Presents `n` cards on reader1 while the gate cannot read them.
fn queue(w: &World, n: usize) {
    for _ in 0..n {
        w.devices
            .reader1
            .present(KIND_CARD, CARD, 0)
            .expect("present");
    }
}

/// Waits for the events `from..from + n`, then checks each is a stale swipe with a `seen_at`.
async fn stale_events(w: &World, from: usize, n: usize) -> Vec<Value> {
    let events = wait_for("the queued swipes' events", DEADLINE, || {
        let e = w.events();
        (e.len() >= from + n).then(|| e[from..from + n].to_vec())
    })
    .await;
    for e in &events {
        assert_eq!(e["reason"], "stale_swipe", "{e}");
        assert_eq!(e["decision"], "denied", "{e}");
        assert_eq!(e["subject"], "E1001", "{e}");
        let seen = e["seen_at"]
            .as_str()
            .unwrap_or_else(|| panic!("seen_at: {e}"));
        let ts = e["ts"].as_str().expect("ts");
        assert!(seen <= ts, "first seen {seen} after it was decided {ts}");
    }
    events
}

/// A fresh swipe after the backlog: granted, with its `seen_at`, and pulsed exactly once;
/// pulses for the queued swipes would have come before it (one mailbox, decided in order).
async fn fresh_swipe_pulses_once(w: &World, pulses_before: usize) {
    let e = swipe(w, CARD).await;
    assert_eq!(e["reason"], "staff", "{e}");
    assert!(e["seen_at"].is_string(), "{e}");
    wait_for("the fresh swipe's pulse", DEADLINE, || {
        (lane0_pulses(w) > pulses_before).then_some(())
    })
    .await;
    assert_eq!(
        lane0_pulses(w),
        pulses_before + 1,
        "the stale swipes released the lane"
    );
}

#[tokio::test]
async fn swipes_queued_while_the_reader_was_unreachable_never_release() {
    let w = World::start_with_config(|c| {
        c.replace(
            "min_face_score = 0.8",
            "min_face_score = 0.8\nmax_swipe_age = \"1s\"",
        )
    })
    .await;
    assert_eq!(swipe(&w, CARD).await["reason"], "staff");
    wait_for("the first pulse", DEADLINE, || {
        (lane0_pulses(&w) == 1).then_some(())
    })
    .await;

    w.devices.reader1_srv.set_unit_fault(1, Fault::NoReply);
    w.centre
        .wait_json("reader1 down in status", STATUS, |s| {
            s["devices"]["reader1"] != "ok"
        })
        .await;
    queue(&w, 3);
    // The link stays down until the queued swipes are older than the limit: a reader back
    // within it would hand over swipes whose holders may still be at the lane.
    let queued = Instant::now();
    wait_for("the queued swipes to age past 1 s", DEADLINE, || {
        (queued.elapsed() > Duration::from_millis(1_200)).then_some(())
    })
    .await;
    w.devices.reader1_srv.set_unit_fault(1, Fault::None);
    stale_events(&w, 1, 3).await;
    fresh_swipe_pulses_once(&w, 1).await;
}

#[tokio::test]
async fn swipes_queued_while_the_daemon_was_down_never_release() {
    let mut w = World::start_with_config(|c| c).await;
    w.daemon.kill9();
    queue(&w, 3);
    w.daemon.restart();
    stale_events(&w, 0, 3).await;
    fresh_swipe_pulses_once(&w, 0).await;
}
