//! The gatectl subcommands, from checked arguments to printed results. Results go to `out`
//! (stdout); warnings and progress to stderr; a failure is returned as a `Failure`, which
//! gatectl prints as `gatectl: <what failed>: <why>`.
//!
//! Lists are changed in one of two ways:
//! - `push` publishes a whole list as a retained snapshot, one version above everything known
//!   (the retained snapshot, and every version a gate reports in its status).
//! - `invite` and `revoke` edit the list: read the retained snapshot vN (it must verify under a
//!   key gatectl trusts: the list is rebuilt from it and signed again), publish the delta
//!   N→N+1 (small, for the gates at vN) and then the whole vN+1 as the new retained snapshot
//!   (for gates at another version, and for every gate that connects later: deltas are not
//!   retained). A gate that applied the delta acks the snapshot as already in force.
//!
//! One file per verb (`keys` for `keygen`, `push`, `invite`, `revoke`, `cmd`, `tail`,
//! `status`); what several share is here (the site, output, exit codes), in `publish` (what
//! the broker holds for a list, publishing and gathering acks) and in `edit` (the delta and
//! snapshot of an edit, for `invite` and `revoke`).

mod cmd;
mod edit;
mod invite;
mod keys;
mod publish;
mod push;
mod revoke;
mod status;
mod tail;

pub use cmd::cmd;
pub use invite::{InviteRequest, invite, write_qr};
pub use keys::{keygen, load_key};
pub use push::{PushRequest, push};
pub use revoke::{RevokeTarget, parse_credential, revoke};
pub use status::status;
pub use tail::{TailRequest, tail};

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;

use crate::admin::Failure;
use crate::admin::mqtt::{ConnectOptions, Endpoint, Session};
use crate::core::UnixMs;
use gated_contract::Topics;
use gated_contract::envelope::{AdminKey, Verifier};

/// How long to wait for retained messages to stop coming after the SUBACK.
const QUIET: Duration = Duration::from_millis(500);
/// The longest a read of retained messages may take.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Exit code: published, but a gate that is online did not ack in time.
pub const EXIT_NO_ACK: u8 = 2;
/// Exit code: `cmd` to a gate whose retained status says offline (nothing was sent), or that
/// went offline before it acked.
pub const EXIT_OFFLINE: u8 = 3;

/// Where gatectl works: the broker, the topic root and site, and the keys whose signatures it
/// accepts on retained snapshots.
pub struct Site {
    pub broker: Endpoint,
    pub root: String,
    pub site: String,
    pub trust: Vec<(String, VerifyingKey)>,
    /// TLS and login for the broker (`--tls-*`, `--auth-file`).
    pub secrets: crate::sync::transport::Secrets,
    pub tls: Option<crate::config::TlsConfig>,
}

impl Site {
    /// Topics with `gate` (which may be the wildcard `+`).
    fn topics(&self, gate: &str) -> Topics {
        Topics {
            root: self.root.clone(),
            site: self.site.clone(),
            gate: gate.to_string(),
        }
    }

    fn verifier(&self, key: &AdminKey) -> Verifier {
        let mut keys: BTreeMap<String, VerifyingKey> = self.trust.iter().cloned().collect();
        keys.insert(key.id.clone(), key.verifying_key());
        Verifier::new(keys, false)
    }

    async fn connect(&self, purpose: &str, what: &str) -> Result<Session, Failure> {
        Session::connect(&ConnectOptions::new(
            self.broker.clone(),
            &self.secrets,
            self.tls.as_ref(),
            purpose,
        ))
        .await
        .map_err(|e| Failure::new(what, e))
    }
}

fn now() -> UnixMs {
    chrono::Utc::now().timestamp_millis()
}

/// Writes a line to stdout; a closed pipe (`gatectl tail | head`) is not an error worth a
/// message, so it ends the command quietly.
fn say(out: &mut dyn Write, line: impl std::fmt::Display) -> Result<(), Failure> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Failure::new("output", "closed").with_exit(0)
            } else {
                Failure::new("writing the output", e)
            }
        })
}

fn warn(what: impl std::fmt::Display) {
    eprintln!("gatectl: warning: {what}");
}
