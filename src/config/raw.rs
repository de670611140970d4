//! What the file says: the TOML as serde reads it, unchecked. Every table refuses unknown keys
//! (a typo in a security config must never be silently ignored); defaults are filled in here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{EntryCountsAt, Parity, SnapshotConfig};
use crate::core::{Direction, ExitLimit, FreeExit, PassbackMode, Policy};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) gate: Spanned<RawGate>,
    pub(super) store: Spanned<RawStore>,
    #[serde(default)]
    pub(super) mqtt: Option<Spanned<RawMqtt>>,
    #[serde(default)]
    pub(super) trust: Option<Spanned<RawTrust>>,
    #[serde(default)]
    pub(super) policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    pub(super) relay: Vec<Spanned<RawRelay>>,
    #[serde(default)]
    pub(super) reader: Vec<Spanned<RawReader>>,
    #[serde(default)]
    pub(super) lane: Vec<Spanned<RawLane>>,
    #[serde(default)]
    pub(super) clock: Option<Spanned<RawClock>>,
    #[serde(default)]
    pub(super) panel: Vec<Spanned<RawPanel>>,
    #[serde(default)]
    pub(super) wiegand: Vec<Spanned<RawWiegand>>,
    #[serde(default)]
    pub(super) snapshot: Option<Spanned<RawSnapshot>>,
    #[serde(default)]
    pub(super) gpio_panel: Vec<Spanned<RawGpioPanel>>,
    #[serde(default)]
    pub(super) gpio_relay: Vec<Spanned<RawGpioRelay>>,
}

/// Face-terminal snapshots: limits on what is read and decoded, the thumbnail, retention.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSnapshot {
    #[serde(default = "default_snap_bytes")]
    pub(super) max_bytes: usize,
    #[serde(default = "default_snap_px")]
    pub(super) max_width: u32,
    #[serde(default = "default_snap_px")]
    pub(super) max_height: u32,
    #[serde(default = "default_thumb_px")]
    pub(super) thumb_px: u32,
    #[serde(default = "default_jpeg_quality")]
    pub(super) jpeg_quality: u8,
    #[serde(default = "default_keep")]
    pub(super) keep: u32,
}

pub(super) fn default_snap_bytes() -> usize {
    SnapshotConfig::default().max_bytes
}
pub(super) fn default_snap_px() -> u32 {
    SnapshotConfig::default().max_width
}
pub(super) fn default_thumb_px() -> u32 {
    SnapshotConfig::default().thumb_px
}
pub(super) fn default_jpeg_quality() -> u8 {
    SnapshotConfig::default().jpeg_quality
}
pub(super) fn default_keep() -> u32 {
    SnapshotConfig::default().keep
}

/// A Wiegand reader on two GPIO lines (BCM numbers).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWiegand {
    pub(super) name: String,
    pub(super) d0: u8,
    pub(super) d1: u8,
    pub(super) lane: u16,
    pub(super) direction: Direction,
    #[serde(default = "default_wiegand_formats")]
    pub(super) formats: Vec<u8>,
    #[serde(default = "default_frame_timeout")]
    pub(super) frame_timeout_ms: u64,
}

pub(super) fn default_wiegand_formats() -> Vec<u8> {
    vec![26, 34]
}
pub(super) fn default_frame_timeout() -> u64 {
    25
}

/// A guard panel wired to GPIO lines (BCM numbers): buttons and switches to ground by default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGpioPanel {
    pub(super) name: String,
    #[serde(default = "default_true")]
    pub(super) active_low: bool,
    #[serde(default = "default_gpio_poll")]
    pub(super) poll_ms: u64,
    #[serde(default)]
    pub(super) lane: Vec<RawGpioPanelLane>,
    #[serde(default)]
    pub(super) hold_open: Option<u8>,
    #[serde(default)]
    pub(super) lockdown: Option<u8>,
    #[serde(default)]
    pub(super) emergency: Option<u8>,
    #[serde(default)]
    pub(super) reset: Option<u8>,
    #[serde(default)]
    pub(super) lamps: RawGpioLamps,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGpioPanelLane {
    pub(super) id: u16,
    pub(super) entry: u8,
    pub(super) exit: u8,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGpioLamps {
    #[serde(default)]
    pub(super) normal: Option<u8>,
    #[serde(default)]
    pub(super) lockdown: Option<u8>,
    #[serde(default)]
    pub(super) emergency: Option<u8>,
    #[serde(default)]
    pub(super) offline: Option<u8>,
}

/// Relay outputs on GPIO lines (BCM numbers), with an optional fire contact input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGpioRelay {
    pub(super) name: String,
    #[serde(default)]
    pub(super) active_low: bool,
    #[serde(default)]
    pub(super) lane: Vec<RawGpioRelayLane>,
    #[serde(default)]
    pub(super) fire: Option<u8>,
    #[serde(default = "default_true")]
    pub(super) fire_active_low: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGpioRelayLane {
    pub(super) channel: u16,
    pub(super) entry: u8,
    pub(super) exit: u8,
}

pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_gpio_poll() -> u64 {
    20
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPanel {
    pub(super) name: String,
    #[serde(default)]
    pub(super) address: Option<String>,
    #[serde(default)]
    pub(super) serial: Option<RawSerial>,
    #[serde(default = "default_unit")]
    pub(super) unit: u8,
    #[serde(default = "default_poll")]
    pub(super) poll_ms: u64,
    #[serde(default = "default_timeout")]
    pub(super) timeout_ms: u64,
    #[serde(default)]
    pub(super) registers: RawPanelRegisters,
}

/// A device on an RS-485 bus (Modbus RTU): `serial = { path = "/dev/ttyUSB0", baud = 9600 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSerial {
    pub(super) path: PathBuf,
    #[serde(default = "default_baud")]
    pub(super) baud: u32,
    #[serde(default)]
    pub(super) parity: Parity,
    #[serde(default = "default_stop_bits")]
    pub(super) stop_bits: u8,
}

pub(super) fn default_baud() -> u32 {
    9600
}
pub(super) fn default_stop_bits() -> u8 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPanelRegisters {
    #[serde(default)]
    pub(super) button_base: u16,
    #[serde(default = "default_hold_open_input")]
    pub(super) hold_open: u16,
    #[serde(default = "default_lockdown_input")]
    pub(super) lockdown: u16,
    #[serde(default = "default_emergency_input")]
    pub(super) emergency: u16,
    #[serde(default = "default_reset_input")]
    pub(super) reset: u16,
    #[serde(default)]
    pub(super) lamp_base: u16,
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

pub(super) fn default_hold_open_input() -> u16 {
    32
}
pub(super) fn default_lockdown_input() -> u16 {
    33
}
pub(super) fn default_emergency_input() -> u16 {
    34
}
pub(super) fn default_reset_input() -> u16 {
    35
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGate {
    pub(super) site: String,
    pub(super) gate: String,
    #[serde(default)]
    pub(super) timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClock {
    #[serde(default = "default_sync")]
    pub(super) sync: String,
    #[serde(default)]
    pub(super) sync_file: Option<PathBuf>,
    #[serde(default = "default_max_jump")]
    pub(super) max_jump_s: u64,
}

pub(super) fn default_sync() -> String {
    "systemd".into()
}
pub(super) fn default_max_jump() -> u64 {
    120
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) path: PathBuf,
    #[serde(default = "default_quota")]
    pub(super) outbox_quota: u64,
}

pub(super) fn default_quota() -> u64 {
    1_000_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    pub(super) host: String,
    /// Default 1883, or 8883 with TLS.
    #[serde(default)]
    pub(super) port: Option<u16>,
    #[serde(default = "default_root")]
    pub(super) root: String,
    #[serde(default)]
    pub(super) client_id: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub(super) keep_alive_s: u64,
    #[serde(default = "default_max_message")]
    pub(super) max_message_bytes: usize,
    #[serde(default = "default_status_interval")]
    pub(super) status_interval_s: u64,
    #[serde(default = "default_inflight")]
    pub(super) inflight: u16,
    #[serde(default)]
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) auth: Option<RawAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca_file: PathBuf,
    #[serde(default)]
    pub(super) cert_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) key_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    pub(super) file: Option<PathBuf>,
    #[serde(default)]
    pub(super) systemd_credential: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrust {
    #[serde(default)]
    pub(super) allow_unsigned: bool,
    #[serde(default)]
    pub(super) key: Vec<RawTrustKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrustKey {
    pub(super) id: String,
    pub(super) public: String,
}

pub(super) fn default_root() -> String {
    "acs".into()
}
pub(super) fn default_keep_alive() -> u64 {
    15
}
/// The default largest list or command: fits a staff snapshot of 250k people with a card and a
/// face each (about 68 MB signed; see the test `the_default_fits_250k_staff`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 80 * 1024 * 1024;

pub(super) fn default_max_message() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}
pub(super) fn default_status_interval() -> u64 {
    60
}
pub(super) fn default_inflight() -> u16 {
    64
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default = "default_face_score")]
    pub(super) min_face_score: f64,
    #[serde(default)]
    pub(super) hours: Option<String>,
    #[serde(default)]
    pub(super) schedule: BTreeMap<String, RawSchedule>,
    #[serde(default)]
    pub(super) groups: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) anti_passback: Option<RawPassback>,
    #[serde(default)]
    pub(super) max_offline: Option<RawMaxOffline>,
    #[serde(default)]
    pub(super) peers: Vec<String>,
    #[serde(default)]
    pub(super) visitor_entry: EntryCountsAt,
    #[serde(default)]
    pub(super) exit: Option<RawExit>,
    #[serde(default)]
    pub(super) max_swipe_age: Option<String>,
}

/// `[policy.exit]`: what limits the exit of someone inside.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExit {
    #[serde(default)]
    pub(super) grace: Option<String>,
    #[serde(default)]
    pub(super) window: Option<ExitLimit>,
    #[serde(default)]
    pub(super) schedule: Option<ExitLimit>,
    #[serde(default)]
    pub(super) offline_limit: Option<ExitLimit>,
    #[serde(default)]
    pub(super) uses_entry: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    #[serde(default)]
    pub(super) mon: Vec<String>,
    #[serde(default)]
    pub(super) tue: Vec<String>,
    #[serde(default)]
    pub(super) wed: Vec<String>,
    #[serde(default)]
    pub(super) thu: Vec<String>,
    #[serde(default)]
    pub(super) fri: Vec<String>,
    #[serde(default)]
    pub(super) sat: Vec<String>,
    #[serde(default)]
    pub(super) sun: Vec<String>,
    #[serde(default = "yes")]
    pub(super) calendar: bool,
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPassback {
    #[serde(default)]
    pub(super) mode: PassbackMode,
    #[serde(default)]
    pub(super) reset_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMaxOffline {
    #[serde(default)]
    pub(super) staff: Option<String>,
    #[serde(default)]
    pub(super) visitors: Option<String>,
}

pub(super) fn default_face_score() -> f64 {
    Policy::default().min_face_score
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    pub(super) name: String,
    #[serde(default)]
    pub(super) passage_sensor: bool,
    #[serde(default = "default_held_open")]
    pub(super) held_open_s: u64,
    #[serde(default)]
    pub(super) address: Option<String>,
    #[serde(default)]
    pub(super) serial: Option<RawSerial>,
    #[serde(default = "default_unit")]
    pub(super) unit: u8,
    #[serde(default = "default_timeout")]
    pub(super) timeout_ms: u64,
    /// The Modbus function of pulse writes: 6 (write single register), or 16 (write multiple
    /// registers) for a board that refuses 6.
    #[serde(default = "default_write_function")]
    pub(super) write_function: u8,
    #[serde(default)]
    pub(super) registers: RawRelayRegisters,
}

pub(super) fn default_write_function() -> u8 {
    6
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelayRegisters {
    #[serde(default = "default_pulse_base")]
    pub(super) pulse_base: u16,
    #[serde(default)]
    pub(super) coil_base: u16,
    #[serde(default = "default_button_base")]
    pub(super) button_base: u16,
    #[serde(default)]
    pub(super) fire_input: u16,
    #[serde(default = "default_tamper_input")]
    pub(super) tamper_input: u16,
    #[serde(default)]
    pub(super) counter_base: u16,
    #[serde(default)]
    pub(super) feedback_base: Option<u16>,
    #[serde(default)]
    pub(super) door_base: Option<u16>,
}

pub(super) fn default_held_open() -> u64 {
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

pub(super) fn default_tamper_input() -> u16 {
    1
}

pub(super) fn default_button_base() -> u16 {
    8
}

pub(super) fn default_pulse_base() -> u16 {
    100
}
pub(super) fn default_unit() -> u8 {
    1
}
pub(super) fn default_timeout() -> u64 {
    300
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReader {
    pub(super) name: String,
    #[serde(default)]
    pub(super) snapshots: bool,
    #[serde(default)]
    pub(super) address: Option<String>,
    #[serde(default)]
    pub(super) serial: Option<RawSerial>,
    #[serde(default = "default_unit")]
    pub(super) unit: u8,
    pub(super) lane: u16,
    pub(super) direction: Direction,
    #[serde(default = "default_poll")]
    pub(super) poll_ms: u64,
    #[serde(default = "default_timeout")]
    pub(super) timeout_ms: u64,
    #[serde(default)]
    pub(super) registers: RawReaderRegisters,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReaderRegisters {
    #[serde(default)]
    pub(super) input_base: u16,
    #[serde(default)]
    pub(super) ack_register: u16,
    #[serde(default = "default_snapshot_select")]
    pub(super) snapshot_select: u16,
    #[serde(default = "default_snapshot_base")]
    pub(super) snapshot_base: u16,
    #[serde(default = "default_snapshot_data")]
    pub(super) snapshot_data: u16,
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

pub(super) fn default_snapshot_select() -> u16 {
    1
}
pub(super) fn default_snapshot_base() -> u16 {
    40
}
pub(super) fn default_snapshot_data() -> u16 {
    1000
}

pub(super) fn default_poll() -> u64 {
    50
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLane {
    pub(super) id: u16,
    pub(super) relay: String,
    #[serde(default)]
    pub(super) channel: Option<u16>,
    #[serde(default = "default_release")]
    pub(super) release_ms: u16,
    #[serde(default)]
    pub(super) hours: Option<String>,
    #[serde(default)]
    pub(super) two_factor_s: Option<u64>,
    #[serde(default)]
    pub(super) free_in: FreeExit,
    #[serde(default)]
    pub(super) free_out: FreeExit,
}

pub(super) fn default_release() -> u16 {
    3000
}
