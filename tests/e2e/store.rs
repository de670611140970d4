//! One store, one gate: what `gated run` refuses at start about its database, and the modes
//! its files are created with.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crate::harness::*;

/// The reference gate's config with the store at `db` and `gate` as its id. The broker is a
/// closed port: these tests are about the start, not the sync.
fn config(db: &Path, devices: &Devices, gate: &str) -> String {
    config_text(db, free_port(), devices)
        .replace("gate = \"east-1\"", &format!("gate = \"{gate}\""))
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// A `gated` the test started, killed when the test ends, even by a failed assert.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gated run --config FILE` in `sh` with `umask`, its stderr in `log`.
fn spawn_run(config: &Path, umask: &str, log: &Path) -> Run {
    let log = std::fs::File::create(log).expect("log");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" run --config \"$1\""))
        .arg(env!("CARGO_BIN_EXE_gated"))
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start gated");
    Run(child)
}

/// Waits until `child` exits (with its status) or `DEADLINE` passes (`None`, the child killed).
async fn exit_within(Run(child): &mut Run) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn wait_running(what: &str, log: &Path) {
    wait_for(what, DEADLINE, || {
        std::fs::read_to_string(log)
            .ok()
            .filter(|t| t.contains("gated running"))
    })
    .await;
}

/// Two daemons on one database kick each other off the broker (one client id). The second is
/// refused at start, and its error names the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gated_on_the_same_store_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = Devices::start().await;
    let db = dir.path().join("gated.db");
    let text = config(&db, &devices, "east-1");
    let mut first = Daemon::start_with_env(dir.path(), &text, &[]);
    wait_for("the first gated to run", DEADLINE, || {
        first.log().contains("gated running").then_some(())
    })
    .await;
    let pid = first.pid().expect("the first gated runs");

    let second_config = write(dir.path(), "second.toml", &text);
    let log = dir.path().join("second.log");
    let mut second = spawn_run(&second_config, "022", &log);
    let status = exit_within(&mut second).await;
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("a second gated ran on the same store:\n{err}"));
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!("{} is in use by gated pid {pid}", db.display())),
        "{err}"
    );
    assert!(first.is_running(), "the first gated is left alone");
}

/// A store remembers the gate it was made for: east-2's config on east-1's file is refused by
/// `run` and by `check-config`, naming both. A store from before this rule (no gate recorded)
/// takes the gate of the first config that runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_made_for_another_gate_is_refused_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = Devices::start().await;
    let db = dir.path().join("gated.db");
    let mut east1 = Daemon::start_with_env(dir.path(), &config(&db, &devices, "east-1"), &[]);
    wait_for("east-1 to run", DEADLINE, || {
        east1.log().contains("gated running").then_some(())
    })
    .await;
    east1.kill9();

    let east2 = write(dir.path(), "east2.toml", &config(&db, &devices, "east-2"));
    let log = dir.path().join("east2.log");
    let mut run = spawn_run(&east2, "022", &log);
    let status = exit_within(&mut run).await;
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("east-2 ran on east-1's store:\n{err}"));
    assert!(!status.success(), "{err}");
    let names_both =
        |e: &str| e.contains("site `hq` gate `east-1`") && e.contains("site `hq` gate `east-2`");
    assert!(names_both(&err), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_gated"))
        .args(["check-config", "--config"])
        .arg(&east2)
        .output()
        .expect("check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(names_both(&err), "{err}");

    // A store from an older gated: no gate recorded. The first run adopts its config's gate.
    let conn = rusqlite::Connection::open(&db).expect("open the store");
    let removed = conn
        .execute("DELETE FROM state WHERE key IN ('site', 'gate')", [])
        .expect("forget the gate");
    assert_eq!(removed, 2, "the store recorded its site and gate");
    drop(conn);
    let log = dir.path().join("adopt.log");
    let adopt = spawn_run(&east2, "022", &log);
    wait_running("east-2 to adopt the old store", &log).await;
    drop(adopt);
    let mut again = spawn_run(&dir.path().join("gated.toml"), "022", &log);
    let status = exit_within(&mut again).await;
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()) && names_both(&err),
        "east-1 must be refused the store east-2 adopted:\n{err}"
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The store holds names, card ids and face thumbnails: whatever the umask, its files are
/// created 0600 and its directory 0700. A file made wider later is warned about at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_created_private_whatever_the_umask() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = Devices::start().await;
    let store_dir = dir.path().join("state").join("gated");
    let db = store_dir.join("gated.db");
    let config = write(dir.path(), "gated.toml", &config(&db, &devices, "east-1"));
    let log = dir.path().join("gated.log");
    let run = spawn_run(&config, "000", &log);
    wait_running("gated to run", &log).await;
    let wal = db.with_extension("db-wal");
    let shm = db.with_extension("db-shm");
    wait_for("the WAL and its index", DEADLINE, || {
        (wal.exists() && shm.exists()).then_some(())
    })
    .await;
    for file in [&db, &wal, &shm, &db.with_extension("db.lock")] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    for d in [&store_dir, &dir.path().join("state")] {
        assert_eq!(mode(d), 0o700, "{}", d.display());
    }
    drop(run);

    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let run = spawn_run(&config, "022", &log);
    wait_running("gated to run again", &log).await;
    drop(run);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.lines().any(|l| l.contains("WARN")
            && l.contains(&db.display().to_string())
            && l.contains("0644")),
        "a warning naming the store and its mode:\n{text}"
    );
}

/// A database file of 0 bytes (a truncated store) is not started as a new gate: `gated run`
/// exits non-zero naming it, and leaves it as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_file_is_refused_by_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = Devices::start().await;
    let db = dir.path().join("gated.db");
    std::fs::File::create(&db).expect("empty store");
    let config = write(dir.path(), "gated.toml", &config(&db, &devices, "east-1"));
    let log = dir.path().join("run.log");
    let mut run = spawn_run(&config, "022", &log);
    let status = exit_within(&mut run).await;
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("gated ran on an empty store:\n{err}"));
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!("{} is empty (0 bytes)", db.display())),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&db).expect("kept").len(),
        0,
        "left as it was"
    );
}

/// systemd's default start limit (5 starts in 10 s) would leave a gate whose store is refused
/// failed for good: the unit turns it off and keeps retrying, not in a tight loop.
#[test]
fn the_unit_keeps_retrying_a_gate_that_cannot_start() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/gated.service"),
    )
    .expect("systemd/gated.service");
    let mut section = "";
    let mut settings = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            settings.push((section, k.trim(), v.trim()));
        }
    }
    let get = |s: &str, k: &str| {
        settings
            .iter()
            .rev()
            .find(|(sec, key, _)| *sec == s && *key == k)
            .map(|(_, _, v)| *v)
    };
    assert_eq!(get("[Unit]", "StartLimitIntervalSec"), Some("0"), "{unit}");
    assert_eq!(get("[Service]", "Restart"), Some("always"), "{unit}");
    let delay: u64 = get("[Service]", "RestartSec")
        .and_then(|v| v.parse().ok())
        .expect("RestartSec in seconds");
    assert!((2..=10).contains(&delay), "RestartSec={delay}");
}

/// A tmpfs of `size` mounted at `dir` for the test, unmounted when the test ends, however.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk with the broker down: passes cannot be recorded. gated logs that sparingly
/// (not a line per batch) and, once it has lasted 60 s, exits 75 so that systemd restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_ends_the_process_after_a_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).expect("mkdir");
    let _mounted = Tmpfs::mount(&disk, "4m");
    let devices = Devices::start().await;
    let db = disk.join("gated.db");
    let config = write(dir.path(), "gated.toml", &config(&db, &devices, "east-1"));
    let log = dir.path().join("run.log");
    let mut run = spawn_run(&config, "022", &log);
    wait_running("gated to run", &log).await;

    use std::io::Write as _;
    let mut fill = std::fs::File::create(disk.join("fill")).expect("fill file");
    let chunk = vec![0u8; 16 * 1024];
    while fill.write_all(&chunk).is_ok() {}
    let _ = fill.sync_all();

    let end = Instant::now() + std::time::Duration::from_secs(150);
    let mut n = 0u64;
    let status = loop {
        if let Some(status) = run.0.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= end {
            break None;
        }
        n += 1;
        let _ = devices
            .reader1
            .present(hw_sim::KIND_CARD, &format!("{:010}", 7_000_000 + n), 0);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("gated kept running on a full disk:\n{text}"));
    assert_eq!(status.code(), Some(75), "{text}");
    let lines = text
        .lines()
        .filter(|l| l.contains("gated::store") && l.contains("could not record a pass"))
        .count();
    assert!((1..=10).contains(&lines), "{lines} failure lines:\n{text}");
}

/// Overwrites the root page of `table` in the (closed) database at `db` with noise, as a
/// random page written into the file would.
fn damage_page(db: &Path, table: &str) {
    let (root, size): (u64, u64) = {
        let conn = rusqlite::Connection::open(db).expect("open the store");
        let root = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .expect("root page");
        let size = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page size");
        (root, size)
    };
    let mut noise = vec![0u8; size as usize];
    let mut x: u32 = 0x9e37_79b9;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    use std::io::{Seek as _, SeekFrom, Write as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(db)
        .expect("db file");
    f.seek(SeekFrom::Start((root - 1) * size)).expect("seek");
    f.write_all(&noise).expect("write page");
}

/// A gate with staff synced and events waiting in its outbox (the broker was down) is
/// stopped, and a page of its staff table is damaged. Started again, it salvages the store
/// instead of refusing it for ever: a `store_salvaged` alarm reaches the centre naming the
/// copy aside, the events recorded before the damage still arrive, the staff list comes back
/// from the retained snapshot, and a staff card is granted with the seq that follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_staff_table_is_salvaged_at_start_and_the_list_comes_back() {
    let mut w = World::start().await;
    w.broker.stop();
    for _ in 0..3 {
        w.devices
            .reader1
            .present(hw_sim::KIND_CARD, "0012345678", 0)
            .expect("present");
    }
    wait_for("3 offline decisions", DEADLINE, || {
        (w.devices.reader1.acked().len() == 3).then_some(())
    })
    .await;
    w.daemon.kill9();
    // The last connection to close writes the log back into the file, as a clean stop does.
    drop(rusqlite::Connection::open(w.db()).expect("open the store"));
    damage_page(&w.db(), "staff");
    let acks_before = w.centre.on(ACK).len();

    w.broker.restart().await;
    restart_watching(&mut w.daemon).await;
    let alarm = w
        .centre
        .wait_json("the store_salvaged alarm", ALARM, |a| {
            a["alarm"] == "store_salvaged"
        })
        .await;
    let detail = alarm["detail"].as_str().expect("detail");
    let aside = format!("{}.damaged-", w.db().display());
    assert!(detail.contains(&aside), "names the copy aside: {detail}");
    assert!(detail.contains("list staff (version 1)"), "{detail}");
    assert!(detail.contains("outbox kept (3 rows)"), "{detail}");
    let copies: Vec<_> = std::fs::read_dir(w.db().parent().expect("dir"))
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.display().to_string().starts_with(&aside))
        .collect();
    assert!(!copies.is_empty(), "a copy is set aside");

    wait_for("the 3 events recorded before the damage", DEADLINE, || {
        let seqs: std::collections::BTreeSet<u64> = w
            .events()
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .collect();
        (seqs == (1..=3).collect()).then_some(())
    })
    .await;
    wait_for(
        "the retained staff snapshot applied again",
        DEADLINE,
        || {
            w.centre.on(ACK)[acks_before..]
                .iter()
                .map(Msg::json)
                .find(|a| a["ref"] == "staff@1" && a["ok"] == true)
        },
    )
    .await;
    let event = swipe(&w, "0012345678").await;
    assert_eq!(event["decision"], "granted", "{event}");
    assert_eq!(event["seq"], 4, "seq continues: {event}");
}

/// A page of the credential table damaged under a running gate (its page cache made small,
/// so the page is read from the file again): the swipe that meets it
/// releases nothing, a `store_corrupt` alarm reaches the centre past the outbox, and gated
/// exits with code 75. Started again, it salvages the store and grants the card once the
/// retained list is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_damaged_while_running_alarms_exits_75_and_is_salvaged_on_restart() {
    let mut w = World::start().await;
    w.daemon.kill9();
    {
        // A page cache of 10 pages, kept in the database header (a legacy setting SQLite
        // still honours): a page is read from the file again soon after it was last used, as
        // in a store larger than the cache.
        let conn = rusqlite::Connection::open(w.db()).expect("open the store");
        conn.execute_batch("PRAGMA default_cache_size = 10")
            .expect("cache size");
    }
    restart_watching(&mut w.daemon).await;
    let pulses = w.devices.relay.pulses().len();
    damage_page(&w.db(), "staff_credential");
    w.devices
        .reader1
        .present(hw_sim::KIND_CARD, "0012345678", 0)
        .expect("present");
    let alarm = w
        .centre
        .wait_json("the store_corrupt alarm", ALARM, |a| {
            a["alarm"] == "store_corrupt"
        })
        .await;
    assert_eq!(alarm["unrecorded"], true, "{alarm}");
    assert!(
        alarm["detail"]
            .as_str()
            .expect("detail")
            .contains("malformed"),
        "{alarm}"
    );
    let code = wait_for("gated to exit", DEADLINE, || w.daemon.exit_code()).await;
    assert_eq!(code, 75, "EX_TEMPFAIL, so that systemd starts it again");
    assert_eq!(
        w.devices.relay.pulses().len(),
        pulses,
        "nobody was released"
    );

    let acks_before = w.centre.on(ACK).len();
    restart_watching(&mut w.daemon).await;
    w.centre
        .wait_json("the store_salvaged alarm", ALARM, |a| {
            a["alarm"] == "store_salvaged"
        })
        .await;
    wait_for(
        "the retained staff snapshot applied again",
        DEADLINE,
        || {
            w.centre.on(ACK)[acks_before..]
                .iter()
                .map(Msg::json)
                .find(|a| a["ref"] == "staff@1" && a["ok"] == true)
        },
    )
    .await;
    let event = swipe(&w, "0012345678").await;
    assert_eq!(event["decision"], "granted", "{event}");
}
