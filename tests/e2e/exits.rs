//! Getting out: after an evacuation, with hard anti-passback, everyone who badged out under
//! emergency release comes back in; a visitor's exit does not use up an entry; a visitor past
//! the end of their invitation, and staff past their schedule, still get out within the
//! grace, and are still refused on the way in.

use serde_json::{Value, json};

use crate::util::*;

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
