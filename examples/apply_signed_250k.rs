//! What a gate spends on the largest list the default `max_message_bytes` is sized for: a
//! signed staff snapshot of 250,000 people with a card and a face each (about 68 MB signed),
//! opened, parsed and applied to a real SQLite file by the same steps as the downlink (the
//! envelope check, `parse_snapshot`, `Store::apply_snapshot`).
//! A probe, not a test: it prints figures and asserts nothing.
//!
//!     cargo run --release --example apply_signed_250k
//!
//! Peak memory is read from `/proc/self/status` (VmHWM), reset with `/proc/self/clear_refs`
//! once the message is built, so it counts what receiving it costs: the message itself (as the
//! MQTT client holds it), plus what opening, parsing and applying it add.

use std::fmt::Write as _;
use std::time::Instant;

use gated::core::Policy;
use gated::store::{GateId, Store};
use gated_contract::envelope::{AdminKey, Verifier};
use gated_contract::{ListName, parse_snapshot};

const PEOPLE: usize = 250_000;

fn proc_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let key = AdminKey::generate("ops").expect("key");
    let sealed = {
        let mut body = String::from(
            r#"{"list":"staff","site":"hq","version":1,"issued_at":"2026-11-21T07:00:00Z","entries":["#,
        );
        for i in 0..PEOPLE {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(
                body,
                r#"{sep}{{"subject":"E{i:07}","name":"Staff Member {i:07}","credentials":[{{"kind":"card","id":"{i:010}"}},{{"kind":"face","id":"P{i:07}"}}],"valid_from":null,"valid_until":"2027-12-31T23:59:59Z","gates":["*"]}}"#
            );
        }
        body.push_str("]}");
        key.seal(body.as_bytes())
    };
    let verifier = Verifier::new([(key.id.clone(), key.verifying_key())].into(), false);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        &dir.path().join("g.db"),
        GateId {
            site: "hq".into(),
            gate: "east-1".into(),
        },
        Policy::default(),
        1_000_000,
    )
    .expect("store");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = proc_kb("VmRSS:");

    let t0 = Instant::now();
    let (snapshot, t_open, t_parse) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let opened = verifier.open(&sealed).expect("signature verifies");
        let t_open = t.elapsed();
        drop(sealed);
        let t = Instant::now();
        let s = parse_snapshot(ListName::Staff, &opened.body).expect("parses");
        (s, t_open, t.elapsed())
    })
    .await
    .expect("blocking task");
    let t = Instant::now();
    let applied = store.apply_snapshot(snapshot).await.expect("store");
    let t_apply = t.elapsed();
    let total = t0.elapsed();

    println!("signed staff snapshot of {PEOPLE} people (card and face each): {applied:?}");
    println!(
        "  verify signature      {:>8.0} ms",
        t_open.as_secs_f64() * 1e3
    );
    println!(
        "  parse and validate    {:>8.0} ms",
        t_parse.as_secs_f64() * 1e3
    );
    println!(
        "  apply (in steps)       {:>8.0} ms",
        t_apply.as_secs_f64() * 1e3
    );
    println!(
        "  total                 {:>8.0} ms",
        total.as_secs_f64() * 1e3
    );
    println!(
        "  RSS with the message held {:.0} MB; peak while receiving it {:.0} MB; after {:.0} MB",
        mb(rss_before),
        mb(proc_kb("VmHWM:")),
        mb(proc_kb("VmRSS:"))
    );
}
