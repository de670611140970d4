//! The downlink: what the centre sends (list snapshots, deltas and commands), checked, carried
//! out and acked.
//!
//! G6: a message that is oversized, unsigned, wrongly signed, signed by an unknown key,
//! malformed, for another site or gate, stale, expired or replayed is refused with an ack that
//! names the reason; the lists in force stay in force (a snapshot comes into force by one
//! switch after all of it is written, a delta in one transaction) and nothing here can stop
//! the daemon.
//!
//! Order of checks: size, then the signature (nothing unsigned reaches a parser), then the
//! body's shape, then its scope (site, gate), then time and replay (expiry, nonce, version).

use std::sync::Arc;

use crate::control::{Control, Origin};
use crate::core::UnixMs;
use crate::store::{Applied, Stamp, Store};
use gated_contract::envelope::Verifier;
use gated_contract::{
    Ack, Command, CommandKind, ListName, MAX_COMMAND_BYTES, MAX_DETAIL_BYTES, Refusal, Topics,
    bounded, format_ts, message_digest, parse_command, parse_delta, parse_snapshot,
};

/// Everything the downlink needs to judge and apply a message.
pub struct Downlink {
    pub topics: Topics,
    pub verifier: Verifier,
    pub max_bytes: usize,
    pub store: Store,
    pub control: Arc<Control>,
}

/// The topics a downlink subscribes to: every list, its deltas, and this gate's commands.
pub fn subscriptions(topics: &Topics) -> Vec<String> {
    let mut t: Vec<String> = ListName::ALL
        .into_iter()
        .flat_map(|l| [topics.list(l), topics.list_delta(l)])
        .collect();
    t.push(topics.cmd());
    t
}

impl Downlink {
    /// Deletes what applied snapshots replaced. Called after their acks are on their way:
    /// a list is in force, and acked, before the old one is cleaned up.
    pub async fn tidy(&self) {
        self.store.drop_replaced().await;
    }

    /// Handles one message; returns the ack to publish, or `None` for a topic that is not ours
    /// to answer (or an empty retained message being cleared).
    pub async fn handle(&self, topic: &str, payload: bytes::Bytes, now: UnixMs) -> Option<Ack> {
        if payload.is_empty() {
            return None;
        }
        // Before anything is checked: a refusal of an unverified message has no `ref` of its
        // own, and its sender still needs to find its ack.
        let sha256 = Some(message_digest(&payload));
        let (reference, result) = if topic == self.topics.cmd() {
            self.command(payload, now).await
        } else {
            let (list, is_delta) = self.topics.parse_list_topic(topic)?;
            let (r, res) = self.list(list, is_delta, payload).await;
            let detail = |a: Applied| match a {
                Applied::Applied { version } => format!("version {version} in force"),
                Applied::AlreadyInForce { version } => {
                    format!("version {version} was already in force")
                }
            };
            (r, res.map(detail))
        };
        let ack = match result {
            Ok(detail) => {
                tracing::info!(topic, reference, detail, "downlink message applied");
                Ack {
                    ref_: reference,
                    ok: true,
                    error: None,
                    detail: Some(detail),
                    ts: format_ts(now),
                    sha256,
                }
            }
            Err(refusal) => {
                // Each echo in a refusal is bounded where it is made; this bounds the whole, so
                // no input can make an ack larger than the connection carries.
                let detail = bounded(refusal.detail(), MAX_DETAIL_BYTES).into_owned();
                let code = refusal.code();
                tracing::warn!(topic, reference, code, detail, "downlink message refused");
                Ack {
                    ref_: reference,
                    ok: false,
                    error: Some(code.to_string()),
                    detail: Some(detail),
                    ts: format_ts(now),
                    sha256,
                }
            }
        };
        Some(ack)
    }

    fn check_size(&self, payload: &[u8], limit: usize, what: &str) -> Result<(), Refusal> {
        if payload.len() > limit {
            return Err(Refusal::TooLarge(format!(
                "{} bytes, the limit ({what}) is {limit}",
                payload.len(),
            )));
        }
        Ok(())
    }

    async fn list(
        &self,
        list: ListName,
        is_delta: bool,
        payload: bytes::Bytes,
    ) -> (String, Result<Applied, Refusal>) {
        let unknown = list.as_str().to_string();
        if let Err(r) = self.check_size(&payload, self.max_bytes, "mqtt.max_message_bytes") {
            return (unknown, Err(r));
        }
        // Verifying and parsing a large list takes a while: keep it off the async workers.
        let verifier = self.verifier.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let body = verifier.open(&payload)?.body;
            drop(payload);
            if is_delta {
                parse_delta(list, &body).map(Update::Delta)
            } else {
                parse_snapshot(list, &body).map(Update::Snapshot)
            }
        })
        .await;
        let update = match parsed {
            Ok(Ok(u)) => u,
            Ok(Err(r)) => return (unknown, Err(r)),
            Err(e) => {
                let r = Refusal::Malformed(format!("parser failed: {e}"));
                return (unknown, Err(r));
            }
        };
        let (site, version) = match &update {
            Update::Snapshot(s) => (s.site.clone(), s.version),
            Update::Delta(d) => (d.site.clone(), d.version),
        };
        let reference = format!("{}@{version}", list.as_str());
        if site != self.topics.site {
            let r = Refusal::WrongSite(format!(
                "for site `{site}`, this gate is in `{}`",
                self.topics.site
            ));
            return (reference, Err(r));
        }
        // Rollback: the store refuses a snapshot not newer than the version in force
        // (`stale`) and a delta not on it (`version_gap`); the version is persisted.
        let r = match update {
            Update::Snapshot(s) => self.store.apply_snapshot(s).await,
            Update::Delta(d) => self.store.call(move |db| db.apply_delta(&d)).await,
        };
        let result = match r {
            Ok(inner) => inner,
            Err(e) => Err(Refusal::StoreError(e.to_string())),
        };
        (reference, result)
    }

    async fn command(
        &self,
        payload: bytes::Bytes,
        now: UnixMs,
    ) -> (String, Result<String, Refusal>) {
        let unknown = "cmd".to_string();
        let limit = MAX_COMMAND_BYTES.min(self.max_bytes);
        if let Err(r) = self.check_size(&payload, limit, "commands") {
            return (unknown, Err(r));
        }
        let opened = match self.verifier.open(&payload) {
            Ok(o) => o,
            Err(r) => return (unknown, Err(r)),
        };
        let cmd = match parse_command(&opened.body) {
            Ok(c) => c,
            Err(r) => return (unknown, Err(r)),
        };
        let reference = cmd.nonce.clone();
        let result = self.run_command(&cmd, opened.key, now).await;
        (reference, result)
    }

    async fn run_command(
        &self,
        cmd: &Command,
        key: Option<String>,
        now: UnixMs,
    ) -> Result<String, Refusal> {
        if cmd.site != self.topics.site {
            return Err(Refusal::WrongSite(format!(
                "for site `{}`, this gate is in `{}`",
                cmd.site, self.topics.site
            )));
        }
        if cmd.gate != self.topics.gate {
            return Err(Refusal::WrongGate(format!(
                "for gate `{}`, this is `{}`",
                cmd.gate, self.topics.gate
            )));
        }
        // A first check on the clock as it reads. The store checks expiry again, and checks
        // `issued_at`, against the command clock (which never goes back) in the transaction
        // that claims the nonce.
        if now > cmd.expires_at {
            return Err(Refusal::Expired(format!(
                "expired at {}, it is now {}",
                format_ts(cmd.expires_at),
                format_ts(now)
            )));
        }
        let origin = Origin {
            source: "remote",
            by: key,
            nonce: Some(Stamp {
                nonce: cmd.nonce.clone(),
                issued_at: cmd.issued_at,
                expires_at: cmd.expires_at,
            }),
        };
        tracing::info!(cmd = cmd.cmd.as_str(), by = ?origin.by, nonce = %cmd.nonce, "remote command");
        match cmd.cmd {
            CommandKind::Open => {
                let lane = cmd
                    .lane
                    .ok_or_else(|| Refusal::Malformed("open needs a lane".into()))?;
                self.control.open(lane, cmd.direction, &origin, now).await
            }
            CommandKind::ClearPassback => {
                let subject = cmd
                    .subject
                    .as_deref()
                    .ok_or_else(|| Refusal::Malformed("clear_passback needs a subject".into()))?;
                self.control.clear_passback(subject, &origin, now).await
            }
            CommandKind::ClearPassbackAll => self.control.clear_passback_all(&origin, now).await,
            CommandKind::AttestTime => {
                // Lab mode takes unsigned lists and commands; never a say over the clock.
                if origin.by.is_none() {
                    return Err(Refusal::Unsigned(
                        "a time attestation must be signed by a trusted admin key, even with \
                         allow_unsigned"
                            .into(),
                    ));
                }
                let challenge = cmd
                    .challenge
                    .as_deref()
                    .ok_or_else(|| Refusal::Malformed("attest_time needs a challenge".into()))?;
                self.control.attest_time(challenge, &origin, now).await
            }
            CommandKind::Resync => {
                // The link republishes the status after every downlink message it acks.
                self.control.claim(&origin, now).await?;
                Ok("status republished".into())
            }
            k => {
                let mode = k
                    .mode()
                    .ok_or_else(|| Refusal::Unsupported(format!("`{}`", k.as_str())))?;
                self.control.set_mode(mode, &origin, now).await
            }
        }
    }
}

enum Update {
    Snapshot(gated_contract::Snapshot),
    Delta(gated_contract::Delta),
}

#[cfg(test)]
mod tests {
    use super::*;
    use gated_contract::envelope::AdminKey;

    /// The default `max_message_bytes` takes a signed staff snapshot of 250k people, each
    /// with a card and a face credential, and the gate opens and parses it.
    #[test]
    fn the_default_fits_250k_staff() {
        use std::fmt::Write as _;
        let mut body = String::from(
            r#"{"list":"staff","site":"hq","version":1,"issued_at":"2026-11-21T07:00:00Z","entries":["#,
        );
        for i in 0..250_000 {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(
                body,
                r#"{sep}{{"subject":"E{i:07}","name":"Staff Member {i:07}","credentials":[{{"kind":"card","id":"{i:010}"}},{{"kind":"face","id":"P{i:07}"}}],"valid_from":null,"valid_until":"2027-12-31T23:59:59Z","gates":["*"]}}"#
            );
        }
        body.push_str("]}");
        let body = body.into_bytes();
        let key = AdminKey::generate("ops").expect("key");
        let sealed = key.seal(&body);
        let limit = crate::config::DEFAULT_MAX_MESSAGE_BYTES;
        eprintln!(
            "250k staff (card and face each): body {} bytes, signed envelope {} bytes, limit {limit}",
            body.len(),
            sealed.len()
        );
        assert!(
            sealed.len() <= limit,
            "{} bytes signed, the default limit is {limit}",
            sealed.len()
        );
        let verifier = Verifier::new([(key.id.clone(), key.verifying_key())].into(), false);
        let opened = verifier.open(&sealed).expect("opens");
        let s = parse_snapshot(ListName::Staff, &opened.body).expect("parses");
        assert_eq!(s.entries.len(), 250_000);
    }
}
