//! What `gated check-config` prints for a config it accepts.

use super::{Config, SyncSource};

/// One paragraph saying what a checked config configures, for `gated check-config`.
pub fn describe(c: &Config) -> String {
    let mut out = format!(
        "ok: site `{}` gate `{}`; store {}; mqtt {}",
        c.site,
        c.gate,
        c.store.path.display(),
        c.mqtt
            .as_ref()
            .map(|m| format!("{}:{} (root `{}`)", m.host, m.port, m.root))
            .unwrap_or_else(|| "off (events wait in the outbox)".into())
    );
    for l in c.lanes.values() {
        out += &format!(
            "\n  lane {}: relay `{}` channel {}, release {} ms",
            l.id, l.relay, l.channel, l.release_ms
        );
        if let Some(r) = c.policy.lanes.get(&l.id) {
            if let Some(h) = &r.hours {
                out += &format!("; hours `{h}`");
            }
            if let Some(ms) = r.two_factor_ms {
                out += &format!("; two factors within {} s", ms / 1000);
            }
            for (d, f) in [("in", r.free_in), ("out", r.free_out)] {
                if f != crate::core::FreeExit::No {
                    out += &format!("; free {d} by {f:?}");
                }
            }
        }
    }
    for r in &c.readers {
        out += &format!(
            "\n  reader `{}` at {} unit {}: lane {} {}, poll {} ms",
            r.name,
            r.link,
            r.unit,
            r.lane,
            r.direction.as_str(),
            r.poll.as_millis()
        );
    }
    for r in &c.relays {
        out += &format!("\n  relay `{}` at {} unit {}", r.name, r.link, r.unit);
    }
    for p in &c.panels {
        out += &format!("\n  panel `{}` at {} unit {}", p.name, p.link, p.unit);
    }
    for d in c.gpio_devices() {
        out += &format!("\n  {d} on GPIO (needs a Raspberry Pi)");
    }
    let p = &c.policy;
    out += &format!(
        "\n  rules: time zone {}; schedules [{}]; anti-passback {:?}{}; peers [{}]; clock sync {}",
        p.tz,
        p.schedules.keys().cloned().collect::<Vec<_>>().join(", "),
        p.passback.mode,
        p.passback
            .reset_at
            .map(|m| format!(" (reset {:02}:{:02})", m / 60, m % 60))
            .unwrap_or_default(),
        c.peers.join(", "),
        match &c.clock.sync {
            SyncSource::None => "not required".to_string(),
            SyncSource::File(f) => format!("when {} exists", f.display()),
        }
    );
    for (list, limit) in [
        ("staff", p.staff_max_offline),
        ("visitors", p.visitors_max_offline),
    ] {
        if let Some(ms) = limit {
            out += &format!(
                "\n  {list} stop after {} h without the centre",
                ms / 3_600_000
            );
        }
    }
    let x = &p.exit;
    out += &format!(
        "\n  exits: grace {} min; window {:?}, schedule {:?}, offline limit {:?}; {}",
        x.grace_ms / 60_000,
        x.window,
        x.schedule,
        x.offline_limit,
        if x.uses_entry {
            "every visitor pass uses an entry"
        } else {
            "a visitor's exit uses no entry"
        }
    );
    for (id, key) in &c.trust.keys {
        let note = if key.is_weak() {
            " -- A PLACEHOLDER that verifies nothing: replace it"
        } else {
            ""
        };
        out += &format!("\n  trusts admin key `{id}`{note}");
    }
    if c.trust.allow_unsigned {
        out += "\n  LAB MODE: accepts unsigned lists and commands (trust.allow_unsigned)";
    }
    out
}
