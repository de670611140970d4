//! The downlink: list snapshots and deltas from the centre, applied to the store and acked.
//!
//! G6: a malformed, stale, other-site or oversized update is refused with an ack that names
//! the reason; the lists in force stay in force (a snapshot comes into force by one switch
//! after all of it is written, a delta in one transaction) and nothing here can stop the
//! daemon.

use super::contract::{Ack, ListName, Refusal, Topics, format_ts, parse_delta, parse_snapshot};
use super::envelope::Envelope;
use crate::store::{Applied, Store};

/// Applies one downlink message; returns the ack to publish, or `None` for a topic that is
/// not ours to answer.
pub async fn handle(
    topics: &Topics,
    envelope: &Envelope,
    max_bytes: usize,
    store: &Store,
    topic: &str,
    payload: bytes::Bytes,
    now: i64,
) -> Option<Ack> {
    let (list, is_delta) = topics.parse_list_topic(topic)?;
    if payload.is_empty() {
        // A retained message being cleared: nothing to apply, nothing to ack.
        return None;
    }
    let (reference, result) =
        apply(topics, envelope, max_bytes, store, list, is_delta, payload).await;
    let ack = match result {
        Ok(applied) => {
            tracing::info!(list = list.as_str(), ?applied, "list update applied");
            Ack {
                ref_: reference,
                ok: true,
                error: None,
                detail: None,
                ts: format_ts(now),
            }
        }
        Err(refusal) => {
            tracing::warn!(list = list.as_str(), reference, %refusal, "list update refused");
            Ack {
                ref_: reference,
                ok: false,
                error: Some(refusal.code().to_string()),
                detail: Some(refusal.detail().to_string()),
                ts: format_ts(now),
            }
        }
    };
    Some(ack)
}

async fn apply(
    topics: &Topics,
    envelope: &Envelope,
    max_bytes: usize,
    store: &Store,
    list: ListName,
    is_delta: bool,
    payload: bytes::Bytes,
) -> (String, Result<Applied, Refusal>) {
    let unknown = list.as_str().to_string();
    if payload.len() > max_bytes {
        let r = Refusal::TooLarge(format!("{} bytes, the limit is {max_bytes}", payload.len()));
        return (unknown, Err(r));
    }
    let body = match envelope.open(&payload) {
        Ok(b) => b.to_vec(),
        Err(r) => return (unknown, Err(r)),
    };
    // Parsing a large list takes a while: keep it off the async workers.
    let parsed = tokio::task::spawn_blocking(move || {
        if is_delta {
            parse_delta(list, &body).map(Update::Delta)
        } else {
            parse_snapshot(list, &body).map(Update::Snapshot)
        }
    })
    .await;
    let update = match parsed {
        Ok(Ok(u)) => u,
        Ok(Err(r)) => return (unknown, Err(r)),
        Err(e) => {
            return (
                unknown,
                Err(Refusal::Malformed(format!("parser failed: {e}"))),
            );
        }
    };
    let (site, version) = match &update {
        Update::Snapshot(s) => (s.site.clone(), s.version),
        Update::Delta(d) => (d.site.clone(), d.version),
    };
    let reference = format!("{}@{version}", list.as_str());
    if site != topics.site {
        let r = Refusal::WrongSite(format!(
            "for site `{site}`, this gate is in `{}`",
            topics.site
        ));
        return (reference, Err(r));
    }
    let r = match update {
        Update::Snapshot(s) => store.apply_snapshot(s).await,
        Update::Delta(d) => store.call(move |db| db.apply_delta(&d)).await,
    };
    let result = match r {
        Ok(inner) => inner,
        Err(e) => Err(Refusal::StoreError(e.to_string())),
    };
    (reference, result)
}

enum Update {
    Snapshot(super::contract::Snapshot),
    Delta(super::contract::Delta),
}
