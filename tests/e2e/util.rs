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
pub fn admin() -> &'static gated::sync::envelope::AdminKey {
    static KEY: std::sync::OnceLock<gated::sync::envelope::AdminKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| gated::sync::envelope::AdminKey::generate("ops-test").expect("key"))
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
fn mosquitto_bin() -> PathBuf {
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
}

impl Broker {
    pub async fn start() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Broker {
            port: free_port(),
            dir,
            child: None,
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
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser {user}\npersistence true\n\
                 persistence_location {dir}/\nlog_dest file {dir}/mosquitto.log\nlog_type all\n",
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
    /// Writes the config into `dir` and starts `gated run` on it.
    pub fn start(dir: &Path, config: &str) -> Daemon {
        let path = dir.join("gated.toml");
        std::fs::write(&path, config).expect("write config");
        let mut d = Daemon {
            config: path,
            child: None,
            log: dir.join("gated.log"),
        };
        d.spawn();
        d
    }

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
        let centre = Centre::connect(broker.port).await;
        centre
            .publish(
                STAFF_TOPIC,
                staff_snapshot("hq", 1, &[("E1001", "0012345678")]),
                true,
            )
            .await;
        let devices = Devices::start().await;
        let proxy = match with_proxy {
            true => Some(Proxy::start(broker.port).await),
            false => None,
        };
        let port = proxy.as_ref().map_or(broker.port, |p| p.port);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config_text(&dir.path().join("gated.db"), port, &devices);
        let daemon = Daemon::start(dir.path(), &config);
        let w = World {
            broker,
            centre,
            devices,
            daemon,
            proxy,
            _dir: dir,
        };
        w.centre
            .wait_json("the ack of staff@1", ACK, |a| {
                a["ref"] == "staff@1" && a["ok"] == true
            })
            .await;
        w
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
