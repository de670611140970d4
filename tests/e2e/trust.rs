//! Signed pushes and remote commands against the real binary and broker:
//! - every refusal (bad signature, unknown key, unsigned, stale, replayed nonce, expired, other
//!   site or gate, oversize, garbage, wrong shape) is acked with its reason, the lists in force
//!   stay in force, the mode stays, and the daemon keeps running;
//! - commands open a lane (logged `override_remote`), change the mode (logged `mode_changed`,
//!   persisted across a restart, coils follow), and `resync` republishes the status.

use gated_contract::envelope::AdminKey;
use serde_json::{Value, json};

use crate::harness::*;

const CMD: &str = "acs/hq/east-1/cmd";

/// Publishes `payload` as it is on `topic` and returns the next ack of `reference`.
async fn ack_of(w: &World, topic: &str, payload: Vec<u8>, reference: &str) -> Value {
    let before = w.centre.on(ACK).len();
    w.centre.publish_raw(topic, payload, false).await;
    wait_for(&format!("an ack of {reference}"), DEADLINE, || {
        w.centre
            .on(ACK)
            .iter()
            .skip(before)
            .map(Msg::json)
            .find(|a| a["ref"] == reference)
    })
    .await
}

fn assert_refused(ack: &Value, code: &str, reference: &str, what: &str) {
    assert_eq!(ack["ok"], false, "{what}: {ack}");
    assert_eq!(ack["error"], code, "{what}: {ack}");
    assert_eq!(ack["ref"], reference, "{what}: {ack}");
    assert!(
        !ack["detail"].as_str().unwrap_or("").is_empty(),
        "{what}: the ack says why: {ack}"
    );
}

/// Restarts the daemon and waits until its list connection is back (the retained staff@1 is
/// acked again): commands are only delivered to a connected gate.
async fn restart(w: &mut World) {
    let before = w.centre.on(ACK).len();
    w.daemon.restart();
    wait_for(
        "the list connection back after the restart",
        DEADLINE,
        || {
            w.centre
                .on(ACK)
                .iter()
                .skip(before)
                .map(Msg::json)
                .find(|a| a["ref"] == "staff@1")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_and_replayed_lists_are_refused_and_change_nothing() {
    let mut w = World::start().await;
    let forger = AdminKey::generate("ops-test").expect("key"); // same id, another secret
    let stranger = AdminKey::generate("stranger").expect("key");
    let newer = staff_snapshot("hq", 2, &[("E9", "0066600001")]);
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("unsigned", newer.clone().into_bytes(), "unsigned", "staff"),
        (
            "signed with a forged key of a trusted id",
            forger.seal(newer.as_bytes()),
            "bad_signature",
            "staff",
        ),
        (
            "signed by an untrusted key",
            stranger.seal(newer.as_bytes()),
            "unknown_key",
            "staff",
        ),
        (
            "a valid signature over another body",
            {
                let mut env: Value = serde_json::from_slice(&signed(&newer)).expect("json");
                let other = signed(staff_snapshot("hq", 3, &[("E9", "0066600001")]));
                let other: Value = serde_json::from_slice(&other).expect("json");
                env["body"] = other["body"].clone();
                serde_json::to_vec(&env).expect("json")
            },
            "bad_signature",
            "staff",
        ),
        (
            "garbage bytes",
            vec![0xff, 0x00, 0x13, 0x37],
            "malformed",
            "staff",
        ),
        (
            "signed JSON of the wrong shape",
            signed(r#"{"list":"staff","site":"hq","version":2}"#),
            "malformed",
            "staff",
        ),
    ];
    for (what, payload, code, reference) in cases {
        let ack = ack_of(&w, STAFF_TOPIC, payload, reference).await;
        assert_refused(&ack, code, reference, what);
    }
    assert_eq!(swipe(&w, "0012345678").await["reason"], "staff");
    assert_eq!(
        swipe(&w, "0066600001").await["reason"],
        "unknown_credential"
    );

    // Rollback: version 3 comes into force; the signed version 2 replayed later is stale, even
    // after a restart (the version in force is persisted).
    let v2 = signed(staff_snapshot("hq", 2, &[("E9", "0066600001")]));
    let v3 = signed(staff_snapshot("hq", 3, &[("E1001", "0012345678")]));
    let ack = ack_of(&w, STAFF_TOPIC, v3, "staff@3").await;
    assert_eq!(
        (ack["ref"].as_str(), ack["ok"].as_bool()),
        (Some("staff@3"), Some(true))
    );
    // The broker still holds staff@1 retained: after the restart it comes again and is stale.
    let before = w.centre.on(ACK).len();
    w.daemon.restart();
    let ack = wait_for("the retained staff@1 after the restart", DEADLINE, || {
        w.centre
            .on(ACK)
            .iter()
            .skip(before)
            .map(Msg::json)
            .find(|a| a["ref"] == "staff@1")
    })
    .await;
    assert_refused(&ack, "stale", "staff@1", "the retained older snapshot");
    let ack = ack_of(&w, STAFF_TOPIC, v2, "staff@2").await;
    assert_refused(&ack, "stale", "staff@2", "a replayed older snapshot");
    assert_eq!(
        swipe(&w, "0066600001").await["reason"],
        "unknown_credential",
        "the replayed list did not come into force"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_refusal_is_acked_and_changes_nothing() {
    let mut w = World::start().await;
    let stranger = AdminKey::generate("stranger").expect("key");
    let forger = AdminKey::generate("ops-test").expect("key");

    // A command goes through once; the same signed message again is a replay.
    let lockdown = signed(command_body("lockdown", "nonce-once-0001", json!({})));
    let ack = ack_of(&w, CMD, lockdown.clone(), "nonce-once-0001").await;
    assert_eq!(ack["ok"], true, "{ack}");
    let ack = ack_of(&w, CMD, lockdown.clone(), "nonce-once-0001").await;
    assert_refused(&ack, "replayed", "nonce-once-0001", "a replayed command");
    let normal = signed(command_body("normal", "nonce-once-0002", json!({})));
    assert_eq!(ack_of(&w, CMD, normal, "nonce-once-0002").await["ok"], true);
    // Nonces are remembered across a restart.
    restart(&mut w).await;
    let ack = ack_of(&w, CMD, lockdown, "nonce-once-0001").await;
    assert_refused(
        &ack,
        "replayed",
        "nonce-once-0001",
        "a replay after a restart",
    );

    let past = chrono::Utc::now() - chrono::Duration::seconds(120);
    let oversize = command_body(
        "resync",
        "nonce-big-00001",
        json!({"pad": "x".repeat(300 * 1024)}),
    );
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "an expired command",
            signed(command_body(
                "lockdown",
                "nonce-expired-1",
                json!({"issued_at": (past - chrono::Duration::seconds(60)).to_rfc3339(),
                       "expires_at": past.to_rfc3339()}),
            )),
            "expired",
            "nonce-expired-1",
        ),
        (
            "a command issued in the future",
            signed(command_body(
                "lockdown",
                "nonce-future-01",
                json!({"issued_at": (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339(),
                       "expires_at": (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339()}),
            )),
            "not_yet_valid",
            "nonce-future-01",
        ),
        (
            "a command for another gate",
            signed(command_body(
                "lockdown",
                "nonce-gate-0001",
                json!({"gate": "west-2"}),
            )),
            "wrong_gate",
            "nonce-gate-0001",
        ),
        (
            "a command for another site",
            signed(command_body(
                "lockdown",
                "nonce-site-0001",
                json!({"site": "elsewhere"}),
            )),
            "wrong_site",
            "nonce-site-0001",
        ),
        (
            "an unsigned command",
            command_body("lockdown", "nonce-unsig-001", json!({})),
            "unsigned",
            "cmd",
        ),
        (
            "a command signed by an untrusted key",
            stranger.seal(&command_body("lockdown", "nonce-strange1", json!({}))),
            "unknown_key",
            "cmd",
        ),
        (
            "a command with a forged signature",
            forger.seal(&command_body("lockdown", "nonce-forged01", json!({}))),
            "bad_signature",
            "cmd",
        ),
        ("an oversize command", signed(oversize), "too_large", "cmd"),
        (
            "garbage bytes",
            vec![0xde, 0xad, 0xbe, 0xef],
            "malformed",
            "cmd",
        ),
        (
            "signed JSON of the wrong shape",
            signed(r#"{"site":"hq","gate":"east-1","cmd":"lockdown"}"#),
            "malformed",
            "cmd",
        ),
        (
            "an unknown command",
            signed(command_body("self_destruct", "nonce-unknown1", json!({}))),
            "malformed",
            "cmd",
        ),
        (
            "open on a lane the gate does not have",
            signed(command_body("open", "nonce-lane-0009", json!({"lane": 9}))),
            "unsupported",
            "nonce-lane-0009",
        ),
    ];
    for (what, payload, code, reference) in cases {
        let ack = ack_of(&w, CMD, payload, reference).await;
        assert_refused(&ack, code, reference, what);
    }
    // Nothing changed: the mode is normal, the staff card opens, nothing was pulsed but that.
    assert_eq!(swipe(&w, "0012345678").await["reason"], "staff");
    assert_eq!(
        w.devices.relay.pulses().len(),
        1,
        "only the staff pass opened"
    );
    // The status published after a resync shows the mode in force now.
    let before = w.centre.on(STATUS).len();
    let resync = signed(command_body("resync", "nonce-sync-after", json!({})));
    assert_eq!(
        ack_of(&w, CMD, resync, "nonce-sync-after").await["ok"],
        true
    );
    let status = wait_for("the status after the resync", DEADLINE, || {
        w.centre.on(STATUS).get(before).map(Msg::json)
    })
    .await;
    assert_eq!(status["mode"], "normal", "{status}");
    assert!(!w.daemon.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_open_lanes_and_change_the_mode_with_a_record_of_who() {
    let mut w = World::start().await;

    // open: one pass, recorded before the pulse, logged as override_remote by the key.
    let ack = ack_of(
        &w,
        CMD,
        signed(command_body(
            "open",
            "nonce-open-0001",
            json!({"lane": 1, "direction": "out"}),
        )),
        "nonce-open-0001",
    )
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let e = w
        .centre
        .wait_json("the override event", EVENT, |e| {
            e["reason"] == "override_remote"
        })
        .await;
    assert_eq!(e["decision"], "granted");
    assert_eq!(
        (e["lane"].as_u64(), e["direction"].as_str()),
        (Some(1), Some("out"))
    );
    assert_eq!(e["override"]["source"], "remote");
    assert_eq!(e["override"]["by"], "ops-test");
    assert!(e["credential"].is_null());
    let pulse = wait_for("the override's pulse", DEADLINE, || {
        w.devices.relay.pulses().first().cloned()
    })
    .await;
    assert_eq!((pulse.lane, pulse.exit, pulse.ms), (1, true, 2500));

    // hold_open: coils on for every lane, cards are logged and granted `hold_open`.
    let hold = signed(command_body("hold_open", "nonce-hold-0001", json!({})));
    assert_eq!(ack_of(&w, CMD, hold, "nonce-hold-0001").await["ok"], true);
    let alarm = w
        .centre
        .wait_json("the mode change record", ALARM, |a| {
            a["alarm"] == "mode_changed"
        })
        .await;
    let detail = alarm["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("normal -> hold_open") && detail.contains("ops-test"),
        "{alarm}"
    );
    wait_coils(&w, true, "hold coils on").await;
    w.centre
        .wait_json("status in hold_open", STATUS, |s| s["mode"] == "hold_open")
        .await;
    assert_eq!(swipe(&w, "0099999999").await["reason"], "hold_open");

    // lockdown: coils off, even staff is refused; it survives a restart.
    let lock = signed(command_body("lockdown", "nonce-lock-0001", json!({})));
    assert_eq!(ack_of(&w, CMD, lock, "nonce-lock-0001").await["ok"], true);
    wait_coils(&w, false, "hold coils off").await;
    assert_eq!(swipe(&w, "0012345678").await["reason"], "lockdown");
    restart(&mut w).await;
    assert_eq!(swipe(&w, "0012345678").await["reason"], "lockdown");

    // emergency_release: every lane held open; normal ends it.
    let er = signed(command_body(
        "emergency_release",
        "nonce-emer-0001",
        json!({}),
    ));
    assert_eq!(ack_of(&w, CMD, er, "nonce-emer-0001").await["ok"], true);
    wait_coils(&w, true, "emergency coils on").await;
    assert_eq!(swipe(&w, "0099999999").await["reason"], "emergency_release");
    let normal = signed(command_body("normal", "nonce-norm-0001", json!({})));
    assert_eq!(ack_of(&w, CMD, normal, "nonce-norm-0001").await["ok"], true);
    wait_coils(&w, false, "coils off again").await;
    assert_eq!(swipe(&w, "0012345678").await["reason"], "staff");

    // resync: the status is published again.
    let before = w.centre.on(STATUS).len();
    let resync = signed(command_body("resync", "nonce-sync-0001", json!({})));
    assert_eq!(ack_of(&w, CMD, resync, "nonce-sync-0001").await["ok"], true);
    wait_for("the status again", DEADLINE, || {
        (w.centre.on(STATUS).len() > before).then_some(())
    })
    .await;
    let changes: Vec<String> = w
        .centre
        .on(ALARM)
        .iter()
        .map(Msg::json)
        .filter(|a| a["alarm"] == "mode_changed")
        .map(|a| a["detail"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(changes.len(), 4, "one record per mode change: {changes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_board_that_reboots_while_held_open_is_held_open_again() {
    let w = World::start().await;
    let hold = signed(command_body("hold_open", "nonce-hold-boot1", json!({})));
    assert_eq!(ack_of(&w, CMD, hold, "nonce-hold-boot1").await["ok"], true);
    wait_coils(&w, true, "hold coils on").await;
    // The board loses power: coils off, connections gone. The daemon notices the broken
    // connection (heartbeat or next pulse) and writes the coils again.
    w.devices.relay.power_cycle();
    wait_coils(&w, true, "hold coils on again after the reboot").await;
    // The same after a reboot that a pulse sees first.
    w.devices.relay.power_cycle();
    assert_eq!(swipe(&w, "0012345678").await["reason"], "hold_open");
    wait_coils(&w, true, "hold coils on again after the pulse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_does_not_wait_behind_a_list_being_applied() {
    let w = World::start().await;
    let cards: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("E{i}"), format!("8{i:09}")))
        .collect();
    let refs: Vec<(&str, &str)> = cards
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let before = w.centre.on(ACK).len();
    // Another process holds the database's write lock, so the first list cannot get far:
    // without it, three small lists could be applied before the command even arrived.
    let lock = rusqlite::Connection::open(w.db()).expect("open the gate's database");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    // Three lists first (one being applied, two waiting), then the command, all on the same
    // connection: the lists go to the list worker, and the command is carried out while the
    // worker is still busy with them. Were commands handled in line, their ack would come last.
    for version in [2, 3, 4] {
        w.centre
            .publish(STAFF_TOPIC, staff_snapshot("hq", version, &refs), true)
            .await;
    }
    w.centre
        .publish_raw(
            CMD,
            signed(command_body("lockdown", "nonce-fast-0001", json!({}))),
            false,
        )
        .await;
    // The command is being carried out (it waits for the store, behind the first list's first
    // step): let the store go. Well within the 5 s a write waits for a lock.
    wait_for("the gate to take up the command", DEADLINE, || {
        w.daemon.log().contains("remote command").then_some(())
    })
    .await;
    lock.execute_batch("COMMIT").expect("release the lock");
    drop(lock);
    let acks = wait_for("all four acks", DEADLINE, || {
        let acks: Vec<Value> = w
            .centre
            .on(ACK)
            .iter()
            .skip(before)
            .map(Msg::json)
            .collect();
        (acks.len() >= 4).then_some(acks)
    })
    .await;
    assert!(acks.iter().all(|a| a["ok"] == true), "{acks:?}");
    let at = |r: &str| acks.iter().position(|a| a["ref"] == r);
    let (cmd, last_list) = (at("nonce-fast-0001"), at("staff@4"));
    assert!(
        cmd.is_some() && last_list.is_some() && cmd < last_list,
        "the command's ack comes before the last list's: {acks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_junk_lists_does_not_stall_the_list_connection() {
    let w = World::start().await;
    // Anyone who can publish on a list topic: a thousand refusals in a row, more acks than
    // the client queue (inflight + 64) holds.
    for i in 0..1000 {
        w.centre
            .publish_raw("acs/hq/lists/staff/delta", format!("junk {i}"), false)
            .await;
    }
    let lockdown = signed(command_body("lockdown", "nonce-after-flood", json!({})));
    w.centre.publish_raw(CMD, lockdown, false).await;
    let ack = wait_for("the lockdown's ack after the flood", DEADLINE, || {
        w.centre
            .on(ACK)
            .into_iter()
            .map(|m| m.json())
            .find(|a| a["ref"] == "nonce-after-flood")
    })
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    wait_for("every junk list acked", DEADLINE, || {
        let refused = w
            .centre
            .on(ACK)
            .iter()
            .filter(|m| m.json()["error"] == "malformed")
            .count();
        (refused >= 1000).then_some(())
    })
    .await;
}
