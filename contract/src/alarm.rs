//! The alarm (`{gate}/alarm`).

use serde::{Deserialize, Serialize};

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

/// An alarm the gate could not record in its store (an extension of the contract): published
/// past the outbox, marked `"unrecorded": true` and without `seq`, since numbers come from the
/// store. A warning, not the record: the recorded alarm follows with its own `id` and `seq`
/// once the store can write (docs/mqtt.md, "Alarms").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnrecordedAlarm {
    pub id: String,
    pub site: String,
    pub gate: String,
    pub ts: String,
    pub alarm: String,
    pub source: String,
    pub detail: String,
    /// Always `true`: what tells it from a recorded `Alarm`.
    pub unrecorded: bool,
    /// `true` from `gated demo` only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub demo: bool,
}
