//! Getting out: after an evacuation, with hard anti-passback, everyone who badged out under
//! emergency release comes back in; a visitor's exit does not use up an entry; a visitor past
//! the end of their invitation, and staff past their schedule, still get out within the
//! grace, and are still refused on the way in; past the offline limit too.

use serde_json::{Value, json};

use crate::harness::*;

const HARD: &str = "[policy.anti_passback]\nmode = \"hard\"\n";
const CARD: &str = "0012345678";

/// Presents `kind`/`id` at the entry (reader1, lane 0) or the exit (reader2, lane 1) and
/// returns the event it caused.
async fn present(w: &World, kind: u16, id: &str, entry: bool) -> Value {
    let before = w.centre.on(EVENT).len();
    let reader = if entry {
        &w.devices.reader1
    } else {
        &w.devices.reader2
    };
    reader.present(kind, id, 0).expect("present");
    wait_for("the event of a presentation", DEADLINE, || {
        w.centre.on(EVENT).get(before).map(Msg::json)
    })
    .await
}

fn verdict(e: &Value) -> (&str, &str) {
    (
        e["decision"].as_str().unwrap_or("?"),
        e["reason"].as_str().unwrap_or("?"),
    )
}

async fn set_mode(w: &World, mode: &str, nonce: &str) {
    let ack = run_command(&w.centre, mode, nonce, json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    w.centre
        .wait_json(&format!("status in {mode}"), STATUS, |s| s["mode"] == mode)
        .await;
}

#[tokio::test]
async fn after_an_emergency_release_those_who_badged_out_come_back_in() {
    let w = World::start_with_config(|c| c + HARD).await;
    let e = present(&w, hw_sim::KIND_CARD, CARD, true).await;
    assert_eq!(verdict(&e), ("granted", "staff"), "{e}");
    set_mode(&w, "emergency_release", "evacuate-1").await;
    let e = present(&w, hw_sim::KIND_CARD, CARD, false).await;
    assert_eq!(verdict(&e), ("granted", "emergency_release"), "{e}");
    assert_eq!(e["subject"], "E1001", "{e}");
    set_mode(&w, "normal", "all-clear-1").await;
    // Before the fix: refused `anti_passback`, the state still said E1001 was inside.
    let e = present(&w, hw_sim::KIND_CARD, CARD, true).await;
    assert_eq!(verdict(&e), ("granted", "staff"), "{e}");
    let e = present(&w, hw_sim::KIND_CARD, CARD, true).await;
    assert_eq!(verdict(&e), ("denied", "anti_passback"), "{e}");
}

const VISITORS_TOPIC: &str = "acs/hq/lists/visitors";

/// An invitation with one QR code, valid at east-1 until `until` (RFC 3339).
fn invitation(id: &str, code: &str, until: &str, max_entries: Option<u32>) -> Value {
    json!({"invitation": id, "visitor": format!("Visitor {id}"), "host": "E1001",
        "credentials": [{"kind": "qr", "id": code}], "valid_from": null,
        "valid_until": until, "gates": ["east-1"], "max_entries": max_entries})
}

async fn publish_visitors(w: &World, entries: Vec<Value>) {
    let body = json!({"list": "visitors", "site": "hq", "version": 1,
        "issued_at": "2026-11-21T07:00:00Z", "entries": entries});
    w.centre
        .publish(VISITORS_TOPIC, body.to_string(), true)
        .await;
    w.centre
        .wait_json("the ack of visitors@1", ACK, |a| {
            a["ref"] == "visitors@1" && a["ok"] == true
        })
        .await;
}

#[tokio::test]
async fn a_visitor_exit_uses_no_entry_and_the_last_entry_still_gets_out() {
    let w = World::start().await;
    let until = "2099-12-31T23:59:59Z";
    publish_visitors(
        &w,
        vec![
            invitation("INV-2", "QR-TWO", until, Some(2)),
            invitation("INV-1", "QR-ONE", until, Some(1)),
        ],
    )
    .await;
    let qr = hw_sim::KIND_QR;
    // Two entries: in, out, in, out; the third way in is refused.
    for (entry, want) in [
        (true, ("granted", "visitor")),
        (false, ("granted", "visitor")),
        // Before the fix: refused `entries_exhausted`, the exit had used the second entry.
        (true, ("granted", "visitor")),
        (false, ("granted", "visitor")),
        (true, ("denied", "entries_exhausted")),
    ] {
        let e = present(&w, qr, "QR-TWO", entry).await;
        assert_eq!(verdict(&e), want, "{e}");
    }
    // One entry: in, and out again (before the fix: refused at the exit).
    let e = present(&w, qr, "QR-ONE", true).await;
    assert_eq!(verdict(&e), ("granted", "visitor"), "{e}");
    let e = present(&w, qr, "QR-ONE", false).await;
    assert_eq!(verdict(&e), ("granted", "visitor"), "{e}");
}

/// `HH:MM-HH:MM` on the weekday of `start` (UTC, the reference gate's zone), from `start` for
/// ten minutes, cut at midnight: a span that has closed by the time the test runs.
fn closed_span(start: chrono::DateTime<chrono::Utc>) -> (String, String) {
    use chrono::{Datelike, Timelike};
    let from = start.hour() * 60 + start.minute();
    let to = (from + 10).min(24 * 60);
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        [start.weekday().num_days_from_monday() as usize];
    let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
    (day.to_string(), format!("{}-{}", hm(from), hm(to)))
}

#[tokio::test]
async fn past_the_window_or_the_schedule_an_exit_passes_within_the_grace_an_entry_never() {
    let now = chrono::Utc::now();
    let minutes = |m: i64| now - chrono::Duration::minutes(m);
    // `recent` closed 10 to 20 minutes ago, `long_ago` 50 to 60: the grace is 30 minutes.
    let (d1, recent) = closed_span(minutes(20));
    let (d2, long_ago) = closed_span(minutes(60));
    // By default a schedule never refuses an exit; a site may give it a grace instead.
    let schedules = format!(
        "[policy.schedule.recent]\n{d1} = [\"{recent}\"]\n\
         [policy.schedule.long_ago]\n{d2} = [\"{long_ago}\"]\n\
         [policy.exit]\nschedule = \"grace\"\n"
    );
    let w = World::start_with_config(|c| c + &schedules).await;
    let ts =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    publish_visitors(
        &w,
        vec![
            invitation("INV-LATE", "QR-LATE", &ts(minutes(10)), Some(5)),
            invitation("INV-GONE", "QR-GONE", &ts(minutes(40)), Some(5)),
        ],
    )
    .await;
    let staff = json!({"list": "staff", "site": "hq", "version": 2,
        "issued_at": "2026-11-21T07:00:00Z", "entries": [
        {"subject": "E2002", "credentials": [{"kind": "card", "id": "0000002002"}],
         "gates": ["*"], "schedule": "recent"},
        {"subject": "E2003", "credentials": [{"kind": "card", "id": "0000002003"}],
         "gates": ["*"], "schedule": "long_ago"}]});
    w.centre.publish(STAFF_TOPIC, staff.to_string(), true).await;
    w.centre
        .wait_json("the ack of staff@2", ACK, |a| {
            a["ref"] == "staff@2" && a["ok"] == true
        })
        .await;
    let (qr, card) = (hw_sim::KIND_QR, hw_sim::KIND_CARD);
    for (kind, id, entry, want) in [
        // Ended 10 minutes ago: refused on the way in, let out (before the fix: `expired`).
        (qr, "QR-LATE", true, ("denied", "expired")),
        (qr, "QR-LATE", false, ("granted", "visitor")),
        // Ended 40 minutes ago: past the grace.
        (qr, "QR-GONE", false, ("denied", "expired")),
        // Schedule closed 10 minutes ago: refused in, let out (before: `outside_schedule`).
        (card, "0000002002", true, ("denied", "outside_schedule")),
        (card, "0000002002", false, ("granted", "staff")),
        // Closed 50 minutes ago: past the grace.
        (card, "0000002003", false, ("denied", "outside_schedule")),
    ] {
        let e = present(&w, kind, id, entry).await;
        assert_eq!(verdict(&e), want, "{id} entry={entry}: {e}");
    }
}

/// Past the offline limit the way in is refused `offline_limit`, and the way out still opens
/// (within the grace of the limit).
#[tokio::test]
async fn past_the_offline_limit_an_entry_is_refused_and_an_exit_passes() {
    let mut w = World::start_with_config(|c| c + "[policy.max_offline]\nstaff = \"1s\"\n").await;
    w.broker.stop();
    let lane_pulses = |lane: u16| {
        w.devices
            .relay
            .pulses()
            .iter()
            .filter(|p| p.lane == lane)
            .count()
    };
    // Decided offline: swipe in until the limit refuses one (a refusal opens nothing).
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "never refused offline"
        );
        let before = lane_pulses(0);
        let seq = w
            .devices
            .reader1
            .present(hw_sim::KIND_CARD, CARD, 0)
            .expect("present");
        wait_for("the entry decided", DEADLINE, || {
            w.devices.reader1.acked().contains(&seq).then_some(())
        })
        .await;
        if lane_pulses(0) == before {
            break;
        }
    }
    let seq = w
        .devices
        .reader2
        .present(hw_sim::KIND_CARD, CARD, 0)
        .expect("present");
    wait_for("the exit decided", DEADLINE, || {
        w.devices.reader2.acked().contains(&seq).then_some(())
    })
    .await;
    // Before the fix: refused `offline_limit`, no exit pulse.
    assert_eq!(lane_pulses(1), 1, "the exit opened");
    w.broker.restart().await;
    let events = wait_for("the offline decisions", DEADLINE, || {
        let e = w.events();
        e.iter().any(|e| e["direction"] == "out").then_some(e)
    })
    .await;
    let last_in = events.iter().rev().find(|e| e["direction"] == "in");
    let out = events.iter().find(|e| e["direction"] == "out");
    assert_eq!(
        last_in.map(verdict),
        Some(("denied", "offline_limit")),
        "{events:?}"
    );
    assert_eq!(out.map(verdict), Some(("granted", "staff")), "{events:?}");
}
