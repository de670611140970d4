//! Shared by the verbs that publish: what the broker holds for a list (its retained snapshot,
//! the gates' statuses), publishing and gathering the acks, and the summary printed from them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{EXIT_NO_ACK, QUIET, READ_DEADLINE, Site, say};
use crate::admin::Failure;
use crate::admin::lists;
use crate::admin::mqtt::{Message, MqttError, Session};
use crate::admin::show;
use gated_contract::envelope::AdminKey;
use gated_contract::{Ack, ListName, Refusal, Snapshot, message_digest};

// ---- what the broker holds for the site --------------------------------------------------------

/// What the broker holds for a list: its retained snapshot and the gates' statuses.
pub(super) struct SiteState {
    retained: Option<Message>,
    /// Gate → its retained status (possibly only the last will, `{"online":false}`).
    statuses: BTreeMap<String, Value>,
}

impl SiteState {
    /// Gate → the version of `list` it reports.
    pub(super) fn reported(&self, list: ListName) -> BTreeMap<String, u64> {
        self.statuses
            .iter()
            .filter_map(|(g, s)| {
                s.pointer(&format!("/lists/{}", list.as_str()))
                    .and_then(Value::as_u64)
                    .map(|v| (g.clone(), v))
            })
            .collect()
    }

    fn online(&self) -> BTreeSet<String> {
        self.statuses
            .iter()
            .filter(|(_, s)| s.get("online").and_then(Value::as_bool) == Some(true))
            .map(|(g, _)| g.clone())
            .collect()
    }
}

/// Subscribes to the list, the statuses and the acks (acks first of all, so none is missed),
/// and reads what the broker holds.
pub(super) async fn read_site(
    session: &mut Session,
    site: &Site,
    list: ListName,
) -> Result<SiteState, MqttError> {
    let any = site.topics("+");
    let list_topic = any.list(list);
    session
        .subscribe(&[any.ack(), list_topic.clone(), any.status()])
        .await?;
    let msgs = session
        .settle(QUIET, Instant::now() + READ_DEADLINE)
        .await?;
    let mut state = SiteState {
        retained: None,
        statuses: BTreeMap::new(),
    };
    for m in msgs {
        if m.topic == list_topic {
            state.retained = (!m.payload.is_empty()).then_some(m);
        } else if let Some(gate) = show::gate_of(&m.topic, &site.root, &site.site, "status")
            && let Ok(v) = serde_json::from_slice::<Value>(&m.payload)
        {
            state.statuses.insert(gate.to_string(), v);
        }
    }
    Ok(state)
}

/// Opens the retained snapshot of `list`, if there is one.
pub(super) fn retained_snapshot(
    site: &Site,
    key: &AdminKey,
    list: ListName,
    state: &SiteState,
) -> Result<Option<Snapshot>, String> {
    let Some(m) = &state.retained else {
        return Ok(None);
    };
    let topic = site.topics("+").list(list);
    lists::open_retained(&site.verifier(key), list, &site.site, &m.payload)
        .map(|(s, _)| Some(s))
        .map_err(|r| match r {
            Refusal::UnknownKey(_) => {
                let signer = serde_json::from_slice::<Value>(&m.payload)
                    .ok()
                    .and_then(|v| v.get("key")?.as_str().map(|k| show::clean(k).into_owned()))
                    .unwrap_or_else(|| "?".into());
                let mut trusted: Vec<&str> = site.trust.iter().map(|(id, _)| id.as_str()).collect();
                trusted.push(&key.id);
                format!(
                    "the retained snapshot on {topic} is signed by key `{signer}`, which gatectl \
                     does not trust (it trusts {})",
                    trusted.join(", ")
                )
            }
            r => format!("the retained snapshot on {topic} cannot be used ({r})"),
        })
}

// ---- publishing and acks -----------------------------------------------------------------------

/// An ok ack for a version that was in force before it came (the gate's downlink says
/// `version N was already in force`; the contract has no code for it).
pub(super) fn already_in_force(a: &Ack) -> bool {
    a.ok && a
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("already in force"))
}

/// What the gates said about one published version.
pub(super) struct Acks {
    lines: Vec<String>,
    refused: usize,
    /// Gates whose status says online that sent no ack in time.
    silent: usize,
    /// Refusals because the gate does not trust the signing key (`signer`).
    untrusted: usize,
    signer: String,
    /// The topic of the retained message published, if one was.
    retained: Option<String>,
}

/// The refusals that say the gate does not trust the key (or the message names none).
pub(super) fn untrusted_key(a: &Ack) -> bool {
    matches!(
        a.error.as_deref(),
        Some("unknown_key" | "bad_signature" | "unsigned")
    )
}

/// Whether `ack` answers one of the messages gatectl published (their digests `ours`) or, from
/// a gate too old to send digests, names `reference`. A refusal before the signature was
/// checked names only the list (`ref` `staff`, or `cmd`): the digest is what ties it to us.
pub(super) fn answers(ack: &Ack, ours: &BTreeSet<String>, reference: &str) -> bool {
    match &ack.sha256 {
        Some(d) => ours.contains(d),
        None => ack.ref_ == reference,
    }
}

/// Publishes `msgs` in order (each waits for its PUBACK), then gathers the acks that name
/// `reference` for up to `wait`, or until every online gate has answered for good.
pub(super) async fn publish_and_gather(
    session: &mut Session,
    site: &Site,
    msgs: Vec<(String, Vec<u8>, bool)>,
    signer: &str,
    reference: &str,
    state: &SiteState,
    wait: Duration,
) -> Result<Acks, MqttError> {
    let ours: BTreeSet<String> = msgs
        .iter()
        .map(|(_, payload, _)| message_digest(payload))
        .collect();
    let retained = msgs
        .iter()
        .find(|(_, _, retain)| *retain)
        .map(|(topic, _, _)| topic.clone());
    for (topic, payload, retain) in msgs {
        session.publish(&topic, payload, retain).await?;
    }
    let online = state.online();
    let mut acks: BTreeMap<String, Ack> = BTreeMap::new();
    let mut conflicts: BTreeSet<String> = BTreeSet::new();
    // A `version_gap` on a delta is followed by the snapshot: not the last word.
    let last_word = |a: &Ack| a.ok || a.error.as_deref() != Some("version_gap");
    let end = Instant::now() + wait;
    // With no gate known to be online, every ack within `wait` is welcome.
    while online.is_empty() || !online.iter().all(|g| acks.get(g).is_some_and(&last_word)) {
        let Some(m) = session.next(end).await? else {
            break;
        };
        let Some(gate) = show::gate_of(&m.topic, &site.root, &site.site, "ack") else {
            continue;
        };
        let Ok(ack) = serde_json::from_slice::<Ack>(&m.payload) else {
            continue;
        };
        if !answers(&ack, &ours, reference) {
            continue;
        }
        let ack = Ack {
            ref_: reference.to_string(),
            ..ack
        };
        // The version is new, so the first thing a gate says about it cannot be "already in
        // force" unless someone else published that version first.
        if !acks.contains_key(gate) && already_in_force(&ack) {
            conflicts.insert(gate.to_string());
        }
        // An ok stays: a gate that applied the delta acks the snapshot as already in force.
        if acks.get(gate).is_none_or(|a| !a.ok) {
            acks.insert(gate.to_string(), ack);
        }
    }
    let mut lines = Vec::new();
    let mut refused = 0;
    let mut silent = 0;
    let mut untrusted = 0;
    let gates: BTreeSet<&String> = online
        .iter()
        .chain(acks.keys())
        .chain(state.statuses.keys())
        .collect();
    for gate in gates {
        match acks.get(gate) {
            Some(_) if conflicts.contains(gate) => {
                refused += 1;
                lines.push(format!(
                    "{}: {reference} CONFLICT: the gate already had a {reference} from another \
                     publication (another admin at the same moment, or --force-version of a \
                     version in force) and keeps it; publish again",
                    show::clean(gate)
                ));
            }
            Some(a) => {
                refused += usize::from(!a.ok);
                untrusted += usize::from(untrusted_key(a));
                lines.push(show::ack_result(gate, a));
            }
            None if online.contains(gate) => {
                silent += 1;
                lines.push(format!(
                    "{}: no ack within {} s",
                    show::clean(gate),
                    wait.as_secs()
                ));
            }
            None => lines.push(format!(
                "{}: offline; it takes {reference} from the retained snapshot when it reconnects",
                show::clean(gate)
            )),
        }
    }
    Ok(Acks {
        lines,
        refused,
        silent,
        untrusted,
        signer: signer.to_string(),
        retained,
    })
}

pub(super) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub(super) fn kib(n: usize) -> String {
    if n < 10 * 1024 {
        format!("{n} bytes")
    } else {
        format!("{} KiB", n / 1024)
    }
}

pub(super) fn finish(
    what: &str,
    acks: Acks,
    reference: &str,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    for l in &acks.lines {
        say(out, l)?;
    }
    let silent = (acks.silent > 0).then(|| {
        format!(
            "{} did not answer for {reference}",
            plural(acks.silent, "online gate", "online gates")
        )
    });
    if acks.refused > 0 {
        let mut why = format!(
            "{} refused {reference} (see above)",
            plural(acks.refused, "gate", "gates")
        );
        if let Some(s) = silent {
            why.push_str(&format!("; {s}"));
        }
        if acks.untrusted > 0 {
            why.push_str(&format!(
                ". {} not trust the key `{}` this was signed with: add its [[trust.key]] block \
                 (grep ^public KEYFILE) to the gate's config, or sign with a key it trusts",
                if acks.untrusted == 1 {
                    "1 gate does".to_string()
                } else {
                    format!("{} gates do", acks.untrusted)
                },
                acks.signer
            ));
            // Gates that connect later read it too, and gatectl cannot build on it.
            if let Some(topic) = &acks.retained {
                why.push_str(&format!(
                    ". {topic} now holds a list these gates refuse: push it again with a key \
                     they trust (--force-version N)"
                ));
            }
        }
        return Err(Failure::new(what, why));
    }
    if let Some(s) = silent {
        // Published, and retained for lists; whether the gate took it is not known.
        return Err(Failure::new(
            what,
            format!("{s} (see gatectl status; --wait gives it longer)"),
        )
        .with_exit(EXIT_NO_ACK));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_ours_by_the_digest_of_what_we_sent() {
        let sent = b"{\"v\":1}";
        let ours = BTreeSet::from([message_digest(sent)]);
        let ack = |ref_: &str, sha256: Option<String>| Ack {
            ref_: ref_.into(),
            ok: false,
            error: Some("bad_signature".into()),
            detail: None,
            ts: "2026-12-01T00:00:00Z".into(),
            sha256,
        };
        // Refused before the signature verified: the ref is only the list's name.
        assert!(answers(
            &ack("staff", Some(message_digest(sent))),
            &ours,
            "staff@2"
        ));
        // Someone else's message of the same version is not ours.
        assert!(!answers(
            &ack("staff@2", Some(message_digest(b"other"))),
            &ours,
            "staff@2"
        ));
        // A gate that sends no digest: by ref alone.
        assert!(answers(&ack("staff@2", None), &ours, "staff@2"));
        assert!(!answers(&ack("staff", None), &ours, "staff@2"));
        assert_eq!(
            message_digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
