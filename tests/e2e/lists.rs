//! c. a snapshot pushed over MQTT takes effect at once and is acked and shown in status.
//! d. malformed, stale, other-site, wrong-shape and oversize lists are refused with their
//!    reason, and the list in force stays in force.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_pushed_snapshot_is_in_force_within_a_second() {
    let w = World::start().await;
    assert_eq!(
        swipe(&w, "0055500001").await["reason"],
        "unknown_credential"
    );
    let t0 = Instant::now();
    w.centre
        .publish(
            STAFF_TOPIC,
            staff_snapshot("hq", 2, &[("E1001", "0012345678"), ("E2002", "0055500001")]),
            true,
        )
        .await;
    let ack = wait_for("the ack of staff@2", Duration::from_secs(1), || {
        w.centre
            .on(ACK)
            .iter()
            .map(Msg::json)
            .find(|a| a["ref"] == "staff@2")
    })
    .await;
    eprintln!(
        "snapshot push to ack: {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(ack["ok"], true, "{ack}");
    assert!(ack["error"].is_null());
    let e = swipe(&w, "0055500001").await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "the new card must be accepted within 1 s"
    );
    assert_eq!(
        (e["reason"].as_str(), e["subject"].as_str()),
        (Some("staff"), Some("E2002"))
    );
    w.centre
        .wait_json("status with staff version 2", STATUS, |s| {
            s["lists"]["staff"] == 2
        })
        .await;
    // After the ack, the replaced list is deleted: only version 2's two people remain.
    let db =
        rusqlite::Connection::open_with_flags(w.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the gate's database");
    db.busy_timeout(Duration::from_secs(1))
        .expect("busy timeout");
    wait_for("the replaced list to be deleted", DEADLINE, || {
        let n: Option<i64> = db
            .query_row("SELECT count(*) FROM staff", [], |r| r.get(0))
            .ok();
        (n == Some(2)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_bad_lists_are_refused_with_their_reason_and_change_nothing() {
    let w = World::start().await;
    w.centre
        .publish(
            STAFF_TOPIC,
            staff_snapshot("hq", 5, &[("E1001", "0012345678")]),
            true,
        )
        .await;
    w.centre
        .wait_json("staff@5 applied", ACK, |a| {
            a["ref"] == "staff@5" && a["ok"] == true
        })
        .await;
    w.centre
        .wait_json("status at staff version 5", STATUS, |s| {
            s["lists"]["staff"] == 5
        })
        .await;
    let statuses_at_5 = w.centre.on(STATUS).len();

    // Above max_message_bytes (256 KiB).
    let huge = staff_snapshot(
        "hq",
        9,
        &(0..2000)
            .map(|i| (format!("E{i}"), format!("9{i:09}")))
            .collect::<Vec<_>>()
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect::<Vec<_>>(),
    );
    assert!(
        (262_145..524_288).contains(&huge.len()),
        "{} bytes",
        huge.len()
    );
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("not JSON", "{not json".into(), "malformed", "staff"),
        (
            "JSON of the wrong shape",
            r#"{"list":"staff","site":"hq"}"#.into(),
            "malformed",
            "staff",
        ),
        (
            "garbage bytes",
            String::from_utf8_lossy(&[0xff, 0x00, 0x13, 0x37]).into_owned(),
            "malformed",
            "staff",
        ),
        (
            "an older version",
            staff_snapshot("hq", 4, &[("E9", "0066600001")]),
            "stale",
            "staff@4",
        ),
        (
            "another site",
            staff_snapshot("elsewhere", 6, &[("E9", "0066600001")]),
            "wrong_site",
            "staff@6",
        ),
        (
            "another list on this topic",
            r#"{"list":"deny","site":"hq","version":7,"entries":[]}"#.into(),
            "wrong_list",
            "staff",
        ),
        ("too large", huge, "too_large", "staff"),
    ];
    for (what, body, code, reference) in cases {
        let before = w.centre.on(ACK).len();
        if code == "malformed" && reference == "staff" && !body.starts_with('{') {
            // Not JSON at all: what an attacker or a broken client sends, no envelope.
            w.centre.publish_raw(STAFF_TOPIC, body, true).await;
        } else {
            w.centre.publish(STAFF_TOPIC, body, true).await;
        }
        let ack = wait_for(&format!("the ack of {what}"), DEADLINE, || {
            w.centre.on(ACK).get(before).map(Msg::json)
        })
        .await;
        assert_eq!(ack["ok"], false, "{what}: {ack}");
        assert_eq!(ack["error"], code, "{what}: {ack}");
        assert_eq!(ack["ref"], reference, "{what}: {ack}");
        assert!(
            !ack["detail"].as_str().unwrap_or("").is_empty(),
            "{what}: the ack says why"
        );
    }
    // The list in force is still version 5: its card opens, the refused lists' cards do not.
    assert_eq!(swipe(&w, "0012345678").await["reason"], "staff");
    assert_eq!(
        swipe(&w, "0066600001").await["reason"],
        "unknown_credential"
    );
    // Each ack is followed by a status; wait for all of them, then none may show another
    // version than 5.
    wait_for("a status after every refusal", DEADLINE, || {
        (w.centre.on(STATUS).len() > statuses_at_5 + 6).then_some(())
    })
    .await;
    let versions: Vec<_> = w
        .centre
        .on(STATUS)
        .iter()
        .skip(statuses_at_5)
        .map(|m| m.json()["lists"]["staff"].clone())
        .collect();
    assert!(
        versions.iter().all(|v| v == 5),
        "staff versions in status after the refusals: {versions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_oversize_list_is_refused_and_lists_and_commands_still_flow() {
    // The harness's broker sets no max_packet_size: it keeps whatever it is given.
    let w = World::through_proxy().await;
    let cards: Vec<(String, String)> = (0..4000)
        .map(|i| (format!("E{i}"), format!("9{i:09}")))
        .collect();
    let refs: Vec<(&str, &str)> = cards
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let huge = staff_snapshot("hq", 9, &refs);
    assert!(
        huge.len() > 524_288,
        "{} bytes must exceed twice max_message_bytes",
        huge.len()
    );
    w.centre.publish_raw(STAFF_TOPIC, huge, true).await;
    let ack = w
        .centre
        .wait_json("the oversize list refused", ACK, |a| {
            a["error"] == "too_large"
        })
        .await;
    assert_eq!(ack["ref"], "staff", "{ack}");
    let alarm = w
        .centre
        .wait_json("an oversize_list alarm", ALARM, |a| {
            a["alarm"] == "oversize_list"
        })
        .await;
    let detail = alarm["detail"].as_str().unwrap_or("");
    for needle in [STAFF_TOPIC, "retained", "republish", "max_packet_size"] {
        assert!(detail.contains(needle), "names `{needle}`: {alarm}");
    }
    // With the oversize message still retained, a reconnect of the list connection reads it
    // again (refused again), and commands and other lists still arrive.
    w.proxy.as_ref().expect("a proxy").cut();
    wait_for(
        "the oversize list refused again after a reconnect",
        DEADLINE,
        || {
            let n = w
                .centre
                .on(ACK)
                .iter()
                .filter(|m| m.json()["error"] == "too_large")
                .count();
            (n >= 2).then_some(())
        },
    )
    .await;
    let lockdown = signed(command_body("lockdown", "nonce-oversize-01", json!({})));
    w.centre
        .publish_raw("acs/hq/east-1/cmd", lockdown, false)
        .await;
    let ack = w
        .centre
        .wait_json("the lockdown's ack", ACK, |a| {
            a["ref"] == "nonce-oversize-01"
        })
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let deny =
        r#"{"list":"deny","site":"hq","version":1,"entries":[{"kind":"card","id":"0012345678"}]}"#;
    w.centre.publish("acs/hq/lists/deny", deny, true).await;
    w.centre
        .wait_json("deny@1 applied", ACK, |a| {
            a["ref"] == "deny@1" && a["ok"] == true
        })
        .await;
    // The admin clears the retained message and republishes; the gate takes the good list.
    w.centre.publish_raw(STAFF_TOPIC, Vec::new(), true).await;
    w.centre
        .publish(
            STAFF_TOPIC,
            staff_snapshot("hq", 10, &[("E5", "0077700001")]),
            true,
        )
        .await;
    w.centre
        .wait_json("staff@10 applied", ACK, |a| {
            a["ref"] == "staff@10" && a["ok"] == true
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_apply_on_their_base_and_the_deny_list_wins() {
    let w = World::start().await;
    let delta_topic = "acs/hq/lists/staff/delta";
    let gap = r#"{"list":"staff","site":"hq","version":4,"base":3,"remove":["E1001"]}"#;
    w.centre.publish(delta_topic, gap, false).await;
    let ack = w
        .centre
        .wait_json("the gap's ack", ACK, |a| a["ref"] == "staff@4")
        .await;
    assert_eq!(
        (ack["ok"].as_bool(), ack["error"].as_str()),
        (Some(false), Some("version_gap"))
    );
    assert_eq!(
        swipe(&w, "0012345678").await["reason"],
        "staff",
        "nothing changed"
    );
    // After a gap the gate asks for the snapshot again (it resubscribes), so the retained
    // staff@1 is delivered and acked a second time.
    wait_for(
        "the retained snapshot again after the gap",
        DEADLINE,
        || {
            let n = w
                .centre
                .on(ACK)
                .iter()
                .filter(|m| m.json()["ref"] == "staff@1")
                .count();
            (n >= 2).then_some(())
        },
    )
    .await;

    let delta = r#"{"list":"staff","site":"hq","version":2,"base":1,
        "upsert":[{"subject":"E3003","credentials":[{"kind":"card","id":"0033300003"}],"gates":["east-1"]}]}"#;
    w.centre.publish(delta_topic, delta, false).await;
    w.centre
        .wait_json("staff@2 applied", ACK, |a| {
            a["ref"] == "staff@2" && a["ok"] == true
        })
        .await;
    assert_eq!(swipe(&w, "0033300003").await["reason"], "staff");
    // The same delta again (a centre that retries when it saw no ack): acked ok, already in
    // force, and nothing changes. A delta older than the version in force is `stale`.
    let before = w.centre.on(ACK).len();
    w.centre.publish(delta_topic, delta, false).await;
    let again = wait_for("the replayed delta's ack", DEADLINE, || {
        w.centre
            .on(ACK)
            .iter()
            .skip(before)
            .map(Msg::json)
            .find(|a| a["ref"] == "staff@2")
    })
    .await;
    assert_eq!(again["ok"], true, "{again}");
    assert!(
        again["detail"]
            .as_str()
            .unwrap_or("")
            .contains("already in force"),
        "{again}"
    );
    let older = r#"{"list":"staff","site":"hq","version":1,"base":0,"remove":["E1001"]}"#;
    w.centre.publish(delta_topic, older, false).await;
    let ack = w
        .centre
        .wait_json("the older delta's ack", ACK, |a| {
            a["ref"] == "staff@1" && a["ok"] == false
        })
        .await;
    assert_eq!(ack["error"], "stale", "{ack}");
    assert_eq!(swipe(&w, "0012345678").await["reason"], "staff");
    // A list never pushed is at version 0: a delta on base 0 creates it.
    let first = r#"{"list":"visitors","site":"hq","version":1,"base":0,
        "upsert":[{"invitation":"INV-1","credentials":[{"kind":"card","id":"0044400004"}],"gates":["*"]}]}"#;
    w.centre
        .publish("acs/hq/lists/visitors/delta", first, false)
        .await;
    w.centre
        .wait_json("visitors@1 created by a delta", ACK, |a| {
            a["ref"] == "visitors@1" && a["ok"] == true
        })
        .await;
    assert_eq!(swipe(&w, "0044400004").await["reason"], "visitor");

    let deny = r#"{"list":"deny","site":"hq","version":1,
        "entries":[{"kind":"card","id":"0012345678","reason":"reported lost"}]}"#;
    w.centre.publish("acs/hq/lists/deny", deny, true).await;
    w.centre
        .wait_json("deny@1 applied", ACK, |a| {
            a["ref"] == "deny@1" && a["ok"] == true
        })
        .await;
    let e = swipe(&w, "0012345678").await;
    assert_eq!(
        (e["decision"].as_str(), e["reason"].as_str()),
        (Some("denied"), Some("denylisted"))
    );
    assert_eq!(
        e["subject"], "E1001",
        "the event still names whose card it was"
    );
}
