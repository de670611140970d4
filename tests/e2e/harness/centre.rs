//! The MQTT client as the centre sees it: records every message under `acs/#`.

use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;

use super::*;

/// Subscribes to `acs/#` with a persistent session and records every message.
pub struct Centre {
    pub client: AsyncClient,
    rec: Recorder,
}

impl Centre {
    pub async fn connect(port: u16) -> Centre {
        let id = format!("centre-{}-{}", std::process::id(), free_port());
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(64 << 20, 64 << 20);
        let rec = Recorder::connect(o, 256, &["acs/#"], true, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("the centre's subscription was not acknowledged: {e}"));
        Centre {
            client: rec.client.clone(),
            rec,
        }
    }

    pub fn all(&self) -> Vec<Msg> {
        self.rec.all()
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.rec.on(topic)
    }

    /// Publishes as the admin would: `body` signed by the test admin key, QoS 1, retained for
    /// snapshots.
    pub async fn publish(&self, topic: &str, body: impl AsRef<[u8]>, retain: bool) {
        self.publish_raw(topic, signed(body), retain).await;
    }

    /// Publishes `payload` as it is (no envelope): for hostile messages and clearing retained.
    pub async fn publish_raw(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .expect("queue publish");
    }

    /// Waits for the first message on `topic` that satisfies `pred`, and returns its JSON.
    pub async fn wait_json(&self, what: &str, topic: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, DEADLINE, || {
            self.on(topic)
                .into_iter()
                .map(|m| m.json())
                .find(|v| pred(v))
        })
        .await
    }
}
