//! Free exit on a request button, against the real binary: lane 1's exit (`free_out =
//! "button"`) releases on its button with no credential, and the event records it
//! (`free_exit`, credential null). A button stuck on releases once; let go and pressed again,
//! it releases again. In lockdown the button is refused and nothing opens.

use serde_json::Value;

use crate::harness::*;

const LANE1: &str = "[[lane]]\nid = 1\nrelay = \"relay1\"\nrelease_ms = 2500\n";

fn free_exits(centre: &Centre) -> Vec<Value> {
    centre
        .on(EVENT)
        .iter()
        .map(Msg::json)
        .filter(|e| e["reason"] == "free_exit")
        .collect()
}

/// Waits until the board has answered `n` more discrete-input reads.
async fn reads(relay: &hw_sim::SimRelay, n: u64) {
    let target = relay.input_reads() + n;
    wait_for(&format!("{n} more reads of the board"), DEADLINE, || {
        (relay.input_reads() >= target).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_exit_button_releases_once_per_press_and_is_recorded() {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    let devices = Devices::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_text(&dir.path().join("gated.db"), broker.port, &devices);
    assert!(config.contains(LANE1), "the reference config changed");
    let config = config.replace(LANE1, &format!("{LANE1}free_out = \"button\"\n"));
    let _daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    centre
        .wait_json("the ack of staff@1", ACK, |a| a["ref"] == "staff@1")
        .await;

    // Pressed and held: one release, recorded.
    assert!(devices.relay.set_button(1, true, true));
    let e = centre
        .wait_json("the free exit event", EVENT, |e| e["reason"] == "free_exit")
        .await;
    assert_eq!(
        (
            &e["decision"],
            &e["lane"],
            &e["direction"],
            &e["credential"]
        ),
        (
            &Value::from("granted"),
            &Value::from(1),
            &Value::from("out"),
            &Value::Null
        ),
        "{e}"
    );
    wait_for("the exit pulse of lane 1", DEADLINE, || {
        devices
            .relay
            .pulses()
            .into_iter()
            .find(|p| p.lane == 1 && p.exit)
    })
    .await;
    // Still held while the gate reads the board five more times: still one release.
    reads(&devices.relay, 5).await;
    assert_eq!(free_exits(&centre).len(), 1, "{:?}", free_exits(&centre));
    assert_eq!(
        devices
            .relay
            .pulses()
            .iter()
            .filter(|p| p.lane == 1)
            .count(),
        1
    );

    // Let go, press again: a second release.
    assert!(devices.relay.set_button(1, true, false));
    reads(&devices.relay, 3).await;
    assert!(devices.relay.set_button(1, true, true));
    wait_for("a second free exit", DEADLINE, || {
        (free_exits(&centre).len() == 2).then_some(())
    })
    .await;
    assert!(devices.relay.set_button(1, true, false));

    // In lockdown the button is refused: recorded, nothing opens.
    let ack = run_command(
        &centre,
        "lockdown",
        "lockdown-free-exit",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    reads(&devices.relay, 3).await;
    assert!(devices.relay.set_button(1, true, true));
    let e = centre
        .wait_json("the refused press", EVENT, |e| e["reason"] == "lockdown")
        .await;
    assert_eq!(
        (&e["lane"], &e["credential"]),
        (&Value::from(1), &Value::Null)
    );
    // Back to normal, and one more press: it opens. Presses are carried out in order, so
    // once its pulse is there, a pulse of the refused press would be there too.
    let ack = run_command(&centre, "normal", "normal-free-exit", serde_json::json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert!(devices.relay.set_button(1, true, false));
    reads(&devices.relay, 3).await;
    assert!(devices.relay.set_button(1, true, true));
    let lane1 = || {
        devices
            .relay
            .pulses()
            .iter()
            .filter(|p| p.lane == 1)
            .count()
    };
    wait_for("a third release", DEADLINE, || (lane1() >= 3).then_some(())).await;
    assert_eq!(lane1(), 3, "the press refused in lockdown opened the lane");
}
