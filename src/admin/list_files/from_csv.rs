//! CSV list files: a header row naming every column, one entry per row.

use std::collections::HashMap;

use crate::core::CredentialKind;
use gated_contract as contract;
use gated_contract::{CalendarEntry, CredentialRef, DenyEntry, ListName, StaffEntry, VisitorEntry};

use super::{Errs, MAX_ID_LEN, OPTIONAL_COLUMNS, Row, csv_columns, gate_check};

pub(super) fn read_csv(list: ListName, bytes: &[u8], errs: &mut Errs) -> Vec<(u64, Row)> {
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
