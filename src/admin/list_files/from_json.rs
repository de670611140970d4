//! JSON list files: an array of entries exactly as in a snapshot's `entries`.

use serde_json::value::RawValue;

use gated_contract::{Entries, ListName};

use super::{Errs, Row, gate_check};

fn line_at(text: &str, offset: usize) -> u64 {
    let upto = text.get(..offset).unwrap_or(text);
    upto.bytes().filter(|b| *b == b'\n').count() as u64 + 1
}

pub(super) fn read_json(list: ListName, bytes: &[u8], errs: &mut Errs) -> Vec<(u64, Row)> {
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
