//! The real `gated` binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::*;

pub struct Daemon {
    config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// Environment variables set for `gated` on top of the test's own.
    env: Vec<(String, std::ffi::OsString)>,
}

pub fn config_text(db: &Path, broker_port: u16, d: &Devices) -> String {
    format!(
        r#"[gate]
site = "hq"
gate = "east-1"
[store]
path = "{db}"
[mqtt]
host = "127.0.0.1"
port = {broker_port}
keep_alive_s = 5
status_interval_s = 60
max_message_bytes = 262144
[[trust.key]]
id = "ops-test"
public = "{admin}"
[policy]
min_face_score = 0.8
[clock]
sync = "none"
[[relay]]
name = "relay1"
address = "{relay}"
timeout_ms = 200
[[lane]]
id = 0
relay = "relay1"
release_ms = 3000
[[lane]]
id = 1
relay = "relay1"
release_ms = 2500
[[reader]]
name = "reader1"
address = "{r1}"
lane = 0
direction = "in"
poll_ms = 20
timeout_ms = 200
[[reader]]
name = "reader2"
address = "{r2}"
lane = 1
direction = "out"
poll_ms = 20
timeout_ms = 200
"#,
        db = db.display(),
        relay = d.relay_srv.local_addr(),
        r1 = d.reader1_srv.local_addr(),
        r2 = d.reader2_srv.local_addr(),
        admin = admin().public_b64(),
    )
}

impl Daemon {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(env!("CARGO_BIN_EXE_gated"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("GATED_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start gated");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush, close or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Restarts the daemon and waits until it has read both readers' mailboxes empty: a swipe
/// queued before that is of unknown age, and refused `stale_swipe`.
pub async fn restart_watching(daemon: &mut Daemon) {
    const WATCHING: &str = "mailbox empty: swipes from now on have a known age";
    let before = daemon.log().matches(WATCHING).count();
    daemon.restart();
    wait_for(
        "the restarted gate to watch both mailboxes",
        DEADLINE,
        || (daemon.log().matches(WATCHING).count() >= before + 2).then_some(()),
    )
    .await;
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- gated log ----\n{}", self.log());
        }
    }
}

impl Daemon {
    /// Writes the config into `dir` and starts `gated run` on it, with environment variables
    /// for `gated` (kept across `restart`).
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &Path)]) -> Daemon {
        let path = dir.join("gated.toml");
        std::fs::write(&path, config).expect("write config");
        let mut d = Daemon {
            config: path,
            child: None,
            log: dir.join("gated.log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_os_str().to_owned()))
                .collect(),
        };
        d.spawn();
        d
    }

    /// The process id of `gated`, while it is started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How `gated` ended, once it has (`None` while it runs or was never started).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether `gated` is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The exit code of `gated`, once it has ended by itself.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .and_then(|s| s.code())
    }
}
