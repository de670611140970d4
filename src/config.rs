//! Configuration: parse the TOML file into plain data, then check it into a `Config` the rest
//! of the daemon can trust (STYLE: parse, then validate).
//!
//! Every error names the file, the line and the key. An unknown key is an error: a typo in a
//! security config must never be silently ignored.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gated_contract::is_safe_name;
use serde::Deserialize;
use toml::Spanned;

use crate::core::time::{Span, minute_of_day};
use crate::core::{
    Direction, ExitLimit, FreeExit, LaneRules, Passback, PassbackMode, Policy, Schedule,
};

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

// ---- raw: what the file says ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gate: Spanned<RawGate>,
    store: Spanned<RawStore>,
    #[serde(default)]
    mqtt: Option<Spanned<RawMqtt>>,
    #[serde(default)]
    trust: Option<Spanned<RawTrust>>,
    #[serde(default)]
    policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    relay: Vec<Spanned<RawRelay>>,
    #[serde(default)]
    reader: Vec<Spanned<RawReader>>,
    #[serde(default)]
    lane: Vec<Spanned<RawLane>>,
    #[serde(default)]
    clock: Option<Spanned<RawClock>>,
    #[serde(default)]
    panel: Vec<Spanned<RawPanel>>,
    #[serde(default)]
    wiegand: Vec<Spanned<RawWiegand>>,
    #[serde(default)]
    snapshot: Option<Spanned<RawSnapshot>>,
    #[serde(default)]
    gpio_panel: Vec<Spanned<RawGpioPanel>>,
    #[serde(default)]
    gpio_relay: Vec<Spanned<RawGpioRelay>>,
}

/// Face-terminal snapshots: limits on what is read and decoded, the thumbnail, retention.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshot {
    #[serde(default = "default_snap_bytes")]
    max_bytes: usize,
    #[serde(default = "default_snap_px")]
    max_width: u32,
    #[serde(default = "default_snap_px")]
    max_height: u32,
    #[serde(default = "default_thumb_px")]
    thumb_px: u32,
    #[serde(default = "default_jpeg_quality")]
    jpeg_quality: u8,
    #[serde(default = "default_keep")]
    keep: u32,
}

fn default_snap_bytes() -> usize {
    crate::hw::snapshot::SnapshotLimits::default().max_bytes
}
fn default_snap_px() -> u32 {
    4096
}
fn default_thumb_px() -> u32 {
    320
}
fn default_jpeg_quality() -> u8 {
    80
}
fn default_keep() -> u32 {
    1000
}

/// A Wiegand reader on two GPIO lines (BCM numbers).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWiegand {
    name: String,
    d0: u8,
    d1: u8,
    lane: u16,
    direction: Direction,
    #[serde(default = "default_wiegand_formats")]
    formats: Vec<u8>,
    #[serde(default = "default_frame_timeout")]
    frame_timeout_ms: u64,
}

fn default_wiegand_formats() -> Vec<u8> {
    vec![26, 34]
}
fn default_frame_timeout() -> u64 {
    25
}

/// A guard panel wired to GPIO lines (BCM numbers): buttons and switches to ground by default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpioPanel {
    name: String,
    #[serde(default = "default_true")]
    active_low: bool,
    #[serde(default = "default_gpio_poll")]
    poll_ms: u64,
    #[serde(default)]
    lane: Vec<RawGpioPanelLane>,
    #[serde(default)]
    hold_open: Option<u8>,
    #[serde(default)]
    lockdown: Option<u8>,
    #[serde(default)]
    emergency: Option<u8>,
    #[serde(default)]
    reset: Option<u8>,
    #[serde(default)]
    lamps: RawGpioLamps,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpioPanelLane {
    id: u16,
    entry: u8,
    exit: u8,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGpioLamps {
    #[serde(default)]
    normal: Option<u8>,
    #[serde(default)]
    lockdown: Option<u8>,
    #[serde(default)]
    emergency: Option<u8>,
    #[serde(default)]
    offline: Option<u8>,
}

/// Relay outputs on GPIO lines (BCM numbers), with an optional fire contact input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpioRelay {
    name: String,
    #[serde(default)]
    active_low: bool,
    #[serde(default)]
    lane: Vec<RawGpioRelayLane>,
    #[serde(default)]
    fire: Option<u8>,
    #[serde(default = "default_true")]
    fire_active_low: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpioRelayLane {
    channel: u16,
    entry: u8,
    exit: u8,
}

fn default_true() -> bool {
    true
}
fn default_gpio_poll() -> u64 {
    20
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPanel {
    name: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    serial: Option<RawSerial>,
    #[serde(default = "default_unit")]
    unit: u8,
    #[serde(default = "default_poll")]
    poll_ms: u64,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    registers: RawPanelRegisters,
}

/// A device on an RS-485 bus (Modbus RTU): `serial = { path = "/dev/ttyUSB0", baud = 9600 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSerial {
    path: PathBuf,
    #[serde(default = "default_baud")]
    baud: u32,
    #[serde(default)]
    parity: Parity,
    #[serde(default = "default_stop_bits")]
    stop_bits: u8,
}

fn default_baud() -> u32 {
    9600
}
fn default_stop_bits() -> u8 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPanelRegisters {
    #[serde(default)]
    button_base: u16,
    #[serde(default = "default_hold_open_input")]
    hold_open: u16,
    #[serde(default = "default_lockdown_input")]
    lockdown: u16,
    #[serde(default = "default_emergency_input")]
    emergency: u16,
    #[serde(default = "default_reset_input")]
    reset: u16,
    #[serde(default)]
    lamp_base: u16,
}

impl Default for RawPanelRegisters {
    fn default() -> Self {
        Self {
            button_base: 0,
            hold_open: default_hold_open_input(),
            lockdown: default_lockdown_input(),
            emergency: default_emergency_input(),
            reset: default_reset_input(),
            lamp_base: 0,
        }
    }
}

fn default_hold_open_input() -> u16 {
    32
}
fn default_lockdown_input() -> u16 {
    33
}
fn default_emergency_input() -> u16 {
    34
}
fn default_reset_input() -> u16 {
    35
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    site: String,
    gate: String,
    #[serde(default)]
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClock {
    #[serde(default = "default_sync")]
    sync: String,
    #[serde(default)]
    sync_file: Option<PathBuf>,
    #[serde(default = "default_max_jump")]
    max_jump_s: u64,
}

fn default_sync() -> String {
    "systemd".into()
}
fn default_max_jump() -> u64 {
    120
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: PathBuf,
    #[serde(default = "default_quota")]
    outbox_quota: u64,
}

fn default_quota() -> u64 {
    1_000_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    host: String,
    /// Default 1883, or 8883 with TLS.
    #[serde(default)]
    port: Option<u16>,
    #[serde(default = "default_root")]
    root: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default = "default_keep_alive")]
    keep_alive_s: u64,
    #[serde(default = "default_max_message")]
    max_message_bytes: usize,
    #[serde(default = "default_status_interval")]
    status_interval_s: u64,
    #[serde(default = "default_inflight")]
    inflight: u16,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    auth: Option<RawAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: PathBuf,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    systemd_credential: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(default)]
    allow_unsigned: bool,
    #[serde(default)]
    key: Vec<RawTrustKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrustKey {
    id: String,
    public: String,
}

fn default_root() -> String {
    "acs".into()
}
fn default_keep_alive() -> u64 {
    15
}
/// The default largest list or command: fits a staff snapshot of 250k people with a card and a
/// face each (about 68 MB signed; see the test `the_default_fits_250k_staff`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 80 * 1024 * 1024;

fn default_max_message() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}
fn default_status_interval() -> u64 {
    60
}
fn default_inflight() -> u16 {
    64
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default = "default_face_score")]
    min_face_score: f64,
    #[serde(default)]
    hours: Option<String>,
    #[serde(default)]
    schedule: BTreeMap<String, RawSchedule>,
    #[serde(default)]
    groups: BTreeMap<String, String>,
    #[serde(default)]
    anti_passback: Option<RawPassback>,
    #[serde(default)]
    max_offline: Option<RawMaxOffline>,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default)]
    visitor_entry: VisitorEntry,
    #[serde(default)]
    exit: Option<RawExit>,
    #[serde(default)]
    max_swipe_age: Option<String>,
}

/// `[policy.exit]`: what limits the exit of someone inside.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExit {
    #[serde(default)]
    grace: Option<String>,
    #[serde(default)]
    window: Option<ExitLimit>,
    #[serde(default)]
    schedule: Option<ExitLimit>,
    #[serde(default)]
    offline_limit: Option<ExitLimit>,
    #[serde(default)]
    uses_entry: bool,
}

/// When an invitation's entry counts as used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VisitorEntry {
    /// At the grant.
    #[default]
    Grant,
    /// At the passage: the grant reserves it, and a release that ends with nobody through
    /// (on a lane whose board has a passage sensor) gives it back.
    Passage,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    #[serde(default)]
    mon: Vec<String>,
    #[serde(default)]
    tue: Vec<String>,
    #[serde(default)]
    wed: Vec<String>,
    #[serde(default)]
    thu: Vec<String>,
    #[serde(default)]
    fri: Vec<String>,
    #[serde(default)]
    sat: Vec<String>,
    #[serde(default)]
    sun: Vec<String>,
    #[serde(default = "yes")]
    calendar: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassback {
    #[serde(default)]
    mode: PassbackMode,
    #[serde(default)]
    reset_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaxOffline {
    #[serde(default)]
    staff: Option<String>,
    #[serde(default)]
    visitors: Option<String>,
}

fn default_face_score() -> f64 {
    Policy::default().min_face_score
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    name: String,
    #[serde(default)]
    passage_sensor: bool,
    #[serde(default = "default_held_open")]
    held_open_s: u64,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    serial: Option<RawSerial>,
    #[serde(default = "default_unit")]
    unit: u8,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    /// The Modbus function of pulse writes: 6 (write single register), or 16 (write multiple
    /// registers) for a board that refuses 6.
    #[serde(default = "default_write_function")]
    write_function: u8,
    #[serde(default)]
    registers: RawRelayRegisters,
}

fn default_write_function() -> u8 {
    6
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelayRegisters {
    #[serde(default = "default_pulse_base")]
    pulse_base: u16,
    #[serde(default)]
    coil_base: u16,
    #[serde(default = "default_button_base")]
    button_base: u16,
    #[serde(default)]
    fire_input: u16,
    #[serde(default = "default_tamper_input")]
    tamper_input: u16,
    #[serde(default)]
    counter_base: u16,
    #[serde(default)]
    feedback_base: Option<u16>,
    #[serde(default)]
    door_base: Option<u16>,
}

fn default_held_open() -> u64 {
    30
}

impl Default for RawRelayRegisters {
    fn default() -> Self {
        Self {
            pulse_base: default_pulse_base(),
            coil_base: 0,
            button_base: default_button_base(),
            fire_input: 0,
            tamper_input: default_tamper_input(),
            counter_base: 0,
            feedback_base: None,
            door_base: None,
        }
    }
}

fn default_tamper_input() -> u16 {
    1
}

fn default_button_base() -> u16 {
    8
}

fn default_pulse_base() -> u16 {
    100
}
fn default_unit() -> u8 {
    1
}
fn default_timeout() -> u64 {
    300
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReader {
    name: String,
    #[serde(default)]
    snapshots: bool,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    serial: Option<RawSerial>,
    #[serde(default = "default_unit")]
    unit: u8,
    lane: u16,
    direction: Direction,
    #[serde(default = "default_poll")]
    poll_ms: u64,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    registers: RawReaderRegisters,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReaderRegisters {
    #[serde(default)]
    input_base: u16,
    #[serde(default)]
    ack_register: u16,
    #[serde(default = "default_snapshot_select")]
    snapshot_select: u16,
    #[serde(default = "default_snapshot_base")]
    snapshot_base: u16,
    #[serde(default = "default_snapshot_data")]
    snapshot_data: u16,
}

impl Default for RawReaderRegisters {
    fn default() -> Self {
        Self {
            input_base: 0,
            ack_register: 0,
            snapshot_select: default_snapshot_select(),
            snapshot_base: default_snapshot_base(),
            snapshot_data: default_snapshot_data(),
        }
    }
}

fn default_snapshot_select() -> u16 {
    1
}
fn default_snapshot_base() -> u16 {
    40
}
fn default_snapshot_data() -> u16 {
    1000
}

fn default_poll() -> u64 {
    50
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLane {
    id: u16,
    relay: String,
    #[serde(default)]
    channel: Option<u16>,
    #[serde(default = "default_release")]
    release_ms: u16,
    #[serde(default)]
    hours: Option<String>,
    #[serde(default)]
    two_factor_s: Option<u64>,
    #[serde(default)]
    free_in: FreeExit,
    #[serde(default)]
    free_out: FreeExit,
}

fn default_release() -> u16 {
    3000
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
    pub visitor_entry: VisitorEntry,
    pub snapshot: SnapshotConfig,
    pub wiegand: Vec<WiegandReader>,
    pub gpio_panels: Vec<GpioPanelConfig>,
    pub gpio_relays: Vec<GpioRelayConfig>,
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

/// Serial parity. The Modbus spec's default is even.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    #[default]
    Even,
    Odd,
}

/// Face-terminal snapshots.
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    pub limits: crate::hw::snapshot::SnapshotLimits,
    /// How many thumbnails are kept; the oldest beyond are deleted, uploaded or not.
    pub keep: u32,
}

/// A Wiegand reader on GPIO lines `d0` / `d1` (BCM numbers).
#[derive(Clone, Debug)]
pub struct WiegandReader {
    pub name: String,
    pub d0: u8,
    pub d1: u8,
    pub lane: u16,
    pub direction: Direction,
    pub decoder: crate::hw::wiegand::WiegandConfig,
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Checker { file, text }.check(raw)
    }
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
}

impl Checker<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        let line = self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1;
        Err(ConfigError::Invalid {
            file: self.file.to_string(),
            line,
            key: key.to_string(),
            message: message.into(),
        })
    }

    fn check(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let gspan = raw.gate.span();
        let gate = raw.gate.into_inner();
        for (key, v) in [("gate.site", &gate.site), ("gate.gate", &gate.gate)] {
            if !is_safe_name(v) {
                return self.err(
                    gspan.clone(),
                    key,
                    format!("`{v}` must be 1..=64 of [A-Za-z0-9_-]"),
                );
            }
        }

        let sspan = raw.store.span();
        let store = raw.store.into_inner();
        if !(1000..=1_000_000_000_000).contains(&store.outbox_quota) {
            return self.err(sspan, "store.outbox_quota", "must be 1000..=10^12 events");
        }

        let mqtt_span = raw.mqtt.as_ref().map(|m| m.span()).unwrap_or(0..0);
        let mqtt = match raw.mqtt {
            None => None,
            Some(m) => {
                let span = m.span();
                let m = m.into_inner();
                if m.host.is_empty() {
                    return self.err(span, "mqtt.host", "must not be empty");
                }
                if !is_safe_name(&m.root) {
                    return self.err(
                        span,
                        "mqtt.root",
                        format!("`{}` must be of [A-Za-z0-9_-]", m.root),
                    );
                }
                if !(1..=65535).contains(&m.keep_alive_s) {
                    return self.err(span, "mqtt.keep_alive_s", "must be 1..=65535 seconds");
                }
                if !(64 * 1024..=256 * 1024 * 1024).contains(&m.max_message_bytes) {
                    return self.err(span, "mqtt.max_message_bytes", "must be 64 KiB..=256 MiB");
                }
                if !(1..=1000).contains(&m.inflight) {
                    return self.err(span, "mqtt.inflight", "must be 1..=1000");
                }
                if m.status_interval_s == 0 {
                    return self.err(span, "mqtt.status_interval_s", "must be at least 1");
                }
                let client_id = m
                    .client_id
                    .unwrap_or_else(|| format!("gated-{}-{}", gate.site, gate.gate));
                let tls = match m.tls {
                    None => None,
                    Some(t) => {
                        let client = match (t.cert_file, t.key_file) {
                            (None, None) => None,
                            (Some(c), Some(k)) => Some((c, k)),
                            _ => {
                                return self.err(
                                    span,
                                    "mqtt.tls",
                                    "cert_file and key_file go together (client certificate)",
                                );
                            }
                        };
                        Some(TlsConfig {
                            ca_file: t.ca_file,
                            client,
                            server_name: t.server_name.unwrap_or_else(|| m.host.clone()),
                        })
                    }
                };
                let auth = match m.auth {
                    None => None,
                    Some(RawAuth {
                        file: Some(f),
                        systemd_credential: None,
                    }) => Some(AuthSource::File(f)),
                    Some(RawAuth {
                        file: None,
                        systemd_credential: Some(name),
                    }) => {
                        if !is_safe_name(&name) {
                            return self.err(
                                span,
                                "mqtt.auth.systemd_credential",
                                format!("`{name}` is not a credential name ([A-Za-z0-9_-])"),
                            );
                        }
                        Some(AuthSource::SystemdCredential(name))
                    }
                    Some(_) => {
                        return self.err(
                            span,
                            "mqtt.auth",
                            "give exactly one of `file` or `systemd_credential`",
                        );
                    }
                };
                Some(MqttConfig {
                    host: m.host,
                    port: m.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
                    root: m.root,
                    client_id,
                    keep_alive: Duration::from_secs(m.keep_alive_s),
                    max_message_bytes: m.max_message_bytes,
                    status_interval: Duration::from_secs(m.status_interval_s),
                    inflight: m.inflight,
                    tls,
                    auth,
                    demo: false,
                })
            }
        };

        let trust = match raw.trust {
            None => TrustConfig::default(),
            Some(t) => {
                let span = t.span();
                let t = t.into_inner();
                let mut keys = BTreeMap::new();
                for (i, k) in t.key.into_iter().enumerate() {
                    if let Err(e) = gated_contract::envelope::check_key_id(&k.id) {
                        return self.err(span, &format!("trust.key[{i}].id"), e);
                    }
                    let public = match gated_contract::envelope::parse_public_key(&k.public) {
                        Ok(p) => p,
                        Err(e) => {
                            return self.err(span, &format!("trust.key[{i}].public"), e);
                        }
                    };
                    // A placeholder (the example's) can never verify a signature: with a
                    // centre, the gate would refuse every list and command it sends.
                    if public.is_weak() && mqtt.is_some() && !t.allow_unsigned {
                        return self.err(
                            span,
                            &format!("trust.key[{i}].public"),
                            format!(
                                "key `{}` is a placeholder (a small-order point, as in the \
                                 example config) that can never verify a signature, so every \
                                 list and command from [mqtt] would be refused: replace it with \
                                 a real key (`gatectl keygen` prints the block)",
                                k.id
                            ),
                        );
                    }
                    if keys.insert(k.id.clone(), public).is_some() {
                        return self.err(
                            span,
                            &format!("trust.key[{i}].id"),
                            format!("key id `{}` is listed twice", k.id),
                        );
                    }
                }
                TrustConfig {
                    keys,
                    allow_unsigned: t.allow_unsigned,
                }
            }
        };
        if mqtt.is_some() && trust.keys.is_empty() && !trust.allow_unsigned {
            return self.err(
                mqtt_span,
                "trust.key",
                "no admin key is trusted, so every list and command would be refused: add a \
                 [[trust.key]] (`gatectl keygen` prints one), or for a lab only set \
                 trust.allow_unsigned = true",
            );
        }

        let tz = match &gate.timezone {
            None => chrono_tz::Tz::UTC,
            Some(name) => match name.parse::<chrono_tz::Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    return self.err(
                        gspan,
                        "gate.timezone",
                        format!("`{name}` is not an IANA time zone (like `Asia/Shanghai`)"),
                    );
                }
            },
        };
        let mut peers = Vec::new();
        let mut visitor_entry = VisitorEntry::Grant;
        let mut policy = Policy {
            tz,
            ..Policy::default()
        };
        if let Some(p) = raw.policy {
            let span = p.span();
            let p = p.into_inner();
            if !(0.0..=1.0).contains(&p.min_face_score) {
                return self.err(span, "policy.min_face_score", "must be within 0..=1");
            }
            policy.min_face_score = p.min_face_score;
            visitor_entry = p.visitor_entry;
            if let Some(text) = p.max_swipe_age {
                // Below a second it would refuse swipes a healthy gate decides in time; above a
                // minute the person who swiped has long gone.
                match parse_duration(&text) {
                    Ok(d) if (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d) => {
                        policy.max_swipe_age_ms = d.as_millis() as i64;
                    }
                    Ok(_) => return self.err(span, "policy.max_swipe_age", "must be 1s..=60s"),
                    Err(e) => return self.err(span, "policy.max_swipe_age", e),
                }
            }
            for (name, raw) in p.schedule {
                let key = format!("policy.schedule.{name}");
                if !is_safe_name(&name) {
                    return self.err(span, &key, "a schedule name is 1..=64 of [A-Za-z0-9_-]");
                }
                let mut week: [Vec<Span>; 7] = Default::default();
                let days = [
                    ("mon", raw.mon),
                    ("tue", raw.tue),
                    ("wed", raw.wed),
                    ("thu", raw.thu),
                    ("fri", raw.fri),
                    ("sat", raw.sat),
                    ("sun", raw.sun),
                ];
                for (i, (day, spans)) in days.into_iter().enumerate() {
                    for text in spans {
                        match Span::parse(&text) {
                            Ok(span) => week[i].push(span),
                            Err(e) => return self.err(span.clone(), &format!("{key}.{day}"), e),
                        }
                    }
                }
                policy.schedules.insert(
                    name,
                    Schedule {
                        week,
                        calendar: raw.calendar,
                    },
                );
            }
            for (group, schedule) in p.groups {
                if !policy.schedules.contains_key(&schedule) {
                    return self.err(
                        span,
                        &format!("policy.groups.{group}"),
                        format!("no [policy.schedule.{schedule}] is defined"),
                    );
                }
                policy.groups.insert(group, schedule);
            }
            if let Some(h) = p.hours {
                self.check_schedule(&span, "policy.hours", &h, &policy)?;
                policy.gate_hours = Some(h);
            }
            if let Some(a) = p.anti_passback {
                let reset_at = match a.reset_at.as_deref().map(minute_of_day) {
                    None => None,
                    Some(Ok(m)) if m < crate::core::time::DAY_MINUTES => Some(m),
                    Some(Ok(_)) => {
                        return self.err(
                            span,
                            "policy.anti_passback.reset_at",
                            "use 00:00, not 24:00",
                        );
                    }
                    Some(Err(e)) => return self.err(span, "policy.anti_passback.reset_at", e),
                };
                policy.passback = Passback {
                    mode: a.mode,
                    reset_at,
                };
            }
            for (i, g) in p.peers.into_iter().enumerate() {
                let key = format!("policy.peers[{i}]");
                if !is_safe_name(&g) {
                    return self.err(span, &key, format!("`{g}` must be 1..=64 of [A-Za-z0-9_-]"));
                }
                if g == gate.gate || peers.contains(&g) {
                    return self.err(span, &key, format!("`{g}` is this gate or listed twice"));
                }
                peers.push(g);
            }
            if let Some(x) = p.exit {
                let rules = &mut policy.exit;
                if let Some(text) = x.grace {
                    // A schedule's grace is judged a minute at a time: a day is plenty.
                    match parse_duration(&text) {
                        Ok(d) if d <= Duration::from_secs(86_400) => {
                            rules.grace_ms = d.as_millis() as i64;
                        }
                        Ok(_) => return self.err(span, "policy.exit.grace", "at most 24h"),
                        Err(e) => return self.err(span, "policy.exit.grace", e),
                    }
                }
                rules.window = x.window.unwrap_or(rules.window);
                rules.schedule = x.schedule.unwrap_or(rules.schedule);
                rules.offline_limit = x.offline_limit.unwrap_or(rules.offline_limit);
                rules.uses_entry = x.uses_entry;
            }
            if let Some(m) = p.max_offline {
                for (key, v, slot) in [
                    ("staff", m.staff, &mut policy.staff_max_offline),
                    ("visitors", m.visitors, &mut policy.visitors_max_offline),
                ] {
                    if let Some(text) = v {
                        match parse_duration(&text) {
                            Ok(d) => *slot = Some(d.as_millis() as i64),
                            Err(e) => {
                                return self.err(
                                    span.clone(),
                                    &format!("policy.max_offline.{key}"),
                                    e,
                                );
                            }
                        }
                    }
                }
            }
        }

        let mut names = HashSet::new();
        let mut buses = BTreeMap::new();
        let mut relays = Vec::new();
        for (i, r) in raw.relay.into_iter().enumerate() {
            let span = r.span();
            let r = r.into_inner();
            let key = |k: &str| format!("relay[{i}].{k}");
            self.check_device(&span, &key("name"), &r.name, &mut names)?;
            let link = self.check_link(&span, &key(""), r.address, r.serial, r.unit, &mut buses)?;
            self.check_ms(&span, &key("timeout_ms"), r.timeout_ms, 10, 60_000)?;
            self.check_rtu_timeout(&span, &key("timeout_ms"), &link, r.timeout_ms)?;
            if !(1..=3600).contains(&r.held_open_s) {
                return self.err(span, &key("held_open_s"), "must be 1..=3600");
            }
            if ![6, 16].contains(&r.write_function) {
                return self.err(
                    span,
                    &key("write_function"),
                    format!(
                        "{} is not 6 (write single register) or 16 (write multiple registers)",
                        r.write_function
                    ),
                );
            }
            // Lanes are channels 0..=31: a block of 64 registers (32 doors) must fit below 65536,
            // so that no lane's address wraps around to another register.
            let g = &r.registers;
            for (what, base, n) in [
                ("pulse_base", Some(g.pulse_base), 64u32),
                ("coil_base", Some(g.coil_base), 64),
                ("button_base", Some(g.button_base), 64),
                ("counter_base", Some(g.counter_base), 64),
                ("feedback_base", g.feedback_base, 64),
                ("door_base", g.door_base, 32),
            ] {
                if base.is_some_and(|b| u32::from(b) + n > 65_536) {
                    return self.err(
                        span,
                        &key(&format!("registers.{what}")),
                        format!("must leave room for {n} registers below 65536"),
                    );
                }
            }
            relays.push(RelayConfig {
                name: r.name,
                link,
                unit: r.unit,
                timeout: Duration::from_millis(r.timeout_ms),
                pulse_base: r.registers.pulse_base,
                coil_base: r.registers.coil_base,
                button_base: r.registers.button_base,
                fire_input: r.registers.fire_input,
                tamper_input: r.registers.tamper_input,
                passage_sensor: r.passage_sensor,
                counter_base: r.registers.counter_base,
                feedback_base: r.registers.feedback_base,
                door_base: r.registers.door_base,
                held_open: Duration::from_secs(r.held_open_s),
                fc16_writes: r.write_function == 16,
            });
        }

        let mut pins = BTreeMap::new();
        let mut gpio_relays = Vec::new();
        for (i, r) in raw.gpio_relay.into_iter().enumerate() {
            let span = r.span();
            let r = r.into_inner();
            let key = |k: &str| format!("gpio_relay[{i}].{k}");
            self.check_device(&span, &key("name"), &r.name, &mut names)?;
            let mut lanes = Vec::new();
            for (j, l) in r.lane.iter().enumerate() {
                let k = |what: &str| format!("gpio_relay[{i}].lane[{j}].{what}");
                self.check_pin(&span, &k("entry"), l.entry, &mut pins)?;
                self.check_pin(&span, &k("exit"), l.exit, &mut pins)?;
                if lanes.iter().any(|(c, _, _)| *c == l.channel) {
                    return self.err(span, &k("channel"), format!("channel {} twice", l.channel));
                }
                lanes.push((l.channel, l.entry, l.exit));
            }
            if let Some(f) = r.fire {
                self.check_pin(&span, &key("fire"), f, &mut pins)?;
            }
            gpio_relays.push(GpioRelayConfig {
                name: r.name,
                active_low: r.active_low,
                lanes,
                fire: r.fire,
                fire_active_low: r.fire_active_low,
            });
        }

        let mut lanes = BTreeMap::new();
        for (i, l) in raw.lane.into_iter().enumerate() {
            let span = l.span();
            let l = l.into_inner();
            let gpio = gpio_relays.iter().find(|r| r.name == l.relay);
            if !relays.iter().any(|r| r.name == l.relay) && gpio.is_none() {
                return self.err(
                    span,
                    &format!("lane[{i}].relay"),
                    format!("no [[relay]] or [[gpio_relay]] is named `{}`", l.relay),
                );
            }
            if let Some(g) = gpio
                && !g
                    .lanes
                    .iter()
                    .any(|(c, _, _)| *c == l.channel.unwrap_or(l.id))
            {
                return self.err(
                    span,
                    &format!("lane[{i}].channel"),
                    format!(
                        "gpio_relay `{}` has no [[gpio_relay.lane]] with channel {}",
                        g.name,
                        l.channel.unwrap_or(l.id)
                    ),
                );
            }
            if !(100..=60_000).contains(&l.release_ms) {
                return self.err(
                    span,
                    &format!("lane[{i}].release_ms"),
                    "must be 100..=60000",
                );
            }
            if let Some(r) = relays
                .iter()
                .find(|r| r.name == l.relay && r.door_base.is_some())
                && u128::from(l.release_ms) >= r.held_open.as_millis()
            {
                return self.err(
                    span,
                    &format!("lane[{i}].release_ms"),
                    format!(
                        "{} ms is not shorter than relay `{}`'s held_open_s ({} s): every pass \
                         would raise held_open",
                        l.release_ms,
                        r.name,
                        r.held_open.as_secs()
                    ),
                );
            }
            let channel = l.channel.unwrap_or(l.id);
            if channel > 31 {
                return self.err(span, &format!("lane[{i}].channel"), "must be 0..=31");
            }
            if lanes.contains_key(&l.id) {
                return self.err(
                    span,
                    &format!("lane[{i}].id"),
                    format!("lane {} is defined twice", l.id),
                );
            }
            if let Some(h) = &l.hours {
                self.check_schedule(&span, &format!("lane[{i}].hours"), h, &policy)?;
            }
            if l.two_factor_s.is_some_and(|s| !(1..=300).contains(&s)) {
                return self.err(
                    span,
                    &format!("lane[{i}].two_factor_s"),
                    "must be 1..=300 seconds",
                );
            }
            policy.lanes.insert(
                l.id,
                LaneRules {
                    hours: l.hours,
                    two_factor_ms: l.two_factor_s.map(|s| s as i64 * 1000),
                    free_in: l.free_in,
                    free_out: l.free_out,
                },
            );
            lanes.insert(
                l.id,
                LaneConfig {
                    id: l.id,
                    relay: l.relay,
                    channel,
                    release_ms: l.release_ms,
                },
            );
        }

        let snapshot = match raw.snapshot {
            None => SnapshotConfig {
                limits: Default::default(),
                keep: default_keep(),
            },
            Some(sn) => {
                let span = sn.span();
                let sn = sn.into_inner();
                // The data block holds at most (65536 - 1000) registers of two bytes.
                if !(1024..=130_000).contains(&sn.max_bytes) {
                    return self.err(span, "snapshot.max_bytes", "must be 1024..=130000");
                }
                for (k, v) in [("max_width", sn.max_width), ("max_height", sn.max_height)] {
                    if !(16..=16_384).contains(&v) {
                        return self.err(span, &format!("snapshot.{k}"), "must be 16..=16384");
                    }
                }
                if !(16..=2048).contains(&sn.thumb_px) {
                    return self.err(span, "snapshot.thumb_px", "must be 16..=2048");
                }
                if !(1..=100).contains(&sn.jpeg_quality) {
                    return self.err(span, "snapshot.jpeg_quality", "must be 1..=100");
                }
                if sn.keep == 0 {
                    return self.err(span, "snapshot.keep", "must be at least 1");
                }
                SnapshotConfig {
                    limits: crate::hw::snapshot::SnapshotLimits {
                        max_bytes: sn.max_bytes,
                        max_width: sn.max_width,
                        max_height: sn.max_height,
                        thumb_px: sn.thumb_px,
                        jpeg_quality: sn.jpeg_quality,
                        ..Default::default()
                    },
                    keep: sn.keep,
                }
            }
        };

        let mut readers = Vec::new();
        for (i, r) in raw.reader.into_iter().enumerate() {
            let span = r.span();
            let r = r.into_inner();
            let key = |k: &str| format!("reader[{i}].{k}");
            self.check_device(&span, &key("name"), &r.name, &mut names)?;
            let link = self.check_link(&span, &key(""), r.address, r.serial, r.unit, &mut buses)?;
            self.check_ms(&span, &key("poll_ms"), r.poll_ms, 5, 10_000)?;
            self.check_ms(&span, &key("timeout_ms"), r.timeout_ms, 10, 60_000)?;
            self.check_rtu_timeout(&span, &key("timeout_ms"), &link, r.timeout_ms)?;
            // A swipe's age counts from the last poll that found the mailbox empty: a reader
            // polled slower than that would have every swipe refused `stale_swipe`.
            if (r.poll_ms + r.timeout_ms) as i64 >= policy.max_swipe_age_ms {
                return self.err(
                    span,
                    &key("poll_ms"),
                    format!(
                        "poll_ms + timeout_ms ({} ms) must be below policy.max_swipe_age ({} ms), \
                         or every swipe would be stale before it is read",
                        r.poll_ms + r.timeout_ms,
                        policy.max_swipe_age_ms
                    ),
                );
            }
            if r.snapshots && matches!(link, Link::Rtu(_)) {
                return self.err(
                    span,
                    &key("snapshots"),
                    "snapshots need a network link (`address`): read over RS-485 they would \
                     hold the bus for minutes",
                );
            }
            // The largest snapshot allowed must fit in the data block below 65536.
            let words = snapshot.limits.max_bytes.div_ceil(2);
            if r.snapshots && usize::from(r.registers.snapshot_data) + words > 65_536 {
                return self.err(
                    span,
                    &key("registers.snapshot_data"),
                    format!(
                        "a block from input {} cannot hold [snapshot] max_bytes ({} bytes, two \
                         per register) below 65536",
                        r.registers.snapshot_data, snapshot.limits.max_bytes
                    ),
                );
            }
            if !lanes.contains_key(&r.lane) {
                return self.err(span, &key("lane"), format!("no [[lane]] has id {}", r.lane));
            }
            readers.push(ReaderConfig {
                name: r.name,
                link,
                unit: r.unit,
                lane: r.lane,
                direction: r.direction,
                poll: Duration::from_millis(r.poll_ms),
                timeout: Duration::from_millis(r.timeout_ms),
                input_base: r.registers.input_base,
                ack_register: r.registers.ack_register,
                snapshots: r.snapshots,
                snapshot_select: r.registers.snapshot_select,
                snapshot_base: r.registers.snapshot_base,
                snapshot_data: r.registers.snapshot_data,
                snapshot_max_bytes: snapshot.limits.max_bytes,
            });
        }

        let mut panels = Vec::new();
        for (i, p) in raw.panel.into_iter().enumerate() {
            let span = p.span();
            let p = p.into_inner();
            let key = |k: &str| format!("panel[{i}].{k}");
            self.check_device(&span, &key("name"), &p.name, &mut names)?;
            let link = self.check_link(&span, &key(""), p.address, p.serial, p.unit, &mut buses)?;
            self.check_ms(&span, &key("poll_ms"), p.poll_ms, 5, 10_000)?;
            self.check_ms(&span, &key("timeout_ms"), p.timeout_ms, 10, 60_000)?;
            self.check_rtu_timeout(&span, &key("timeout_ms"), &link, p.timeout_ms)?;
            let r = p.registers;
            // Buttons are per lane id: 2n / 2n+1 from button_base.
            let buttons: Vec<u32> = lanes
                .keys()
                .flat_map(|&id| {
                    let at = u32::from(r.button_base) + 2 * u32::from(id);
                    [at, at + 1]
                })
                .collect();
            let modes = [r.hold_open, r.lockdown, r.emergency, r.reset].map(u32::from);
            let all: Vec<u32> = buttons.iter().copied().chain(modes).collect();
            let (lo, hi) = (all.iter().min(), all.iter().max());
            if hi.is_some_and(|hi| *hi > u32::from(u16::MAX))
                || lo.zip(hi).is_some_and(|(lo, hi)| hi - lo >= 2000)
            {
                return self.err(
                    span,
                    &key("registers"),
                    "the panel's inputs must be addresses below 65536 within 2000 of each other \
                     (one read): lane n's buttons are button_base + 2n and + 2n + 1",
                );
            }
            let mut seen = HashSet::new();
            if !all.iter().all(|a| seen.insert(*a)) {
                return self.err(
                    span,
                    &key("registers"),
                    "two panel inputs share an address (lane n's buttons are button_base + 2n \
                     and + 2n + 1; the mode buttons must lie elsewhere)",
                );
            }
            panels.push(PanelConfig {
                name: p.name,
                link,
                unit: p.unit,
                poll: Duration::from_millis(p.poll_ms),
                timeout: Duration::from_millis(p.timeout_ms),
                button_base: r.button_base,
                hold_open: r.hold_open,
                lockdown: r.lockdown,
                emergency: r.emergency,
                reset: r.reset,
                lamp_base: r.lamp_base,
            });
        }

        let mut wiegand = Vec::new();
        for (i, w) in raw.wiegand.into_iter().enumerate() {
            let span = w.span();
            let w = w.into_inner();
            let key = |k: &str| format!("wiegand[{i}].{k}");
            self.check_device(&span, &key("name"), &w.name, &mut names)?;
            self.check_pin(&span, &key("d0"), w.d0, &mut pins)?;
            self.check_pin(&span, &key("d1"), w.d1, &mut pins)?;
            if !lanes.contains_key(&w.lane) {
                return self.err(span, &key("lane"), format!("no [[lane]] has id {}", w.lane));
            }
            let mut formats = Vec::new();
            for f in &w.formats {
                formats.push(match f {
                    26 => crate::hw::wiegand::Format::W26,
                    34 => crate::hw::wiegand::Format::W34,
                    other => {
                        return self.err(
                            span,
                            &key("formats"),
                            format!("{other} bits is not a known format (26 or 34)"),
                        );
                    }
                });
            }
            if formats.is_empty() {
                return self.err(span, &key("formats"), "must name at least one format");
            }
            if !(5..=200).contains(&w.frame_timeout_ms) {
                return self.err(span, &key("frame_timeout_ms"), "must be 5..=200");
            }
            wiegand.push(WiegandReader {
                name: w.name,
                d0: w.d0,
                d1: w.d1,
                lane: w.lane,
                direction: w.direction,
                decoder: crate::hw::wiegand::WiegandConfig {
                    frame_timeout_us: w.frame_timeout_ms * 1000,
                    formats,
                    ..Default::default()
                },
            });
        }

        let mut gpio_panels = Vec::new();
        for (i, p) in raw.gpio_panel.into_iter().enumerate() {
            let span = p.span();
            let p = p.into_inner();
            let key = |k: &str| format!("gpio_panel[{i}].{k}");
            self.check_device(&span, &key("name"), &p.name, &mut names)?;
            self.check_ms(&span, &key("poll_ms"), p.poll_ms, 5, 1_000)?;
            let mut panel_lanes = Vec::new();
            for (j, l) in p.lane.iter().enumerate() {
                let k = |what: &str| format!("gpio_panel[{i}].lane[{j}].{what}");
                if !lanes.contains_key(&l.id) {
                    return self.err(span, &k("id"), format!("no [[lane]] has id {}", l.id));
                }
                self.check_pin(&span, &k("entry"), l.entry, &mut pins)?;
                self.check_pin(&span, &k("exit"), l.exit, &mut pins)?;
                panel_lanes.push((l.id, l.entry, l.exit));
            }
            let l = &p.lamps;
            for (what, pin) in [
                ("hold_open", p.hold_open),
                ("lockdown", p.lockdown),
                ("emergency", p.emergency),
                ("reset", p.reset),
                ("lamps.normal", l.normal),
                ("lamps.lockdown", l.lockdown),
                ("lamps.emergency", l.emergency),
                ("lamps.offline", l.offline),
            ] {
                if let Some(pin) = pin {
                    self.check_pin(&span, &key(what), pin, &mut pins)?;
                }
            }
            gpio_panels.push(GpioPanelConfig {
                name: p.name,
                active_low: p.active_low,
                poll: Duration::from_millis(p.poll_ms),
                lanes: panel_lanes,
                hold_open: p.hold_open,
                lockdown: p.lockdown,
                emergency: p.emergency,
                reset: p.reset,
                lamps: [l.normal, l.lockdown, l.emergency, l.offline],
            });
        }

        let clock = match raw.clock {
            None => ClockConfig {
                sync: SyncSource::File(SyncSource::SYSTEMD.into()),
                max_jump: Duration::from_secs(default_max_jump()),
            },
            Some(c) => {
                let span = c.span();
                let c = c.into_inner();
                let sync = match (c.sync.as_str(), c.sync_file) {
                    ("none", None) => SyncSource::None,
                    ("systemd", None) => SyncSource::File(SyncSource::SYSTEMD.into()),
                    ("file", Some(f)) => SyncSource::File(f),
                    ("file", None) => {
                        return self.err(
                            span,
                            "clock.sync_file",
                            "`sync = \"file\"` needs a sync_file",
                        );
                    }
                    (_, Some(_)) => {
                        return self.err(
                            span,
                            "clock.sync_file",
                            "goes only with `sync = \"file\"`",
                        );
                    }
                    (other, None) => {
                        return self.err(
                            span,
                            "clock.sync",
                            format!("`{other}` is not one of systemd, file, none"),
                        );
                    }
                };
                if !(1..=86_400).contains(&c.max_jump_s) {
                    return self.err(span, "clock.max_jump_s", "must be 1..=86400 seconds");
                }
                ClockConfig {
                    sync,
                    max_jump: Duration::from_secs(c.max_jump_s),
                }
            }
        };

        Ok(Config {
            clock,
            peers,
            visitor_entry,
            snapshot,
            panels,
            wiegand,
            gpio_panels,
            gpio_relays,
            site: gate.site,
            gate: gate.gate,
            store: StoreConfig {
                path: store.path,
                outbox_quota: store.outbox_quota,
            },
            mqtt,
            trust,
            policy,
            relays,
            readers,
            lanes,
        })
    }

    /// A BCM GPIO number of the Pi's header (0..=27), used once in the whole config.
    fn check_pin(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        pin: u8,
        pins: &mut BTreeMap<u8, String>,
    ) -> Result<(), ConfigError> {
        if pin > 27 {
            return self.err(
                span.clone(),
                key,
                format!("GPIO {pin} is not on the header (BCM 0..=27)"),
            );
        }
        if let Some(other) = pins.insert(pin, key.to_string()) {
            return self.err(
                span.clone(),
                key,
                format!("GPIO {pin} is already used by {other}"),
            );
        }
        Ok(())
    }

    fn check_device(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        name: &str,
        names: &mut HashSet<String>,
    ) -> Result<(), ConfigError> {
        if !is_safe_name(name) {
            return self.err(
                span.clone(),
                key,
                format!("`{name}` must be 1..=64 of [A-Za-z0-9_-]"),
            );
        }
        if !names.insert(name.to_string()) {
            return self.err(
                span.clone(),
                key,
                format!("device name `{name}` is used twice"),
            );
        }
        Ok(())
    }

    fn check_schedule(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        name: &str,
        policy: &Policy,
    ) -> Result<(), ConfigError> {
        if !policy.schedules.contains_key(name) {
            return self.err(
                span.clone(),
                key,
                format!("no [policy.schedule.{name}] is defined"),
            );
        }
        Ok(())
    }

    fn check_address(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        addr: &str,
    ) -> Result<(), ConfigError> {
        let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return self.err(span.clone(), key, format!("`{addr}` is not HOST:PORT"));
        }
        Ok(())
    }

    /// A device's `address` (TCP) or `serial` (RTU): exactly one. Devices on one serial path
    /// share a bus, so they must agree on its settings and have distinct unit ids. `key` is the
    /// device's key prefix, e.g. `reader[0].`.
    fn check_link(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        address: Option<String>,
        serial: Option<RawSerial>,
        unit: u8,
        buses: &mut BTreeMap<PathBuf, (SerialLink, String, HashSet<u8>)>,
    ) -> Result<Link, ConfigError> {
        match (address, serial) {
            (Some(a), None) => {
                self.check_address(span, &format!("{key}address"), &a)?;
                Ok(Link::Tcp(a))
            }
            (None, Some(s)) => {
                let k = format!("{key}serial");
                if s.path.as_os_str().is_empty() {
                    return self.err(span.clone(), &format!("{k}.path"), "must not be empty");
                }
                if !(1200..=921_600).contains(&s.baud) {
                    return self.err(span.clone(), &format!("{k}.baud"), "must be 1200..=921600");
                }
                if !(1..=2).contains(&s.stop_bits) {
                    return self.err(span.clone(), &format!("{k}.stop_bits"), "must be 1 or 2");
                }
                if !(1..=247).contains(&unit) {
                    return self.err(
                        span.clone(),
                        &format!("{key}unit"),
                        "a unit on an RS-485 bus must be 1..=247 (0 is broadcast)",
                    );
                }
                let link = SerialLink {
                    path: s.path,
                    baud: s.baud,
                    parity: s.parity,
                    stop_bits: s.stop_bits,
                };
                let first = key.trim_end_matches('.').to_string();
                let (bus, by, units) = buses
                    .entry(link.path.clone())
                    .or_insert_with(|| (link.clone(), first, HashSet::new()));
                if *bus != link {
                    return self.err(
                        span.clone(),
                        &k,
                        format!(
                            "{} is also used by {by} with other settings ({}); every device \
                             on one bus must use the same baud, parity and stop bits",
                            link.path.display(),
                            Link::Rtu(bus.clone())
                        ),
                    );
                }
                if !units.insert(unit) {
                    return self.err(
                        span.clone(),
                        &format!("{key}unit"),
                        format!("unit {unit} is used twice on {}", link.path.display()),
                    );
                }
                Ok(Link::Rtu(link))
            }
            (Some(_), Some(_)) => self.err(
                span.clone(),
                key.trim_end_matches('.'),
                "has both `address` (Modbus TCP) and `serial` (Modbus RTU); give one",
            ),
            (None, None) => self.err(
                span.clone(),
                key.trim_end_matches('.'),
                "needs `address = \"HOST:PORT\"` (Modbus TCP) or `serial = { path = ... }` (Modbus RTU)",
            ),
        }
    }

    /// On a serial bus, a timeout must outlast the longest reply on the wire at its baud rate:
    /// a shorter one would time a healthy device out.
    fn check_rtu_timeout(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        link: &Link,
        timeout_ms: u64,
    ) -> Result<(), ConfigError> {
        if let Link::Rtu(serial) = link {
            let need = crate::hw::bus::frame_time(serial).as_millis() as u64 + 1;
            if timeout_ms < need {
                return self.err(
                    span.clone(),
                    key,
                    format!(
                        "{timeout_ms} ms is shorter than the longest reply takes at {} baud \
                         ({need} ms): set at least {need}",
                        serial.baud
                    ),
                );
            }
        }
        Ok(())
    }

    fn check_ms(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        v: u64,
        min: u64,
        max: u64,
    ) -> Result<(), ConfigError> {
        if !(min..=max).contains(&v) {
            return self.err(span.clone(), key, format!("{v} is outside {min}..={max}"));
        }
        Ok(())
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

/// One paragraph saying what a checked config configures, for `gated check-config`.
pub fn describe(c: &Config) -> String {
    let mut out = format!(
        "ok: site `{}` gate `{}`; store {}; mqtt {}",
        c.site,
        c.gate,
        c.store.path.display(),
        c.mqtt
            .as_ref()
            .map(|m| format!("{}:{} (root `{}`)", m.host, m.port, m.root))
            .unwrap_or_else(|| "off (events wait in the outbox)".into())
    );
    for l in c.lanes.values() {
        out += &format!(
            "\n  lane {}: relay `{}` channel {}, release {} ms",
            l.id, l.relay, l.channel, l.release_ms
        );
        if let Some(r) = c.policy.lanes.get(&l.id) {
            if let Some(h) = &r.hours {
                out += &format!("; hours `{h}`");
            }
            if let Some(ms) = r.two_factor_ms {
                out += &format!("; two factors within {} s", ms / 1000);
            }
            for (d, f) in [("in", r.free_in), ("out", r.free_out)] {
                if f != crate::core::FreeExit::No {
                    out += &format!("; free {d} by {f:?}");
                }
            }
        }
    }
    for r in &c.readers {
        out += &format!(
            "\n  reader `{}` at {} unit {}: lane {} {}, poll {} ms",
            r.name,
            r.link,
            r.unit,
            r.lane,
            r.direction.as_str(),
            r.poll.as_millis()
        );
    }
    for r in &c.relays {
        out += &format!("\n  relay `{}` at {} unit {}", r.name, r.link, r.unit);
    }
    for p in &c.panels {
        out += &format!("\n  panel `{}` at {} unit {}", p.name, p.link, p.unit);
    }
    for d in c.gpio_devices() {
        out += &format!("\n  {d} on GPIO (needs a Raspberry Pi)");
    }
    let p = &c.policy;
    out += &format!(
        "\n  rules: time zone {}; schedules [{}]; anti-passback {:?}{}; peers [{}]; clock sync {}",
        p.tz,
        p.schedules.keys().cloned().collect::<Vec<_>>().join(", "),
        p.passback.mode,
        p.passback
            .reset_at
            .map(|m| format!(" (reset {:02}:{:02})", m / 60, m % 60))
            .unwrap_or_default(),
        c.peers.join(", "),
        match &c.clock.sync {
            SyncSource::None => "not required".to_string(),
            SyncSource::File(f) => format!("when {} exists", f.display()),
        }
    );
    for (list, limit) in [
        ("staff", p.staff_max_offline),
        ("visitors", p.visitors_max_offline),
    ] {
        if let Some(ms) = limit {
            out += &format!(
                "\n  {list} stop after {} h without the centre",
                ms / 3_600_000
            );
        }
    }
    let x = &p.exit;
    out += &format!(
        "\n  exits: grace {} min; window {:?}, schedule {:?}, offline limit {:?}; {}",
        x.grace_ms / 60_000,
        x.window,
        x.schedule,
        x.offline_limit,
        if x.uses_entry {
            "every visitor pass uses an entry"
        } else {
            "a visitor's exit uses no entry"
        }
    );
    for (id, key) in &c.trust.keys {
        let note = if key.is_weak() {
            " -- A PLACEHOLDER that verifies nothing: replace it"
        } else {
            ""
        };
        out += &format!("\n  trusts admin key `{id}`{note}");
    }
    if c.trust.allow_unsigned {
        out += "\n  LAB MODE: accepts unsigned lists and commands (trust.allow_unsigned)";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = include_str!("../config/gated.example.toml");

    /// A shipped config with a real key in place of its placeholder, which a gate with a
    /// centre refuses.
    fn with_real_key(text: &str) -> String {
        let k = gated_contract::envelope::AdminKey::generate("ops-2026").expect("key");
        text.replace(
            "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            &k.public_b64(),
        )
    }

    #[test]
    fn the_example_config_is_valid_once_its_placeholder_key_is_replaced() {
        for (name, text) in [
            ("gated.example.toml", EXAMPLE),
            ("gated.sim.toml", include_str!("../config/gated.sim.toml")),
        ] {
            let e = Config::parse(name, text).err().map(|e| e.to_string());
            assert!(
                e.as_ref()
                    .is_some_and(|e| e.contains("trust.key[0].public") && e.contains("placeholder")),
                "{name}: {e:?}"
            );
        }
        let example = with_real_key(EXAMPLE);
        let c = Config::parse("gated.example.toml", &example).expect("example config must parse");
        assert_eq!(c.site, "hq");
        assert!(c.mqtt.is_some());
        // The real gate the issue asks for: an RTU reader, a TCP face terminal, a TCP relay
        // board and a GPIO panel.
        assert!(
            matches!(c.readers[0].link, Link::Rtu(_)),
            "{:?}",
            c.readers[0].link
        );
        assert!(matches!(c.readers[1].link, Link::Tcp(_)));
        assert!(matches!(c.relays[0].link, Link::Tcp(_)));
        assert_eq!(c.gpio_panels.len(), 1);
        assert_eq!(c.gpio_panels[0].lanes.len(), 2);
        let sim = with_real_key(include_str!("../config/gated.sim.toml"));
        let sim = Config::parse("gated.sim.toml", &sim).expect("the sim config must parse");
        assert!(
            sim.gpio_devices().is_empty(),
            "the sim config runs anywhere"
        );
    }

    #[test]
    fn a_relay_board_may_take_its_pulses_as_function_16() {
        let relay =
            |f: &str| format!("{MINIMAL}[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n{f}");
        let c = Config::parse("t.toml", &relay("write_function = 16\n")).expect("valid");
        assert!(c.relays[0].fc16_writes);
        let c = Config::parse("t.toml", &relay("")).expect("valid");
        assert!(!c.relays[0].fc16_writes, "function 6 by default");
        let e = err(&relay("write_function = 5\n"));
        assert!(
            e.contains("relay[0].write_function") && e.contains("not 6") && e.contains("or 16"),
            "{e}"
        );
    }

    #[test]
    fn serial_timeouts_snapshots_and_door_limits_are_checked() {
        let relay =
            "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[[lane]]\nid = 0\nrelay = \"k\"\n";
        let slow = "{ path = \"/dev/ttyUSB0\", baud = 4800 }";
        let e = err(&format!(
            "{MINIMAL}{relay}[[reader]]\nname = \"a\"\nlane = 0\ndirection = \"in\"\nunit = 1\nserial = {slow}\n"
        ));
        assert!(
            e.contains("reader[0].timeout_ms") && e.contains("4800 baud"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}{relay}[[reader]]\nname = \"a\"\nlane = 0\ndirection = \"in\"\nunit = 1\nsnapshots = true\nserial = {{ path = \"/dev/ttyUSB0\" }}\n"
        ));
        assert!(e.contains("reader[0].snapshots"), "{e}");
        let door = "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\nheld_open_s = 2\n[relay.registers]\ndoor_base = 6000\n[[lane]]\nid = 0\nrelay = \"k\"\nrelease_ms = 3000\n";
        let e = err(&format!("{MINIMAL}{door}"));
        assert!(
            e.contains("lane[0].release_ms") && e.contains("held_open"),
            "{e}"
        );
        let high = "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[relay.registers]\nfeedback_base = 65500\n";
        let e = err(&format!("{MINIMAL}{high}"));
        assert!(e.contains("registers.feedback_base"), "{e}");
        let wrap = "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[relay.registers]\npulse_base = 65500\n";
        let e = err(&format!("{MINIMAL}{wrap}"));
        assert!(e.contains("registers.pulse_base"), "{e}");
        let face = format!(
            "{MINIMAL}{relay}[[reader]]\nname = \"f\"\naddress = \"127.0.0.1:2\"\nlane = 0\ndirection = \"in\"\nsnapshots = true\n[reader.registers]\nsnapshot_data = 60000\n"
        );
        let e = err(&face);
        assert!(e.contains("reader[0].registers.snapshot_data"), "{e}");
    }

    #[test]
    fn gpio_pins_are_checked_and_used_once() {
        let relay =
            "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[[lane]]\nid = 0\nrelay = \"k\"\n";
        let w = |d0: u8, d1: u8| {
            format!(
                "[[wiegand]]\nname = \"w\"\nd0 = {d0}\nd1 = {d1}\nlane = 0\ndirection = \"in\"\n"
            )
        };
        assert!(Config::parse("t.toml", &format!("{MINIMAL}{relay}{}", w(5, 6))).is_ok());
        let e = err(&format!("{MINIMAL}{relay}{}", w(5, 5)));
        assert!(
            e.contains("wiegand[0].d1") && e.contains("already used by wiegand[0].d0"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}{relay}{}", w(5, 40)));
        assert!(e.contains("BCM 0..=27"), "{e}");
        let e = err(&format!("{MINIMAL}{relay}{}formats = [37]\n", w(5, 6)));
        assert!(e.contains("37 bits"), "{e}");
        let gpio_lane = "[[gpio_relay]]\nname = \"g\"\n[[gpio_relay.lane]]\nchannel = 0\nentry = 17\nexit = 27\n[[lane]]\nid = 1\nrelay = \"g\"\n";
        let e = err(&format!("{MINIMAL}{gpio_lane}"));
        assert!(
            e.contains("lane[0].channel") && e.contains("no [[gpio_relay.lane]] with channel 1"),
            "{e}"
        );
    }

    fn err(text: &str) -> String {
        Config::parse("t.toml", text)
            .expect_err("must be refused")
            .to_string()
    }

    const MINIMAL: &str = "[gate]\nsite = \"hq\"\ngate = \"g1\"\n[store]\npath = \"x.db\"\n";

    #[test]
    fn unknown_keys_are_errors_with_line() {
        let e = err(&format!("{MINIMAL}outbox_qouta = 5\n"));
        assert!(e.contains("outbox_qouta") && e.contains("line 6"), "{e}");
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let text = format!(
            "{MINIMAL}[[relay]]\nname = \"r\"\naddress = \"127.0.0.1:1\"\n[[lane]]\nid = 0\nrelay = \"nope\"\n"
        );
        let e = err(&text);
        assert!(
            e.contains("t.toml:9") && e.contains("lane[0].relay") && e.contains("nope"),
            "{e}"
        );
        let e = err("[gate]\nsite = \"h/q\"\ngate = \"g\"\n[store]\npath = \"x\"\n");
        assert!(e.contains("gate.site") && e.contains(":1:"), "{e}");
    }

    #[test]
    fn devices_on_a_serial_bus_must_agree_and_have_their_own_units() {
        let relay =
            "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[[lane]]\nid = 0\nrelay = \"k\"\n";
        let reader = |name: &str, serial: &str, unit: u8| {
            format!(
                "[[reader]]\nname = \"{name}\"\nlane = 0\ndirection = \"in\"\nunit = {unit}\nserial = {serial}\n"
            )
        };
        let bus = "{ path = \"/dev/ttyUSB0\", baud = 19200, parity = \"none\", stop_bits = 2 }";
        let ok = format!(
            "{MINIMAL}{relay}{}{}",
            reader("a", bus, 1),
            reader("b", bus, 2)
        );
        let c = Config::parse("t.toml", &ok).expect("two units on one bus");
        assert_eq!(c.readers[1].link.to_string(), "/dev/ttyUSB0 19200 8N2");
        let e = err(&format!(
            "{MINIMAL}{relay}{}{}",
            reader("a", bus, 1),
            reader("b", bus, 1)
        ));
        assert!(
            e.contains("reader[1].unit") && e.contains("used twice"),
            "{e}"
        );
        let other = "{ path = \"/dev/ttyUSB0\", baud = 9600 }";
        let e = err(&format!(
            "{MINIMAL}{relay}{}{}",
            reader("a", bus, 1),
            reader("b", other, 2)
        ));
        assert!(
            e.contains("reader[1].serial") && e.contains("also used by reader[0]"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}{relay}{}",
            reader("a", "{ path = \"/dev/x\", baud = 7 }", 1)
        ));
        assert!(e.contains("reader[0].serial.baud"), "{e}");
        let e = err(&format!(
            "{MINIMAL}{relay}{}",
            reader("a", "{ path = \"/dev/x\" }", 0)
        ));
        assert!(
            e.contains("reader[0].unit") && e.contains("broadcast"),
            "{e}"
        );
        let both = format!(
            "{MINIMAL}{relay}[[reader]]\nname = \"a\"\nlane = 0\ndirection = \"in\"\naddress = \"127.0.0.1:2\"\nserial = {bus}\n"
        );
        assert!(err(&both).contains("both `address`"), "{}", err(&both));
        let neither = format!("{MINIMAL}[[relay]]\nname = \"k\"\n");
        assert!(
            err(&neither).contains("relay[0]") && err(&neither).contains("needs `address"),
            "{}",
            err(&neither)
        );
    }

    #[test]
    fn trust_keys_are_checked() {
        let mqtt = format!("{MINIMAL}[mqtt]\nhost = \"127.0.0.1\"\n");
        let e = err(&mqtt);
        assert!(
            e.contains("trust.key") && e.contains("allow_unsigned"),
            "{e}"
        );
        let lab = format!("{mqtt}[trust]\nallow_unsigned = true\n");
        assert!(
            Config::parse("t.toml", &lab)
                .expect("lab")
                .trust
                .allow_unsigned
        );
        let bad = format!("{mqtt}[[trust.key]]\nid = \"ops\"\npublic = \"AAAA\"\n");
        let e = err(&bad);
        assert!(e.contains("trust.key[0].public") && e.contains("32"), "{e}");
        let k = gated_contract::envelope::AdminKey::generate("ops").expect("key");
        let one = format!(
            "[[trust.key]]\nid = \"ops\"\npublic = \"{}\"\n",
            k.public_b64()
        );
        let ok = format!("{mqtt}{one}");
        assert_eq!(
            Config::parse("t.toml", &ok).expect("ok").trust.keys.len(),
            1
        );
        let e = err(&format!("{mqtt}{one}{one}"));
        assert!(e.contains("listed twice"), "{e}");
        // The example's placeholder: refused with a centre, harmless without one (nothing
        // signed arrives) and in lab mode.
        let placeholder = "[[trust.key]]\nid = \"old\"\npublic = \"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n";
        let e = err(&format!("{mqtt}{one}{placeholder}"));
        assert!(
            e.contains("trust.key[1].public") && e.contains("`old` is a placeholder"),
            "{e}"
        );
        assert!(Config::parse("t.toml", &format!("{MINIMAL}{placeholder}")).is_ok());
        let lab = format!("{mqtt}[trust]\nallow_unsigned = true\n{placeholder}");
        assert!(Config::parse("t.toml", &lab).is_ok());
        let tls = format!("{mqtt}[mqtt.tls]\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\n{one}");
        let e = err(&tls);
        assert!(e.contains("key_file"), "{e}");
    }

    #[test]
    fn policy_rules_are_checked_with_their_keys() {
        let with = |extra: &str| format!("{MINIMAL}{extra}");
        let e = err(&with("[policy.schedule.office]\nmon = [\"18:00-08:00\"]\n"));
        assert!(
            e.contains("policy.schedule.office.mon") && e.contains("midnight"),
            "{e}"
        );
        let e = err(&with("[policy]\nhours = \"office\"\n"));
        assert!(e.contains("policy.hours") && e.contains("office"), "{e}");
        let e = err(&with("[policy.groups]\ncleaners = \"night\"\n"));
        assert!(e.contains("policy.groups.cleaners"), "{e}");
        let e = err(&with("[policy.max_offline]\nstaff = \"30 days\"\n"));
        assert!(
            e.contains("policy.max_offline.staff") && e.contains("30d"),
            "{e}"
        );
        let e = err(&with("[policy.exit]\ngrace = \"2d\"\n"));
        assert!(e.contains("policy.exit.grace") && e.contains("24h"), "{e}");
        let e = err(&with("[policy.exit]\nschedule = \"never\"\n"));
        assert!(e.contains("never") && e.contains("ignore"), "{e}");
        let c = Config::parse(
            "t.toml",
            &with("[policy.exit]\ngrace = \"45m\"\nschedule = \"ignore\"\nuses_entry = true\n"),
        )
        .expect("exit rules");
        assert_eq!(
            c.policy.exit,
            crate::core::ExitRules {
                grace_ms: 45 * 60_000,
                schedule: ExitLimit::Ignore,
                uses_entry: true,
                ..Default::default()
            }
        );
        let e = err(&with("[policy.anti_passback]\nmode = \"strict\"\n"));
        assert!(e.contains("strict"), "{e}");
        let e = err(&with("[policy]\npeers = [\"g1\"]\n"));
        assert!(e.contains("policy.peers[0]"), "{e}");
        let e = err(&with("[policy]\nmax_swipe_age = \"2m\"\n"));
        assert!(
            e.contains("policy.max_swipe_age") && e.contains("1s..=60s"),
            "{e}"
        );
        let e = err(&with("[policy]\nmax_swipe_age = \"0s\"\n"));
        assert!(e.contains("policy.max_swipe_age"), "{e}");
        let c = Config::parse("t.toml", &with("[policy]\nmax_swipe_age = \"10s\"\n"))
            .expect("max_swipe_age");
        assert_eq!(c.policy.max_swipe_age_ms, 10_000);
        assert_eq!(
            Config::parse("t.toml", &with(""))
                .expect("minimal")
                .policy
                .max_swipe_age_ms,
            crate::core::DEFAULT_MAX_SWIPE_AGE_MS
        );
        let e = err(&with("[clock]\nsync = \"ntp\"\n"));
        assert!(e.contains("clock.sync") && e.contains("ntp"), "{e}");
        let e = err(&with("[clock]\nsync = \"file\"\n"));
        assert!(e.contains("clock.sync_file"), "{e}");
        let tz = "[gate]\nsite = \"hq\"\ngate = \"g1\"\ntimezone = \"Mars/Olympus\"\n[store]\npath = \"x\"\n";
        assert!(err(tz).contains("gate.timezone"));
        let c = Config::parse("gated.example.toml", &with_real_key(EXAMPLE)).expect("example");
        assert_eq!(c.policy.tz, chrono_tz::Asia::Shanghai);
        assert_eq!(
            c.policy.groups.get("cleaners").map(String::as_str),
            Some("night")
        );
        assert_eq!(c.policy.staff_max_offline, Some(30 * 86_400_000));
        assert_eq!(c.policy.exit, crate::core::ExitRules::default());
        assert_eq!(c.peers, vec!["west-1".to_string()]);
        assert_eq!(c.clock.sync, SyncSource::File(SyncSource::SYSTEMD.into()));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn reader_must_name_a_lane() {
        let text = format!(
            "{MINIMAL}[[reader]]\nname = \"r1\"\naddress = \"127.0.0.1:1\"\nlane = 3\ndirection = \"in\"\n"
        );
        let e = err(&text);
        assert!(e.contains("reader[0].lane") && e.contains(":6:"), "{e}");
    }
}
