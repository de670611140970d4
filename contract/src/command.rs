//! Remote commands (`{gate}/cmd`) and their strict parser.

use serde::{Deserialize, Serialize};

use gated_core::{Direction, Mode, UnixMs};

use crate::Refusal;
use crate::parse_ts;
use crate::refusal::{check_id, from_json, malformed};

/// A remote command (docs/design.md, "Commands"), as the centre sends it on `{gate}/cmd`.
/// On the wire it is snake_case (`hold_open`); on gatectl's command line kebab-case
/// (`hold-open`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
    pub fn mode(self) -> Option<Mode> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
