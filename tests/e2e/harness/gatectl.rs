//! The real `gatectl` binary.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::*;

/// What a finished `gatectl` run printed, and its exit code.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `gatectl` binary against a harness broker, as site `hq`, signing with the
/// test admin key (which every harness gate trusts as `ops-test`).
pub struct Gatectl {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    broker_port: u16,
}

impl Gatectl {
    pub fn new(broker_port: u16) -> Gatectl {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("ops-test.key");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .expect("create key file");
        std::io::Write::write_all(&mut f, admin().to_file_text().as_bytes()).expect("write key");
        Gatectl {
            dir,
            key,
            broker_port,
        }
    }

    /// A file in the run's own directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `gatectl --broker … --site hq --key … ARGS`, with no GATECTL_* from the environment.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatectl"));
        c.arg("--broker")
            .arg(format!("127.0.0.1:{}", self.broker_port))
            .args(["--site", "hq", "--key"])
            .arg(&self.key)
            .args(args)
            .env_remove("GATECTL_BROKER")
            .env_remove("GATECTL_SITE")
            .env_remove("GATECTL_KEY")
            .env_remove("GATECTL_ROOT")
            .env_remove("GATECTL_TRUST")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs to the end (failing the test if that takes over a minute).
    pub async fn run(&self, args: &[&str]) -> Ran {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("gatectl {args:?} did not finish within 60 s"))
            .expect("run gatectl");
        let ran = Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("$ gatectl {}\n{ran:#?}", args.join(" "));
        ran
    }

    /// Starts `gatectl tail ARGS` and returns once it says it is listening: whatever is
    /// published from then on is its to print.
    pub async fn start_tail(&self, args: &[&str]) -> Tail {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = self
            .command(&[&["tail"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gatectl tail");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut seen = String::new();
        let listening = tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(l)) = lines.next_line().await {
                seen.push_str(&l);
                seen.push('\n');
                if l.contains("listening on") {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(listening, Ok(true)),
            "gatectl tail did not start listening; its stderr:\n{seen}"
        );
        // Keep draining stderr so the child never blocks on a full pipe.
        let drain = tokio::spawn(async move {
            let mut rest = seen;
            while let Ok(Some(l)) = lines.next_line().await {
                rest.push_str(&l);
                rest.push('\n');
            }
            rest
        });
        Tail { child, drain }
    }
}

/// A running `gatectl tail`.
pub struct Tail {
    child: tokio::process::Child,
    drain: tokio::task::JoinHandle<String>,
}

impl Tail {
    /// Waits for it to exit on its own (`--count`, `--timeout`).
    pub async fn finish(mut self) -> Ran {
        use tokio::io::AsyncReadExt as _;
        let mut stdout = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut stdout))
                .await
                .expect("gatectl tail ended within 60 s")
                .expect("read tail stdout");
        }
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("gatectl tail exited")
            .expect("wait for tail");
        let stderr = self.drain.await.unwrap_or_default();
        let ran = Ran {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        };
        eprintln!("$ gatectl tail\n{ran:#?}");
        ran
    }
}
