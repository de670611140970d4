//! The shared harness: a real mosquitto on a free port, hw-sim devices on free ports, the real
//! `gated` binary, and an MQTT subscriber that records what an operator would see. Waits are
//! on conditions with a deadline, never fixed sleeps; nothing is shared between tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hw_sim::{ReaderRegisters, RelayRegisters, SimReader, SimRelay, SimServer};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(10);

/// The admin key of the tests: every gate the harness starts trusts it as `ops-test`.
pub fn admin() -> &'static gated_contract::envelope::AdminKey {
    static KEY: std::sync::OnceLock<gated_contract::envelope::AdminKey> =
        std::sync::OnceLock::new();
    KEY.get_or_init(|| gated_contract::envelope::AdminKey::generate("ops-test").expect("key"))
}

/// `body` in an envelope signed by the test admin key.
pub fn signed(body: impl AsRef<[u8]>) -> Vec<u8> {
    admin().seal(body.as_ref())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// Polls `cond` until it returns `Some`, failing the test after `deadline`.
pub async fn wait_for<T>(what: &str, deadline: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- mosquitto -------------------------------------------------------------------------------

/// Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
pub fn mosquitto_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("mosquitto"))
            .collect::<Vec<_>>()
    });
    on_path
        .chain([PathBuf::from("/usr/sbin/mosquitto")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

/// A mosquitto of the test's own, on a free port, with persistence in a temporary directory
/// (so a subscriber's session survives a broker restart, as the operator's would).
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Config lines before the harness's own listener (`start_with`).
    extra: String,
}

impl Broker {
    pub async fn start() -> Broker {
        Self::start_with("").await
    }

    /// The same, with `extra` config lines written before the harness's own listener.
    pub async fn start_with(extra: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Broker {
            port: free_port(),
            dir,
            child: None,
            extra: extra.to_string(),
        };
        // A free port can be taken by another test between our probe and mosquitto's bind:
        // then try another one.
        for _ in 0..5 {
            if b.spawn().await {
                return b;
            }
            b.port = free_port();
        }
        panic!("mosquitto would not start; its log:\n{}", b.log());
    }

    /// Starts mosquitto on `self.port`; false when it exited at once (port taken).
    async fn spawn(&mut self) -> bool {
        let conf = self.dir.path().join("mosquitto.conf");
        // Started as root, mosquitto drops to the `mosquitto` user, which cannot write our
        // private temporary directory: persistence would fail silently. Stay the test's user
        // (the setting is ignored when not root).
        let user = Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".into());
        std::fs::write(
            &conf,
            format!(
                "{extra}listener {port} 127.0.0.1\nallow_anonymous true\nuser {user}\npersistence true\n\
                 persistence_location {dir}/\nlog_dest file {dir}/mosquitto.log\nlog_type all\n",
                extra = self.extra,
                port = self.port,
                dir = self.dir.path().display(),
            ),
        )
        .expect("write mosquitto.conf");
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start mosquitto ({e}). The tests need the real broker: \
                     install it with `apt-get install -y mosquitto` (Debian), or run `tests/run`, \
                     which does"
                )
            });
        // Ours is up when its own log says it listens on the port (a connect alone could reach
        // another process that took the port first) and it is still running.
        let listening = format!("listen socket on port {}", self.port);
        let up = wait_for("mosquitto to listen or exit", DEADLINE, || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Some(false);
            }
            let log = self.log();
            let started = log.rsplit(" starting").next().unwrap_or("");
            (started.contains(&listening) && TcpStream::connect(("127.0.0.1", self.port)).is_ok())
                .then_some(true)
        })
        .await;
        if up {
            self.child = Some(child);
        }
        up
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker (SIGTERM, so it saves its sessions), as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn().await,
            "mosquitto did not restart; its log:\n{}",
            self.log()
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default();
            eprintln!("---- mosquitto log ----\n{log}");
        }
    }
}

// ---- MQTT client as the centre sees it -------------------------------------------------------

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

// ---- simulated devices -----------------------------------------------------------------------

/// The reference gate: reader1 on lane 0 (entry), reader2 on lane 1 (exit), one relay board.
pub struct Devices {
    pub reader1_srv: SimServer,
    pub reader2_srv: SimServer,
    pub relay_srv: SimServer,
    pub reader1: SimReader,
    pub reader2: SimReader,
    pub relay: SimRelay,
}

impl Devices {
    pub async fn start() -> Devices {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let reader1_srv = SimServer::bind(any).await.expect("bind reader1");
        let reader2_srv = SimServer::bind(any).await.expect("bind reader2");
        let relay_srv = SimServer::bind(any).await.expect("bind relay");
        Devices {
            reader1: reader1_srv.add_reader(1, ReaderRegisters::default()),
            reader2: reader2_srv.add_reader(1, ReaderRegisters::default()),
            relay: relay_srv.add_relay(1, 2, RelayRegisters::default()),
            reader1_srv,
            reader2_srv,
            relay_srv,
        }
    }
}

// ---- the daemon --------------------------------------------------------------------------------

pub struct Daemon {
    config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// Environment variables set for `gated` on top of the test's own.
    env: Vec<(String, std::ffi::OsString)>,
}

pub fn config_text(db: &Path, broker_port: u16, d: &Devices) -> String {
    format!(
        r#"[gate]
site = "hq"
gate = "east-1"
[store]
path = "{db}"
[mqtt]
host = "127.0.0.1"
port = {broker_port}
keep_alive_s = 5
status_interval_s = 60
max_message_bytes = 262144
[[trust.key]]
id = "ops-test"
public = "{admin}"
[policy]
min_face_score = 0.8
[clock]
sync = "none"
[[relay]]
name = "relay1"
address = "{relay}"
timeout_ms = 200
[[lane]]
id = 0
relay = "relay1"
release_ms = 3000
[[lane]]
id = 1
relay = "relay1"
release_ms = 2500
[[reader]]
name = "reader1"
address = "{r1}"
lane = 0
direction = "in"
poll_ms = 20
timeout_ms = 200
[[reader]]
name = "reader2"
address = "{r2}"
lane = 1
direction = "out"
poll_ms = 20
timeout_ms = 200
"#,
        db = db.display(),
        relay = d.relay_srv.local_addr(),
        r1 = d.reader1_srv.local_addr(),
        r2 = d.reader2_srv.local_addr(),
        admin = admin().public_b64(),
    )
}

impl Daemon {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(env!("CARGO_BIN_EXE_gated"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("GATED_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gated");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush, close or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Restarts the daemon and waits until it has read both readers' mailboxes empty: a swipe
/// queued before that is of unknown age, and refused `stale_swipe`.
pub async fn restart_watching(daemon: &mut Daemon) {
    const WATCHING: &str = "mailbox empty: swipes from now on have a known age";
    let before = daemon.log().matches(WATCHING).count();
    daemon.restart();
    wait_for(
        "the restarted gate to watch both mailboxes",
        DEADLINE,
        || (daemon.log().matches(WATCHING).count() >= before + 2).then_some(()),
    )
    .await;
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- gated log ----\n{}", self.log());
        }
    }
}

// ---- lists -----------------------------------------------------------------------------------

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
    async fn launch(
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

// ---- a TCP proxy that can lose the broker's replies -----------------------------------------

/// Sits between the gate and the broker. `blackhole_replies` makes it read and drop everything
/// the broker sends (PUBACKs included) while still forwarding what the gate sends; `cut`
/// closes every connection through it, as a dead link would.
pub struct Proxy {
    pub port: u16,
    blackhole: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(broker_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let blackhole = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (b, c) = (blackhole.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let b = b.clone();
                let task = tokio::spawn(async move {
                    let Ok(server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    let down = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = sr.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            if !b.load(std::sync::atomic::Ordering::SeqCst)
                                && cw.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    };
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
                c.lock().expect("lock").push(task);
            }
        });
        Proxy {
            port,
            blackhole,
            conns,
            accept,
        }
    }

    pub fn blackhole_replies(&self, on: bool) {
        self.blackhole
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection through the proxy; new ones are accepted as before.
    pub fn cut(&self) {
        for t in self.conns.lock().expect("lock").drain(..) {
            t.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

// ---- TLS -------------------------------------------------------------------------------------

/// A CA, a broker certificate for 127.0.0.1 and localhost, and a client certificate for the
/// gate, all generated for one test (rcgen), as PEM files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn generate() -> Pki {
        use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_pem, issuer) = new_ca("gated e2e CA");
        let leaf = |names: &[&str], eku: Eku| {
            let key = KeyPair::generate().expect("key");
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut p = rcgen::CertificateParams::new(names).expect("params");
            p.extended_key_usages = vec![eku];
            let cert = p.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(&["127.0.0.1", "localhost"], Eku::ServerAuth);
        let (client_cert, client_key) = leaf(&["gate-hq-east-1"], Eku::ClientAuth);
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write PEM");
            p
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            dir,
        }
    }

    /// The PEM of another CA, which signed nothing of this test's, written into the directory.
    pub fn other_ca(&self) -> PathBuf {
        let p = self.dir.path().join("other-ca.pem");
        std::fs::write(&p, new_ca("some other CA").0).expect("write PEM");
        p
    }

    /// `[mqtt.tls]` for the gate: this CA, and the client certificate.
    pub fn gate_toml(&self, ca: &Path) -> String {
        format!(
            "[mqtt.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            ca.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}

pub fn new_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).expect("CA cert");
    (cert.pem(), rcgen::Issuer::new(p, key))
}

/// Per-user rules for `Secure`'s password logins: one user per gate for all its connections.
const PASSWORD_ACL: &str = "\
user gate-hq-east-1
topic write acs/hq/east-1/event
topic write acs/hq/east-1/alarm
topic write acs/hq/east-1/status
topic write acs/hq/east-1/ack
topic write acs/hq/east-1/snapshot/#
topic read acs/hq/lists/#
topic read acs/hq/east-1/cmd
topic read acs/hq/west-1/event

user centre
topic read acs/#
topic write acs/+/lists/#
topic write acs/+/+/cmd
";

/// The broker users of the TLS tests.
pub const GATE_USER: &str = "gate-hq-east-1";
pub const GATE_PASSWORD: &str = "pw-east-1-Zq8v";
pub const WEST_USER: &str = "gate-hq-west-1";
pub const CENTRE_USER: &str = "centre";
pub const CENTRE_PASSWORD: &str = "pw-centre-K3m1";

/// Writes a mosquitto password file with `mosquitto_passwd -b`.
pub fn password_file(path: &Path, users: &[(&str, &str)]) {
    let bin = [
        "/usr/bin/mosquitto_passwd",
        "/usr/local/bin/mosquitto_passwd",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .unwrap_or_else(|| PathBuf::from("mosquitto_passwd"));
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = Command::new(&bin);
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg("-b")
            .arg(path)
            .arg(user)
            .arg(password)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run mosquitto_passwd ({e}): the TLS tests need it; it comes with the \
                     broker: `apt-get install -y mosquitto`"
                )
            });
        assert!(
            out.status.success(),
            "mosquitto_passwd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A file of two lines, username then password, mode 600: what `[mqtt.auth]` reads.
pub fn login_file(path: &Path, user: &str, password: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("{user}\n{password}\n")).expect("write login");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The TLS side of a broker started by `Secure::start`: the test's PKI and the TLS port.
pub struct Secure {
    pub pki: Pki,
    pub tls_port: u16,
}

impl Secure {
    /// A broker with a password login per gate: a TLS listener on `tls_port` that requires a
    /// client certificate signed by the test CA, a password per user, and `PASSWORD_ACL`.
    /// (The shipped setup, one certificate per connection, is tested in broker.rs.) The harness's own plain listener (`broker.port`)
    /// stays open and anonymous, for the test's centre.
    pub async fn start() -> (Secure, Broker) {
        let pki = Pki::generate();
        let passwd = pki.dir.path().join("passwd");
        password_file(
            &passwd,
            &[
                (GATE_USER, GATE_PASSWORD),
                (WEST_USER, "pw-west-1-Lx2c"),
                (CENTRE_USER, CENTRE_PASSWORD),
            ],
        );
        let acl = pki.dir.path().join("acl");
        std::fs::write(&acl, PASSWORD_ACL).expect("write ACL");
        let tls_port = free_port();
        // Per-listener settings keep the secure listener's users and ACL off the plain one.
        let broker = Broker::start_with(&format!(
            "per_listener_settings true\nlistener {tls_port} 127.0.0.1\ncafile {ca}\n\
             certfile {cert}\nkeyfile {key}\nrequire_certificate true\nallow_anonymous false\n\
             password_file {passwd}\nacl_file {acl}\n",
            acl = acl.display(),
            ca = pki.ca.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
            passwd = passwd.display(),
        ))
        .await;
        assert!(
            broker
                .log()
                .contains(&format!("listen socket on port {tls_port}")),
            "the TLS listener is not up; mosquitto's log:\n{}",
            broker.log()
        );
        (Secure { pki, tls_port }, broker)
    }

    /// Client options for a raw MQTT client on the TLS listener, through the daemon's own
    /// transport code (as gatectl uses it): the test CA, the client certificate, `user`.
    pub fn client_options(&self, id: &str, user: &str, password: &str) -> MqttOptions {
        let login = self.pki.dir.path().join(format!("login-{id}"));
        login_file(&login, user, password);
        let tls = gated::config::TlsConfig {
            ca_file: self.pki.ca.clone(),
            client: Some((self.pki.client_cert.clone(), self.pki.client_key.clone())),
            server_name: "127.0.0.1".into(),
        };
        let secrets =
            gated::sync::transport::load(Some(&tls), Some(&gated::config::AuthSource::File(login)))
                .expect("client secrets");
        let mut o = MqttOptions::new(id, "127.0.0.1", self.tls_port);
        o.set_keep_alive(Duration::from_secs(5));
        gated::sync::transport::apply(&mut o, &secrets);
        o
    }
}

impl Broker {
    /// What mosquitto wrote into its log so far.
    pub fn log_text(&self) -> String {
        self.log()
    }
}

impl Daemon {
    /// Writes the config into `dir` and starts `gated run` on it, with environment variables
    /// for `gated` (kept across `restart`).
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &Path)]) -> Daemon {
        let path = dir.join("gated.toml");
        std::fs::write(&path, config).expect("write config");
        let mut d = Daemon {
            config: path,
            child: None,
            log: dir.join("gated.log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_os_str().to_owned()))
                .collect(),
        };
        d.spawn();
        d
    }

    /// The process id of `gated`, while it is started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How `gated` ended, once it has (`None` while it runs or was never started).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether `gated` is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The exit code of `gated`, once it has ended by itself.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .and_then(|s| s.code())
    }
}

impl World {
    /// The reference gate reaching `secure`'s TLS listener with `mqtt_extra` (its `[mqtt.tls]`
    /// and `[mqtt.auth]` tables) and `env`; the centre on the plain listener has published
    /// staff list version 1. When `connects`, waits for the gate's ack of it, as `start` does.
    pub async fn over_tls(
        secure: &Secure,
        broker: Broker,
        mqtt_extra: &str,
        env: &[(&str, &Path)],
        connects: bool,
    ) -> World {
        Self::launch(broker, None, secure.tls_port, mqtt_extra, env, connects).await
    }
}

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

// ---- gatectl ----

/// What a finished `gatectl` run printed, and its exit code.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `gatectl` binary against a harness broker, as site `hq`, signing with the
/// test admin key (which every harness gate trusts as `ops-test`).
pub struct Gatectl {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    broker_port: u16,
}

impl Gatectl {
    pub fn new(broker_port: u16) -> Gatectl {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("ops-test.key");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .expect("create key file");
        std::io::Write::write_all(&mut f, admin().to_file_text().as_bytes()).expect("write key");
        Gatectl {
            dir,
            key,
            broker_port,
        }
    }

    /// A file in the run's own directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `gatectl --broker … --site hq --key … ARGS`, with no GATECTL_* from the environment.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatectl"));
        c.arg("--broker")
            .arg(format!("127.0.0.1:{}", self.broker_port))
            .args(["--site", "hq", "--key"])
            .arg(&self.key)
            .args(args)
            .env_remove("GATECTL_BROKER")
            .env_remove("GATECTL_SITE")
            .env_remove("GATECTL_KEY")
            .env_remove("GATECTL_ROOT")
            .env_remove("GATECTL_TRUST")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs to the end (failing the test if that takes over a minute).
    pub async fn run(&self, args: &[&str]) -> Ran {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("gatectl {args:?} did not finish within 60 s"))
            .expect("run gatectl");
        let ran = Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("$ gatectl {}\n{ran:#?}", args.join(" "));
        ran
    }

    /// Starts `gatectl tail ARGS` and returns once it says it is listening: whatever is
    /// published from then on is its to print.
    pub async fn start_tail(&self, args: &[&str]) -> Tail {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = self
            .command(&[&["tail"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gatectl tail");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut seen = String::new();
        let listening = tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(l)) = lines.next_line().await {
                seen.push_str(&l);
                seen.push('\n');
                if l.contains("listening on") {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(listening, Ok(true)),
            "gatectl tail did not start listening; its stderr:\n{seen}"
        );
        // Keep draining stderr so the child never blocks on a full pipe.
        let drain = tokio::spawn(async move {
            let mut rest = seen;
            while let Ok(Some(l)) = lines.next_line().await {
                rest.push_str(&l);
                rest.push('\n');
            }
            rest
        });
        Tail { child, drain }
    }
}

/// A running `gatectl tail`.
pub struct Tail {
    child: tokio::process::Child,
    drain: tokio::task::JoinHandle<String>,
}

impl Tail {
    /// Waits for it to exit on its own (`--count`, `--timeout`).
    pub async fn finish(mut self) -> Ran {
        use tokio::io::AsyncReadExt as _;
        let mut stdout = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut stdout))
                .await
                .expect("gatectl tail ended within 60 s")
                .expect("read tail stdout");
        }
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("gatectl tail exited")
            .expect("wait for tail");
        let stderr = self.drain.await.unwrap_or_default();
        let ran = Ran {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        };
        eprintln!("$ gatectl tail\n{ran:#?}");
        ran
    }
}
