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
