//! Remote commands and overrides: command nonces against replay, the mode, anti-passback
//! clears.

use super::outbox::{EventDraft, insert_event};
use super::*;

/// A remote command's guard against replay: its nonce and when it is valid.
#[derive(Clone, Debug, PartialEq)]
pub struct Stamp {
    pub nonce: String,
    pub issued_at: UnixMs,
    pub expires_at: UnixMs,
}

/// Which clock a command's expiry is judged on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Judge {
    /// The command clock, which never goes back: every command but a lockdown.
    CommandClock,
    /// The gate's clock as it reads: a lockdown, which only closes, so that a gate whose
    /// clock once ran ahead can always be locked down.
    OwnClock,
}

impl Db {
    /// Records an override pass (a remote `open`, a panel button): granted with `reason`, no
    /// credential. With a nonce, the nonce is claimed in the same transaction, so a replayed
    /// command can never open twice. Committed before the caller drives the relay (G1).
    pub fn record_override(
        &mut self,
        lane: u16,
        direction: Direction,
        reason: core::Reason,
        override_: Override,
        stamp: Option<&Stamp>,
        now: UnixMs,
    ) -> Result<Result<PassEvent, Refusal>, StoreError> {
        let draft = EventDraft {
            override_: Some(override_),
            ..EventDraft::bare(lane, direction, reason)
        };
        self.record_event(draft, stamp, now, |_| Ok(()))
    }

    /// Persists a new mode and records the change as a `mode_changed` alarm naming who made
    /// it (G8), in one transaction with the command's nonce.
    pub fn set_mode(
        &mut self,
        mode: Mode,
        source: &str,
        detail: &str,
        stamp: Option<&Stamp>,
        now: UnixMs,
    ) -> Result<Result<Alarm, Refusal>, StoreError> {
        let tx = write(&mut self.conn)?;
        // A lockdown only closes: a gate whose command clock ran ahead must still take one.
        let judge = match mode {
            Mode::Lockdown => Judge::OwnClock,
            _ => Judge::CommandClock,
        };
        if let Some(stamp) = stamp
            && let Err(r) = claim_nonce(&tx, stamp, now, judge)?
        {
            return Ok(Err(r));
        }
        let value = serde_json::to_string(&mode).map_err(|e| StoreError::Invalid(e.to_string()))?;
        tx.execute(
            "INSERT INTO state (key, value) VALUES ('mode', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [value],
        )?;
        let alarm = insert_alarm(&tx, &self.gate, "mode_changed", source, detail, now)?;
        tx.commit()?;
        self.mode = mode;
        self.pending += 1;
        self.after_insert(now);
        Ok(Ok(alarm))
    }

    /// Claims a command nonce on its own (for commands that record nothing else).
    pub fn claim_nonce(
        &mut self,
        stamp: &Stamp,
        now: UnixMs,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let tx = write(&mut self.conn)?;
        let r = claim_nonce(&tx, stamp, now, Judge::CommandClock)?;
        tx.commit()?;
        Ok(r)
    }

    /// Decides passes under `mode` from now on without persisting it: for an emergency release
    /// that the store could not record (G9: it does not wait for the store).
    pub fn assume_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// The mode passes are decided under (as persisted, or assumed).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub(super) fn read_mode(&self) -> Result<Mode, StoreError> {
        let v = self.read_state("mode")?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default())
    }

    /// A guard's override: forgets `subject`'s anti-passback state, and records it as an
    /// override event naming the subject (G8), which the other gates of the site learn from.
    pub fn clear_passback(
        &mut self,
        subject: &str,
        override_: Override,
        stamp: Option<&Stamp>,
        now: UnixMs,
    ) -> Result<Result<PassEvent, Refusal>, StoreError> {
        let draft = EventDraft {
            subject: Some(subject.to_string()),
            override_: Some(override_),
            flags: vec![NO_RELEASE.to_string()],
            ..EventDraft::bare(0, Direction::In, Reason::OverrideRemote)
        };
        if !knows_subject(&self.conn, subject)? {
            return Ok(Err(Refusal::UnknownSubject(format!(
                "`{}` is in no staff entry or invitation in force and has no anti-passback \
                 state here; nothing was cleared",
                bounded(subject, MAX_ECHO_BYTES)
            ))));
        }
        self.record_event(draft, stamp, now, |tx| {
            tx.prepare_cached("DELETE FROM passback WHERE subject = ?1")?
                .execute([subject])?;
            Ok(())
        })
    }

    /// A guard's override after a drill: forgets every subject's anti-passback state, and
    /// records it as an override event without a subject, which the other gates learn from.
    pub fn clear_passback_all(
        &mut self,
        override_: Override,
        stamp: Option<&Stamp>,
        now: UnixMs,
    ) -> Result<Result<(PassEvent, usize), Refusal>, StoreError> {
        let draft = EventDraft {
            override_: Some(override_),
            flags: vec![NO_RELEASE.to_string()],
            ..EventDraft::bare(0, Direction::In, Reason::OverrideRemote)
        };
        let mut cleared = 0;
        let event = self.record_event(draft, stamp, now, |tx| {
            cleared = tx.prepare_cached("DELETE FROM passback")?.execute([])?;
            Ok(())
        })?;
        Ok(event.map(|e| (e, cleared)))
    }
}

/// The `override.input` of the event that records a `clear_passback` override.
pub const CLEAR_PASSBACK: &str = "clear_passback";

/// The `override.input` of the event that records a `clear_passback_all` override.
pub const CLEAR_PASSBACK_ALL: &str = "clear_passback_all";

/// Whether `subject` is a staff entry or an invitation in force, or has an anti-passback
/// state here (learned from a peer, or left by an entry since removed).
fn knows_subject(conn: &Connection, subject: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM staff WHERE subject = ?1
                          AND gen = (SELECT gen FROM list_version WHERE list = 'staff'))
             OR EXISTS (SELECT 1 FROM invitation WHERE invitation = ?1
                          AND gen = (SELECT gen FROM list_version WHERE list = 'visitors'))
             OR EXISTS (SELECT 1 FROM passback WHERE subject = ?1)",
    )?
    .query_row([subject], |r| r.get(0))
}

/// Refuses an expired command, or a nonce seen before; remembers a new nonce until its command
/// expires.
///
/// Time here is the command clock: the latest time any command was judged at, which never goes
/// back. A Pi has no real-time clock and its time sync is not authenticated; if the clock were
/// set back, a command whose nonce had been forgotten would look unexpired again and could be
/// replayed. Judged against the command clock it stays expired.
pub(super) fn claim_nonce(
    tx: &Transaction,
    stamp: &Stamp,
    now: UnixMs,
    judge: Judge,
) -> rusqlite::Result<Result<(), Refusal>> {
    let (nonce, expires_at) = (stamp.nonce.as_str(), stamp.expires_at);
    let latest = state_ms(tx, "command_clock")?.unwrap_or(0);
    let at = now.max(latest);
    let judged = match judge {
        Judge::CommandClock => at,
        Judge::OwnClock => now,
    };
    if judged > expires_at {
        let behind = if latest > now && judge == Judge::CommandClock {
            format!(
                "; the gate's clock reads {} but it has judged commands at {} before, and time \
                 never goes back for commands. If its clock ran ahead by mistake and is right \
                 now, an admin attests it: gatectl cmd attest-time (a lockdown is taken \
                 meanwhile)",
                format_ts(now),
                format_ts(latest)
            )
        } else {
            String::new()
        };
        return Ok(Err(Refusal::Expired(format!(
            "expired at {}, it is now {}{behind}",
            format_ts(expires_at),
            format_ts(judged)
        ))));
    }
    // While the clock ran ahead, nonces of commands still valid in real time may have been
    // forgotten: a command issued before the clock was last attested could be replayed.
    if judge == Judge::CommandClock
        && let Some(attested) = state_ms(tx, "command_floor")?
        && stamp.issued_at < attested
    {
        return Ok(Err(Refusal::Stale(format!(
            "issued at {}, before this gate's clock was attested, or its damaged store \
             salvaged, at {}: a command from before that is not taken (its nonce may have been \
             forgotten while the clock ran ahead, or lost with the damage); send it again",
            format_ts(stamp.issued_at),
            format_ts(attested)
        ))));
    }
    // A command from the future (beyond the skew the clocks may have) would otherwise be valid
    // until then, whatever its lifetime. Judged against the command clock too, so that a gate
    // booted with its clock behind still takes commands once it has judged a later one.
    if stamp.issued_at > at.saturating_add(MAX_COMMAND_SKEW_MS) {
        return Ok(Err(Refusal::NotYetValid(format!(
            "issued at {}, but it is now {} here (more than {} min ahead: check the clocks)",
            format_ts(stamp.issued_at),
            format_ts(at),
            MAX_COMMAND_SKEW_MS / 60_000
        ))));
    }
    tx.prepare_cached(
        "INSERT INTO state (key, value) VALUES ('command_clock', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([at.to_string()])?;
    // Forgotten only once the gate's own clock is past them too: a lockdown is judged on that
    // clock, and a command clock that ran ahead must not make nonces forgotten early.
    tx.prepare_cached("DELETE FROM command_nonce WHERE expires_at < ?1")?
        .execute([now])?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO command_nonce (nonce, expires_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?
        .execute(params![nonce, expires_at])?;
    if inserted == 0 {
        return Ok(Err(Refusal::Replayed(format!(
            "nonce `{nonce}` was used before; a command is carried out once"
        ))));
    }
    Ok(Ok(()))
}

/// Events that no credential decided (an override, a button press, a mode change), recorded
/// with the nonce of the command behind them, if any, in one transaction.
impl Db {
    /// `record_event` for an event with no command behind it: with no nonce to claim, nothing
    /// can be refused.
    pub(super) fn record_local(
        &mut self,
        draft: EventDraft,
        now: UnixMs,
        also: impl FnOnce(&Transaction) -> rusqlite::Result<()>,
    ) -> Result<PassEvent, StoreError> {
        self.record_event(draft, None, now, also)?
            .map_err(|r| StoreError::Invalid(format!("an event with no nonce was refused: {r}")))
    }

    /// Records one event that no credential decided (an override, a button press), in its own
    /// transaction with `also` and, for a command, its nonce.
    pub(super) fn record_event(
        &mut self,
        draft: EventDraft,
        stamp: Option<&Stamp>,
        now: UnixMs,
        also: impl FnOnce(&Transaction) -> rusqlite::Result<()>,
    ) -> Result<Result<PassEvent, Refusal>, StoreError> {
        let tx = write(&mut self.conn)?;
        if let Some(stamp) = stamp
            && let Err(r) = claim_nonce(&tx, stamp, now, Judge::CommandClock)?
        {
            return Ok(Err(r));
        }
        also(&tx)?;
        let event = insert_event(&tx, &self.gate, draft, now)?;
        tx.commit()?;
        self.pending += 1;
        self.after_insert(now);
        Ok(Ok(event))
    }
}
