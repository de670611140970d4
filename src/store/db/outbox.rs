//! The outbox: events and alarms written with their seq, read for the uplink and deleted once
//! the broker has them; the `outbox_high` alarm; devices' open faults.

use super::*;

/// One row of the outbox, ready to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRow {
    pub rowid: i64,
    pub stream: Stream,
    pub payload: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Event,
    Alarm,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Alarm => "alarm",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutboxStats {
    pub pending: u64,
    pub oldest_ts: Option<UnixMs>,
}

/// The outbox fill level at which an `outbox_high` alarm is raised (G4).
pub(super) const HIGH_WATER_PERCENT: u64 = 80;

impl Db {
    pub fn record_alarm(
        &mut self,
        alarm: &str,
        source: &str,
        detail: &str,
        now: UnixMs,
    ) -> Result<Alarm, StoreError> {
        let tx = write(&mut self.conn)?;
        let a = insert_alarm(&tx, &self.gate, alarm, source, detail, now)?;
        // A device's open fault outlives a restart, in the same transaction as its alarm, so
        // that the next start continues the episode (`open_device_faults`).
        match alarm {
            "device_fault" => set_state(&tx, &format!("{DEVICE_FAULT_KEY}{source}"), detail)?,
            "device_recovered" => {
                tx.prepare_cached("DELETE FROM state WHERE key = ?1")?
                    .execute([format!("{DEVICE_FAULT_KEY}{source}")])?;
            }
            _ => {}
        }
        tx.commit()?;
        self.pending += 1;
        Ok(a)
    }

    /// The devices whose `device_fault` has had no `device_recovered` yet.
    pub fn open_device_faults(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM state WHERE key >= ?1 AND key < ?2 ORDER BY key")?;
        let rows = stmt.query_map([DEVICE_FAULT_KEY, DEVICE_FAULT_END], |r| {
            r.get::<_, String>(0)
        })?;
        let mut out = Vec::new();
        for key in rows {
            out.push(key?[DEVICE_FAULT_KEY.len()..].to_string());
        }
        Ok(out)
    }

    /// Raises `outbox_high` once when the outbox crosses 80% of its quota, and again after it
    /// has fallen below 70%. Nothing is ever deleted to make room (G4).
    pub(super) fn after_insert(&mut self, now: UnixMs) {
        if !self.high_alarm_raised && self.pending * 100 >= self.quota * HIGH_WATER_PERCENT {
            self.high_alarm_raised = true;
            let detail = format!(
                "{} of {} outbox entries await the broker; nothing is deleted to make room",
                self.pending, self.quota
            );
            if let Err(e) = self.record_alarm("outbox_high", "outbox", &detail, now) {
                tracing::error!(error = %e, "{detail}; the alarm could not be recorded");
            }
        }
    }

    /// Up to `limit` unacknowledged rows after `after_rowid`, oldest first.
    pub fn pending(&self, after_rowid: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT rowid, stream, payload FROM outbox WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )?;
        let rows = st
            .query_map(params![after_rowid, limit as i64], |r| {
                let stream: String = r.get(1)?;
                Ok(OutboxRow {
                    rowid: r.get(0)?,
                    stream: if stream == "alarm" {
                        Stream::Alarm
                    } else {
                        Stream::Event
                    },
                    payload: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The broker acknowledged these rows: they leave the outbox. Not synced: rows whose
    /// deletion a power cut undoes are sent again, which at-least-once allows (G3).
    pub fn acked(&mut self, rowids: &[i64]) -> Result<(), StoreError> {
        let removed = self.relaxed(|conn| {
            let tx = write(conn)?;
            let mut removed = 0;
            {
                let mut st = tx.prepare_cached("DELETE FROM outbox WHERE rowid = ?1")?;
                for id in rowids {
                    removed += st.execute([id])? as u64;
                }
            }
            tx.commit()?;
            Ok(removed)
        })?;
        self.pending = self.pending.saturating_sub(removed);
        if self.high_alarm_raised && self.pending * 100 < self.quota * 70 {
            self.high_alarm_raised = false;
        }
        Ok(())
    }

    pub fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let oldest: Option<i64> = self
            .conn
            .query_row("SELECT ts FROM outbox ORDER BY rowid LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(OutboxStats {
            pending: self.pending,
            oldest_ts: oldest,
        })
    }
}

/// The fields of an event that the caller decides; id, seq and ts are the store's.
#[derive(Clone, Debug)]
pub(super) struct EventDraft {
    pub lane: u16,
    pub direction: Direction,
    pub credential: Option<Credential>,
    pub subject: Option<String>,
    pub reason: core::Reason,
    pub override_: Option<Override>,
    pub flags: Vec<String>,
    /// A later fact about a pass: whether someone went through, and the pass it is about.
    pub passed: Option<bool>,
    pub ref_: Option<String>,
    pub snapshot: Option<String>,
    /// When the credential was first seen, if it could have waited before this decision.
    pub seen_at: Option<UnixMs>,
}

impl EventDraft {
    /// An event of a lane with no credential, subject or override.
    pub(super) fn bare(lane: u16, direction: Direction, reason: core::Reason) -> EventDraft {
        EventDraft {
            lane,
            direction,
            credential: None,
            subject: None,
            reason,
            override_: None,
            flags: Vec::new(),
            passed: None,
            ref_: None,
            snapshot: None,
            seen_at: None,
        }
    }

    /// A later fact about `pass` (docs/design.md): reason `passage`, `ref` to it, the same lane,
    /// direction, credential and subject.
    pub(super) fn fact_of(
        pass: &PassEvent,
        passed: Option<bool>,
        snapshot: Option<String>,
    ) -> EventDraft {
        EventDraft {
            lane: pass.lane,
            direction: pass.direction,
            credential: pass.credential.as_ref().map(|c| Credential {
                kind: c.kind,
                id: c.id.clone(),
                score: c.score,
            }),
            subject: pass.subject.clone(),
            reason: core::Reason::Passage,
            override_: None,
            flags: Vec::new(),
            passed,
            ref_: Some(pass.id.clone()),
            snapshot,
            seen_at: None,
        }
    }
}

/// `state` keys of open device faults: this prefix and the device's name.
const DEVICE_FAULT_KEY: &str = "device_fault/";

/// Just past every key with that prefix ('/' + 1 = '0').
const DEVICE_FAULT_END: &str = "device_fault0";

fn next_seq(tx: &Transaction, stream: Stream) -> rusqlite::Result<u64> {
    tx.prepare_cached("UPDATE seq_counter SET last = last + 1 WHERE stream = ?1 RETURNING last")?
        .query_row([stream.as_str()], |r| r.get(0))
}

fn insert_outbox(
    tx: &Transaction,
    stream: Stream,
    seq: u64,
    id: &str,
    now: UnixMs,
    payload: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO outbox (stream, seq, id, ts, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![stream.as_str(), seq, id, now, payload])?;
    Ok(())
}

pub(super) fn insert_event(
    tx: &Transaction,
    gate: &GateId,
    d: EventDraft,
    now: UnixMs,
) -> Result<PassEvent, StoreError> {
    let seq = next_seq(tx, Stream::Event)?;
    let event = PassEvent {
        id: Uuid::now_v7().to_string(),
        seq,
        site: gate.site.clone(),
        gate: gate.gate.clone(),
        lane: d.lane,
        direction: d.direction,
        ts: format_ts(now),
        credential: d.credential.map(|c| CredentialJson {
            kind: c.kind,
            id: c.id,
            score: c.score,
        }),
        subject: d.subject,
        decision: d.reason.decision(),
        reason: d.reason,
        override_: d.override_,
        passed: d.passed,
        snapshot: d.snapshot,
        ref_: d.ref_,
        flags: d.flags,
        seen_at: d.seen_at.map(format_ts),
    };
    let payload = serde_json::to_string(&event).map_err(|e| StoreError::Invalid(e.to_string()))?;
    insert_outbox(tx, Stream::Event, seq, &event.id, now, &payload)?;
    Ok(event)
}

pub(in crate::store) fn insert_alarm(
    tx: &Transaction,
    gate: &GateId,
    alarm: &str,
    source: &str,
    detail: &str,
    now: UnixMs,
) -> Result<Alarm, StoreError> {
    let seq = next_seq(tx, Stream::Alarm)?;
    let a = Alarm {
        id: Uuid::now_v7().to_string(),
        seq,
        site: gate.site.clone(),
        gate: gate.gate.clone(),
        ts: format_ts(now),
        alarm: alarm.to_string(),
        source: source.to_string(),
        detail: detail.to_string(),
    };
    let payload = serde_json::to_string(&a).map_err(|e| StoreError::Invalid(e.to_string()))?;
    insert_outbox(tx, Stream::Alarm, seq, &a.id, now, &payload)?;
    Ok(a)
}
