//! Schedules, the calendar and the ends of windows, against the real binaries: a calendar
//! date that names schedules overrides only those; an invitation with a schedule opens only in
//! its hours; an invitation past its window stays in the list, so its code is refused
//! `expired`; a staff file with entries already past is warned about.

use hw_sim::KIND_QR;
use serde_json::{Value, json};

use crate::harness::*;

const CALENDAR_TOPIC: &str = "acs/hq/lists/calendar";

/// `office` and `night`, both open around the clock every day and following the calendar, so
/// that only the calendar decides whatever the time the test runs at; and `closed`, never open.
fn two_schedules(config: String) -> String {
    let mut extra = String::from("[policy.schedule.closed]\ncalendar = false\n");
    for name in ["office", "night"] {
        extra.push_str(&format!("[policy.schedule.{name}]\n"));
        for day in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] {
            extra.push_str(&format!("{day} = [\"00:00-24:00\"]\n"));
        }
        extra.push_str("calendar = true\n");
    }
    config + &extra
}

/// Yesterday, today and tomorrow in UTC (the gate's zone): a test that runs over midnight
/// still has its date.
fn dates_around_now() -> Vec<String> {
    let today = chrono::Utc::now().date_naive();
    [-1, 0, 1]
        .into_iter()
        .map(|d| {
            (today + chrono::Duration::days(d))
                .format("%Y-%m-%d")
                .to_string()
        })
        .collect()
}

async fn publish_list(w: &World, topic: &str, body: Value, reference: &str) {
    w.centre.publish(topic, body.to_string(), true).await;
    let ack = w
        .centre
        .wait_json(&format!("the ack of {reference}"), ACK, |a| {
            // A body the gate cannot parse is refused with the list's name as its ref.
            a["ref"] == reference || a["ok"] == false
        })
        .await;
    assert_eq!(ack["ok"], true, "{reference} was refused: {ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_office_holiday_leaves_the_night_shift_open() {
    let w = World::start_with_config(two_schedules).await;
    let staff = json!({"list": "staff", "site": "hq", "version": 2, "entries": [
        {"subject": "E-OFFICE", "credentials": [{"kind": "card", "id": "0000000011"}],
         "gates": ["*"], "schedule": "office"},
        {"subject": "E-NIGHT", "credentials": [{"kind": "card", "id": "0000000022"}],
         "gates": ["*"], "schedule": "night"}]});
    publish_list(&w, STAFF_TOPIC, staff, "staff@2").await;
    let holidays: Vec<Value> = dates_around_now()
        .into_iter()
        .map(|d| json!({"date": d, "name": "Office closed", "hours": [], "schedules": ["office"]}))
        .collect();
    let calendar = json!({"list": "calendar", "site": "hq", "version": 1, "entries": holidays});
    publish_list(&w, CALENDAR_TOPIC, calendar, "calendar@1").await;

    let e = swipe(&w, "0000000011").await;
    assert_eq!(
        (e["reason"].as_str(), e["subject"].as_str()),
        (Some("outside_schedule"), Some("E-OFFICE")),
        "the office is closed on its holiday: {e}"
    );
    let e = swipe(&w, "0000000022").await;
    assert_eq!(
        (e["reason"].as_str(), e["subject"].as_str()),
        (Some("staff"), Some("E-NIGHT")),
        "the night shift does not follow the office's holiday: {e}"
    );
}

/// Invites a visitor through gatectl with `extra` arguments; returns (invitation, code).
async fn invite(g: &Gatectl, extra: &[&str]) -> (String, String) {
    let until = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let args = [
        &[
            "invite",
            "--visitor",
            "Zhang San",
            "--until",
            &until,
            "--gates",
            "east-1",
            "--entries",
            "5",
            "--wait",
            "10",
        ][..],
        extra,
    ]
    .concat();
    let r = g.run(&args).await;
    assert_eq!(r.code, 0, "{r:#?}");
    let field = |name: &str| {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no `{name}` line in {r:#?}"))
    };
    (field("invitation"), field("code"))
}

/// Shows `code` at the entry reader and returns the event it caused.
async fn show_qr(w: &World, code: &str) -> Value {
    let before = w.centre.on(EVENT).len();
    w.devices
        .reader1
        .present(KIND_QR, code, 0)
        .expect("present");
    wait_for("the event of a QR code", DEADLINE, || {
        w.centre.on(EVENT).get(before).map(Msg::json)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_with_a_schedule_opens_only_in_its_hours() {
    let w = World::start_with_config(two_schedules).await;
    let g = Gatectl::new(w.broker.port);
    let (closed_inv, closed_code) = invite(&g, &["--schedule", "closed"]).await;
    let e = show_qr(&w, &closed_code).await;
    assert_eq!(
        (e["reason"].as_str(), e["subject"].as_str()),
        (Some("outside_schedule"), Some(closed_inv.as_str())),
        "{e}"
    );
    // A schedule the gate does not define grants nothing.
    let (unknown_inv, unknown_code) = invite(&g, &["--schedule", "contractors"]).await;
    let e = show_qr(&w, &unknown_code).await;
    assert_eq!(
        (e["reason"].as_str(), e["subject"].as_str()),
        (Some("outside_schedule"), Some(unknown_inv.as_str())),
        "{e}"
    );
    let (office_inv, office_code) = invite(&g, &["--schedule", "office"]).await;
    let e = show_qr(&w, &office_code).await;
    assert_eq!(
        (e["reason"].as_str(), e["subject"].as_str()),
        (Some("visitor"), Some(office_inv.as_str())),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_past_its_window_stays_refused_expired_until_its_retention_ends() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    let ended = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let visitors = json!({"list": "visitors", "site": "hq", "version": 1, "entries": [
        {"invitation": "INV-LATE", "visitor": "Li Si",
         "credentials": [{"kind": "qr", "id": "LATE-CODE-1"}],
         "valid_until": ended, "gates": ["east-1"], "max_entries": 2}]});
    publish_list(&w, "acs/hq/lists/visitors", visitors, "visitors@1").await;
    let e = show_qr(&w, "LATE-CODE-1").await;
    assert_eq!(e["reason"], "expired", "{e}");

    // Another invitation rebuilds the list: the one that ended an hour ago stays in it.
    invite(&g, &[]).await;
    let e = show_qr(&w, "LATE-CODE-1").await;
    assert_eq!(
        (e["reason"].as_str(), e["subject"].as_str()),
        (Some("expired"), Some("INV-LATE")),
        "a late visitor's code is refused as expired, not as unknown: {e}"
    );

    // The retention is bounded and configurable: with none, it leaves the list.
    let until = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let r = g
        .run(&[
            "invite",
            "--visitor",
            "Wang Wu",
            "--until",
            &until,
            "--gates",
            "east-1",
            "--entries",
            "1",
            "--keep-expired-days",
            "0",
            "--wait",
            "10",
        ])
        .await;
    assert_eq!(r.code, 0, "{r:#?}");
    assert!(r.stdout.contains("removed INV-LATE"), "{r:#?}");
    let e = show_qr(&w, "LATE-CODE-1").await;
    assert_eq!(e["reason"], "unknown_credential", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staff_file_with_entries_already_past_is_warned_about() {
    let w = World::start().await;
    let g = Gatectl::new(w.broker.port);
    let csv = g.path("staff.csv");
    let file = csv.to_str().expect("temporary paths are UTF-8");
    std::fs::write(
        &csv,
        "subject,name,card,face,valid_from,valid_until,gates\n\
         E1001,Li Wei,0012345678,,,2099-12-31T23:59:59Z,*\n\
         E2002,Wang Fang,0055555555,,,2020-06-30T18:00:00Z,*\n",
    )
    .expect("write csv");
    let r = g
        .run(&["push", "staff", "--file", file, "--wait", "10"])
        .await;
    assert_eq!(r.code, 0, "published anyway: {r:#?}");
    assert!(
        r.stderr.contains(&format!(
            "warning: {file}:3: valid_until: 2020-06-30T18:00:00Z is already past: `E2002` opens nothing"
        )),
        "{r:#?}"
    );
    assert!(!r.stderr.contains("E1001"), "{r:#?}");
    assert!(r.stdout.contains("east-1: staff@2 ok"), "{r:#?}");

    // A file of nothing but past entries would let nobody in: refused, nothing published.
    std::fs::write(
        &csv,
        "subject,name,card,face,valid_from,valid_until,gates\n\
         E2002,Wang Fang,0055555555,,,2020-06-30T18:00:00Z,*\n",
    )
    .expect("write csv");
    let r = g
        .run(&["push", "staff", "--file", file, "--wait", "2"])
        .await;
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(
        r.stderr.contains("every entry of") && r.stderr.contains("--allow-empty"),
        "{r:#?}"
    );
    assert!(!r.stdout.contains("published"), "{r:#?}");
    let e = swipe(&w, "0012345678").await;
    assert_eq!(e["reason"], "staff", "staff@2 is still in force: {e}");
}
