//! The one recording MQTT subscriber, shared by the e2e harness (`Centre`, `Peer`) and the
//! bench (`Listener`, which takes this file with `#[path]`, so both measure and check through
//! the same client). It needs only rumqttc, tokio and serde_json, which both have.

// Each user takes part of it: the e2e tests read SUBACKs, the bench counts.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode};

/// One received message.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// Subscribes to its filters (QoS 1) on every ConnAck, and records what arrives and what the
/// last SUBACK said.
pub struct Recorder {
    pub client: AsyncClient,
    msgs: Arc<Mutex<Vec<Msg>>>,
    subacks: Arc<Mutex<Vec<SubscribeReasonCode>>>,
    count: Arc<AtomicUsize>,
    first: Arc<Mutex<Option<Instant>>>,
    keep: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Connects with `o` (a request queue of `cap`) and returns once the first subscription is
    /// acknowledged; after `within` without one, an error with the last connection error.
    /// With `keep` false only the count and the time of the first message are kept (for the
    /// bench's 100k-message drains).
    pub async fn connect(
        o: MqttOptions,
        cap: usize,
        filters: &[&str],
        keep: bool,
        within: Duration,
    ) -> Result<Recorder, String> {
        let (client, mut el) = AsyncClient::new(o, cap);
        let msgs: Arc<Mutex<Vec<Msg>>> = Arc::default();
        let subacks: Arc<Mutex<Vec<SubscribeReasonCode>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let first: Arc<Mutex<Option<Instant>>> = Arc::default();
        let last_error: Arc<Mutex<Option<String>>> = Arc::default();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let filters: Vec<_> = filters
            .iter()
            .map(|t| SubscribeFilter::new(t.to_string(), QoS::AtLeastOnce))
            .collect();
        let (m, a, n, f, e, c) = (
            msgs.clone(),
            subacks.clone(),
            count.clone(),
            first.clone(),
            last_error.clone(),
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
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        f.lock().expect("lock").get_or_insert(at);
                        n.fetch_add(1, Ordering::Relaxed);
                        if keep {
                            m.lock().expect("lock").push(Msg {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        *e.lock().expect("lock") = Some(err.to_string());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        if !matches!(tokio::time::timeout(within, subscribed).await, Ok(Ok(()))) {
            task.abort();
            return Err(format!(
                "no SUBACK within {} s; last error: {:?}",
                within.as_secs(),
                last_error.lock().expect("lock")
            ));
        }
        Ok(Recorder {
            client,
            msgs,
            subacks,
            count,
            first,
            keep,
            task,
        })
    }

    /// Every message kept, in the order received.
    pub fn all(&self) -> Vec<Msg> {
        assert!(self.keep, "this recorder keeps no messages");
        self.msgs.lock().expect("lock").clone()
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.all()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// What the last SUBACK said, filter by filter.
    pub fn subacks(&self) -> Vec<SubscribeReasonCode> {
        self.subacks.lock().expect("lock").clone()
    }

    /// How many messages arrived (kept or not).
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// When the first message arrived.
    pub fn first_at(&self) -> Option<Instant> {
        *self.first.lock().expect("lock")
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
