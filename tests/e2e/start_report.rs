//! A gate that cannot start says so to the centre (issue 22, items 2, 3, 7): a retained
//! `cannot_start` status naming the store's error, and one `store_error` alarm per error (not
//! one per systemd restart), before it exits non-zero as it always did.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// A tmpfs mounted at a directory for the test, that can be made read-only and writable
/// again; unmounted when the test ends, however it ends.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path) -> Mount {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root (run the tests as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(dir.to_path_buf())
    }

    /// `mount -o remount,ro` (or `rw`): works once nothing has a file open for writing.
    fn remount(&self, how: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount,{how} {}: {}",
            self.0.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn cannot_start(s: &Value) -> bool {
    s["online"] == false && s["state"] == "cannot_start"
}

/// Waits for `gated` to exit (it must, within the report's deadline and some), returns how.
async fn exit_of(daemon: &mut Daemon) -> std::process::ExitStatus {
    wait_for("gated to exit", Duration::from_secs(20), || daemon.exited()).await
}

/// Everything the broker had sent the centre before now has arrived: a message of the
/// centre's own, published now, comes after it.
async fn centre_caught_up(centre: &Centre, n: u32) {
    let topic = format!("acs/test/marker{n}");
    centre.publish_raw(&topic, "x", false).await;
    wait_for("the centre to catch up", DEADLINE, || {
        (!centre.on(&topic).is_empty()).then_some(())
    })
    .await;
}

fn store_alarms(centre: &Centre) -> Vec<Value> {
    centre
        .on(ALARM)
        .iter()
        .map(Msg::json)
        .filter(|a| a["alarm"] == "store_error")
        .collect()
}

/// A read-only file system with a crash's -wal and -shm left on it: gated exits non-zero as
/// before, and the centre has a retained `cannot_start` status and one `store_error` alarm;
/// a second start alarms nothing more; once the disk is writable the gate runs and its status
/// is the normal one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_on_a_read_only_store_says_so_to_the_centre_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk");
    let run = dir.path().join("run");
    std::fs::create_dir(&disk).expect("mkdir");
    std::fs::create_dir(&run).expect("mkdir");
    let mount = Mount::tmpfs(&disk);
    let broker = Broker::start().await;
    let centre = Centre::connect(broker.port).await;
    let devices = Devices::start().await;
    let db = disk.join("gated.db");
    let config = config_text(&db, broker.port, &devices);
    let mut daemon = Daemon::start_with_env(dir.path(), &config, &[("RUNTIME_DIRECTORY", &run)]);
    centre
        .wait_json("the gate online", STATUS, |s| s["online"] == true)
        .await;
    daemon.kill9();
    let leftovers = ["gated.db-wal", "gated.db-shm"].map(|f| disk.join(f).exists());
    assert_eq!(leftovers, [true, true], "SIGKILL leaves the -wal and -shm");
    mount.remount("ro");

    daemon.restart();
    let status = exit_of(&mut daemon).await;
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    let s = centre
        .wait_json("the cannot_start status", STATUS, cannot_start)
        .await;
    let error = s["error"].as_str().expect("error").to_string();
    assert!(
        error.contains(&db.display().to_string()) && error.contains("Read-only file system"),
        "{s}"
    );
    assert!(s["ts"].is_string() && s["version"].is_string(), "{s}");
    let alarm = wait_for("the store_error alarm", DEADLINE, || {
        store_alarms(&centre).into_iter().next()
    })
    .await;
    assert_eq!(alarm["unrecorded"], true, "{alarm}");
    assert!(alarm.get("seq").is_none(), "{alarm}");
    assert!(
        alarm["detail"].as_str().is_some_and(|d| d.contains(&error)),
        "{alarm}"
    );

    // systemd starts it again: the status again, not the alarm.
    daemon.restart();
    let status = exit_of(&mut daemon).await;
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    wait_for("the second cannot_start status", DEADLINE, || {
        (centre
            .on(STATUS)
            .iter()
            .filter(|m| cannot_start(&m.json()))
            .count()
            == 2)
            .then_some(())
    })
    .await;
    centre_caught_up(&centre, 1).await;
    assert_eq!(store_alarms(&centre).len(), 1, "{:?}", centre.on(ALARM));

    // The disk writable again: the gate runs, and the broker keeps its normal status.
    mount.remount("rw");
    let before = centre.on(STATUS).len();
    daemon.restart();
    wait_for("the gate online again", DEADLINE, || {
        centre.on(STATUS)[before..]
            .iter()
            .any(|m| m.json()["online"] == true)
            .then_some(())
    })
    .await;
    let late = Centre::connect(broker.port).await;
    let retained = late
        .wait_json("the retained status", STATUS, |_| true)
        .await;
    assert_eq!(retained["online"], true, "{retained}");
    assert!(daemon.is_running(), "{}", daemon.log());
}

/// An empty store file (a truncated store, refused by name): the centre is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_on_an_empty_store_says_so_to_the_centre() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start().await;
    let centre = Centre::connect(broker.port).await;
    let devices = Devices::start().await;
    let db = dir.path().join("gated.db");
    std::fs::File::create(&db).expect("empty store");
    let config = config_text(&db, broker.port, &devices);
    let mut daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    let status = exit_of(&mut daemon).await;
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    let s = centre
        .wait_json("the cannot_start status", STATUS, cannot_start)
        .await;
    assert!(
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("{} is empty (0 bytes)", db.display()))),
        "{s}"
    );
    // Without a runtime directory nothing is remembered: the alarm goes every start.
    wait_for("the store_error alarm", DEADLINE, || {
        store_alarms(&centre).into_iter().next()
    })
    .await;
}

/// A broker that takes the connection and never answers holds the exit up by the report's
/// deadline at most (5 s), and one that is not there not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_does_not_answer_does_not_hold_the_exit_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start().await;
    let proxy = Proxy::start(broker.port).await;
    proxy.blackhole_replies(true);
    let devices = Devices::start().await;
    let db = dir.path().join("gated.db");
    std::fs::File::create(&db).expect("empty store");
    for port in [proxy.port, free_port()] {
        let config = config_text(&db, port, &devices);
        let started = std::time::Instant::now();
        let mut daemon = Daemon::start_with_env(dir.path(), &config, &[]);
        let status = exit_of(&mut daemon).await;
        let took = started.elapsed();
        assert_eq!(status.code(), Some(1), "{}", daemon.log());
        assert!(
            took < Duration::from_secs(7),
            "port {port}: exit took {took:?}"
        );
        eprintln!("broker port {port}: gated exited after {took:?}");
    }
}

/// The unit gives gated a runtime directory kept across restarts (where the last start alarm
/// is remembered), and lets a start that cannot open its store reach `gated run`, which
/// reports it: a `check-config` before it would refuse the same store and end the start first.
#[test]
fn the_unit_keeps_the_start_alarm_memory_and_runs_the_report() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/gated.service"),
    )
    .expect("systemd/gated.service");
    let set: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    assert!(set.contains(&("RuntimeDirectory", "gated")), "{unit}");
    assert!(
        set.contains(&("RuntimeDirectoryPreserve", "restart")),
        "{unit}"
    );
    assert!(
        !set.iter()
            .any(|(k, v)| *k == "ExecStartPre" && v.starts_with('/') && v.contains("check-config")),
        "a check-config that can fail stops the start before gated run reports it:\n{unit}"
    );
}
