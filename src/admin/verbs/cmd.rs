//! `gatectl cmd`: one signed command to one gate, and its ack.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::keys::load_key;
use super::publish::{answers, untrusted_key};
use super::{EXIT_NO_ACK, EXIT_OFFLINE, QUIET, Site, now, say};
use crate::admin::Failure;
use crate::admin::lists::{self, CommandRequest};
use crate::admin::mqtt::{MqttError, Session};
use crate::admin::show;
use gated_contract::{Ack, CommandKind, format_ts, message_digest};

/// `gatectl cmd`: one signed command to one gate, and its ack. Exit 0 when the gate carried it
/// out, 1 when it refused (or it could not be sent), 2 when no ack came (it may still be
/// carried out before it expires), 3 when the gate's retained status says it is offline
/// (nothing is sent: commands are not retained, so it would never see it) or its status turns
/// offline before it acks.
pub async fn cmd(
    site: &Site,
    key: Option<&Path>,
    req: CommandRequest,
    wait: Duration,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let what = format!("cmd {}", req.cmd.as_str());
    let key = load_key(key, &what)?;
    if !gated_contract::is_safe_name(&req.gate) {
        return Err(
            Failure::new(&what, format!("--gate `{}` is not a gate id", req.gate)).with_exit(64),
        );
    }
    let t = site.topics(&req.gate);
    let now = now();
    let attest = req.cmd == CommandKind::AttestTime;
    let build = |req: &CommandRequest| {
        lists::command_body(req, now).map_err(|r| {
            Failure::new(
                &what,
                format!("the command would be refused: {}", r.detail()),
            )
            .with_exit(64)
        })
    };
    // An attestation carries the challenge of the gate's status, read once connected; its
    // other fields are checked now, with a stand-in.
    let (mut nonce, mut body) = build(&CommandRequest {
        challenge: attest.then(|| "stand-in-challenge".to_string()),
        ..req.clone()
    })?;
    let mut session = site.connect("cmd", &what).await?;
    // The ack topic before publishing: an ack cannot come before its subscription. The status
    // comes right after the SUBACK, when the broker holds one.
    session
        .subscribe(&[t.ack(), t.status()])
        .await
        .map_err(|e| Failure::new(&what, e))?;
    let status = retained_status(&mut session, &t.status())
        .await
        .map_err(|e| Failure::new(&what, e))?;
    let offline = status.as_ref().and_then(|s| s.get("online")?.as_bool()) == Some(false);
    if offline {
        session.close().await;
        return Err(Failure::new(
            &what,
            format!(
                "{} is offline (its status on {} says so); nothing was sent",
                req.gate,
                t.status()
            ),
        )
        .with_exit(EXIT_OFFLINE));
    }
    if attest {
        let challenge = status
            .as_ref()
            .and_then(|s| s.get("clock_challenge")?.as_str())
            .map(str::to_string);
        let Some(challenge) = challenge else {
            session.close().await;
            return Err(Failure::new(
                &what,
                format!(
                    "{}'s status on {} shows no clock_challenge (no status yet, or a gated \
                     that does not take attest_time); nothing was sent",
                    req.gate,
                    t.status()
                ),
            ));
        };
        (nonce, body) = build(&CommandRequest {
            challenge: Some(challenge),
            ..req.clone()
        })?;
    }
    let payload = key.seal(&body);
    let ours = BTreeSet::from([message_digest(&payload)]);
    session
        .publish(&t.cmd(), payload, false)
        .await
        .map_err(|e| Failure::new(&what, e))?;
    let expires = format_ts(now + req.ttl_ms);
    say(
        out,
        format_args!(
            "sent {} to {} (nonce {nonce}, valid until {expires})",
            req.cmd.as_str(),
            t.cmd()
        ),
    )?;
    let end = Instant::now() + wait;
    loop {
        let m = session
            .next(end)
            .await
            .map_err(|e| Failure::new(&what, e))?;
        let Some(m) = m else {
            session.close().await;
            return Err(Failure::new(
                &what,
                format!(
                    "no ack from {} within {} s (is it online? see gatectl status). The command \
                     stays valid until {expires}: the gate may still carry it out",
                    req.gate,
                    wait.as_secs()
                ),
            )
            .with_exit(EXIT_NO_ACK));
        };
        // The last will, or the gate's own goodbye: no ack will come from it now (the command
        // is not queued for it either, its session being clean).
        if m.topic == t.status() {
            let status = serde_json::from_slice::<Value>(&m.payload).ok();
            if status.and_then(|s| s.get("online")?.as_bool()) == Some(false) {
                session.close().await;
                return Err(Failure::new(
                    &what,
                    format!(
                        "{} went offline before it acked (its status on {} says so); it may \
                         have carried the command out just before: check its events and mode \
                         once it is back (gatectl tail, gatectl status)",
                        req.gate,
                        t.status()
                    ),
                )
                .with_exit(EXIT_OFFLINE));
            }
            continue;
        }
        if m.topic != t.ack() {
            continue;
        }
        let Ok(ack) = serde_json::from_slice::<Ack>(&m.payload) else {
            continue;
        };
        if !answers(&ack, &ours, &nonce) {
            continue;
        }
        session.close().await;
        let shown = Ack {
            ref_: req.cmd.as_str().to_string(),
            ..ack.clone()
        };
        say(out, show::ack_result(&req.gate, &shown))?;
        if ack.ok {
            return Ok(());
        }
        let mut why = format!(
            "{} refused it: {}: {}",
            req.gate,
            show::clean(ack.error.as_deref().unwrap_or("?")),
            show::clean(ack.detail.as_deref().unwrap_or(""))
        );
        if untrusted_key(&ack) {
            why.push_str(&format!(
                ". {} does not trust the key `{}` this was signed with: add its [[trust.key]] \
                 block (grep ^public KEYFILE) to the gate's config, or sign with a key it trusts",
                req.gate, key.id
            ));
        }
        return Err(Failure::new(&what, why));
    }
}

/// The gate's retained status on `topic` (subscribed to, the SUBACK received). The broker
/// sends it right after the SUBACK; a gate that never connected has none, and then this
/// waits `QUIET` and says so.
pub(super) async fn retained_status(
    session: &mut Session,
    topic: &str,
) -> Result<Option<Value>, MqttError> {
    let end = Instant::now() + QUIET;
    while let Some(m) = session.next(end).await? {
        if m.topic == topic {
            return Ok(serde_json::from_slice::<Value>(&m.payload).ok());
        }
    }
    Ok(None)
}
