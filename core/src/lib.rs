//! The pure decision core: plain data in (a credential, what the store found for it, the gate
//! mode, `now`), a decision and one reason code of the MQTT contract out.
//!
//! Architecture invariant: nothing here does I/O or reads a clock. No tokio, no SQLite, no MQTT;
//! time arrives as an argument. Everything that is hard to get right lives here so that it can
//! be unit- and property-tested without a device, a database or a broker.

mod decide;
pub mod time;

pub use decide::{FactorChange, Verdict, decide, decide_button};
pub use time::{Calendar, ClockSense, ClockState, Exception, Schedule, Span, Untrust};

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
    /// Whether this mode holds every lane open (its hold coils on).
    pub fn holds_open(self) -> bool {
        matches!(self, Mode::HoldOpen | Mode::EmergencyRelease)
    }

    /// The reason of a pass this mode lets through with no grant, when it holds lanes open.
    pub fn open_reason(self) -> Option<Reason> {
        match self {
            Mode::HoldOpen => Some(Reason::HoldOpen),
            Mode::EmergencyRelease => Some(Reason::EmergencyRelease),
            Mode::Normal | Mode::Lockdown => None,
        }
    }

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
    /// A lane direction configured for free exit released without needing a credential.
    FreeExit,
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
    /// Granted during a lockdown to a staff entry marked `lockdown_exempt` (a responder).
    LockdownExempt,
    ClockUntrusted,
    StoreUnavailable,
    /// The gate has had no contact with the centre for longer than the list's `max_offline`.
    OfflineLimit,
    /// A two-factor lane: this factor is valid, and the other one (card or face of the same
    /// subject) must follow within the lane's window.
    SecondFactorRequired,
    /// The swipe was older than `Policy::max_swipe_age_ms` when it could be decided (it
    /// waited in a reader's queue through an outage), or of unknown age: whoever stands at
    /// the lane now may not be the one who presented it. Recorded, never released.
    StaleSwipe,
}

impl Reason {
    /// Whether a pass for this reason moves its subject's in/out state (anti-passback): every
    /// pass a credential of a known subject makes, a grant, a free exit, or a pass while the
    /// mode holds the lanes open. Otherwise everyone who left during an evacuation would be
    /// refused at the door afterwards. Overrides and passage facts are not credential passes.
    pub fn moves_passback(self) -> bool {
        matches!(
            self,
            Self::Staff
                | Self::Visitor
                | Self::FreeExit
                | Self::LockdownExempt
                | Self::HoldOpen
                | Self::EmergencyRelease
        )
    }

    pub fn decision(self) -> Decision {
        match self {
            Self::Staff
            | Self::Visitor
            | Self::OverridePanel
            | Self::OverrideRemote
            | Self::HoldOpen
            | Self::EmergencyRelease
            | Self::Passage
            | Self::FreeExit
            | Self::LockdownExempt => Decision::Granted,
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

/// A subject's last pass that counts for anti-passback: here or, learned from the broker, at
/// another gate of the site.
#[derive(Clone, Debug, PartialEq)]
pub struct LastPass {
    pub direction: Direction,
    pub at: UnixMs,
}

/// A staff entry that holds the presented credential.
#[derive(Clone, Debug, PartialEq)]
pub struct StaffMatch {
    pub subject: String,
    pub validity: Validity,
    /// The entry's own schedule, by name.
    pub schedule: Option<String>,
    /// The entry's group, whose schedule applies when the entry names none.
    pub group: Option<String>,
    /// A responder: passes a lockdown.
    pub lockdown_exempt: bool,
    pub last: Option<LastPass>,
}

/// A visitor invitation that holds the presented credential, with its entries used so far.
#[derive(Clone, Debug, PartialEq)]
pub struct InvitationMatch {
    pub invitation: String,
    pub validity: Validity,
    /// `None` = unlimited entries within the window.
    pub max_entries: Option<u32>,
    pub used: u32,
    /// The invitation's weekly schedule, by name (a contractor limited to office hours).
    pub schedule: Option<String>,
    pub last: Option<LastPass>,
}

/// What the store found for one credential. The store looks up; the core judges.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Lookups {
    /// The deny-list entry's reason, when the credential is on it.
    pub denied: Option<String>,
    pub staff: Option<StaffMatch>,
    pub invitation: Option<InvitationMatch>,
    /// The deny list or the calendar is missing: a salvage of a damaged store lost it and its
    /// snapshot has not come yet. A credential is then granted by nothing that needs the lists
    /// (a revoked card would pass, a holiday would be open): refused `store_unavailable`.
    pub incomplete: bool,
}

/// Anti-passback, per gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassbackMode {
    #[default]
    Off,
    /// Grant, and flag the event `anti_passback`.
    Soft,
    /// Refuse `anti_passback`.
    Hard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Passback {
    pub mode: PassbackMode,
    /// Local time of day (minutes) at which every subject's state is forgotten.
    pub reset_at: Option<u16>,
}

/// What a lane direction lets through without a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreeExit {
    /// A credential is needed, as usual.
    #[default]
    No,
    /// Any credential presented releases (`free_exit`); the deny list still refuses.
    Open,
    /// The lane's request button releases (`free_exit`, no credential); a credential
    /// presented is decided as usual.
    Button,
}

/// Per-lane rules.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LaneRules {
    /// The lane's own opening hours, by schedule name.
    pub hours: Option<String>,
    /// Two-factor lane: card and face of one subject within this many milliseconds.
    pub two_factor_ms: Option<i64>,
    pub free_in: FreeExit,
    pub free_out: FreeExit,
}

impl LaneRules {
    pub fn free(&self, d: Direction) -> FreeExit {
        match d {
            Direction::In => self.free_in,
            Direction::Out => self.free_out,
        }
    }
}

/// The two factors of a two-factor lane: something held (card, QR, PIN) and a face.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    Token,
    Face,
}

impl Factor {
    pub fn of(kind: CredentialKind) -> Factor {
        match kind {
            CredentialKind::Face => Factor::Face,
            _ => Factor::Token,
        }
    }
}

/// The first factor presented on a two-factor lane, waiting for the second.
#[derive(Clone, Debug, PartialEq)]
pub struct FirstFactor {
    pub subject: String,
    pub factor: Factor,
    /// The second factor must come in the same direction (a face at the exit terminal does
    /// not complete a card at the entry reader).
    pub direction: Direction,
    pub at: UnixMs,
}

/// Everything about the moment of a decision that is not the credential's own entry.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub gate: &'a str,
    pub lane: u16,
    pub direction: Direction,
    pub mode: Mode,
    pub now: UnixMs,
    pub clock: ClockState,
    /// How long the gate has been without contact with the centre; `None` when in contact
    /// (or when it has no centre).
    pub offline_ms: Option<i64>,
    pub calendar: &'a Calendar,
    /// The first factor waiting on this lane, if any.
    pub first_factor: Option<&'a FirstFactor>,
    /// How old the presentation is at this decision; `None` for input that cannot wait in a
    /// queue (a command, a credential typed at the console).
    pub swipe_age: Option<SwipeAge>,
}

/// How long a presented credential waited before it could be decided, as its source knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwipeAge {
    /// Milliseconds since it was first seen, measured on a monotonic clock by the shell.
    Known(i64),
    /// Found queued in a device when its link came back (or at start): it may be of any age.
    Unknown,
}

impl SwipeAge {
    pub fn is_stale(self, max_ms: i64) -> bool {
        match self {
            Self::Known(ms) => ms > max_ms,
            Self::Unknown => true,
        }
    }
}

/// The schedule an unmapped group follows: no schedule can have this name (config names are
/// `[A-Za-z0-9_-]`), so it is never open.
pub const UNMAPPED_GROUP: &str = " unmapped group";

/// How one limit of an entry (its window, its schedule, its list's offline limit) applies to
/// an exit (direction `out`). Entries (`in`) are always refused by every limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitLimit {
    /// Exits are refused by it as entries are.
    Refuse,
    /// An exit is still granted for `ExitRules::grace_ms` after the limit ends.
    #[default]
    Grace,
    /// It never refuses an exit.
    Ignore,
}

/// What limits the exit of someone inside: a limit that traps people is worse than one that
/// lets a person leave a little late. The deny list, lockdown, the gate's and the lane's
/// hours, the gates an entry names, `valid_from` and anti-passback apply to exits as to
/// entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRules {
    pub grace_ms: i64,
    /// `valid_until` (an exit before `valid_from` is still refused).
    pub window: ExitLimit,
    /// The entry's schedule (its own, else its group's).
    pub schedule: ExitLimit,
    /// The list's `max_offline`.
    pub offline_limit: ExitLimit,
    /// Whether an exit uses an invitation entry too (and is refused once none is left).
    pub uses_entry: bool,
}

impl Default for ExitRules {
    fn default() -> Self {
        Self {
            grace_ms: 30 * 60_000,
            window: ExitLimit::Grace,
            // Staff routinely stay past their schedule: a schedule says when they may come in.
            schedule: ExitLimit::Ignore,
            offline_limit: ExitLimit::Grace,
            uses_entry: false,
        }
    }
}

impl ExitRules {
    /// Whether a visitor's pass in this direction uses one of the invitation's entries.
    pub fn uses_entry(&self, d: Direction) -> bool {
        d == Direction::In || self.uses_entry
    }

    /// How far past its end a limit still lets this direction through: `None` when it does
    /// not apply at all.
    pub fn slack(&self, limit: ExitLimit, d: Direction) -> Option<i64> {
        match (d, limit) {
            (Direction::In, _) | (Direction::Out, ExitLimit::Refuse) => Some(0),
            (Direction::Out, ExitLimit::Grace) => Some(self.grace_ms),
            (Direction::Out, ExitLimit::Ignore) => None,
        }
    }
}

/// Site policy the core applies; comes from config.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Minimum face match score (0..=1) for a face credential to count at all.
    pub min_face_score: f64,
    /// The site's time zone: schedules and the anti-passback reset are in its wall time.
    pub tz: chrono_tz::Tz,
    pub schedules: std::collections::BTreeMap<String, Schedule>,
    /// Group name → schedule name, for staff entries that name a group and no schedule.
    pub groups: std::collections::BTreeMap<String, String>,
    /// The gate's opening hours, by schedule name: outside them no credential is granted.
    pub gate_hours: Option<String>,
    pub lanes: std::collections::BTreeMap<u16, LaneRules>,
    pub passback: Passback,
    /// `max_offline` of the staff list, in milliseconds.
    pub staff_max_offline: Option<i64>,
    /// `max_offline` of the visitors list, in milliseconds.
    pub visitors_max_offline: Option<i64>,
    pub exit: ExitRules,
    /// A presentation older than this when decided is refused `stale_swipe`.
    pub max_swipe_age_ms: i64,
}

/// The default `max_swipe_age`: far above a healthy gate's decision time (milliseconds),
/// short enough that the person who swiped is still the one at the lane.
pub const DEFAULT_MAX_SWIPE_AGE_MS: i64 = 3_000;

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_face_score: 0.80,
            tz: chrono_tz::Tz::UTC,
            schedules: Default::default(),
            groups: Default::default(),
            gate_hours: None,
            lanes: Default::default(),
            passback: Passback::default(),
            staff_max_offline: None,
            visitors_max_offline: None,
            exit: ExitRules::default(),
            max_swipe_age_ms: DEFAULT_MAX_SWIPE_AGE_MS,
        }
    }
}

impl Policy {
    /// Whether a visitor's pass in this direction uses one of the invitation's entries: an
    /// entry does; an exit only where the site says so.
    pub fn uses_entry(&self, d: Direction) -> bool {
        self.exit.uses_entry(d)
    }

    /// The schedule a staff entry follows: its own, else its group's. A group the config
    /// does not map names no schedule the gate knows (`UNMAPPED_GROUP`), so it grants nothing:
    /// a typo in a list must never widen access. A group meant to be unrestricted maps to a
    /// schedule open all week.
    pub fn schedule_of<'a>(&'a self, staff: &'a StaffMatch) -> Option<&'a str> {
        staff.schedule.as_deref().or_else(|| {
            staff
                .group
                .as_deref()
                .map(|g| self.groups.get(g).map_or(UNMAPPED_GROUP, String::as_str))
        })
    }
}
