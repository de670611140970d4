//! A gate that cannot start says so to the centre (issue 22, items 2, 3, 7). When the store
//! cannot be opened (a read-only file system, an empty or unusable database file, a place
//! where it cannot be made), `gated run` exits non-zero and systemd starts it again every few
//! seconds, for ever: without this, the centre would only see a gate that never connects.
//!
//! Before it exits, the gate connects once under its uplink identity (client id, TLS, login;
//! without the last will, which would replace what it publishes), and publishes:
//!
//! - a retained status `{"online":false,"state":"cannot_start","error":…,"ts","version"}`,
//!   every time (it is the gate's state, and cheap);
//! - a `store_error` alarm marked `"unrecorded": true` without `seq` (`direct::Unrecorded`),
//!   but not on every start: the last alarmed error is remembered in a small file in
//!   `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=gated`, kept across restarts by
//!   `RuntimeDirectoryPreserve=restart`) and alarmed again only when the error changes or an
//!   hour has passed. Without a writable runtime directory every start alarms.
//!
//! It waits for the PUBACKs at most `DEADLINE`, so that a broker that cannot be reached holds
//! the exit up by a few seconds at most. It never retries: the next start does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use serde::{Deserialize, Serialize};

use super::direct::Unrecorded;
use super::transport::Secrets;
use crate::config::MqttConfig;
use crate::core::UnixMs;
use gated_contract::{CANNOT_START, CannotStart, MAX_DETAIL_BYTES, Topics, bounded, format_ts};

/// How long the report may take, connecting included.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// The same error is alarmed again after this long.
pub const REALARM_AFTER: Duration = Duration::from_secs(3600);
/// The file in `$RUNTIME_DIRECTORY` that remembers the last alarmed error.
pub const MEMORY_FILE: &str = "start-alarm.json";

/// The retained status of a gate that cannot start.
pub fn status_body(error: &str, now: UnixMs, demo: bool) -> Vec<u8> {
    let s = CannotStart {
        online: false,
        state: CANNOT_START.to_string(),
        error: bounded(error, MAX_DETAIL_BYTES).into_owned(),
        ts: format_ts(now),
        version: env!("CARGO_PKG_VERSION").to_string(),
        demo,
    };
    serde_json::to_vec(&s).expect("a struct of strings always serializes")
}

/// The last error alarmed, and when.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Alarmed {
    error: String,
    at: UnixMs,
}

/// Where the last alarmed error is remembered: `$RUNTIME_DIRECTORY` (systemd sets it; with
/// several directories, the first). None outside systemd: every start alarms.
pub fn memory_from_env() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = std::env::split_paths(&dirs).next()?;
    (!first.as_os_str().is_empty()).then(|| first.join(MEMORY_FILE))
}

/// Whether `error` is to be alarmed now, given what `memory` remembers.
fn due(memory: Option<&Path>, error: &str, now: UnixMs) -> bool {
    let Some(last) = memory
        .and_then(|m| std::fs::read(m).ok())
        .and_then(|b| serde_json::from_slice::<Alarmed>(&b).ok())
    else {
        return true;
    };
    let hour = REALARM_AFTER.as_millis() as UnixMs;
    // A clock set back (`at` in the future) alarms too rather than staying quiet for long.
    last.error != error || now < last.at || now - last.at >= hour
}

/// Remembers that `error` was alarmed at `now`. A failure is logged: it only means the next
/// start alarms again.
fn remember(memory: &Path, error: &str, now: UnixMs) {
    let body = serde_json::to_vec(&Alarmed {
        error: error.to_string(),
        at: now,
    })
    .expect("serializes");
    let tmp = memory.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, memory)) {
        tracing::warn!(file = %memory.display(), error = %e, "cannot remember the start alarm; the next start alarms again");
    }
}

/// Forgets the last alarmed error: called once a start succeeded, so that the next failure is
/// a new episode and alarmed at once.
pub fn forget(memory: Option<&Path>) {
    if let Some(m) = memory
        && let Err(e) = std::fs::remove_file(m)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %m.display(), error = %e, "cannot remove the start alarm memory");
    }
}

/// What the report got through.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub status_acked: bool,
    /// None: not due (the same error was alarmed within the hour).
    pub alarm_acked: Option<bool>,
}

/// Tells the centre that this gate cannot start because of `error` (see the module). Returns
/// within `DEADLINE` whatever the broker does.
pub async fn report(
    cfg: &MqttConfig,
    secrets: &Secrets,
    topics: &Topics,
    error: &str,
    memory: Option<&Path>,
) -> Outcome {
    let now = crate::wall::now_ms();
    let alarm = due(memory, error, now).then(|| {
        let detail = format!(
            "gated cannot start: {error}. It exits and systemd starts it again every few \
             seconds; status shows `cannot_start` until it runs"
        );
        Unrecorded::new("store_error", "store", &detail, now)
    });
    let mut outcome = Outcome {
        status_acked: false,
        alarm_acked: alarm.as_ref().map(|_| false),
    };
    let publish = async {
        let (client, mut el) = AsyncClient::new(super::link::report_options(cfg, secrets), 8);
        // Queued before the connection is made; published once it is.
        let mut queued = vec![Sent::Status];
        let status = status_body(error, now, cfg.demo);
        let _ = client.try_publish(topics.status(), QoS::AtLeastOnce, true, status);
        if let Some(a) = &alarm {
            let _ = client.try_publish(
                topics.alarm(),
                QoS::AtLeastOnce,
                false,
                a.body(topics, cfg.demo),
            );
            queued.push(Sent::Alarm);
        }
        queued.reverse(); // popped from the end, oldest first
        let mut inflight = std::collections::HashMap::new();
        let mut left = queued.len();
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack)))
                    if ack.code != rumqttc::ConnectReturnCode::Success =>
                {
                    tracing::error!(code = ?ack.code, "start report: the broker refused the connection");
                    return;
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(what) = queued.pop() {
                        inflight.insert(pkid, what);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    match inflight.remove(&ack.pkid) {
                        Some(Sent::Status) => outcome.status_acked = true,
                        Some(Sent::Alarm) => outcome.alarm_acked = Some(true),
                        None => continue,
                    }
                    left -= 1;
                    if left == 0 {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(broker = %format!("{}:{}", cfg.host, cfg.port), error = %e, "start report: cannot reach the broker");
                    return;
                }
            }
        }
        // A clean DISCONNECT, sent before the loop is dropped.
        let _ = client.try_disconnect();
        while let Ok(ev) = el.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                return;
            }
        }
    };
    if tokio::time::timeout(DEADLINE, publish).await.is_err() {
        tracing::error!(
            "start report: the broker did not acknowledge within {} s",
            DEADLINE.as_secs()
        );
    }
    if outcome.alarm_acked == Some(true)
        && let Some(m) = memory
    {
        remember(m, error, now);
    }
    outcome
}

#[derive(Debug, Clone, Copy)]
enum Sent {
    Status,
    Alarm,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_error_is_alarmed_again_only_after_an_hour_or_when_it_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path().join(MEMORY_FILE);
        let hour = REALARM_AFTER.as_millis() as UnixMs;
        let t0: UnixMs = 1_800_000_000_000;
        assert!(due(Some(&m), "read-only", t0), "nothing remembered");
        remember(&m, "read-only", t0);
        assert!(!due(Some(&m), "read-only", t0 + 3_000), "the same error");
        assert!(due(Some(&m), "empty", t0 + 3_000), "another error");
        assert!(due(Some(&m), "read-only", t0 + hour), "an hour later");
        assert!(due(Some(&m), "read-only", t0 - 1), "the clock set back");
        forget(Some(&m));
        assert!(
            due(Some(&m), "read-only", t0 + 3_000),
            "forgotten after a start"
        );
        assert!(due(None, "read-only", t0), "no memory: every start");
    }

    #[test]
    fn the_status_of_a_gate_that_cannot_start_says_why() {
        let long = "x".repeat(4 * MAX_DETAIL_BYTES);
        let v: serde_json::Value =
            serde_json::from_slice(&status_body(&long, 0, false)).expect("json");
        assert_eq!(
            (&v["online"], &v["state"]),
            (&false.into(), &CANNOT_START.into())
        );
        assert!(v["error"].as_str().expect("error").len() < MAX_DETAIL_BYTES + 64);
        assert!(v["ts"].is_string() && v["version"].is_string() && v.get("demo").is_none());
    }
}
