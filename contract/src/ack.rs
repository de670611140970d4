//! The ack (`{gate}/ack`) of a list update or a command.

use serde::{Deserialize, Serialize};

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
