//! Compound-wide anti-passback: two gates of one site on one real broker, each learning the
//! other's passes from its events (`policy.peers`), with hard anti-passback. A subject who
//! came in at one gate cannot come in again at the other until they have gone out somewhere;
//! a guard's `clear_passback` at one gate clears the state at both, and `clear_passback_all`
//! (after a drill) clears everyone's.
//! A pass out under emergency release at one gate is learned by the other like any pass.

use serde_json::{Value, json};

use crate::harness::*;

const HARD: &str = "[policy.anti_passback]\nmode = \"hard\"\n";

struct Gate {
    name: &'static str,
    devices: Devices,
    _daemon: Daemon,
    dir: tempfile::TempDir,
}

impl Gate {
    async fn start(name: &'static str, peer: &str, broker_port: u16) -> Gate {
        let devices = Devices::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config_text(&dir.path().join("gated.db"), broker_port, &devices)
            .replace("gate = \"east-1\"", &format!("gate = \"{name}\""))
            .replace(
                "[policy]\nmin_face_score = 0.8\n",
                &format!("[policy]\nmin_face_score = 0.8\npeers = [\"{peer}\"]\n"),
            )
            + HARD;
        let daemon = Daemon::start_with_env(dir.path(), &config, &[]);
        Gate {
            name,
            devices,
            _daemon: daemon,
            dir,
        }
    }

    fn topic(&self, leaf: &str) -> String {
        format!("acs/hq/{}/{leaf}", self.name)
    }

    /// Presents `card` at the entry (reader1) or exit (reader2) and returns the event.
    async fn present(&self, centre: &Centre, card: &str, entry: bool) -> Value {
        let topic = self.topic("event");
        let before = centre.on(&topic).len();
        let reader = if entry {
            &self.devices.reader1
        } else {
            &self.devices.reader2
        };
        reader.present(hw_sim::KIND_CARD, card, 0).expect("present");
        wait_for(
            &format!("the event of a swipe at {}", self.name),
            DEADLINE,
            || centre.on(&topic).get(before).map(Msg::json),
        )
        .await
    }

    /// Waits until this gate has learned the other gate's events up to `seq`.
    async fn learned(&self, peer: &str, seq: u64) {
        let db = self.dir.path().join("gated.db");
        wait_for(
            &format!("{} learning {peer}'s event {seq}", self.name),
            DEADLINE,
            || {
                let conn = rusqlite::Connection::open_with_flags(
                    &db,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .ok()?;
                conn.busy_timeout(std::time::Duration::from_secs(1)).ok()?;
                let got: Option<u64> = conn
                    .query_row("SELECT seq FROM peer WHERE gate = ?1", [peer], |r| r.get(0))
                    .ok();
                got.filter(|s| *s >= seq)
            },
        )
        .await;
    }
}

fn verdict(e: &Value) -> (&str, &str) {
    (
        e["decision"].as_str().unwrap_or("?"),
        e["reason"].as_str().unwrap_or("?"),
    )
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().expect("seq")
}

#[tokio::test]
async fn anti_passback_holds_across_two_gates_of_a_site() {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    let east = Gate::start("east-1", "west-1", broker.port).await;
    let west = Gate::start("west-1", "east-1", broker.port).await;
    for g in [&east, &west] {
        centre
            .wait_json(
                &format!("{} acking staff@1", g.name),
                &g.topic("ack"),
                |a| a["ref"] == "staff@1" && a["ok"] == true,
            )
            .await;
        // The peers connection shows ok once the broker took its subscription.
        centre
            .wait_json(
                &format!("{} subscribed to its peer", g.name),
                &g.topic("status"),
                |s| s["devices"]["mqtt_peers"] == "ok",
            )
            .await;
    }
    const CARD: &str = "0012345678";

    let e = east.present(&centre, CARD, true).await;
    assert_eq!(verdict(&e), ("granted", "staff"), "{e}");
    west.learned("east-1", seq(&e)).await;
    let w = west.present(&centre, CARD, true).await;
    assert_eq!(verdict(&w), ("denied", "anti_passback"), "{w}");

    // Out at west; east learns it, and lets E1001 in again (once).
    let w = west.present(&centre, CARD, false).await;
    assert_eq!(verdict(&w), ("granted", "staff"), "{w}");
    east.learned("west-1", seq(&w)).await;
    let e = east.present(&centre, CARD, true).await;
    assert_eq!(verdict(&e), ("granted", "staff"), "{e}");
    let e = east.present(&centre, CARD, true).await;
    assert_eq!(verdict(&e), ("denied", "anti_passback"), "{e}");

    // A guard clears E1001 at east, by a signed command: both gates forget the state.
    let ack = run_command(
        &centre,
        "clear_passback",
        "clear-e1001-1",
        json!({"subject": "E1001"}),
    )
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let cleared = centre
        .wait_json("the override event", &east.topic("event"), |e| {
            e["override"]["input"] == "clear_passback"
        })
        .await;
    assert_eq!(cleared["subject"], "E1001");
    assert_eq!(cleared["override"]["by"], "ops-test");
    west.learned("east-1", seq(&cleared)).await;
    let w = west.present(&centre, CARD, true).await;
    assert_eq!(verdict(&w), ("granted", "staff"), "{w}");
    // West's entry reader handled the refused pass before this one (record, pulse, ack,
    // next): once this one has pulsed, a pulse of the refused one would be there too.
    let entries = || {
        west.devices
            .relay
            .pulses()
            .iter()
            .filter(|p| p.lane == 0 && !p.exit)
            .count()
    };
    wait_for("west's entry pulse", DEADLINE, || {
        (entries() > 0).then_some(())
    })
    .await;
    assert_eq!(entries(), 1, "the refused pass opened west");
}

#[tokio::test]
async fn after_a_drill_one_clear_for_everyone_at_one_gate_lets_everyone_in_at_both() {
    let broker = Broker::start().await;
    let centre = Centre::connect(broker.port).await;
    centre
        .publish(
            STAFF_TOPIC,
            staff_snapshot("hq", 1, &[("E1001", "0012345678"), ("E2002", "0055555555")]),
            true,
        )
        .await;
    let east = Gate::start("east-1", "west-1", broker.port).await;
    let west = Gate::start("west-1", "east-1", broker.port).await;
    for g in [&east, &west] {
        centre
            .wait_json(
                &format!("{} subscribed to its peer", g.name),
                &g.topic("status"),
                |s| s["devices"]["mqtt_peers"] == "ok" && s["lists"]["staff"] == 1,
            )
            .await;
    }
    // Both came in at east; west learned it and refuses them another entry.
    let mut last = 0;
    for card in ["0012345678", "0055555555"] {
        let e = east.present(&centre, card, true).await;
        assert_eq!(verdict(&e), ("granted", "staff"), "{e}");
        last = seq(&e);
    }
    west.learned("east-1", last).await;
    let w = west.present(&centre, "0055555555", true).await;
    assert_eq!(verdict(&w), ("denied", "anti_passback"), "{w}");

    // A typo is refused by name, and clears nobody.
    let g = Gatectl::new(broker.port);
    let r = g
        .run(&[
            "cmd",
            "clear-passback",
            "--gate",
            "east-1",
            "--subject",
            "E9999",
            "--wait",
            "10",
        ])
        .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("unknown_subject"), "{r:#?}");

    let r = g
        .run(&[
            "cmd",
            "clear-passback-all",
            "--gate",
            "east-1",
            "--wait",
            "10",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    let cleared = centre
        .wait_json("the override event", &east.topic("event"), |e| {
            e["override"]["input"] == "clear_passback_all"
        })
        .await;
    assert_eq!(
        (&cleared["subject"], &cleared["flags"]),
        (&Value::Null, &json!(["no_release"])),
        "{cleared}"
    );
    west.learned("east-1", seq(&cleared)).await;
    for card in ["0012345678", "0055555555"] {
        let w = west.present(&centre, card, true).await;
        assert_eq!(verdict(&w), ("granted", "staff"), "{w}");
    }
    let e = east.present(&centre, "0012345678", false).await;
    assert_eq!(verdict(&e), ("granted", "staff"), "{e}");
}

/// After an evacuation at one gate, the other gates of the site learn who went out: a subject
/// who badged out under emergency release at east comes back in at west.
#[tokio::test]
async fn a_pass_out_under_emergency_release_is_learned_by_the_peer_gate() {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    let east = Gate::start("east-1", "west-1", broker.port).await;
    let west = Gate::start("west-1", "east-1", broker.port).await;
    for g in [&east, &west] {
        centre
            .wait_json(
                &format!("{} acking staff@1", g.name),
                &g.topic("ack"),
                |a| a["ref"] == "staff@1" && a["ok"] == true,
            )
            .await;
        centre
            .wait_json(
                &format!("{} subscribed to its peer", g.name),
                &g.topic("status"),
                |s| s["devices"]["mqtt_peers"] == "ok",
            )
            .await;
    }
    const CARD: &str = "0012345678";
    let e = east.present(&centre, CARD, true).await;
    assert_eq!(verdict(&e), ("granted", "staff"), "{e}");
    let ack = run_command(&centre, "emergency_release", "evacuate-east-1", json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    centre
        .wait_json("east in emergency release", &east.topic("status"), |s| {
            s["mode"] == "emergency_release"
        })
        .await;
    let out = east.present(&centre, CARD, false).await;
    assert_eq!(verdict(&out), ("granted", "emergency_release"), "{out}");
    let ack = run_command(&centre, "normal", "all-clear-east-1", json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    west.learned("east-1", seq(&out)).await;
    // Before the fix: refused `anti_passback`, west still had E1001 inside.
    let w = west.present(&centre, CARD, true).await;
    assert_eq!(verdict(&w), ("granted", "staff"), "{w}");
}
