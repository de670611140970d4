//! Passes: a credential decided and recorded (the lookup in the lists in force, then the pure
//! core), a button press, and the later facts of a pass (passage, free passage).

use super::lists::parse_gates;
use super::outbox::{EventDraft, insert_event};
use super::*;

/// Which mailbox event a pass came from, so a restart never decides it twice.
#[derive(Clone, Debug)]
pub struct MailboxPos {
    pub reader: String,
    pub head_seq: u16,
}

/// A credential to decide and record.
#[derive(Clone, Debug)]
pub struct PassInput {
    pub from: Option<MailboxPos>,
    pub lane: u16,
    pub direction: Direction,
    pub credential: Credential,
    pub now: UnixMs,
    /// When the presentation was first seen; `None` for input that cannot wait in a queue.
    pub seen: Option<FirstSeen>,
}

/// When gated first saw a presented credential, and since when it can have waited.
#[derive(Clone, Copy, Debug)]
pub struct FirstSeen {
    /// Wall time at which gated first saw it, for the record only (`seen_at`).
    pub at: UnixMs,
    /// Its age is measured from this monotonic instant, the latest at which its source is
    /// known not to have held it yet (or when it was read), so that a wall clock that jumps
    /// makes no swipe stale or fresh. `None`: found queued in a device gated could not watch
    /// (its link was down, or gated was not running): it may have waited for any time.
    pub since: Option<std::time::Instant>,
}

impl FirstSeen {
    /// Read right now from a source that keeps nothing (a Wiegand frame).
    pub fn now(at: UnixMs) -> Self {
        Self {
            at,
            since: Some(std::time::Instant::now()),
        }
    }

    /// Its age as the core judges it, at this moment.
    fn age(&self) -> core::SwipeAge {
        match self.since {
            Some(t) => {
                core::SwipeAge::Known(i64::try_from(t.elapsed().as_millis()).unwrap_or(i64::MAX))
            }
            None => core::SwipeAge::Unknown,
        }
    }
}

#[derive(Clone, Debug)]
// Almost every outcome is `Recorded`; boxing it would add an allocation to every pass.
#[allow(clippy::large_enum_variant)]
pub enum PassOutcome {
    /// Decided and committed: the relay may now be commanded (G1).
    Recorded { verdict: Verdict, event: PassEvent },
    /// This mailbox event was recorded before (a restart, or an ack that did not arrive): ack
    /// it again, decide nothing.
    AlreadyRecorded,
}

impl Db {
    /// Decides and records a batch of passes in one transaction: one fsync for all (group
    /// commit). All or nothing: on error none is recorded and every caller is told.
    pub fn record_passes(&mut self, inputs: &[PassInput]) -> Result<Vec<PassOutcome>, StoreError> {
        let mut factors = self.first_factors.clone();
        let mut floor = self.floor;
        let mut counts = self.offline_counts;
        let tx = write(&mut self.conn)?;
        let incomplete = lists_incomplete(&tx)?;
        let mut out = Vec::with_capacity(inputs.len());
        let mut added = 0;
        for input in inputs {
            let clock = judge_clock(input.now, floor, self.built, self.sense);
            let rules = Rules {
                gate: &self.gate,
                policy: &self.policy,
                mode: self.mode,
                calendar: &self.calendar,
                clock,
                offline_ms: offline_ms(self.contact, input.now),
                swipe_age: input.seen.map(|s| s.age()),
                lists_incomplete: incomplete,
            };
            let o = record_pass(&tx, &rules, &mut factors, input)?;
            if let PassOutcome::Recorded { verdict, .. } = &o {
                added += 1;
                if rules.offline_ms.is_some() {
                    counts.count(verdict.reason);
                }
                // The floor moves only with a trusted clock: a clock set years ahead must not
                // leave the gate distrusting every correct time after it.
                if clock.trusted() && floor.is_none_or(|f| input.now > f) {
                    floor = Some(input.now);
                }
            }
            out.push(o);
        }
        if floor != self.floor
            && let Some(f) = floor
        {
            set_state(&tx, "clock_floor", &f.to_string())?;
        }
        if counts != self.offline_counts {
            set_state(&tx, OFFLINE_COUNTS, &to_json(&counts)?)?;
        }
        tx.commit()?;
        self.first_factors = factors;
        self.floor = floor;
        self.offline_counts = counts;
        self.pending += added;
        // The passes are committed: whatever happens to the alarm, they stay recorded and
        // their lanes may open.
        self.after_insert(inputs.last().map_or(0, |i| i.now));
        Ok(out)
    }

    /// Decides `credential` on lane 0, direction in, against the lists in force, as a pass
    /// would be, without recording anything (no event, no entry used): what the benchmarks
    /// time as one decision.
    pub fn decide(&self, credential: &Credential, now: UnixMs) -> Result<Verdict, StoreError> {
        let rules = Rules {
            gate: &self.gate,
            policy: &self.policy,
            mode: self.mode,
            calendar: &self.calendar,
            clock: self.clock_state(now),
            offline_ms: offline_ms(self.contact, now),
            swipe_age: None,
            lists_incomplete: lists_incomplete(&self.conn)?,
        };
        Ok(decide(
            &self.conn,
            &rules,
            None,
            0,
            Direction::In,
            credential,
            now,
        )?)
    }

    /// A subject's anti-passback state, as the next decision would read it.
    pub fn last_pass(&self, subject: &str) -> Result<Option<LastPass>, StoreError> {
        Ok(last_pass(&self.conn, subject)?)
    }

    /// A press of a lane's request button: decided by the core (mode, the lane's free exit)
    /// and recorded with no credential. `None` when the button does not release this lane
    /// direction (nothing is recorded). Committed before the caller drives the relay (G1).
    pub fn record_button(
        &mut self,
        lane: u16,
        direction: Direction,
        now: UnixMs,
    ) -> Result<Option<PassEvent>, StoreError> {
        let free = self
            .policy
            .lanes
            .get(&lane)
            .map_or(core::FreeExit::No, |l| l.free(direction));
        let Some(reason) = core::decide_button(self.mode, free) else {
            return Ok(None);
        };
        let draft = EventDraft::bare(lane, direction, reason);
        self.record_local(draft, now, |_| Ok(())).map(Some)
    }

    /// A later fact about a granted pass (docs/design.md: a new event with reason `passage` and a
    /// `ref` to the pass): the passage sensor counted someone (`passed` true), or the release
    /// ended with nobody through (false). In the second case `give_back` returns the
    /// invitation entry the pass used, in the same transaction.
    pub fn record_passage(
        &mut self,
        pass: &PassEvent,
        passed: bool,
        give_back: Option<&str>,
        now: UnixMs,
    ) -> Result<PassEvent, StoreError> {
        let draft = EventDraft::fact_of(pass, Some(passed), None);
        // Only a pass that used an entry gives one back (a visitor's exit uses none).
        let give_back = give_back.filter(|_| !passed && self.policy.uses_entry(pass.direction));
        self.record_local(draft, now, |tx| {
            if let Some(invitation) = give_back {
                tx.prepare_cached(
                    "UPDATE invitation_usage SET used = used - 1
                     WHERE invitation = ?1 AND used > 0",
                )?
                .execute([invitation])?;
            }
            Ok(())
        })
    }

    /// Someone went through a lane with no grant waiting, while the gate's mode held it open
    /// (`reason` `hold_open` or `emergency_release`): recorded, with no credential.
    pub fn record_free_passage(
        &mut self,
        lane: u16,
        direction: Direction,
        reason: core::Reason,
        now: UnixMs,
    ) -> Result<PassEvent, StoreError> {
        let draft = EventDraft {
            passed: Some(true),
            ..EventDraft::bare(lane, direction, reason)
        };
        self.record_local(draft, now, |_| Ok(()))
    }

    /// Used entries of an invitation (for tests and status).
    pub fn invitation_used(&self, invitation: &str) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT used FROM invitation_usage WHERE invitation = ?1",
                [invitation],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }
}

impl OfflineCounts {
    fn count(&mut self, reason: Reason) {
        if reason.is_granted() {
            self.granted += 1;
        } else {
            self.denied += 1;
            if reason == Reason::OfflineLimit {
                self.offline_limit += 1;
            }
        }
    }
}

/// What a decision is judged under, besides the credential and its entries.
struct Rules<'a> {
    gate: &'a GateId,
    policy: &'a Policy,
    mode: Mode,
    calendar: &'a Calendar,
    clock: ClockState,
    offline_ms: Option<i64>,
    /// How long the credential waited before this decision, judged as late as possible.
    swipe_age: Option<core::SwipeAge>,
    /// The deny list or the calendar was lost to a damaged store (`lists_incomplete`).
    lists_incomplete: bool,
}

/// Whether a salvage lost the deny list or the calendar and its snapshot has not come: the
/// core then grants nothing that needs the lists (`Lookups::incomplete`).
fn lists_incomplete(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT count(*) FROM list_version WHERE lost = 1 AND list IN ('deny', 'calendar')",
    )?
    .query_row([], |r| r.get::<_, i64>(0))
    .map(|n| n > 0)
}

fn offline_ms(contact: Option<Contact>, now: UnixMs) -> Option<i64> {
    match contact {
        None => None,
        Some(c) if c.connected => None,
        // A last contact later than now cannot be judged: offline since ever (fail closed).
        Some(c) => Some(
            c.last
                .filter(|l| *l <= now)
                .map_or(i64::MAX, |l| now.saturating_sub(l)),
        ),
    }
}

/// Records a subject's pass for anti-passback. A pass at this gate always replaces what was
/// known, whatever the times say (the gates' clocks differ, and this one may have been reset);
/// one learned from a peer only if it is not older than what is known.
pub(super) fn set_passback(
    tx: &Transaction,
    subject: &str,
    d: Direction,
    at: UnixMs,
    gate: &str,
    learned: bool,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO passback (subject, direction, at, gate) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (subject) DO UPDATE SET direction = excluded.direction,
           at = excluded.at, gate = excluded.gate
         WHERE NOT ?5 OR excluded.at >= passback.at",
    )?
    .execute(params![subject, d.as_str(), at, gate, learned])?;
    Ok(())
}

pub(super) fn use_entry(tx: &Transaction, invitation: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO invitation_usage (invitation, used) VALUES (?1, 1)
         ON CONFLICT (invitation) DO UPDATE SET used = used + 1",
    )?
    .execute([invitation])?;
    Ok(())
}

fn record_pass(
    tx: &Transaction,
    rules: &Rules,
    factors: &mut std::collections::HashMap<u16, FirstFactor>,
    input: &PassInput,
) -> Result<PassOutcome, StoreError> {
    let gate = rules.gate;
    let cred = &input.credential;
    if let Some(pos) = &input.from {
        let seen: Option<(i64, String, String)> = tx
            .prepare_cached("SELECT head_seq, kind, cred_id FROM reader_head WHERE reader = ?1")?
            .query_row([&pos.reader], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        // The credential must match too: a reader that rebooted and restarted its numbering
        // must not have a new pass swallowed as a duplicate.
        if seen.is_some_and(|(s, k, id)| {
            s == i64::from(pos.head_seq) && k == cred.kind.as_str() && id == cred.id
        }) {
            return Ok(PassOutcome::AlreadyRecorded);
        }
    }
    let verdict = decide(
        tx,
        rules,
        factors.get(&input.lane),
        input.lane,
        input.direction,
        cred,
        input.now,
    )?;
    if let Some(inv) = &verdict.consumes_entry {
        use_entry(tx, inv)?;
    }
    if rules.policy.passback.mode != PassbackMode::Off
        && let Some(subject) = verdict.moves()
    {
        set_passback(tx, subject, input.direction, input.now, &gate.gate, false)?;
    }
    match &verdict.factor {
        FactorChange::Keep => {}
        FactorChange::Set(f) => {
            factors.insert(input.lane, f.clone());
        }
        FactorChange::Clear => {
            factors.remove(&input.lane);
        }
    }
    let flags = if verdict.passback_flag {
        vec!["anti_passback".to_string()]
    } else {
        Vec::new()
    };
    let event = insert_event(
        tx,
        gate,
        EventDraft {
            lane: input.lane,
            direction: input.direction,
            credential: Some(cred.clone()),
            subject: verdict.subject.clone(),
            reason: verdict.reason,
            override_: None,
            flags,
            passed: None,
            ref_: None,
            snapshot: None,
            seen_at: input.seen.map(|s| s.at),
        },
        input.now,
    )?;
    if let Some(pos) = &input.from {
        tx.prepare_cached(
            "INSERT INTO reader_head (reader, head_seq, kind, cred_id, event_id)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (reader) DO UPDATE SET head_seq = excluded.head_seq,
               kind = excluded.kind, cred_id = excluded.cred_id, event_id = excluded.event_id",
        )?
        .execute(params![
            pos.reader,
            pos.head_seq,
            cred.kind.as_str(),
            cred.id,
            event.id
        ])?;
    }
    Ok(PassOutcome::Recorded { verdict, event })
}

/// The decision on one credential: the store lookup, then the pure core.
fn decide(
    conn: &Connection,
    rules: &Rules,
    first_factor: Option<&FirstFactor>,
    lane: u16,
    direction: Direction,
    cred: &Credential,
    now: UnixMs,
) -> rusqlite::Result<Verdict> {
    let passback = rules.policy.passback.mode != PassbackMode::Off;
    let mut lookups = lookup(conn, cred.kind, &cred.id, passback)?;
    lookups.incomplete = rules.lists_incomplete;
    let ctx = Context {
        gate: &rules.gate.gate,
        lane,
        direction,
        mode: rules.mode,
        now,
        clock: rules.clock,
        offline_ms: rules.offline_ms,
        calendar: rules.calendar,
        first_factor,
        swipe_age: rules.swipe_age,
    };
    Ok(core::decide(cred, &lookups, &ctx, rules.policy))
}

fn last_pass(conn: &Connection, subject: &str) -> rusqlite::Result<Option<LastPass>> {
    conn.prepare_cached("SELECT direction, at FROM passback WHERE subject = ?1")?
        .query_row([subject], |r| {
            let d: String = r.get(0)?;
            Ok(LastPass {
                direction: if d == "out" {
                    Direction::Out
                } else {
                    Direction::In
                },
                at: r.get(1)?,
            })
        })
        .optional()
}

/// Each list is looked up in two queries of one table each, by primary key: the credential,
/// then its entry. As one JOIN, SQLite's plan depends on the bound values (its STAT4 build
/// marks the statement for re-preparing whenever they change), and every lookup paid for a
/// full parse and plan, about ten times the cost of the queries themselves.
fn lookup(
    conn: &Connection,
    kind: CredentialKind,
    id: &str,
    passback: bool,
) -> rusqlite::Result<Lookups> {
    let last = |subject: &str| {
        if passback {
            last_pass(conn, subject)
        } else {
            Ok(None)
        }
    };
    let k = kind.as_str();
    let denied = conn
        .prepare_cached(
            "SELECT coalesce(reason, '') FROM deny
             WHERE kind = ?1 AND cred_id = ?2
               AND gen = (SELECT gen FROM list_version WHERE list = 'deny')",
        )?
        .query_row([k, id], |r| r.get::<_, String>(0))
        .optional()?;
    let holder = conn
        .prepare_cached(
            "SELECT gen, subject FROM staff_credential
             WHERE kind = ?1 AND cred_id = ?2
               AND gen = (SELECT gen FROM list_version WHERE list = 'staff')",
        )?
        .query_row([k, id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    let staff = match holder {
        None => None,
        Some((generation, subject)) => {
            let last = last(&subject)?;
            conn.prepare_cached(
                "SELECT valid_from, valid_until, gates, schedule, grp, lockdown_exempt FROM staff
                 WHERE gen = ?1 AND subject = ?2",
            )?
            .query_row(params![generation, subject], |r| {
                Ok(StaffMatch {
                    subject: subject.clone(),
                    validity: Validity {
                        valid_from: r.get(0)?,
                        valid_until: r.get(1)?,
                        gates: parse_gates(r.get(2)?),
                    },
                    schedule: r.get(3)?,
                    group: r.get(4)?,
                    lockdown_exempt: r.get(5)?,
                    last,
                })
            })
            .optional()?
        }
    };
    let holder = conn
        .prepare_cached(
            "SELECT gen, invitation FROM invitation_credential
             WHERE kind = ?1 AND cred_id = ?2
               AND gen = (SELECT gen FROM list_version WHERE list = 'visitors')",
        )?
        .query_row([k, id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    let invitation = match holder {
        None => None,
        Some((generation, invitation)) => {
            let used: u32 = conn
                .prepare_cached("SELECT used FROM invitation_usage WHERE invitation = ?1")?
                .query_row([&invitation], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let last = last(&invitation)?;
            conn.prepare_cached(
                "SELECT valid_from, valid_until, gates, max_entries, schedule FROM invitation
                 WHERE gen = ?1 AND invitation = ?2",
            )?
            .query_row(params![generation, invitation], |r| {
                Ok(InvitationMatch {
                    invitation: invitation.clone(),
                    validity: Validity {
                        valid_from: r.get(0)?,
                        valid_until: r.get(1)?,
                        gates: parse_gates(r.get(2)?),
                    },
                    max_entries: r.get(3)?,
                    used,
                    schedule: r.get(4)?,
                    last,
                })
            })
            .optional()?
        }
    };
    Ok(Lookups {
        denied,
        staff,
        invitation,
        incomplete: false,
    })
}
