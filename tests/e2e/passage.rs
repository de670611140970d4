//! Passage sensing through the relay board's counters, against the real binary: a grant that
//! someone walks through gets a `passage` event with `passed: true` and a `ref` to the pass; a
//! release nobody uses gets `passed: false`, and with `visitor_entry = "passage"` gives the
//! invitation's entry back; a passage with no grant is a `door_forced` alarm; while the gate
//! is held open every person is recorded as a `hold_open` pass.

use hw_sim::{KIND_CARD, KIND_QR};
use serde_json::Value;

use crate::harness::*;

const VISITORS_TOPIC: &str = "acs/hq/lists/visitors";

fn visitors() -> String {
    serde_json::json!({"list": "visitors", "site": "hq", "version": 1,
        "issued_at": "2026-11-21T07:00:00Z",
        "entries": [{"invitation": "INV-1", "visitor": "Zhang San", "host": "E1001",
            "credentials": [{"kind": "qr", "id": "QR-TOKEN-1"}],
            "valid_from": null, "valid_until": "2099-12-31T23:59:59Z",
            "gates": ["east-1"], "max_entries": 1},
           {"invitation": "INV-2", "visitor": "Li Si", "host": "E1001",
            "credentials": [{"kind": "qr", "id": "QR-TOKEN-2"}],
            "valid_from": null, "valid_until": "2099-12-31T23:59:59Z",
            "gates": ["east-1"], "max_entries": 1}]})
    .to_string()
}

/// The `passage` event that refers to `id`.
async fn passage_of(centre: &Centre, id: &Value) -> Value {
    centre
        .wait_json("the passage event of a pass", EVENT, |e| {
            e["reason"] == "passage" && &e["ref"] == id
        })
        .await
}

#[tokio::test]
async fn passages_are_matched_with_grants_and_forced_ones_are_alarms() {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    centre.publish(VISITORS_TOPIC, visitors(), true).await;
    let devices = Devices::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_text(&dir.path().join("gated.db"), broker.port, &devices)
        .replace(
            "name = \"relay1\"\n",
            "name = \"relay1\"\npassage_sensor = true\n",
        )
        .replace(
            "min_face_score = 0.8\n",
            "min_face_score = 0.8\nvisitor_entry = \"passage\"\n",
        );
    assert!(config.contains("passage_sensor") && config.contains("visitor_entry"));
    // Short releases keep the test short.
    let config = config.replace("release_ms = 3000", "release_ms = 500");
    let _daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    centre
        .wait_json("the ack of visitors@1", ACK, |a| a["ref"] == "visitors@1")
        .await;
    centre
        .wait_json("the ack of staff@1", ACK, |a| a["ref"] == "staff@1")
        .await;
    // The gate has read the counters once (their start) before anyone passes.
    let reads = devices.relay.input_reads();
    wait_for("the board read", DEADLINE, || {
        (devices.relay.input_reads() > reads + 2).then_some(())
    })
    .await;

    // A staff pass, and someone goes through.
    devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("queued");
    let pass = centre
        .wait_json("the staff pass", EVENT, |e| e["reason"] == "staff")
        .await;
    devices.relay.bump_counter(0, false);
    let p = passage_of(&centre, &pass["id"]).await;
    assert_eq!(
        (
            &p["decision"],
            &p["passed"],
            &p["lane"],
            &p["direction"],
            &p["subject"]
        ),
        (
            &Value::from("granted"),
            &Value::from(true),
            &Value::from(0),
            &Value::from("in"),
            &Value::from("E1001")
        ),
        "{p}"
    );

    // The visitor's one entry: granted, nobody goes through, the entry is given back ...
    devices
        .reader1
        .present(KIND_QR, "QR-TOKEN-1", 0)
        .expect("queued");
    let first = centre
        .wait_json("the visitor pass", EVENT, |e| e["reason"] == "visitor")
        .await;
    let p = passage_of(&centre, &first["id"]).await;
    assert_eq!(p["passed"], false, "{p}");
    // ... so the invitation opens again; this time the visitor goes through ...
    devices
        .reader1
        .present(KIND_QR, "QR-TOKEN-1", 0)
        .expect("queued");
    let second = centre
        .wait_json("the second visitor pass", EVENT, |e| {
            e["reason"] == "visitor" && e["id"] != first["id"]
        })
        .await;
    devices.relay.bump_counter(0, false);
    let p = passage_of(&centre, &second["id"]).await;
    assert_eq!(p["passed"], true, "{p}");
    // ... and the entry is used up.
    devices
        .reader1
        .present(KIND_QR, "QR-TOKEN-1", 0)
        .expect("queued");
    centre
        .wait_json("the third try refused", EVENT, |e| {
            e["reason"] == "entries_exhausted"
        })
        .await;

    // A visitor granted while the board then cannot be read, who goes through during the
    // outage: the release is not judged unused (nor the entry given back) on a board that
    // said nothing; once it answers, the counter shows the passage.
    devices
        .reader1
        .present(KIND_QR, "QR-TOKEN-2", 0)
        .expect("queued");
    let outage = centre
        .wait_json("the visitor pass before the outage", EVENT, |e| {
            e["reason"] == "visitor" && e["subject"] == "INV-2"
        })
        .await;
    devices.relay_srv.set_fault(hw_sim::Fault::NoReply);
    devices.relay.bump_counter(0, false);
    centre
        .wait_json("relay1 down", ALARM, |a| {
            a["alarm"] == "device_fault" && a["source"] == "relay1"
        })
        .await;
    // Well past the release and its slack (0.5 s + 2 s): proving an absence needs a wait.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    devices.relay_srv.set_fault(hw_sim::Fault::None);
    let p = passage_of(&centre, &outage["id"]).await;
    assert_eq!(p["passed"], true, "{p}");
    let facts: Vec<Value> = centre
        .on(EVENT)
        .iter()
        .map(Msg::json)
        .filter(|e| e["ref"] == outage["id"])
        .collect();
    assert_eq!(
        facts.len(),
        1,
        "one fact, not an unused one first: {facts:?}"
    );

    // Someone through lane 1's exit with no grant: door forced.
    devices.relay.bump_counter(1, true);
    let a = centre
        .wait_json("the door_forced alarm", ALARM, |a| {
            a["alarm"] == "door_forced"
        })
        .await;
    assert_eq!(a["source"], "lane1", "{a}");

    // Held open: each person is a hold_open pass, and no alarm.
    let ack = run_command(&centre, "hold_open", "n-hold-1", serde_json::json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    wait_all_coils(&devices.relay, true, DEADLINE, "the lanes held open").await;
    devices.relay.bump_counter(1, true);
    devices.relay.bump_counter(1, true);
    wait_for("two hold_open passes", DEADLINE, || {
        let n = centre
            .on(EVENT)
            .iter()
            .map(Msg::json)
            .filter(|e| e["reason"] == "hold_open" && e["passed"] == true)
            .count();
        (n == 2).then_some(())
    })
    .await;
    let forced = centre
        .on(ALARM)
        .iter()
        .map(Msg::json)
        .filter(|a| a["alarm"] == "door_forced")
        .count();
    assert_eq!(forced, 1, "passages while held open are no alarm");
}
