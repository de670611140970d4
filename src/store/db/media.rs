//! Face terminal snapshots: kept, recorded as a later fact of their pass, uploaded.

use super::outbox::EventDraft;
use super::*;

impl Db {
    /// A face terminal's snapshot of a pass, as a thumbnail: kept (the oldest beyond `keep`
    /// are deleted, uploaded or not) and recorded as a later fact of the pass (reason
    /// `passage`, `ref` to it) whose `snapshot` names it: `snapshot/{pass id}`, the last part of
    /// the topic it is uploaded on.
    pub fn store_snapshot(
        &mut self,
        pass: &PassEvent,
        jpeg: &[u8],
        keep: u32,
        now: UnixMs,
    ) -> Result<PassEvent, StoreError> {
        let draft = EventDraft::fact_of(pass, None, Some(format!("snapshot/{}", pass.id)));
        self.record_local(draft, now, |tx| {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO snapshot (event_id, ts, jpeg, uploaded)
                 VALUES (?1, ?2, ?3, 0)",
            )?
            .execute(params![pass.id, now, jpeg])?;
            let gone = tx
                .prepare_cached(
                    "DELETE FROM snapshot WHERE event_id NOT IN
                     (SELECT event_id FROM snapshot ORDER BY ts DESC, event_id DESC LIMIT ?1)",
                )?
                .execute([keep])?;
            if gone > 0 {
                tracing::info!(deleted = gone, keep, "old snapshots deleted (retention)");
            }
            Ok(())
        })
    }

    /// Snapshots not uploaded yet, oldest first, leaving out `skip` (in flight).
    pub fn snapshots_to_upload(
        &self,
        skip: &[String],
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // Ids first: the images of those in flight are not read for nothing.
        let ids: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT event_id FROM snapshot WHERE uploaded = 0 ORDER BY ts, event_id",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut jpeg = self
            .conn
            .prepare_cached("SELECT jpeg FROM snapshot WHERE event_id = ?1")?;
        let mut out = Vec::new();
        for id in ids.into_iter().filter(|id| !skip.contains(id)).take(limit) {
            let bytes: Vec<u8> = jpeg.query_row([&id], |r| r.get(0))?;
            out.push((id, bytes));
        }
        Ok(out)
    }

    /// The broker has taken this snapshot.
    pub fn snapshot_uploaded(&self, event_id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE snapshot SET uploaded = 1 WHERE event_id = ?1")?
            .execute([event_id])?;
        Ok(())
    }
}
