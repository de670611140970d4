//! One broker session for one gatectl command: connect, subscribe (waiting for the SUBACK),
//! read what the broker holds retained, publish QoS 1 and wait for the PUBACK.
//!
//! As in `sync::link`, the rumqttc event loop is driven by its own task and its events are
//! forwarded over a channel (`EventLoop::poll` is not cancel-safe, so it is never raced in a
//! `select!`). Messages that arrive while the session waits for a SUBACK or a PUBACK are kept,
//! in order, for the next `next` call.
//!
//! Sessions are clean (gatectl keeps no state on the broker) and one-shot, except for `tail`,
//! which asks to reconnect: then lost connections are reported, the task reconnects with
//! backoff and subscribes again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The largest message gatectl sends or reads; the gates' own limit
/// (`mqtt.max_message_bytes`) is at most this too.
pub const MAX_PACKET: usize = 256 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A broker address, `HOST:PORT` (`[v6]:PORT` for an IPv6 literal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Endpoint, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not HOST:PORT"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{port}` in `{s}` is not a port number"))?;
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub broker: Endpoint,
    /// TLS and login, loaded by `gated::sync::transport` as a gate loads its own.
    pub secrets: crate::sync::transport::Secrets,
    /// The TLS settings behind `secrets`, to explain a failed handshake.
    pub tls: Option<crate::config::TlsConfig>,
    pub client_id: String,
    /// Reconnect after a lost connection (for long-running `tail`) instead of ending.
    pub reconnect: bool,
}

impl ConnectOptions {
    /// A clean session with a client id of its own.
    pub fn new(
        broker: Endpoint,
        secrets: &crate::sync::transport::Secrets,
        tls: Option<&crate::config::TlsConfig>,
        purpose: &str,
    ) -> ConnectOptions {
        ConnectOptions {
            broker,
            secrets: secrets.clone(),
            tls: tls.cloned(),
            client_id: format!(
                "gatectl-{purpose}-{}-{}",
                std::process::id(),
                &super::lists::new_nonce()[..8]
            ),
            reconnect: false,
        }
    }
}

/// The rumqttc options for a session. Transport security and credentials belong here, and only
/// here.
fn mqtt_options(o: &ConnectOptions) -> MqttOptions {
    let mut m = MqttOptions::new(&o.client_id, &o.broker.host, o.broker.port);
    m.set_clean_session(true);
    m.set_keep_alive(Duration::from_secs(15));
    m.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    crate::sync::transport::apply(&mut m, &o.secrets);
    m
}

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("cannot connect to the broker {broker}: {why}")]
    Connect { broker: String, why: String },
    #[error("lost the connection to the broker {broker}: {why}")]
    Lost { broker: String, why: String },
    #[error("the broker {broker} refused {what}")]
    Refused { broker: String, what: String },
    #[error("no answer from the broker {broker} to {what} within {secs} s")]
    Timeout {
        broker: String,
        what: String,
        secs: u64,
    },
}

/// A message as received.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: bytes::Bytes,
    /// Sent from the broker's retained store (as opposed to published while subscribed).
    pub retain: bool,
}

enum Ev {
    Connected,
    SubAck(Vec<SubscribeReasonCode>),
    OutPublish(u16),
    PubAck(u16),
    Publish(Message),
    Lost(String),
}

pub struct Session {
    client: AsyncClient,
    rx: mpsc::Receiver<Ev>,
    pending: VecDeque<Message>,
    subs: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    broker: String,
    /// Lost, and not reconnected yet.
    down: bool,
}

async fn drive(
    mut el: EventLoop,
    client: AsyncClient,
    tx: mpsc::Sender<Ev>,
    subs: Arc<Mutex<Vec<String>>>,
    reconnect: bool,
    explain: (
        crate::sync::transport::Secrets,
        Option<crate::config::TlsConfig>,
    ),
) {
    let mut connected_once = false;
    let mut backoff = Duration::from_millis(250);
    loop {
        let ev = match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(250);
                if connected_once {
                    // A clean session forgets subscriptions: ask again. `try_` because this
                    // task is the one that drains the request queue.
                    let topics = subs.lock().map(|s| s.clone()).unwrap_or_default();
                    if !topics.is_empty() {
                        let _ = client.try_subscribe_many(
                            topics
                                .into_iter()
                                .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce)),
                        );
                    }
                }
                connected_once = true;
                Ev::Connected
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(s.return_codes),
            Ok(Event::Incoming(Packet::PubAck(p))) => Ev::PubAck(p.pkid),
            Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish(Message {
                topic: p.topic,
                payload: p.payload,
                retain: p.retain,
            }),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ev::OutPublish(pkid),
            Ok(_) => continue,
            Err(e) => {
                let last = !reconnect || !connected_once;
                // A refused login or a failed TLS handshake, said in words.
                let (secrets, tls) = &explain;
                let why = crate::sync::transport::login_refused(&e, secrets)
                    .or_else(|| {
                        tls.as_ref()
                            .and_then(|t| crate::sync::transport::tls_failure(&e, t))
                            .map(|w| format!("TLS: {w}"))
                    })
                    .unwrap_or_else(|| e.to_string());
                if tx.send(Ev::Lost(why)).await.is_err() || last {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

impl Session {
    /// Connects, waiting for the broker's CONNACK.
    pub async fn connect(o: &ConnectOptions) -> Result<Session, MqttError> {
        let (client, el) = AsyncClient::new(mqtt_options(o), 64);
        let (tx, rx) = mpsc::channel(4096);
        let subs: Arc<Mutex<Vec<String>>> = Arc::default();
        let explain = (o.secrets.clone(), o.tls.clone());
        let task = tokio::spawn(drive(
            el,
            client.clone(),
            tx,
            subs.clone(),
            o.reconnect,
            explain,
        ));
        let mut s = Session {
            client,
            rx,
            pending: VecDeque::new(),
            subs,
            task,
            broker: o.broker.to_string(),
            down: false,
        };
        let connect_err = |why: String| MqttError::Connect {
            broker: o.broker.to_string(),
            why,
        };
        let end = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(end, s.rx.recv()).await {
                Ok(Some(Ev::Connected)) => return Ok(s),
                Ok(Some(Ev::Lost(why))) => return Err(connect_err(why)),
                Ok(Some(_)) => {}
                Ok(None) => return Err(connect_err("the connection closed".into())),
                Err(_) => {
                    return Err(connect_err(format!(
                        "no CONNACK within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }

    fn lost(&self, why: String) -> MqttError {
        MqttError::Lost {
            broker: self.broker.clone(),
            why,
        }
    }

    fn timeout(&self, what: &str, secs: u64) -> MqttError {
        MqttError::Timeout {
            broker: self.broker.clone(),
            what: what.to_string(),
            secs,
        }
    }

    /// The next event from the event loop, or `None` at `until`.
    async fn event(&mut self, until: Instant) -> Result<Option<Ev>, MqttError> {
        match tokio::time::timeout_at(until, self.rx.recv()).await {
            Ok(Some(ev)) => Ok(Some(ev)),
            Ok(None) => Err(self.lost("the connection closed".into())),
            Err(_) => Ok(None),
        }
    }

    /// Subscribes to `filters` at QoS 1 and waits for the SUBACK. The broker sends what it
    /// holds retained for them right after.
    pub async fn subscribe(&mut self, filters: &[String]) -> Result<(), MqttError> {
        if let Ok(mut s) = self.subs.lock() {
            s.extend(filters.iter().cloned());
        }
        let what = format!("the subscription to {}", filters.join(", "));
        self.client
            .subscribe_many(
                filters
                    .iter()
                    .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)),
            )
            .await
            .map_err(|e| self.lost(e.to_string()))?;
        let end = Instant::now() + ACK_TIMEOUT;
        loop {
            match self.event(end).await? {
                Some(Ev::SubAck(codes)) => {
                    let refused: Vec<&str> = filters
                        .iter()
                        .zip(&codes)
                        .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
                        .map(|(f, _)| f.as_str())
                        .collect();
                    if refused.is_empty() {
                        return Ok(());
                    }
                    return Err(MqttError::Refused {
                        broker: self.broker.clone(),
                        what: format!(
                            "the subscription to {} (does its ACL allow this client to read it?)",
                            refused.join(", ")
                        ),
                    });
                }
                Some(Ev::Publish(m)) => self.pending.push_back(m),
                Some(Ev::Lost(why)) => return Err(self.lost(why)),
                Some(_) => {}
                None => return Err(self.timeout(&what, ACK_TIMEOUT.as_secs())),
            }
        }
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK: once this returns, the broker has
    /// the message (and holds it, when `retain`).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), MqttError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| self.lost(e.to_string()))?;
        let what = format!("the publish on {topic}");
        let end = Instant::now() + ACK_TIMEOUT;
        // One publish at a time: the next outgoing publish is ours, and names its packet id.
        let mut pkid = None;
        loop {
            match self.event(end).await? {
                Some(Ev::OutPublish(id)) if pkid.is_none() => pkid = Some(id),
                Some(Ev::PubAck(id)) if Some(id) == pkid => return Ok(()),
                Some(Ev::Publish(m)) => self.pending.push_back(m),
                Some(Ev::Lost(why)) => return Err(self.lost(why)),
                Some(_) => {}
                None => return Err(self.timeout(&what, ACK_TIMEOUT.as_secs())),
            }
        }
    }

    /// The next message, or `None` at `until`. A lost connection is an error; on a session
    /// that reconnects, calling again goes on after the reconnection (failed attempts to
    /// reconnect are not reported again).
    pub async fn next(&mut self, until: Instant) -> Result<Option<Message>, MqttError> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(Some(m));
        }
        loop {
            match self.event(until).await? {
                Some(Ev::Publish(m)) => return Ok(Some(m)),
                Some(Ev::Lost(_)) if self.down => {}
                Some(Ev::Lost(why)) => {
                    self.down = true;
                    return Err(self.lost(why));
                }
                Some(Ev::Connected) => self.down = false,
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// Every message until none has come for `quiet`, or until `deadline`: for what the broker
    /// holds retained, which it sends right after the SUBACK.
    pub async fn settle(
        &mut self,
        quiet: Duration,
        deadline: Instant,
    ) -> Result<Vec<Message>, MqttError> {
        let mut out = Vec::new();
        loop {
            let until = (Instant::now() + quiet).min(deadline);
            match self.next(until).await? {
                Some(m) => out.push(m),
                None => return Ok(out),
            }
        }
    }

    /// Says goodbye to the broker.
    pub async fn close(mut self) {
        let _ = self.client.try_disconnect();
        // The event loop ends once the DISCONNECT is written (its next poll fails).
        let end = Instant::now() + Duration::from_secs(1);
        while let Ok(Some(ev)) = self.event(end).await {
            if matches!(ev, Ev::Lost(_)) {
                break;
            }
        }
        self.task.abort();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        let e: Endpoint = "127.0.0.1:1883".parse().expect("valid");
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 1883));
        let e: Endpoint = "[::1]:8883".parse().expect("valid");
        assert_eq!(
            (e.host.as_str(), e.to_string()),
            ("::1", "[::1]:8883".into())
        );
        assert!("broker".parse::<Endpoint>().is_err());
        assert!("broker:0".parse::<Endpoint>().is_err());
        assert!(":1883".parse::<Endpoint>().is_err());
    }
}
