//! Clock trust against the real binary: with `[clock] sync = "file"`, the gate starts with an
//! untrusted clock (no sync yet), shows it in status, and refuses a card limited in time
//! `clock_untrusted`; once time sync has synchronized (the file appears), status says `synced`
//! and the same card passes.

use crate::util::*;

#[tokio::test]
async fn the_clock_is_untrusted_until_time_sync_and_status_says_so() {
    let broker = Broker::start().await;
    // E1001's entry has a valid_until: a credential limited in time.
    let centre = Centre::with_staff(&broker).await;
    let devices = Devices::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let synced = dir.path().join("time-synced");
    let config = config_text(&dir.path().join("gated.db"), broker.port, &devices).replace(
        "[clock]\nsync = \"none\"\n",
        &format!(
            "[clock]\nsync = \"file\"\nsync_file = \"{}\"\n",
            synced.display()
        ),
    );
    assert!(
        config.contains("sync_file"),
        "the test must configure the sync file"
    );
    let _daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    centre
        .wait_json("status: untrusted, not synced", STATUS, |s| {
            s["online"] == true && s["clock"] == "untrusted" && s["clock_reason"] == "not_synced"
        })
        .await;
    centre
        .wait_json("the ack of staff@1", ACK, |a| a["ref"] == "staff@1")
        .await;
    let present = |card: &str| {
        devices
            .reader1
            .present(hw_sim::KIND_CARD, card, 0)
            .expect("present")
    };
    present("0012345678");
    let e = centre
        .wait_json("the refused event", EVENT, |e| e["seq"] == 1)
        .await;
    assert_eq!(e["reason"], "clock_untrusted", "{e}");

    std::fs::write(&synced, b"").expect("time sync");
    centre
        .wait_json("status: synced", STATUS, |s| {
            s["clock"] == "synced" && s.get("clock_reason").is_none()
        })
        .await;
    present("0012345678");
    let e = centre
        .wait_json("the granted event", EVENT, |e| e["seq"] == 2)
        .await;
    assert_eq!(e["reason"], "staff", "{e}");
    // The reader handles its events in order (record, pulse, ack, next): once the granted
    // pass has pulsed, a pulse of the refused one would be there too.
    wait_for("the granted pulse", DEADLINE, || {
        (!devices.relay.pulses().is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        devices.relay.pulses().len(),
        1,
        "the refused pass opened the lane"
    );
}
