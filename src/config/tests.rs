//! The config checks, through `Config::parse` as the daemon calls it.

use std::time::Duration;

use super::{Config, Link, SyncSource, parse_duration};
use crate::core::ExitLimit;

pub const EXAMPLE: &str = include_str!("../../config/gated.example.toml");

/// A shipped config with a real key in place of its placeholder, which a gate with a
/// centre refuses.
fn with_real_key(text: &str) -> String {
    text.replace(
        "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        &real_public_key(),
    )
}

#[test]
fn the_example_config_is_valid_once_its_placeholder_key_is_replaced() {
    for (name, text) in [
        ("gated.example.toml", EXAMPLE),
        (
            "gated.sim.toml",
            include_str!("../../config/gated.sim.toml"),
        ),
    ] {
        let e = Config::parse(name, text).err().map(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_some_and(|e| e.contains("trust.key[0].public") && e.contains("placeholder")),
            "{name}: {e:?}"
        );
    }
    let example = with_real_key(EXAMPLE);
    let c = Config::parse("gated.example.toml", &example).expect("example config must parse");
    assert_eq!(c.site, "hq");
    assert!(c.mqtt.is_some());
    // The real gate the issue asks for: an RTU reader, a TCP face terminal, a TCP relay
    // board and a GPIO panel.
    assert!(
        matches!(c.readers[0].link, Link::Rtu(_)),
        "{:?}",
        c.readers[0].link
    );
    assert!(matches!(c.readers[1].link, Link::Tcp(_)));
    assert!(matches!(c.relays[0].link, Link::Tcp(_)));
    assert_eq!(c.gpio_panels.len(), 1);
    assert_eq!(c.gpio_panels[0].lanes.len(), 2);
    let sim = with_real_key(include_str!("../../config/gated.sim.toml"));
    let sim = Config::parse("gated.sim.toml", &sim).expect("the sim config must parse");
    assert!(
        sim.gpio_devices().is_empty(),
        "the sim config runs anywhere"
    );
}

#[test]
fn a_relay_board_may_take_its_pulses_as_function_16() {
    let relay =
        |f: &str| format!("{MINIMAL}[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n{f}");
    let c = Config::parse("t.toml", &relay("write_function = 16\n")).expect("valid");
    assert!(c.relays[0].fc16_writes);
    let c = Config::parse("t.toml", &relay("")).expect("valid");
    assert!(!c.relays[0].fc16_writes, "function 6 by default");
    let e = err(&relay("write_function = 5\n"));
    assert!(
        e.contains("relay[0].write_function") && e.contains("not 6") && e.contains("or 16"),
        "{e}"
    );
}

#[test]
fn serial_timeouts_snapshots_and_door_limits_are_checked() {
    let relay =
        "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[[lane]]\nid = 0\nrelay = \"k\"\n";
    let slow = "{ path = \"/dev/ttyUSB0\", baud = 4800 }";
    let e = err(&format!(
        "{MINIMAL}{relay}[[reader]]\nname = \"a\"\nlane = 0\ndirection = \"in\"\nunit = 1\nserial = {slow}\n"
    ));
    assert!(
        e.contains("reader[0].timeout_ms") && e.contains("4800 baud"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}{relay}[[reader]]\nname = \"a\"\nlane = 0\ndirection = \"in\"\nunit = 1\nsnapshots = true\nserial = {{ path = \"/dev/ttyUSB0\" }}\n"
    ));
    assert!(e.contains("reader[0].snapshots"), "{e}");
    let door = "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\nheld_open_s = 2\n[relay.registers]\ndoor_base = 6000\n[[lane]]\nid = 0\nrelay = \"k\"\nrelease_ms = 3000\n";
    let e = err(&format!("{MINIMAL}{door}"));
    assert!(
        e.contains("lane[0].release_ms") && e.contains("held_open"),
        "{e}"
    );
    let high = "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[relay.registers]\nfeedback_base = 65500\n";
    let e = err(&format!("{MINIMAL}{high}"));
    assert!(e.contains("registers.feedback_base"), "{e}");
    let wrap = "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[relay.registers]\npulse_base = 65500\n";
    let e = err(&format!("{MINIMAL}{wrap}"));
    assert!(e.contains("registers.pulse_base"), "{e}");
    let face = format!(
        "{MINIMAL}{relay}[[reader]]\nname = \"f\"\naddress = \"127.0.0.1:2\"\nlane = 0\ndirection = \"in\"\nsnapshots = true\n[reader.registers]\nsnapshot_data = 60000\n"
    );
    let e = err(&face);
    assert!(e.contains("reader[0].registers.snapshot_data"), "{e}");
}

#[test]
fn gpio_pins_are_checked_and_used_once() {
    let relay =
        "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[[lane]]\nid = 0\nrelay = \"k\"\n";
    let w = |d0: u8, d1: u8| {
        format!("[[wiegand]]\nname = \"w\"\nd0 = {d0}\nd1 = {d1}\nlane = 0\ndirection = \"in\"\n")
    };
    assert!(Config::parse("t.toml", &format!("{MINIMAL}{relay}{}", w(5, 6))).is_ok());
    let e = err(&format!("{MINIMAL}{relay}{}", w(5, 5)));
    assert!(
        e.contains("wiegand[0].d1") && e.contains("already used by wiegand[0].d0"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}{relay}{}", w(5, 40)));
    assert!(e.contains("BCM 0..=27"), "{e}");
    let e = err(&format!("{MINIMAL}{relay}{}formats = [37]\n", w(5, 6)));
    assert!(e.contains("37 bits"), "{e}");
    let gpio_lane = "[[gpio_relay]]\nname = \"g\"\n[[gpio_relay.lane]]\nchannel = 0\nentry = 17\nexit = 27\n[[lane]]\nid = 1\nrelay = \"g\"\n";
    let e = err(&format!("{MINIMAL}{gpio_lane}"));
    assert!(
        e.contains("lane[0].channel") && e.contains("no [[gpio_relay.lane]] with channel 1"),
        "{e}"
    );
}

/// The base64 public key of a fixed signing key: a real point, unlike the placeholder.
fn real_public_key() -> String {
    use base64::Engine as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

fn err(text: &str) -> String {
    Config::parse("t.toml", text)
        .expect_err("must be refused")
        .to_string()
}

const MINIMAL: &str = "[gate]\nsite = \"hq\"\ngate = \"g1\"\n[store]\npath = \"x.db\"\n";

#[test]
fn unknown_keys_are_errors_with_line() {
    let e = err(&format!("{MINIMAL}outbox_qouta = 5\n"));
    assert!(e.contains("outbox_qouta") && e.contains("line 6"), "{e}");
}

#[test]
fn semantic_errors_name_key_and_line() {
    let text = format!(
        "{MINIMAL}[[relay]]\nname = \"r\"\naddress = \"127.0.0.1:1\"\n[[lane]]\nid = 0\nrelay = \"nope\"\n"
    );
    let e = err(&text);
    assert!(
        e.contains("t.toml:9") && e.contains("lane[0].relay") && e.contains("nope"),
        "{e}"
    );
    let e = err("[gate]\nsite = \"h/q\"\ngate = \"g\"\n[store]\npath = \"x\"\n");
    assert!(e.contains("gate.site") && e.contains(":1:"), "{e}");
}

#[test]
fn devices_on_a_serial_bus_must_agree_and_have_their_own_units() {
    let relay =
        "[[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[[lane]]\nid = 0\nrelay = \"k\"\n";
    let reader = |name: &str, serial: &str, unit: u8| {
        format!(
            "[[reader]]\nname = \"{name}\"\nlane = 0\ndirection = \"in\"\nunit = {unit}\nserial = {serial}\n"
        )
    };
    let bus = "{ path = \"/dev/ttyUSB0\", baud = 19200, parity = \"none\", stop_bits = 2 }";
    let ok = format!(
        "{MINIMAL}{relay}{}{}",
        reader("a", bus, 1),
        reader("b", bus, 2)
    );
    let c = Config::parse("t.toml", &ok).expect("two units on one bus");
    assert_eq!(c.readers[1].link.to_string(), "/dev/ttyUSB0 19200 8N2");
    let e = err(&format!(
        "{MINIMAL}{relay}{}{}",
        reader("a", bus, 1),
        reader("b", bus, 1)
    ));
    assert!(
        e.contains("reader[1].unit") && e.contains("used twice"),
        "{e}"
    );
    let other = "{ path = \"/dev/ttyUSB0\", baud = 9600 }";
    let e = err(&format!(
        "{MINIMAL}{relay}{}{}",
        reader("a", bus, 1),
        reader("b", other, 2)
    ));
    assert!(
        e.contains("reader[1].serial") && e.contains("also used by reader[0]"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}{relay}{}",
        reader("a", "{ path = \"/dev/x\", baud = 7 }", 1)
    ));
    assert!(e.contains("reader[0].serial.baud"), "{e}");
    let e = err(&format!(
        "{MINIMAL}{relay}{}",
        reader("a", "{ path = \"/dev/x\" }", 0)
    ));
    assert!(
        e.contains("reader[0].unit") && e.contains("broadcast"),
        "{e}"
    );
    let both = format!(
        "{MINIMAL}{relay}[[reader]]\nname = \"a\"\nlane = 0\ndirection = \"in\"\naddress = \"127.0.0.1:2\"\nserial = {bus}\n"
    );
    assert!(err(&both).contains("both `address`"), "{}", err(&both));
    let neither = format!("{MINIMAL}[[relay]]\nname = \"k\"\n");
    assert!(
        err(&neither).contains("relay[0]") && err(&neither).contains("needs `address"),
        "{}",
        err(&neither)
    );
}

#[test]
fn trust_keys_are_checked() {
    let mqtt = format!("{MINIMAL}[mqtt]\nhost = \"127.0.0.1\"\n");
    let e = err(&mqtt);
    assert!(
        e.contains("trust.key") && e.contains("allow_unsigned"),
        "{e}"
    );
    let lab = format!("{mqtt}[trust]\nallow_unsigned = true\n");
    assert!(
        Config::parse("t.toml", &lab)
            .expect("lab")
            .trust
            .allow_unsigned
    );
    let bad = format!("{mqtt}[[trust.key]]\nid = \"ops\"\npublic = \"AAAA\"\n");
    let e = err(&bad);
    assert!(e.contains("trust.key[0].public") && e.contains("32"), "{e}");
    let one = format!(
        "[[trust.key]]\nid = \"ops\"\npublic = \"{}\"\n",
        real_public_key()
    );
    let ok = format!("{mqtt}{one}");
    assert_eq!(
        Config::parse("t.toml", &ok).expect("ok").trust.keys.len(),
        1
    );
    let e = err(&format!("{mqtt}{one}{one}"));
    assert!(e.contains("listed twice"), "{e}");
    // The example's placeholder: refused with a centre, harmless without one (nothing
    // signed arrives) and in lab mode.
    let placeholder =
        "[[trust.key]]\nid = \"old\"\npublic = \"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n";
    let e = err(&format!("{mqtt}{one}{placeholder}"));
    assert!(
        e.contains("trust.key[1].public") && e.contains("`old` is a placeholder"),
        "{e}"
    );
    assert!(Config::parse("t.toml", &format!("{MINIMAL}{placeholder}")).is_ok());
    let lab = format!("{mqtt}[trust]\nallow_unsigned = true\n{placeholder}");
    assert!(Config::parse("t.toml", &lab).is_ok());
    let tls = format!("{mqtt}[mqtt.tls]\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\n{one}");
    let e = err(&tls);
    assert!(e.contains("key_file"), "{e}");
}

#[test]
fn policy_rules_are_checked_with_their_keys() {
    let with = |extra: &str| format!("{MINIMAL}{extra}");
    let e = err(&with("[policy.schedule.office]\nmon = [\"18:00-08:00\"]\n"));
    assert!(
        e.contains("policy.schedule.office.mon") && e.contains("midnight"),
        "{e}"
    );
    let e = err(&with("[policy]\nhours = \"office\"\n"));
    assert!(e.contains("policy.hours") && e.contains("office"), "{e}");
    let e = err(&with("[policy.groups]\ncleaners = \"night\"\n"));
    assert!(e.contains("policy.groups.cleaners"), "{e}");
    let e = err(&with("[policy.max_offline]\nstaff = \"30 days\"\n"));
    assert!(
        e.contains("policy.max_offline.staff") && e.contains("30d"),
        "{e}"
    );
    let e = err(&with("[policy.exit]\ngrace = \"2d\"\n"));
    assert!(e.contains("policy.exit.grace") && e.contains("24h"), "{e}");
    let e = err(&with("[policy.exit]\nschedule = \"never\"\n"));
    assert!(e.contains("never") && e.contains("ignore"), "{e}");
    let c = Config::parse(
        "t.toml",
        &with("[policy.exit]\ngrace = \"45m\"\nschedule = \"ignore\"\nuses_entry = true\n"),
    )
    .expect("exit rules");
    assert_eq!(
        c.policy.exit,
        crate::core::ExitRules {
            grace_ms: 45 * 60_000,
            schedule: ExitLimit::Ignore,
            uses_entry: true,
            ..Default::default()
        }
    );
    let e = err(&with("[policy.anti_passback]\nmode = \"strict\"\n"));
    assert!(e.contains("strict"), "{e}");
    let e = err(&with("[policy]\npeers = [\"g1\"]\n"));
    assert!(e.contains("policy.peers[0]"), "{e}");
    let e = err(&with("[policy]\nmax_swipe_age = \"2m\"\n"));
    assert!(
        e.contains("policy.max_swipe_age") && e.contains("1s..=60s"),
        "{e}"
    );
    let e = err(&with("[policy]\nmax_swipe_age = \"0s\"\n"));
    assert!(e.contains("policy.max_swipe_age"), "{e}");
    let c = Config::parse("t.toml", &with("[policy]\nmax_swipe_age = \"10s\"\n"))
        .expect("max_swipe_age");
    assert_eq!(c.policy.max_swipe_age_ms, 10_000);
    assert_eq!(
        Config::parse("t.toml", &with(""))
            .expect("minimal")
            .policy
            .max_swipe_age_ms,
        crate::core::DEFAULT_MAX_SWIPE_AGE_MS
    );
    let e = err(&with("[clock]\nsync = \"ntp\"\n"));
    assert!(e.contains("clock.sync") && e.contains("ntp"), "{e}");
    let e = err(&with("[clock]\nsync = \"file\"\n"));
    assert!(e.contains("clock.sync_file"), "{e}");
    let tz = "[gate]\nsite = \"hq\"\ngate = \"g1\"\ntimezone = \"Mars/Olympus\"\n[store]\npath = \"x\"\n";
    assert!(err(tz).contains("gate.timezone"));
    let c = Config::parse("gated.example.toml", &with_real_key(EXAMPLE)).expect("example");
    assert_eq!(c.policy.tz, chrono_tz::Asia::Shanghai);
    assert_eq!(
        c.policy.groups.get("cleaners").map(String::as_str),
        Some("night")
    );
    assert_eq!(c.policy.staff_max_offline, Some(30 * 86_400_000));
    assert_eq!(c.policy.exit, crate::core::ExitRules::default());
    assert_eq!(c.peers, vec!["west-1".to_string()]);
    assert_eq!(c.clock.sync, SyncSource::File(SyncSource::SYSTEMD.into()));
    assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
    assert!(parse_duration("0s").is_err());
}

#[test]
fn reader_must_name_a_lane() {
    let text = format!(
        "{MINIMAL}[[reader]]\nname = \"r1\"\naddress = \"127.0.0.1:1\"\nlane = 3\ndirection = \"in\"\n"
    );
    let e = err(&text);
    assert!(e.contains("reader[0].lane") && e.contains(":6:"), "{e}");
}
