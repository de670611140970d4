//! The command line as a person uses it: check-config, run and the offline demo.

use std::process::Command;

use crate::harness::{DEADLINE, admin, free_port};

fn gated(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gated"))
        .args(args)
        .output()
        .expect("run gated")
}

#[test]
fn check_config_accepts_the_example_and_names_key_and_line_of_an_error() {
    // With a real key in place of the placeholder; its GPIO panel needs a Pi, so the host
    // checks are left out here (`check_config_refuses_what_run_refuses` has them).
    let dir = tempfile::tempdir().expect("tempdir");
    let example = dir.path().join("example.toml");
    let text = shipped("gated.example.toml", dir.path(), true);
    std::fs::write(&example, &text).expect("write");
    let example = example.to_str().expect("utf-8 path");
    let out = gated(&["check-config", "--skip-host-checks", "--config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("site `hq` gate `east-1`"), "{said}");
    assert!(
        said.contains("exits: grace 30 min; window Grace, schedule Ignore, offline limit Grace"),
        "{said}"
    );

    let bad = dir.path().join("bad.toml");
    let text = text.replace("poll_ms = 50", "poll_ms = 50\npol_ms = 10");
    std::fs::write(&bad, text).expect("write");
    let out = gated(&[
        "check-config",
        "--config",
        bad.to_str().expect("utf-8 path"),
    ]);
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
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gated.db");
    let text = shipped("gated.example.toml", dir.path(), true);
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

/// `gated run --config FILE`, on a thread, killed if it is still running after `DEADLINE`:
/// `None` then, else its exit status and stderr.
async fn run_refused(config: &std::path::Path) -> Option<(std::process::ExitStatus, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gated"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start gated");
    let end = std::time::Instant::now() + DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().expect("gated's output");
    Some((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The example and sim configs as a test uses them: the store in `dir`, the broker on a closed
/// port, and (when `key`) the test admin key in place of the placeholder.
fn shipped(name: &str, dir: &std::path::Path, key: bool) -> String {
    let path = format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path)
        .expect("shipped config")
        .replace(
            "/var/lib/gated/gated.db",
            dir.join("gated.db").to_str().expect("utf-8 path"),
        )
        .replace("port = 1883", &format!("port = {}", free_port()));
    if key {
        text.replace(
            "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            &admin().public_b64(),
        )
    } else {
        text
    }
}

/// Under the systemd unit, check-config is the pre-check of run: what run refuses at start,
/// check-config refuses with the same error (exit 2). `--skip-host-checks` leaves out what
/// depends on the machine (GPIO, files the config names, the store), for checking a config
/// meant for another machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_what_run_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = "[mqtt.tls]\nca_file = \"/nonexistent/gated-test/ca.pem\"\n\n[[trust.key]]";
    let cases = [
        // GPIO devices off a Raspberry Pi: a host check.
        (
            "gpio",
            shipped("gated.example.toml", dir.path(), true),
            "gpio_panel `panel1`",
            true,
        ),
        // The example's placeholder key with [mqtt] set: trusts nobody, on any machine.
        (
            "placeholder",
            shipped("gated.sim.toml", dir.path(), false),
            "placeholder",
            false,
        ),
        // A file the config names that is not there: a host check.
        (
            "tls",
            shipped("gated.sim.toml", dir.path(), true).replacen("[[trust.key]]", tls, 1),
            "/nonexistent/gated-test/ca.pem",
            true,
        ),
    ];
    for (name, text, names, host) in cases {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, text).expect("write");
        let path = config.to_str().expect("utf-8 path");
        let (status, run_err) = run_refused(&config)
            .await
            .unwrap_or_else(|| panic!("{name}: gated run started; it must refuse this config"));
        assert!(!status.success(), "{name}: {run_err}");
        let refusal = run_err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{name}: run names its refusal:\n{run_err}"));
        assert!(refusal.contains(names), "{name}: {refusal}");

        let out = gated(&["check-config", "--config", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: check-config must refuse it: {err}"
        );
        assert!(
            err.contains(refusal),
            "{name}: the same error as run:\n{err}\nrun: {refusal}"
        );

        let out = gated(&["check-config", "--skip-host-checks", "--config", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        if host {
            assert!(
                out.status.success(),
                "{name}: only a host check failed: {err}"
            );
        } else {
            assert_eq!(
                out.status.code(),
                Some(2),
                "{name}: not a host check: {err}"
            );
            assert!(err.contains(names), "{name}: {err}");
        }
    }
    assert!(
        !dir.path().join("gated.db").exists(),
        "nothing was created by a refused run or by check-config"
    );
}

/// One way to name the config for both commands: `--config FILE`. The older `check-config
/// FILE` still works, and so does `run FILE`.
#[test]
fn run_and_check_config_both_take_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gated.toml");
    std::fs::write(&config, shipped("gated.sim.toml", dir.path(), true)).expect("write");
    let path = config.to_str().expect("utf-8 path");
    for args in [
        &["check-config", "--config", path][..],
        &["check-config", path],
        &["check-config", "--skip-host-checks", "--config", path],
    ] {
        let out = gated(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("site `hq` gate `east-1`"));
    }
    let out = gated(&["check-config", "--config", path, path]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a file named twice is a usage error"
    );
    for cmd in ["run", "check-config"] {
        let help = gated(&[cmd, "--help"]);
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains(&format!("gated {cmd} --config /etc/gated/gated.toml")),
            "{cmd} --help shows the one form:\n{text}"
        );
    }
    let missing = dir.path().join("missing.toml");
    let out = gated(&["run", missing.to_str().expect("utf-8 path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("missing.toml") && err.contains("cannot read"),
        "{err}"
    );
}

/// `gated check-config --config FILE | head -1`, and the demo piped the same way: a reader that
/// stops reading is not gated's failure. The rest of the output is dropped and gated finishes
/// as it would have, with no panic. The pipe's read end is closed before gated starts, so
/// every write meets a closed pipe whatever the timing.
#[test]
fn a_closed_stdout_pipe_ends_gated_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gated.toml");
    std::fs::write(&config, shipped("gated.sim.toml", dir.path(), true)).expect("write");
    let path = config.to_str().expect("utf-8 path");
    for args in [
        &["check-config", "--config", path][..],
        &["check-config", "--skip-host-checks", "--config", path],
        &["demo"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_gated"))
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run gated");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
        // Built with panic = "abort", a panic ends gated by SIGABRT: no exit code at all.
        assert!(out.status.success(), "{args:?}: {}: {err}", out.status);
    }
}
