//! A mosquitto of the test's own.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::*;

/// Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
pub fn mosquitto_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("mosquitto"))
            .collect::<Vec<_>>()
    });
    on_path
        .chain([PathBuf::from("/usr/sbin/mosquitto")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

/// A mosquitto of the test's own, on a free port, with persistence in a temporary directory
/// (so a subscriber's session survives a broker restart, as the operator's would).
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Config lines before the harness's own listener (`start_with`).
    extra: String,
}

impl Broker {
    pub async fn start() -> Broker {
        Self::start_with("").await
    }

    /// The same, with `extra` config lines written before the harness's own listener.
    pub async fn start_with(extra: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Broker {
            port: free_port(),
            dir,
            child: None,
            extra: extra.to_string(),
        };
        // A free port can be taken by another test between our probe and mosquitto's bind:
        // then try another one.
        for _ in 0..5 {
            if b.spawn().await {
                return b;
            }
            b.port = free_port();
        }
        panic!("mosquitto would not start; its log:\n{}", b.log());
    }

    /// Starts mosquitto on `self.port`; false when it exited at once (port taken).
    async fn spawn(&mut self) -> bool {
        let conf = self.dir.path().join("mosquitto.conf");
        // Started as root, mosquitto drops to the `mosquitto` user, which cannot write our
        // private temporary directory: persistence would fail silently. Stay the test's user
        // (the setting is ignored when not root).
        let user = Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".into());
        std::fs::write(
            &conf,
            format!(
                "{extra}listener {port} 127.0.0.1\nallow_anonymous true\nuser {user}\npersistence true\n\
                 persistence_location {dir}/\nlog_dest file {dir}/mosquitto.log\nlog_type all\n",
                extra = self.extra,
                port = self.port,
                dir = self.dir.path().display(),
            ),
        )
        .expect("write mosquitto.conf");
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start mosquitto ({e}). The tests need the real broker: \
                     install it with `apt-get install -y mosquitto` (Debian), or run `tests/run`, \
                     which does"
                )
            });
        // Ours is up when its own log says it listens on the port (a connect alone could reach
        // another process that took the port first) and it is still running.
        let listening = format!("listen socket on port {}", self.port);
        let up = wait_for("mosquitto to listen or exit", DEADLINE, || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Some(false);
            }
            let log = self.log();
            let started = log.rsplit(" starting").next().unwrap_or("");
            (started.contains(&listening) && TcpStream::connect(("127.0.0.1", self.port)).is_ok())
                .then_some(true)
        })
        .await;
        if up {
            self.child = Some(child);
        }
        up
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker (SIGTERM, so it saves its sessions), as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn().await,
            "mosquitto did not restart; its log:\n{}",
            self.log()
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default();
            eprintln!("---- mosquitto log ----\n{log}");
        }
    }
}

impl Broker {
    /// What mosquitto wrote into its log so far.
    pub fn log_text(&self) -> String {
        self.log()
    }
}
