//! What every message kind shares: outside input quoted back bounded, and times as the
//! contract writes them.

use chrono::{DateTime, SecondsFormat, Utc};
use gated_core::UnixMs;

/// The most bytes of one piece of outside input (an id, a field name, a value) that a refusal,
/// an alarm or a log line quotes back. Ids are at most 64 bytes; anything longer is cut.
pub const MAX_ECHO_BYTES: usize = 80;
/// The most bytes of a free-text `detail` the gate publishes (an ack's, an alarm's): a
/// refusal says what was wrong in words, and never carries the message it refuses.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// `s` made safe to quote in what the gate publishes or logs: control characters escaped
/// (`\u{1b}`, `\n`), so they cannot drive a terminal or forge a log line, and cut at a char
/// boundary after at most `max` bytes, the cut marked with how much was left out. Everything
/// that echoes input from the broker or a device goes through here, so that no input can make
/// a message larger than the connection can carry.
pub fn bounded(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max && !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(max.min(s.len()) + 32);
    for (at, c) in s.char_indices() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            out.push_str(&format!("…[{} more bytes]", s.len() - at));
            break;
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Formats a time the way the contract does: RFC 3339, UTC, milliseconds, `Z`.
pub fn format_ts(ms: UnixMs) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_ts(s: &str) -> Result<UnixMs, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!(
                "`{}` is not an RFC 3339 time ({e})",
                bounded(s, MAX_ECHO_BYTES)
            )
        })
}

/// Parses a calendar date, `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("`{}` is not a date YYYY-MM-DD", bounded(s, MAX_ECHO_BYTES)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_at_a_char_boundary_escapes_control_characters_and_marks_the_cut() {
        assert!(matches!(
            bounded("E1001", 80),
            std::borrow::Cow::Borrowed("E1001")
        ));
        assert_eq!(bounded("a\u{1b}[2Jb\n", 80), "a\\u{1b}[2Jb\\n");
        let long = "é".repeat(100); // 200 bytes, two per char
        let cut = bounded(&long, 11);
        assert!(cut.starts_with(&"é".repeat(5)), "{cut}");
        assert!(cut.ends_with("…[190 more bytes]"), "{cut}");
        let huge = "K".repeat(1 << 20);
        assert!(bounded(&huge, MAX_DETAIL_BYTES).len() <= MAX_DETAIL_BYTES + 32);
    }
}
