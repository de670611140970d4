//! Clock trust against the real binary: with `[clock] sync = "file"`, the gate starts with an
//! untrusted clock (no sync yet), shows it in status, and refuses a card limited in time
//! `clock_untrusted`; once time sync has synchronized (the file appears), status says `synced`
//! and the same card passes.
//!
//! A gate that once ran with its clock a year ahead and restarted at the right time: it raises
//! `clock_behind`, an admin's `gatectl cmd attest-time` makes it trust its clock and take
//! commands again (and the same attestation sent again is refused), and a `lockdown` is taken
//! meanwhile although every other command is refused `expired`.

use crate::harness::*;
use gated_contract::message_digest;
use serde_json::{Value, json};

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

/// What a gate that once ran with its clock a year ahead leaves in its store: the latest
/// event time (the clock floor) and the command clock, both a year ahead. Written with the
/// gate stopped, then the gate starts again at the right time, as after a restart that
/// followed a wrong time sync.
fn leave_a_year_ahead(w: &mut World) -> i64 {
    w.daemon.kill9();
    let ahead = chrono::Utc::now().timestamp_millis() + 365 * 86_400_000;
    let db = rusqlite::Connection::open(w.db()).expect("open the gate's database");
    for key in ["clock_floor", "command_clock"] {
        db.execute(
            "INSERT INTO state (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, ahead.to_string()],
        )
        .expect("write the state");
    }
    drop(db);
    w.daemon.restart();
    ahead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_ran_ahead_is_recovered_by_a_signed_time_attestation() {
    let mut w = World::start().await;
    let e = swipe(&w, "0012345678").await;
    assert_eq!(e["reason"], "staff", "{e}");
    leave_a_year_ahead(&mut w);
    w.centre
        .wait_json("status: behind the last event", STATUS, |s| {
            s["online"] == true
                && s["clock_reason"] == "before_last_event"
                && s["clock_challenge"].is_string()
        })
        .await;
    // The alarm says what happened and what to do.
    let alarm = w
        .centre
        .wait_json("the clock_behind alarm", ALARM, |a| {
            a["alarm"] == "clock_behind"
        })
        .await;
    let detail = alarm["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("already recorded") && detail.contains("gatectl cmd attest-time"),
        "{alarm}"
    );
    let e = swipe(&w, "0012345678").await;
    assert_eq!(e["reason"], "clock_untrusted", "{e}");

    let g = Gatectl::new(w.broker.port);
    let r = g
        .run(&["cmd", "attest-time", "--gate", "east-1", "--wait", "10"])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    assert!(r.stdout.contains("east-1: attest_time ok"), "{r:#?}");
    w.centre
        .wait_json("the clock_attested alarm", ALARM, |a| {
            a["alarm"] == "clock_attested"
        })
        .await;
    let e = swipe(&w, "0012345678").await;
    assert_eq!(e["reason"], "staff", "trusted again: {e}");
    // The command clock went back too: an ordinary command is carried out again.
    let ack = run_command(&w.centre, "normal", "normal-after-attest", json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");

    // The attestation (the first command of this test), captured and sent again, is
    // refused: its challenge was used.
    let sent = w.centre.on("acs/hq/east-1/cmd").into_iter().next();
    let sent = sent.expect("the centre saw the attestation").payload;
    w.centre
        .publish_raw("acs/hq/east-1/cmd", sent.clone(), false)
        .await;
    let digest = message_digest(&sent);
    let ack = w
        .centre
        .wait_json("the ack of the replayed attestation", ACK, |a| {
            a["sha256"] == digest.as_str() && a["ok"] == false
        })
        .await;
    assert_eq!(ack["error"], "replayed", "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockdown_is_carried_out_whatever_the_command_clock_says() {
    let mut w = World::start().await;
    leave_a_year_ahead(&mut w);
    w.centre
        .wait_json("status: behind the last event", STATUS, |s| {
            s["online"] == true && s["clock_reason"] == "before_last_event"
        })
        .await;
    // A lockdown only closes: it is judged on the gate's own clock.
    let ack = run_command(&w.centre, "lockdown", "lockdown-while-ahead", json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    w.centre
        .wait_json("status: lockdown", STATUS, |s| s["mode"] == "lockdown")
        .await;
    // An ordinary command is judged on the command clock: expired.
    let ack = run_command(&w.centre, "hold_open", "hold-while-ahead", json!({})).await;
    assert_eq!(ack["error"], "expired", "{ack}");
    assert!(
        ack["detail"]
            .as_str()
            .is_some_and(|d| d.contains("attest-time")),
        "the refusal says how to recover: {ack}"
    );
    // Still once only: the same command again is refused.
    let first = w
        .centre
        .on(ACK)
        .iter()
        .find(|m| m.json()["ref"] == "lockdown-while-ahead")
        .map(Msg::json)
        .expect("the first lockdown's ack");
    let again = w
        .centre
        .on("acs/hq/east-1/cmd")
        .into_iter()
        .find(|m| message_digest(&m.payload) == first["sha256"].as_str().unwrap_or_default())
        .expect("the centre saw the lockdown")
        .payload;
    w.centre
        .publish_raw("acs/hq/east-1/cmd", again, false)
        .await;
    let acks = wait_for("the ack of the lockdown sent again", DEADLINE, || {
        let acks: Vec<Value> = w
            .centre
            .on(ACK)
            .iter()
            .map(Msg::json)
            .filter(|a| a["ref"] == "lockdown-while-ahead")
            .collect();
        (acks.len() == 2).then_some(acks)
    })
    .await;
    assert_eq!(acks[1]["error"], "replayed", "{}", acks[1]);
}

/// The case as it was met: a gate ran once with its clock in 2040 (no time sync), so its store
/// holds an event time in 2040 (the clock floor) and nothing else; it restarts at the right
/// time with time sync confirmed. At start it raises `clock_behind`, which says what happened
/// and what to do, and status shows why the clock is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_whose_store_saw_2040_says_so_at_start_even_with_time_sync_confirmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let synced = dir.path().join("time-synced");
    std::fs::write(&synced, b"").expect("time sync has synchronized");
    let sync_file = synced.clone();
    let mut w = World::start_with_config(move |c| {
        c.replace(
            "[clock]\nsync = \"none\"\n",
            &format!(
                "[clock]\nsync = \"file\"\nsync_file = \"{}\"\n",
                sync_file.display()
            ),
        )
    })
    .await;
    w.centre
        .wait_json("status: synced", STATUS, |s| s["clock"] == "synced")
        .await;
    w.daemon.kill9();
    let in_2040 = chrono::DateTime::parse_from_rfc3339("2040-01-01T00:00:00Z")
        .expect("a date")
        .timestamp_millis();
    let db = rusqlite::Connection::open(w.db()).expect("open the gate's database");
    db.execute(
        "INSERT INTO state (key, value) VALUES ('clock_floor', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [in_2040.to_string()],
    )
    .expect("write the clock floor");
    drop(db);
    let before = w.centre.on(ALARM).len();
    let started = std::time::Instant::now();
    w.daemon.restart();

    let alarm = w
        .centre
        .wait_json("the clock_behind alarm at start", ALARM, |a| {
            a["alarm"] == "clock_behind"
        })
        .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "raised at start, not later: {:?}",
        started.elapsed()
    );
    assert!(w.centre.on(ALARM).len() > before, "a new alarm");
    let detail = alarm["detail"].as_str().unwrap_or_default();
    for says in [
        "recorded an event at 2040-01-01",
        "ran ahead",
        "refused clock_untrusted",
        "gatectl cmd attest-time --gate east-1",
    ] {
        assert!(
            detail.contains(says),
            "the alarm must say `{says}`: {alarm}"
        );
    }
    w.centre
        .wait_json("status: untrusted, behind the last event", STATUS, |s| {
            s["online"] == true
                && s["clock"] == "untrusted"
                && s["clock_reason"] == "before_last_event"
                && s["clock_challenge"].is_string()
        })
        .await;
}
