//! The other gates of the site: anti-passback and invitation use learned from their events.

use super::passes::{set_passback, use_entry};
use super::*;

impl Db {
    /// Learns from other gates' pass events, read from the broker: subjects' in/out state
    /// (anti-passback) and invitation entries used. An event already learned (its gate's seq
    /// at or below the last one learned) changes nothing, so the broker's redeliveries are
    /// harmless. A lower seq with a later id (UUIDv7 ids grow with time) is a gate that
    /// started its numbering over, a replaced box or database: it is learned, and raised as a
    /// `peer_seq_reset` alarm. Returns how many events were new. One transaction, not synced: what a power
    /// cut loses is learned again only if the broker sends it again; until then the gate
    /// judges on its own passes, as when it is cut off.
    pub fn learn(&mut self, events: &[PassEvent], now: UnixMs) -> Result<usize, StoreError> {
        let gate = self.gate.clone();
        let exit = self.policy.exit;
        let mut resets: Vec<(String, u64, u64)> = Vec::new();
        let learned = self.relaxed(|conn| {
            let tx = write(conn)?;
            let mut learned = 0;
            for e in events {
                // Hostile input: another site's, our own, or a seq SQLite cannot hold (it
                // would fail the whole batch) is skipped. That the event comes from the gate
                // it names is the link's check (the topic's gate).
                if e.site != gate.site || e.gate == gate.gate || e.seq > i64::MAX as u64 {
                    continue;
                }
                let last: Option<(u64, String)> = tx
                    .prepare_cached("SELECT seq, id FROM peer WHERE gate = ?1")?
                    .query_row([&e.gate], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((seq, id)) = &last
                    && e.seq <= *seq
                {
                    if e.id.as_str() <= id.as_str() {
                        continue;
                    }
                    resets.push((e.gate.clone(), *seq, e.seq));
                }
                tx.prepare_cached(
                    "INSERT INTO peer (gate, seq, id, at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (gate) DO UPDATE SET seq = excluded.seq, id = excluded.id,
                       at = excluded.at",
                )?
                .execute(params![e.gate, e.seq, e.id, now])?;
                learned += 1;
                if e.override_
                    .as_ref()
                    .is_some_and(|o| o.input == CLEAR_PASSBACK_ALL)
                {
                    // Only what was known when the peer cleared it: a pass after the clear
                    // (here or learned) stands.
                    if let Ok(at) = parse_ts(&e.ts) {
                        let at = at.min(now.saturating_add(PEER_SKEW_MS));
                        tx.prepare_cached("DELETE FROM passback WHERE at <= ?1")?
                            .execute([at])?;
                    }
                    continue;
                }
                let Some(subject) = &e.subject else { continue };
                let Ok(at) = parse_ts(&e.ts) else { continue };
                // A peer whose clock runs ahead must not plant a state that never resets and
                // that no later pass replaces.
                let at = at.min(now.saturating_add(PEER_SKEW_MS));
                if e.override_
                    .as_ref()
                    .is_some_and(|o| o.input == CLEAR_PASSBACK)
                {
                    tx.prepare_cached("DELETE FROM passback WHERE subject = ?1 AND at <= ?2")?
                        .execute(params![subject, at])?;
                    continue;
                }
                if !e.reason.moves_passback() {
                    continue;
                }
                set_passback(&tx, subject, e.direction, at, &e.gate, true)?;
                // Counted by this gate's rule: the site's gates share it.
                if e.reason == Reason::Visitor && exit.uses_entry(e.direction) {
                    use_entry(&tx, subject)?;
                }
            }
            tx.commit()?;
            Ok(learned)
        })?;
        for (peer, before, now_seq) in resets {
            let detail = format!(
                "gate `{peer}` numbers its events from {now_seq} again (it was at {before}): \
                 a replaced box or database; its events are learned from here on"
            );
            tracing::warn!("{detail}");
            self.record_alarm("peer_seq_reset", &peer, &detail, now)?;
        }
        Ok(learned)
    }

    /// The last event seq learned from each other gate.
    pub fn peers(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT gate, seq FROM peer ORDER BY gate")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// How far ahead of this gate's clock a peer's event time is believed.
const PEER_SKEW_MS: i64 = 60_000;
