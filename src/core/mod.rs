//! The pure decision core: plain data in (a credential, what the store found for it, the gate
//! mode, `now`), a decision and one reason code of the MQTT contract out.
//!
//! Architecture invariant: nothing here does I/O or reads a clock. No tokio, no SQLite, no MQTT;
//! time arrives as an argument. Everything that is hard to get right lives here so that it can
//! be unit- and property-tested without a device, a database or a broker.

mod decide;

pub use decide::{Verdict, decide};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. The core never reads a clock: the shell passes it.
pub type UnixMs = i64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    Card,
    Qr,
    Face,
    Pin,
}

impl CredentialKind {
    pub const ALL: [CredentialKind; 4] = [Self::Card, Self::Qr, Self::Face, Self::Pin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Qr => "qr",
            Self::Face => "face",
            Self::Pin => "pin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// What a reader or face terminal presented.
#[derive(Clone, Debug, PartialEq)]
pub struct Credential {
    pub kind: CredentialKind,
    pub id: String,
    /// Face match score in 0..=1 for `face`, else `None`.
    pub score: Option<f64>,
}

/// The gate's operating mode. Only an override or a signed command changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Normal,
    /// Nothing is granted to a credential; only overrides open a lane.
    Lockdown,
    /// Lanes are held open; credentials are still checked and logged.
    HoldOpen,
    /// Fire or an emergency command: every lane is open until a guard resets it.
    EmergencyRelease,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Lockdown => "lockdown",
            Self::HoldOpen => "hold_open",
            Self::EmergencyRelease => "emergency_release",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Granted,
    Denied,
}

/// The reason codes of the MQTT contract; each one implies its decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Staff,
    Visitor,
    OverridePanel,
    OverrideRemote,
    HoldOpen,
    EmergencyRelease,
    Passage,
    UnknownCredential,
    Denylisted,
    NotYetValid,
    Expired,
    WrongGate,
    EntriesExhausted,
    OutsideSchedule,
    AntiPassback,
    LowFaceScore,
    Lockdown,
    ClockUntrusted,
    StoreUnavailable,
}

impl Reason {
    pub fn decision(self) -> Decision {
        match self {
            Self::Staff
            | Self::Visitor
            | Self::OverridePanel
            | Self::OverrideRemote
            | Self::HoldOpen
            | Self::EmergencyRelease
            | Self::Passage => Decision::Granted,
            _ => Decision::Denied,
        }
    }

    pub fn is_granted(self) -> bool {
        self.decision() == Decision::Granted
    }
}

/// When and where an entry of a list is valid.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Validity {
    /// Inclusive; `None` = valid since always.
    pub valid_from: Option<UnixMs>,
    /// Inclusive; `None` = valid for ever.
    pub valid_until: Option<UnixMs>,
    /// Gate ids, or `"*"` for every gate of the site.
    pub gates: Vec<String>,
}

/// A staff entry that holds the presented credential.
#[derive(Clone, Debug, PartialEq)]
pub struct StaffMatch {
    pub subject: String,
    pub validity: Validity,
}

/// A visitor invitation that holds the presented credential, with its entries used so far.
#[derive(Clone, Debug, PartialEq)]
pub struct InvitationMatch {
    pub invitation: String,
    pub validity: Validity,
    /// `None` = unlimited entries within the window.
    pub max_entries: Option<u32>,
    pub used: u32,
}

/// What the store found for one credential. The store looks up; the core judges.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Lookups {
    /// The deny-list entry's reason, when the credential is on it.
    pub denied: Option<String>,
    pub staff: Option<StaffMatch>,
    pub invitation: Option<InvitationMatch>,
}

/// Site policy the core applies; comes from config.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Minimum face match score (0..=1) for a face credential to count at all.
    pub min_face_score: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_face_score: 0.80,
        }
    }
}
