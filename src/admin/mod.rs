//! The admin's side of the MQTT contract, for `gatectl` (`src/bin/gatectl.rs` only parses its
//! command line and calls `verbs`).
//!
//! - `list_files`: list files (CSV or JSON) read into contract entries, errors by `file:line`.
//! - `lists`: snapshot, delta and command bodies, checked by the gate's own parsers before
//!   they are signed; edits of a list (invite, revoke, deny); versions; tokens.
//! - `mqtt`: one short-lived broker session: subscribe, read retained messages, publish QoS 1
//!   and wait for the PUBACK.
//! - `show`: what an operator reads: event, alarm and ack lines, the status table.
//! - `verbs`: the subcommands, one file per verb, from checked arguments to printed results.
//!
//! Architecture invariant: nothing here is signed or published before it has passed the
//! parser the gate itself uses (`gated-contract`), so gatectl never sends what every gate
//! would refuse as malformed.

pub mod list_files;
pub mod lists;
pub mod mqtt;
pub mod show;
pub mod verbs;

/// A failed admin operation: `what` failed because of `why`. gatectl prints
/// `gatectl: {what}: {why}` and exits with `exit`; an `exit` of 0 ends quietly (the reader of
/// the output went away, as `gatectl tail | head` does).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct Failure {
    pub what: String,
    pub why: String,
    pub exit: u8,
}

impl Failure {
    pub fn new(what: impl Into<String>, why: impl std::fmt::Display) -> Failure {
        Failure {
            what: what.into(),
            why: why.to_string(),
            exit: 1,
        }
    }

    pub fn with_exit(mut self, exit: u8) -> Failure {
        self.exit = exit;
        self
    }
}
