//! Readers on an RS-485 bus (Modbus RTU over a pseudo-terminal served by hw-sim), against the
//! real binary: both readers of the reference gate share one bus under units 2 and 3. A pass
//! on one is decided while the other is dead (no reply); the dead one shows in status and
//! raises one `device_fault`; once it answers again it recovers, and its queued card passes.

use hw_sim::{Fault, KIND_CARD, ReaderRegisters, SimServer};
use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn readers_share_a_bus_and_a_dead_unit_spares_the_other() {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    let devices = Devices::start().await;
    let bus = SimServer::serial().await.expect("a pseudo-terminal");
    let path = bus.serial_path().expect("serial").display().to_string();
    let entry = bus.add_reader(2, ReaderRegisters::default());
    let exit = bus.add_reader(3, ReaderRegisters::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_text(&dir.path().join("gated.db"), broker.port, &devices);
    let serial =
        |unit: u8| format!("serial = {{ path = \"{path}\", baud = 19200 }}\nunit = {unit}");
    let config = config
        .replace(
            &format!("address = \"{}\"", devices.reader1_srv.local_addr()),
            &serial(2),
        )
        .replace(
            &format!("address = \"{}\"", devices.reader2_srv.local_addr()),
            &serial(3),
        );
    assert_eq!(config.matches("serial = ").count(), 2, "{config}");
    let daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    centre
        .wait_json("the ack of staff@1", ACK, |a| a["ref"] == "staff@1")
        .await;

    // Both units answer over the bus.
    let seq = entry.present(KIND_CARD, "0012345678", 0).expect("queued");
    let e = centre
        .wait_json("the entry pass", EVENT, |e| e["lane"] == 0)
        .await;
    assert_eq!(
        (&e["decision"], &e["reason"]),
        (&Value::from("granted"), &Value::from("staff")),
        "{e}"
    );
    wait_for("the entry ack over the bus", DEADLINE, || {
        entry.acked().contains(&seq).then_some(())
    })
    .await;
    exit.present(KIND_CARD, "0012345678", 0).expect("queued");
    centre
        .wait_json("the exit pass", EVENT, |e| e["lane"] == 1)
        .await;

    // Unit 3 dies: status shows it, one alarm is raised, and unit 2 still passes people.
    bus.set_unit_fault(3, Fault::NoReply);
    centre
        .wait_json("reader2 timing out in status", STATUS, |s| {
            s["devices"]["reader2"] == "timeout"
        })
        .await;
    centre
        .wait_json("the device_fault alarm of reader2", ALARM, |a| {
            a["alarm"] == "device_fault" && a["source"] == "reader2"
        })
        .await;
    let before = centre.on(EVENT).len();
    for _ in 0..3 {
        let seq = entry.present(KIND_CARD, "0012345678", 0).expect("queued");
        wait_for("an entry ack while unit 3 is dead", DEADLINE, || {
            entry.acked().contains(&seq).then_some(())
        })
        .await;
    }
    wait_for("three more entry events", DEADLINE, || {
        (centre.on(EVENT).len() >= before + 3).then_some(())
    })
    .await;

    // A card shown on the dead unit waits in the device; once it answers, it passes.
    let seq = exit.present(KIND_CARD, "0012345678", 0).expect("queued");
    bus.set_unit_fault(3, Fault::None);
    wait_for("the queued exit card acked", DEADLINE, || {
        exit.acked().contains(&seq).then_some(())
    })
    .await;
    centre
        .wait_json("the device_recovered alarm of reader2", ALARM, |a| {
            a["alarm"] == "device_recovered" && a["source"] == "reader2"
        })
        .await;
    centre
        .wait_json("reader2 ok in status", STATUS, |s| {
            s["devices"]["reader2"] == "ok"
        })
        .await;
    let faults = centre
        .on(ALARM)
        .iter()
        .map(Msg::json)
        .filter(|a| a["alarm"] == "device_fault" && a["source"] == "reader2")
        .count();
    assert_eq!(faults, 1, "one alarm per episode");
    assert!(
        !daemon.log().contains("cannot open the serial port"),
        "the bus opened at once"
    );
}
