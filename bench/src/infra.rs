//! What every phase stands on: a mosquitto of the harness's own on a free port, the release
//! `gated` binary with a config written here, hw-sim devices on free ports, an MQTT listener,
//! and readings of a process's memory from /proc.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use hw_sim::{ReaderRegisters, RelayRegisters, SimReader, SimRelay, SimServer};
use rumqttc::{AsyncClient, MqttOptions};

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `cond` every 5 ms until it holds; an error naming `what` after `deadline`.
pub async fn wait_until(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let end = Instant::now() + deadline;
    while !cond() {
        if Instant::now() > end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

// ---- mosquitto -------------------------------------------------------------------------------

/// Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
pub fn mosquitto_bin() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("mosquitto"))
            .collect::<Vec<_>>()
    });
    on_path
        .chain([PathBuf::from("/usr/sbin/mosquitto")])
        .find(|p| p.is_file())
        .context(
            "mosquitto is not installed; the benchmarks need the real broker: \
             `apt-get install -y mosquitto`, or run `bench/run`, which installs it",
        )
}

pub struct Broker {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// A broker of its own on a free local port, in memory (no persistence), as fast as
    /// mosquitto goes with its defaults otherwise, but with no limit on the messages queued
    /// for a subscriber: the harness's own subscriber must not lose any when it falls behind.
    pub async fn start() -> Result<Broker> {
        let dir = tempfile::tempdir()?;
        for _ in 0..5 {
            let port = free_port()?;
            let conf = dir.path().join("mosquitto.conf");
            let user = String::from_utf8_lossy(&Command::new("id").arg("-un").output()?.stdout)
                .trim()
                .to_string();
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nuser {user}\n\
                     max_packet_size 167772160\nmax_queued_messages 0\n\
                     log_dest file {}/mosquitto.log\n",
                    dir.path().display()
                ),
            )?;
            let mut child = Command::new(mosquitto_bin()?)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start mosquitto")?;
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait()?.is_some() {
                    break; // port taken: try another
                }
                let log =
                    std::fs::read_to_string(dir.path().join("mosquitto.log")).unwrap_or_default();
                if log.contains(&format!("listen socket on port {port}"))
                    && TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    return Ok(Broker {
                        port,
                        child,
                        _dir: dir,
                    });
                }
                if Instant::now() > end {
                    let _ = child.kill();
                    bail!("mosquitto did not start listening on port {port} within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        bail!("mosquitto would not start on a free port (5 tries)")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- MQTT ------------------------------------------------------------------------------------

// The e2e tests' recording subscriber, so the bench and the tests read the broker alike.
#[path = "../../tests/e2e/harness/recorder.rs"]
mod recorder;
pub use recorder::Msg;

/// Subscribes to `filter` (QoS 1) and keeps what arrives.
pub struct Listener {
    pub client: AsyncClient,
    rec: recorder::Recorder,
}

impl Listener {
    /// With `keep` false only the count and the time of the first message are kept (for the
    /// 100k-message drains).
    pub async fn connect(port: u16, filter: &str, keep: bool) -> Result<Listener> {
        let mut o = MqttOptions::new(
            format!("bench-listener-{}", free_port()?),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(160 << 20, 160 << 20);
        o.set_inflight(1000);
        let rec = recorder::Recorder::connect(o, 1024, &[filter], keep, Duration::from_secs(10))
            .await
            .map_err(anyhow::Error::msg)
            .context("the benchmark's MQTT subscription was not acknowledged")?;
        Ok(Listener {
            client: rec.client.clone(),
            rec,
        })
    }

    pub fn count(&self) -> usize {
        self.rec.count()
    }

    pub fn first_at(&self) -> Option<Instant> {
        self.rec.first_at()
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.rec.on(topic)
    }

    pub fn json_on(&self, topic: &str) -> Vec<serde_json::Value> {
        self.on(topic)
            .iter()
            .filter_map(|m| serde_json::from_slice(&m.payload).ok())
            .collect()
    }
}

// ---- devices ---------------------------------------------------------------------------------

/// `lanes` readers (each on its own socket, as a reader on the network is) on entry, one per
/// lane, and one relay board with `lanes` lanes on a socket of its own.
pub struct Devices {
    pub readers: Vec<SimReader>,
    pub relay: SimRelay,
}

impl Devices {
    pub async fn start(lanes: u16) -> Result<Devices> {
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let mut readers = Vec::new();
        for _ in 0..lanes {
            let srv = SimServer::bind(any).await?;
            readers.push(srv.add_reader(1, ReaderRegisters::default()));
        }
        let relay = SimServer::bind(any)
            .await?
            .add_relay(1, lanes, RelayRegisters::default());
        Ok(Devices { readers, relay })
    }
}

// ---- the daemon --------------------------------------------------------------------------------

pub const SITE: &str = "hq";
pub const GATE: &str = "bench-1";
pub const EVENT_TOPIC: &str = "acs/hq/bench-1/event";
pub const ACK_TOPIC: &str = "acs/hq/bench-1/ack";
pub const STATUS_TOPIC: &str = "acs/hq/bench-1/status";
pub const STAFF_TOPIC: &str = "acs/hq/lists/staff";

/// The daemon's config: every lane with its reader, the relay board, the broker, and the
/// harness's admin key as the one trusted key.
pub fn config_text(
    db: &Path,
    broker_port: u16,
    d: &Devices,
    poll_ms: u64,
    admin_public: &str,
) -> String {
    let mut c = format!(
        r#"[gate]
site = "{SITE}"
gate = "{GATE}"
[store]
path = "{db}"
outbox_quota = 2000000
[mqtt]
host = "127.0.0.1"
port = {broker_port}
keep_alive_s = 15
[[trust.key]]
id = "bench"
public = "{admin_public}"
[clock]
sync = "none"
[[relay]]
name = "relay1"
address = "{relay}"
timeout_ms = 300
"#,
        db = db.display(),
        relay = d.relay.server().local_addr(),
    );
    for (lane, r) in d.readers.iter().enumerate() {
        c += &format!(
            r#"[[lane]]
id = {lane}
relay = "relay1"
release_ms = 3000
[[reader]]
name = "reader{lane}"
address = "{addr}"
lane = {lane}
direction = "in"
poll_ms = {poll_ms}
timeout_ms = 300
"#,
            addr = r.server().local_addr()
        );
    }
    c
}

pub struct Daemon {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// When the last `spawn` was called, just before the exec.
    pub started_at: SystemTime,
}

impl Daemon {
    pub fn new(bin: &Path, dir: &Path, config: &str) -> Result<Daemon> {
        let path = dir.join("gated.toml");
        std::fs::write(&path, config)?;
        Ok(Daemon {
            bin: bin.to_path_buf(),
            config: path,
            log: dir.join("gated.log"),
            child: None,
            started_at: SystemTime::now(),
        })
    }

    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.started_at = SystemTime::now();
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails when the daemon has exited (it never should), naming its log.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!(
                "gated exited ({status}); its log {}:\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGKILL: no chance to flush, close or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---- memory ----------------------------------------------------------------------------------

/// `VmRSS` and `VmHWM` (peak) of a process, in MB, from /proc.
pub fn rss_mb(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("/proc/{pid}/status has no {name}"))?;
        let kb: f64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed /proc status line")?
            .parse()?;
        Ok(kb / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

// ---- statistics ------------------------------------------------------------------------------

/// Nearest-rank percentile of `xs` (sorted here); NaN when empty.
pub fn percentile(xs: &mut [f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * xs.len() as f64).ceil() as usize;
    xs[rank.clamp(1, xs.len()) - 1]
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -(e.duration().as_secs_f64() * 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let mut xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut xs, 50.0), 50.0);
        assert_eq!(percentile(&mut xs, 99.0), 99.0);
        assert_eq!(percentile(&mut xs, 100.0), 100.0);
        let mut one = vec![7.0];
        assert_eq!(percentile(&mut one, 99.0), 7.0);
        assert!(percentile(&mut [], 50.0).is_nan());
    }
}
