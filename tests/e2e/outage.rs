//! e. a broker outage: passes are decided offline and all reach the broker, in order, after.
//! f. SIGKILL with events pending, and at random instants during traffic: nothing is lost,
//!    nothing is decided twice, seq has no gaps.

use std::collections::BTreeSet;
use std::time::Duration;

use hw_sim::KIND_CARD;

use crate::harness::*;

fn seqs_and_ids(w: &World) -> (Vec<u64>, BTreeSet<String>) {
    let events = w.events();
    let seqs = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let ids = events
        .iter()
        .filter_map(|e| e["id"].as_str().map(String::from))
        .collect();
    (seqs, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_fifty_swipes_during_an_outage_all_arrive_in_order_without_gaps() {
    let mut w = World::start().await;
    w.broker.stop();
    let mut presented = Vec::new();
    for _ in 0..50 {
        presented.push(
            w.devices
                .reader1
                .present(KIND_CARD, "0012345678", 0)
                .expect("present"),
        );
    }
    // Decided locally while the broker is down (G5): every pass opened the lane.
    wait_for("50 offline decisions", Duration::from_secs(20), || {
        (w.devices.reader1.acked().len() == 50).then_some(())
    })
    .await;
    assert_eq!(w.devices.relay.pulses().len(), 50);

    w.broker.restart().await;
    wait_for(
        "50 events after the outage",
        Duration::from_secs(20),
        || (seqs_and_ids(&w).1.len() >= 50).then_some(()),
    )
    .await;
    let (seqs, ids) = seqs_and_ids(&w);
    assert_eq!(ids.len(), 50, "exactly the 50 passes, deduplicated by id");
    let first_copies: Vec<u64> = {
        let mut seen = BTreeSet::new();
        seqs.iter().copied().filter(|s| seen.insert(*s)).collect()
    };
    assert_eq!(
        first_copies,
        (1..=50).collect::<Vec<_>>(),
        "in order, seq 1..=50, no gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_sigkill_loses_nothing_and_decides_nothing_twice() {
    let mut w = World::start().await;
    // Pending events: the broker is down, the daemon dies by SIGKILL.
    w.broker.stop();
    for _ in 0..20 {
        w.devices
            .reader1
            .present(KIND_CARD, "0012345678", 0)
            .expect("present");
    }
    wait_for("20 offline decisions", Duration::from_secs(20), || {
        (w.devices.reader1.acked().len() == 20).then_some(())
    })
    .await;
    w.daemon.kill9();
    w.broker.restart().await;
    w.daemon.restart();
    wait_for("the 20 pending events", Duration::from_secs(20), || {
        (seqs_and_ids(&w).1.len() >= 20).then_some(())
    })
    .await;

    // Now kill it at arbitrary instants while passes flow through both readers.
    let mut presented = 20;
    for round in 0..6u64 {
        for _ in 0..4 {
            w.devices
                .reader1
                .present(KIND_CARD, "0012345678", 0)
                .expect("present");
            w.devices
                .reader2
                .present(KIND_CARD, "0099887766", 0)
                .expect("present");
            presented += 2;
        }
        // Let some of them through, then kill mid-stream.
        let settled = w.devices.reader1.acked().len() + w.devices.reader2.acked().len();
        wait_for("traffic to flow", DEADLINE, || {
            (w.devices.reader1.acked().len() + w.devices.reader2.acked().len() > settled)
                .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(3 * round)).await;
        w.daemon.restart();
    }
    wait_for("both mailboxes to drain", Duration::from_secs(30), || {
        (w.devices.reader1.queued() == 0 && w.devices.reader2.queued() == 0).then_some(())
    })
    .await;
    wait_for("every event at the broker", Duration::from_secs(30), || {
        (seqs_and_ids(&w).1.len() >= presented).then_some(())
    })
    .await;
    let (seqs, ids) = seqs_and_ids(&w);
    assert_eq!(
        ids.len(),
        presented,
        "one event per mailbox event: none lost, none decided twice"
    );
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(
        distinct,
        (1..=presented as u64).collect(),
        "seq 1..=N with no gap"
    );
    let granted = w
        .events()
        .iter()
        .filter(|e| e["decision"] == "granted")
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect::<BTreeSet<_>>()
        .len();
    // G1: every pulse has a committed, granted event behind it.
    assert!(
        w.devices.relay.pulses().len() <= granted,
        "{} pulses but only {granted} granted events",
        w.devices.relay.pulses().len()
    );
}

/// G3 at its sharpest: the broker received the event, but its PUBACK was lost. The row must
/// stay in the outbox and go again on the next connection (a gate that deleted rows on send
/// would lose it here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_puback_was_lost_is_sent_again() {
    let w = World::through_proxy().await;
    let (centre, proxy) = (&w.centre, w.proxy.as_ref().expect("a proxy"));
    proxy.blackhole_replies(true);
    w.devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    // The broker got it (the centre sees it), but the gate never hears the PUBACK.
    let first = centre
        .wait_json("the event, first copy", EVENT, |_| true)
        .await;
    proxy.cut();
    proxy.blackhole_replies(false);
    let id = first["id"].as_str().expect("id").to_string();
    wait_for(
        "the event to be sent again",
        Duration::from_secs(20),
        || {
            (centre
                .on(EVENT)
                .iter()
                .filter(|m| m.json()["id"] == id.as_str())
                .count()
                >= 2)
                .then_some(())
        },
    )
    .await;
}

/// Item `last_offline` of the status: a status is only sent in contact, so the gate tells the
/// centre afterwards how long it was cut off and what it decided meanwhile, even when it was
/// restarted during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_status_says_how_long_it_lasted_and_what_was_decided() {
    let mut w = World::start().await;
    w.broker.stop();
    // Restarted while the broker is down: offline from its first decision on. The last
    // contact it will report is before this moment (the old process is gone).
    restart_watching(&mut w.daemon).await;
    let cut = std::time::Instant::now();
    let reader = |n: usize| {
        let r = &w.devices.reader1;
        move || (r.acked().len() >= n).then_some(())
    };
    w.devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    w.devices
        .reader1
        .present(KIND_CARD, "0000000001", 0)
        .expect("present");
    wait_for("two offline decisions", DEADLINE, reader(2)).await;
    // And restarted again: what was counted so far is kept.
    restart_watching(&mut w.daemon).await;
    w.devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    wait_for("the third offline decision", DEADLINE, reader(3)).await;
    let offline_at_least = cut.elapsed().as_millis() as i64;
    w.broker.restart().await;

    let status = w
        .centre
        .wait_json("a status with last_offline", STATUS, |s| {
            s["online"] == true && s["last_offline"].is_object()
        })
        .await;
    let last = &status["last_offline"];
    assert_eq!(
        (&last["granted"], &last["denied"], &last["offline_limit"]),
        (&2.into(), &1.into(), &0.into()),
        "{status}"
    );
    let ms = last["ms"].as_i64().expect("ms");
    assert!(
        ms >= offline_at_least,
        "{ms} ms, but offline for at least {offline_at_least} ms: {status}"
    );
    let since = last["since"].as_str().expect("since");
    let until = last["until"].as_str().expect("until");
    assert!(since < until, "{status}");
    assert!(status.get("offline_since").is_none(), "{status}");
}

/// Issue 22, item 6: after a long outage the wait between attempts had grown to 30 s plus
/// jitter, so a broker that was back up went unreached for up to 37 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_back_after_a_long_outage_is_reached_within_seconds() {
    let mut w = World::start().await;
    let uplink_lines = |log: &str, what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && l.contains("Uplink"))
            .count()
    };
    wait_for("the uplink connected", Duration::from_secs(20), || {
        (uplink_lines(&w.daemon.log(), "MQTT connected") >= 1).then_some(())
    })
    .await;
    let connected_before = uplink_lines(&w.daemon.log(), "MQTT connected");
    w.broker.stop();
    // Enough failed attempts that the old backoff had reached its 30 s ceiling (0.25 s
    // doubling: the wait after the 7th was 30 s).
    wait_for("seven failed attempts", Duration::from_secs(60), || {
        (uplink_lines(&w.daemon.log(), "could not connect to MQTT broker") >= 7).then_some(())
    })
    .await;
    w.broker.restart().await;
    let back = std::time::Instant::now();
    wait_for("the uplink back", Duration::from_secs(60), || {
        (uplink_lines(&w.daemon.log(), "MQTT connected") > connected_before).then_some(())
    })
    .await;
    let took = back.elapsed();
    assert!(
        took <= Duration::from_secs(7),
        "the gate reached a broker that was up only after {took:?}"
    );
}
