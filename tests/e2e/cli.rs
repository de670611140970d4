//! The command line as a person uses it: check-config and the demo.

use std::process::Command;

fn gated(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gated"))
        .args(args)
        .output()
        .expect("run gated")
}

#[test]
fn check_config_accepts_the_example_and_names_key_and_line_of_an_error() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gated.example.toml");
    let out = gated(&["check-config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("site `hq` gate `east-1`"));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example)
        .expect("example")
        .replace("poll_ms = 50", "poll_ms = 50\npol_ms = 10");
    std::fs::write(&bad, text).expect("write");
    let out = gated(&["check-config", bad.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pol_ms") && err.contains("line "), "{err}");
}

#[test]
fn demo_offline_plays_the_scene() {
    let out = gated(&["demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    let expect = [
        ("GRANTED staff", "relay=released"),
        ("DENIED  unknown_credential", "relay=closed"),
        ("GRANTED visitor", "relay=released"),
        ("GRANTED visitor", "relay=released"),
        ("DENIED  entries_exhausted", "relay=closed"),
        ("DENIED  low_face_score", "relay=closed"),
        ("GRANTED staff", "relay=released"),
    ];
    assert_eq!(lines.len(), expect.len(), "{text}");
    for (line, (verdict, relay)) in lines.iter().zip(expect) {
        assert!(
            line.contains(verdict) && line.contains(relay),
            "`{line}` should say {verdict}, {relay}"
        );
    }
    assert!(text.contains("7 events wait in the outbox"), "{text}");
}

/// The example config is a real gate with a GPIO panel: on a machine that is not a Raspberry
/// Pi, gated refuses to start and says why, before it touches anything.
#[test]
fn gpio_devices_off_a_pi_stop_gated_at_start_with_a_clear_error() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gated.example.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store").join("gated.db");
    let text = std::fs::read_to_string(example)
        .expect("example")
        .replace("/var/lib/gated/gated.db", db.to_str().expect("utf-8 path"));
    let config = dir.path().join("gated.toml");
    std::fs::write(&config, text).expect("write");
    let out = gated(&["run", "--config", config.to_str().expect("utf-8 path")]);
    assert!(
        !out.status.success(),
        "gated must not run GPIO devices off a Pi"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gpio_panel `panel1`") && err.contains("Raspberry Pi"),
        "{err}"
    );
    assert!(!db.exists(), "nothing was created before the refusal");
}
