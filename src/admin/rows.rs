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

use std::collections::HashMap;
use std::path::Path;

use serde_json::value::RawValue;

use crate::core::CredentialKind;
use gated_contract as contract;
use gated_contract::{
    CalendarEntry, CredentialRef, DenyEntry, Entries, ListName, StaffEntry, VisitorEntry,
};

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

// ---- CSV -------------------------------------------------------------------------------------

fn read_csv(list: ListName, bytes: &[u8], errs: &mut Errs) -> Vec<(u64, Row)> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let columns = csv_columns(list);
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            errs.add(csv_line(&e), None, csv_what(&e));
            return Vec::new();
        }
    };
    if headers.iter().all(str::is_empty) {
        errs.add(
            1,
            None,
            format!(
                "the file is empty; the first line must be the header `{}`",
                columns.join(",")
            ),
        );
        return Vec::new();
    }
    let mut index: HashMap<&'static str, usize> = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        let h = h.to_ascii_lowercase();
        match columns.iter().find(|c| **c == h) {
            Some(c) if index.contains_key(c) => errs.add(1, Some(c), "the column appears twice"),
            Some(c) => {
                index.insert(c, i);
            }
            None => errs.add(
                1,
                Some(&h),
                format!(
                    "not a column of a {} file (its columns are {})",
                    list.as_str(),
                    columns.join(",")
                ),
            ),
        }
    }
    for c in columns {
        if !index.contains_key(c) && !OPTIONAL_COLUMNS.contains(c) {
            errs.add(
                1,
                Some(c),
                format!(
                    "missing column (a {} file has the columns {})",
                    list.as_str(),
                    columns.join(",")
                ),
            );
        }
    }
    if errs.total > 0 {
        return Vec::new();
    }
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let io = matches!(e.kind(), csv::ErrorKind::Io(_));
                errs.add(csv_line(&e), None, csv_what(&e));
                if io {
                    break;
                }
                continue;
            }
        }
        let line = record.position().map_or(0, |p| p.line());
        let rec = Record {
            rec: &record,
            index: &index,
        };
        let before = errs.total;
        let mut f = Fields { errs, line };
        let row = match list {
            ListName::Staff => f.staff(&rec),
            ListName::Visitors => f.visitor(&rec),
            ListName::Deny => f.deny(&rec),
            ListName::Calendar => f.calendar(&rec),
        };
        if errs.total > before {
            continue;
        }
        // The gate's parser has the last word.
        let json = match &row {
            Row::Staff(e) => serde_json::to_string(e),
            Row::Visitor(e) => serde_json::to_string(e),
            Row::Deny(e) => serde_json::to_string(e),
            Row::Calendar(e) => serde_json::to_string(e),
        };
        match json
            .map_err(|e| e.to_string())
            .and_then(|j| gate_check(list, &j))
        {
            Ok(_) => rows.push((line, row)),
            Err(e) => errs.add(line, None, e),
        }
    }
    rows
}

/// Said after a time that does not parse: one that would.
const TIME_EXAMPLE: &str =
    "write a date and time with its offset, like 2027-12-31T23:59:59Z or 2027-12-31T18:00:00+08:00";

fn csv_line(e: &csv::Error) -> u64 {
    e.position().map_or(1, |p| p.line())
}

fn csv_what(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("the row has {len} fields, the header has {expected_len}"),
        csv::ErrorKind::Utf8 { err, .. } => {
            format!(
                "field {} is not UTF-8 (save the file as UTF-8)",
                err.field() + 1
            )
        }
        csv::ErrorKind::Io(e) => format!("cannot read: {e}"),
        _ => e.to_string(),
    }
}

/// One CSV row, read by column name.
struct Record<'a> {
    rec: &'a csv::StringRecord,
    index: &'a HashMap<&'static str, usize>,
}

impl<'a> Record<'a> {
    fn get(&self, column: &str) -> &'a str {
        self.index
            .get(column)
            .and_then(|i| self.rec.get(*i))
            .unwrap_or("")
    }
}

/// Checks the fields of one CSV row, adding every problem to `errs`.
struct Fields<'a> {
    errs: &'a mut Errs,
    line: u64,
}

impl Fields<'_> {
    fn bad(&mut self, field: &str, what: impl Into<String>) {
        self.errs.add(self.line, Some(field), what);
    }

    /// An id: required, 1..=64 bytes, no control characters.
    fn id(&mut self, field: &str, v: &str) -> String {
        if v.is_empty() {
            self.bad(field, "is empty, and is required");
        } else if v.len() > MAX_ID_LEN || v.chars().any(char::is_control) {
            self.bad(
                field,
                format!(
                    "`{}` must be 1..={MAX_ID_LEN} bytes without control characters",
                    v.escape_debug()
                ),
            );
        }
        v.to_string()
    }

    /// Free text: empty is none.
    fn text(&mut self, field: &str, v: &str) -> Option<String> {
        if v.chars().any(char::is_control) {
            self.bad(field, "contains control characters");
        }
        (!v.is_empty()).then(|| v.to_string())
    }

    /// A yes/no column: empty is no, as a column left out is.
    fn yes_no(&mut self, field: &str, v: &str) -> bool {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "no" | "false" => false,
            "yes" | "true" => true,
            _ => {
                self.bad(field, format!("`{}` is not yes or no", v.escape_debug()));
                false
            }
        }
    }

    /// Credentials of one kind, separated by `;`.
    fn credentials(&mut self, field: &str, kind: CredentialKind, v: &str) -> Vec<CredentialRef> {
        let mut out = Vec::new();
        for id in v.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            if !id.is_ascii() {
                self.bad(
                    field,
                    format!("`{id}` is not ASCII (credentials travel through the reader as ASCII)"),
                );
            } else if id.len() > MAX_ID_LEN || id.chars().any(|c| c.is_ascii_control()) {
                self.bad(
                    field,
                    format!(
                        "`{}` must be 1..={MAX_ID_LEN} characters without control characters",
                        id.escape_debug()
                    ),
                );
            }
            out.push(CredentialRef {
                kind,
                id: id.to_string(),
            });
        }
        out
    }

    /// An RFC 3339 time; empty is none.
    fn time(&mut self, field: &str, v: &str) -> Option<String> {
        if v.is_empty() {
            return None;
        }
        if let Err(e) = contract::parse_ts(v) {
            self.bad(field, format!("{e}: {TIME_EXAMPLE}"));
        }
        Some(v.to_string())
    }

    fn window(&mut self, from: &Option<String>, until: &Option<String>) {
        let ms = |t: &Option<String>| t.as_deref().and_then(|t| contract::parse_ts(t).ok());
        if let (Some(f), Some(u)) = (ms(from), ms(until))
            && f > u
        {
            self.bad("valid_until", "is before valid_from");
        }
    }

    fn gates(&mut self, v: &str) -> Vec<String> {
        let gates: Vec<String> = v
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if gates.is_empty() {
            self.bad("gates", "is empty (write * for every gate)");
        }
        for g in &gates {
            if g != "*" && !gated_contract::is_safe_name(g) {
                self.bad(
                    "gates",
                    format!(
                        "`{}` is not a gate id (1..=64 of [A-Za-z0-9_-], or *)",
                        g.escape_debug()
                    ),
                );
            }
        }
        gates
    }

    fn staff(&mut self, r: &Record) -> Row {
        let subject = self.id("subject", r.get("subject"));
        let name = self.text("name", r.get("name"));
        let mut credentials = self.credentials("card", CredentialKind::Card, r.get("card"));
        credentials.extend(self.credentials("face", CredentialKind::Face, r.get("face")));
        let valid_from = self.time("valid_from", r.get("valid_from"));
        let valid_until = self.time("valid_until", r.get("valid_until"));
        self.window(&valid_from, &valid_until);
        let gates = self.gates(r.get("gates"));
        let schedule = self.text("schedule", r.get("schedule"));
        let group = self.text("group", r.get("group"));
        let lockdown_exempt = self.yes_no("lockdown_exempt", r.get("lockdown_exempt"));
        Row::Staff(StaffEntry {
            subject,
            name,
            credentials,
            valid_from,
            valid_until,
            gates,
            schedule,
            group,
            lockdown_exempt,
        })
    }

    /// A calendar row: `hours` holds spans separated by spaces or `;` (empty: closed);
    /// `schedules` names separated by `;` (empty: every schedule that follows the calendar).
    fn calendar(&mut self, r: &Record) -> Row {
        let date = r.get("date").to_string();
        if let Err(e) = contract::parse_date(&date) {
            self.bad("date", format!("{e}, like 2026-10-01"));
        }
        let name = self.text("name", r.get("name"));
        let hours = r
            .get("hours")
            .split([' ', ';'])
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        let schedules: Vec<String> = r
            .get("schedules")
            .split([' ', ';'])
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        Row::Calendar(CalendarEntry {
            date,
            name,
            hours,
            schedules: (!schedules.is_empty()).then_some(schedules),
        })
    }

    fn visitor(&mut self, r: &Record) -> Row {
        let invitation = self.id("invitation", r.get("invitation"));
        let visitor = self.text("visitor", r.get("visitor"));
        let host = self.text("host", r.get("host"));
        let credentials = self.credentials("qr", CredentialKind::Qr, r.get("qr"));
        if credentials.is_empty() {
            self.bad("qr", "is empty: an invitation needs a code to open with");
        }
        let valid_from = self.time("valid_from", r.get("valid_from"));
        let valid_until = self.time("valid_until", r.get("valid_until"));
        self.window(&valid_from, &valid_until);
        let gates = self.gates(r.get("gates"));
        let max_entries = match r.get("max_entries") {
            "" => None,
            v => match v.parse::<u32>() {
                Ok(0) => {
                    self.bad(
                        "max_entries",
                        "is 0: the invitation would never open (leave it empty for no limit)",
                    );
                    None
                }
                Ok(n) => Some(n),
                Err(_) => {
                    self.bad(
                        "max_entries",
                        format!("`{}` is not a whole number", v.escape_debug()),
                    );
                    None
                }
            },
        };
        let schedule = self.text("schedule", r.get("schedule"));
        Row::Visitor(VisitorEntry {
            invitation,
            visitor,
            host,
            credentials,
            valid_from,
            valid_until,
            gates,
            max_entries,
            schedule,
        })
    }

    fn deny(&mut self, r: &Record) -> Row {
        let kind_text = r.get("kind").to_ascii_lowercase();
        let kind = CredentialKind::parse(&kind_text).unwrap_or_else(|| {
            self.bad(
                "kind",
                format!(
                    "`{}` is not a credential kind (card, qr, face, pin)",
                    kind_text.escape_debug()
                ),
            );
            CredentialKind::Card
        });
        let id = self.id("id", r.get("id"));
        let reason = self.text("reason", r.get("reason"));
        Row::Deny(DenyEntry { kind, id, reason })
    }
}

// ---- JSON ------------------------------------------------------------------------------------

fn line_at(text: &str, offset: usize) -> u64 {
    let upto = text.get(..offset).unwrap_or(text);
    upto.bytes().filter(|b| *b == b'\n').count() as u64 + 1
}

fn read_json(list: ListName, bytes: &[u8], errs: &mut Errs) -> Vec<(u64, Row)> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = line_at(
                std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
                e.valid_up_to(),
            );
            errs.add(line, None, "not UTF-8 (save the file as UTF-8)");
            return Vec::new();
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('{') {
        errs.add(
            1,
            None,
            "expected a JSON array of entries (a snapshot's `entries`), not an object",
        );
        return Vec::new();
    }
    let raws: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let msg = e.to_string();
            let msg = msg
                .rsplit_once(" at line ")
                .map_or(msg.as_str(), |(m, _)| m);
            errs.add(
                e.line() as u64,
                Some(&format!("column {}", e.column())),
                msg,
            );
            return Vec::new();
        }
    };
    let mut rows = Vec::new();
    for raw in raws {
        // `raw` borrows from `text`: its address says where the entry starts.
        let offset = (raw.get().as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
        let line = line_at(text, offset);
        match gate_check(list, raw.get()) {
            Ok(Entries::Staff(mut v)) => rows.extend(v.pop().map(|e| (line, Row::Staff(e)))),
            Ok(Entries::Visitors(mut v)) => rows.extend(v.pop().map(|e| (line, Row::Visitor(e)))),
            Ok(Entries::Deny(mut v)) => rows.extend(v.pop().map(|e| (line, Row::Deny(e)))),
            Ok(Entries::Calendar(mut v)) => rows.extend(v.pop().map(|e| (line, Row::Calendar(e)))),
            Err(e) => errs.add(line, None, e),
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(list: ListName, text: &str) -> Result<Loaded, FileErrors> {
        read(list, "f.csv", text.as_bytes(), Format::Csv)
    }

    fn json(list: ListName, text: &str) -> Result<Loaded, FileErrors> {
        read(list, "f.json", text.as_bytes(), Format::Json)
    }

    fn messages(r: Result<Loaded, FileErrors>) -> Vec<String> {
        r.expect_err("must be refused")
            .to_string()
            .lines()
            .map(str::to_string)
            .collect()
    }

    const STAFF_HEADER: &str = "subject,name,card,face,valid_from,valid_until,gates\n";

    #[test]
    fn a_staff_csv_becomes_entries() {
        let text = format!(
            "{STAFF_HEADER}E1001,Li Wei,0012345678;0012345679,P1001,,2027-12-31T23:59:59Z,*\n\
             E1002,\"Zhang, San\",0099,,2026-01-01T00:00:00Z,,east-1;west-2\n"
        );
        let l = csv(ListName::Staff, &text).expect("valid");
        assert_eq!(l.lines, vec![2, 3]);
        let Entries::Staff(v) = l.entries else {
            panic!("staff entries")
        };
        assert_eq!(v[0].credentials.len(), 3);
        assert_eq!(v[0].valid_from, None);
        assert_eq!(v[0].gates, vec!["*"]);
        assert_eq!(v[1].name.as_deref(), Some("Zhang, San"));
        assert_eq!(v[1].gates, vec!["east-1", "west-2"]);
        assert_eq!(v[1].credentials[0].kind, CredentialKind::Card);
    }

    #[test]
    fn a_calendar_csv_becomes_dates_and_bad_ones_are_named() {
        let text = "date,name,hours\n2026-10-01,National Day,\n2026-12-31,Short day,09:00-12:00 13:00-15:00\n";
        let l = csv(ListName::Calendar, text).expect("valid");
        let Entries::Calendar(v) = l.entries else {
            panic!("calendar entries")
        };
        assert_eq!(v.len(), 2);
        assert!(v[0].hours.is_empty());
        assert_eq!(v[1].hours, vec!["09:00-12:00", "13:00-15:00"]);
        assert_eq!(v[0].schedules, None);
        // A date may override only some schedules.
        let text = "date,name,hours,schedules\n2026-10-01,Office holiday,,office;front-desk\n2026-10-02,,,\n";
        let Entries::Calendar(v) = csv(ListName::Calendar, text).expect("valid").entries else {
            panic!("calendar entries")
        };
        assert_eq!(
            v[0].schedules,
            Some(vec!["office".to_string(), "front-desk".to_string()])
        );
        assert_eq!(v[1].schedules, None, "empty: every schedule");
        let m = messages(csv(
            ListName::Calendar,
            "date,name,hours\n2026-02-30,x,\n2026-03-01,y,12:00-09:00\n",
        ));
        assert!(
            m.iter()
                .any(|l| l.starts_with("f.csv:2") && l.contains("2026-02-30")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|l| l.starts_with("f.csv:3") && l.contains("12:00-09:00")),
            "{m:?}"
        );
        // Staff files may carry schedule and group columns, or leave them out.
        let staff = "subject,name,card,face,valid_from,valid_until,gates,schedule,group\nE1,,1,,,,*,office,\n";
        let Entries::Staff(v) = csv(ListName::Staff, staff).expect("valid").entries else {
            panic!("staff entries")
        };
        assert_eq!(v[0].schedule.as_deref(), Some("office"));
        assert_eq!(v[0].group, None);
    }

    #[test]
    fn a_staff_file_marks_responders_lockdown_exempt_yes_or_no() {
        let head = "subject,name,card,face,valid_from,valid_until,gates,lockdown_exempt\n";
        let ok = format!("{head}E1,,1,,,,*,yes\nE2,,2,,,,*,\nE3,,3,,,,*,No\n");
        let Entries::Staff(v) = csv(ListName::Staff, &ok).expect("valid").entries else {
            panic!("staff entries")
        };
        let exempt: Vec<bool> = v.iter().map(|e| e.lockdown_exempt).collect();
        assert_eq!(exempt, [true, false, false]);
        let m = messages(csv(ListName::Staff, &format!("{head}E1,,1,,,,*,maybe\n")));
        assert_eq!(
            m,
            ["f.csv:2: lockdown_exempt: `maybe` is not yes or no"],
            "{m:?}"
        );
    }

    #[test]
    fn columns_may_come_in_any_order_but_all_must_be_there() {
        let ok = "gates,valid_until,valid_from,face,card,name,subject\n*,,,,0012,,E1\n";
        assert!(csv(ListName::Staff, ok).is_ok());
        let m = messages(csv(
            ListName::Staff,
            "subject,name,card,gates,colour\nE1,,1,*,red\n",
        ));
        assert!(m.contains(&"f.csv:1: colour: not a column of a staff file (its columns are subject,name,card,face,valid_from,valid_until,gates,schedule,group,lockdown_exempt)".to_string()), "{m:?}");
        assert!(
            m.iter()
                .any(|l| l.starts_with("f.csv:1: valid_until: missing column")),
            "{m:?}"
        );
        assert!(messages(csv(ListName::Staff, ""))[0].contains("the file is empty"));
    }

    #[test]
    fn every_bad_row_is_named_by_line_and_field() {
        let text = format!(
            "{STAFF_HEADER}E1,A,0012,,,2027-01-01T00:00:00Z,*\n\
             ,B,0013,,,,*\n\
             E3,C,00½,,,tomorrow,*\n\
             E4,D,0015,,,,\n\
             E5,E,0016,,2027-01-02T00:00:00Z,2027-01-01T00:00:00Z,a/b\n\
             E1,F,0017,,,,*\n\
             E7,G,0012,,,,*\n\
             E8,H,1\n"
        );
        let m = messages(csv(ListName::Staff, &text));
        let want = [
            "f.csv:3: subject: is empty, and is required",
            "f.csv:4: card: `00½` is not ASCII (credentials travel through the reader as ASCII)",
            "f.csv:4: valid_until: `tomorrow` is not an RFC 3339 time",
            "f.csv:5: gates: is empty (write * for every gate)",
            "f.csv:6: valid_until: is before valid_from",
            "f.csv:6: gates: `a/b` is not a gate id",
            "f.csv:7: subject: `E1` is already on line 2",
            "f.csv:8: card: `0012` is already held by the entry on line 2",
            "f.csv:9: the row has 3 fields, the header has 7",
        ];
        for w in want {
            assert!(m.iter().any(|l| l.starts_with(w)), "no `{w}` in {m:#?}");
        }
        assert_eq!(m.len(), want.len(), "{m:#?}");
    }

    #[test]
    fn a_bad_date_is_shown_with_one_that_would_be_accepted() {
        let text = format!("{STAFF_HEADER}E1,A,0012,,2027-01-01,31/12/2027,*\n");
        let m = messages(csv(ListName::Staff, &text));
        assert_eq!(
            m,
            [
                "f.csv:2: valid_from: `2027-01-01` is not an RFC 3339 time (premature end of \
                 input): write a date and time with its offset, like 2027-12-31T23:59:59Z or \
                 2027-12-31T18:00:00+08:00",
                "f.csv:2: valid_until: `31/12/2027` is not an RFC 3339 time (premature end of \
                 input): write a date and time with its offset, like 2027-12-31T23:59:59Z or \
                 2027-12-31T18:00:00+08:00",
            ],
            "{m:#?}"
        );
        let m = messages(csv(ListName::Calendar, "date,name,hours\n1.10.2026,x,\n"));
        assert_eq!(
            m,
            ["f.csv:2: date: `1.10.2026` is not a date YYYY-MM-DD, like 2026-10-01"],
            "{m:#?}"
        );
    }

    #[test]
    fn visitors_and_deny_csv() {
        let v = "invitation,visitor,host,qr,valid_from,valid_until,gates,max_entries\n\
                 INV-1,Zhang San,E1001,TOKEN1,2026-11-21T08:00:00Z,2026-11-21T18:00:00Z,east-1,2\n\
                 INV-2,,,TOKEN2,,,*,\n";
        let l = csv(ListName::Visitors, v).expect("valid");
        let Entries::Visitors(v) = l.entries else {
            panic!("visitors")
        };
        assert_eq!(v[0].max_entries, Some(2));
        assert_eq!(v[1].max_entries, None);
        assert_eq!(v[0].credentials[0].kind, CredentialKind::Qr);
        let bad = "invitation,visitor,host,qr,valid_from,valid_until,gates,max_entries\n\
                   INV-1,,,,,,*,two\nINV-2,,,T,,,*,0\n";
        let m = messages(csv(ListName::Visitors, bad));
        assert!(
            m.iter().any(|l| l.starts_with("f.csv:2: qr: is empty")),
            "{m:?}"
        );
        assert!(
            m.contains(&"f.csv:2: max_entries: `two` is not a whole number".to_string()),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|l| l.starts_with("f.csv:3: max_entries: is 0")),
            "{m:?}"
        );

        let d = "kind,id,reason\ncard,0099887766,reported lost\nQR,ABC,\nbadge,1,x\ncard,0099887766,again\n";
        let m = messages(csv(ListName::Deny, d));
        assert!(
            m.iter()
                .any(|l| l.starts_with("f.csv:4: kind: `badge` is not a credential kind")),
            "{m:?}"
        );
        assert!(
            m.contains(&"f.csv:5: id: `card:0099887766` is already on line 2".to_string()),
            "{m:?}"
        );
        let ok = csv(ListName::Deny, "kind,id,reason\ncard,1,lost\nqr,A,\n").expect("valid");
        let Entries::Deny(d) = ok.entries else {
            panic!("deny")
        };
        assert_eq!(d[1].kind, CredentialKind::Qr);
        assert_eq!(d[1].reason, None);
    }

    #[test]
    fn a_json_array_is_read_and_errors_name_the_entry_line() {
        let ok = r#"[
  {"subject":"E1001","name":"Li Wei",
   "credentials":[{"kind":"card","id":"0012345678"}],
   "valid_from":null,"valid_until":"2027-12-31T23:59:59Z","gates":["*"]},
  {"subject":"E1002","credentials":[],"gates":["east-1"]}
]"#;
        let l = json(ListName::Staff, ok).expect("valid");
        assert_eq!(l.lines, vec![2, 5]);
        let bad = r#"[
  {"subject":"E1","credentials":[],"gates":["*"]},
  {"subject":"E2","credentials":[],"gates":["*"],
   "valid_untill":"2027-01-01T00:00:00Z"},
  {"subject":"E3","credentials":[],"gates":[]},
  {"subject":"E1","credentials":[],"gates":["*"]}
]"#;
        let m = messages(json(ListName::Staff, bad));
        assert!(
            m[0].starts_with("f.json:3: ") && m[0].contains("unknown field `valid_untill`"),
            "{m:?}"
        );
        assert!(m[1].starts_with("f.json:5: gates is empty"), "{m:?}");
        assert_eq!(m[2], "f.json:6: subject: `E1` is already on line 2");
        let syntax = messages(json(ListName::Staff, "[\n {\"subject\": }\n]"));
        assert!(syntax[0].starts_with("f.json:2: column "), "{syntax:?}");
        let object = messages(json(ListName::Staff, "{\"list\":\"staff\"}"));
        assert!(object[0].contains("array of entries"), "{object:?}");
    }

    #[test]
    fn many_problems_are_counted_past_the_ones_listed() {
        let mut text = STAFF_HEADER.to_string();
        for _ in 0..60 {
            text.push_str(",x,,,,,*\n");
        }
        let e = csv(ListName::Staff, &text).expect_err("refused");
        assert_eq!((e.errors.len(), e.total), (MAX_REPORTED, 60));
        assert!(e.to_string().ends_with("f.csv: … and 10 more problems"));
    }

    #[test]
    fn the_format_follows_the_extension() {
        assert_eq!(Format::of(Path::new("a/staff.CSV")), Ok(Format::Csv));
        assert_eq!(Format::of(Path::new("v.json")), Ok(Format::Json));
        assert!(Format::of(Path::new("staff.xlsx")).is_err());
    }
}
