//! The devices' health, as status shows it: `"ok"`, `"timeout"`, `"disconnected"`, …
//! Device tasks write; the status publisher reads, and watches for changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Clone)]
pub struct Health {
    states: Arc<Mutex<BTreeMap<String, String>>>,
    /// Bumped on every change. A `watch` (not a `Notify`) so that a change made while nobody
    /// was waiting is still seen by the next `changed()`.
    version: Arc<watch::Sender<u64>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            states: Arc::default(),
            version: Arc::new(watch::channel(0).0),
        }
    }
}

impl Health {
    /// Records `device`'s state; returns the previous state when it changed.
    pub fn set(&self, device: &str, state: &str) -> Option<Option<String>> {
        let mut m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let prev = m.insert(device.to_string(), state.to_string());
        if prev.as_deref() == Some(state) {
            return None;
        }
        drop(m);
        self.version.send_modify(|v| *v += 1);
        Some(prev)
    }

    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A receiver whose `changed()` resolves after each change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
