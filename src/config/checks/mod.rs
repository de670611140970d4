//! The checks: raw sections (`raw.rs`) in, the plain data of `Config` out. Each section's
//! checks are in a file of their own; this one runs them in a fixed order and holds what they
//! share. The order is part of the behaviour: the first error is the one reported, and later
//! sections need earlier ones (lanes name relays; readers, panels and Wiegand readers name
//! lanes).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawConfig, default_max_jump};
use super::{ClockConfig, Config, ConfigError, SerialLink, StoreConfig, SyncSource, is_safe_name};
use crate::core::Policy;

mod gpio;
mod lanes;
mod modbus;
mod mqtt;
mod policy;

/// The RS-485 buses seen so far, by path: their settings, the device that named the bus first,
/// and the units on it.
type Buses = BTreeMap<PathBuf, (SerialLink, String, HashSet<u8>)>;

/// Checks what `file` (whose text is `text`) says into a `Config`, or the first error.
pub(super) fn check(file: &str, text: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    Checker { file, text }.check(raw)
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
}

impl Checker<'_> {
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        let line = self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1;
        Err(ConfigError::Invalid {
            file: self.file.to_string(),
            line,
            key: key.to_string(),
            message: message.into(),
        })
    }

    fn check(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let gspan = raw.gate.span();
        let gate = raw.gate.into_inner();
        for (key, v) in [("gate.site", &gate.site), ("gate.gate", &gate.gate)] {
            if !is_safe_name(v) {
                return self.err(
                    gspan.clone(),
                    key,
                    format!("`{v}` must be 1..=64 of [A-Za-z0-9_-]"),
                );
            }
        }

        let sspan = raw.store.span();
        let store = raw.store.into_inner();
        if !(1000..=1_000_000_000_000).contains(&store.outbox_quota) {
            return self.err(sspan, "store.outbox_quota", "must be 1000..=10^12 events");
        }

        let mqtt_span = raw.mqtt.as_ref().map(|m| m.span()).unwrap_or(0..0);
        let mqtt = self.mqtt(raw.mqtt, &gate)?;
        let trust = self.trust(raw.trust, mqtt.is_some(), mqtt_span)?;
        let (mut policy, peers, visitor_entry) = self.policy(raw.policy, &gate, gspan)?;

        // A device name is used once in the whole config, a bus unit once on its bus, and a GPIO
        // pin once.
        let mut names = HashSet::new();
        let mut buses = Buses::new();
        let mut pins = BTreeMap::new();
        let relays = self.relays(raw.relay, &mut names, &mut buses)?;
        let gpio_relays = self.gpio_relays(raw.gpio_relay, &mut names, &mut pins)?;
        let lanes = self.lanes(raw.lane, &relays, &gpio_relays, &mut policy)?;
        let snapshot = self.snapshot(raw.snapshot)?;
        let readers = self.readers(
            raw.reader, &mut names, &mut buses, &policy, &snapshot, &lanes,
        )?;
        let panels = self.panels(raw.panel, &mut names, &mut buses, &lanes)?;
        let wiegand = self.wiegand(raw.wiegand, &mut names, &mut pins, &lanes)?;
        let gpio_panels = self.gpio_panels(raw.gpio_panel, &mut names, &mut pins, &lanes)?;

        let clock = match raw.clock {
            None => ClockConfig {
                sync: SyncSource::File(SyncSource::SYSTEMD.into()),
                max_jump: Duration::from_secs(default_max_jump()),
            },
            Some(c) => {
                let span = c.span();
                let c = c.into_inner();
                let sync = match (c.sync.as_str(), c.sync_file) {
                    ("none", None) => SyncSource::None,
                    ("systemd", None) => SyncSource::File(SyncSource::SYSTEMD.into()),
                    ("file", Some(f)) => SyncSource::File(f),
                    ("file", None) => {
                        return self.err(
                            span,
                            "clock.sync_file",
                            "`sync = \"file\"` needs a sync_file",
                        );
                    }
                    (_, Some(_)) => {
                        return self.err(
                            span,
                            "clock.sync_file",
                            "goes only with `sync = \"file\"`",
                        );
                    }
                    (other, None) => {
                        return self.err(
                            span,
                            "clock.sync",
                            format!("`{other}` is not one of systemd, file, none"),
                        );
                    }
                };
                if !(1..=86_400).contains(&c.max_jump_s) {
                    return self.err(span, "clock.max_jump_s", "must be 1..=86400 seconds");
                }
                ClockConfig {
                    sync,
                    max_jump: Duration::from_secs(c.max_jump_s),
                }
            }
        };

        Ok(Config {
            clock,
            peers,
            visitor_entry,
            snapshot,
            panels,
            wiegand,
            gpio_panels,
            gpio_relays,
            site: gate.site,
            gate: gate.gate,
            store: StoreConfig {
                path: store.path,
                outbox_quota: store.outbox_quota,
            },
            mqtt,
            trust,
            policy,
            relays,
            readers,
            lanes,
        })
    }

    fn check_device(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        name: &str,
        names: &mut HashSet<String>,
    ) -> Result<(), ConfigError> {
        if !is_safe_name(name) {
            return self.err(
                span.clone(),
                key,
                format!("`{name}` must be 1..=64 of [A-Za-z0-9_-]"),
            );
        }
        if !names.insert(name.to_string()) {
            return self.err(
                span.clone(),
                key,
                format!("device name `{name}` is used twice"),
            );
        }
        Ok(())
    }

    fn check_schedule(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        name: &str,
        policy: &Policy,
    ) -> Result<(), ConfigError> {
        if !policy.schedules.contains_key(name) {
            return self.err(
                span.clone(),
                key,
                format!("no [policy.schedule.{name}] is defined"),
            );
        }
        Ok(())
    }

    fn check_ms(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        v: u64,
        min: u64,
        max: u64,
    ) -> Result<(), ConfigError> {
        if !(min..=max).contains(&v) {
            return self.err(span.clone(), key, format!("{v} is outside {min}..={max}"));
        }
        Ok(())
    }
}
