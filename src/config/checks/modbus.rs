//! The Modbus devices: `[[relay]]` boards, `[[reader]]`s (and `[snapshot]`, what face terminals
//! may send), `[[panel]]`s, and how each is reached (TCP, or a unit on an RS-485 bus).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use toml::Spanned;

use super::{Buses, Checker};
use crate::config::raw::{RawPanel, RawReader, RawRelay, RawSerial, RawSnapshot};
use crate::config::{
    ConfigError, LaneConfig, Link, PanelConfig, ReaderConfig, RelayConfig, SerialLink,
    SnapshotConfig,
};
use crate::core::Policy;

impl Checker<'_> {
    pub(super) fn relays(
        &self,
        raw: Vec<Spanned<RawRelay>>,
        names: &mut HashSet<String>,
        buses: &mut Buses,
    ) -> Result<Vec<RelayConfig>, ConfigError> {
        let mut relays = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let span = r.span();
            let r = r.into_inner();
            let key = |k: &str| format!("relay[{i}].{k}");
            self.check_device(&span, &key("name"), &r.name, names)?;
            let link = self.check_link(&span, &key(""), r.address, r.serial, r.unit, buses)?;
            self.check_ms(&span, &key("timeout_ms"), r.timeout_ms, 10, 60_000)?;
            self.check_rtu_timeout(&span, &key("timeout_ms"), &link, r.timeout_ms)?;
            if !(1..=3600).contains(&r.held_open_s) {
                return self.err(span, &key("held_open_s"), "must be 1..=3600");
            }
            if ![6, 16].contains(&r.write_function) {
                return self.err(
                    span,
                    &key("write_function"),
                    format!(
                        "{} is not 6 (write single register) or 16 (write multiple registers)",
                        r.write_function
                    ),
                );
            }
            // Lanes are channels 0..=31: a block of 64 registers (32 doors) must fit below 65536,
            // so that no lane's address wraps around to another register.
            let g = &r.registers;
            for (what, base, n) in [
                ("pulse_base", Some(g.pulse_base), 64u32),
                ("coil_base", Some(g.coil_base), 64),
                ("button_base", Some(g.button_base), 64),
                ("counter_base", Some(g.counter_base), 64),
                ("feedback_base", g.feedback_base, 64),
                ("door_base", g.door_base, 32),
            ] {
                if base.is_some_and(|b| u32::from(b) + n > 65_536) {
                    return self.err(
                        span,
                        &key(&format!("registers.{what}")),
                        format!("must leave room for {n} registers below 65536"),
                    );
                }
            }
            relays.push(RelayConfig {
                name: r.name,
                link,
                unit: r.unit,
                timeout: Duration::from_millis(r.timeout_ms),
                pulse_base: r.registers.pulse_base,
                coil_base: r.registers.coil_base,
                button_base: r.registers.button_base,
                fire_input: r.registers.fire_input,
                tamper_input: r.registers.tamper_input,
                passage_sensor: r.passage_sensor,
                counter_base: r.registers.counter_base,
                feedback_base: r.registers.feedback_base,
                door_base: r.registers.door_base,
                held_open: Duration::from_secs(r.held_open_s),
                fc16_writes: r.write_function == 16,
            });
        }
        Ok(relays)
    }

    pub(super) fn snapshot(
        &self,
        raw: Option<Spanned<RawSnapshot>>,
    ) -> Result<SnapshotConfig, ConfigError> {
        Ok(match raw {
            None => SnapshotConfig::default(),
            Some(sn) => {
                let span = sn.span();
                let sn = sn.into_inner();
                // The data block holds at most (65536 - 1000) registers of two bytes.
                if !(1024..=130_000).contains(&sn.max_bytes) {
                    return self.err(span, "snapshot.max_bytes", "must be 1024..=130000");
                }
                for (k, v) in [("max_width", sn.max_width), ("max_height", sn.max_height)] {
                    if !(16..=16_384).contains(&v) {
                        return self.err(span, &format!("snapshot.{k}"), "must be 16..=16384");
                    }
                }
                if !(16..=2048).contains(&sn.thumb_px) {
                    return self.err(span, "snapshot.thumb_px", "must be 16..=2048");
                }
                if !(1..=100).contains(&sn.jpeg_quality) {
                    return self.err(span, "snapshot.jpeg_quality", "must be 1..=100");
                }
                if sn.keep == 0 {
                    return self.err(span, "snapshot.keep", "must be at least 1");
                }
                SnapshotConfig {
                    max_bytes: sn.max_bytes,
                    max_width: sn.max_width,
                    max_height: sn.max_height,
                    thumb_px: sn.thumb_px,
                    jpeg_quality: sn.jpeg_quality,
                    keep: sn.keep,
                }
            }
        })
    }

    /// `policy` bounds a reader's poll (its `max_swipe_age`), `snapshot` the data block of a
    /// face terminal's snapshots; every reader names one of `lanes`.
    pub(super) fn readers(
        &self,
        raw: Vec<Spanned<RawReader>>,
        names: &mut HashSet<String>,
        buses: &mut Buses,
        policy: &Policy,
        snapshot: &SnapshotConfig,
        lanes: &BTreeMap<u16, LaneConfig>,
    ) -> Result<Vec<ReaderConfig>, ConfigError> {
        let mut readers = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let span = r.span();
            let r = r.into_inner();
            let key = |k: &str| format!("reader[{i}].{k}");
            self.check_device(&span, &key("name"), &r.name, names)?;
            let link = self.check_link(&span, &key(""), r.address, r.serial, r.unit, buses)?;
            self.check_ms(&span, &key("poll_ms"), r.poll_ms, 5, 10_000)?;
            self.check_ms(&span, &key("timeout_ms"), r.timeout_ms, 10, 60_000)?;
            self.check_rtu_timeout(&span, &key("timeout_ms"), &link, r.timeout_ms)?;
            // A swipe's age counts from the last poll that found the mailbox empty: a reader
            // polled slower than that would have every swipe refused `stale_swipe`.
            if (r.poll_ms + r.timeout_ms) as i64 >= policy.max_swipe_age_ms {
                return self.err(
                    span,
                    &key("poll_ms"),
                    format!(
                        "poll_ms + timeout_ms ({} ms) must be below policy.max_swipe_age ({} ms), \
                         or every swipe would be stale before it is read",
                        r.poll_ms + r.timeout_ms,
                        policy.max_swipe_age_ms
                    ),
                );
            }
            if r.snapshots && matches!(link, Link::Rtu(_)) {
                return self.err(
                    span,
                    &key("snapshots"),
                    "snapshots need a network link (`address`): read over RS-485 they would \
                     hold the bus for minutes",
                );
            }
            // The largest snapshot allowed must fit in the data block below 65536.
            let words = snapshot.max_bytes.div_ceil(2);
            if r.snapshots && usize::from(r.registers.snapshot_data) + words > 65_536 {
                return self.err(
                    span,
                    &key("registers.snapshot_data"),
                    format!(
                        "a block from input {} cannot hold [snapshot] max_bytes ({} bytes, two \
                         per register) below 65536",
                        r.registers.snapshot_data, snapshot.max_bytes
                    ),
                );
            }
            if !lanes.contains_key(&r.lane) {
                return self.err(span, &key("lane"), format!("no [[lane]] has id {}", r.lane));
            }
            readers.push(ReaderConfig {
                name: r.name,
                link,
                unit: r.unit,
                lane: r.lane,
                direction: r.direction,
                poll: Duration::from_millis(r.poll_ms),
                timeout: Duration::from_millis(r.timeout_ms),
                input_base: r.registers.input_base,
                ack_register: r.registers.ack_register,
                snapshots: r.snapshots,
                snapshot_select: r.registers.snapshot_select,
                snapshot_base: r.registers.snapshot_base,
                snapshot_data: r.registers.snapshot_data,
                snapshot_max_bytes: snapshot.max_bytes,
            });
        }
        Ok(readers)
    }

    /// A panel has two buttons for each of `lanes`.
    pub(super) fn panels(
        &self,
        raw: Vec<Spanned<RawPanel>>,
        names: &mut HashSet<String>,
        buses: &mut Buses,
        lanes: &BTreeMap<u16, LaneConfig>,
    ) -> Result<Vec<PanelConfig>, ConfigError> {
        let mut panels = Vec::new();
        for (i, p) in raw.into_iter().enumerate() {
            let span = p.span();
            let p = p.into_inner();
            let key = |k: &str| format!("panel[{i}].{k}");
            self.check_device(&span, &key("name"), &p.name, names)?;
            let link = self.check_link(&span, &key(""), p.address, p.serial, p.unit, buses)?;
            self.check_ms(&span, &key("poll_ms"), p.poll_ms, 5, 10_000)?;
            self.check_ms(&span, &key("timeout_ms"), p.timeout_ms, 10, 60_000)?;
            self.check_rtu_timeout(&span, &key("timeout_ms"), &link, p.timeout_ms)?;
            let r = p.registers;
            // Buttons are per lane id: 2n / 2n+1 from button_base.
            let buttons: Vec<u32> = lanes
                .keys()
                .flat_map(|&id| {
                    let at = u32::from(r.button_base) + 2 * u32::from(id);
                    [at, at + 1]
                })
                .collect();
            let modes = [r.hold_open, r.lockdown, r.emergency, r.reset].map(u32::from);
            let all: Vec<u32> = buttons.iter().copied().chain(modes).collect();
            let (lo, hi) = (all.iter().min(), all.iter().max());
            if hi.is_some_and(|hi| *hi > u32::from(u16::MAX))
                || lo.zip(hi).is_some_and(|(lo, hi)| hi - lo >= 2000)
            {
                return self.err(
                    span,
                    &key("registers"),
                    "the panel's inputs must be addresses below 65536 within 2000 of each other \
                     (one read): lane n's buttons are button_base + 2n and + 2n + 1",
                );
            }
            let mut seen = HashSet::new();
            if !all.iter().all(|a| seen.insert(*a)) {
                return self.err(
                    span,
                    &key("registers"),
                    "two panel inputs share an address (lane n's buttons are button_base + 2n \
                     and + 2n + 1; the mode buttons must lie elsewhere)",
                );
            }
            panels.push(PanelConfig {
                name: p.name,
                link,
                unit: p.unit,
                poll: Duration::from_millis(p.poll_ms),
                timeout: Duration::from_millis(p.timeout_ms),
                button_base: r.button_base,
                hold_open: r.hold_open,
                lockdown: r.lockdown,
                emergency: r.emergency,
                reset: r.reset,
                lamp_base: r.lamp_base,
            });
        }
        Ok(panels)
    }

    fn check_address(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        addr: &str,
    ) -> Result<(), ConfigError> {
        let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return self.err(span.clone(), key, format!("`{addr}` is not HOST:PORT"));
        }
        Ok(())
    }

    /// A device's `address` (TCP) or `serial` (RTU): exactly one. Devices on one serial path
    /// share a bus, so they must agree on its settings and have distinct unit ids. `key` is the
    /// device's key prefix, e.g. `reader[0].`.
    fn check_link(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        address: Option<String>,
        serial: Option<RawSerial>,
        unit: u8,
        buses: &mut Buses,
    ) -> Result<Link, ConfigError> {
        match (address, serial) {
            (Some(a), None) => {
                self.check_address(span, &format!("{key}address"), &a)?;
                Ok(Link::Tcp(a))
            }
            (None, Some(s)) => {
                let k = format!("{key}serial");
                if s.path.as_os_str().is_empty() {
                    return self.err(span.clone(), &format!("{k}.path"), "must not be empty");
                }
                if !(1200..=921_600).contains(&s.baud) {
                    return self.err(span.clone(), &format!("{k}.baud"), "must be 1200..=921600");
                }
                if !(1..=2).contains(&s.stop_bits) {
                    return self.err(span.clone(), &format!("{k}.stop_bits"), "must be 1 or 2");
                }
                if !(1..=247).contains(&unit) {
                    return self.err(
                        span.clone(),
                        &format!("{key}unit"),
                        "a unit on an RS-485 bus must be 1..=247 (0 is broadcast)",
                    );
                }
                let link = SerialLink {
                    path: s.path,
                    baud: s.baud,
                    parity: s.parity,
                    stop_bits: s.stop_bits,
                };
                let first = key.trim_end_matches('.').to_string();
                let (bus, by, units) = buses
                    .entry(link.path.clone())
                    .or_insert_with(|| (link.clone(), first, HashSet::new()));
                if *bus != link {
                    return self.err(
                        span.clone(),
                        &k,
                        format!(
                            "{} is also used by {by} with other settings ({}); every device \
                             on one bus must use the same baud, parity and stop bits",
                            link.path.display(),
                            Link::Rtu(bus.clone())
                        ),
                    );
                }
                if !units.insert(unit) {
                    return self.err(
                        span.clone(),
                        &format!("{key}unit"),
                        format!("unit {unit} is used twice on {}", link.path.display()),
                    );
                }
                Ok(Link::Rtu(link))
            }
            (Some(_), Some(_)) => self.err(
                span.clone(),
                key.trim_end_matches('.'),
                "has both `address` (Modbus TCP) and `serial` (Modbus RTU); give one",
            ),
            (None, None) => self.err(
                span.clone(),
                key.trim_end_matches('.'),
                "needs `address = \"HOST:PORT\"` (Modbus TCP) or `serial = { path = ... }` (Modbus RTU)",
            ),
        }
    }

    /// On a serial bus, a timeout must outlast the longest reply on the wire at its baud rate:
    /// a shorter one would time a healthy device out.
    fn check_rtu_timeout(
        &self,
        span: &std::ops::Range<usize>,
        key: &str,
        link: &Link,
        timeout_ms: u64,
    ) -> Result<(), ConfigError> {
        if let Link::Rtu(serial) = link {
            let need = serial.frame_time().as_millis() as u64 + 1;
            if timeout_ms < need {
                return self.err(
                    span.clone(),
                    key,
                    format!(
                        "{timeout_ms} ms is shorter than the longest reply takes at {} baud \
                         ({need} ms): set at least {need}",
                        serial.baud
                    ),
                );
            }
        }
        Ok(())
    }
}
