//! The reference gate as a whole (broker, devices, daemon, centre), and the lists and
//! commands a test sends it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hw_sim::SimRelay;
use serde_json::Value;

use super::*;

pub fn staff_snapshot(site: &str, version: u64, cards: &[(&str, &str)]) -> String {
    let entries: Vec<Value> = cards
        .iter()
        .map(|(subject, card)| {
            serde_json::json!({"subject": subject, "name": format!("Person {subject}"),
                "credentials": [{"kind": "card", "id": card}],
                "valid_from": null, "valid_until": "2099-12-31T23:59:59Z", "gates": ["*"]})
        })
        .collect();
    serde_json::json!({"list": "staff", "site": site, "version": version,
        "issued_at": "2026-11-21T07:00:00Z", "entries": entries})
    .to_string()
}

impl Centre {
    /// A centre on `broker` that has published staff list version 1, retained: E1001 with card
    /// 0012345678, valid until 2099.
    pub async fn with_staff(broker: &Broker) -> Centre {
        let centre = Centre::connect(broker.port).await;
        centre
            .publish(
                STAFF_TOPIC,
                staff_snapshot("hq", 1, &[("E1001", "0012345678")]),
                true,
            )
            .await;
        centre
    }
}

/// A command body for gate east-1 of site hq, valid for a minute from now, with the fields of
/// `extra` added (or replacing).
pub fn command_body(cmd: &str, nonce: &str, extra: Value) -> Vec<u8> {
    let now = chrono::Utc::now();
    let mut body = serde_json::json!({"site": "hq", "gate": "east-1", "cmd": cmd, "nonce": nonce,
        "issued_at": now.to_rfc3339(),
        "expires_at": (now + chrono::Duration::seconds(60)).to_rfc3339()});
    if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&body).expect("json")
}

/// Publishes a signed command for east-1 and waits for its ack; returns the ack.
pub async fn run_command(centre: &Centre, cmd: &str, nonce: &str, extra: Value) -> Value {
    centre
        .publish_raw(
            "acs/hq/east-1/cmd",
            signed(command_body(cmd, nonce, extra)),
            false,
        )
        .await;
    centre
        .wait_json(&format!("the ack of {cmd}"), ACK, |a| a["ref"] == nonce)
        .await
}

/// Waits until every hold coil of the reference gate (2 lanes, entry and exit) is `on`.
pub async fn wait_coils(w: &World, on: bool, what: &str) {
    wait_all_coils(&w.devices.relay, on, DEADLINE, what).await;
}

/// Whether every hold coil of the reference relay board (2 lanes, entry and exit) is `on`.
pub fn all_coils(relay: &SimRelay, on: bool) -> bool {
    (0..2).all(|lane| {
        [false, true]
            .iter()
            .all(|&exit| relay.hold(lane, exit) == on)
    })
}

/// Waits up to `within` until every hold coil of the reference relay board is `on`.
pub async fn wait_all_coils(relay: &SimRelay, on: bool, within: Duration, what: &str) {
    wait_for(what, within, || all_coils(relay, on).then_some(())).await;
}

/// One running gate with everything it talks to.
pub struct World {
    pub broker: Broker,
    pub centre: Centre,
    pub devices: Devices,
    pub daemon: Daemon,
    /// Between the daemon and the broker, when the test asked for one.
    pub proxy: Option<Proxy>,
    /// Holds the database and config until the test ends.
    _dir: tempfile::TempDir,
}

pub const STAFF_TOPIC: &str = "acs/hq/lists/staff";
pub const EVENT: &str = "acs/hq/east-1/event";
pub const ALARM: &str = "acs/hq/east-1/alarm";
pub const STATUS: &str = "acs/hq/east-1/status";
pub const ACK: &str = "acs/hq/east-1/ack";

/// Swipes `card` on reader1 (lane 0, entry) and returns the event it caused.
pub async fn swipe(w: &World, card: &str) -> Value {
    let before = w.centre.on(EVENT).len();
    w.devices
        .reader1
        .present(hw_sim::KIND_CARD, card, 0)
        .expect("present");
    wait_for("the event of a swipe", DEADLINE, || {
        w.centre.on(EVENT).get(before).map(Msg::json)
    })
    .await
}

impl World {
    /// Broker, centre, devices and a daemon that has applied staff list version 1
    /// (E1001 with card 0012345678).
    pub async fn start() -> World {
        Self::build(false).await
    }

    /// The same, with the daemon reaching the broker through a `Proxy`.
    pub async fn through_proxy() -> World {
        Self::build(true).await
    }

    async fn build(with_proxy: bool) -> World {
        let broker = Broker::start().await;
        let proxy = match with_proxy {
            true => Some(Proxy::start(broker.port).await),
            false => None,
        };
        let port = proxy.as_ref().map_or(broker.port, |p| p.port);
        Self::launch(broker, proxy, port, "", &[], true).await
    }

    /// The centre (on `broker`'s plain listener) publishes staff list version 1, then the
    /// reference gate starts on hw-sim devices, reaching the broker at `port`, with
    /// `config_extra` appended to its config and `env` in its environment. With
    /// `wait_for_list`, returns once the gate has acked that list.
    pub(super) async fn launch(
        broker: Broker,
        proxy: Option<Proxy>,
        port: u16,
        config_extra: &str,
        env: &[(&str, &Path)],
        wait_for_list: bool,
    ) -> World {
        let centre = Centre::with_staff(&broker).await;
        let devices = Devices::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config_text(&dir.path().join("gated.db"), port, &devices) + config_extra;
        let daemon = Daemon::start_with_env(dir.path(), &config, env);
        let w = World {
            broker,
            centre,
            devices,
            daemon,
            proxy,
            _dir: dir,
        };
        if wait_for_list {
            w.centre
                .wait_json("the ack of staff@1", ACK, |a| {
                    a["ref"] == "staff@1" && a["ok"] == true
                })
                .await;
        }
        w
    }

    /// The reference world with `edit` applied to the gate's config text before it starts
    /// (for a key the reference config already sets, such as `max_message_bytes`).
    pub async fn start_with_config(edit: impl FnOnce(String) -> String) -> World {
        let broker = Broker::start().await;
        let centre = Centre::with_staff(&broker).await;
        let devices = Devices::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = edit(config_text(
            &dir.path().join("gated.db"),
            broker.port,
            &devices,
        ));
        let daemon = Daemon::start_with_env(dir.path(), &config, &[]);
        let w = World {
            broker,
            centre,
            devices,
            daemon,
            proxy: None,
            _dir: dir,
        };
        w.centre
            .wait_json("the ack of staff@1", ACK, |a| {
                a["ref"] == "staff@1" && a["ok"] == true
            })
            .await;
        w
    }

    /// The gate's database file (read it through a connection of the test's own).
    pub fn db(&self) -> PathBuf {
        self._dir.path().join("gated.db")
    }

    /// Events received so far, parsed.
    pub fn events(&self) -> Vec<Value> {
        self.centre.on(EVENT).iter().map(Msg::json).collect()
    }
}
