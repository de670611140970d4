//! The signed lists (`{site}/lists/{list}` and `…/delta`): their entries, snapshots and
//! deltas, and their strict parsers (unknown fields are refused: a typo in a list must never
//! widen access).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use gated_core::{CredentialKind, Span};

use crate::refusal::{check_id, check_text, check_version, from_json, malformed, path_suffix};
use crate::{
    MAX_DETAIL_BYTES, MAX_ECHO_BYTES, Refusal, bounded, is_safe_name, parse_date, parse_ts,
};

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
        if g != "*" && !is_safe_name(g) {
            return Err(malformed(format!(
                "{at}.gates: `{}` is not a gate id",
                bounded(g, MAX_ECHO_BYTES)
            )));
        }
    }
    Ok(())
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
                    Span::parse(h).map_err(|m| malformed(format!("{at}.hours[{j}]: {m}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_TEXT_LEN;

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
}
