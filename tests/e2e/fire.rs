//! The fire alarm contact (G9) against the real binary: it releases every lane at once, with
//! an alarm and an event per lane; the release stays latched (a remote `normal` is refused
//! while the contact is on, and it is still in force after the contact goes off) until a guard
//! resets it. It works with the store and the broker down: the coils come on while the
//! database is locked by another process and the broker is stopped, and the alarm is recorded
//! and delivered once both are back.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn the_fire_contact_releases_every_lane_and_stays_latched() {
    let w = World::start().await;
    w.devices.relay.set_fire(true);
    wait_coils(&w, true, "every lane released by the fire contact").await;
    w.centre
        .wait_json("the fire alarm", ALARM, |a| a["alarm"] == "fire_alarm")
        .await;
    for lane in [0, 1] {
        w.centre
            .wait_json(&format!("lane {lane}'s release event"), EVENT, |e| {
                e["lane"] == lane
                    && e["reason"] == "emergency_release"
                    && e["override"]["source"] == "fire"
            })
            .await;
    }
    w.centre
        .wait_json("status in emergency release", STATUS, |s| {
            s["mode"] == "emergency_release"
        })
        .await;

    // A remote `normal` while the contact is on: refused; the lanes stay released.
    let ack = run_command(&w.centre, "normal", "normal-during-fire", json!({})).await;
    assert_eq!(
        (&ack["ok"], &ack["error"]),
        (&json!(false), &json!("unsupported")),
        "{ack}"
    );
    assert!(
        ack["detail"].as_str().unwrap_or("").contains("fire"),
        "{ack}"
    );

    // The contact goes off: an alarm, and the release stays latched.
    w.devices.relay.set_fire(false);
    w.centre
        .wait_json("the fire cleared alarm", ALARM, |a| {
            a["alarm"] == "fire_cleared"
        })
        .await;
    // Latched: after several more reads of the board it is still released.
    let target = w.devices.relay.input_reads() + 6;
    wait_for("more reads of the board", DEADLINE, || {
        (w.devices.relay.input_reads() >= target).then_some(())
    })
    .await;
    assert!(
        w.devices.relay.hold(0, false) && w.devices.relay.hold(1, true),
        "latched"
    );
    // A closed cabinet at start is no news: no tamper alarm of any kind.
    assert!(
        !w.centre.on(ALARM).iter().any(|a| a.json()["alarm"]
            .as_str()
            .is_some_and(|c| c.starts_with("tamper"))),
        "a tamper alarm without a tamper"
    );

    // A guard resets it.
    let ack = run_command(&w.centre, "normal", "normal-after-fire", json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    wait_coils(&w, false, "the lanes closed again").await;
}

#[tokio::test]
async fn the_fire_contact_releases_with_the_store_and_the_broker_down() {
    let mut w = World::start().await;
    w.broker.stop();
    // Another process holds the database's write lock: every write of gated waits and fails.
    let lock = rusqlite::Connection::open(w.db()).expect("open the gate's database");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");

    w.devices.relay.set_fire(true);
    // Well within the 5 s a write waits for a lock before it fails: the release must not wait
    // for the store at all, not even for it to fail.
    wait_all_coils(
        &w.devices.relay,
        true,
        std::time::Duration::from_secs(3),
        "every lane released with the store and broker down",
    )
    .await;

    // Both come back: the release is recorded and reaches the centre.
    lock.execute_batch("COMMIT").expect("release the lock");
    drop(lock);
    w.broker.restart().await;
    w.centre
        .wait_json("the fire alarm, once recorded", ALARM, |a| {
            a["alarm"] == "fire_alarm"
        })
        .await;
    assert!(w.devices.relay.hold(0, false), "still released");
}

#[tokio::test]
async fn the_fire_release_reaches_the_centre_directly_while_the_store_cannot_write() {
    let w = World::start().await;
    // Another process holds the database's write lock: every write of gated fails (a
    // read-only file system cannot be made under a running gate, which holds its files open
    // to write; a lock fails its writes the same way and can be taken back).
    let lock = rusqlite::Connection::open(w.db()).expect("open the gate's database");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");

    let fire = std::time::Instant::now();
    w.devices.relay.set_fire(true);
    wait_all_coils(
        &w.devices.relay,
        true,
        std::time::Duration::from_secs(3),
        "every lane released with the store down",
    )
    .await;
    // The centre hears of it meanwhile, marked as not (yet) recorded.
    let direct = w
        .centre
        .wait_json("the fire alarm, sent directly", ALARM, |a| {
            a["alarm"] == "fire_alarm" && a["unrecorded"] == true
        })
        .await;
    // Within about a second, not after the 5 s a write waits for the lock before it fails:
    // neither the release's record nor the uplink may hold it up.
    assert!(
        fire.elapsed() < std::time::Duration::from_secs(3),
        "the direct alarm took {:?}",
        fire.elapsed()
    );
    assert!(
        direct.get("seq").is_none(),
        "an unrecorded alarm has no seq: {direct}"
    );
    assert_eq!(direct["source"], "relay1", "{direct}");

    // The store can write again: the release is recorded, and sent through the outbox.
    lock.execute_batch("COMMIT").expect("release the lock");
    let recorded = w
        .centre
        .wait_json("the fire alarm, recorded", ALARM, |a| {
            a["alarm"] == "fire_alarm" && a["seq"].is_u64()
        })
        .await;
    assert!(recorded.get("unrecorded").is_none(), "{recorded}");
    for lane in [0, 1] {
        w.centre
            .wait_json(&format!("lane {lane}'s release event"), EVENT, |e| {
                e["lane"] == lane && e["override"]["source"] == "fire"
            })
            .await;
    }
    let mode: String = lock
        .query_row("SELECT value FROM state WHERE key = 'mode'", [], |r| {
            r.get(0)
        })
        .expect("the mode is recorded");
    assert_eq!(
        mode, "\"emergency_release\"",
        "the mode as the store keeps it (JSON)"
    );
    assert!(w.devices.relay.hold(0, false), "still released");
}

#[tokio::test]
async fn a_restart_with_the_fire_contact_on_releases_again_though_nothing_was_recorded() {
    let mut w = World::start().await;
    let lock = rusqlite::Connection::open(w.db()).expect("open the gate's database");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    w.devices.relay.set_fire(true);
    wait_all_coils(
        &w.devices.relay,
        true,
        std::time::Duration::from_secs(3),
        "every lane released",
    )
    .await;
    // Killed before anything could be recorded; the store is back for the restart.
    w.daemon.kill9();
    lock.execute_batch("COMMIT").expect("release the lock");
    drop(lock);
    w.daemon.restart();
    // The contact is read at start: the release is in force again, and recorded this time
    // (the gate killed before recorded nothing: every write of it failed).
    w.centre
        .wait_json("the fire alarm, recorded", ALARM, |a| {
            a["alarm"] == "fire_alarm" && a["seq"].is_u64()
        })
        .await;
    wait_coils(&w, true, "every lane released after the restart").await;
    let db = rusqlite::Connection::open(w.db()).expect("open the gate's database");
    let mode: String = db
        .query_row("SELECT value FROM state WHERE key = 'mode'", [], |r| {
            r.get(0)
        })
        .expect("the mode is recorded");
    assert_eq!(mode, "\"emergency_release\"");
}
