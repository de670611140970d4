//! The devices' health, as status shows it: `"ok"`, `"timeout"`, `"disconnected"`, …
//! Device tasks report each observation; the status publisher reads, and watches for changes.
//!
//! Hysteresis keeps a flapping device from flooding the outbox with alarms (G4): a device is
//! faulty at its first error (one `device_fault` per episode, whatever kinds of error follow),
//! and recovered only after it has answered without error for `RECOVERY_HOLD`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a faulty device must answer without error before it counts as recovered.
pub const RECOVERY_HOLD: Duration = Duration::from_secs(3);

/// One device's health.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceHealth {
    Ok,
    /// Faulty; `state` is the last error's kind; `answering_since` is when the current run of
    /// good answers began, if one has.
    Faulty {
        state: &'static str,
        answering_since: Option<Instant>,
    },
}

impl DeviceHealth {
    pub fn state(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Faulty { state, .. } => state,
        }
    }
}

/// What an observation calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Fault,
    Recovered,
}

/// The pure step: previous health (None = never seen), an observation (`Err(kind)` for a
/// failure), and now. Returns the new health and the alarm to raise, if any.
pub fn step(
    prev: Option<&DeviceHealth>,
    observed: Result<(), &'static str>,
    now: Instant,
) -> (DeviceHealth, Transition) {
    match (prev, observed) {
        (None | Some(DeviceHealth::Ok), Ok(())) => (DeviceHealth::Ok, Transition::None),
        (None | Some(DeviceHealth::Ok), Err(state)) => (
            DeviceHealth::Faulty {
                state,
                answering_since: None,
            },
            Transition::Fault,
        ),
        (Some(DeviceHealth::Faulty { .. }), Err(state)) => (
            DeviceHealth::Faulty {
                state,
                answering_since: None,
            },
            Transition::None,
        ),
        (
            Some(DeviceHealth::Faulty {
                state,
                answering_since,
            }),
            Ok(()),
        ) => {
            let since = answering_since.unwrap_or(now);
            if now.duration_since(since) >= RECOVERY_HOLD {
                (DeviceHealth::Ok, Transition::Recovered)
            } else {
                let health = DeviceHealth::Faulty {
                    state,
                    answering_since: Some(since),
                };
                (health, Transition::None)
            }
        }
    }
}

/// The state shown for a device whose `device_fault` was still open when gated last stopped,
/// until its first observation since the start says what it is now.
pub const FAULT_BEFORE_RESTART: &str = "fault_before_restart";

#[derive(Clone)]
pub struct Health {
    devices: Arc<Mutex<BTreeMap<String, DeviceHealth>>>,
    /// Devices whose `device_fault` the store holds open from before this start, not observed
    /// since. Their first observation continues the episode: a device still faulty raises no
    /// second `device_fault`, one that answers again raises the `device_recovered` that closes
    /// it. Kept apart from `devices` so that a device no longer configured is not shown.
    restored: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// Bumped on every change of a shown state. A `watch` (not a `Notify`) so that a change
    /// made while nobody was waiting is still seen by the next `changed()`.
    version: Arc<watch::Sender<u64>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            devices: Arc::default(),
            restored: Arc::default(),
            version: Arc::new(watch::channel(0).0),
        }
    }
}

impl Health {
    /// Devices whose fault was open when gated last stopped (read from the store at start,
    /// before any device task runs).
    pub fn restore_faults(&self, devices: impl IntoIterator<Item = String>) {
        self.restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(devices);
    }

    /// Records an observation of `device`; returns the alarm it calls for.
    pub fn observe(&self, device: &str, observed: Result<(), &'static str>) -> Transition {
        let mut m = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let was_open = !m.contains_key(device)
            && self
                .restored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(device);
        let open = DeviceHealth::Faulty {
            state: FAULT_BEFORE_RESTART,
            answering_since: None,
        };
        let prev = if was_open { Some(&open) } else { m.get(device) };
        let before = prev.map(DeviceHealth::state);
        let (next, transition) = step(prev, observed, Instant::now());
        let changed = before != Some(next.state());
        m.insert(device.to_string(), next);
        drop(m);
        if changed {
            self.version.send_modify(|v| *v += 1);
        }
        transition
    }

    /// Sets a component's state directly, without hysteresis (the broker link, the store).
    pub fn set(&self, device: &str, state: &'static str) {
        let health = match state {
            "ok" => DeviceHealth::Ok,
            s => DeviceHealth::Faulty {
                state: s,
                answering_since: None,
            },
        };
        let mut m = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let changed = m.get(device).map(DeviceHealth::state) != Some(state);
        m.insert(device.to_string(), health);
        drop(m);
        if changed {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// Whether `device` is known and `ok`, without copying the whole map.
    pub fn is_ok(&self, device: &str) -> bool {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device)
            .is_some_and(|h| *h == DeviceHealth::Ok)
    }

    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.state().to_string()))
            .collect()
    }

    /// A receiver whose `changed()` resolves after each change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fault_alarm_per_episode_and_recovery_after_the_hold() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (h, t) = step(None, Ok(()), at(0));
        assert_eq!((h.state(), t), ("ok", Transition::None));
        let (h, t) = step(Some(&h), Err("timeout"), at(10));
        assert_eq!((h.state(), t), ("timeout", Transition::Fault));
        // Flapping: errors of other kinds and short good runs raise nothing.
        let (h, t) = step(Some(&h), Err("disconnected"), at(20));
        assert_eq!((h.state(), t), ("disconnected", Transition::None));
        let (h, t) = step(Some(&h), Ok(()), at(30));
        assert_eq!((h.state(), t), ("disconnected", Transition::None));
        let (h, t) = step(Some(&h), Err("timeout"), at(2_000));
        assert_eq!(t, Transition::None, "a new error restarts the hold");
        let (h, _) = step(Some(&h), Ok(()), at(2_010));
        let (h, t) = step(Some(&h), Ok(()), at(4_000));
        assert_eq!((h.state(), t), ("timeout", Transition::None));
        let (h, t) = step(Some(&h), Ok(()), at(2_010 + 3_000));
        assert_eq!((h.state(), t), ("ok", Transition::Recovered));
    }

    #[test]
    fn a_fault_open_before_a_restart_continues_its_episode() {
        let h = Health::default();
        h.restore_faults(["reader1".to_string(), "relay1".to_string()]);
        assert!(h.snapshot().is_empty(), "not shown before it is observed");
        // Still faulty: no second `device_fault`.
        assert_eq!(h.observe("reader1", Err("timeout")), Transition::None);
        assert_eq!(h.snapshot()["reader1"], "timeout");
        // Fine again: the hold, then the `device_recovered` that closes the open fault.
        assert_eq!(h.observe("relay1", Ok(())), Transition::None);
        assert_eq!(h.snapshot()["relay1"], FAULT_BEFORE_RESTART);
        let (state, t) = step(
            Some(&DeviceHealth::Faulty {
                state: FAULT_BEFORE_RESTART,
                answering_since: Some(Instant::now() - RECOVERY_HOLD),
            }),
            Ok(()),
            Instant::now(),
        );
        assert_eq!((state.state(), t), ("ok", Transition::Recovered));
        // A device never faulty is unaffected.
        assert_eq!(h.observe("reader2", Ok(())), Transition::None);
    }

    #[test]
    fn a_device_down_at_start_is_a_fault() {
        let (h, t) = step(None, Err("disconnected"), Instant::now());
        assert_eq!((h.state(), t), ("disconnected", Transition::Fault));
    }
}
