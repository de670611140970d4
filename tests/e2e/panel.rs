//! The guard panel (a Modbus IO module of the reference profile) against the real binary:
//! open-once entry, a stuck button opening once, lockdown, emergency release and reset, the
//! lamps following the mode, every press recorded (G8), and reset refused while the fire
//! contact is on (G9).

use std::net::SocketAddr;

use hw_sim::panel::{INPUT_EMERGENCY, INPUT_LOCKDOWN, INPUT_RESET};
use hw_sim::{SimPanel, SimServer};
use serde_json::Value;

use crate::harness::*;

/// Waits until the panel has answered `n` more input reads.
async fn reads(panel: &SimPanel, n: u64) {
    let target = panel.input_reads() + n;
    wait_for(&format!("{n} more reads of the panel"), DEADLINE, || {
        (panel.input_reads() >= target).then_some(())
    })
    .await;
}

/// Presses input `addr` until the panel has been read with it on, then lets go until it has
/// been read with it off: one press, whatever the poll timing.
async fn press(panel: &SimPanel, addr: u16) {
    assert!(panel.set_input(addr, true));
    reads(panel, 3).await;
    assert!(panel.set_input(addr, false));
    reads(panel, 3).await;
}

async fn lamps(panel: &SimPanel, want: [bool; 4], what: &str) {
    wait_for(what, DEADLINE, || (panel.lamps() == want).then_some(())).await;
}

struct Setup {
    _broker: Broker,
    centre: Centre,
    devices: Devices,
    panel: SimPanel,
    _panel_srv: SimServer,
    // Dropped before `dir`, so that a failing test can still print the daemon's log.
    _daemon: Daemon,
    dir: tempfile::TempDir,
}

/// The reference gate with a guard panel (`panel1`, read every 20 ms).
async fn setup() -> Setup {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    let devices = Devices::start().await;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    let panel_srv = SimServer::bind(any).await.expect("bind panel");
    let panel = panel_srv.add_panel(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_text(&dir.path().join("gated.db"), broker.port, &devices)
        + &format!(
            "[[panel]]\nname = \"panel1\"\naddress = \"{}\"\npoll_ms = 20\n",
            panel_srv.local_addr()
        );
    let daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    Setup {
        _broker: broker,
        centre,
        devices,
        panel,
        _panel_srv: panel_srv,
        dir,
        _daemon: daemon,
    }
}

#[tokio::test]
async fn the_guard_panel_opens_changes_modes_and_shows_them() {
    let s = setup().await;
    let (centre, devices, panel) = (&s.centre, &s.devices, &s.panel);
    lamps(
        panel,
        [true, false, false, false],
        "the normal lamp, online",
    )
    .await;

    // Open-once entry of lane 0, held down (stuck) for many reads: one release, recorded.
    assert!(panel.set_input(0, true));
    let e = centre
        .wait_json("the panel override", EVENT, |e| {
            e["reason"] == "override_panel"
        })
        .await;
    assert_eq!(
        (&e["lane"], &e["direction"], &e["override"]),
        (
            &Value::from(0),
            &Value::from("in"),
            &serde_json::json!({"source": "panel", "input": "open_entry", "by": "panel1"})
        ),
        "{e}"
    );
    reads(panel, 6).await;
    assert!(panel.set_input(0, false));
    reads(panel, 3).await;
    // A second press would be pulsed as soon as it is recorded: the board's pulses, not the
    // events still on their way to the centre, show that there was none.
    let entry_pulses = || {
        devices
            .relay
            .pulses()
            .iter()
            .filter(|p| p.lane == 0 && !p.exit)
            .count()
    };
    wait_for("the entry pulse", DEADLINE, || {
        (entry_pulses() > 0).then_some(())
    })
    .await;
    reads(panel, 3).await;
    assert_eq!(entry_pulses(), 1, "a stuck button opened more than once");

    // Lockdown is a switch: on, recorded with who made it and shown on the lamps; off, back
    // to normal.
    assert!(panel.set_input(INPUT_LOCKDOWN, true));
    centre
        .wait_json("the lockdown alarm", ALARM, |a| {
            a["alarm"] == "mode_changed" && a["source"] == "panel"
        })
        .await;
    lamps(panel, [false, true, false, false], "the lockdown lamp").await;
    reads(panel, 3).await;
    assert_eq!(
        panel.lamps(),
        [false, true, false, false],
        "lockdown while the switch is on"
    );
    assert!(panel.set_input(INPUT_LOCKDOWN, false));
    lamps(panel, [true, false, false, false], "the switch off: normal").await;

    // Emergency release: every lane held open, the emergency lamp; reset ends it.
    press(panel, INPUT_EMERGENCY).await;
    wait_all_coils(&devices.relay, true, DEADLINE, "every lane released").await;
    lamps(panel, [false, false, true, false], "the emergency lamp").await;
    press(panel, INPUT_RESET).await;
    lamps(panel, [true, false, false, false], "back to normal").await;
    wait_all_coils(&devices.relay, false, DEADLINE, "the lanes closed").await;

    // While the fire contact is on, reset is refused; after it is off, it works.
    devices.relay.set_fire(true);
    wait_all_coils(&devices.relay, true, DEADLINE, "the fire release").await;
    press(panel, INPUT_RESET).await;
    centre
        .wait_json("the refused reset", ALARM, |a| {
            a["alarm"] == "panel_refused"
        })
        .await;
    assert!(
        all_coils(&devices.relay, true),
        "a reset during a fire closed the lanes"
    );
    devices.relay.set_fire(false);
    centre
        .wait_json("the fire cleared", ALARM, |a| a["alarm"] == "fire_cleared")
        .await;
    press(panel, INPUT_RESET).await;
    lamps(panel, [true, false, false, false], "normal after the fire").await;
}

/// G9 from the panel: its emergency button releases every lane while another process holds
/// the database's write lock, well within the 5 s a write waits before it fails.
#[tokio::test]
async fn the_panel_emergency_button_releases_with_the_store_locked() {
    let s = setup().await;
    lamps(&s.panel, [true, false, false, false], "the panel is read").await;
    let lock = rusqlite::Connection::open(s.dir.path().join("gated.db")).expect("open");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    assert!(s.panel.set_input(INPUT_EMERGENCY, true));
    wait_all_coils(
        &s.devices.relay,
        true,
        std::time::Duration::from_secs(3),
        "every lane released with the store locked",
    )
    .await;
    lock.execute_batch("COMMIT").expect("release the lock");
    s.centre
        .wait_json("the release, recorded once the store is back", EVENT, |e| {
            e["reason"] == "emergency_release" && e["override"]["source"] == "panel"
        })
        .await;
}
