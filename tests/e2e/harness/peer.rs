//! A raw MQTT client for the ACL tests.

use rumqttc::{AsyncClient, MqttOptions, QoS};

use super::*;

/// A raw MQTT client (the ACL test's gate and centre): subscribes to `topics` on every
/// ConnAck and records what arrives and what the SUBACKs said.
pub struct Peer {
    pub client: AsyncClient,
    rec: Recorder,
}

impl Peer {
    /// Connects with `o` and returns once the subscription is acknowledged.
    pub async fn connect(o: MqttOptions, topics: &[&str]) -> Peer {
        let rec = Recorder::connect(o, 64, topics, true, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("the subscription was not acknowledged: {e}"));
        Peer {
            client: rec.client.clone(),
            rec,
        }
    }

    pub fn subacks(&self) -> Vec<rumqttc::SubscribeReasonCode> {
        self.rec.subacks()
    }

    /// The payloads received on `topic`, as text.
    pub fn on(&self, topic: &str) -> Vec<String> {
        self.rec
            .on(topic)
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    pub async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .expect("queue publish");
    }

    /// Waits for `payload` on `topic`.
    pub async fn wait(&self, topic: &str, payload: &str) {
        wait_for(&format!("`{payload}` on {topic}"), DEADLINE, || {
            self.on(topic).iter().any(|p| p == payload).then_some(())
        })
        .await;
    }
}
