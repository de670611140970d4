//! The store's figures, in-process against a real SQLite file: durable commits next to bare
//! SQLite commits, decisions with small and large lists, and list updates with decisions
//! going on meanwhile.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use gated::core::{Credential, CredentialKind, Policy};
use gated::store::{MailboxPos, PassInput, Store};
use gated_contract::envelope::{AdminKey, Verifier};
use gated_contract::{ListName, parse_delta, parse_snapshot};
use rand::Rng as _;

use crate::Results;
use crate::infra::{percentile, round1, round3};
use crate::seed::{self, NOW};

/// The size of a pass event's JSON as this harness's passes write it (305–310 bytes, read
/// from `commits.db`): the bare commits write rows of the same size.
const PAYLOAD_LEN: usize = 310;

/// `raw_commit_per_s`: bare SQLite, one row of a pass event's size per transaction, WAL with
/// `synchronous = FULL` as gated sets it. `commit_events_per_s`: passes through gated's store
/// one after the other, each decided and durably recorded before the next is sent (one lane).
/// Also with 8 lanes at once, where group commit shares each fsync.
pub async fn commits(dir: &Path, r: &mut Results) -> Result<()> {
    const SPAN: Duration = Duration::from_secs(4);
    // Bare SQLite.
    let raw = {
        let conn = rusqlite::Connection::open(dir.join("raw.db"))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if mode != "wal" {
            bail!("bare SQLite refused WAL ({mode})");
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE outbox (rowid INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,
             seq INTEGER NOT NULL, id TEXT NOT NULL, ts INTEGER NOT NULL, payload TEXT NOT NULL)",
        )?;
        let payload = "x".repeat(PAYLOAD_LEN);
        let mut st = conn.prepare(
            "INSERT INTO outbox (stream, seq, id, ts, payload) VALUES ('event', ?1, ?2, ?3, ?4)",
        )?;
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed() < SPAN {
            conn.execute_batch("BEGIN")?;
            st.execute(rusqlite::params![n, format!("id-{n}"), NOW, payload])?;
            conn.execute_batch("COMMIT")?;
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    // gated's store, one lane.
    let path = dir.join("commits.db");
    {
        let mut db = seed::open(&path)?;
        seed::lists(&mut db, 1, 1000, 0)?;
    }
    let store = Store::open(&path, seed::gate_id(), Policy::default(), 2_000_000)?;
    crate::settle();
    let pass = |i: usize, lane: u16| PassInput {
        from: Some(MailboxPos {
            reader: format!("reader{lane}"),
            head_seq: (i % 60_000) as u16 + 1,
        }),
        ..seed::swipe(i % 1000, lane)
    };
    let ours = {
        let (start, mut n) = (Instant::now(), 0usize);
        while start.elapsed() < SPAN {
            store.pass(pass(n, 0)).await?;
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    // 8 lanes at once.
    let ours8 = {
        let start = Instant::now();
        let mut lanes = Vec::new();
        for lane in 0..8u16 {
            let store = store.clone();
            lanes.push(tokio::spawn(async move {
                let mut n = 0usize;
                while start.elapsed() < SPAN {
                    store.pass(pass(n, lane)).await?;
                    n += 1;
                }
                anyhow::Ok(n)
            }));
        }
        let mut total = 0;
        for l in lanes {
            total += l.await??;
        }
        total as f64 / start.elapsed().as_secs_f64()
    };
    r.put("raw_commit_per_s", raw.round());
    r.put("commit_events_per_s", ours.round());
    r.put("commit_ratio", round3(ours / raw));
    r.put("commit_events_per_s_8_lanes", ours8.round());
    Ok(())
}

/// Decision latencies in µs over a mix of credentials: staff cards (70%), staff faces (10%),
/// invitation QR codes (15%, when there are invitations) and unknown cards (5%), picked at
/// random over the whole list so that the page cache sees a real spread.
fn decide_many(db: &gated::store::Db, staff: usize, visitors: usize, n: usize) -> Result<Vec<f64>> {
    let mut rng = rand::rng();
    let mut pick = || {
        let roll = rng.random_range(0..100);
        let (kind, id) = match roll {
            0..70 => (CredentialKind::Card, seed::card(rng.random_range(0..staff))),
            70..80 => (CredentialKind::Face, seed::face(rng.random_range(0..staff))),
            80..95 if visitors > 0 => (CredentialKind::Qr, seed::qr(rng.random_range(0..visitors))),
            _ => (
                CredentialKind::Card,
                format!("X{}", rng.random_range(0..u32::MAX)),
            ),
        };
        Credential {
            kind,
            id,
            score: (kind == CredentialKind::Face).then_some(0.95),
        }
    };
    let mut granted = 0;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 2000 {
        let c = pick();
        let t = Instant::now();
        let v = db.decide(&c, NOW)?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        if i >= 2000 {
            out.push(us);
            granted += usize::from(v.granted());
        }
    }
    // The mix is ~95% known credentials: a run that granted little decided against no list.
    if granted * 100 < n * 80 {
        bail!("only {granted} of {n} decisions granted: the lists are not in force");
    }
    Ok(out)
}

/// `lookup_p99_us_1k` and `lookup_p99_us_250k`. Returns the path of the large database (250k
/// staff, 50k invitations), which the memory figures reuse.
pub fn lookups(dir: &Path, r: &mut Results) -> Result<std::path::PathBuf> {
    const N: usize = 50_000;
    let small = dir.join("lists-1k.db");
    let mut db = seed::open(&small)?;
    seed::lists(&mut db, 1, 800, 200)?;
    let mut v = decide_many(&db, 800, 200, N)?;
    let p99_1k = percentile(&mut v, 99.0);
    let p50_1k = percentile(&mut v, 50.0);
    drop(db);

    let large = dir.join("lists-250k.db");
    let mut db = seed::open(&large)?;
    let t = Instant::now();
    seed::lists(&mut db, 1, 250_000, 50_000)?;
    eprintln!(
        "  (250k staff + 50k invitations written in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let mut v = decide_many(&db, 250_000, 50_000, N)?;
    let p99_250k = percentile(&mut v, 99.0);
    let p50_250k = percentile(&mut v, 50.0);
    r.put("lookup_p50_us_1k", round1(p50_1k));
    r.put("lookup_p99_us_1k", round1(p99_1k));
    r.put("lookup_p50_us_250k", round1(p50_250k));
    r.put("lookup_p99_us_250k", round1(p99_250k));
    r.put("lookup_p99_ratio_250k_to_1k", round3(p99_250k / p99_1k));
    Ok(large)
}

/// Passes, one every 2 ms like a busy gate, each timed from the request to its durable record
/// (what a lane waits for before its relay opens), until `stop` is set.
async fn passes_until(store: Store, stop: tokio::sync::watch::Receiver<bool>) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    let mut i = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    while !*stop.borrow() {
        tick.tick().await;
        let input = PassInput {
            from: Some(MailboxPos {
                reader: "reader0".into(),
                head_seq: (i % 60_000) as u16 + 1,
            }),
            ..seed::swipe(i % 100_000, 0)
        };
        let t = Instant::now();
        store.pass(input).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        i += 1;
    }
    Ok(out)
}

/// `snapshot_apply_100k_s`, `delta_apply_1k_ms` and `decision_p99_during_apply_us`. Each update
/// goes through the downlink's own steps: the signature check, parsing, and the store's
/// stepped apply until the new list is in force (when the gate acks it). The cleanup of the
/// replaced list that follows is timed apart; decisions go on through both.
pub async fn apply(dir: &Path, r: &mut Results) -> Result<()> {
    let key = AdminKey::generate("bench").map_err(anyhow::Error::msg)?;
    let verifier = Verifier::new([(key.id.clone(), key.verifying_key())].into(), false);
    let path = dir.join("apply.db");
    {
        let mut db = seed::open(&path)?;
        seed::lists(&mut db, 1, 100_000, 0)?;
    }
    let store = Store::open(&path, seed::gate_id(), Policy::default(), 2_000_000)?;
    crate::settle();

    // Decisions with no apply going on: the reference (3 s now, 3 s after the apply).
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let quiet = tokio::spawn(passes_until(store.clone(), stop));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(true)?;
    let mut quiet = quiet.await??;

    // A 100k-entry snapshot replacing the 100k in force, with decisions going on.
    let sealed = key.seal(seed::staff_body(2, 100_000).as_bytes());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let during = tokio::spawn(passes_until(store.clone(), stop));
    let t = Instant::now();
    let opened = verifier
        .open(&sealed)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let snap =
        parse_snapshot(ListName::Staff, &opened.body).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let applied = store.apply_snapshot(snap).await?;
    let apply_s = t.elapsed().as_secs_f64();
    // Then the old 100k are deleted, as the downlink does after the ack; decisions go on.
    let t = Instant::now();
    store.drop_replaced().await;
    let cleanup_s = t.elapsed().as_secs_f64();
    stop_tx.send(true)?;
    let mut during = during.await??;
    if applied.is_err() {
        bail!("the 100k snapshot was refused: {applied:?}");
    }

    // A 1k-entry delta on top of it.
    let mut body =
        String::from(r#"{"list":"staff","site":"hq","version":3,"base":2,"remove":[],"upsert":["#);
    for i in 0..1000 {
        if i > 0 {
            body.push(',');
        }
        body += &format!(
            r#"{{"subject":"N{i:05}","name":"New {i}","credentials":[{{"kind":"card","id":"N{i:07}"}}],"gates":["*"]}}"#
        );
    }
    body += "]}";
    let sealed = key.seal(body.as_bytes());
    let t = Instant::now();
    let opened = verifier
        .open(&sealed)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let delta = parse_delta(ListName::Staff, &opened.body).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let applied = store.call(move |db| db.apply_delta(&delta)).await?;
    let delta_ms = t.elapsed().as_secs_f64() * 1000.0;
    if applied.is_err() {
        bail!("the 1k delta was refused: {applied:?}");
    }

    // More decisions with no apply, after it: the reference pools both windows, so that a
    // disk whose latency drifts during the run weighs on both sides alike.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let after = tokio::spawn(passes_until(store.clone(), stop));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(true)?;
    quiet.extend(after.await??);

    r.put("snapshot_apply_100k_s", round3(apply_s));
    r.put("snapshot_cleanup_100k_s", round3(cleanup_s));
    r.put("delta_apply_1k_ms", round1(delta_ms));
    r.put("decision_p50_us", round1(percentile(&mut quiet, 50.0)));
    r.put("decision_p99_us", round1(percentile(&mut quiet, 99.0)));
    r.put(
        "decision_p50_during_apply_us",
        round1(percentile(&mut during, 50.0)),
    );
    r.put(
        "decision_p95_during_apply_us",
        round1(percentile(&mut during, 95.0)),
    );
    r.put(
        "decision_p99_during_apply_us",
        round1(percentile(&mut during, 99.0)),
    );
    r.put(
        "decision_max_during_apply_us",
        round1(percentile(&mut during, 100.0)),
    );
    r.put("decisions_during_apply", during.len() as f64);
    Ok(())
}
