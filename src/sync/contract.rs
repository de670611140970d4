//! The MQTT contract (docs/design.md) as types: topics, pass events, alarms, list bodies, acks and
//! status. Parsing here is strict (unknown fields in what the centre sends are refused: a typo
//! in a list must never widen access), and every check names what was wrong.

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::core::{CredentialKind, Decision, Direction, Reason, UnixMs};

/// Topic names for one gate. `site` and `gate` are validated to `[A-Za-z0-9_-]` by config, so
/// they can never inject `/`, `+` or `#`.
#[derive(Clone, Debug)]
pub struct Topics {
    pub root: String,
    pub site: String,
    pub gate: String,
}

impl Topics {
    fn gate_topic(&self, leaf: &str) -> String {
        format!("{}/{}/{}/{}", self.root, self.site, self.gate, leaf)
    }
    pub fn event(&self) -> String {
        self.gate_topic("event")
    }
    pub fn alarm(&self) -> String {
        self.gate_topic("alarm")
    }
    /// Where the thumbnail of a pass's snapshot is uploaded (the pass's event id).
    pub fn snapshot(&self, event_id: &str) -> String {
        self.gate_topic(&format!("snapshot/{event_id}"))
    }
    pub fn status(&self) -> String {
        self.gate_topic("status")
    }
    pub fn ack(&self) -> String {
        self.gate_topic("ack")
    }
    pub fn cmd(&self) -> String {
        self.gate_topic("cmd")
    }
    /// The pass events of another gate of the site.
    pub fn events_of(&self, gate: &str) -> String {
        format!("{}/{}/{gate}/event", self.root, self.site)
    }
    pub fn list(&self, list: ListName) -> String {
        format!("{}/{}/lists/{}", self.root, self.site, list.as_str())
    }
    pub fn list_delta(&self, list: ListName) -> String {
        format!("{}/delta", self.list(list))
    }
    /// Which list a downlink topic carries, and whether it is a delta.
    pub fn parse_list_topic(&self, topic: &str) -> Option<(ListName, bool)> {
        ListName::ALL.into_iter().find_map(|l| {
            if topic == self.list(l) {
                Some((l, false))
            } else if topic == self.list_delta(l) {
                Some((l, true))
            } else {
                None
            }
        })
    }
}

/// The most bytes of one piece of outside input (an id, a field name, a value) that a refusal,
/// an alarm or a log line quotes back. Ids are at most 64 bytes; anything longer is cut.
pub const MAX_ECHO_BYTES: usize = 80;
/// The most bytes of a free-text `detail` the gate publishes (an ack's, an alarm's): a
/// refusal says what was wrong in words, and never carries the message it refuses.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// `s` made safe to quote in what the gate publishes or logs: control characters escaped
/// (`\u{1b}`, `\n`), so they cannot drive a terminal or forge a log line, and cut at a char
/// boundary after at most `max` bytes, the cut marked with how much was left out. Everything
/// that echoes input from the broker or a device goes through here, so that no input can make
/// a message larger than the connection can carry.
pub fn bounded(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max && !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(max.min(s.len()) + 32);
    for (at, c) in s.char_indices() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            out.push_str(&format!("…[{} more bytes]", s.len() - at));
            break;
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Formats a time the way the contract does: RFC 3339, UTC, milliseconds, `Z`.
pub fn format_ts(ms: UnixMs) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_ts(s: &str) -> Result<UnixMs, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!(
                "`{}` is not an RFC 3339 time ({e})",
                bounded(s, MAX_ECHO_BYTES)
            )
        })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CredentialJson {
    pub kind: CredentialKind,
    pub id: String,
    pub score: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Override {
    /// `panel` or `remote`.
    pub source: String,
    /// What was pressed or sent: `open_entry`, `open_exit`, `hold_open`, `lockdown`, …
    pub input: String,
    /// Who: for `remote`, the id of the admin key that signed the command (an extension of
    /// the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// One pass event, exactly the contract's fields (plus `ref` for later facts of a pass).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassEvent {
    pub id: String,
    pub seq: u64,
    pub site: String,
    pub gate: String,
    pub lane: u16,
    pub direction: Direction,
    pub ts: String,
    pub credential: Option<CredentialJson>,
    pub subject: Option<String>,
    pub decision: Decision,
    pub reason: Reason,
    #[serde(rename = "override")]
    pub override_: Option<Override>,
    pub passed: Option<bool>,
    pub snapshot: Option<String>,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub ref_: Option<String>,
    /// Warnings on a granted pass (an extension of the contract): `anti_passback` when soft
    /// anti-passback let a repeated direction through; `NO_RELEASE` on an override that
    /// released no lane.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// When gated first saw the credential (an extension of the contract), on passes a
    /// reader presented: `ts` is when it was decided. Absent on other events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at: Option<String>,
}

/// The flag of a `granted` override event that released no lane (`clear_passback`,
/// `clear_passback_all`): it is
/// recorded as an event so that peer gates learn it, but it is not a pass, and nobody went
/// through.
pub const NO_RELEASE: &str = "no_release";

impl PassEvent {
    /// Whether a lane was released for this event (false for an override that only changed
    /// state, also when it comes from a gate that predates the `no_release` flag).
    pub fn released(&self) -> bool {
        self.decision == Decision::Granted
            && !self.flags.iter().any(|f| f == NO_RELEASE)
            && self.override_.as_ref().is_none_or(|o| {
                o.input != CommandKind::ClearPassback.as_str()
                    && o.input != CommandKind::ClearPassbackAll.as_str()
            })
    }
}

/// One alarm: a device fault, the outbox filling up, a failed relay command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub id: String,
    pub seq: u64,
    pub site: String,
    pub gate: String,
    pub ts: String,
    /// A code: `device_fault`, `device_recovered`, `outbox_high`, `relay_failed`,
    /// `relay_unknown`, … (docs/mqtt.md lists them all).
    pub alarm: String,
    /// The device or component concerned.
    pub source: String,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListName {
    Staff,
    Visitors,
    Deny,
    /// Holidays and exception dates of the site's schedules.
    Calendar,
}

impl ListName {
    pub const ALL: [ListName; 4] = [Self::Staff, Self::Visitors, Self::Deny, Self::Calendar];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staff => "staff",
            Self::Visitors => "visitors",
            Self::Deny => "deny",
            Self::Calendar => "calendar",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRef {
    pub kind: CredentialKind,
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffEntry {
    pub subject: String,
    #[serde(default)]
    pub name: Option<String>,
    pub credentials: Vec<CredentialRef>,
    #[serde(default)]
    pub valid_from: Option<String>,
    #[serde(default)]
    pub valid_until: Option<String>,
    pub gates: Vec<String>,
    /// A weekly schedule by name (`[policy.schedule.NAME]` of the gates' config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// A group, whose schedule (`[policy.groups]`) applies when the entry names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A responder: passes a lockdown (reason `lockdown_exempt`), within the entry's gates
    /// and window (docs/policy.md).
    #[serde(
        default,
        deserialize_with = "null_is_false",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub lockdown_exempt: bool,
}

/// An optional flag may be absent or `null`, like every optional field of a list entry.
fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorEntry {
    pub invitation: String,
    #[serde(default)]
    pub visitor: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    pub credentials: Vec<CredentialRef>,
    #[serde(default)]
    pub valid_from: Option<String>,
    #[serde(default)]
    pub valid_until: Option<String>,
    pub gates: Vec<String>,
    #[serde(default)]
    pub max_entries: Option<u32>,
    /// A weekly schedule by name (`[policy.schedule.NAME]`), as for staff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyEntry {
    pub kind: CredentialKind,
    pub id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// One exception date of the `calendar` list: on `date` (the site's local date), schedules
/// that follow the calendar are open only during `hours` (empty: closed all day, a holiday).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarEntry {
    /// `YYYY-MM-DD`.
    pub date: String,
    #[serde(default)]
    pub name: Option<String>,
    /// `HH:MM-HH:MM` spans.
    #[serde(default)]
    pub hours: Vec<String>,
    /// The schedules (`[policy.schedule.NAME]`) the date overrides; absent: every schedule
    /// that follows the calendar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Vec<String>>,
}

/// The entries of one list, typed by list.
#[derive(Clone, Debug, PartialEq)]
pub enum Entries {
    Staff(Vec<StaffEntry>),
    Visitors(Vec<VisitorEntry>),
    Deny(Vec<DenyEntry>),
    Calendar(Vec<CalendarEntry>),
}

impl Entries {
    pub fn len(&self) -> usize {
        match self {
            Self::Staff(v) => v.len(),
            Self::Visitors(v) => v.len(),
            Self::Deny(v) => v.len(),
            Self::Calendar(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A full list, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub list: ListName,
    pub site: String,
    pub version: u64,
    pub issued_at: Option<String>,
    pub entries: Entries,
}

/// Changes on top of `base`, validated. `remove` holds subjects (staff), invitation ids
/// (visitors) or `kind:id` (deny).
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    pub list: ListName,
    pub site: String,
    pub version: u64,
    pub base: u64,
    pub upsert: Entries,
    pub remove: Vec<String>,
}

/// The frame of a list message. `entries` stays raw text until the list is known, then is
/// parsed straight into its typed entries (no intermediate `Value` tree: a large list would
/// cost several times its size in memory).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshot<'a> {
    list: ListName,
    site: String,
    version: u64,
    #[serde(default)]
    issued_at: Option<String>,
    #[serde(borrow)]
    entries: &'a serde_json::value::RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelta<'a> {
    list: ListName,
    site: String,
    version: u64,
    base: u64,
    #[serde(default, borrow)]
    upsert: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    remove: Vec<String>,
}

/// Why a list or command was refused: the `error` of an ack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON, or JSON of the wrong shape, or a field out of range.
    Malformed(String),
    /// The body names a different list than its topic.
    WrongList(String),
    /// For another site.
    WrongSite(String),
    /// Not newer than the version in force.
    Stale(String),
    /// A delta whose base is not the version in force.
    VersionGap(String),
    TooLarge(String),
    /// Signed, but the signature does not verify under the key it names (see `sync::envelope`).
    BadSignature(String),
    /// Signed by a key this gate does not trust.
    UnknownKey(String),
    /// Not in a signed envelope, and the gate is not in lab mode (`allow_unsigned`).
    Unsigned(String),
    /// A command for another gate.
    WrongGate(String),
    /// A command past its `expires_at`.
    Expired(String),
    /// A command issued in the future (beyond the allowed clock skew).
    NotYetValid(String),
    /// A command whose nonce was seen before.
    Replayed(String),
    /// A command this gate cannot carry out as asked (a lane it does not have).
    Unsupported(String),
    /// A `clear_passback` for a subject this gate knows nothing of: no staff entry, no
    /// invitation, no anti-passback state (a typo would otherwise be acked ok).
    UnknownSubject(String),
    /// Recorded, but a device did not carry it out (the relay did not take the pulse).
    DeviceError(String),
    /// The store could not apply it; the lists in force are unchanged.
    StoreError(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::WrongList(_) => "wrong_list",
            Self::WrongSite(_) => "wrong_site",
            Self::Stale(_) => "stale",
            Self::VersionGap(_) => "version_gap",
            Self::TooLarge(_) => "too_large",
            Self::BadSignature(_) => "bad_signature",
            Self::UnknownKey(_) => "unknown_key",
            Self::Unsigned(_) => "unsigned",
            Self::WrongGate(_) => "wrong_gate",
            Self::Expired(_) => "expired",
            Self::NotYetValid(_) => "not_yet_valid",
            Self::Replayed(_) => "replayed",
            Self::Unsupported(_) => "unsupported",
            Self::UnknownSubject(_) => "unknown_subject",
            Self::DeviceError(_) => "device_error",
            Self::StoreError(_) => "store_error",
        }
    }
    pub fn detail(&self) -> &str {
        match self {
            Self::Malformed(d)
            | Self::WrongList(d)
            | Self::WrongSite(d)
            | Self::Stale(d)
            | Self::VersionGap(d)
            | Self::TooLarge(d)
            | Self::BadSignature(d)
            | Self::UnknownKey(d)
            | Self::Unsigned(d)
            | Self::WrongGate(d)
            | Self::Expired(d)
            | Self::NotYetValid(d)
            | Self::Replayed(d)
            | Self::Unsupported(d)
            | Self::UnknownSubject(d)
            | Self::DeviceError(d)
            | Self::StoreError(d) => d,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.detail())
    }
}

const MAX_ID_LEN: usize = 64;
/// The longest free-text field of a list entry (a name, a host, a reason), in bytes.
pub const MAX_TEXT_LEN: usize = 256;
/// Versions are stored as SQLite integers (i64); a larger one could never be superseded.
const MAX_VERSION: u64 = i64::MAX as u64;

fn check_version(what: &str, v: u64) -> Result<(), Refusal> {
    if v == 0 || v > MAX_VERSION {
        return Err(malformed(format!(
            "{what} {v} is not within 1..={MAX_VERSION}"
        )));
    }
    Ok(())
}

fn malformed(what: impl Into<String>) -> Refusal {
    Refusal::Malformed(what.into())
}

fn check_id(what: &str, s: &str) -> Result<(), Refusal> {
    if s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(|c| c.is_control()) {
        return Err(malformed(format!(
            "{what} `{}` ({} bytes) must be 1..={MAX_ID_LEN} bytes without control characters",
            bounded(s, MAX_ECHO_BYTES),
            s.len()
        )));
    }
    Ok(())
}

/// A free-text field (a name, a host, a reason): shown to people and logged, never decided on.
fn check_text(what: &str, s: &Option<String>) -> Result<(), Refusal> {
    let Some(s) = s else { return Ok(()) };
    if s.len() > MAX_TEXT_LEN || s.chars().any(|c| c.is_control()) {
        return Err(malformed(format!(
            "{what} `{}` ({} bytes) must be at most {MAX_TEXT_LEN} bytes without control \
             characters",
            bounded(s, MAX_ECHO_BYTES),
            s.len()
        )));
    }
    Ok(())
}

fn check_credentials(at: &str, creds: &[CredentialRef]) -> Result<(), Refusal> {
    for (i, c) in creds.iter().enumerate() {
        // Credentials pass through the reader mailbox as ASCII (docs/design.md, "Reader mailbox").
        if !c.id.is_ascii() {
            return Err(malformed(format!("{at}.credentials[{i}].id is not ASCII")));
        }
        check_id(&format!("{at}.credentials[{i}].id"), &c.id)?;
    }
    Ok(())
}

fn check_window(at: &str, from: &Option<String>, until: &Option<String>) -> Result<(), Refusal> {
    let parse = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(parse_ts)
            .transpose()
            .map_err(|e| malformed(format!("{at}.{field}: {e}")))
    };
    let (f, u) = (parse("valid_from", from)?, parse("valid_until", until)?);
    if let (Some(f), Some(u)) = (f, u)
        && f > u
    {
        return Err(malformed(format!("{at}: valid_from is after valid_until")));
    }
    Ok(())
}

fn check_gates(at: &str, gates: &[String]) -> Result<(), Refusal> {
    if gates.is_empty() {
        return Err(malformed(format!(
            "{at}.gates is empty (use [\"*\"] for every gate)"
        )));
    }
    for g in gates {
        if g != "*" && !crate::config::is_safe_name(g) {
            return Err(malformed(format!(
                "{at}.gates: `{}` is not a gate id",
                bounded(g, MAX_ECHO_BYTES)
            )));
        }
    }
    Ok(())
}

/// `[3].valid_until` for a path inside a list; empty for the root.
fn path_suffix(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    match s.as_str() {
        "." => String::new(),
        s if s.starts_with('[') => s.to_string(),
        s => format!(".{s}"),
    }
}

/// Deserializes JSON naming the path of the field that was wrong.
fn from_json<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, Refusal> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{}`", bounded(&path, MAX_ECHO_BYTES * 2))
        };
        // serde quotes what it could not take (an unknown field's name, a wrong value).
        let why = e.inner().to_string();
        malformed(format!(
            "{what}{at}: {}",
            bounded(&why, MAX_DETAIL_BYTES / 2)
        ))
    })
}

pub fn parse_entries(list: ListName, raw: &str, what: &str) -> Result<Entries, Refusal> {
    fn typed<T: serde::de::DeserializeOwned>(raw: &str, what: &str) -> Result<T, Refusal> {
        let de = &mut serde_json::Deserializer::from_str(raw);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let why = e.inner().to_string();
            malformed(format!(
                "{what}{}: {}",
                path_suffix(e.path()),
                bounded(&why, MAX_DETAIL_BYTES / 2)
            ))
        })
    }
    let entries = match list {
        ListName::Staff => Entries::Staff(typed(raw, what)?),
        ListName::Visitors => Entries::Visitors(typed(raw, what)?),
        ListName::Deny => Entries::Deny(typed(raw, what)?),
        ListName::Calendar => Entries::Calendar(typed(raw, what)?),
    };
    validate_entries(&entries, what)?;
    Ok(entries)
}

fn validate_entries(entries: &Entries, what: &str) -> Result<(), Refusal> {
    let mut keys = HashSet::new();
    let mut dup = |key: String, at: &str| {
        if keys.insert(key.clone()) {
            Ok(())
        } else {
            Err(malformed(format!("{at}: `{key}` appears twice")))
        }
    };
    // Staff entries and invitations are checked alike: a key, credentials, a window, gates.
    let mut holder = |at: String,
                      key_name: &str,
                      key: &str,
                      creds: &[CredentialRef],
                      window: (&Option<String>, &Option<String>),
                      gates: &[String]| {
        check_id(&format!("{at}.{key_name}"), key)?;
        dup(key.to_string(), &at)?;
        check_credentials(&at, creds)?;
        check_window(&at, window.0, window.1)?;
        check_gates(&at, gates)
    };
    match entries {
        Entries::Staff(v) => {
            for (i, e) in v.iter().enumerate() {
                let window = (&e.valid_from, &e.valid_until);
                check_text(&format!("{what}[{i}].name"), &e.name)?;
                for (key, v) in [("schedule", &e.schedule), ("group", &e.group)] {
                    if let Some(v) = v {
                        check_id(&format!("{what}[{i}].{key}"), v)?;
                    }
                }
                holder(
                    format!("{what}[{i}]"),
                    "subject",
                    &e.subject,
                    &e.credentials,
                    window,
                    &e.gates,
                )?;
            }
        }
        Entries::Visitors(v) => {
            for (i, e) in v.iter().enumerate() {
                let window = (&e.valid_from, &e.valid_until);
                check_text(&format!("{what}[{i}].visitor"), &e.visitor)?;
                check_text(&format!("{what}[{i}].host"), &e.host)?;
                if let Some(s) = &e.schedule {
                    check_id(&format!("{what}[{i}].schedule"), s)?;
                }
                holder(
                    format!("{what}[{i}]"),
                    "invitation",
                    &e.invitation,
                    &e.credentials,
                    window,
                    &e.gates,
                )?;
            }
        }
        Entries::Deny(v) => {
            for (i, e) in v.iter().enumerate() {
                let at = format!("{what}[{i}]");
                check_id(&format!("{at}.id"), &e.id)?;
                check_text(&format!("{at}.reason"), &e.reason)?;
                dup(format!("{}:{}", e.kind.as_str(), e.id), &at)?;
            }
        }
        Entries::Calendar(v) => {
            for (i, e) in v.iter().enumerate() {
                let at = format!("{what}[{i}]");
                parse_date(&e.date).map_err(|m| malformed(format!("{at}.date: {m}")))?;
                check_text(&format!("{at}.name"), &e.name)?;
                dup(e.date.clone(), &at)?;
                for (j, h) in e.hours.iter().enumerate() {
                    crate::core::Span::parse(h)
                        .map_err(|m| malformed(format!("{at}.hours[{j}]: {m}")))?;
                }
                if let Some(names) = &e.schedules {
                    // An empty list would override nothing: almost certainly not what was meant,
                    // and leaving the key out means the opposite (every schedule).
                    if names.is_empty() {
                        return Err(malformed(format!(
                            "{at}.schedules: is empty; name the schedules the date overrides, \
                             or leave the key out to override every schedule"
                        )));
                    }
                    for (j, n) in names.iter().enumerate() {
                        check_id(&format!("{at}.schedules[{j}]"), n)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parses a calendar date, `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("`{}` is not a date YYYY-MM-DD", bounded(s, MAX_ECHO_BYTES)))
}

/// Parses and validates a snapshot body for the list its topic names.
pub fn parse_snapshot(topic_list: ListName, body: &[u8]) -> Result<Snapshot, Refusal> {
    let raw: RawSnapshot = from_json("snapshot body", body)?;
    if raw.list != topic_list {
        return Err(Refusal::WrongList(format!(
            "body is list `{}` but the topic is `{}`",
            raw.list.as_str(),
            topic_list.as_str()
        )));
    }
    check_version("version", raw.version)?;
    if let Some(t) = &raw.issued_at {
        parse_ts(t).map_err(|e| malformed(format!("issued_at: {e}")))?;
    }
    let entries = parse_entries(raw.list, raw.entries.get(), "entries")?;
    Ok(Snapshot {
        list: raw.list,
        site: raw.site,
        version: raw.version,
        issued_at: raw.issued_at,
        entries,
    })
}

/// Parses and validates a delta body for the list its topic names.
pub fn parse_delta(topic_list: ListName, body: &[u8]) -> Result<Delta, Refusal> {
    let raw: RawDelta = from_json("delta body", body)?;
    if raw.list != topic_list {
        return Err(Refusal::WrongList(format!(
            "body is list `{}` but the topic is `{}`",
            raw.list.as_str(),
            topic_list.as_str()
        )));
    }
    check_version("version", raw.version)?;
    if raw.version <= raw.base {
        return Err(malformed(format!(
            "delta version {} is not above its base {}",
            raw.version, raw.base
        )));
    }
    let upsert = parse_entries(raw.list, raw.upsert.map_or("[]", |r| r.get()), "upsert")?;
    for (i, key) in raw.remove.iter().enumerate() {
        check_id(&format!("remove[{i}]"), key)?;
        if raw.list == ListName::Deny {
            let ok = key
                .split_once(':')
                .is_some_and(|(k, id)| CredentialKind::parse(k).is_some() && !id.is_empty());
            if !ok {
                return Err(malformed(format!("remove[{i}]: deny keys are `kind:id`")));
            }
        }
    }
    Ok(Delta {
        list: raw.list,
        site: raw.site,
        version: raw.version,
        base: raw.base,
        upsert,
        remove: raw.remove,
    })
}

/// A remote command (docs/design.md, "Commands"), as the centre sends it on `{gate}/cmd`.
/// On the wire it is snake_case (`hold_open`); on gatectl's command line kebab-case
/// (`hold-open`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// One pass on a lane and direction, whatever the mode; logged as override_remote.
    Open,
    /// Hold every lane open; credentials are still read and logged.
    HoldOpen,
    /// Refuse every credential; only overrides open a lane.
    Lockdown,
    /// Decide credentials as usual; ends hold-open, lockdown and emergency release.
    Normal,
    /// Release every lane.
    EmergencyRelease,
    /// Publish the gate's status again.
    Resync,
    /// Forget a subject's anti-passback state (a guard's override), here and, through the
    /// event it records, at the other gates of the site. Needs `subject`.
    ClearPassback,
    /// Forget every subject's anti-passback state (after a drill), here and at the other
    /// gates of the site. Takes no `subject`.
    ClearPassbackAll,
    /// An admin vouches that the gate's clock reads right now: its latest event time and
    /// command clock go back to now (a clock that ran ahead by mistake is trusted again).
    /// Needs the `challenge` the gate's status shows; signed, valid a few minutes at most.
    AttestTime,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::HoldOpen => "hold_open",
            Self::Lockdown => "lockdown",
            Self::Normal => "normal",
            Self::EmergencyRelease => "emergency_release",
            Self::Resync => "resync",
            Self::ClearPassback => "clear_passback",
            Self::ClearPassbackAll => "clear_passback_all",
            Self::AttestTime => "attest_time",
        }
    }
    /// The mode a command puts the gate in, if it changes the mode.
    pub fn mode(self) -> Option<crate::core::Mode> {
        use crate::core::Mode;
        match self {
            Self::HoldOpen => Some(Mode::HoldOpen),
            Self::Lockdown => Some(Mode::Lockdown),
            Self::Normal => Some(Mode::Normal),
            Self::EmergencyRelease => Some(Mode::EmergencyRelease),
            Self::Open
            | Self::Resync
            | Self::ClearPassback
            | Self::ClearPassbackAll
            | Self::AttestTime => None,
        }
    }
}

/// The command body on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    pub site: String,
    pub gate: String,
    pub cmd: CommandKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// For `clear_passback`: the staff id or invitation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// For `attest_time`: the gate's current `clock_challenge` (from its status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    pub nonce: String,
    pub issued_at: String,
    pub expires_at: String,
}

/// A command, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub site: String,
    pub gate: String,
    pub cmd: CommandKind,
    /// For `open`: the lane and direction to release (direction defaults to `in`).
    pub lane: Option<u16>,
    pub direction: Direction,
    /// For `clear_passback`.
    pub subject: Option<String>,
    /// For `attest_time`.
    pub challenge: Option<String>,
    pub nonce: String,
    pub issued_at: UnixMs,
    pub expires_at: UnixMs,
}

/// The longest a command may be valid. Its nonce is remembered until it expires, so this also
/// bounds how long the gate keeps nonces.
pub const MAX_COMMAND_LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// How far in the future a command's `issued_at` may be (the admin's and the gate's clocks
/// differ a little). Without this bound a command issued for next year would be valid until
/// then, whatever its lifetime.
pub const MAX_COMMAND_SKEW_MS: i64 = 5 * 60 * 1000;

/// The longest an `attest_time` may be valid: its validity rests on a fresh challenge and on
/// the clock it vouches for, not on the command clock.
pub const MAX_ATTEST_LIFETIME_MS: i64 = MAX_COMMAND_SKEW_MS;

/// The largest command accepted: commands are small, and an envelope is checked before its
/// size could matter otherwise.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Parses and validates a command body. Scope and expiry are checked by the caller, which
/// knows the gate and the time.
pub fn parse_command(body: &[u8]) -> Result<Command, Refusal> {
    let raw: CommandBody = from_json("command body", body)?;
    let token_ok = |t: &str| {
        (8..=64).contains(&t.len())
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !token_ok(&raw.nonce) {
        return Err(malformed(
            "nonce must be 8..=64 characters of [A-Za-z0-9_-] (a fresh random value per command)",
        ));
    }
    let issued_at = parse_ts(&raw.issued_at).map_err(|e| malformed(format!("issued_at: {e}")))?;
    let expires_at =
        parse_ts(&raw.expires_at).map_err(|e| malformed(format!("expires_at: {e}")))?;
    if expires_at <= issued_at {
        return Err(malformed("expires_at is not after issued_at"));
    }
    if expires_at.saturating_sub(issued_at) > MAX_COMMAND_LIFETIME_MS {
        return Err(malformed(format!(
            "a command may be valid for at most {} h",
            MAX_COMMAND_LIFETIME_MS / 3_600_000
        )));
    }
    match (raw.cmd, &raw.subject) {
        (CommandKind::ClearPassback, None) => {
            return Err(malformed("`clear_passback` needs a `subject`"));
        }
        (CommandKind::ClearPassback, Some(s)) => check_id("subject", s)?,
        (c, Some(_)) => {
            return Err(malformed(format!("`{}` takes no `subject`", c.as_str())));
        }
        _ => {}
    }
    match (raw.cmd, &raw.challenge) {
        (CommandKind::AttestTime, None) => {
            return Err(malformed(
                "`attest_time` needs the `challenge` of the gate's status (`clock_challenge`)",
            ));
        }
        (CommandKind::AttestTime, Some(c)) if !token_ok(c) => {
            return Err(malformed(
                "challenge must be 8..=64 characters of [A-Za-z0-9_-], as the gate's status shows it",
            ));
        }
        (CommandKind::AttestTime, Some(_)) if expires_at - issued_at > MAX_ATTEST_LIFETIME_MS => {
            return Err(malformed(format!(
                "an `attest_time` may be valid for at most {} min",
                MAX_ATTEST_LIFETIME_MS / 60_000
            )));
        }
        (CommandKind::AttestTime, Some(_)) => {}
        (c, Some(_)) => {
            return Err(malformed(format!("`{}` takes no `challenge`", c.as_str())));
        }
        _ => {}
    }
    match (raw.cmd, raw.lane) {
        (CommandKind::Open, None) => return Err(malformed("`open` needs a `lane`")),
        (CommandKind::Open, Some(_)) => {}
        (c, Some(_)) | (c, None) if raw.direction.is_some() || raw.lane.is_some() => {
            return Err(malformed(format!(
                "`{}` is for the whole gate: it takes no `lane` or `direction`",
                c.as_str()
            )));
        }
        _ => {}
    }
    Ok(Command {
        site: raw.site,
        gate: raw.gate,
        cmd: raw.cmd,
        lane: raw.lane,
        direction: raw.direction.unwrap_or(Direction::In),
        subject: raw.subject,
        challenge: raw.challenge,
        nonce: raw.nonce,
        issued_at,
        expires_at,
    })
}

/// The result of applying a list update or command, published on `ack`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(rename = "ref")]
    pub ref_: String,
    pub ok: bool,
    pub error: Option<String>,
    /// Human-readable detail of a refusal (an extension of the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub ts: String,
    /// SHA-256 of the message acked, as received (an extension of the contract). `ref` names a
    /// message only once its signature verified; this names every message, so its sender
    /// can tell its own refusal from anyone else's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The `sha256` an ack carries for `payload`: lowercase hex.
pub fn message_digest(payload: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub pending: u64,
    pub oldest_ts: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListVersions {
    pub staff: u64,
    pub visitors: u64,
    pub deny: u64,
    #[serde(default)]
    pub calendar: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub online: bool,
    pub version: String,
    pub ts: String,
    pub mode: String,
    pub lists: ListVersions,
    pub outbox: OutboxStatus,
    pub devices: std::collections::BTreeMap<String, String>,
    /// `synced`, `free_running` (no sync required) or `untrusted`.
    pub clock: String,
    /// Why the clock is untrusted: `not_synced`, `jumped`, `before_last_event`,
    /// `before_build` (an extension of the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_reason: Option<String>,
    /// Since when the gate has had no contact with the centre (null: in contact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since: Option<String>,
    /// The latest time without contact that has ended (an extension of the contract): a
    /// status is only sent in contact, so this is how the centre learns of an outage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offline: Option<LastOffline>,
    /// What an `attest_time` command must carry to vouch for this gate's clock (an extension
    /// of the contract): replaced when used, at restart, and every few minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_challenge: Option<String>,
    /// `true` from `gated demo` only (an extension of the contract): not a real gate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub demo: bool,
}

/// `last_offline` of the status: how long the gate was without contact with the centre, and
/// the credential decisions it took meanwhile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastOffline {
    /// The last contact before it (at most a minute early); null when there had been none.
    pub since: Option<String>,
    /// When contact came back.
    pub until: String,
    /// `until - since` in milliseconds; null with `since` null.
    pub ms: Option<i64>,
    pub granted: u64,
    pub denied: u64,
    /// Of `denied`: refused `offline_limit`.
    pub offline_limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics {
            root: "acs".into(),
            site: "hq".into(),
            gate: "east-1".into(),
        }
    }

    #[test]
    fn an_attestation_needs_a_challenge_and_a_short_life() {
        let body = |cmd: &str, challenge: Option<&str>, expires: &str| {
            let mut v = serde_json::json!({"site": "hq", "gate": "east-1", "cmd": cmd,
                "nonce": "nonce-0001", "issued_at": "2026-12-01T10:00:00Z", "expires_at": expires});
            if let Some(c) = challenge {
                v["challenge"] = c.into();
            }
            serde_json::to_vec(&v).unwrap_or_default()
        };
        let ok = parse_command(&body(
            "attest_time",
            Some("0123456789abcdef"),
            "2026-12-01T10:05:00Z",
        ))
        .expect("valid");
        assert_eq!(ok.challenge.as_deref(), Some("0123456789abcdef"));
        for (cmd, challenge, expires, why) in [
            (
                "attest_time",
                None,
                "2026-12-01T10:01:00Z",
                "needs the `challenge`",
            ),
            (
                "attest_time",
                Some("short"),
                "2026-12-01T10:01:00Z",
                "challenge must be",
            ),
            (
                "attest_time",
                Some("0123456789abcdef"),
                "2026-12-01T10:05:01Z",
                "at most 5 min",
            ),
            (
                "lockdown",
                Some("0123456789abcdef"),
                "2026-12-01T10:01:00Z",
                "takes no `challenge`",
            ),
        ] {
            let r = parse_command(&body(cmd, challenge, expires)).expect_err(why);
            assert!(r.detail().contains(why), "{cmd}: {r}");
        }
    }

    #[test]
    fn bounded_cuts_at_a_char_boundary_escapes_control_characters_and_marks_the_cut() {
        assert!(matches!(
            bounded("E1001", 80),
            std::borrow::Cow::Borrowed("E1001")
        ));
        assert_eq!(bounded("a\u{1b}[2Jb\n", 80), "a\\u{1b}[2Jb\\n");
        let long = "é".repeat(100); // 200 bytes, two per char
        let cut = bounded(&long, 11);
        assert!(cut.starts_with(&"é".repeat(5)), "{cut}");
        assert!(cut.ends_with("…[190 more bytes]"), "{cut}");
        let huge = "K".repeat(1 << 20);
        assert!(bounded(&huge, MAX_DETAIL_BYTES).len() <= MAX_DETAIL_BYTES + 32);
    }

    #[test]
    fn a_megabyte_credential_id_is_refused_in_a_bounded_detail() {
        let id = "7".repeat(1 << 20);
        let body = format!(
            r#"{{"list":"staff","site":"hq","version":2,"entries":[{{"subject":"E1","credentials":[{{"kind":"card","id":"{id}"}}],"gates":["*"]}}]}}"#
        );
        let r = parse_snapshot(ListName::Staff, body.as_bytes()).expect_err("refused");
        assert_eq!(r.code(), "malformed");
        assert!(r.detail().contains("1048576 bytes"), "{r}");
        assert!(r.detail().len() < 512, "{} bytes", r.detail().len());
    }

    #[test]
    fn free_text_fields_are_bounded() {
        let long = "x".repeat(1 << 20);
        let cases = [
            (
                ListName::Deny,
                format!(
                    r#"{{"list":"deny","site":"hq","version":1,"entries":[{{"kind":"card","id":"1","reason":"{long}"}}]}}"#
                ),
                "entries[0].reason",
            ),
            (
                ListName::Staff,
                format!(
                    r#"{{"list":"staff","site":"hq","version":1,"entries":[{{"subject":"E1","name":"{long}","credentials":[],"gates":["*"]}}]}}"#
                ),
                "entries[0].name",
            ),
            (
                ListName::Visitors,
                format!(
                    r#"{{"list":"visitors","site":"hq","version":1,"entries":[{{"invitation":"I1","visitor":"{long}","credentials":[],"gates":["*"]}}]}}"#
                ),
                "entries[0].visitor",
            ),
            (
                ListName::Visitors,
                format!(
                    r#"{{"list":"visitors","site":"hq","version":1,"entries":[{{"invitation":"I1","host":"{long}","credentials":[],"gates":["*"]}}]}}"#
                ),
                "entries[0].host",
            ),
            (
                ListName::Calendar,
                format!(
                    r#"{{"list":"calendar","site":"hq","version":1,"entries":[{{"date":"2026-10-01","name":"{long}"}}]}}"#
                ),
                "entries[0].name",
            ),
        ];
        for (list, body, field) in cases {
            let r = parse_snapshot(list, body.as_bytes()).expect_err(field);
            assert_eq!(r.code(), "malformed", "{field}: {r}");
            assert!(
                r.detail().contains(field) && r.detail().contains(&MAX_TEXT_LEN.to_string()),
                "names {field} and the limit: {r}"
            );
            assert!(
                r.detail().len() < 512,
                "{field}: {} bytes",
                r.detail().len()
            );
        }
        // A delta's upserts are held to the same limits.
        let delta = format!(
            r#"{{"list":"deny","site":"hq","version":2,"base":1,"upsert":[{{"kind":"card","id":"1","reason":"{long}"}}]}}"#
        );
        assert_eq!(
            parse_delta(ListName::Deny, delta.as_bytes())
                .expect_err("refused")
                .code(),
            "malformed"
        );
        // At the limit, names of any script are taken.
        let name = "李".repeat(MAX_TEXT_LEN / 3);
        let ok = format!(
            r#"{{"list":"staff","site":"hq","version":1,"entries":[{{"subject":"E1","name":"{name}","credentials":[],"gates":["*"]}}]}}"#
        );
        assert!(parse_snapshot(ListName::Staff, ok.as_bytes()).is_ok());
    }

    #[test]
    fn topic_names_follow_the_contract() {
        let t = topics();
        assert_eq!(t.event(), "acs/hq/east-1/event");
        assert_eq!(t.list(ListName::Staff), "acs/hq/lists/staff");
        assert_eq!(t.list_delta(ListName::Deny), "acs/hq/lists/deny/delta");
        assert_eq!(
            t.parse_list_topic("acs/hq/lists/visitors/delta"),
            Some((ListName::Visitors, true))
        );
        assert_eq!(
            t.parse_list_topic("acs/hq/lists/staff"),
            Some((ListName::Staff, false))
        );
        assert_eq!(t.parse_list_topic("acs/other/lists/staff"), None);
    }

    #[test]
    fn the_design_snapshot_parses() {
        let body = br#"{"list":"staff","site":"hq","version":42,"issued_at":"2026-11-21T07:00:00Z",
 "entries":[{"subject":"E1001","name":"Li Wei",
   "credentials":[{"kind":"card","id":"0012345678"},{"kind":"face","id":"P1001"}],
   "valid_from":null,"valid_until":"2027-12-31T23:59:59Z","gates":["*"]}]}"#;
        let s = parse_snapshot(ListName::Staff, body).expect("valid snapshot");
        assert_eq!(s.version, 42);
        assert_eq!(s.entries.len(), 1);
    }

    #[test]
    fn a_staff_entry_may_be_lockdown_exempt_and_says_so_only_as_a_boolean() {
        let body = |v: &str| {
            format!(
                r#"{{"list":"staff","site":"hq","version":1,"entries":[{{"subject":"R7",
                "credentials":[],"gates":["*"],"lockdown_exempt":{v}}}]}}"#
            )
        };
        let exempt = |v: &str| match parse_snapshot(ListName::Staff, body(v).as_bytes()) {
            Ok(Snapshot {
                entries: Entries::Staff(e),
                ..
            }) => Ok(e[0].lockdown_exempt),
            Ok(_) => panic!("staff entries"),
            Err(e) => Err(e),
        };
        assert_eq!(exempt("true"), Ok(true));
        assert_eq!(exempt("false"), Ok(false));
        assert_eq!(exempt("null"), Ok(false));
        let e = exempt(r#""yes""#).expect_err("a string is refused");
        assert!(e.detail().contains("lockdown_exempt"), "{e}");
    }

    #[test]
    fn refusals_name_what_was_wrong() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"not json", "malformed", "snapshot body"),
            (br#"{"list":"deny","site":"hq","version":1,"entries":[]}"#, "wrong_list", "deny"),
            (br#"{"list":"staff","site":"hq","version":1,"entries":[{"subject":"E1","credentials":[],"gates":["*"],"valid_untill":"x"}]}"#, "malformed", "valid_untill"),
            (br#"{"list":"staff","site":"hq","version":1,"entries":[{"subject":"E1","credentials":[],"gates":[]}]}"#, "malformed", "gates is empty"),
            (br#"{"list":"staff","site":"hq","version":1,"entries":[{"subject":"E1","credentials":[],"gates":["a/#"]}]}"#, "malformed", "not a gate id"),
            (br#"{"list":"staff","site":"hq","version":1,"entries":[{"subject":"E1","credentials":[],"gates":["*"],"valid_until":"tomorrow"}]}"#, "malformed", "valid_until"),
            (br#"{"list":"staff","site":"hq","version":1,"entries":[{"subject":"E1","credentials":[],"gates":["*"]},{"subject":"E1","credentials":[],"gates":["*"]}]}"#, "malformed", "twice"),
            (br#"{"list":"staff","site":"hq","version":-1,"entries":[]}"#, "malformed", "version"),
        ];
        for (body, code, needle) in cases {
            let e = parse_snapshot(ListName::Staff, body).expect_err("must be refused");
            assert_eq!(e.code(), *code, "{e}");
            assert!(
                e.detail().contains(needle),
                "`{e}` should mention `{needle}`"
            );
        }
    }

    #[test]
    fn delta_checks() {
        let ok = br#"{"list":"deny","site":"hq","version":4,"base":3,"upsert":[{"kind":"card","id":"9"}],"remove":["card:7"]}"#;
        assert!(parse_delta(ListName::Deny, ok).is_ok());
        let bad_key = br#"{"list":"deny","site":"hq","version":4,"base":3,"remove":["7"]}"#;
        assert_eq!(
            parse_delta(ListName::Deny, bad_key).unwrap_err().code(),
            "malformed"
        );
        let huge = br#"{"list":"staff","site":"hq","version":9223372036854775808,"base":3}"#;
        assert_eq!(
            parse_delta(ListName::Staff, huge).unwrap_err().code(),
            "malformed"
        );
        let zero = br#"{"list":"staff","site":"hq","version":0,"entries":[]}"#;
        assert_eq!(
            parse_snapshot(ListName::Staff, zero).unwrap_err().code(),
            "malformed"
        );
        let backwards = br#"{"list":"staff","site":"hq","version":3,"base":3}"#;
        assert_eq!(
            parse_delta(ListName::Staff, backwards).unwrap_err().code(),
            "malformed"
        );
    }

    #[test]
    fn event_serializes_every_contract_field() {
        let e = PassEvent {
            id: "x".into(),
            seq: 1,
            site: "hq".into(),
            gate: "g".into(),
            lane: 0,
            direction: Direction::In,
            ts: format_ts(0),
            credential: None,
            subject: None,
            decision: Decision::Denied,
            reason: Reason::UnknownCredential,
            override_: None,
            passed: None,
            snapshot: None,
            ref_: None,
            flags: Vec::new(),
            seen_at: None,
        };
        let v: serde_json::Value = serde_json::to_value(&e).expect("serializes");
        for k in [
            "id",
            "seq",
            "site",
            "gate",
            "lane",
            "direction",
            "ts",
            "credential",
            "subject",
            "decision",
            "reason",
            "override",
            "passed",
            "snapshot",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["reason"], "unknown_credential");
    }
}
