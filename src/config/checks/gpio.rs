//! The devices on the Pi's GPIO header: `[[gpio_relay]]`s, `[[wiegand]]` readers and
//! `[[gpio_panel]]`s. Every pin is used once in the whole config.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::{RawGpioPanel, RawGpioRelay, RawWiegand};
use crate::config::{
    ConfigError, GpioPanelConfig, GpioRelayConfig, LaneConfig, WiegandFormat, WiegandReader,
};

impl Checker<'_> {
    pub(super) fn gpio_relays(
        &self,
        raw: Vec<Spanned<RawGpioRelay>>,
        names: &mut HashSet<String>,
        pins: &mut BTreeMap<u8, String>,
    ) -> Result<Vec<GpioRelayConfig>, ConfigError> {
        let mut gpio_relays = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let span = r.span();
            let r = r.into_inner();
            let key = |k: &str| format!("gpio_relay[{i}].{k}");
            self.check_device(&span, &key("name"), &r.name, names)?;
            let mut lanes = Vec::new();
            for (j, l) in r.lane.iter().enumerate() {
                let k = |what: &str| format!("gpio_relay[{i}].lane[{j}].{what}");
                self.check_pin(&span, &k("entry"), l.entry, pins)?;
                self.check_pin(&span, &k("exit"), l.exit, pins)?;
                if lanes.iter().any(|(c, _, _)| *c == l.channel) {
                    return self.err(span, &k("channel"), format!("channel {} twice", l.channel));
                }
                lanes.push((l.channel, l.entry, l.exit));
            }
            if let Some(f) = r.fire {
                self.check_pin(&span, &key("fire"), f, pins)?;
            }
            gpio_relays.push(GpioRelayConfig {
                name: r.name,
                active_low: r.active_low,
                lanes,
                fire: r.fire,
                fire_active_low: r.fire_active_low,
            });
        }
        Ok(gpio_relays)
    }

    pub(super) fn wiegand(
        &self,
        raw: Vec<Spanned<RawWiegand>>,
        names: &mut HashSet<String>,
        pins: &mut BTreeMap<u8, String>,
        lanes: &BTreeMap<u16, LaneConfig>,
    ) -> Result<Vec<WiegandReader>, ConfigError> {
        let mut wiegand = Vec::new();
        for (i, w) in raw.into_iter().enumerate() {
            let span = w.span();
            let w = w.into_inner();
            let key = |k: &str| format!("wiegand[{i}].{k}");
            self.check_device(&span, &key("name"), &w.name, names)?;
            self.check_pin(&span, &key("d0"), w.d0, pins)?;
            self.check_pin(&span, &key("d1"), w.d1, pins)?;
            if !lanes.contains_key(&w.lane) {
                return self.err(span, &key("lane"), format!("no [[lane]] has id {}", w.lane));
            }
            let mut formats = Vec::new();
            for f in &w.formats {
                formats.push(match f {
                    26 => WiegandFormat::W26,
                    34 => WiegandFormat::W34,
                    other => {
                        return self.err(
                            span,
                            &key("formats"),
                            format!("{other} bits is not a known format (26 or 34)"),
                        );
                    }
                });
            }
            if formats.is_empty() {
                return self.err(span, &key("formats"), "must name at least one format");
            }
            if !(5..=200).contains(&w.frame_timeout_ms) {
                return self.err(span, &key("frame_timeout_ms"), "must be 5..=200");
            }
            wiegand.push(WiegandReader {
                name: w.name,
                d0: w.d0,
                d1: w.d1,
                lane: w.lane,
                direction: w.direction,
                formats,
                frame_timeout: Duration::from_millis(w.frame_timeout_ms),
            });
        }
        Ok(wiegand)
    }

    pub(super) fn gpio_panels(
        &self,
        raw: Vec<Spanned<RawGpioPanel>>,
        names: &mut HashSet<String>,
        pins: &mut BTreeMap<u8, String>,
        lanes: &BTreeMap<u16, LaneConfig>,
    ) -> Result<Vec<GpioPanelConfig>, ConfigError> {
        let mut gpio_panels = Vec::new();
        for (i, p) in raw.into_iter().enumerate() {
            let span = p.span();
            let p = p.into_inner();
            let key = |k: &str| format!("gpio_panel[{i}].{k}");
            self.check_device(&span, &key("name"), &p.name, names)?;
            self.check_ms(&span, &key("poll_ms"), p.poll_ms, 5, 1_000)?;
            let mut panel_lanes = Vec::new();
            for (j, l) in p.lane.iter().enumerate() {
                let k = |what: &str| format!("gpio_panel[{i}].lane[{j}].{what}");
                if !lanes.contains_key(&l.id) {
                    return self.err(span, &k("id"), format!("no [[lane]] has id {}", l.id));
                }
                self.check_pin(&span, &k("entry"), l.entry, pins)?;
                self.check_pin(&span, &k("exit"), l.exit, pins)?;
                panel_lanes.push((l.id, l.entry, l.exit));
            }
            let l = &p.lamps;
            for (what, pin) in [
                ("hold_open", p.hold_open),
                ("lockdown", p.lockdown),
                ("emergency", p.emergency),
                ("reset", p.reset),
                ("lamps.normal", l.normal),
                ("lamps.lockdown", l.lockdown),
                ("lamps.emergency", l.emergency),
                ("lamps.offline", l.offline),
            ] {
                if let Some(pin) = pin {
                    self.check_pin(&span, &key(what), pin, pins)?;
                }
            }
            gpio_panels.push(GpioPanelConfig {
                name: p.name,
                active_low: p.active_low,
                poll: Duration::from_millis(p.poll_ms),
                lanes: panel_lanes,
                hold_open: p.hold_open,
                lockdown: p.lockdown,
                emergency: p.emergency,
                reset: p.reset,
                lamps: [l.normal, l.lockdown, l.emergency, l.offline],
            });
        }
        Ok(gpio_panels)
    }

    /// A BCM GPIO number of the Pi's header (0..=27), used once in the whole config.
    fn check_pin(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        pin: u8,
        pins: &mut BTreeMap<u8, String>,
    ) -> Result<(), ConfigError> {
        if pin > 27 {
            return self.err(
                span.clone(),
                key,
                format!("GPIO {pin} is not on the header (BCM 0..=27)"),
            );
        }
        if let Some(other) = pins.insert(pin, key.to_string()) {
            return self.err(
                span.clone(),
                key,
                format!("GPIO {pin} is already used by {other}"),
            );
        }
        Ok(())
    }
}
