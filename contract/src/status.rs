//! The retained status (`{gate}/status`).

use serde::{Deserialize, Serialize};

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

/// The `state` of the status a gate publishes when it cannot start.
pub const CANNOT_START: &str = "cannot_start";

/// The retained status of a gate that cannot start (an extension of the contract): its store
/// could not be opened, and systemd starts it again every few seconds. `online` is `false`;
/// `state` is `cannot_start`; `error` says why (docs/mqtt.md, "Status").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CannotStart {
    pub online: bool,
    pub state: String,
    pub error: String,
    pub ts: String,
    pub version: String,
    /// `true` from `gated demo` only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub demo: bool,
}
