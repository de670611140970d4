//! The real `gatectl` binary against a real broker and a real gate, as an admin uses it:
//! make a key, push a list, invite a visitor, revoke, command a lane, tail the events, read the
//! status; and what it says, and exits with, when a gate refuses, does not answer or is offline.

use std::collections::BTreeMap;
use std::time::Duration;

use gated_contract::envelope::{AdminKey, Verifier};
use gated_contract::{Entries, ListName, parse_snapshot};
use hw_sim::{KIND_CARD, KIND_QR};
use serde_json::Value;

use crate::harness::*;

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_staff_csv_is_acked_and_tail_shows_its_card_granted() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    let csv = g.path("staff.csv");
    std::fs::write(
        &csv,
        "subject,name,card,face,valid_from,valid_until,gates\n\
         E1001,Li Wei,0012345678,,,2099-12-31T23:59:59Z,*\n\
         E2002,Wang Fang,0055555555,P2002,,,east-1\n",
    )
    .expect("write csv");

    let r = g
        .run(&["push", "staff", "--file", s(&csv), "--wait", "10"])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    assert!(
        r.stdout.contains("published staff@2 on acs/hq/lists/staff"),
        "{r:#?}"
    );
    assert!(r.stdout.contains("east-1: staff@2 ok"), "{r:#?}");
    w.centre
        .wait_json("the gate's ack of staff@2", ACK, |a| {
            a["ref"] == "staff@2" && a["ok"] == true
        })
        .await;

    let tail = g
        .start_tail(&[
            "--gate",
            "east-1",
            "--json",
            "--count",
            "1",
            "--timeout",
            "30",
        ])
        .await;
    w.devices
        .reader1
        .present(KIND_CARD, "0055555555", 0)
        .expect("present");
    let t = tail.finish().await;
    assert_eq!(t.code, 0, "{t:#?}");
    let lines: Vec<&str> = t.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{t:#?}");
    let e: Value = serde_json::from_str(lines[0]).expect("one JSON event per line");
    assert_eq!(
        (
            e["decision"].as_str(),
            e["reason"].as_str(),
            e["subject"].as_str()
        ),
        (Some("granted"), Some("staff"), Some("E2002")),
        "{e}"
    );
    assert_eq!(e["credential"]["id"], "0055555555");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_is_acked_its_qr_code_opens_and_revoking_it_closes() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    let until = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let png = g.path("zhang.png");
    let r = g
        .run(&[
            "invite",
            "--visitor",
            "Zhang San",
            "--host",
            "E1001",
            "--until",
            &until,
            "--gates",
            "east-1",
            "--entries",
            "2",
            "--qr",
            s(&png),
            "--wait",
            "10",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    let field = |name: &str| {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no `{name}` line in {r:#?}"))
    };
    let (invitation, code) = (field("invitation"), field("code"));
    assert_eq!(code.len(), 26, "a 128-bit base32 code");
    // The gate had no visitors list: the delta on version 0 is applied.
    assert!(r.stdout.contains("east-1: visitors@1 ok"), "{r:#?}");

    let img = image::open(&png).expect("the QR code is a readable PNG");
    assert_eq!(img.width(), img.height());
    assert!(
        (21 * 8..=2000).contains(&img.width()),
        "{} px: 8 px per module of a QR code",
        img.width()
    );

    // The retained snapshot carries the invitation, for gates that connect later.
    let retained = wait_for("the retained visitors snapshot", DEADLINE, || {
        w.centre.on("acs/hq/lists/visitors").last().cloned()
    })
    .await;
    let verifier = Verifier::new(
        BTreeMap::from([("ops-test".to_string(), admin().verifying_key())]),
        false,
    );
    let body = verifier.open(&retained.payload).expect("signed").body;
    let snap = parse_snapshot(ListName::Visitors, &body).expect("a valid snapshot");
    let Entries::Visitors(v) = snap.entries else {
        panic!("a visitors list")
    };
    assert_eq!(snap.version, 1);
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0].invitation.as_str(), v[0].credentials[0].id.as_str()),
        (invitation.as_str(), code.as_str())
    );

    w.devices
        .reader1
        .present(KIND_QR, &code, 0)
        .expect("present");
    let e = w
        .centre
        .wait_json("the visitor's pass", EVENT, |e| {
            e["credential"]["kind"] == "qr"
        })
        .await;
    assert_eq!(
        (
            e["decision"].as_str(),
            e["reason"].as_str(),
            e["subject"].as_str()
        ),
        (Some("granted"), Some("visitor"), Some(invitation.as_str())),
        "{e}"
    );

    let r = g
        .run(&["revoke", "invitation", &invitation, "--wait", "10"])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    assert!(r.stdout.contains("east-1: visitors@2 ok"), "{r:#?}");
    w.devices
        .reader1
        .present(KIND_QR, &code, 0)
        .expect("present");
    let e = w
        .centre
        .wait_json("the revoked code's refusal", EVENT, |e| {
            e["credential"]["kind"] == "qr" && e["decision"] == "denied"
        })
        .await;
    assert_eq!(e["reason"], "unknown_credential");

    let r = g
        .run(&["revoke", "invitation", &invitation, "--wait", "1"])
        .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("is not in the visitors list"), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmd_open_is_acked_and_logged_and_a_lane_the_gate_lacks_is_refused() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    let tail = g.start_tail(&["--count", "1", "--timeout", "30"]).await;

    let r = g
        .run(&[
            "cmd", "open", "--gate", "east-1", "--lane", "0", "--wait", "10",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    assert!(
        r.stdout.contains("east-1: open ok (lane 0 in released"),
        "{r:#?}"
    );
    let p = wait_for("the relay pulse", DEADLINE, || {
        w.devices.relay.pulses().first().cloned()
    })
    .await;
    assert_eq!((p.lane, p.exit), (0, false));
    let e = w
        .centre
        .wait_json("the override event", EVENT, |e| {
            e["reason"] == "override_remote"
        })
        .await;
    assert_eq!(e["override"]["by"], "ops-test");
    let t = tail.finish().await;
    assert_eq!(t.code, 0, "{t:#?}");
    assert!(
        t.stdout.contains(
            " east-1 #1 lane 0 in  GRANTED override_remote - - override remote/open by ops-test"
        ),
        "{t:#?}"
    );

    let r = g
        .run(&[
            "cmd", "open", "--gate", "east-1", "--lane", "7", "--wait", "10",
        ])
        .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stdout.contains("east-1: open REFUSED unsupported"),
        "{r:#?}"
    );
    assert!(
        r.stderr
            .contains("gatectl: cmd open: east-1 refused it: unsupported: lane 7"),
        "{r:#?}"
    );

    // No gate answers for west-9.
    let r = g
        .run(&["cmd", "lockdown", "--gate", "west-9", "--wait", "1"])
        .await;
    assert_eq!(r.code, 2, "{r:#?}");
    assert!(r.stderr.contains("no ack from west-9 within 1 s"), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_csv_is_refused_by_line_and_field_and_nothing_is_published() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    let csv = g.path("bad.csv");
    std::fs::write(
        &csv,
        "subject,name,card,face,valid_from,valid_until,gates\n\
         E1001,Li Wei,0012345678,,,,*\n\
         E2002,Wang Fang,00½,,,,*\n\
         E3003,Chen Jie,0077,,,next week,east-1\n",
    )
    .expect("write csv");
    let r = g.run(&["push", "staff", "--file", s(&csv)]).await;
    assert_eq!(r.code, 1, "{r:#?}");
    let path = s(&csv);
    assert!(
        r.stderr.contains(&format!(
            "gatectl: push staff: {path}: 2 problems; nothing was published"
        )),
        "{r:#?}"
    );
    assert!(
        r.stderr
            .contains(&format!("{path}:3: card: `00½` is not ASCII")),
        "{r:#?}"
    );
    assert!(
        r.stderr.contains(&format!(
            "{path}:4: valid_until: `next week` is not an RFC 3339 time"
        )),
        "{r:#?}"
    );

    // A file with the header only would take everyone off the list: not without saying so.
    let empty = g.path("empty.csv");
    std::fs::write(
        &empty,
        "subject,name,card,face,valid_from,valid_until,gates\n",
    )
    .expect("write");
    let r = g.run(&["push", "staff", "--file", s(&empty)]).await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr.contains("has no entries") && r.stderr.contains("--allow-empty"),
        "{r:#?}"
    );

    // A message of our own, through the same broker, after gatectl exited: once it is back,
    // anything gatectl had published would be here too.
    w.centre
        .publish_raw("acs/hq/test/barrier", "after gatectl", false)
        .await;
    wait_for("the barrier message", DEADLINE, || {
        (!w.centre.on("acs/hq/test/barrier").is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        w.centre.on(STAFF_TOPIC).len(),
        1,
        "only the harness's staff@1"
    );
    assert!(
        w.centre
            .on(ACK)
            .iter()
            .all(|a| a.json()["ref"] == "staff@1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_takes_its_version_only_from_a_retained_list_it_can_verify() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    // Another admin's deny list, signed by a key neither gatectl nor the gate knows.
    let stranger = AdminKey::generate("ops-other").expect("key");
    let body = r#"{"list":"deny","site":"hq","version":5,"entries":[]}"#;
    w.centre
        .publish_raw("acs/hq/lists/deny", stranger.seal(body.as_bytes()), true)
        .await;
    w.centre
        .wait_json("the gate's refusal of the stranger's list", ACK, |a| {
            a["error"] == "unknown_key"
        })
        .await;
    let csv = g.path("deny.csv");
    std::fs::write(&csv, "kind,id,reason\ncard,0099887766,reported lost\n").expect("write");

    let r = g
        .run(&["push", "deny", "--file", s(&csv), "--wait", "1"])
        .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr
            .contains("signed by key `ops-other`, which gatectl does not trust")
            && r.stderr.contains("--trust ID=PUBKEY"),
        "{r:#?}"
    );
    assert_eq!(
        w.centre.on("acs/hq/lists/deny").len(),
        1,
        "nothing published"
    );

    let trust = format!("ops-other={}", stranger.public_b64());
    let r = g
        .run(&[
            "push",
            "deny",
            "--file",
            s(&csv),
            "--trust",
            &trust,
            "--wait",
            "10",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    assert!(r.stdout.contains("east-1: deny@6 ok"), "{r:#?}");

    // The same version again with other entries (as two admins pushing at the same moment
    // would): the gate keeps the first, and gatectl says so.
    std::fs::write(&csv, "kind,id,reason\ncard,0011223344,stolen\n").expect("write");
    let r = g
        .run(&[
            "push",
            "deny",
            "--file",
            s(&csv),
            "--force-version",
            "6",
            "--wait",
            "10",
        ])
        .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("version 6 is not above 6"), "{r:#?}");
    assert!(r.stdout.contains("east-1: deny@6 CONFLICT"), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_gate_and_its_list_versions() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    w.centre
        .wait_json("a status with staff@1", STATUS, |s| {
            s["lists"]["staff"] == 1
        })
        .await;

    let r = g.run(&["status"]).await;
    assert_eq!(r.code, 0, "{r:#?}");
    let mut lines = r.stdout.lines();
    let header = lines.next().unwrap_or("");
    assert!(
        header.starts_with("GATE    ONLINE  MODE    STAFF_V  VISITORS_V  DENY_V"),
        "{r:#?}"
    );
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        row[..6],
        ["east-1", "yes", "normal", "1", "0", "0"],
        "{r:#?}"
    );

    let r = g.run(&["status", "--json"]).await;
    assert_eq!(r.code, 0, "{r:#?}");
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["east-1"]["lists"]["staff"], 1, "{v}");

    let r = g.run(&["--site", "elsewhere", "status"]).await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr
            .contains("gatectl: status: no gate has a status on acs/elsewhere/+/status"),
        "{r:#?}"
    );
}

/// The test admin's key file replaced by `key`: an admin whose key the gate does not trust.
fn use_key(g: &Gatectl, key: &AdminKey) {
    std::fs::write(&g.key, key.to_file_text()).expect("replace the key file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_gate_cannot_verify_shows_its_refusal_and_fails() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    let csv = g.path("deny.csv");
    std::fs::write(&csv, "kind,id,reason\ncard,0099887766,reported lost\n").expect("write");

    // The id the gate trusts, another secret (two admins who both ran keygen --id ops-test).
    use_key(&g, &AdminKey::generate("ops-test").expect("key"));
    let r = g
        .run(&["push", "deny", "--file", s(&csv), "--wait", "10"])
        .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stdout.contains("east-1: deny@1 REFUSED bad_signature: "),
        "{r:#?}"
    );
    assert!(
        r.stderr
            .contains("gatectl: push deny: 1 gate refused deny@1"),
        "{r:#?}"
    );
    // What to do about it, and what the refused push left on the broker.
    assert!(
        r.stderr
            .contains("1 gate does not trust the key `ops-test` this was signed with")
            && r.stderr.contains(
                "acs/hq/lists/deny now holds a list these gates refuse: push it again with a \
                 key they trust (--force-version N)"
            ),
        "{r:#?}"
    );

    // A key id the gate has never heard of.
    use_key(&g, &AdminKey::generate("ops-other").expect("key"));
    let r = g
        .run(&[
            "push",
            "deny",
            "--file",
            s(&csv),
            "--force-version",
            "1",
            "--wait",
            "10",
        ])
        .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stdout.contains("east-1: deny@1 REFUSED unknown_key: "),
        "{r:#?}"
    );

    // A gate whose status says online but that never answers: the push is not called done.
    w.centre
        .publish_raw(
            "acs/hq/west-2/status",
            r#"{"online":true,"lists":{"staff":1,"visitors":0,"deny":0}}"#,
            true,
        )
        .await;
    use_key(&g, admin());
    let r = g
        .run(&[
            "push",
            "deny",
            "--file",
            s(&csv),
            "--force-version",
            "1",
            "--wait",
            "1",
        ])
        .await;
    assert_eq!(r.code, 2, "{r:#?}");
    assert!(r.stdout.contains("west-2: no ack within 1 s"), "{r:#?}");
    assert!(r.stdout.contains("east-1: deny@1 ok"), "{r:#?}");
    assert!(
        r.stderr
            .contains("gatectl: push deny: 1 online gate did not answer for deny@1"),
        "{r:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_gate_cannot_verify_is_shown_refused_and_an_offline_gate_is_named_at_once() {
    let mut w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    use_key(&g, &AdminKey::generate("ops-test").expect("key"));
    let r = g
        .run(&["cmd", "lockdown", "--gate", "east-1", "--wait", "10"])
        .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stdout
            .contains("east-1: lockdown REFUSED bad_signature: "),
        "{r:#?}"
    );
    assert!(
        r.stderr
            .contains("gatectl: cmd lockdown: east-1 refused it: bad_signature: "),
        "{r:#?}"
    );
    assert!(
        r.stderr
            .contains("east-1 does not trust the key `ops-test` this was signed with"),
        "{r:#?}"
    );

    // The gate dies; the broker publishes its last will.
    use_key(&g, admin());
    w.daemon.kill9();
    wait_for("the gate's last will", Duration::from_secs(30), || {
        w.centre
            .on(STATUS)
            .last()
            .filter(|m| m.json()["online"] == false)
            .map(|_| ())
    })
    .await;
    let sent_before = w.centre.on("acs/hq/east-1/cmd").len();
    let started = std::time::Instant::now();
    let r = g
        .run(&["cmd", "lockdown", "--gate", "east-1", "--wait", "30"])
        .await;
    assert_eq!(r.code, 3, "{r:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited {:?}",
        started.elapsed()
    );
    assert!(
        r.stderr
            .contains("gatectl: cmd lockdown: east-1 is offline (its status on acs/hq/east-1/status says so); nothing was sent"),
        "{r:#?}"
    );
    // Our own message through the same broker: once it is back, a command gatectl had
    // published would be here too.
    w.centre
        .publish_raw("acs/hq/test/barrier", "after gatectl", false)
        .await;
    wait_for("the barrier message", DEADLINE, || {
        (!w.centre.on("acs/hq/test/barrier").is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        w.centre.on("acs/hq/east-1/cmd").len(),
        sent_before,
        "no command published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_on_a_fresh_machine_makes_its_private_directory_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt as _;
    let g = Gatectl::new(free_port());
    // ~/.gatectl does not exist on a fresh machine.
    let dir = g.path("home/.gatectl");
    let key = dir.join("ops-2026.key");
    let r = g
        .run(&["keygen", "--id", "ops-2026", "--out", s(&key)])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&dir), 0o700, "the new directory is private");
    assert_eq!(mode(&key), 0o600);
    let made = AdminKey::load(&key).expect("a key gatectl can load");
    assert!(
        r.stdout.contains(&format!(
            "id = \"ops-2026\"\npublic = \"{}\"",
            made.public_b64()
        )),
        "{r:#?}"
    );

    // Again: refused, the key unchanged, and nothing else left in the directory.
    let before = std::fs::read(&key).expect("read");
    let r = g
        .run(&["keygen", "--id", "ops-2026", "--out", s(&key)])
        .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("gatectl never overwrites"), "{r:#?}");
    assert!(r.stdout.is_empty(), "no trust block for a key not made");
    assert_eq!(std::fs::read(&key).expect("read"), before);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("ops-2026.key")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_passback_shows_in_tail_as_a_cleared_state_not_a_grant() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    let tail = g.start_tail(&["--count", "1", "--timeout", "30"]).await;
    let r = g
        .run(&[
            "cmd",
            "clear-passback",
            "--gate",
            "east-1",
            "--subject",
            "E1001",
            "--wait",
            "10",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    let t = tail.finish().await;
    assert_eq!(t.code, 0, "{t:#?}");
    assert!(
        t.stdout.contains(
            " east-1 #1 CLEARED anti-passback state of E1001 by ops-test (no lane released)"
        ),
        "{t:#?}"
    );
    assert!(!t.stdout.contains("GRANTED"), "{t:#?}");
    // On the wire it stays the contract's override event, and says it released nothing.
    let e = w
        .centre
        .wait_json("the override event", EVENT, |e| {
            e["override"]["input"] == "clear_passback"
        })
        .await;
    assert_eq!(
        (e["reason"].as_str(), e["subject"].as_str()),
        (Some("override_remote"), Some("E1001")),
        "{e}"
    );
    assert_eq!(e["flags"], serde_json::json!(["no_release"]), "{e}");
    assert!(w.devices.relay.pulses().is_empty(), "no lane released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_goes_offline_while_gatectl_waits_for_its_ack_is_named_at_once() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    // west-2: a gate that is online, then loses its connection before it acks.
    let status = "acs/hq/west-2/status";
    w.centre
        .publish_raw(status, r#"{"online":true}"#, true)
        .await;
    let started = std::time::Instant::now();
    let run = g.command(&["cmd", "lockdown", "--gate", "west-2", "--wait", "30"]);
    let child = tokio::spawn(async move {
        let mut run = run;
        run.output().await.expect("run gatectl")
    });
    wait_for("the command on west-2's topic", DEADLINE, || {
        (!w.centre.on("acs/hq/west-2/cmd").is_empty()).then_some(())
    })
    .await;
    w.centre
        .publish_raw(status, r#"{"online":false}"#, true)
        .await;
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("gatectl ended")
        .expect("joined");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it waited {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("gatectl: cmd lockdown: west-2 went offline before it acked"),
        "{stderr}"
    );
}

/// A responder marked in the staff CSV passes a lockdown, recorded as such; everyone else is
/// refused `lockdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_marked_lockdown_exempt_in_the_csv_passes_a_lockdown() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    let csv = g.path("staff.csv");
    std::fs::write(
        &csv,
        "subject,name,card,face,valid_from,valid_until,gates,lockdown_exempt\n\
         E1001,Li Wei,0012345678,,,2099-12-31T23:59:59Z,*,\n\
         R7,Fire Warden,0077777777,,,2099-12-31T23:59:59Z,*,yes\n",
    )
    .expect("write csv");
    let r = g
        .run(&["push", "staff", "--file", s(&csv), "--wait", "10"])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    let r = g
        .run(&["cmd", "lockdown", "--gate", "east-1", "--wait", "10"])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");

    let e = swipe(&w, "0012345678").await;
    assert_eq!(
        (e["decision"].as_str(), e["reason"].as_str()),
        (Some("denied"), Some("lockdown")),
        "{e}"
    );
    let e = swipe(&w, "0077777777").await;
    assert_eq!(
        (
            e["decision"].as_str(),
            e["reason"].as_str(),
            e["subject"].as_str()
        ),
        (Some("granted"), Some("lockdown_exempt"), Some("R7")),
        "{e}"
    );
    wait_for("the responder's pulse", DEADLINE, || {
        (w.devices.relay.pulses().len() == 1).then_some(())
    })
    .await;
}
