//! a. a staff card opens the right lane and direction; b. an unknown card opens nothing.
//! g. a reader that stops answering raises an alarm, shows in status, and the other lane works.

use std::time::Duration;

use hw_sim::{Fault, KIND_CARD};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staff_card_pulses_its_lane_and_the_event_has_every_contract_field() {
    let w = World::start().await;
    let seq = w
        .devices
        .reader2
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    let pulse = wait_for("a relay pulse", DEADLINE, || {
        w.devices.relay.pulses().first().cloned()
    })
    .await;
    assert_eq!(
        (pulse.lane, pulse.exit, pulse.ms),
        (1, true, 2500),
        "reader2 serves lane 1, exit"
    );
    let presented = w.devices.reader2.presented_at(seq).expect("presented");
    let latency = pulse.at.duration_since(presented).unwrap_or_default();
    eprintln!(
        "swipe-to-relay: {:.1} ms (poll_ms 20, debug build)",
        latency.as_secs_f64() * 1e3
    );

    let e = w.centre.wait_json("the pass event", EVENT, |_| true).await;
    let keys = [
        "id",
        "seq",
        "site",
        "gate",
        "lane",
        "direction",
        "ts",
        "credential",
        "subject",
        "decision",
        "reason",
        "override",
        "passed",
        "snapshot",
    ];
    for k in keys {
        assert!(e.get(k).is_some(), "event lacks `{k}`: {e}");
    }
    let id = e["id"].as_str().expect("id is a string");
    let uuid = uuid::Uuid::parse_str(id).expect("id is a UUID");
    assert_eq!(uuid.get_version_num(), 7, "id is a UUIDv7");
    assert_eq!(e["seq"], 1);
    assert_eq!(
        (e["site"].as_str(), e["gate"].as_str()),
        (Some("hq"), Some("east-1"))
    );
    assert_eq!(
        (e["lane"].as_u64(), e["direction"].as_str()),
        (Some(1), Some("out"))
    );
    let ts = e["ts"].as_str().expect("ts");
    assert!(
        ts.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "ts {ts}"
    );
    assert_eq!(
        e["credential"],
        serde_json::json!({"kind":"card","id":"0012345678","score":null})
    );
    assert_eq!(e["subject"], "E1001");
    assert_eq!(
        (e["decision"].as_str(), e["reason"].as_str()),
        (Some("granted"), Some("staff"))
    );
    assert!(e["override"].is_null() && e["passed"].is_null() && e["snapshot"].is_null());
    wait_for("the mailbox ack", DEADLINE, || {
        w.devices.reader2.acked().contains(&seq).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_an_unknown_card_opens_nothing_and_is_logged_denied() {
    let w = World::start().await;
    let seq = w
        .devices
        .reader1
        .present(KIND_CARD, "0099887766", 0)
        .expect("present");
    let e = w
        .centre
        .wait_json("the denied event", EVENT, |_| true)
        .await;
    assert_eq!(e["decision"], "denied");
    assert_eq!(e["reason"], "unknown_credential");
    assert!(e["subject"].is_null());
    assert_eq!(
        (e["lane"].as_u64(), e["direction"].as_str()),
        (Some(0), Some("in"))
    );
    // The mailbox is acked only after any pulse, so once it is acked a pulse would be there.
    wait_for("the mailbox ack", DEADLINE, || {
        w.devices.reader1.acked().contains(&seq).then_some(())
    })
    .await;
    assert!(
        w.devices.relay.pulses().is_empty(),
        "a denied card must not pulse the relay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_a_silent_reader_raises_an_alarm_shows_in_status_and_spares_the_other_lane() {
    let w = World::start().await;
    w.devices.reader1_srv.set_fault(Fault::NoReply);
    let alarm = w
        .centre
        .wait_json("a device_fault alarm for reader1", ALARM, |a| {
            a["alarm"] == "device_fault" && a["source"] == "reader1"
        })
        .await;
    assert!(
        alarm["detail"].as_str().unwrap_or("").contains("no reply"),
        "{alarm}"
    );
    assert!(alarm["seq"].as_u64().is_some() && alarm["id"].as_str().is_some());
    w.centre
        .wait_json("status showing reader1 timing out", STATUS, |s| {
            s["devices"]["reader1"] == "timeout"
        })
        .await;

    // Lane 1 works while lane 0's reader is dead.
    w.devices
        .reader2
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    let p = wait_for("lane 1 to open", DEADLINE, || {
        w.devices.relay.pulses().first().cloned()
    })
    .await;
    assert_eq!((p.lane, p.exit), (1, true));
    w.centre
        .wait_json("the lane 1 grant", EVENT, |e| {
            e["lane"] == 1 && e["decision"] == "granted"
        })
        .await;

    // The reader comes back: a recovery alarm, status ok, and its queued pass is decided.
    let seq = w
        .devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    w.devices.reader1_srv.set_fault(Fault::None);
    w.centre
        .wait_json("a device_recovered alarm", ALARM, |a| {
            a["alarm"] == "device_recovered" && a["source"] == "reader1"
        })
        .await;
    w.centre
        .wait_json("status showing reader1 ok", STATUS, |s| {
            s["devices"]["reader1"] == "ok"
        })
        .await;
    wait_for("reader1's pass", Duration::from_secs(10), || {
        w.devices.reader1.acked().contains(&seq).then_some(())
    })
    .await;
    w.centre
        .wait_json("lane 0's grant", EVENT, |e| e["lane"] == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_mailbox_event_is_an_alarm_never_a_grant_and_the_lane_goes_on() {
    let w = World::start().await;
    let bad = w
        .devices
        .reader1
        .present_raw(9, b"0012345678", 0)
        .expect("present garbage");
    let alarm = w
        .centre
        .wait_json("a reader_garbage alarm", ALARM, |a| {
            a["alarm"] == "reader_garbage"
        })
        .await;
    assert!(
        alarm["detail"].as_str().unwrap_or("").contains("kind 9"),
        "{alarm}"
    );
    wait_for("the garbled event to be acked", DEADLINE, || {
        w.devices.reader1.acked().contains(&bad).then_some(())
    })
    .await;
    // The lane is not stuck behind it, and the garbage opened nothing.
    w.devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    let e = w.centre.wait_json("the next pass", EVENT, |_| true).await;
    assert_eq!(
        (e["seq"].as_u64(), e["reason"].as_str()),
        (Some(1), Some("staff"))
    );
    assert_eq!(
        w.devices.relay.pulses().len(),
        1,
        "only the valid card opened the lane"
    );
    let garbage_alarms = w
        .centre
        .on(ALARM)
        .iter()
        .filter(|m| m.json()["alarm"] == "reader_garbage")
        .count();
    assert_eq!(garbage_alarms, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_reader_raises_one_fault_not_a_flood() {
    let w = World::start().await;
    // The flapping itself: the device drops out and comes back every 100 ms, for 2 s.
    for _ in 0..10 {
        w.devices.reader1_srv.set_fault(Fault::Disconnect);
        tokio::time::sleep(Duration::from_millis(100)).await;
        w.devices.reader1_srv.set_fault(Fault::None);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.centre
        .wait_json("the recovery once it is steady", ALARM, |a| {
            a["alarm"] == "device_recovered" && a["source"] == "reader1"
        })
        .await;
    let faults = w
        .centre
        .on(ALARM)
        .iter()
        .filter(|m| m.json()["alarm"] == "device_fault")
        .count();
    assert_eq!(faults, 1, "one fault episode, one alarm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_keeps_an_acked_event_is_acked_again_and_the_lane_goes_on() {
    let w = World::start().await;
    w.devices.reader1.ignore_next_acks(1);
    let first = w
        .devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    let second = w
        .devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    let alarm = w
        .centre
        .wait_json("a device_fault for the kept event", ALARM, |a| {
            a["alarm"] == "device_fault" && a["source"] == "reader1"
        })
        .await;
    assert!(
        alarm["detail"]
            .as_str()
            .unwrap_or("")
            .contains("still showed event"),
        "{alarm}"
    );
    wait_for("both events acked", DEADLINE, || {
        let acked = w.devices.reader1.acked();
        (acked.contains(&first) && acked.contains(&second)).then_some(())
    })
    .await;
    let events = wait_for("two pass events", DEADLINE, || {
        let e = w.events();
        (e.len() >= 2).then_some(e)
    })
    .await;
    assert_eq!(
        events.len(),
        2,
        "the kept event was decided once, not again"
    );
    assert_eq!(w.devices.relay.pulses().len(), 2, "one pulse per pass");
}
