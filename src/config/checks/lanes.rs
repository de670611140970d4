//! `[[lane]]`s: each names the relay board (Modbus or GPIO) and channel that releases it, and
//! its rules go into the policy (`core::LaneRules`).

use std::collections::BTreeMap;

use toml::Spanned;

use super::Checker;
use crate::config::raw::RawLane;
use crate::config::{ConfigError, GpioRelayConfig, LaneConfig, RelayConfig};
use crate::core::{LaneRules, Policy};

impl Checker<'_> {
    /// The lanes, by id; each lane's rules are added to `policy`.
    pub(super) fn lanes(
        &self,
        raw: Vec<Spanned<RawLane>>,
        relays: &[RelayConfig],
        gpio_relays: &[GpioRelayConfig],
        policy: &mut Policy,
    ) -> Result<BTreeMap<u16, LaneConfig>, ConfigError> {
        let mut lanes = BTreeMap::new();
        for (i, l) in raw.into_iter().enumerate() {
            let span = l.span();
            let l = l.into_inner();
            let gpio = gpio_relays.iter().find(|r| r.name == l.relay);
            if !relays.iter().any(|r| r.name == l.relay) && gpio.is_none() {
                return self.err(
                    span,
                    &format!("lane[{i}].relay"),
                    format!("no [[relay]] or [[gpio_relay]] is named `{}`", l.relay),
                );
            }
            if let Some(g) = gpio
                && !g
                    .lanes
                    .iter()
                    .any(|(c, _, _)| *c == l.channel.unwrap_or(l.id))
            {
                return self.err(
                    span,
                    &format!("lane[{i}].channel"),
                    format!(
                        "gpio_relay `{}` has no [[gpio_relay.lane]] with channel {}",
                        g.name,
                        l.channel.unwrap_or(l.id)
                    ),
                );
            }
            if !(100..=60_000).contains(&l.release_ms) {
                return self.err(
                    span,
                    &format!("lane[{i}].release_ms"),
                    "must be 100..=60000",
                );
            }
            if let Some(r) = relays
                .iter()
                .find(|r| r.name == l.relay && r.door_base.is_some())
                && u128::from(l.release_ms) >= r.held_open.as_millis()
            {
                return self.err(
                    span,
                    &format!("lane[{i}].release_ms"),
                    format!(
                        "{} ms is not shorter than relay `{}`'s held_open_s ({} s): every pass \
                         would raise held_open",
                        l.release_ms,
                        r.name,
                        r.held_open.as_secs()
                    ),
                );
            }
            let channel = l.channel.unwrap_or(l.id);
            if channel > 31 {
                return self.err(span, &format!("lane[{i}].channel"), "must be 0..=31");
            }
            if lanes.contains_key(&l.id) {
                return self.err(
                    span,
                    &format!("lane[{i}].id"),
                    format!("lane {} is defined twice", l.id),
                );
            }
            if let Some(h) = &l.hours {
                self.check_schedule(&span, &format!("lane[{i}].hours"), h, policy)?;
            }
            if l.two_factor_s.is_some_and(|s| !(1..=300).contains(&s)) {
                return self.err(
                    span,
                    &format!("lane[{i}].two_factor_s"),
                    "must be 1..=300 seconds",
                );
            }
            policy.lanes.insert(
                l.id,
                LaneRules {
                    hours: l.hours,
                    two_factor_ms: l.two_factor_s.map(|s| s as i64 * 1000),
                    free_in: l.free_in,
                    free_out: l.free_out,
                },
            );
            lanes.insert(
                l.id,
                LaneConfig {
                    id: l.id,
                    relay: l.relay,
                    channel,
                    release_ms: l.release_ms,
                },
            );
        }
        Ok(lanes)
    }
}
