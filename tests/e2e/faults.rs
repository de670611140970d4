//! Device faults injected per device in hw-sim, against the real binary: each one is an alarm
//! and a status entry, the device recovers once the fault clears, and the other lanes go on.

use std::time::Duration;

use hw_sim::{Fault, KIND_CARD};
use serde_json::Value;
use tokio_modbus::ExceptionCode;

use crate::harness::*;

fn alarms(centre: &Centre, code: &str, source: &str) -> usize {
    centre
        .on(ALARM)
        .iter()
        .map(Msg::json)
        .filter(|a| a["alarm"] == code && a["source"] == source)
        .count()
}

/// Waits for the `n`th alarm `code` from `source`.
async fn nth_alarm(centre: &Centre, code: &str, source: &str, n: usize) {
    wait_for(&format!("{code} alarm #{n} of {source}"), DEADLINE, || {
        (alarms(centre, code, source) >= n).then_some(())
    })
    .await;
}

/// A card on reader2 (lane 1, exit) is granted and releases lane 1.
async fn lane1_passes(devices: &Devices, centre: &Centre) {
    let before = devices.relay.pulses().len();
    let events = centre.on(EVENT).len();
    let seq = devices
        .reader2
        .present(KIND_CARD, "0012345678", 0)
        .expect("queued");
    wait_for("reader2's card acked", DEADLINE, || {
        devices.reader2.acked().contains(&seq).then_some(())
    })
    .await;
    wait_for("lane 1 released", DEADLINE, || {
        devices.relay.pulses()[before..]
            .iter()
            .any(|p| p.lane == 1 && p.exit)
            .then_some(())
    })
    .await;
    // The pulse comes before the event reaches the centre: wait for it.
    let e = wait_for("lane 1's event", DEADLINE, || {
        centre.on(EVENT)[events..]
            .iter()
            .map(Msg::json)
            .find(|e| e["lane"] == 1)
    })
    .await;
    assert_eq!(e["decision"], "granted", "{e}");
}

#[tokio::test]
async fn each_reader_fault_is_alarmed_shown_and_recovered_and_spares_the_other_lane() {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    let devices = Devices::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_text(&dir.path().join("gated.db"), broker.port, &devices);
    let _daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    centre
        .wait_json("the ack of staff@1", ACK, |a| a["ref"] == "staff@1")
        .await;
    // Per device (its unit), and for Disconnect its whole socket (reader1's own).
    let faults = [
        (Fault::Disconnect, "disconnected"),
        (Fault::NoReply, "timeout"),
        (
            Fault::Exception(ExceptionCode::ServerDeviceFailure),
            "exception",
        ),
        (Fault::Garbage, "garbage"),
        (Fault::Latency(Duration::from_millis(600)), "timeout"),
        (Fault::Flap(Duration::from_millis(300)), "timeout"),
    ];
    for (n, (fault, state)) in faults.into_iter().enumerate() {
        let what = fault.to_string();
        let socket = fault == Fault::Disconnect;
        if socket {
            devices.reader1_srv.set_fault(fault);
        } else {
            devices.reader1_srv.set_unit_fault(1, fault);
        }
        centre
            .wait_json(
                &format!("reader1 `{state}` in status ({what})"),
                STATUS,
                |s| s["devices"]["reader1"] == state,
            )
            .await;
        nth_alarm(&centre, "device_fault", "reader1", n + 1).await;
        // The other lane is unaffected.
        lane1_passes(&devices, &centre).await;
        if socket {
            devices.reader1_srv.set_fault(Fault::None);
        } else {
            devices.reader1_srv.set_unit_fault(1, Fault::None);
        }
        nth_alarm(&centre, "device_recovered", "reader1", n + 1).await;
        centre
            .wait_json(&format!("reader1 ok after {what}"), STATUS, |s| {
                s["devices"]["reader1"] == "ok"
            })
            .await;
        assert_eq!(
            alarms(&centre, "device_fault", "reader1"),
            n + 1,
            "one alarm per episode ({what})"
        );
    }
    // Recovered for real: a card on reader1 passes.
    devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("queued");
    centre
        .wait_json("a pass on lane 0 again", EVENT, |e| {
            e["lane"] == 0 && e["decision"] == "granted"
        })
        .await;
}

#[tokio::test]
async fn a_stuck_relay_and_a_door_held_open_are_alarmed_and_recover() {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    let devices = Devices::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_text(&dir.path().join("gated.db"), broker.port, &devices).replace(
        "timeout_ms = 200\n[[lane]]",
        "timeout_ms = 200\nheld_open_s = 4\n[relay.registers]\nfeedback_base = 4000\ndoor_base = 6000\n[[lane]]",
    );
    assert!(config.contains("feedback_base"), "{config}");
    let _daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    centre
        .wait_json("the ack of staff@1", ACK, |a| a["ref"] == "staff@1")
        .await;
    centre
        .wait_json("relay1 ok", STATUS, |s| s["devices"]["relay1"] == "ok")
        .await;

    // Lane 0's entry relay welds on: the board is `stuck`, one alarm names the lane.
    assert!(devices.relay.set_stuck(0, false, Some(true)));
    centre
        .wait_json("relay1 stuck in status", STATUS, |s| {
            s["devices"]["relay1"] == "stuck"
        })
        .await;
    let a = centre
        .wait_json("the stuck alarm", ALARM, |a| {
            a["alarm"] == "device_fault" && a["source"] == "relay1"
        })
        .await;
    assert!(
        a["detail"]
            .as_str()
            .is_some_and(|d| d.contains("channel 0 entry relay stuck on")),
        "{a}"
    );
    // Lane 1 is still released by its reader.
    lane1_passes(&devices, &centre).await;
    assert!(devices.relay.set_stuck(0, false, None));
    nth_alarm(&centre, "device_recovered", "relay1", 1).await;

    // Stuck off: a granted pass releases nothing, and the feedback shows it.
    assert!(devices.relay.set_stuck(0, false, Some(false)));
    devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("queued");
    nth_alarm(&centre, "device_fault", "relay1", 2).await;
    let a: Value = centre
        .on(ALARM)
        .iter()
        .map(Msg::json)
        .rfind(|a| a["alarm"] == "device_fault" && a["source"] == "relay1")
        .unwrap_or_default();
    assert!(
        a["detail"]
            .as_str()
            .is_some_and(|d| d.contains("channel 0 entry relay stuck off")),
        "{a}"
    );
    assert!(devices.relay.set_stuck(0, false, None));
    nth_alarm(&centre, "device_recovered", "relay1", 2).await;

    // Lane 1's door stays open past held_open_s (4 s, longer than any release): one alarm;
    // closed and opened again: another.
    assert!(devices.relay.set_door(1, true));
    let a = centre
        .wait_json("the held_open alarm", ALARM, |a| a["alarm"] == "held_open")
        .await;
    assert!(
        a["detail"]
            .as_str()
            .is_some_and(|d| d.contains("channel 1")),
        "{a}"
    );
    assert!(devices.relay.set_door(1, false));
    let reads = devices.relay.input_reads();
    wait_for("the board read with the door closed", DEADLINE, || {
        (devices.relay.input_reads() > reads + 6).then_some(())
    })
    .await;
    assert_eq!(alarms(&centre, "held_open", "relay1"), 1);
    assert!(devices.relay.set_door(1, true));
    nth_alarm(&centre, "held_open", "relay1", 2).await;
}

#[tokio::test]
async fn a_dead_guard_panel_is_alarmed_and_shown_and_the_lanes_go_on() {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    let devices = Devices::start().await;
    let panel_srv = hw_sim::SimServer::bind("127.0.0.1:0".parse().expect("literal"))
        .await
        .expect("bind");
    let _panel = panel_srv.add_panel(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_text(&dir.path().join("gated.db"), broker.port, &devices)
        + &format!(
            "[[panel]]\nname = \"panel1\"\naddress = \"{}\"\ntimeout_ms = 200\n",
            panel_srv.local_addr()
        );
    let _daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    centre
        .wait_json("the ack of staff@1", ACK, |a| a["ref"] == "staff@1")
        .await;
    centre
        .wait_json("panel1 ok", STATUS, |s| s["devices"]["panel1"] == "ok")
        .await;
    panel_srv.set_unit_fault(1, Fault::Exception(ExceptionCode::ServerDeviceBusy));
    centre
        .wait_json("panel1 failing in status", STATUS, |s| {
            s["devices"]["panel1"] == "exception"
        })
        .await;
    nth_alarm(&centre, "device_fault", "panel1", 1).await;
    lane1_passes(&devices, &centre).await;
    panel_srv.set_unit_fault(1, Fault::None);
    nth_alarm(&centre, "device_recovered", "panel1", 1).await;
    centre
        .wait_json("panel1 ok again", STATUS, |s| {
            s["devices"]["panel1"] == "ok"
        })
        .await;
}

/// Alarms `code` from `source`, each counted once: one sent again after a SIGKILL (its
/// PUBACK not yet recorded) keeps its id.
fn distinct_alarms(centre: &Centre, code: &str, source: &str) -> usize {
    centre
        .on(ALARM)
        .iter()
        .map(Msg::json)
        .filter(|a| a["alarm"] == code && a["source"] == source)
        .map(|a| a["id"].to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

async fn nth_distinct_alarm(centre: &Centre, code: &str, source: &str, n: usize) {
    wait_for(&format!("{code} alarm #{n} of {source}"), DEADLINE, || {
        (distinct_alarms(centre, code, source) >= n).then_some(())
    })
    .await;
}

/// Issue 22, item 6: a fault open across a restart is one episode: a device still faulty
/// raises no second `device_fault`, one healed while gated was down raises the
/// `device_recovered` that closes it.
#[tokio::test]
async fn a_fault_open_across_a_restart_is_alarmed_once_and_closed() {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    let devices = Devices::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_text(&dir.path().join("gated.db"), broker.port, &devices);
    let mut daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    centre
        .wait_json("the ack of staff@1", ACK, |a| a["ref"] == "staff@1")
        .await;

    // Still faulty after the restart.
    devices.reader1_srv.set_unit_fault(1, Fault::NoReply);
    nth_distinct_alarm(&centre, "device_fault", "reader1", 1).await;
    let statuses = centre.on(STATUS).len();
    daemon.restart();
    wait_for("reader1 `timeout` after the restart", DEADLINE, || {
        centre.on(STATUS)[statuses..]
            .iter()
            .any(|s| s.json()["devices"]["reader1"] == "timeout")
            .then_some(())
    })
    .await;
    devices.reader1_srv.set_unit_fault(1, Fault::None);
    // Alarms leave in the order they were recorded: a second fault would be here by now.
    nth_distinct_alarm(&centre, "device_recovered", "reader1", 1).await;
    assert_eq!(
        distinct_alarms(&centre, "device_fault", "reader1"),
        1,
        "one episode"
    );

    // Healed while gated was down.
    devices.reader1_srv.set_unit_fault(1, Fault::NoReply);
    nth_distinct_alarm(&centre, "device_fault", "reader1", 2).await;
    daemon.kill9();
    devices.reader1_srv.set_unit_fault(1, Fault::None);
    let statuses = centre.on(STATUS).len();
    daemon.restart();
    nth_distinct_alarm(&centre, "device_recovered", "reader1", 2).await;
    wait_for("reader1 ok after the restart", DEADLINE, || {
        centre.on(STATUS)[statuses..]
            .iter()
            .any(|s| s.json()["devices"]["reader1"] == "ok")
            .then_some(())
    })
    .await;
    assert_eq!(distinct_alarms(&centre, "device_fault", "reader1"), 2);
    assert_eq!(distinct_alarms(&centre, "device_recovered", "reader1"), 2);
}

/// A store that cannot record a pass is told to the centre at once, past the outbox it holds:
/// one `store_error` alarm marked `unrecorded`, and `devices.store` in status. Nothing is
/// released meanwhile, and the gate decides again once the store can write.
#[tokio::test]
async fn a_store_that_cannot_record_a_pass_is_alarmed_directly() {
    let w = World::start().await;
    let lane0 = |w: &World| {
        w.devices
            .relay
            .pulses()
            .iter()
            .filter(|p| p.lane == 0 && !p.exit)
            .count()
    };
    // Another process holds the database's write lock: every write of gated fails (as on a
    // full or read-only disk, but one the test can give back).
    let lock = rusqlite::Connection::open(w.db()).expect("open the gate's database");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    let events = w.centre.on(EVENT).len();
    w.devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    let direct = w
        .centre
        .wait_json("the store alarm, sent directly", ALARM, |a| {
            a["alarm"] == "store_error" && a["unrecorded"] == true
        })
        .await;
    assert_eq!(direct["source"], "store", "{direct}");
    assert!(direct.get("seq").is_none(), "{direct}");
    assert!(
        direct["detail"]
            .as_str()
            .is_some_and(|d| d.contains("reader1") && d.contains("disk")),
        "{direct}"
    );
    w.centre
        .wait_json("status: the store in error", STATUS, |s| {
            s["devices"]["store"] == "error"
        })
        .await;
    assert_eq!(
        lane0(&w),
        0,
        "nothing released while the store cannot record"
    );
    lock.execute_batch("COMMIT").expect("release the lock");
    drop(lock);
    // The card that waited in the mailbox is decided once the store writes again (by now
    // older than `max_swipe_age`: recorded, not released); a fresh swipe is granted.
    wait_for("the waiting swipe recorded", DEADLINE, || {
        (w.centre.on(EVENT).len() > events).then_some(())
    })
    .await;
    let e = swipe(&w, "0012345678").await;
    assert_eq!(e["reason"], "staff", "{e}");
    wait_for("the fresh swipe released", DEADLINE, || {
        (lane0(&w) == 1).then_some(())
    })
    .await;
    w.centre
        .wait_json("status: the store ok again", STATUS, |s| {
            s["devices"]["store"] == "ok"
        })
        .await;
    assert_eq!(
        alarms(&w.centre, "store_error", "store"),
        1,
        "one alarm for one failure"
    );
}

/// Issue 22, item 6: an alarm sent past the outbox whose PUBACK never came (the connection
/// lost first) is sent again on the next connection, with the same id.
#[tokio::test]
async fn a_direct_alarm_not_acknowledged_is_sent_again_on_the_next_connection() {
    let w = World::through_proxy().await;
    let proxy = w.proxy.as_ref().expect("proxy");
    w.centre
        .wait_json("the gate online", STATUS, |s| s["online"] == true)
        .await;
    let lock = rusqlite::Connection::open(w.db()).expect("open the gate's database");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    // The broker gets what the gate sends; the gate hears nothing back, no PUBACK.
    proxy.blackhole_replies(true);
    w.devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    let direct = |w: &World| -> Vec<String> {
        w.centre
            .on(ALARM)
            .iter()
            .map(Msg::json)
            .filter(|a| a["alarm"] == "store_error" && a["unrecorded"] == true)
            .map(|a| a["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let id = wait_for("the direct alarm at the broker", DEADLINE, || {
        direct(&w).into_iter().next()
    })
    .await;
    // The connection is lost before its PUBACK reached the gate.
    proxy.cut();
    proxy.blackhole_replies(false);
    wait_for("the direct alarm sent again", DEADLINE, || {
        (direct(&w).iter().filter(|i| **i == id).count() >= 2).then_some(())
    })
    .await;
    lock.execute_batch("COMMIT").expect("release the lock");
}
