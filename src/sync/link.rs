//! The MQTT link: one task owns the broker connection. It drains the outbox (uplink), applies
//! lists (downlink), and keeps the retained status current.
//!
//! G3, at least once and in order: a row leaves the outbox only when the PUBACK for the
//! message that carried it arrives. rumqttc announces each QoS 1 publish as
//! `Outgoing::Publish(pkid)` in the order publishes were queued, so a FIFO of what was queued
//! maps packet ids to outbox rows; PUBACK then names the row.
//!
//! The event loop is driven by its own task and its events are forwarded over a channel:
//! `EventLoop::poll` is not cancel-safe (a request taken from the queue can be lost mid-write),
//! so it must never be a branch of a `select!` that other branches can win.
//!
//! Every connection gets a fresh rumqttc client and event loop. rumqttc drops queued and
//! in-flight publishes on a clean-session reconnect (and keeps nothing across restarts), so
//! after every ConnAck the outbox is sent again from its oldest row. Recreating the pair also
//! guarantees no publish of a dead connection can slip out of order on the next one.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};

use super::contract::{ListName, OutboxStatus, Status, Topics, format_ts};
use super::downlink;
use super::envelope::Envelope;
use crate::config::MqttConfig;
use crate::gate::Shared;
use crate::hw::Backoff;
use crate::store::Stream;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tag {
    Outbox(i64),
    Other,
}

/// Acknowledged rows are deleted from the outbox in batches, at least this often.
const ACK_FLUSH: Duration = Duration::from_millis(20);
const ACK_BATCH: usize = 256;

pub async fn run(
    cfg: MqttConfig,
    topics: Topics,
    shared: Shared,
    mut kick: mpsc::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let envelope = Envelope::Unsigned;
    loop {
        let end = Connection::new(&cfg, &topics, &shared, &envelope)
            .run(&mut kick, &mut shutdown)
            .await;
        match end {
            End::Shutdown => return,
            End::Lost { was_connected } => {
                if was_connected {
                    backoff.reset();
                }
                shared.health.set("broker", "disconnected");
            }
        }
        // rumqttc retries at once on its own (#703): wait here, with jitter.
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

enum End {
    Shutdown,
    Lost { was_connected: bool },
}

fn options(cfg: &MqttConfig, topics: &Topics) -> MqttOptions {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive);
    o.set_clean_session(true);
    o.set_inflight(cfg.inflight);
    // Incoming leaves room above our own limit, so that an oversize list reaches us and is
    // acked `too_large` instead of breaking the connection on every reconnect.
    o.set_max_packet_size(cfg.max_message_bytes.saturating_mul(2), 1024 * 1024);
    o.set_last_will(LastWill::new(
        topics.status(),
        br#"{"online":false}"#.to_vec(),
        QoS::AtLeastOnce,
        true,
    ));
    o
}

struct Connection<'a> {
    cfg: &'a MqttConfig,
    topics: &'a Topics,
    shared: &'a Shared,
    envelope: &'a Envelope,
    client: AsyncClient,
    /// What the event loop task saw; it ends after the first error.
    events: mpsc::UnboundedReceiver<Result<Event, rumqttc::ConnectionError>>,
    poller: tokio::task::JoinHandle<()>,
    connected: bool,
    /// Publishes queued with the client but not yet announced by the event loop.
    queued: VecDeque<Tag>,
    /// Announced publishes awaiting their PUBACK, by packet id.
    inflight: HashMap<u16, Tag>,
    /// The last outbox row queued on this connection.
    cursor: i64,
    /// Rows acknowledged but not yet deleted from the outbox.
    acked: Vec<i64>,
}

impl<'a> Connection<'a> {
    fn new(
        cfg: &'a MqttConfig,
        topics: &'a Topics,
        shared: &'a Shared,
        envelope: &'a Envelope,
    ) -> Self {
        // Room for the whole window plus acks and status, so `try_publish` never finds it full.
        let cap = usize::from(cfg.inflight) + 64;
        let (client, mut eventloop) = AsyncClient::new(options(cfg, topics), cap);
        let (tx, events) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let last = matches!(ev, Err(_) | Ok(Event::Outgoing(Outgoing::Disconnect)));
                if tx.send(ev).is_err() || last {
                    return;
                }
            }
        });
        Self {
            cfg,
            topics,
            shared,
            envelope,
            client,
            events,
            poller,
            connected: false,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            cursor: 0,
            acked: Vec::new(),
        }
    }

    async fn run(
        mut self,
        kick: &mut mpsc::Receiver<()>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let mut flush = tokio::time::interval(ACK_FLUSH);
        let mut status_tick = tokio::time::interval(self.cfg.status_interval);
        let mut health = self.shared.health.watch();
        let end = loop {
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect))) => {
                        break End::Lost { was_connected: self.connected };
                    }
                    Some(Ok(ev)) => {
                        if let Err(why) = self.on_event(ev).await {
                            tracing::warn!(broker = %self.cfg.host, "{why}; reconnecting");
                            break End::Lost { was_connected: self.connected };
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(broker = %format!("{}:{}", self.cfg.host, self.cfg.port), error = %e, "MQTT connection lost");
                        self.on_connection_error(&e).await;
                        break End::Lost { was_connected: self.connected };
                    }
                    None => break End::Lost { was_connected: self.connected },
                },
                Some(()) = kick.recv(), if self.connected => self.fill().await,
                _ = flush.tick() => self.flush_acks().await,
                _ = status_tick.tick(), if self.connected => self.publish_status(true).await,
                Ok(()) = health.changed(), if self.connected => self.publish_status(true).await,
                _ = shutdown.changed() => {
                    self.goodbye().await;
                    break End::Shutdown;
                }
            }
        };
        self.flush_acks().await;
        self.poller.abort();
        end
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), String> {
        match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    return Err(format!("broker refused the connection: {:?}", ack.code));
                }
                tracing::info!(broker = %format!("{}:{}", self.cfg.host, self.cfg.port), "MQTT connected");
                self.connected = true;
                self.shared.health.set("broker", "ok");
                let subs = ListName::ALL
                    .into_iter()
                    .flat_map(|l| [self.topics.list(l), self.topics.list_delta(l)])
                    .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce));
                self.client
                    .try_subscribe_many(subs)
                    .map_err(|e| format!("subscribe failed: {e}"))?;
                self.publish_status(true).await;
                // Everything unacknowledged goes again, oldest first.
                self.cursor = 0;
                self.fill().await;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let tag = self.queued.pop_front().unwrap_or(Tag::Other);
                self.inflight.insert(pkid, tag);
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                // A packet-id collision: the broker acked out of order. Start over cleanly.
                return Err(format!("packet id {pkid} collided"));
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Tag::Outbox(rowid)) = self.inflight.remove(&ack.pkid) {
                    self.acked.push(rowid);
                    if self.acked.len() >= ACK_BATCH {
                        self.flush_acks().await;
                    }
                }
                self.fill().await;
            }
            Event::Incoming(Packet::Publish(p)) => {
                let now = crate::clock::now_ms();
                let ack = downlink::handle(
                    self.topics,
                    self.envelope,
                    self.cfg.max_message_bytes,
                    &self.shared.store,
                    &p.topic,
                    p.payload,
                    now,
                )
                .await;
                if let Some(ack) = ack {
                    let body = serde_json::to_vec(&ack).unwrap_or_default();
                    self.publish(self.topics.ack(), body, false, Tag::Other);
                    // The list versions changed (or not): status says which are in force.
                    self.publish_status(true).await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A packet over the transport's ceiling cannot be read, so it cannot be acked
    /// `too_large`; and if it is retained it comes again on every reconnect. Say so loudly: the
    /// fix is the broker's `max_packet_size` (see config/mosquitto.example.conf).
    async fn on_connection_error(&self, e: &rumqttc::ConnectionError) {
        use rumqttc::mqttbytes::Error as Wire;
        if let rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            Wire::PayloadSizeLimitExceeded(len),
        )) = e
        {
            let detail = format!(
                "the broker sent a {len}-byte packet, over the {}-byte ceiling (twice \
                 mqtt.max_message_bytes); it was dropped with the connection. Limit \
                 max_packet_size on the broker",
                self.cfg.max_message_bytes.saturating_mul(2)
            );
            tracing::error!("{detail}");
            let _ = self
                .shared
                .alarm("oversize_packet", "broker", &detail)
                .await;
        }
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>, retain: bool, tag: Tag) -> bool {
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                self.queued.push_back(tag);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "MQTT request queue full; will retry");
                false
            }
        }
    }

    /// Queues outbox rows until the window is full.
    async fn fill(&mut self) {
        let window = usize::from(self.cfg.inflight);
        while self.connected {
            let room = window.saturating_sub(self.queued.len() + self.inflight.len());
            if room == 0 {
                return;
            }
            let after = self.cursor;
            let rows = match self
                .shared
                .store
                .call(move |db| db.pending(after, room))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    return;
                }
            };
            if rows.is_empty() {
                return;
            }
            for row in rows {
                if self.acked.contains(&row.rowid) {
                    self.cursor = row.rowid;
                    continue; // acked, delete pending
                }
                let topic = match row.stream {
                    Stream::Event => self.topics.event(),
                    Stream::Alarm => self.topics.alarm(),
                };
                if !self.publish(
                    topic,
                    row.payload.into_bytes(),
                    false,
                    Tag::Outbox(row.rowid),
                ) {
                    return;
                }
                self.cursor = row.rowid;
            }
        }
    }

    async fn flush_acks(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.acked);
        let n = rows.len();
        let retry = rows.clone();
        if let Err(e) = self.shared.store.call(move |db| db.acked(&rows)).await {
            // Keep them; they are deleted on the next flush (or sent again after a restart).
            tracing::error!(error = %e, rows = n, "cannot delete acknowledged rows");
            self.acked = retry;
        }
    }

    /// Builds the status. A free-standing borrow of `Shared`, not of `self`: the event loop is
    /// not `Sync`, so `&self` must not be held across an await.
    async fn status(shared: &Shared, online: bool) -> Status {
        let store = shared
            .store
            .call(|db| Ok((db.list_versions()?, db.outbox_stats()?)))
            .await;
        let (lists, outbox) = match store {
            Ok((l, o)) => (
                l,
                OutboxStatus {
                    pending: o.pending,
                    oldest_ts: o.oldest_ts.map(format_ts),
                },
            ),
            Err(e) => {
                tracing::error!(error = %e, "status: store unavailable");
                (
                    super::contract::ListVersions {
                        staff: 0,
                        visitors: 0,
                        deny: 0,
                    },
                    OutboxStatus {
                        pending: 0,
                        oldest_ts: None,
                    },
                )
            }
        };
        let mut devices = shared.health.snapshot();
        devices.remove("broker");
        Status {
            online,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ts: format_ts(crate::clock::now_ms()),
            mode: shared.mode.borrow().as_str().to_string(),
            lists,
            outbox,
            devices,
            // Clock trust is judged by a later part of gated; until then it is not claimed.
            clock: "unchecked".to_string(),
        }
    }

    async fn publish_status(&mut self, online: bool) {
        let s = Self::status(self.shared, online).await;
        let body = serde_json::to_vec(&s).unwrap_or_default();
        self.publish(self.topics.status(), body, true, Tag::Other);
    }

    /// On shutdown: say we are going offline (retained), then disconnect cleanly.
    async fn goodbye(&mut self) {
        if !self.connected {
            return;
        }
        self.publish_status(false).await;
        let _ = self.client.try_disconnect();
        let drain = async {
            loop {
                let Some(ev) = self.events.recv().await else {
                    return;
                };
                match ev {
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(Tag::Outbox(rowid)) = self.inflight.remove(&ack.pkid) {
                            self.acked.push(rowid);
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let tag = self.queued.pop_front().unwrap_or(Tag::Other);
                        self.inflight.insert(pkid, tag);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}
