//! Configuration: parse the TOML file into plain data, then check it into a `Config` the rest
//! of the daemon can trust (STYLE: parse, then validate).
//!
//! Every error names the file, the line and the key. An unknown key is an error: a typo in a
//! security config must never be silently ignored.
//!
//! `raw.rs` is what the file says (serde), `checks/` turns it into the plain data here, one
//! file per section, and `describe.rs` is what `gated check-config` prints. Config imports
//! only `core`: the layers above it (hw, sync) build their own types from these.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::{Direction, Policy};

mod checks;
mod describe;
mod raw;
#[cfg(test)]
mod tests;

pub use describe::describe;
pub use raw::DEFAULT_MAX_MESSAGE_BYTES;

// `site`, `gate` and MQTT root are safe names (the contract's rule), checked in `checks`.
use gated_contract::is_safe_name;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("config {file}: {message}")]
    Parse { file: String, message: String },
    #[error("config {file}:{line}: `{key}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

// ---- checked: what the daemon uses ----------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Config {
    pub site: String,
    pub gate: String,
    pub store: StoreConfig,
    pub mqtt: Option<MqttConfig>,
    pub trust: TrustConfig,
    pub policy: Policy,
    pub relays: Vec<RelayConfig>,
    pub readers: Vec<ReaderConfig>,
    pub lanes: BTreeMap<u16, LaneConfig>,
    pub clock: ClockConfig,
    /// The other gates of the site whose pass events count here: subjects' in/out state
    /// (anti-passback) and invitation entries used are learned from them.
    pub peers: Vec<String>,
    pub panels: Vec<PanelConfig>,
    pub visitor_entry: EntryCountsAt,
    pub snapshot: SnapshotConfig,
    pub wiegand: Vec<WiegandReader>,
    pub gpio_panels: Vec<GpioPanelConfig>,
    pub gpio_relays: Vec<GpioRelayConfig>,
}

/// When an invitation's entry counts as used (`[policy] visitor_entry`). Not to be confused
/// with an entry of the visitors list, `gated_contract::VisitorEntry`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryCountsAt {
    /// At the grant.
    #[default]
    Grant,
    /// At the passage: the grant reserves it, and a release that ends with nobody through
    /// (on a lane whose board has a passage sensor) gives it back.
    Passage,
}

/// A guard's button panel: a Modbus IO module (docs/design.md, "Guard panel").
#[derive(Clone, Debug)]
pub struct PanelConfig {
    pub name: String,
    pub link: Link,
    pub unit: u8,
    pub poll: Duration,
    pub timeout: Duration,
    /// Discrete input `button_base + 2n` / `+2n+1`: open-once entry / exit of lane n.
    pub button_base: u16,
    pub hold_open: u16,
    pub lockdown: u16,
    pub emergency: u16,
    pub reset: u16,
    /// Coils `lamp_base` .. `+3`: lamps normal, lockdown, emergency, offline.
    pub lamp_base: u16,
}

/// How the clock is judged (`clock.rs`).
#[derive(Clone, Debug)]
pub struct ClockConfig {
    pub sync: SyncSource,
    /// A jump of the wall clock against the monotonic clock larger than this is an alarm, and
    /// the clock is untrusted until time sync confirms it.
    pub max_jump: Duration,
}

/// Where gated learns whether time sync has synchronized the clock.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncSource {
    /// No sync required (a box with a battery-backed clock).
    None,
    /// Synchronized while this file exists: systemd-timesyncd's
    /// `/run/systemd/timesync/synchronized`, or one a chrony or ntpd hook maintains.
    File(PathBuf),
}

impl SyncSource {
    pub const SYSTEMD: &str = "/run/systemd/timesync/synchronized";
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub outbox_quota: u64,
}

#[derive(Clone, Debug)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub root: String,
    pub client_id: String,
    pub keep_alive: Duration,
    pub max_message_bytes: usize,
    pub status_interval: Duration,
    pub inflight: u16,
    pub tls: Option<TlsConfig>,
    pub auth: Option<AuthSource>,
    /// Set by `gated demo` only, never from a file: every status, event and alarm carries
    /// `"demo": true`, so nothing the demo publishes passes for a real gate.
    pub demo: bool,
}

/// MQTT over TLS: the CA that signs the broker's certificate, and optionally this gate's
/// client certificate and key (PEM files).
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub ca_file: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
    /// The name the broker's certificate must carry; default: `mqtt.host`.
    pub server_name: String,
}

/// Where the MQTT username and password come from: a file of two lines (username, then
/// password), either at a path or as a systemd credential (`LoadCredential=NAME:…`, read from
/// `$CREDENTIALS_DIRECTORY/NAME`). They never appear in config or logs.
#[derive(Clone, Debug)]
pub enum AuthSource {
    File(PathBuf),
    SystemdCredential(String),
}

/// The admin keys whose signatures this gate accepts, by key id.
#[derive(Clone, Debug, Default)]
pub struct TrustConfig {
    pub keys: BTreeMap<String, ed25519_dalek::VerifyingKey>,
    /// Lab only: accept unsigned list and command bodies.
    pub allow_unsigned: bool,
}

/// How a Modbus device is reached: its own TCP socket, or a unit on a shared RS-485 bus.
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    /// `HOST:PORT`.
    Tcp(String),
    Rtu(SerialLink),
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Tcp(a) => f.write_str(a),
            Link::Rtu(s) => write!(
                f,
                "{} {} 8{}{}",
                s.path.display(),
                s.baud,
                match s.parity {
                    Parity::None => 'N',
                    Parity::Even => 'E',
                    Parity::Odd => 'O',
                },
                s.stop_bits
            ),
        }
    }
}

/// An RS-485 bus: every device on one `path` shares these settings (the config checks it).
/// Modbus RTU always uses 8 data bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialLink {
    pub path: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub stop_bits: u8,
}

impl SerialLink {
    /// How long the longest Modbus RTU frame (256 bytes) takes on the wire: the config checks
    /// timeouts against it, and the bus (hw/bus.rs) keeps the line quiet that long after a
    /// failed request.
    pub fn frame_time(&self) -> Duration {
        // Start bit, 8 data bits, parity, stop bits.
        let bits_per_char =
            1 + 8 + u64::from(self.parity != Parity::None) + u64::from(self.stop_bits);
        Duration::from_micros(256 * bits_per_char * 1_000_000 / u64::from(self.baud.max(1)))
    }
}

/// Serial parity. The Modbus spec's default is even.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    #[default]
    Even,
    Odd,
}

/// Face-terminal snapshots: plain limits, from which hw/snapshot.rs builds its decoder's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// A larger snapshot is refused unread.
    pub max_bytes: usize,
    /// The largest source image accepted, in pixels.
    pub max_width: u32,
    pub max_height: u32,
    /// The longest side of the thumbnail, in pixels.
    pub thumb_px: u32,
    /// JPEG quality of the thumbnail, 1..=100.
    pub jpeg_quality: u8,
    /// How many thumbnails are kept; the oldest beyond are deleted, uploaded or not.
    pub keep: u32,
}

/// What a config without `[snapshot]` gets, and each key left out of one.
impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            max_bytes: 120 * 1024,
            max_width: 4096,
            max_height: 4096,
            thumb_px: 320,
            jpeg_quality: 80,
            keep: 1000,
        }
    }
}

/// A Wiegand reader on GPIO lines `d0` / `d1` (BCM numbers).
#[derive(Clone, Debug)]
pub struct WiegandReader {
    pub name: String,
    pub d0: u8,
    pub d1: u8,
    pub lane: u16,
    pub direction: Direction,
    /// The frame lengths accepted, at least one; hw/gpio.rs builds the decoder's settings.
    pub formats: Vec<WiegandFormat>,
    /// A frame ends when no edge has come for this long.
    pub frame_timeout: Duration,
}

/// A Wiegand frame layout a reader may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WiegandFormat {
    W26,
    W34,
}

/// A guard panel on GPIO lines (BCM numbers).
#[derive(Clone, Debug)]
pub struct GpioPanelConfig {
    pub name: String,
    /// Inputs are active when pulled low, and lamps are lit by driving low.
    pub active_low: bool,
    pub poll: Duration,
    /// (lane id, open-entry pin, open-exit pin).
    pub lanes: Vec<(u16, u8, u8)>,
    pub hold_open: Option<u8>,
    pub lockdown: Option<u8>,
    pub emergency: Option<u8>,
    pub reset: Option<u8>,
    /// Normal, lockdown, emergency, offline.
    pub lamps: [Option<u8>; 4],
}

/// Relay outputs on GPIO lines (BCM numbers).
#[derive(Clone, Debug)]
pub struct GpioRelayConfig {
    pub name: String,
    /// Outputs are active (releasing) when driven low.
    pub active_low: bool,
    /// (channel, entry pin, exit pin).
    pub lanes: Vec<(u16, u8, u8)>,
    pub fire: Option<u8>,
    /// The fire contact is in alarm when pulled low.
    pub fire_active_low: bool,
}

impl Config {
    /// The GPIO devices of this config, named for messages; empty when it has none.
    pub fn gpio_devices(&self) -> Vec<String> {
        let w = self.wiegand.iter().map(|w| format!("wiegand `{}`", w.name));
        let p = self
            .gpio_panels
            .iter()
            .map(|p| format!("gpio_panel `{}`", p.name));
        let r = self
            .gpio_relays
            .iter()
            .map(|r| format!("gpio_relay `{}`", r.name));
        w.chain(p).chain(r).collect()
    }
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub name: String,
    pub link: Link,
    pub unit: u8,
    pub timeout: Duration,
    pub pulse_base: u16,
    /// Coil `coil_base + 2n` / `+2n+1`: steady release (hold-open) of lane n's entry / exit.
    pub coil_base: u16,
    /// Discrete input `button_base + 2n` / `+2n+1`: request buttons of lane n's entry / exit,
    /// read only for directions with `free_in` / `free_out` = `"button"`.
    pub button_base: u16,
    /// Discrete input of the fire alarm contact (1 = alarm): emergency release of every lane.
    pub fire_input: u16,
    /// Discrete input of the cabinet tamper contact (1 = open): an alarm.
    pub tamper_input: u16,
    /// Whether the board's passage counters are read (a passage sensor is wired).
    pub passage_sensor: bool,
    /// Input register `counter_base + 2n` / `+2n+1`: lane n's entry / exit passage counter.
    pub counter_base: u16,
    /// Discrete input `feedback_base + 2n` / `+2n+1`: the relay feedback contacts of lane n's
    /// entry / exit (1 = energized), checked against what the board was told: a stuck relay.
    pub feedback_base: Option<u16>,
    /// Discrete input `door_base + n`: lane n's door or wing contact (1 = open).
    pub door_base: Option<u16>,
    /// A door open longer than this, while the mode does not hold it open, is `held_open`.
    pub held_open: Duration,
    /// Pulses are written with function 16 (`write_function = 16`), not 6.
    pub fc16_writes: bool,
}

#[derive(Clone, Debug)]
pub struct ReaderConfig {
    pub name: String,
    pub link: Link,
    pub unit: u8,
    pub lane: u16,
    pub direction: Direction,
    pub poll: Duration,
    pub timeout: Duration,
    pub input_base: u16,
    pub ack_register: u16,
    /// Whether this face terminal's snapshots are read (after each event, never before the
    /// decision), and where: the holding register that selects one by seq, its three-register
    /// header (seq, length high, length low), its bytes.
    pub snapshots: bool,
    pub snapshot_select: u16,
    pub snapshot_base: u16,
    pub snapshot_data: u16,
    /// `[snapshot] max_bytes`: a larger snapshot is refused unread.
    pub snapshot_max_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct LaneConfig {
    pub id: u16,
    pub relay: String,
    /// The lane number `n` on the relay board (registers 100+2n / 101+2n).
    pub channel: u16,
    pub release_ms: u16,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        checks::check(file, text, raw)
    }
}

/// Parses a duration written as a number and a unit: `45s`, `90m`, `24h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration like 45s, 90m, 24h or 30d");
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60).ok_or_else(bad)?,
        'h' => n.checked_mul(3600).ok_or_else(bad)?,
        'd' => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if secs == 0 || secs > 10 * 365 * 86_400 {
        return Err(format!("`{s}` must be more than 0 and at most 10 years"));
    }
    Ok(Duration::from_secs(secs))
}
