//! How long a pass waits while a 100k-entry staff snapshot is applied, against a real SQLite
//! file: the chunked apply the daemon uses, next to one transaction for the whole list.
//! A probe, not a test: it prints figures and asserts nothing.
//!
//!     cargo run --release --example apply_during_passes

use std::time::Instant;

use gated::core::{Credential, CredentialKind, Direction, Policy};
use gated::store::{GateId, PassInput, Store};
use gated::sync::contract::{ListName, Snapshot, parse_snapshot};

const ENTRIES: usize = 100_000;

fn snapshot(version: u64) -> Snapshot {
    let entries: Vec<String> = (0..ENTRIES)
        .map(|i| {
            format!(
                r#"{{"subject":"E{i}","credentials":[{{"kind":"card","id":"{}"}}],"gates":["*"]}}"#,
                1_000_000 + i + version as usize * 7
            )
        })
        .collect();
    let body = format!(
        r#"{{"list":"staff","site":"hq","version":{version},"entries":[{}]}}"#,
        entries.join(",")
    );
    parse_snapshot(ListName::Staff, body.as_bytes()).expect("generated snapshot is valid")
}

fn swipe() -> PassInput {
    PassInput {
        from: None,
        lane: 0,
        direction: Direction::In,
        credential: Credential {
            kind: CredentialKind::Card,
            id: "1000021".into(),
            score: None,
        },
        now: 1_795_000_000_000,
    }
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p) as usize];
    println!(
        "{name:<44} n={:<5} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        ms.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

/// Swipes in a loop until `job` finishes; returns each pass's latency in ms.
async fn swipes_while<T: Send + 'static>(
    store: &Store,
    job: tokio::task::JoinHandle<T>,
) -> (Vec<f64>, T) {
    let mut ms = Vec::new();
    while !job.is_finished() {
        let t = Instant::now();
        store.pass(swipe()).await.expect("pass recorded");
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (ms, job.await.expect("apply task"))
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let gate = GateId {
        site: "hq".into(),
        gate: "east-1".into(),
    };
    let store = Store::open(
        &dir.path().join("probe.db"),
        gate,
        Policy::default(),
        10_000_000,
    )
    .expect("store opens");
    store
        .apply_snapshot(snapshot(1))
        .await
        .expect("store")
        .expect("applied");

    let mut idle = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        store.pass(swipe()).await.expect("pass recorded");
        idle.push(t.elapsed().as_secs_f64() * 1e3);
    }
    summary("pass, no apply running", idle);

    let (s, t) = (store.clone(), Instant::now());
    let job = tokio::spawn(async move { s.apply_snapshot(snapshot(2)).await });
    let (ms, r) = swipes_while(&store, job).await;
    r.expect("store").expect("applied");
    summary(
        &format!(
            "pass during chunked apply ({:.2} s)",
            t.elapsed().as_secs_f64()
        ),
        ms,
    );

    let (s, t) = (store.clone(), Instant::now());
    let snap = snapshot(3);
    let job = tokio::spawn(async move { s.call(move |db| db.apply_snapshot(&snap)).await });
    let (ms, r) = swipes_while(&store, job).await;
    r.expect("store").expect("applied");
    summary(
        &format!(
            "pass during one-transaction apply ({:.2} s)",
            t.elapsed().as_secs_f64()
        ),
        ms,
    );
}
