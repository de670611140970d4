//! A raw MQTT client for the ACL tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::*;

/// A raw MQTT client (the ACL test's gate and centre): subscribes to `topics` on every
/// ConnAck and records what arrives and what the SUBACKs said.
pub struct Peer {
    pub client: AsyncClient,
    msgs: Arc<Mutex<Vec<Msg>>>,
    subacks: Arc<Mutex<Vec<rumqttc::SubscribeReasonCode>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    /// Connects with `o` and returns once the subscription is acknowledged.
    pub async fn connect(o: MqttOptions, topics: &[&str]) -> Peer {
        let (client, mut el) = AsyncClient::new(o, 64);
        let msgs: Arc<Mutex<Vec<Msg>>> = Arc::default();
        let subacks: Arc<Mutex<Vec<rumqttc::SubscribeReasonCode>>> = Arc::default();
        let last_error: Arc<Mutex<Option<String>>> = Arc::default();
        let subscribed = Arc::new(tokio::sync::Notify::new());
        let filters: Vec<_> = topics
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new(t.to_string(), QoS::AtLeastOnce))
            .collect();
        let (m, a, e, s, c) = (
            msgs.clone(),
            subacks.clone(),
            last_error.clone(),
            subscribed.clone(),
            client.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.subscribe_many(filters.clone()).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        *a.lock().expect("lock") = ack.return_codes;
                        s.notify_one();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        m.lock().expect("lock").push(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(_) => {}
                    Err(err) => {
                        *e.lock().expect("lock") = Some(err.to_string());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        if tokio::time::timeout(DEADLINE, subscribed.notified())
            .await
            .is_err()
        {
            panic!(
                "the subscription was not acknowledged; last error: {:?}",
                last_error.lock().expect("lock")
            );
        }
        Peer {
            client,
            msgs,
            subacks,
            task,
        }
    }

    pub fn subacks(&self) -> Vec<rumqttc::SubscribeReasonCode> {
        self.subacks.lock().expect("lock").clone()
    }

    /// The payloads received on `topic`, as text.
    pub fn on(&self, topic: &str) -> Vec<String> {
        self.msgs
            .lock()
            .expect("lock")
            .iter()
            .filter(|m| m.topic == topic)
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

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
