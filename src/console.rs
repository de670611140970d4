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
