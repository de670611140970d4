//! Why a list or command was refused (the `error` of an ack), and the strict checks every
//! parser of what the centre sends shares: each one names what was wrong.

use serde::Deserialize;

use crate::{MAX_DETAIL_BYTES, MAX_ECHO_BYTES, bounded};

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
    /// Signed, but the signature does not verify under the key it names (see `envelope`).
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

pub(crate) fn check_version(what: &str, v: u64) -> Result<(), Refusal> {
    if v == 0 || v > MAX_VERSION {
        return Err(malformed(format!(
            "{what} {v} is not within 1..={MAX_VERSION}"
        )));
    }
    Ok(())
}

pub(crate) fn malformed(what: impl Into<String>) -> Refusal {
    Refusal::Malformed(what.into())
}

pub(crate) fn check_id(what: &str, s: &str) -> Result<(), Refusal> {
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
pub(crate) fn check_text(what: &str, s: &Option<String>) -> Result<(), Refusal> {
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

/// `[3].valid_until` for a path inside a list; empty for the root.
pub(crate) fn path_suffix(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    match s.as_str() {
        "." => String::new(),
        s if s.starts_with('[') => s.to_string(),
        s => format!(".{s}"),
    }
}

/// Deserializes JSON naming the path of the field that was wrong.
pub(crate) fn from_json<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, Refusal> {
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
