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

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;
use tokio::time::Instant;

use super::Failure;
use super::lists::{self, CommandRequest, Edit};
use super::mqtt::{ConnectOptions, Endpoint, Message, MqttError, Session};
use super::rows::{self, Format};
use super::show;
use crate::core::{CredentialKind, UnixMs};
use gated_contract::envelope::{AdminKey, Verifier};
use gated_contract::{
    Ack, Alarm, CommandKind, CredentialRef, DenyEntry, Entries, ListName, PassEvent, Refusal,
    Snapshot, Topics, VisitorEntry, format_ts, message_digest, parse_ts,
};

/// How long to wait for retained messages to stop coming after the SUBACK.
const QUIET: Duration = Duration::from_millis(500);
/// The longest a read of retained messages may take.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// `tail` remembers this many ids to drop duplicates.
const DEDUP_IDS: usize = 100_000;
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

// ---- keys ------------------------------------------------------------------------------------

/// `gatectl keygen`: a new signing key in `path` (mode 0600, never over an existing file), and
/// the `[[trust.key]]` block for the gates on `out`. Missing directories on the way are made,
/// private (0700): on a fresh machine `~/.gatectl` does not exist yet. The key is written to a
/// temporary file beside it and moved into place whole, so a failed write leaves no half key.
pub fn keygen(id: &str, path: &Path, out: &mut dyn Write) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt as _;
    let what = "keygen";
    let key = AdminKey::generate(id).map_err(|e| Failure::new(what, e))?;
    let exists = || {
        Failure::new(
            what,
            format!(
                "{} exists; gatectl never overwrites a key file (move it away first if that is \
                 what you mean)",
                path.display()
            ),
        )
    };
    if path.symlink_metadata().is_ok() {
        return Err(exists());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Failure::new(what, format!("cannot create {}: {e}", dir.display())))?;
    // tempfile creates it 0600, in the same directory, so the move is a rename.
    let mut tmp = tempfile::Builder::new()
        .prefix(".gatectl-keygen-")
        .tempfile_in(dir)
        .map_err(|e| Failure::new(what, format!("cannot write in {}: {e}", dir.display())))?;
    tmp.write_all(key.to_file_text().as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Failure::new(what, format!("writing {}: {e}", path.display())))?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            exists()
        } else {
            Failure::new(
                what,
                format!("cannot create {}: {}", path.display(), e.error),
            )
        }
    })?;
    eprintln!(
        "gatectl: wrote the secret key `{id}` to {} (mode 0600): keep it secret, it opens every \
         gate that trusts it",
        path.display()
    );
    say(
        out,
        format_args!(
            "# Add to the config of every gate that must obey `{id}`:\n[[trust.key]]\nid = \"{id}\"\npublic = \"{}\"",
            key.public_b64()
        ),
    )
}

/// Loads the admin key, warning when others may read it.
pub fn load_key(path: Option<&Path>, what: &str) -> Result<AdminKey, Failure> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = path.ok_or_else(|| {
        Failure::new(
            what,
            "--key FILE (or GATECTL_KEY) is required: it signs what gatectl sends",
        )
        .with_exit(64)
    })?;
    let key = AdminKey::load(path).map_err(|e| Failure::new(what, e))?;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        warn(format_args!(
            "{} can be read by others (mode {:o}); chmod 600 it",
            path.display(),
            m.permissions().mode() & 0o777
        ));
    }
    Ok(key)
}

// ---- what the broker holds for the site --------------------------------------------------------

/// What the broker holds for a list: its retained snapshot and the gates' statuses.
struct SiteState {
    retained: Option<Message>,
    /// Gate → its retained status (possibly only the last will, `{"online":false}`).
    statuses: BTreeMap<String, Value>,
}

impl SiteState {
    /// Gate → the version of `list` it reports.
    fn reported(&self, list: ListName) -> BTreeMap<String, u64> {
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
async fn read_site(
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
fn retained_snapshot(
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
fn already_in_force(a: &Ack) -> bool {
    a.ok && a
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("already in force"))
}

/// What the gates said about one published version.
struct Acks {
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
fn untrusted_key(a: &Ack) -> bool {
    matches!(
        a.error.as_deref(),
        Some("unknown_key" | "bad_signature" | "unsigned")
    )
}

/// Whether `ack` answers one of the messages gatectl published (their digests `ours`) or, from
/// a gate too old to send digests, names `reference`. A refusal before the signature was
/// checked names only the list (`ref` `staff`, or `cmd`): the digest is what ties it to us.
fn answers(ack: &Ack, ours: &BTreeSet<String>, reference: &str) -> bool {
    match &ack.sha256 {
        Some(d) => ours.contains(d),
        None => ack.ref_ == reference,
    }
}

/// Publishes `msgs` in order (each waits for its PUBACK), then gathers the acks that name
/// `reference` for up to `wait`, or until every online gate has answered for good.
async fn publish_and_gather(
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

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn kib(n: usize) -> String {
    if n < 10 * 1024 {
        format!("{n} bytes")
    } else {
        format!("{} KiB", n / 1024)
    }
}

fn finish(what: &str, acks: Acks, reference: &str, out: &mut dyn Write) -> Result<(), Failure> {
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

// ---- push --------------------------------------------------------------------------------------

pub struct PushRequest {
    pub list: ListName,
    pub file: PathBuf,
    pub force_version: Option<u64>,
    /// Publish even an empty list (which takes every entry off every gate).
    pub allow_empty: bool,
    pub wait: Duration,
}

/// `gatectl push`: a whole list from a file, as the new retained snapshot.
pub async fn push(
    site: &Site,
    key: Option<&Path>,
    req: PushRequest,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let what = format!("push {}", req.list.as_str());
    let key = load_key(key, &what)?;
    let format = Format::of(&req.file).map_err(|e| Failure::new(&what, e))?;
    let name = req.file.display().to_string();
    let bytes = std::fs::read(&req.file)
        .map_err(|e| Failure::new(&what, format!("cannot read {name}: {e}")))?;
    let loaded = rows::read(req.list, &name, &bytes, format).map_err(|e| {
        Failure::new(
            &what,
            format!(
                "{name}: {} problem{}; nothing was published\n{e}",
                e.total,
                if e.total == 1 { "" } else { "s" }
            ),
        )
    })?;
    if loaded.entries.is_empty() && !req.allow_empty {
        return Err(Failure::new(
            &what,
            format!(
                "{name} has no entries: publishing it would empty the {} list of every gate. \
                 If that is what you mean, add --allow-empty",
                req.list.as_str()
            ),
        ));
    }

    // An entry already past opens nothing; a file of nothing else would let nobody in, like an
    // empty one, and needs the same consent. A few are published as they are (an export may
    // keep leavers until the next clean-up), each named.
    let past = lists::past_staff(&loaded.entries, &loaded.lines, now());
    for (line, subject, until) in &past {
        warn(format_args!(
            "{name}:{line}: valid_until: {until} is already past: `{subject}` opens nothing"
        ));
    }
    if !past.is_empty() && past.len() == loaded.entries.len() && !req.allow_empty {
        return Err(Failure::new(
            &what,
            format!(
                "every entry of {name} is past its valid_until: publishing it would let nobody \
                 in at any gate; nothing was published. If that is what you mean, add \
                 --allow-empty"
            ),
        ));
    }

    let mut session = site.connect("push", &what).await?;
    let state = read_site(&mut session, site, req.list)
        .await
        .map_err(|e| Failure::new(&what, e))?;
    let reported = state.reported(req.list);
    let retained = match retained_snapshot(site, &key, req.list, &state) {
        Ok(s) => s.map(|s| s.version),
        Err(e) if req.force_version.is_some() => {
            warn(format_args!("{e}; publishing as --force-version says"));
            None
        }
        Err(e) => {
            return Err(Failure::new(
                &what,
                format!(
                    "{e}. gatectl takes the next version from a snapshot only when its \
                     signature verifies: pass --trust ID=PUBKEY for the key that signed it, or \
                     --force-version N to publish as version N"
                ),
            ));
        }
    };
    let version = match req.force_version {
        Some(v) => {
            let newest = reported
                .values()
                .copied()
                .chain(retained)
                .max()
                .unwrap_or(0);
            if v <= newest {
                warn(format_args!(
                    "version {v} is not above {newest}, which is known: gates at a newer \
                     version refuse it as stale"
                ));
            }
            v
        }
        None => {
            let v = lists::next_version(retained);
            if let Some(w) = lists::ahead_of(req.list, v - 1, &reported) {
                warn(format_args!("{w}"));
            }
            v
        }
    };
    let body = lists::snapshot_body(&site.site, version, now(), &loaded.entries)
        .map_err(|r| Failure::new(&what, format!("the list would be refused: {r}")))?;
    let payload = key.seal(&body);
    let size = payload.len();
    let reference = format!("{}@{version}", req.list.as_str());
    let topic = site.topics("+").list(req.list);
    let acks = publish_and_gather(
        &mut session,
        site,
        vec![(topic.clone(), payload, true)],
        &key.id,
        &reference,
        &state,
        req.wait,
    )
    .await
    .map_err(|e| Failure::new(&what, e))?;
    session.close().await;
    say(
        out,
        format_args!(
            "published {reference} on {topic} (retained; {}, {}, signed by `{}`)",
            plural(loaded.entries.len(), "entry", "entries"),
            kib(size),
            key.id
        ),
    )?;
    finish(&what, acks, &reference, out)
}

// ---- edits: invite, revoke -----------------------------------------------------------------------

/// A list change, published.
struct Published {
    /// `published visitors@8: …`
    line: String,
    reference: String,
    acks: Acks,
}

impl Published {
    fn print(self, what: &str, out: &mut dyn Write) -> Result<(), Failure> {
        say(out, &self.line)?;
        finish(what, self.acks, &self.reference, out)
    }
}

/// Reads the retained list, applies `make` to it, publishes the delta and then the new
/// retained snapshot, and gathers the acks.
async fn edit(
    site: &Site,
    key: &AdminKey,
    list: ListName,
    what: &str,
    wait: Duration,
    make: impl FnOnce(&Entries, UnixMs) -> Result<Edit, String>,
) -> Result<Published, Failure> {
    let mut session = site.connect("edit", what).await?;
    let state = read_site(&mut session, site, list)
        .await
        .map_err(|e| Failure::new(what, e))?;
    let retained = retained_snapshot(site, key, list, &state).map_err(|e| {
        Failure::new(
            what,
            format!(
                "{e}. gatectl rebuilds the list from it and signs it again, so it must verify \
                 under a key gatectl trusts (--trust ID=PUBKEY). To start the list over, push \
                 it whole: gatectl push {} --file F --force-version N",
                list.as_str()
            ),
        )
    })?;
    // An edit re-signs the retained entries: built on an out-of-date base it could replace a
    // list another admin just published. So gates that report more stop it (push, which takes
    // its numbers only from the signed list, stays the way out).
    let base = retained.as_ref().map_or(0, |s| s.version);
    if let Some(w) = lists::ahead_of(list, base, &state.reported(list)) {
        return Err(Failure::new(
            what,
            format!(
                "{w}; nothing was published (another admin may be publishing right now: wait and retry)"
            ),
        ));
    }
    let current = match retained {
        Some(s) => s.entries,
        None => match list {
            ListName::Staff => Entries::Staff(Vec::new()),
            ListName::Visitors => Entries::Visitors(Vec::new()),
            ListName::Deny => Entries::Deny(Vec::new()),
            ListName::Calendar => Entries::Calendar(Vec::new()),
        },
    };
    let now = now();
    let edit = make(&current, now).map_err(|e| Failure::new(what, e))?;
    let version = base + 1;
    let delta = lists::delta_body(&site.site, version, base, &edit.upsert, &edit.remove)
        .map_err(|r| Failure::new(what, format!("the delta would be refused: {r}")))?;
    let snapshot = lists::snapshot_body(&site.site, version, now, &edit.next)
        .map_err(|r| Failure::new(what, format!("the list would be refused: {r}")))?;
    let topics = site.topics("+");
    let reference = format!("{}@{version}", list.as_str());
    let acks = publish_and_gather(
        &mut session,
        site,
        vec![
            (topics.list_delta(list), key.seal(&delta), false),
            (topics.list(list), key.seal(&snapshot), true),
        ],
        &key.id,
        &reference,
        &state,
        wait,
    )
    .await
    .map_err(|e| Failure::new(what, e))?;
    session.close().await;
    let mut changes = Vec::new();
    if !edit.upsert.is_empty() {
        changes.push(format!("{} added", edit.upsert.len()));
    }
    if !edit.remove.is_empty() {
        changes.push(format!("removed {}", edit.remove.join(", ")));
    }
    let line = format!(
        "published     {reference}: the delta on {}@{base} ({}), then the retained snapshot \
         ({})",
        list.as_str(),
        changes.join("; "),
        plural(edit.next.len(), "entry", "entries")
    );
    Ok(Published {
        line,
        reference,
        acks,
    })
}

pub struct InviteRequest {
    pub visitor: String,
    pub host: Option<String>,
    pub from: Option<String>,
    pub until: String,
    pub gates: Vec<String>,
    pub entries: u32,
    /// A weekly schedule of the gates' config (`[policy.schedule.NAME]`).
    pub schedule: Option<String>,
    /// How long invitations stay in the list past their window (`lists::KEEP_EXPIRED_DAYS`).
    pub keep_expired_ms: i64,
    pub qr: Option<PathBuf>,
    pub id: Option<String>,
    pub wait: Duration,
}

fn check_text(what: &str, field: &str, v: &str) -> Result<(), Failure> {
    if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
        return Err(Failure::new(
            what,
            format!("{field} must be 1..=64 bytes without control characters"),
        )
        .with_exit(64));
    }
    Ok(())
}

fn check_gates(what: &str, gates: &[String]) -> Result<(), Failure> {
    if gates.is_empty() {
        return Err(
            Failure::new(what, "--gates is empty (give gate ids, or * for all)").with_exit(64),
        );
    }
    for g in gates {
        if g != "*" && !gated_contract::is_safe_name(g) {
            return Err(Failure::new(
                what,
                format!("--gates: `{}` is not a gate id", g.escape_debug()),
            )
            .with_exit(64));
        }
    }
    Ok(())
}

/// Writes the QR code of `token` as a PNG: 8 pixels per module, with the quiet zone.
pub fn write_qr(token: &str, path: &Path) -> Result<(u32, u32), String> {
    let code = qrcode::QrCode::with_error_correction_level(token, qrcode::EcLevel::M)
        .map_err(|e| format!("cannot encode the code as a QR code: {e}"))?;
    let img = code
        .render::<image::Luma<u8>>()
        .module_dimensions(8, 8)
        .build();
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((code.width() as u32, img.width()))
}

/// `gatectl invite`: one visitor's invitation, published, with its code and QR image.
pub async fn invite(
    site: &Site,
    key: Option<&Path>,
    req: InviteRequest,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let what = "invite";
    let key = load_key(key, what)?;
    let now_ms = now();
    let time = |field: &str, t: &str| {
        parse_ts(t).map_err(|e| Failure::new(what, format!("{field}: {e}")).with_exit(64))
    };
    let from = req.from.clone().unwrap_or_else(|| format_ts(now_ms));
    let (from_ms, until_ms) = (time("--from", &from)?, time("--until", &req.until)?);
    if until_ms < now_ms {
        return Err(
            Failure::new(what, format!("--until {} is already past", req.until)).with_exit(64),
        );
    }
    if from_ms > until_ms {
        return Err(Failure::new(what, "--from is after --until").with_exit(64));
    }
    check_gates(what, &req.gates)?;
    check_text(what, "--visitor", &req.visitor)?;
    if let Some(h) = &req.host {
        check_text(what, "--host", h)?;
    }
    if req.entries == 0 {
        return Err(Failure::new(what, "--entries must be at least 1").with_exit(64));
    }
    if let Some(s) = &req.schedule
        && !gated_contract::is_safe_name(s)
    {
        return Err(Failure::new(
            what,
            format!(
                "--schedule: `{}` is not a schedule name (1..=64 of [A-Za-z0-9_-])",
                s.escape_debug()
            ),
        )
        .with_exit(64));
    }
    let id = req.id.clone().unwrap_or_else(lists::new_invitation_id);
    check_text(what, "--id", &id)?;
    let token = lists::new_token();
    let inv = VisitorEntry {
        invitation: id.clone(),
        visitor: Some(req.visitor.clone()),
        host: req.host.clone(),
        credentials: vec![CredentialRef {
            kind: CredentialKind::Qr,
            id: token.clone(),
        }],
        valid_from: Some(from.clone()),
        valid_until: Some(req.until.clone()),
        gates: req.gates.clone(),
        max_entries: Some(req.entries),
        schedule: req.schedule.clone(),
    };
    // The image first: if it cannot be written, nothing is published.
    let qr = match &req.qr {
        Some(path) => Some((
            path,
            write_qr(&token, path).map_err(|e| Failure::new(what, e))?,
        )),
        None => None,
    };
    let published = edit(
        site,
        &key,
        ListName::Visitors,
        what,
        req.wait,
        |current, now| match current {
            Entries::Visitors(v) => lists::invite(v, inv, now, req.keep_expired_ms),
            _ => Err("the retained visitors snapshot is not a visitors list".into()),
        },
    )
    .await;
    let published = match published {
        Ok(p) => p,
        Err(e) => {
            // The invitation was not published: leave no code that looks valid.
            if let Some((path, _)) = &qr {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    say(out, format_args!("invitation    {id}"))?;
    say(out, format_args!("code          {token}"))?;
    say(
        out,
        format_args!(
            "visitor       {}{}",
            req.visitor,
            req.host
                .as_deref()
                .map(|h| format!(" (host {h})"))
                .unwrap_or_default()
        ),
    )?;
    say(
        out,
        format_args!(
            "valid         {from} .. {} at {}, {}{}",
            req.until,
            req.gates.join(","),
            plural(req.entries as usize, "entry", "entries"),
            req.schedule
                .as_deref()
                .map(|s| format!(", in the hours of schedule `{s}`"))
                .unwrap_or_default()
        ),
    )?;
    if let Some((path, (modules, px))) = &qr {
        say(
            out,
            format_args!(
                "qr            {} ({modules}x{modules} modules, {px}x{px} px)",
                path.display()
            ),
        )?;
    }
    published.print(what, out)
}

pub enum RevokeTarget {
    /// The id, and how long invitations stay in the list past their window.
    Invitation(String, i64),
    Staff(String),
    /// `kind`, `id`, and why.
    Credential(CredentialKind, String, Option<String>),
}

/// Parses `KIND:ID` as `revoke credential` takes it.
pub fn parse_credential(s: &str) -> Result<(CredentialKind, String), String> {
    let (kind, id) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not KIND:ID (for example card:0012345678)"))?;
    let kind = CredentialKind::parse(&kind.to_ascii_lowercase())
        .ok_or_else(|| format!("`{kind}` is not a credential kind (card, qr, face, pin)"))?;
    if id.is_empty() || id.len() > 64 || !id.is_ascii() || id.chars().any(|c| c.is_ascii_control())
    {
        return Err(format!("`{id}` must be 1..=64 ASCII characters"));
    }
    Ok((kind, id.to_string()))
}

/// `gatectl revoke`: an invitation or a staff member off their list, or a credential onto the
/// deny list.
pub async fn revoke(
    site: &Site,
    key: Option<&Path>,
    target: RevokeTarget,
    wait: Duration,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let what = "revoke";
    let key = load_key(key, what)?;
    let published = match target {
        RevokeTarget::Invitation(id, keep_ms) => {
            edit(
                site,
                &key,
                ListName::Visitors,
                what,
                wait,
                |current, now| match current {
                    Entries::Visitors(v) => lists::revoke_invitation(v, &id, now, keep_ms),
                    _ => Err("not a visitors list".into()),
                },
            )
            .await
        }
        RevokeTarget::Staff(subject) => {
            edit(
                site,
                &key,
                ListName::Staff,
                what,
                wait,
                |current, _| match current {
                    Entries::Staff(v) => lists::revoke_staff(v, &subject),
                    _ => Err("not a staff list".into()),
                },
            )
            .await
        }
        RevokeTarget::Credential(kind, id, reason) => {
            let entry = DenyEntry { kind, id, reason };
            edit(
                site,
                &key,
                ListName::Deny,
                what,
                wait,
                |current, _| match current {
                    Entries::Deny(v) => lists::deny(v, entry),
                    _ => Err("not a deny list".into()),
                },
            )
            .await
        }
    }?;
    published.print(what, out)
}

// ---- commands ----------------------------------------------------------------------------------

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
async fn retained_status(session: &mut Session, topic: &str) -> Result<Option<Value>, MqttError> {
    let end = Instant::now() + QUIET;
    while let Some(m) = session.next(end).await? {
        if m.topic == topic {
            return Ok(serde_json::from_slice::<Value>(&m.payload).ok());
        }
    }
    Ok(None)
}

// ---- tail ----------------------------------------------------------------------------------------

pub struct TailRequest {
    pub gate: Option<String>,
    pub json: bool,
    pub acks: bool,
    pub count: Option<u64>,
    pub timeout: Option<Duration>,
}

/// What one message shows as, if anything.
fn tail_line(
    leaf: &str,
    gate: &str,
    v: &Value,
    json: bool,
    dedup: &mut show::Dedup,
    last_seq: &mut BTreeMap<String, u64>,
) -> Option<String> {
    if let Some(id) = v.get("id").and_then(Value::as_str)
        && !dedup.first_time(&format!("{leaf}/{id}"))
    {
        return None;
    }
    if leaf == "event"
        && let Some(seq) = v.get("seq").and_then(Value::as_u64)
    {
        if let Some(last) = last_seq.get(gate)
            && seq > last.saturating_add(1)
        {
            let missed = if seq - 1 == last + 1 {
                format!("event #{} was", last + 1)
            } else {
                format!("events #{}..#{} were", last + 1, seq - 1)
            };
            warn(format_args!(
                "{}: {missed} not seen here (sent while tail was not connected)",
                show::clean(gate)
            ));
        }
        if last_seq.get(gate).is_none_or(|l| seq > *l) {
            last_seq.insert(gate.to_string(), seq);
        }
    }
    if json {
        return Some(v.to_string());
    }
    let typed = match leaf {
        "event" => serde_json::from_value::<PassEvent>(v.clone())
            .ok()
            .map(|e| show::event_line(&e)),
        "alarm" => serde_json::from_value::<Alarm>(v.clone())
            .ok()
            .map(|a| show::alarm_line(&a)),
        "ack" => serde_json::from_value::<Ack>(v.clone())
            .ok()
            .map(|a| show::ack_line(gate, &a)),
        _ => None,
    };
    Some(typed.unwrap_or_else(|| {
        format!(
            "{} {leaf}: {}",
            show::clean(gate),
            show::clean(&v.to_string())
        )
    }))
}

/// `gatectl tail`: live events and alarms (and acks, if asked) until Ctrl-C, `--count` lines or
/// `--timeout`.
pub async fn tail(site: &Site, req: TailRequest, out: &mut dyn Write) -> Result<(), Failure> {
    let what = "tail";
    if let Some(g) = &req.gate
        && !gated_contract::is_safe_name(g)
    {
        return Err(Failure::new(what, format!("--gate `{g}` is not a gate id")).with_exit(64));
    }
    let t = site.topics(req.gate.as_deref().unwrap_or("+"));
    let mut filters = vec![t.event(), t.alarm()];
    if req.acks {
        filters.push(t.ack());
    }
    let mut opts = ConnectOptions::new(
        site.broker.clone(),
        &site.secrets,
        site.tls.as_ref(),
        "tail",
    );
    opts.reconnect = true;
    let mut session = Session::connect(&opts)
        .await
        .map_err(|e| Failure::new(what, e))?;
    session
        .subscribe(&filters)
        .await
        .map_err(|e| Failure::new(what, e))?;
    eprintln!(
        "gatectl: tail: listening on {} (Ctrl-C to stop)",
        filters.join(", ")
    );
    let end = req.timeout.map(|t| Instant::now() + t);
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86400);
    let mut dedup = show::Dedup::new(DEDUP_IDS);
    let mut last_seq = BTreeMap::new();
    let mut printed = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if req.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
        let next = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            r = session.next(end.unwrap_or(far)) => r,
        };
        let m = match next {
            Ok(Some(m)) => m,
            Ok(None) => {
                return match req.count {
                    Some(n) => Err(Failure::new(
                        what,
                        format!(
                            "timed out after {} s with {printed} of {n} lines",
                            req.timeout.unwrap_or_default().as_secs()
                        ),
                    )),
                    None => Ok(()),
                };
            }
            Err(e) => {
                warn(format_args!(
                    "{e}; reconnecting (events published meanwhile are not shown: their seq \
                     numbers will say so)"
                ));
                continue;
            }
        };
        let leaf = m.topic.rsplit('/').next().unwrap_or("");
        let Some(gate) = show::gate_of(&m.topic, &site.root, &site.site, leaf) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
            warn(format_args!("{}: not JSON, skipped", show::clean(&m.topic)));
            continue;
        };
        if let Some(line) = tail_line(leaf, gate, &v, req.json, &mut dedup, &mut last_seq) {
            say(out, line)?;
            printed += 1;
        }
    }
}

// ---- status ----------------------------------------------------------------------------------------

/// `gatectl status`: the site's gates, from their retained statuses.
pub async fn status(site: &Site, json: bool, out: &mut dyn Write) -> Result<(), Failure> {
    let what = "status";
    let mut session = site.connect("status", what).await?;
    let filter = site.topics("+").status();
    session
        .subscribe(std::slice::from_ref(&filter))
        .await
        .map_err(|e| Failure::new(what, e))?;
    let msgs = session
        .settle(QUIET, Instant::now() + READ_DEADLINE)
        .await
        .map_err(|e| Failure::new(what, e))?;
    session.close().await;
    let mut statuses: BTreeMap<String, Value> = BTreeMap::new();
    for m in msgs {
        let Some(gate) = show::gate_of(&m.topic, &site.root, &site.site, "status") else {
            continue;
        };
        match serde_json::from_slice::<Value>(&m.payload) {
            Ok(v) => {
                statuses.insert(gate.to_string(), v);
            }
            Err(_) if m.payload.is_empty() => {}
            Err(_) => warn(format_args!(
                "{}: status is not JSON, skipped",
                show::clean(gate)
            )),
        }
    }
    if statuses.is_empty() {
        return Err(Failure::new(
            what,
            format!("no gate has a status on {filter} (is --site right? are the gates connected?)"),
        ));
    }
    if json {
        let map: serde_json::Map<String, Value> = statuses.into_iter().collect();
        return say(out, Value::Object(map));
    }
    let rows: Vec<(String, Value)> = statuses.into_iter().collect();
    let table = show::status_table(&rows, now());
    say(out, table.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_for_revoke() {
        assert_eq!(
            parse_credential("card:0012345678"),
            Ok((CredentialKind::Card, "0012345678".into()))
        );
        assert_eq!(
            parse_credential("QR:AB:C"),
            Ok((CredentialKind::Qr, "AB:C".into()))
        );
        assert!(parse_credential("0012345678").is_err());
        assert!(parse_credential("badge:1").is_err());
        assert!(parse_credential("card:").is_err());
    }

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

    #[test]
    fn tail_drops_duplicates_and_shows_json_as_one_line() {
        let mut d = show::Dedup::new(10);
        let mut seqs = BTreeMap::new();
        let e = serde_json::json!({"id":"a","seq":1,"site":"hq","gate":"g","lane":0,
            "direction":"in","ts":"2026-11-21T08:01:02.345Z","credential":null,"subject":null,
            "decision":"denied","reason":"unknown_credential","override":null,"passed":null,
            "snapshot":null});
        let line = tail_line("event", "g", &e, true, &mut d, &mut seqs).expect("shown");
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).expect("json"), e);
        assert_eq!(tail_line("event", "g", &e, true, &mut d, &mut seqs), None);
        let mut e2 = e.clone();
        e2["id"] = "b".into();
        e2["seq"] = 2.into();
        let line = tail_line("event", "g", &e2, false, &mut d, &mut seqs).expect("shown");
        assert!(
            line.contains("#2 lane 0 in  DENIED  unknown_credential"),
            "{line}"
        );
        // Something that is not an event still shows, cleaned.
        let odd = serde_json::json!({"hello":"\u{1b}"});
        let line = tail_line("event", "g", &odd, false, &mut d, &mut seqs).expect("shown");
        assert!(!line.contains('\u{1b}'));
    }
}
