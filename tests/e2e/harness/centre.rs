//! The MQTT client as the centre sees it: records every message under `acs/#`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use super::*;

#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Msg {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

/// Subscribes to `acs/#` with a persistent session and records every message.
pub struct Centre {
    pub client: AsyncClient,
    msgs: Arc<Mutex<Vec<Msg>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Centre {
    pub async fn connect(port: u16) -> Centre {
        let id = format!("centre-{}-{}", std::process::id(), free_port());
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut el) = AsyncClient::new(o, 256);
        let msgs: Arc<Mutex<Vec<Msg>>> = Arc::default();
        let subscribed = Arc::new(tokio::sync::Notify::new());
        let (m, s, c) = (msgs.clone(), subscribed.clone(), client.clone());
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.subscribe("acs/#", QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => s.notify_one(),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        m.lock().expect("lock").push(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(DEADLINE, subscribed.notified())
            .await
            .expect("the centre's subscription was not acknowledged");
        Centre { client, msgs, task }
    }

    pub fn all(&self) -> Vec<Msg> {
        self.msgs.lock().expect("lock").clone()
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.all()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
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

impl Drop for Centre {
    fn drop(&mut self) {
        self.task.abort();
    }
}
