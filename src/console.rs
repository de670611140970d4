//! gated's own output on stdout: what `check-config` and the demo print for a person.
//!
//! A reader that stops reading (`gated check-config --config FILE | head -1`) is not gated's
//! failure: the rest of the output is dropped and the command finishes as it would have.
//! `println!` would panic there, and a panic aborts the process.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout's reader has gone: nothing more is written.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout. A closed pipe is not an error; any other write error is
/// returned, so that output lost to a full disk is not reported as a success.
pub fn line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    if CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{args}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        r => r,
    }
}

/// An error and its causes on one line, as `{:#}` prints them, less the causes whose text the
/// line already holds: our errors quote their cause in their own message (`store: … : Read-only
/// file system`) and also give it as their source, and `{:#}` printed it twice.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_the_message_quotes_is_printed_once_and_others_are_kept() {
        let io = std::io::Error::other("Read-only file system");
        let quoted = crate::store::StoreError::File {
            path: "/var/lib/gated/gated.db.lock".into(),
            what: "cannot open",
            source: io,
        };
        let e = anyhow::Error::from(quoted).context("gated cannot start");
        assert_eq!(format!("{e:#}").matches("Read-only file system").count(), 2);
        let line = super::error_line(&e);
        assert_eq!(line.matches("Read-only file system").count(), 1, "{line}");
        assert!(
            line.starts_with("gated cannot start: store: cannot open"),
            "{line}"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_line(&plain), "outer: inner");
    }
}
