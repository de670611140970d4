//! Small state kept in the `state` table and in memory: the clock's judgement (floor,
//! attestation, build time) and the contact with the centre (outage counts).

use super::*;

/// The gate's contact with the centre (its broker connection).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Contact {
    pub connected: bool,
    /// When the gate last was in contact (persisted in `state`, at most a minute old).
    pub last: Option<UnixMs>,
    persisted: Option<UnixMs>,
}

/// Credential decisions taken without contact with the centre.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OfflineCounts {
    pub granted: u64,
    pub denied: u64,
    /// Of `denied`: refused `offline_limit`.
    pub offline_limit: u64,
}

/// A time without contact with the centre that has ended, and what the gate decided in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outage {
    /// The last contact before it, as persisted (at most a minute early); `None` when the
    /// gate had never been in contact.
    pub since: Option<UnixMs>,
    /// When contact came back.
    pub until: UnixMs,
    pub counts: OfflineCounts,
}

/// How often `last_contact` is written while connected.
const CONTACT_PERSIST_MS: i64 = 60_000;

impl Db {
    /// What the clock watcher observed; decisions from now on judge the clock with it.
    pub fn set_clock_sense(&mut self, sense: ClockSense) {
        self.jump_attested &= sense.jumped;
        self.sense = sense;
    }

    /// The clock as a decision at `now` would judge it.
    pub fn clock_state(&self, now: UnixMs) -> ClockState {
        let sense = ClockSense {
            jumped: self.sense.jumped && !self.jump_attested,
            ..self.sense
        };
        judge_clock(now, self.floor, self.built, sense)
    }

    /// Whether the clock reads earlier than what this gate has already seen: the latest
    /// trusted event, or the command clock. `None` when it does not (by more than the slack
    /// the clock rules allow).
    pub fn clock_behind(&self, now: UnixMs) -> Result<Option<Behind>, StoreError> {
        let command = self
            .read_state("command_clock")?
            .and_then(|v| v.parse::<UnixMs>().ok());
        let ahead = |t: Option<UnixMs>| t.filter(|&t| now < t.saturating_sub(FLOOR_SLACK_MS));
        let b = Behind {
            gate: self.gate.gate.clone(),
            event: ahead(self.floor),
            command: ahead(command),
        };
        Ok((b.event.is_some() || b.command.is_some()).then_some(b))
    }

    /// An admin's signed attestation that the clock reads right now (`attest_time`; the
    /// caller has checked its signature and its challenge): the latest trusted event time and
    /// the command clock go back to `now`, a jump the watcher reported no longer counts, and
    /// commands issued before the attestation are refused from now on (their nonces may have
    /// been forgotten while the clock ran ahead). Recorded as a `clock_attested` alarm, in
    /// one transaction with the nonce.
    ///
    /// It vouches for the clock as it reads; it does not set it: a clock more than the
    /// command skew away from the attested time is refused, and time sync must fix it first.
    pub fn attest_time(
        &mut self,
        stamp: &Stamp,
        by: &str,
        now: UnixMs,
    ) -> Result<Result<String, Refusal>, StoreError> {
        if let Err(r) = check_attested_time(stamp, now) {
            return Ok(Err(r));
        }
        let tx = write(&mut self.conn)?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO command_nonce (nonce, expires_at) VALUES (?1, ?2) \
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![stamp.nonce, stamp.expires_at])?;
        if inserted == 0 {
            return Ok(Err(Refusal::Replayed(format!(
                "nonce `{}` was used before; a command is carried out once",
                stamp.nonce
            ))));
        }
        let command = state_ms(&tx, "command_clock")?;
        let attested =
            state_ms(&tx, "command_floor")?.map_or(stamp.issued_at, |f| f.max(stamp.issued_at));
        set_state(&tx, "command_clock", &now.to_string())?;
        set_state(&tx, "command_floor", &attested.to_string())?;
        let floor = self.floor.map(|f| f.min(now));
        if let Some(f) = floor {
            set_state(&tx, "clock_floor", &f.to_string())?;
        }
        let was = |t: Option<UnixMs>| t.map_or("none".to_string(), format_ts);
        let detail = format!(
            "the clock was attested by {by} at {}: the latest event time went from {} to {}, \
             the command clock from {} to {}{}; commands issued before {} are refused",
            format_ts(now),
            was(self.floor),
            was(floor),
            was(command),
            format_ts(now),
            if self.sense.jumped {
                ", and the clock jump seen before no longer counts"
            } else {
                ""
            },
            format_ts(attested)
        );
        insert_alarm(&tx, &self.gate, "clock_attested", "clock", &detail, now)?;
        tx.commit()?;
        self.floor = floor;
        self.jump_attested = self.sense.jumped;
        self.pending += 1;
        self.after_insert(now);
        Ok(Ok(detail))
    }

    /// Lowers the clock floor to `at` if it is above: the clock jumped, and events recorded
    /// just before the jump was seen may carry the jumped time. A new jump also undoes an
    /// attestation of an earlier one.
    pub fn lower_floor(&mut self, at: UnixMs) -> Result<(), StoreError> {
        self.jump_attested = false;
        if self.floor.is_some_and(|f| f > at) {
            let tx = write(&mut self.conn)?;
            set_state(&tx, "clock_floor", &at.to_string())?;
            tx.commit()?;
            self.floor = Some(at);
        }
        Ok(())
    }

    /// Pretends this gated was built at `at` (tests of the clock rules).
    pub fn set_build_time(&mut self, at: UnixMs) {
        self.built = at;
    }

    /// The gate has a centre (`[mqtt]`): from now on `max_offline` counts from the last
    /// contact, as persisted, until `contact` says it is connected.
    pub fn expect_centre(&mut self) -> Result<(), StoreError> {
        let last = self
            .read_state("last_contact")?
            .and_then(|v| v.parse().ok());
        self.contact = Some(Contact {
            connected: false,
            last,
            persisted: last,
        });
        Ok(())
    }

    /// The link reports its connection to the centre: on connect, on loss, and now and then
    /// while connected. The time of the last contact is persisted at most once a minute (and
    /// on loss), with a relaxed sync: a gate restarted offline counts from a contact at most a
    /// minute earlier than the real one, never later.
    pub fn contact(&mut self, connected: bool, now: UnixMs) -> Result<(), StoreError> {
        let Some(mut c) = self.contact else {
            return Ok(());
        };
        let was = c.connected;
        c.connected = connected;
        if connected && !was {
            self.end_outage(c.last, now)?;
        }
        if connected || was {
            // The clock as it reads now, not the latest ever seen: a contact time saved while
            // the clock ran ahead would otherwise keep the offline limit off until that date.
            c.last = Some(now);
        }
        let due = c
            .persisted
            .is_none_or(|p| (now - p).abs() >= CONTACT_PERSIST_MS)
            || (was && !connected);
        if let (true, Some(last)) = (due && c.last != c.persisted, c.last) {
            self.relaxed(|conn| {
                let tx = write(conn)?;
                set_state(&tx, "last_contact", &last.to_string())?;
                tx.commit()?;
                Ok(())
            })?;
            c.persisted = Some(last);
        }
        self.contact = Some(c);
        Ok(())
    }

    /// Contact is back: the time without it, and what was decided meanwhile, becomes
    /// `last_offline` and the count starts over, in one transaction. A start is an outage
    /// too (since the last contact persisted before it), unless the gate never had contact
    /// and decided nothing: a new gate's first connection.
    fn end_outage(&mut self, since: Option<UnixMs>, now: UnixMs) -> Result<(), StoreError> {
        if since.is_none() && self.offline_counts == OfflineCounts::default() {
            return Ok(());
        }
        let outage = Outage {
            since,
            until: now,
            counts: self.offline_counts,
        };
        let tx = write(&mut self.conn)?;
        set_state(&tx, LAST_OFFLINE, &to_json(&outage)?)?;
        set_state(&tx, OFFLINE_COUNTS, &to_json(&OfflineCounts::default())?)?;
        tx.commit()?;
        self.last_offline = Some(outage);
        self.offline_counts = OfflineCounts::default();
        Ok(())
    }

    /// The latest time without contact that has ended, for the status.
    pub fn last_offline(&self) -> Option<Outage> {
        self.last_offline
    }

    /// What has been decided since contact was lost (zero while in contact).
    pub fn offline_counts(&self) -> OfflineCounts {
        self.offline_counts
    }

    /// Since when the gate has had no contact with the centre; `None` while in contact or
    /// without a centre.
    pub fn offline_since(&self) -> Option<Option<UnixMs>> {
        self.contact.filter(|c| !c.connected).map(|c| c.last)
    }
}

/// `state` keys of the outage report (item `last_offline` of the status).
pub(super) const OFFLINE_COUNTS: &str = "offline_counts";

pub(super) const LAST_OFFLINE: &str = "last_offline";

/// An attestation vouches for the gate's clock only if it reads what the admin's did, within
/// the skew commands allow, and the attestation is not past its own expiry on it.
fn check_attested_time(stamp: &Stamp, now: UnixMs) -> Result<(), Refusal> {
    let fix = "an attestation vouches for the clock as it reads, it does not set it: fix time \
               sync (or set the clock) first, then attest";
    if stamp.issued_at > now.saturating_add(MAX_COMMAND_SKEW_MS) {
        return Err(Refusal::NotYetValid(format!(
            "attested time {}, but this gate's clock reads {} (more than {} min behind); {fix}",
            format_ts(stamp.issued_at),
            format_ts(now),
            MAX_COMMAND_SKEW_MS / 60_000
        )));
    }
    if now > stamp.expires_at || stamp.expires_at - stamp.issued_at > MAX_ATTEST_LIFETIME_MS {
        return Err(Refusal::Expired(format!(
            "attested time {} (valid until {}), but this gate's clock reads {}; an attestation \
             is valid for at most {} min; {fix}",
            format_ts(stamp.issued_at),
            format_ts(stamp.expires_at),
            format_ts(now),
            MAX_ATTEST_LIFETIME_MS / 60_000
        )));
    }
    Ok(())
}

/// The clock reads earlier than what this gate has already seen (`Db::clock_behind`).
#[derive(Clone, Debug, PartialEq)]
pub struct Behind {
    /// This gate's id, for the command that recovers it.
    pub gate: String,
    /// The latest event recorded with a trusted clock, if the clock reads before it.
    pub event: Option<UnixMs>,
    /// The command clock, if the clock reads before it.
    pub command: Option<UnixMs>,
}
