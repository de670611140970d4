//! List files as admins write them, read into contract entries.
//!
//! Two formats, told apart by the file's extension:
//!
//! - CSV with a header row. Columns may come in any order, but all of them must be there (a
//!   column left out must not silently mean "valid for ever" or "no gates"), and no other:
//!   - staff: `subject,name,card,face,valid_from,valid_until,gates`, and optionally
//!     `schedule`, `group`, `lockdown_exempt` (`yes`, or empty / `no`)
//!   - visitors: `invitation,visitor,host,qr,valid_from,valid_until,gates,max_entries`, and
//!     optionally `schedule`
//!   - deny: `kind,id,reason`
//!   - calendar: `date,name,hours`, and `schedules` if any date overrides only some schedules
//!
//!   `card`, `face`, `qr` and `gates` hold several values separated by `;`; `gates` is `*` for
//!   every gate. An empty field is "none" (no credential of that kind, no bound on the window,
//!   no limit on entries); `gates` may not be empty.
//! - JSON: an array of entries exactly as in a snapshot's `entries` (docs/design.md, "Lists").
//!
//! Every problem is reported as `file:line: field: what`, all of them at once (up to
//! `MAX_REPORTED`), so a large export is fixed in one pass. Each entry also goes through the
//! gate's own entry parser (`contract::parse_entries`), so what a gate would refuse is refused
//! here first; and what the gate's store refuses for a whole list (a key or a credential on two
//! entries) is found here with both lines named.
//!
//! Files: this one (errors, the format, `read`, the checks of a whole file), `from_csv`,
//! `from_json`, and the tests.

use std::collections::HashMap;
use std::path::Path;

use crate::core::CredentialKind;
use gated_contract as contract;
use gated_contract::{
    CalendarEntry, CredentialRef, DenyEntry, Entries, ListName, StaffEntry, VisitorEntry,
};

mod from_csv;
mod from_json;
#[cfg(test)]
mod tests;

use from_csv::read_csv;
use from_json::read_json;

/// At most this many problems are listed; the rest are counted.
pub const MAX_REPORTED: usize = 50;

const MAX_ID_LEN: usize = 64;

/// One problem in a list file.
#[derive(Clone, Debug, PartialEq)]
pub struct RowError {
    /// 1-based line of the row (CSV) or of the start of the entry (JSON).
    pub line: u64,
    /// The column or field concerned, when there is one.
    pub field: Option<String>,
    pub what: String,
}

/// Everything wrong with one file.
#[derive(Debug)]
pub struct FileErrors {
    pub file: String,
    /// The first `MAX_REPORTED` problems, in file order.
    pub errors: Vec<RowError>,
    /// How many problems there are in all.
    pub total: usize,
}

impl std::fmt::Display for FileErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match &e.field {
                Some(field) => write!(f, "{}:{}: {field}: {}", self.file, e.line, e.what)?,
                None => write!(f, "{}:{}: {}", self.file, e.line, e.what)?,
            }
        }
        if self.total > self.errors.len() {
            write!(
                f,
                "\n{}: … and {} more problems",
                self.file,
                self.total - self.errors.len()
            )?;
        }
        Ok(())
    }
}

/// A list read from a file: its entries, and the line each one starts on.
#[derive(Debug)]
pub struct Loaded {
    pub entries: Entries,
    pub lines: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    /// The format a file's extension names.
    pub fn of(path: &Path) -> Result<Format, String> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Ok(Format::Csv),
            Some("json") => Ok(Format::Json),
            _ => Err(format!(
                "{}: the file name must end in .csv or .json (that is how its format is told)",
                path.display()
            )),
        }
    }
}

/// The CSV columns of a list, in the order `gatectl push --help` shows them.
pub fn csv_columns(list: ListName) -> &'static [&'static str] {
    match list {
        ListName::Staff => &[
            "subject",
            "name",
            "card",
            "face",
            "valid_from",
            "valid_until",
            "gates",
            "schedule",
            "group",
            "lockdown_exempt",
        ],
        ListName::Visitors => &[
            "invitation",
            "visitor",
            "host",
            "qr",
            "valid_from",
            "valid_until",
            "gates",
            "max_entries",
            "schedule",
        ],
        ListName::Deny => &["kind", "id", "reason"],
        ListName::Calendar => &["date", "name", "hours", "schedules"],
    }
}

/// Columns a file may leave out (empty in every row).
const OPTIONAL_COLUMNS: &[&str] = &["schedule", "group", "schedules", "lockdown_exempt"];

/// Reads `bytes` (the contents of the file called `file`) as entries of `list`.
pub fn read(
    list: ListName,
    file: &str,
    bytes: &[u8],
    format: Format,
) -> Result<Loaded, FileErrors> {
    let mut errs = Errs::default();
    let rows = match format {
        Format::Csv => read_csv(list, bytes, &mut errs),
        Format::Json => read_json(list, bytes, &mut errs),
    };
    check_unique(&rows, &mut errs);
    if errs.total > 0 {
        errs.list.sort_by_key(|e| e.line);
        return Err(FileErrors {
            file: file.to_string(),
            errors: errs.list,
            total: errs.total,
        });
    }
    let lines = rows.iter().map(|(l, _)| *l).collect();
    Ok(Loaded {
        entries: into_entries(list, rows.into_iter().map(|(_, r)| r)),
        lines,
    })
}

/// One entry of any list.
#[derive(Clone, Debug)]
enum Row {
    Staff(StaffEntry),
    Visitor(VisitorEntry),
    Deny(DenyEntry),
    Calendar(CalendarEntry),
}

impl Row {
    /// What names the entry in its list, and what it is called in messages.
    fn key(&self) -> (&'static str, String) {
        match self {
            Row::Staff(e) => ("subject", e.subject.clone()),
            Row::Visitor(e) => ("invitation", e.invitation.clone()),
            Row::Deny(e) => ("id", format!("{}:{}", e.kind.as_str(), e.id)),
            Row::Calendar(e) => ("date", e.date.clone()),
        }
    }

    fn credentials(&self) -> &[CredentialRef] {
        match self {
            Row::Staff(e) => &e.credentials,
            Row::Visitor(e) => &e.credentials,
            Row::Deny(_) | Row::Calendar(_) => &[],
        }
    }
}

fn into_entries(list: ListName, rows: impl Iterator<Item = Row>) -> Entries {
    let mut out = match list {
        ListName::Staff => Entries::Staff(Vec::new()),
        ListName::Visitors => Entries::Visitors(Vec::new()),
        ListName::Deny => Entries::Deny(Vec::new()),
        ListName::Calendar => Entries::Calendar(Vec::new()),
    };
    for r in rows {
        match (&mut out, r) {
            (Entries::Staff(v), Row::Staff(e)) => v.push(e),
            (Entries::Visitors(v), Row::Visitor(e)) => v.push(e),
            (Entries::Deny(v), Row::Deny(e)) => v.push(e),
            (Entries::Calendar(v), Row::Calendar(e)) => v.push(e),
            // Rows are built for `list`, so the kinds always agree.
            _ => {}
        }
    }
    out
}

#[derive(Default)]
struct Errs {
    list: Vec<RowError>,
    total: usize,
}

impl Errs {
    fn add(&mut self, line: u64, field: Option<&str>, what: impl Into<String>) {
        self.total += 1;
        if self.list.len() < MAX_REPORTED {
            self.list.push(RowError {
                line,
                field: field.map(str::to_string),
                what: what.into(),
            });
        }
    }
}

/// A key or a credential on two entries: the gate's store refuses the whole list for it.
fn check_unique(rows: &[(u64, Row)], errs: &mut Errs) {
    let mut keys: HashMap<String, u64> = HashMap::new();
    let mut creds: HashMap<(CredentialKind, &str), u64> = HashMap::new();
    for (line, row) in rows {
        let (field, key) = row.key();
        if let Some(first) = keys.get(&key) {
            errs.add(
                *line,
                Some(field),
                format!("`{key}` is already on line {first}"),
            );
        } else {
            keys.insert(key, *line);
        }
        for c in row.credentials() {
            match creds.get(&(c.kind, c.id.as_str())) {
                Some(first) if first != line => errs.add(
                    *line,
                    Some(c.kind.as_str()),
                    format!(
                        "`{}` is already held by the entry on line {first}: one credential must \
                         never open as two people",
                        c.id
                    ),
                ),
                Some(_) => errs.add(
                    *line,
                    Some(c.kind.as_str()),
                    format!("`{}` is listed twice", c.id),
                ),
                None => {
                    creds.insert((c.kind, c.id.as_str()), *line);
                }
            }
        }
    }
}

/// Runs one entry through the gate's own parser; its complaint, without the `[0]` path.
fn gate_check(list: ListName, entry_json: &str) -> Result<Entries, String> {
    contract::parse_entries(list, &format!("[{entry_json}]"), "").map_err(|r| {
        let d = r.detail();
        let d = d.strip_prefix("[0]").unwrap_or(d);
        let d = d
            .strip_prefix(": ")
            .or_else(|| d.strip_prefix('.'))
            .unwrap_or(d);
        d.to_string()
    })
}
