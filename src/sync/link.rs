//! The MQTT link: two connections to the broker, each the one owner of its job.
//!
//! - The uplink (client id `mqtt.client_id`, with the last will) drains the outbox and keeps
//!   the retained status current. It subscribes to nothing, so nothing the broker holds for
//!   the gate (a huge or hostile retained list) can stand between it and its PUBACKs.
//! - The downlink (client id `{client_id}-lists`) subscribes to the site's lists, applies them
//!   and publishes the acks. If a list poisons its connection, events still flow.
//! - The peers connection (client id `{client_id}-peers`, when `policy.peers` names gates)
//!   reads the pass events of those other gates of the site, from which the store learns
//!   subjects' in/out state and invitation entries used (`Db::learn`). Clean session: what the
//!   other gates publish while this one is cut off is not learned; docs/policy.md says what
//!   that means.
//!
//! G3, at least once and in order: a row leaves the outbox only when the PUBACK for the
//! message that carried it arrives. rumqttc announces each QoS 1 publish as
//! `Outgoing::Publish(pkid)` in the order publishes were queued, so a FIFO of what was queued
//! maps packet ids to outbox rows; PUBACK then names the row.
//!
//! Every connection gets a fresh rumqttc client and event loop. rumqttc drops queued and
//! in-flight publishes on a clean-session reconnect (and keeps nothing across restarts), so
//! after every ConnAck the outbox is sent again from its oldest row. The event loop is driven
//! by its own task and its events forwarded over a channel: `EventLoop::poll` is not
//! cancel-safe (a request taken from the queue can be lost mid-write), so it must never be a
//! branch of a `select!` that other branches can win.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::downlink::{self, Downlink};
use super::transport::{self, Secrets};
use crate::config::MqttConfig;
use crate::gate::Shared;
use crate::hw::Backoff;
use crate::store::Stream;
use gated_contract::{
    Ack, LastOffline, ListVersions, MAX_DETAIL_BYTES, OutboxStatus, PassEvent, Status, Topics,
    bounded, format_ts,
};

#[derive(Debug, Clone, PartialEq)]
enum Tag {
    Outbox(i64),
    /// A snapshot's thumbnail, by the id of its pass.
    Snapshot(String),
    /// An alarm sent past the outbox (`sync::direct`), by its id.
    Direct(String),
    Other,
}

/// Snapshot uploads in flight at once: each is tens of KB, and events go first.
const SNAPSHOTS_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Uplink,
    Downlink,
    Peers,
}

impl Role {
    /// The name status shows this connection's state under.
    fn component(self) -> &'static str {
        match self {
            Self::Uplink => "broker",
            Self::Downlink => "mqtt_lists",
            Self::Peers => "mqtt_peers",
        }
    }
}

/// Peer events waiting for the store, at most; a full queue holds back what the broker sends.
const PEER_QUEUE: usize = 4096;
/// Peer events learned in one store transaction, at most.
const PEER_BATCH: usize = 256;

/// Acknowledged rows are deleted from the outbox in batches, at least this often.
const ACK_FLUSH: Duration = Duration::from_millis(20);
const ACK_BATCH: usize = 256;
/// Acks waiting for room in the client's queue, at most (a flood of junk makes one each).
const MAX_WAITING_ACKS: usize = 10_000;
/// A connection that stayed up this long was healthy: the next failure starts the backoff
/// over. One that died sooner (a broker that refuses us, a poisoned subscription) keeps
/// backing off, up to `MAX_BACKOFF`.
const HEALTHY_UPTIME: Duration = Duration::from_secs(10);
/// A connection that did its setup (the broker answered our subscription or our first
/// publish) and then stayed up this long held too: one bad message that ends it later does
/// not stretch the wait before the next connection. A broker that refuses us, or a poisoned
/// retained message, ends a connection well before this.
const SETTLED_UPTIME: Duration = Duration::from_secs(2);
/// The longest wait between attempts (plus up to 25% jitter: 5 s at most). A broker back up
/// after an outage is reached within that; a longer ceiling (30 s once) left a broker that
/// was up unreached for over half a minute. A broker that refuses us (a wrong password, a
/// poisoned subscription) still sees one attempt per connection every 4 to 5 s: a TCP connect
/// and a CONNECT packet, which it turns away at no cost worth saving, while the gate reached
/// again a few seconds sooner is worth a lot.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// What `MAX_BACKOFF` and its jitter add up to, at most.
#[cfg(test)]
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// The largest packet the gate sends (rumqttc refuses a larger one and drops the connection).
/// What the gate publishes is a few KB (thumbnails tens of KB); a publish that would be larger
/// is replaced by a bounded one (`fit`), never sent as it is.
const MAX_OUTGOING_PACKET: usize = 1024 * 1024;
/// The largest packet the list connection reads: the most MQTT can carry (a remaining length
/// of 268,435,455 bytes, plus the fixed header). A packet above rumqttc's limit cannot be
/// skipped, only refused by dropping the connection, and a retained one comes back on every
/// reconnect: lists and commands would stop until someone deleted it from the broker. So every
/// packet is read, and one over `mqtt.max_message_bytes` is refused `too_large` with an alarm
/// that names its topic. The broker's `max_packet_size` is what keeps such packets (and the
/// memory they take) away from the gate.
const MAX_INCOMING_PACKET: usize = 268_435_455 + 5;

/// Whether a connection held: it came up, and either stayed up `HEALTHY_UPTIME`, or did its
/// setup and stayed up `SETTLED_UPTIME`. After one that held, the backoff starts over.
fn held(connected: bool, set_up: bool, uptime: Duration) -> bool {
    connected && (uptime >= HEALTHY_UPTIME || (set_up && uptime >= SETTLED_UPTIME))
}

/// Runs both connections until shutdown. `secrets` were loaded from `cfg` at start
/// (`transport::load`), so a bad file stops the daemon before anything runs.
pub async fn run(
    cfg: MqttConfig,
    secrets: Secrets,
    downlink: Downlink,
    shared: Shared,
    kick: mpsc::Receiver<()>,
    peers: Vec<String>,
    shutdown: watch::Receiver<bool>,
) {
    // The downlink tells the uplink when list versions or the mode change, so status shows
    // them at once.
    let link = std::sync::Arc::new(Link {
        cfg,
        secrets,
        topics: downlink.topics.clone(),
        downlink,
        shared,
        lists_changed: watch::channel(0u64).0,
    });
    // Lists are applied by a worker of their own, one after another, so that a command (a
    // lockdown) never waits behind a large list: the list connection hands lists over and
    // goes on reading. Two at most wait, each up to max_message_bytes.
    let (list_tx, list_rx) = mpsc::channel(2);
    // Unbounded, so the worker never waits for the connection (which may itself be waiting
    // for room in `list_tx`): it holds at most one ack per list received.
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let worker = tokio::spawn(list_worker(link.clone(), list_rx, done_tx));
    let down = tokio::spawn(run_role(
        Role::Downlink,
        link.clone(),
        Io {
            list_tx: Some(list_tx),
            done_rx: Some(done_rx),
            ..Io::default()
        },
        shutdown.clone(),
    ));
    let peer_topics: Vec<String> = peers.iter().map(|g| link.topics.events_of(g)).collect();
    let peers = (!peer_topics.is_empty()).then(|| {
        let (peer_tx, peer_rx) = mpsc::channel(PEER_QUEUE);
        let learner = tokio::spawn(peer_worker(link.shared.clone(), peer_rx));
        let conn = tokio::spawn(run_role(
            Role::Peers,
            link.clone(),
            Io {
                peer_tx: Some(peer_tx),
                peer_topics,
                ..Io::default()
            },
            shutdown.clone(),
        ));
        (conn, learner)
    });
    let io = Io {
        kick: Some(kick),
        ..Io::default()
    };
    run_role(Role::Uplink, link, io, shutdown).await;
    let _ = down.await;
    worker.abort();
    if let Some((conn, learner)) = peers {
        let _ = conn.await;
        learner.abort();
    }
}

/// Hands the other gates' events to the store, in batches.
async fn peer_worker(shared: Shared, mut events: mpsc::Receiver<PassEvent>) {
    while let Some(first) = events.recv().await {
        let mut batch = vec![first];
        while batch.len() < PEER_BATCH {
            match events.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let now = crate::wall::now_ms();
        match shared.store.call(move |db| db.learn(&batch, now)).await {
            Ok(n) if n > 0 => tracing::debug!(learned = n, "events of other gates learned"),
            Ok(_) => {}
            Err(e) => {
                crate::limited_error!(error = %e, "events of other gates could not be learned")
            }
        }
    }
}

/// What a role's connection takes in besides the broker, kept across its connections.
#[derive(Default)]
struct Io {
    /// Uplink: signalled when the outbox has new rows.
    kick: Option<mpsc::Receiver<()>>,
    /// Downlink: lists go to the list worker...
    list_tx: Option<mpsc::Sender<(String, bytes::Bytes)>>,
    /// ...and their acks come back, to be published.
    done_rx: Option<mpsc::UnboundedReceiver<(String, Ack)>>,
    /// Peers: the other gates' events go to the peer worker.
    peer_tx: Option<mpsc::Sender<PassEvent>>,
    /// Peers: the event topics of those gates.
    peer_topics: Vec<String>,
    /// Downlink: oversize messages already alarmed, by topic and size (a retained one comes
    /// again on every reconnect; one alarm says it).
    oversize_alarmed: std::collections::HashSet<(String, usize)>,
}

/// Applies lists in the order they came, and hands their acks back to the list connection.
async fn list_worker(
    link: std::sync::Arc<Link>,
    mut lists: mpsc::Receiver<(String, bytes::Bytes)>,
    done: mpsc::UnboundedSender<(String, Ack)>,
) {
    while let Some((topic, payload)) = lists.recv().await {
        let now = crate::wall::now_ms();
        if let Some(ack) = link.downlink.handle(&topic, payload, now).await
            && done.send((topic, ack)).is_err()
        {
            return;
        }
        link.downlink.tidy().await;
    }
}

/// Pass events larger than this on the site's event topics are refused by the transport.
const PEER_MAX_BYTES: usize = 64 * 1024;

/// What every role needs.
struct Link {
    cfg: MqttConfig,
    secrets: Secrets,
    topics: Topics,
    downlink: Downlink,
    shared: Shared,
    lists_changed: watch::Sender<u64>,
}

impl Link {
    /// Tells the store whether the gate is in contact with the centre (`max_offline`).
    async fn contact(&self, connected: bool) {
        let now = crate::wall::now_ms();
        if let Err(e) = self
            .shared
            .store
            .call(move |db| db.contact(connected, now))
            .await
        {
            crate::limited_error!(error = %e, "contact with the centre could not be recorded");
        }
    }
}

async fn run_role(
    role: Role,
    link: std::sync::Arc<Link>,
    mut io: Io,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = reconnect_backoff();
    // An oversize packet is alarmed once, not on every reconnect it causes.
    let mut oversize_alarmed = false;
    loop {
        let mut conn = Connection::new(role, &link);
        let end = conn.run(&mut io, &mut shutdown).await;
        let uptime = conn.connected_at.map_or(Duration::ZERO, |t| t.elapsed());
        let healthy = held(conn.connected, conn.set_up, uptime);
        if role == Role::Uplink && conn.connected {
            link.contact(false).await;
        }
        if healthy {
            // A connection that stayed up ends any oversize episode: a new one is alarmed.
            oversize_alarmed = false;
            backoff.reset();
        }
        if let End::Lost(Some(e)) = &end
            && is_oversize(e)
            && !oversize_alarmed
        {
            oversize_alarmed = true;
            conn.alarm_oversize(e).await;
        }
        match end {
            End::Shutdown => return,
            End::Lost(_) if conn.tls_failed => {
                link.shared.health.set(role.component(), "tls_error")
            }
            End::Lost(_) => link.shared.health.set(role.component(), "disconnected"),
        }
        // rumqttc retries at once on its own (#703): wait here, with jitter.
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), MAX_BACKOFF)
}

enum End {
    Shutdown,
    Lost(Option<ConnectionError>),
}

/// An event or alarm of `gated demo`, with `"demo": true` added. Rows are the store's own JSON
/// objects; one that is not (it cannot happen) goes out unchanged rather than not at all.
fn mark_demo(payload: &str) -> Vec<u8> {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.insert("demo".into(), serde_json::Value::Bool(true));
            serde_json::to_vec(&fields).unwrap_or_else(|_| payload.as_bytes().to_vec())
        }
        _ => payload.as_bytes().to_vec(),
    }
}

fn is_oversize(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

fn client_id(role: Role, cfg: &MqttConfig) -> String {
    match role {
        Role::Uplink => cfg.client_id.clone(),
        Role::Downlink => format!("{}-lists", cfg.client_id),
        Role::Peers => format!("{}-peers", cfg.client_id),
    }
}

/// The client ids the link connects under: two, three with `policy.peers`. With
/// `{client_id}` in `mqtt.tls.cert_file`, each needs a certificate of its own
/// (`transport::load_for`).
pub fn client_ids(cfg: &MqttConfig, peers: bool) -> Vec<String> {
    let mut roles = vec![Role::Uplink, Role::Downlink];
    if peers {
        roles.push(Role::Peers);
    }
    roles.into_iter().map(|r| client_id(r, cfg)).collect()
}

/// The uplink's options without its last will, for the one connection of a gate that cannot
/// start (`sync::start_report`): its own status is what the broker must keep, and a will fired
/// by a connection cut before its DISCONNECT would replace it with a bare `online: false`.
pub fn report_options(cfg: &MqttConfig, secrets: &Secrets) -> MqttOptions {
    base_options(Role::Uplink, cfg, secrets)
}

fn options(role: Role, cfg: &MqttConfig, secrets: &Secrets, topics: &Topics) -> MqttOptions {
    let mut o = base_options(role, cfg, secrets);
    if role == Role::Uplink {
        let will: &[u8] = if cfg.demo {
            br#"{"online":false,"demo":true}"#
        } else {
            br#"{"online":false}"#
        };
        o.set_last_will(LastWill::new(
            topics.status(),
            will.to_vec(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    o
}

fn base_options(role: Role, cfg: &MqttConfig, secrets: &Secrets) -> MqttOptions {
    let mut o = MqttOptions::new(client_id(role, cfg), cfg.host.clone(), cfg.port);
    // TLS and the username and password. One login may serve every connection (a broker user
    // per gate), or each connection has a certificate of its own whose name the broker makes
    // its client id (docs/broker.md): `transport::apply` picks it by the client id.
    transport::apply(&mut o, secrets);
    o.set_keep_alive(cfg.keep_alive);
    o.set_clean_session(true);
    o.set_inflight(cfg.inflight);
    match role {
        // Every packet is read, so that an oversize list is acked `too_large` instead of
        // breaking the connection on every reconnect (`MAX_INCOMING_PACKET`).
        Role::Downlink => o.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET),
        // Pass events are well under a kilobyte; anything larger on an event topic is junk.
        Role::Peers => o.set_max_packet_size(PEER_MAX_BYTES, MAX_OUTGOING_PACKET),
        // Subscribes to nothing: only PUBACKs and the like come in.
        Role::Uplink => o.set_max_packet_size(64 * 1024, MAX_OUTGOING_PACKET),
    };
    o
}

struct Connection<'a> {
    role: Role,
    link: &'a Link,
    client: AsyncClient,
    /// What the event loop task saw; it ends after the first error.
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    poller: tokio::task::JoinHandle<()>,
    connected: bool,
    /// When the broker accepted the connection.
    connected_at: Option<Instant>,
    /// The broker answered our setup: the SUBACK of our subscriptions, or (the uplink) the
    /// PUBACK of a publish.
    set_up: bool,
    /// The connection ended on a TLS failure (status shows `tls_error`, not `disconnected`).
    tls_failed: bool,
    /// Publishes queued with the client but not yet announced by the event loop.
    queued: VecDeque<Tag>,
    /// Announced publishes awaiting their PUBACK, by packet id.
    inflight: HashMap<u16, Tag>,
    /// The last outbox row queued on this connection.
    cursor: i64,
    /// Rows acknowledged but not yet deleted from the outbox.
    acked: Vec<i64>,
    /// The last outbox read failed: retry on the next flush tick, not only on the next kick.
    fill_failed: bool,
    /// Acks (serialized) that did not fit in the client's queue yet, oldest first.
    acks_waiting: VecDeque<Vec<u8>>,
}

impl<'a> Connection<'a> {
    fn new(role: Role, link: &'a Link) -> Self {
        // Room for the whole window plus acks and status, so `try_publish` never finds it full.
        let cap = usize::from(link.cfg.inflight) + 64;
        let (client, mut eventloop) =
            AsyncClient::new(options(role, &link.cfg, &link.secrets, &link.topics), cap);
        // Bounded: while a large list is being applied, the poller waits instead of reading
        // (and buffering) more of what the broker sends.
        let (tx, events) = mpsc::channel(256);
        let poller = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let last = matches!(ev, Err(_) | Ok(Event::Outgoing(Outgoing::Disconnect)));
                if tx.send(ev).await.is_err() || last {
                    return;
                }
            }
        });
        Self {
            role,
            link,
            client,
            events,
            poller,
            connected: false,
            connected_at: None,
            set_up: false,
            tls_failed: false,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            cursor: 0,
            acked: Vec::new(),
            fill_failed: false,
            acks_waiting: VecDeque::new(),
        }
    }

    fn broker(&self) -> String {
        format!("{}:{}", self.link.cfg.host, self.link.cfg.port)
    }

    async fn run(&mut self, io: &mut Io, shutdown: &mut watch::Receiver<bool>) -> End {
        let uplink = self.role == Role::Uplink;
        let mut flush = tokio::time::interval(ACK_FLUSH);
        let mut status_tick = tokio::time::interval(self.link.cfg.status_interval);
        let mut health = self.link.shared.health.watch();
        let mut lists = self.link.lists_changed.subscribe();
        // A mode change that no downlink message made (the fire contact) shows at once too.
        let mut mode = self.link.shared.mode.clone();
        mode.mark_unchanged();
        let end = loop {
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect))) | None => break End::Lost(None),
                    Some(Ok(ev)) => {
                        if let Err(why) = self.on_event(ev, io).await {
                            tracing::warn!(broker = %self.broker(), role = ?self.role, "{why}; reconnecting");
                            break End::Lost(None);
                        }
                    }
                    Some(Err(e)) => {
                        self.on_error(&e);
                        break End::Lost(Some(e));
                    }
                },
                Some(()) = recv(&mut io.kick), if self.connected => self.fill().await,
                Some((topic, ack)) = recv_unbounded(&mut io.done_rx), if self.connected => self.publish_ack(&topic, ack),
                _ = flush.tick() => {
                    if uplink {
                        self.flush_acks().await;
                        if self.fill_failed {
                            self.fill().await;
                        }
                    } else if self.connected {
                        self.send_acks();
                    }
                }
                _ = status_tick.tick(), if uplink && self.connected => {
                    self.link.contact(true).await;
                    self.publish_status(true).await
                }
                Ok(()) = health.changed(), if uplink && self.connected => self.publish_status(true).await,
                Ok(()) = lists.changed(), if uplink && self.connected => self.publish_status(true).await,
                Ok(()) = mode.changed(), if uplink && self.connected => self.publish_status(true).await,
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

    /// Logs why the connection ended: a TLS failure or a refused login as one error line that
    /// says what it means and which config key to look at, anything else as a lost connection.
    fn on_error(&mut self, e: &ConnectionError) {
        let tls = self.link.cfg.tls.as_ref();
        if let Some(why) = transport::login_refused(e, &self.link.secrets) {
            tracing::error!(role = ?self.role, "MQTT login to broker {} failed: {why}", self.broker());
            return;
        }
        match tls.and_then(|t| transport::tls_failure(e, t)) {
            Some(why) => {
                self.tls_failed = true;
                let what = if self.connected {
                    "session"
                } else {
                    "handshake"
                };
                tracing::error!(role = ?self.role, "TLS {what} with broker {} failed: {why}", self.broker());
            }
            None => {
                let what = ended(self.connected, &self.broker(), e);
                tracing::warn!(role = ?self.role, "{what}");
            }
        }
    }

    async fn on_event(&mut self, ev: Event, io: &mut Io) -> Result<(), String> {
        match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    return Err(format!("broker refused the connection: {:?}", ack.code));
                }
                tracing::info!(broker = %self.broker(), role = ?self.role, "MQTT connected");
                self.connected = true;
                self.connected_at = Some(Instant::now());
                if self.role != Role::Peers {
                    self.link.shared.health.set(self.role.component(), "ok");
                }
                match self.role {
                    Role::Uplink => {
                        // What the last connection took and the broker did not acknowledge
                        // went with it (clean session): sent again, first.
                        // They go first, before anything that waits for the store.
                        self.link.shared.direct.resend();
                        self.send_direct();
                        self.link.contact(true).await;
                        self.publish_status(true).await;
                        // Everything unacknowledged goes again, oldest first.
                        self.cursor = 0;
                        self.fill().await;
                    }
                    Role::Downlink => {
                        let subs = downlink::subscriptions(&self.link.topics)
                            .into_iter()
                            .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce));
                        self.client
                            .try_subscribe_many(subs)
                            .map_err(|e| format!("subscribe failed: {e}"))?;
                    }
                    Role::Peers => {
                        let subs = io
                            .peer_topics
                            .iter()
                            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                        self.client
                            .try_subscribe_many(subs)
                            .map_err(|e| format!("subscribe failed: {e}"))?;
                    }
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                // Every publish of ours is in `queued`; an announcement without one means the
                // mapping cannot be trusted: start over on a new connection.
                let tag = self
                    .queued
                    .pop_front()
                    .ok_or_else(|| format!("publish {pkid} announced but none was queued"))?;
                self.inflight.insert(pkid, tag);
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                // A packet-id collision: the broker acked out of order. Start over cleanly.
                return Err(format!("packet id {pkid} collided"));
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                self.set_up = true;
                match self.inflight.remove(&ack.pkid) {
                    Some(Tag::Outbox(rowid)) => {
                        self.acked.push(rowid);
                        if self.acked.len() >= ACK_BATCH {
                            self.flush_acks().await;
                        }
                    }
                    Some(Tag::Snapshot(id)) => self.snapshot_acked(id).await,
                    Some(Tag::Direct(id)) => self.link.shared.direct.acked(&id),
                    _ => {}
                }
                match self.role {
                    // Refill once an eighth of the window is free, not on every PUBACK: one
                    // read of the outbox then queues many rows.
                    Role::Uplink if self.room() >= self.refill_at() => self.fill().await,
                    Role::Uplink | Role::Peers => {}
                    Role::Downlink => self.send_acks(),
                }
            }
            Event::Incoming(Packet::SubAck(_)) if self.role == Role::Downlink => {
                self.set_up = true;
            }
            Event::Incoming(Packet::Publish(p)) if self.role == Role::Downlink => {
                self.on_message(&p.topic, p.payload, p.retain, io).await;
            }
            Event::Incoming(Packet::SubAck(ack)) if self.role == Role::Peers => {
                // Ok once the broker has taken every subscription: from here on the other
                // gates' events arrive. A refused one (the broker's ACL) leaves compound-wide
                // anti-passback off, which status must say.
                self.set_up = true;
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                let state = if refused {
                    tracing::error!(
                        topics = ?io.peer_topics,
                        "the broker refused a subscription to the peer gates' events: their \
                         passes are not learned (check the broker's ACL for this gate)"
                    );
                    "subscribe_refused"
                } else {
                    "ok"
                };
                self.link.shared.health.set(self.role.component(), state);
            }
            Event::Incoming(Packet::Publish(p)) if self.role == Role::Peers => {
                // Hostile input like any other: what does not parse as a pass event, or names
                // another gate than the topic it came on (a gate may publish only on its own
                // topic, so only this holds it to its own name), is skipped. The store checks
                // site and seq.
                match serde_json::from_slice::<PassEvent>(&p.payload) {
                    Ok(e)
                        if io.peer_topics.contains(&p.topic)
                            && p.topic == self.link.topics.events_of(&e.gate) =>
                    {
                        if let Some(tx) = &io.peer_tx {
                            let _ = tx.send(e).await;
                        }
                    }
                    Ok(e) => {
                        let gate = bounded(&e.gate, gated_contract::MAX_ECHO_BYTES);
                        tracing::warn!(topic = %p.topic, %gate, "a pass event names another gate than its topic; skipped")
                    }
                    Err(e) => {
                        // serde quotes what it refused: bounded like every echo.
                        let error = e.to_string();
                        let error = bounded(&error, MAX_DETAIL_BYTES);
                        tracing::debug!(topic = %p.topic, %error, "not a pass event; skipped")
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A command is carried out here and now; a list goes to the list worker (in order), and
    /// its ack comes back through `recv_done`.
    async fn on_message(
        &mut self,
        topic: &str,
        payload: bytes::Bytes,
        retained: bool,
        io: &mut Io,
    ) {
        let link = self.link;
        let oversize = payload.len() > link.downlink.max_bytes;
        if oversize
            && io
                .oversize_alarmed
                .insert((topic.to_string(), payload.len()))
        {
            self.alarm_oversize_list(topic, payload.len(), retained)
                .await;
        }
        // An oversize message is refused here, unread: it is not held in the list queue.
        if !oversize
            && topic != link.topics.cmd()
            && let Some(list_tx) = &io.list_tx
        {
            // Waits only when two lists already wait: that holds back what the broker sends.
            let _ = list_tx.send((topic.to_string(), payload)).await;
            return;
        }
        let now = crate::wall::now_ms();
        let Some(ack) = link.downlink.handle(topic, payload, now).await else {
            return;
        };
        self.publish_ack(topic, ack);
    }

    fn publish_ack(&mut self, topic: &str, ack: Ack) {
        let link = self.link;
        // After a gap the snapshot must come again: resubscribing to the snapshot topic makes
        // the broker resend the retained one. (Not after a store error: that would rewrite a
        // large list in a loop on a full disk; the next reconnect brings it again.)
        if ack.error.as_deref() == Some("version_gap")
            && let Some((list, _)) = link.topics.parse_list_topic(topic)
        {
            let t = link.topics.list(list);
            let _ = self.client.try_unsubscribe(t.clone());
            let _ = self.client.try_subscribe(t, QoS::AtLeastOnce);
        }
        let body = fit(
            &link.topics.ack(),
            serde_json::to_vec(&ack).unwrap_or_default(),
        );
        if self.acks_waiting.len() >= MAX_WAITING_ACKS {
            // Only a flood of messages (junk, most likely) gets here: keep the newest acks.
            self.acks_waiting.pop_front();
            tracing::warn!(
                "more than {MAX_WAITING_ACKS} acks wait for the broker; the oldest is dropped"
            );
        }
        self.acks_waiting.push_back(body);
        self.send_acks();
        // The uplink republishes the status: new list versions or mode show at once, and this
        // is also how `resync` is carried out.
        link.lists_changed.send_modify(|v| *v += 1);
    }

    /// A packet over the peers connection's ceiling cannot be read, and one retained on an
    /// event topic comes again on every reconnect. Say so loudly: the fix is the broker's
    /// `max_packet_size` (config/mosquitto.example.conf), or clearing the retained message.
    /// (The list connection reads every packet: `MAX_INCOMING_PACKET`.)
    async fn alarm_oversize(&self, e: &ConnectionError) {
        let detail = format!(
            "the broker sent a packet over the {PEER_MAX_BYTES}-byte ceiling of the {} \
             connection: {e}. It drops it and retries with backoff; limit max_packet_size on the \
             broker, or clear the retained message",
            self.role.component()
        );
        tracing::error!("{detail}");
        let _ = self
            .link
            .shared
            .alarm("oversize_packet", "broker", &detail)
            .await;
    }

    /// A retained list over `max_message_bytes` is refused `too_large` on every reconnect,
    /// and the list it should carry never arrives: only the broker's side can end that.
    /// (A message that arrives live carries no retained flag: any oversize one is alarmed.)
    async fn alarm_oversize_list(&self, topic: &str, bytes: usize, retained: bool) {
        let what = if retained {
            "a retained message"
        } else {
            "a message"
        };
        let detail = format!(
            "{what} of {bytes} bytes on {topic} is over mqtt.max_message_bytes ({}): refused \
             too_large, the list in force stays. If it is retained it is refused again on every \
             reconnect: delete it from the broker (publish an empty retained message on it, \
             e.g. mosquitto_pub -r -n -t {topic}) or republish the list smaller; set the \
             broker's max_packet_size to keep such messages out",
            self.link.downlink.max_bytes
        );
        tracing::error!("{detail}");
        let _ = self
            .link
            .shared
            .alarm("oversize_list", "mqtt_lists", &detail)
            .await;
    }

    /// Hands waiting acks to the client while its queue has room; the rest go when PUBACKs
    /// free it. A message flood must not lose the ack of a command that came after it.
    fn send_acks(&mut self) {
        while let Some(body) = self.acks_waiting.front() {
            let ok = self
                .client
                .try_publish(
                    self.link.topics.ack(),
                    QoS::AtLeastOnce,
                    false,
                    body.clone(),
                )
                .is_ok();
            if !ok {
                return;
            }
            self.queued.push_back(Tag::Other);
            self.acks_waiting.pop_front();
        }
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>, retain: bool, tag: Tag) -> bool {
        let payload = fit(&topic, payload);
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

    /// Free places in the window of publishes awaiting their PUBACK.
    fn room(&self) -> usize {
        usize::from(self.link.cfg.inflight).saturating_sub(self.queued.len() + self.inflight.len())
    }

    /// How much room the window needs before a PUBACK refills it.
    fn refill_at(&self) -> usize {
        (usize::from(self.link.cfg.inflight) / 8).max(1)
    }

    /// Hands the alarms the store could not record to the client (`sync::direct`). Each is
    /// kept until its PUBACK (`Tag::Direct`), and sent again on the next connection if this one
    /// is lost first.
    fn send_direct(&mut self) {
        while let Some(a) = self.link.shared.direct.take() {
            let body = a.body(&self.link.topics, self.link.cfg.demo);
            if !self.publish(
                self.link.topics.alarm(),
                body,
                false,
                Tag::Direct(a.id.clone()),
            ) {
                self.link.shared.direct.untake(&a.id);
                return;
            }
        }
    }

    /// Awaits a store call, handing the alarms the store could not record to the client
    /// meanwhile: a store slow to answer (a write waiting for a lock) must not hold them up.
    async fn meanwhile<T>(&mut self, call: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => return r,
                _ = self.link.shared.direct.waiting(), if self.connected => self.send_direct(),
            }
        }
    }

    /// Queues outbox rows until the window is full, after the alarms the store could not
    /// record (they go first: they are what the outbox lacks).
    async fn fill(&mut self) {
        if self.connected {
            self.send_direct();
        }
        while self.connected {
            let room = self.room();
            if room == 0 {
                return;
            }
            let after = self.cursor;
            let link = self.link;
            let rows = match self
                .meanwhile(link.shared.store.call(move |db| db.pending(after, room)))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    crate::limited_error!(error = %e, "cannot read the outbox");
                    self.fill_failed = true;
                    return;
                }
            };
            self.fill_failed = false;
            if rows.is_empty() {
                // Events and alarms first; then the snapshots, a few at a time.
                self.fill_snapshots().await;
                return;
            }
            for row in rows {
                if self.acked.contains(&row.rowid) {
                    self.cursor = row.rowid;
                    continue; // acked, delete pending
                }
                let topic = match row.stream {
                    Stream::Event => self.link.topics.event(),
                    Stream::Alarm => self.link.topics.alarm(),
                };
                let payload = if self.link.cfg.demo {
                    mark_demo(&row.payload)
                } else {
                    row.payload.into_bytes()
                };
                if !self.publish(topic, payload, false, Tag::Outbox(row.rowid)) {
                    return;
                }
                self.cursor = row.rowid;
            }
        }
    }

    /// The snapshots queued or awaiting their PUBACK on this connection, by pass id.
    fn snapshots_out(&self) -> Vec<String> {
        self.queued
            .iter()
            .chain(self.inflight.values())
            .filter_map(|t| match t {
                Tag::Snapshot(id) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Queues snapshots not uploaded yet, up to `SNAPSHOTS_IN_FLIGHT` and the window's room.
    async fn fill_snapshots(&mut self) {
        let skip = self.snapshots_out();
        let want = SNAPSHOTS_IN_FLIGHT
            .saturating_sub(skip.len())
            .min(self.room());
        if want == 0 {
            return;
        }
        let snaps = match self
            .link
            .shared
            .store
            .call(move |db| db.snapshots_to_upload(&skip, want))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                crate::limited_error!(error = %e, "cannot read the snapshots");
                return;
            }
        };
        for (id, jpeg) in snaps {
            let topic = self.link.topics.snapshot(&id);
            if packet_size(&topic, jpeg.len()) > MAX_OUTGOING_PACKET {
                // A JPEG cannot be cut: it is not sent, and marked done so it is not tried
                // again on every fill.
                tracing::error!(
                    snapshot = %id,
                    bytes = jpeg.len(),
                    "a thumbnail is over the {MAX_OUTGOING_PACKET}-byte packet limit; not uploaded \
                     (lower [snapshot] thumb_px)"
                );
                let done = id.clone();
                let _ = self
                    .link
                    .shared
                    .store
                    .call(move |db| db.snapshot_uploaded(&done))
                    .await;
                continue;
            }
            if !self.publish(topic, jpeg, false, Tag::Snapshot(id)) {
                return;
            }
        }
    }

    /// The broker has a snapshot: marked uploaded (a failure uploads it again later).
    async fn snapshot_acked(&mut self, id: String) {
        let done = id.clone();
        if let Err(e) = self
            .link
            .shared
            .store
            .call(move |db| db.snapshot_uploaded(&done))
            .await
        {
            crate::limited_error!(error = %e, snapshot = %id, "cannot mark the snapshot uploaded");
        }
        // Events and alarms first, then more snapshots.
        self.fill().await;
    }

    async fn flush_acks(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.acked);
        let n = rows.len();
        let retry = rows.clone();
        if let Err(e) = self.link.shared.store.call(move |db| db.acked(&rows)).await {
            // Keep them; they are deleted on the next flush (or sent again after a restart).
            crate::limited_error!(error = %e, rows = n, "cannot delete acknowledged rows");
            self.acked = retry;
        }
    }

    /// Builds the status. A free-standing borrow of `Shared`, not of `self`: the client is not
    /// `Sync`, so `&self` must not be held across an await.
    async fn status(shared: &Shared, online: bool) -> Status {
        let now = crate::wall::now_ms();
        let store = shared
            .store
            .call(move |db| {
                let clock = db.clock_state(now);
                Ok((
                    db.list_versions()?,
                    db.outbox_stats()?,
                    clock,
                    db.offline_since(),
                    db.last_offline(),
                ))
            })
            .await;
        let (mut clock, mut clock_reason, mut offline_since) = ("unknown".to_string(), None, None);
        let mut last_offline = None;
        let (lists, outbox, store_state) = match store {
            Ok((l, o, c, off, last)) => {
                last_offline = last.map(|o| LastOffline {
                    since: o.since.map(format_ts),
                    until: format_ts(o.until),
                    ms: o.since.map(|s| o.until.saturating_sub(s)),
                    granted: o.counts.granted,
                    denied: o.counts.denied,
                    offline_limit: o.counts.offline_limit,
                });
                clock = c.as_str().to_string();
                if let crate::core::ClockState::Untrusted(why) = c {
                    clock_reason = Some(why.as_str().to_string());
                }
                offline_since = off.map(|since| since.map_or("never".into(), format_ts));
                (
                    l,
                    OutboxStatus {
                        pending: o.pending,
                        oldest_ts: o.oldest_ts.map(format_ts),
                    },
                    None,
                )
            }
            Err(e) => {
                crate::limited_error!(error = %e, "status: store unavailable");
                (
                    ListVersions {
                        staff: 0,
                        visitors: 0,
                        deny: 0,
                        calendar: 0,
                    },
                    OutboxStatus {
                        pending: 0,
                        oldest_ts: None,
                    },
                    Some("unavailable"),
                )
            }
        };
        let mut devices = shared.health.snapshot();
        devices.remove("broker");
        devices.remove(crate::clock::HEALTH_KEY);
        if let Some(s) = store_state
            // A store found damaged says so: it is why the store is unavailable.
            && devices.get("store").map(String::as_str) != Some("corrupt")
        {
            // Zeros above would read as "no lists, nothing pending": say they are unknown.
            devices.insert("store".into(), s.into());
        }
        Status {
            online,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ts: format_ts(now),
            mode: shared.mode.borrow().as_str().to_string(),
            lists,
            outbox,
            devices,
            clock,
            clock_reason,
            offline_since,
            last_offline,
            clock_challenge: None,
            demo: false,
        }
    }

    async fn publish_status(&mut self, online: bool) {
        let link = self.link;
        let mut s = self.meanwhile(Self::status(&link.shared, online)).await;
        s.demo = self.link.cfg.demo;
        s.clock_challenge = online.then(|| self.link.downlink.control.clock_challenge());
        let body = serde_json::to_vec(&s).unwrap_or_default();
        self.publish(self.link.topics.status(), body, true, Tag::Other);
    }

    /// On shutdown: say we are going offline (retained), then disconnect cleanly.
    async fn goodbye(&mut self) {
        if !self.connected {
            return;
        }
        if self.role == Role::Uplink {
            self.publish_status(false).await;
        }
        let _ = self.client.try_disconnect();
        let drain = async {
            while let Some(ev) = self.events.recv().await {
                match ev {
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        match self.inflight.remove(&ack.pkid) {
                            Some(Tag::Outbox(rowid)) => self.acked.push(rowid),
                            Some(Tag::Direct(id)) => self.link.shared.direct.acked(&id),
                            _ => {}
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(tag) = self.queued.pop_front() {
                            self.inflight.insert(pkid, tag);
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
}

/// The next message of a channel this role has; a role without it never wakes on it.
async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_unbounded<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// What a connection's end means in words: a connection the broker never accepted (a wrong
/// port, no broker) is not a lost one.
fn ended(connected: bool, broker: &str, e: &dyn std::fmt::Display) -> String {
    if connected {
        format!("MQTT connection to broker {broker} lost: {e}")
    } else {
        format!("could not connect to MQTT broker {broker}: {e}")
    }
}

/// The size of the MQTT PUBLISH packet (QoS 1) that carries `payload` on `topic`.
fn packet_size(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// `payload` as it can be sent: unchanged when its packet fits `MAX_OUTGOING_PACKET`, which is
/// every time unless something unbounded got into it. Otherwise (logged) the same JSON with
/// every string cut to `MAX_DETAIL_BYTES`, or, failing that, a stub that keeps the message's
/// identity (`id`, `seq`, `ref`) and says it was too large. A publish rumqttc refuses would take
/// the whole connection down, and with it the acks and commands behind it.
fn fit(topic: &str, payload: Vec<u8>) -> Vec<u8> {
    if packet_size(topic, payload.len()) <= MAX_OUTGOING_PACKET {
        return payload;
    }
    let bytes = payload.len();
    tracing::error!(
        topic,
        bytes,
        "a message is over the {MAX_OUTGOING_PACKET}-byte packet limit; its strings are cut"
    );
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&payload) else {
        return stub(None, bytes);
    };
    cut_strings(&mut v);
    match serde_json::to_vec(&v) {
        Ok(cut) if packet_size(topic, cut.len()) <= MAX_OUTGOING_PACKET => cut,
        _ => stub(Some(&v), bytes),
    }
}

fn cut_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.len() > MAX_DETAIL_BYTES => {
            *s = bounded(s, MAX_DETAIL_BYTES).into_owned();
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(cut_strings),
        serde_json::Value::Object(o) => o.values_mut().for_each(cut_strings),
        _ => {}
    }
}

fn stub(v: Option<&serde_json::Value>, bytes: usize) -> Vec<u8> {
    let mut out = serde_json::Map::new();
    for key in ["id", "seq", "site", "gate", "ref", "ok", "error", "ts"] {
        if let Some(x) = v.and_then(|v| v.get(key)) {
            out.insert(key.into(), x.clone());
        }
    }
    out.insert(
        "detail".into(),
        format!("the gate's message was {bytes} bytes, over its packet limit; not sent").into(),
    );
    serde_json::to_vec(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_held_starts_the_backoff_over() {
        let s = Duration::from_secs;
        // Never up: a wrong port, a refused login.
        assert!(!held(false, false, s(60)));
        // Up, but ended before its setup was answered or at once after it: a poisoned
        // retained message, a broker that drops us.
        assert!(!held(true, false, s(1)));
        assert!(!held(true, true, Duration::from_millis(300)));
        // Set up and up for a while, then ended by one bad message: held.
        assert!(held(true, true, s(3)));
        // Up long enough, whatever it did.
        assert!(held(true, false, HEALTHY_UPTIME));
    }

    #[test]
    fn a_broker_back_up_is_tried_again_within_seconds() {
        let mut backoff = reconnect_backoff();
        let waits: Vec<Duration> = (0..50).map(|_| backoff.next_delay()).collect();
        let longest = waits.iter().max().copied().unwrap_or_default();
        assert!(
            longest <= MAX_RECONNECT_WAIT,
            "waited {longest:?} between attempts"
        );
        // Still backing off from a broker that refuses us: not at once, again and again.
        assert!(waits[10..].iter().all(|w| *w >= MAX_BACKOFF), "{waits:?}");
    }

    #[test]
    fn a_connection_never_made_is_not_called_lost() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let never = ended(false, "127.0.0.1:1", &refused);
        assert!(
            never.starts_with("could not connect to MQTT broker 127.0.0.1:1: "),
            "{never}"
        );
        assert!(!never.contains("lost"), "{never}");
        let lost = ended(true, "127.0.0.1:1883", &refused);
        assert!(
            lost.starts_with("MQTT connection to broker 127.0.0.1:1883 lost: "),
            "{lost}"
        );
    }

    #[test]
    fn what_does_not_fit_a_packet_is_cut_not_sent_as_it_is() {
        let topic = "acs/hq/east-1/ack";
        let small = br#"{"ref":"staff","ok":false}"#.to_vec();
        assert_eq!(fit(topic, small.clone()), small);
        let ack = serde_json::json!({"ref": "staff", "ok": false, "error": "malformed",
            "detail": "K".repeat(2 << 20), "ts": "2026-11-21T09:00:00.000Z"});
        let out = fit(topic, serde_json::to_vec(&ack).expect("json"));
        assert!(packet_size(topic, out.len()) <= MAX_OUTGOING_PACKET);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
        assert_eq!(
            (v["ref"].as_str(), v["error"].as_str()),
            (Some("staff"), Some("malformed"))
        );
        assert!(
            v["detail"]
                .as_str()
                .expect("detail")
                .contains("more bytes]")
        );
        // Not JSON, or too many strings to cut: a stub that says so.
        let junk = vec![b'x'; 2 << 20];
        let out = fit(topic, junk);
        assert!(String::from_utf8_lossy(&out).contains("over its packet limit"));
        // The limit is the packet, header included.
        assert_eq!(packet_size("t", 0), 1 + 1 + 2 + 1 + 2);
        assert_eq!(packet_size("t", 200), 1 + 2 + 2 + 1 + 2 + 200);
    }
}
