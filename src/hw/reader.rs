//! The reader task: polls one reader's (or face terminal's) mailbox, has each new event
//! decided and recorded, pulses the relay on a grant, then acks the mailbox.
//!
//! Order per event (G1): record (committed) → relay pulse → ack. A crash anywhere leaves the
//! event either unrecorded (it is still in the device: decided after restart) or recorded (the
//! mailbox still shows it: acked after restart without a second decision).

use std::time::Duration;

use tokio::sync::watch;

use super::modbus::{Modbus, Repeat};
use super::relay::RelayHandle;
use super::{Backoff, DeviceError};
use crate::config::{LaneConfig, ReaderConfig};
use crate::core::{Credential, CredentialKind};
use crate::gate::Shared;
use crate::store::{FirstSeen, MailboxPos, PassInput, PassOutcome};

/// Registers read per poll: head_seq, kind, score, len, 32 of credential bytes.
pub const MAILBOX_LEN: u16 = 36;
const MAX_CRED_LEN: usize = 64;

/// A mailbox as read, decoded. `Err` names what is wrong with a garbled event.
#[derive(Debug, PartialEq)]
pub enum Mailbox {
    Empty,
    Event {
        head_seq: u16,
        credential: Result<Credential, String>,
    },
}

/// Decodes the reference profile's reader registers. Pure, so it is tested on hostile input.
pub fn decode(regs: &[u16]) -> Mailbox {
    let Some(&head_seq) = regs.first() else {
        return Mailbox::Empty;
    };
    if head_seq == 0 {
        return Mailbox::Empty;
    }
    Mailbox::Event {
        head_seq,
        credential: decode_credential(regs),
    }
}

fn decode_credential(regs: &[u16]) -> Result<Credential, String> {
    if regs.len() < usize::from(MAILBOX_LEN) {
        return Err(format!(
            "mailbox has {} registers, expected {MAILBOX_LEN}",
            regs.len()
        ));
    }
    let kind = match regs[1] {
        1 => CredentialKind::Card,
        2 => CredentialKind::Qr,
        3 => CredentialKind::Face,
        4 => CredentialKind::Pin,
        k => return Err(format!("kind {k} is not 1..=4")),
    };
    let score = regs[2];
    let len = usize::from(regs[3]);
    if len == 0 || len > MAX_CRED_LEN {
        return Err(format!("credential length {len} is not 1..={MAX_CRED_LEN}"));
    }
    let bytes: Vec<u8> = regs[4..36]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .take(len)
        .collect();
    // Visible ASCII only: a space or a control character in an id is a garbled frame or a
    // device that pads differently, and would make two ids look alike in logs and lists.
    if !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "credential bytes are not visible ASCII (0x21..=0x7E): {bytes:02x?}"
        ));
    }
    let id = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    let score = match kind {
        CredentialKind::Face => {
            if score > 1000 {
                return Err(format!("face score {score} is above 1000"));
            }
            Some(f64::from(score) / 1000.0)
        }
        _ => None,
    };
    Ok(Credential { kind, id, score })
}

pub fn spawn(
    cfg: ReaderConfig,
    lane: LaneConfig,
    relay: RelayHandle,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(run(cfg, lane, relay, shared, shutdown));
}

async fn run(
    cfg: ReaderConfig,
    lane: LaneConfig,
    relay: RelayHandle,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = Modbus::new(&cfg.link, cfg.unit, cfg.timeout, &shared.buses);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut wait = Duration::ZERO;
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = match poll_once(&cfg, &lane, &relay, &shared, &mut conn, &mut seen).await {
            Ok(handled) => {
                backoff.reset();
                // An event was handled: look again at once, the next may be queued behind it.
                if handled { Duration::ZERO } else { cfg.poll }
            }
            Err(e) => {
                shared.report(&cfg.name, Err(e));
                backoff.next_delay().max(cfg.poll)
            }
        };
    }
}

/// What this task remembers of its mailbox, so that a misbehaving device cannot make it spin.
#[derive(Default)]
struct Seen {
    /// The last head this task acked successfully.
    acked: Option<u16>,
    /// The last garbled head alarmed about: one alarm per event, not one per poll.
    garbage: Option<u16>,
    /// When a poll last found the mailbox empty: whatever it shows now was queued after that,
    /// so it is at most this old (a link down since then only makes the bound longer).
    /// `None` until the first empty read after start: what was queued while gated was not
    /// running may be of any age.
    empty_at: Option<std::time::Instant>,
    /// The head in front of us and when it was first seen.
    head: Option<(u16, FirstSeen)>,
}

impl Seen {
    /// Forgets what no longer shows: the memory is only ever about the head in front of us.
    fn observe_head(&mut self, head: Option<u16>) {
        if self.head.is_some_and(|(h, _)| Some(h) != head) {
            self.head = None;
        }
        if self.acked != head {
            self.acked = None;
        }
        if self.garbage != head {
            self.garbage = None;
        }
    }

    /// The mailbox read empty by a poll sent at `asked`. `true` the first time.
    fn observe_empty(&mut self, asked: std::time::Instant) -> bool {
        self.observe_head(None);
        self.empty_at.replace(asked).is_none()
    }

    /// When `head_seq` was first seen, and since when it can have waited: behind the events
    /// decided since the mailbox was last empty, through every retry while the store or the
    /// link was down, or for an unknown time when gated has not seen the mailbox empty yet.
    fn first_seen(&mut self, head_seq: u16, now: crate::core::UnixMs) -> FirstSeen {
        match self.head {
            Some((h, seen)) if h == head_seq => seen,
            _ => {
                let seen = FirstSeen {
                    at: now,
                    since: self.empty_at,
                };
                self.head = Some((head_seq, seen));
                seen
            }
        }
    }

    /// After (re-)acking `head_seq`: a device that still showed the event it had been told to
    /// drop has not taken the ack. The ack was written again; report a fault, so that the task
    /// backs off instead of re-acking in a tight loop.
    fn acked_now(&mut self, head_seq: u16, kept: bool) -> Result<bool, DeviceError> {
        self.acked = Some(head_seq);
        if kept {
            return Err(DeviceError::Garbage(format!(
                "device still showed event {head_seq} after it was acked; acked it again"
            )));
        }
        Ok(true)
    }
}

/// Decides and records one credential on a lane (G1), then releases the lane if it was
/// granted. `Ok(None)`: a mailbox event recorded before (nothing done again). `Err`: the store
/// could not record it, and nobody was released.
pub async fn decide(
    shared: &Shared,
    relay: &RelayHandle,
    lane: &LaneConfig,
    reader: &str,
    input: PassInput,
) -> Result<Option<gated_contract::PassEvent>, crate::store::StoreError> {
    match shared.store.pass(input).await {
        Ok(PassOutcome::Recorded { verdict, event }) => {
            release(shared, relay, lane, reader, verdict.granted(), &event).await;
            Ok(Some(event))
        }
        Ok(PassOutcome::AlreadyRecorded) => Ok(None),
        Err(e) => {
            // The owner thread tells the store's failure to the centre and the status once
            // (`watch_store`); every reader retries each poll, so this line is limited.
            crate::limited_error!(reader, error = %e, "store unavailable; pass not decided");
            Err(e)
        }
    }
}

/// What the store's owner thread sees of its writes reaches the gate: the first failure of an
/// episode (a pass or the idle store's write probe) sets `devices.store` to `error` and sends
/// a `store_error` alarm to the centre past the outbox, which is in the store that failed;
/// when writes succeed again the status is `ok` and the recorded `store_recovered` alarm is
/// sent through the outbox. The store opened and wrote at start: `ok` until then.
/// The receiver holds no handle to the store: the owner thread ends once the gate's are gone.
pub fn watch_store(shared: &Shared) {
    shared.health.set("store", "ok");
    let (health, alarms) = (shared.health.clone(), shared.direct_alarms());
    let releases = shared.releases.clone();
    shared.store.on_write_health(move |e| match e {
        crate::store::WriteEvent::Failing { detail } => {
            health.set("store", "error");
            alarms.send("store_error", "store", &detail);
        }
        crate::store::WriteEvent::Recovered { .. } => {
            health.set("store", "ok");
            alarms.kick();
        }
        // On a thread of the store's; the process ends when this returns. The outbox is in
        // the damaged file: the centre is told past it, and the alarm has up to 2 s to leave.
        crate::store::WriteEvent::Corrupt { detail } => {
            // First, so that the status this change publishes has a head start on the exit.
            health.set("store", "corrupt");
            let detail = format!(
                "the store is damaged ({detail}): no pass is decided on it. gated exits (code \
                 {}) and its next start copies the file aside and salvages what still reads (a \
                 store_salvaged alarm follows)",
                crate::store::CORRUPT_EXIT
            );
            let id = alarms.send("store_corrupt", "store", &detail);
            // Pulses already under way end before the process does (a GPIO relay would
            // otherwise stay energised); one still unsettled is said, past the outbox too.
            for r in releases.settle_blocking(std::time::Duration::from_secs(2)) {
                let detail = super::relay::abandoned_detail(&r);
                alarms.send("relay_unknown", &r.relay, &detail);
            }
            if !alarms.wait_acked(&id, std::time::Duration::from_secs(2)) {
                tracing::error!("store_corrupt alarm not acknowledged within 2 s; exiting anyway");
            }
        }
    });
}

/// After a pass was recorded (G1): releases the lane if it was granted (a release that fails
/// is a `relay_failed` alarm, one whose outcome is unknown a `relay_unknown` alarm), then
/// reports the decision.
pub async fn release(
    shared: &Shared,
    relay: &RelayHandle,
    lane: &LaneConfig,
    reader: &str,
    granted: bool,
    event: &gated_contract::PassEvent,
) {
    if granted {
        let what = format!("pass {} granted", event.id);
        // Until its pulse is confirmed or its alarm recorded: shutdown waits for it.
        let _settling = shared.releases.begin(super::relay::Release {
            relay: relay.name().to_string(),
            what: what.clone(),
            lane: lane.id,
            direction: event.direction,
        });
        let r = relay
            .pulse(lane.channel, event.direction, lane.release_ms)
            .await;
        if let Err(e) = r {
            let (code, detail) = super::relay::release_alarm(&what, lane.id, event.direction, &e);
            tracing::error!(reader, "{detail}");
            let _ = shared.alarm(code, relay.name(), &detail).await;
        }
    }
    shared.publish_decision(reader, event);
}

/// One poll: `Ok(true)` when an event was handled.
async fn poll_once(
    cfg: &ReaderConfig,
    lane: &LaneConfig,
    relay: &RelayHandle,
    shared: &Shared,
    conn: &mut Modbus,
    seen: &mut Seen,
) -> Result<bool, DeviceError> {
    let asked = std::time::Instant::now();
    let regs = conn
        .read_input_registers(cfg.input_base, MAILBOX_LEN)
        .await?;
    shared.report(&cfg.name, Ok(()));
    let (head_seq, credential) = match decode(&regs) {
        Mailbox::Empty => {
            if seen.observe_empty(asked) {
                tracing::info!(reader = %cfg.name, "mailbox empty: swipes from now on have a known age");
            }
            return Ok(false);
        }
        Mailbox::Event {
            head_seq,
            credential,
        } => (head_seq, credential),
    };
    seen.observe_head(Some(head_seq));
    let now = crate::wall::now_ms();
    let first = seen.first_seen(head_seq, now);
    let kept = seen.acked == Some(head_seq);
    let credential = match credential {
        Ok(c) => c,
        Err(what) => {
            // Nothing can be decided on a garbled event; it is kept as an alarm, then acked so
            // that the lane does not stall behind it. It never grants.
            if seen.garbage != Some(head_seq) {
                let detail = format!("mailbox event {head_seq} dropped: {what}");
                tracing::warn!(reader = %cfg.name, "{detail}");
                if shared
                    .alarm("reader_garbage", &cfg.name, &detail)
                    .await
                    .is_err()
                {
                    return Ok(false); // keep it in the device until the store can log it
                }
                seen.garbage = Some(head_seq);
            }
            conn.write_register(cfg.ack_register, head_seq, Repeat::Safe)
                .await?;
            return seen.acked_now(head_seq, kept);
        }
    };
    let input = PassInput {
        from: Some(MailboxPos {
            reader: cfg.name.clone(),
            head_seq,
        }),
        lane: lane.id,
        direction: cfg.direction,
        credential,
        now,
        seen: Some(first),
    };
    let recorded = match decide(shared, relay, lane, &cfg.name, input).await {
        Ok(Some(event)) => Some(event),
        Ok(None) => {
            tracing::info!(reader = %cfg.name, head_seq, "mailbox event already recorded; acking it again");
            None
        }
        // No pass without a record (G1): the event stays in the device mailbox, nobody is
        // released, and it is decided once the store works again.
        Err(_) => return Ok(false),
    };
    // An ack names its event: sent twice, the second finds another head and changes nothing.
    conn.write_register(cfg.ack_register, head_seq, Repeat::Safe)
        .await?;
    let handled = seen.acked_now(head_seq, kept);
    // The snapshot after the release and the ack: never on the decision path.
    if let Some(event) = recorded.filter(|_| cfg.snapshots) {
        // A snapshot that cannot be read is that snapshot's problem, not a fault of the
        // terminal (whose next poll shows whether its link is broken).
        let fetched = fetch_snapshot(cfg, conn, head_seq, cfg.snapshot_max_bytes)
            .await
            .unwrap_or_else(|e| Fetched::Refused(format!("it could not be read: {e}")));
        match fetched {
            Fetched::None => {}
            Fetched::Refused(what) => {
                let detail = format!("snapshot of pass {} rejected: {what}", event.id);
                tracing::warn!(reader = %cfg.name, "{detail}");
                shared.alarm_later("snapshot_rejected", &cfg.name, detail);
            }
            Fetched::Bytes(bytes) => {
                let job = crate::hw::snapshot::Job {
                    reader: cfg.name.clone(),
                    event,
                    bytes,
                };
                if shared.snapshots.try_send(job).is_err() {
                    tracing::warn!(reader = %cfg.name, "snapshot dropped: the snapshot task is behind");
                }
            }
        }
    }
    handled
}

/// What a terminal had for an event's snapshot.
enum Fetched {
    None,
    Bytes(Vec<u8>),
    /// Announced larger than the limit (or than the data block): not read.
    Refused(String),
}

/// How long reading one snapshot may hold up the terminal's next event.
pub const SNAPSHOT_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// Selects `head_seq`'s snapshot and reads it, 125 registers at a time, if the terminal still
/// has it and it is within `max_bytes` (which the config checked fits in the data block).
/// Given up (refused) once reading it has taken
/// `SNAPSHOT_BUDGET`: the next person at the lane must not wait longer.
async fn fetch_snapshot(
    cfg: &ReaderConfig,
    conn: &mut Modbus,
    head_seq: u16,
    max_bytes: usize,
) -> Result<Fetched, DeviceError> {
    conn.write_register(cfg.snapshot_select, head_seq, Repeat::Safe)
        .await?;
    let h = conn.read_input_registers(cfg.snapshot_base, 3).await?;
    if h[0] != head_seq {
        return Ok(Fetched::None);
    }
    let len = ((usize::from(h[1])) << 16) | usize::from(h[2]);
    if len == 0 {
        return Ok(Fetched::None);
    }
    let words = len.div_ceil(2);
    if len > max_bytes {
        return Ok(Fetched::Refused(format!(
            "the terminal announced {len} bytes, over the limit of {max_bytes}"
        )));
    }
    let started = std::time::Instant::now();
    let mut bytes = Vec::with_capacity(2 * words);
    let mut at = 0;
    while at < words {
        if started.elapsed() >= SNAPSHOT_BUDGET {
            return Ok(Fetched::Refused(format!(
                "reading its {len} bytes took longer than {} s; given up",
                SNAPSHOT_BUDGET.as_secs()
            )));
        }
        let n = (words - at).min(125);
        let addr = u16::try_from(usize::from(cfg.snapshot_data) + at)
            .map_err(|_| DeviceError::Garbage("snapshot address out of range".into()))?;
        let regs = conn.read_input_registers(addr, n as u16).await?;
        bytes.extend(regs.iter().flat_map(|w| w.to_be_bytes()));
        at += n;
    }
    bytes.truncate(len);
    Ok(Fetched::Bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store's write-health receiver must not keep the store's owner thread alive: once
    /// the gate's handles are gone, the store closes and its lock is free again.
    #[tokio::test]
    async fn watching_the_store_does_not_keep_it_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.db");
        let open = || {
            crate::store::Store::open(
                &path,
                crate::store::GateId {
                    site: "hq".into(),
                    gate: "g1".into(),
                },
                crate::core::Policy::default(),
                1 << 20,
            )
        };
        let shared = Shared {
            store: open().expect("store"),
            health: Default::default(),
            mode: tokio::sync::watch::channel(crate::core::Mode::Normal).1,
            decisions: tokio::sync::broadcast::channel(8).0,
            outbox_kick: tokio::sync::mpsc::channel(1).0,
            buses: Default::default(),
            snapshots: tokio::sync::mpsc::channel(1).0,
            releases: Default::default(),
            direct: Default::default(),
        };
        watch_store(&shared);
        assert_eq!(shared.health.snapshot()["store"], "ok");
        drop(shared);
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while let Err(e) = open() {
            assert!(std::time::Instant::now() < end, "still held: {e}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn regs(seq: u16, kind: u16, score: u16, cred: &[u8]) -> Vec<u16> {
        let mut r = vec![seq, kind, score, cred.len() as u16];
        let mut bytes = cred.to_vec();
        bytes.resize(64, 0);
        r.extend(bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])));
        r
    }

    #[test]
    fn decodes_the_reference_profile() {
        assert_eq!(decode(&regs(0, 1, 0, b"x")), Mailbox::Empty);
        let Mailbox::Event {
            head_seq,
            credential,
        } = decode(&regs(7, 1, 0, b"0012345678"))
        else {
            panic!("event")
        };
        assert_eq!(head_seq, 7);
        let c = credential.expect("valid");
        assert_eq!(
            (c.kind, c.id.as_str(), c.score),
            (CredentialKind::Card, "0012345678", None)
        );
        let Mailbox::Event { credential, .. } = decode(&regs(8, 3, 912, b"P1001")) else {
            panic!("event")
        };
        assert_eq!(credential.expect("valid").score, Some(0.912));
        // A score on anything but a face is ignored, whatever the device sends.
        let Mailbox::Event { credential, .. } = decode(&regs(9, 1, 930, b"0012345678")) else {
            panic!("event")
        };
        assert_eq!(credential.expect("valid").score, None);
        // Every visible ASCII byte is accepted, the ends of the range included.
        let Mailbox::Event { credential, .. } = decode(&regs(9, 2, 0, b"!~Az09")) else {
            panic!("event")
        };
        assert_eq!(credential.expect("valid").id, "!~Az09");
        let long = [b'A'; 64];
        let Mailbox::Event { credential, .. } = decode(&regs(9, 2, 0, &long)) else {
            panic!("event")
        };
        assert_eq!(credential.expect("valid").id.len(), 64);
    }

    #[test]
    fn refuses_garbage_with_a_reason() {
        let cases: Vec<(Vec<u16>, &str)> = vec![
            (regs(1, 9, 0, b"x"), "kind 9"),
            (regs(1, 1, 0, b""), "length 0"),
            (
                {
                    let mut r = regs(1, 1, 0, b"x");
                    r[3] = 65;
                    r
                },
                "length 65",
            ),
            (regs(1, 1, 0, b"a\x07b"), "0x21..=0x7E"),
            (regs(1, 1, 0, b"a b"), "0x21..=0x7E"),
            (regs(1, 1, 0, b"caf\xc3\xa9"), "0x21..=0x7E"),
            (regs(1, 3, 1001, b"P1"), "score 1001"),
            (vec![1, 1, 0], "registers"),
        ];
        for (r, needle) in cases {
            let Mailbox::Event { credential, .. } = decode(&r) else {
                panic!("event")
            };
            let e = credential.expect_err("garbage");
            assert!(e.contains(needle), "`{e}` should mention `{needle}`");
        }
    }
}
