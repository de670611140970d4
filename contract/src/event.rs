//! The pass event (`{gate}/event`): what the gate decided, and the later facts of a pass.

use serde::{Deserialize, Serialize};

use gated_core::{CredentialKind, Decision, Direction, Reason};

use crate::CommandKind;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format_ts;

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
