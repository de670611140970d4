//! `gated demo --mqtt`: a demo must never pass for a real gate. It publishes under a site and
//! gate of its own, and says it is a demo in every message it sends.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_publishes_under_its_own_names_and_marks_every_message() {
    let broker = Broker::start().await;
    let centre = Centre::connect(broker.port).await;
    let addr = format!("127.0.0.1:{}", broker.port);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gated"))
            .args(["demo", "--mqtt", &addr])
            .output()
            .expect("run gated demo")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every event is acknowledged"), "{stdout}");

    // The demo waited for its PUBACKs; its final (offline) status is published on the way out.
    let msgs = wait_for("the demo's offline status", DEADLINE, || {
        let all = centre.all();
        all.iter()
            .any(|m| m.topic.ends_with("/status") && m.json()["online"] == false)
            .then_some(all)
    })
    .await;

    // Nothing under the README's example site, whose names a real gate may carry.
    let on_hq: Vec<&str> = msgs
        .iter()
        .map(|m| m.topic.as_str())
        .filter(|t| t.starts_with("acs/hq/"))
        .collect();
    assert!(
        on_hq.is_empty(),
        "the demo published as a real site: {on_hq:?}"
    );

    // One gate of its own, `demo-…`, in site `demo`.
    let gates: std::collections::BTreeSet<&str> = msgs
        .iter()
        .filter_map(|m| m.topic.strip_prefix("acs/demo/"))
        .filter_map(|rest| rest.split('/').next())
        .collect();
    assert_eq!(gates.len(), 1, "{gates:?}");
    let gate = *gates.first().expect("one gate");
    assert!(gate.starts_with("demo-"), "gate `{gate}`");
    assert!(
        stdout.contains(&format!("demo/{gate}")),
        "the demo should print the names it publishes under:\n{stdout}"
    );

    let events: Vec<serde_json::Value> = msgs
        .iter()
        .filter(|m| m.topic == format!("acs/demo/{gate}/event"))
        .map(|m| m.json())
        .collect();
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    for e in &events {
        assert_eq!(
            (e["site"].as_str(), e["gate"].as_str(), &e["demo"]),
            (Some("demo"), Some(gate), &serde_json::Value::Bool(true)),
            "{e}"
        );
    }
    let statuses: Vec<serde_json::Value> = msgs
        .iter()
        .filter(|m| m.topic == format!("acs/demo/{gate}/status"))
        .map(|m| m.json())
        .collect();
    assert!(statuses.len() >= 2, "online, then offline: {statuses:?}");
    for s in &statuses {
        assert_eq!(s["demo"], true, "status without the demo marker: {s}");
    }
}
