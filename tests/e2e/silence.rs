//! Hostile input that the gate echoes back: a client with no key publishes messages whose
//! fields are a megabyte long. Every refusal is acked with a bounded detail, the list and
//! command connection stays up (the retained lists are not read again), and a lockdown sent
//! right after still takes effect.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::harness::*;

const MIB: usize = 1024 * 1024;
/// The most an ack may carry, whatever it echoes: the gate bounds its `detail`.
const ACK_BOUND: usize = 2048;

/// Publishes `payload` as it is on the staff topic and returns the next ack of `reference`.
async fn next_ack(w: &World, payload: Vec<u8>, reference: &str) -> Value {
    let before = w.centre.on(ACK).len();
    w.centre.publish_raw(STAFF_TOPIC, payload, false).await;
    let msg = wait_for(&format!("an ack of {reference}"), DEADLINE, || {
        w.centre
            .on(ACK)
            .into_iter()
            .skip(before)
            .find(|m| m.json()["ref"] == reference)
    })
    .await;
    assert!(
        msg.payload.len() <= ACK_BOUND,
        "the ack is bounded: {} bytes",
        msg.payload.len()
    );
    msg.json()
}

fn staff1_acks(w: &World) -> usize {
    w.centre
        .on(ACK)
        .iter()
        .filter(|m| m.json()["ref"] == "staff@1")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_fields_from_a_keyless_client_do_not_silence_the_gate() {
    // A limit above the hostile messages, as the default (80 MiB) is: they are read and
    // refused, not cut off by the size check.
    let w = World::start_with_config(|c| {
        c.replace("max_message_bytes = 262144", "max_message_bytes = 4194304")
    })
    .await;
    let reconnects_before = staff1_acks(&w);
    let zero_sig = B64.encode([0u8; 64]);
    let big = |c: char| c.to_string().repeat(MIB);

    let keyless = json!({"v": 1, "key": big('K'), "sig": zero_sig, "body": "e30="});
    let ack = next_ack(&w, keyless.to_string().into_bytes(), "staff").await;
    assert_eq!(ack["error"], "unknown_key", "{ack}");
    assert!(
        !ack["detail"].as_str().unwrap_or("").contains("ops-test"),
        "an unknown_key ack does not list the keys the gate trusts: {ack}"
    );

    let mut field = serde_json::Map::new();
    field.insert("v".into(), 1.into());
    field.insert("key".into(), "ops-test".into());
    field.insert("sig".into(), zero_sig.clone().into());
    field.insert("body".into(), "e30=".into());
    field.insert(big('F'), 1.into());
    let ack = next_ack(&w, Value::Object(field).to_string().into_bytes(), "staff").await;
    assert_eq!(ack["error"], "malformed", "{ack}");

    let version = json!({"v": big('9'), "key": "ops-test", "sig": zero_sig, "body": "e30="});
    let ack = next_ack(&w, version.to_string().into_bytes(), "staff").await;
    assert_eq!(ack["error"], "malformed", "{ack}");

    let long_card = big('7');
    let body = staff_snapshot("hq", 2, &[("E2002", long_card.as_str())]);
    let ack = next_ack(&w, signed(body), "staff").await;
    assert_eq!(ack["error"], "malformed", "{ack}");

    let lockdown = signed(command_body("lockdown", "nonce-after-megabytes", json!({})));
    w.centre
        .publish_raw("acs/hq/east-1/cmd", lockdown, false)
        .await;
    let ack = w
        .centre
        .wait_json("the lockdown's ack", ACK, |a| {
            a["ref"] == "nonce-after-megabytes"
        })
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    w.centre
        .wait_json("status in lockdown", STATUS, |s| s["mode"] == "lockdown")
        .await;
    assert_eq!(
        staff1_acks(&w),
        reconnects_before,
        "the list connection never dropped (a reconnect reads the retained staff@1 again)"
    );
    let log = w.daemon.log();
    assert!(
        log.len() < 256 * 1024,
        "the gate's log is bounded too: {} bytes",
        log.len()
    );
}
