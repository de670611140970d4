//! Outbox tests: seq, acks, the high-water alarm, group commit.

use super::*;

#[test]
fn seq_has_no_gaps_across_reopen_and_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    for i in 0..3 {
        record_one(&mut db, pass(&format!("c{i}"), None));
    }
    let rows = db.pending(0, 10).expect("pending");
    assert_eq!(rows.len(), 3);
    db.acked(&[rows[0].rowid, rows[1].rowid, rows[2].rowid])
        .expect("ack");
    drop(db);
    let mut db = open(&dir);
    let o = record_one(&mut db, pass("c9", None));
    let PassOutcome::Recorded { event, .. } = o else {
        panic!("recorded")
    };
    assert_eq!(event.seq, 4, "seq continues after acks and a restart");
    assert_eq!(db.outbox_stats().expect("stats").pending, 1);
}

#[test]
fn outbox_positions_only_grow_even_after_it_empties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir);
    record_one(&mut db, pass("a", None));
    let first = db.pending(0, 10).expect("pending");
    db.acked(&[first[0].rowid]).expect("ack");
    record_one(&mut db, pass("b", None));
    let next = db.pending(first[0].rowid, 10).expect("pending");
    assert_eq!(
        next.len(),
        1,
        "a row added after the outbox emptied sorts after the cursor"
    );
    assert!(next[0].rowid > first[0].rowid);
}

#[test]
fn outbox_high_water_raises_one_alarm_and_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = open(&dir); // quota 1000
    let inputs: Vec<PassInput> = (0..850).map(|i| pass(&format!("c{i}"), None)).collect();
    for chunk in inputs.chunks(50) {
        db.record_passes(chunk).expect("record");
    }
    let rows = db.pending(0, 2000).expect("pending");
    let alarms: Vec<_> = rows.iter().filter(|r| r.stream == Stream::Alarm).collect();
    assert_eq!(alarms.len(), 1, "one outbox_high alarm");
    assert!(alarms[0].payload.contains("outbox_high"));
    assert_eq!(rows.len(), 851, "no event was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_passes_share_commits_and_keep_seq_dense() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open(&dir.path().join("g.db"), gate(), Policy::default(), 100_000).expect("store");
    let mut tasks = Vec::new();
    for lane in 0..8u16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                let mut p = pass(&format!("{lane}-{i}"), Some((&format!("r{lane}"), i + 1)));
                p.lane = lane;
                match store.pass(p).await.expect("pass") {
                    PassOutcome::Recorded { event, .. } => seqs.push(event.seq),
                    PassOutcome::AlreadyRecorded => panic!("new mailbox events"),
                }
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    let pending = store
        .call(|db| db.outbox_stats())
        .await
        .expect("stats")
        .pending;
    assert_eq!(pending, 400);
}
