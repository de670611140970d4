//! The control port: a line-based TCP protocol for a person (or a test) driving simulated
//! devices by name — present a card, read the pulses, pull the fire alarm, inject a fault.
//!
//! One command per line; every reply ends with a line that starts with `ok` or `error: `, and
//! may be preceded by data lines (`pulses`, `status`, `help`). Bad input gets an error naming
//! what was wrong, and the connection stays usable. `help` lists the commands.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_modbus::ExceptionCode;

use crate::reader::{KIND_CARD, KIND_FACE, KIND_PIN, KIND_QR};
use crate::{Fault, SimError, SimPanel, SimReader, SimRelay, SimServer};

/// Longest command line accepted; a longer one is refused and skipped, so a runaway paste
/// cannot make the simulator buffer without bound.
const MAX_LINE: usize = 1024;
/// Score used for `present READER face CRED` without a score: a clear match, since a person
/// at a terminal who leaves it out wants the face to pass.
const DEFAULT_FACE_SCORE: u16 = 950;
/// Longest latency the control port accepts, so a typo cannot hang a device for days.
const MAX_LATENCY_MS: u64 = 600_000;

/// A simulated device the control port knows by name.
#[derive(Debug, Clone)]
pub enum Device {
    Reader(SimReader),
    Relay(SimRelay),
    Panel(SimPanel),
}

impl Device {
    fn server(&self) -> &SimServer {
        match self {
            Device::Reader(reader) => reader.server(),
            Device::Relay(relay) => relay.server(),
            Device::Panel(panel) => panel.server(),
        }
    }

    fn unit(&self) -> u8 {
        match self {
            Device::Reader(reader) => reader.unit(),
            Device::Relay(relay) => relay.unit(),
            Device::Panel(panel) => panel.unit(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Device::Reader(_) => "reader",
            Device::Relay(_) => "relay",
            Device::Panel(_) => "panel",
        }
    }
}

/// The devices of a simulator run, by name. Names are single words so that commands can be
/// split on whitespace.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    by_name: BTreeMap<String, Device>,
}

impl Devices {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_reader(&mut self, name: &str, reader: SimReader) -> Result<(), SimError> {
        self.add(name, Device::Reader(reader))
    }

    pub fn add_relay(&mut self, name: &str, relay: SimRelay) -> Result<(), SimError> {
        self.add(name, Device::Relay(relay))
    }

    pub fn add_panel(&mut self, name: &str, panel: SimPanel) -> Result<(), SimError> {
        self.add(name, Device::Panel(panel))
    }

    fn add(&mut self, name: &str, device: Device) -> Result<(), SimError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(SimError::BadName(name.to_owned()));
        }
        if self.by_name.contains_key(name) {
            return Err(SimError::DuplicateName(name.to_owned()));
        }
        self.by_name.insert(name.to_owned(), device);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Device> {
        self.by_name.get(name)
    }

    /// Devices in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Device)> {
        self.by_name
            .iter()
            .map(|(name, device)| (name.as_str(), device))
    }

    fn lookup(&self, name: &str) -> Result<&Device, String> {
        self.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            format!("unknown device '{name}' (known: {})", known.join(", "))
        })
    }

    fn reader(&self, name: &str) -> Result<&SimReader, String> {
        match self.lookup(name)? {
            Device::Reader(reader) => Ok(reader),
            other => Err(format!("'{name}' is a {}, not a reader", other.kind())),
        }
    }

    fn panel(&self, name: &str) -> Result<&SimPanel, String> {
        match self.lookup(name)? {
            Device::Panel(panel) => Ok(panel),
            other => Err(format!("'{name}' is a {}, not a panel", other.kind())),
        }
    }

    fn relay(&self, name: &str) -> Result<&SimRelay, String> {
        match self.lookup(name)? {
            Device::Relay(relay) => Ok(relay),
            other => Err(format!("'{name}' is a {}, not a relay", other.kind())),
        }
    }
}

/// Serves the control protocol on `listener` until the returned future is dropped (which also
/// closes its connections). Each connection is served in its own task, so a person idling in
/// `nc` does not block a test.
pub async fn serve_control(listener: TcpListener, devices: Devices) {
    let devices = Arc::new(devices);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "control connection");
                    connections.spawn(serve_connection(stream, Arc::clone(&devices)));
                }
                Err(err) => {
                    // E.g. out of file descriptors: wait instead of spinning.
                    tracing::warn!(%err, "control port accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow with every `nc` session.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, devices: Arc<Devices>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
        let n = match (&mut read).take(limit).read_until(b'\n', &mut line).await {
            Ok(n) => n,
            Err(err) => {
                tracing::debug!(%err, "control connection read failed");
                return;
            }
        };
        if n == 0 {
            return;
        }
        let reply = if line.len() > MAX_LINE && line.last() != Some(&b'\n') {
            // Refuse and skip the rest of the line, with bounded memory, and keep serving.
            if skip_line(&mut read).await.is_err() {
                return;
            }
            vec![format!("error: line longer than {MAX_LINE} bytes")]
        } else {
            let text = String::from_utf8_lossy(&line);
            let command = text.trim();
            if matches!(command, "quit" | "exit") {
                let _ = write.write_all(b"ok bye\n").await;
                return;
            }
            execute(&devices, command)
        };
        let mut text = String::new();
        for reply_line in reply {
            text.push_str(&reply_line);
            text.push('\n');
        }
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Discards input up to and including the next newline (or to the end of the stream).
async fn skip_line<R: AsyncBufRead + Unpin>(read: &mut R) -> std::io::Result<()> {
    loop {
        let buf = read.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            read.consume(end + 1);
            return Ok(());
        }
        let len = buf.len();
        read.consume(len);
    }
}

/// Runs one command line and returns the reply lines; the last one starts with `ok` or
/// `error: `. An empty line gets no reply.
pub fn execute(devices: &Devices, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&command, args)) = words.split_first() else {
        return Vec::new();
    };
    let result = match command {
        "present" => present(devices, args),
        "pulses" => pulses(devices, args),
        "bump" => bump(devices, args),
        "fire" => contact(devices, args, "fire", SimRelay::set_fire),
        "tamper" => contact(devices, args, "tamper", SimRelay::set_tamper),
        "fc6" => contact(devices, args, "fc6", SimRelay::set_single_register_writes),
        "button" => button(devices, args),
        "stuck" => stuck(devices, args),
        "door" => door(devices, args),
        "fault" => fault(devices, args),
        "device-fault" => device_fault(devices, args),
        "panel" => panel(devices, args),
        "status" => status(devices, args),
        "help" => Ok(help()),
        other => Err(format!("unknown command '{other}' (try: help)")),
    };
    result.unwrap_or_else(|err| vec![format!("error: {err}")])
}

type Reply = Result<Vec<String>, String>;

fn present(devices: &Devices, args: &[&str]) -> Reply {
    const USAGE: &str = "usage: present READER card|qr|face|pin CREDENTIAL [SCORE]";
    let (name, kind, credential, score) = match args {
        [name, kind, credential] => (name, kind, credential, None),
        [name, kind, credential, score] => (name, kind, credential, Some(score)),
        _ => return Err(USAGE.to_owned()),
    };
    let reader = devices.reader(name)?;
    let kind = match *kind {
        "card" => KIND_CARD,
        "qr" => KIND_QR,
        "face" => KIND_FACE,
        "pin" => KIND_PIN,
        other => {
            return Err(format!(
                "unknown kind '{other}' (expected card, qr, face or pin)"
            ));
        }
    };
    let score = match score {
        Some(score) => parse_score(score)?,
        None if kind == KIND_FACE => DEFAULT_FACE_SCORE,
        None => 0,
    };
    let seq = reader
        .present(kind, credential, score)
        .map_err(|err| err.to_string())?;
    Ok(vec![format!("ok seq={seq}")])
}

/// A face score as a person writes it: a fraction such as `0.93`, as the daemon's
/// `min_face_score` reads; or a whole number of thousandths such as `930`, the unit of the
/// score register itself. Both give the register value (930).
pub fn parse_score(text: &str) -> Result<u16, String> {
    let bad = || {
        format!(
            "bad score '{text}' (expected a fraction 0.0..1.0 such as 0.93, or thousandths 0..1000 such as 930)"
        )
    };
    if text.contains('.') {
        let fraction: f64 = text.parse().map_err(|_| bad())?;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(bad());
        }
        // In range, so the product is 0..=1000 and fits.
        Ok((fraction * 1000.0).round() as u16)
    } else {
        text.parse::<u16>()
            .ok()
            .filter(|score| *score <= 1000)
            .ok_or_else(bad)
    }
}

fn pulses(devices: &Devices, args: &[&str]) -> Reply {
    let [name] = args else {
        return Err("usage: pulses RELAY".to_owned());
    };
    let pulses = devices.relay(name)?.pulses();
    let mut lines: Vec<String> = pulses
        .iter()
        .map(|pulse| {
            format!(
                "lane={} dir={} ms={} at={}",
                pulse.lane,
                direction_name(pulse.exit),
                pulse.ms,
                rfc3339(pulse.at)
            )
        })
        .collect();
    lines.push(format!("ok {} pulses", pulses.len()));
    Ok(lines)
}

fn bump(devices: &Devices, args: &[&str]) -> Reply {
    let [name, lane, direction] = args else {
        return Err("usage: bump RELAY LANE in|out".to_owned());
    };
    let relay = devices.relay(name)?;
    let exit = parse_direction(direction)?;
    let lanes = relay.lanes();
    let counter = lane
        .parse::<u16>()
        .ok()
        .and_then(|lane| relay.try_bump_counter(lane, exit))
        .ok_or_else(|| lane_error(name, lane, lanes))?;
    Ok(vec![format!("ok counter={counter}")])
}

fn lane_error(name: &str, lane: &str, lanes: u16) -> String {
    match lanes {
        0 => format!("bad lane '{lane}' ({name} has no lanes)"),
        n => format!("bad lane '{lane}' ({name} has lanes 0..{})", n - 1),
    }
}

fn contact(devices: &Devices, args: &[&str], what: &str, set: fn(&SimRelay, bool)) -> Reply {
    let [name, state] = args else {
        return Err(format!("usage: {what} RELAY on|off"));
    };
    let relay = devices.relay(name)?;
    let on = parse_on_off(state)?;
    set(relay, on);
    Ok(vec![format!("ok {what}={state}")])
}

/// Sticks a relay on or off (a hardware fault of the board), or frees it.
fn stuck(devices: &Devices, args: &[&str]) -> Reply {
    const USAGE: &str = "usage: stuck RELAY LANE in|out on|off|none";
    let [name, lane, direction, state] = args else {
        return Err(USAGE.to_owned());
    };
    let relay = devices.relay(name)?;
    let lane = parse_lane(lane, USAGE)?;
    let exit = parse_direction(direction)?;
    let stuck = match *state {
        "on" => Some(true),
        "off" => Some(false),
        "none" => None,
        other => return Err(format!("bad state '{other}'; {USAGE}")),
    };
    if !relay.set_stuck(lane, exit, stuck) {
        return Err(format!("{name} has no lane {lane}"));
    }
    Ok(vec![format!("ok stuck lane {lane} {direction}={state}")])
}

/// Opens or closes a lane's door (or wing) contact.
fn door(devices: &Devices, args: &[&str]) -> Reply {
    const USAGE: &str = "usage: door RELAY LANE open|closed";
    let [name, lane, state] = args else {
        return Err(USAGE.to_owned());
    };
    let relay = devices.relay(name)?;
    let lane = parse_lane(lane, USAGE)?;
    let open = match *state {
        "open" => true,
        "closed" => false,
        other => return Err(format!("bad state '{other}'; {USAGE}")),
    };
    if !relay.set_door(lane, open) {
        return Err(format!("{name} has no lane {lane}"));
    }
    Ok(vec![format!("ok door lane {lane} {state}")])
}

fn button(devices: &Devices, args: &[&str]) -> Reply {
    const USAGE: &str = "usage: button RELAY LANE in|out on|off";
    let [name, lane, direction, state] = args else {
        return Err(USAGE.to_owned());
    };
    let relay = devices.relay(name)?;
    let lane = parse_lane(lane, USAGE)?;
    let exit = parse_direction(direction)?;
    let pressed = parse_on_off(state)?;
    if !relay.set_button(lane, exit, pressed) {
        return Err(format!("{name} has no lane {lane}"));
    }
    Ok(vec![format!("ok button lane {lane} {direction}={state}")])
}

fn fault(devices: &Devices, args: &[&str]) -> Reply {
    const USAGE: &str = "usage: fault DEVICE none|noreply|latency MS|exception CODE|disconnect|garbage|flap MS|close-after-reply|wrong-tid|bad-crc";
    let Some((name, spec)) = args.split_first() else {
        return Err(USAGE.to_owned());
    };
    let server = devices.lookup(name)?.server();
    let fault = parse_fault(spec).map_err(|err| format!("{err}; {USAGE}"))?;
    server.set_fault(fault);
    // A fault is the whole socket's: say which devices it hit, so nobody is surprised that
    // another reader on the same address went dark too.
    let addr = server.endpoint();
    let sharing: Vec<&str> = devices
        .iter()
        .filter(|(_, device)| device.server().endpoint() == addr)
        .map(|(name, _)| name)
        .collect();
    Ok(vec![format!(
        "ok fault={} on {addr} ({})",
        server.fault(),
        sharing.join(", ")
    )])
}

/// A fault of one device (its unit), sparing the others on its socket or bus.
fn device_fault(devices: &Devices, args: &[&str]) -> Reply {
    const USAGE: &str =
        "usage: device-fault DEVICE none|noreply|latency MS|exception CODE|garbage|flap MS|bad-crc";
    let Some((name, spec)) = args.split_first() else {
        return Err(USAGE.to_owned());
    };
    let device = devices.lookup(name)?;
    let fault = parse_fault(spec).map_err(|err| format!("{err}; {USAGE}"))?;
    if fault == Fault::Disconnect {
        return Err(format!(
            "a single device cannot be disconnected from a shared socket or bus (use noreply, \
             or `fault {name} disconnect` for the whole socket)"
        ));
    }
    device.server().set_unit_fault(device.unit(), fault);
    Ok(vec![format!(
        "ok device-fault={} on {name} (unit {} at {})",
        device.server().unit_fault(device.unit()),
        device.unit(),
        device.server().endpoint()
    )])
}

/// Sets a panel input: a lane's open button, or a mode switch, by name.
fn panel(devices: &Devices, args: &[&str]) -> Reply {
    const USAGE: &str = "usage: panel PANEL open LANE in|out on|off | panel PANEL \
                         hold-open|lockdown|emergency|reset on|off";
    let (name, addr, state) = match args {
        [name, "open", lane, direction, state] => {
            let lane = parse_lane(lane, USAGE)?;
            let exit = parse_direction(direction)?;
            let addr = lane
                .checked_mul(2)
                .and_then(|a| a.checked_add(u16::from(exit)))
                .ok_or_else(|| format!("bad lane '{lane}'; {USAGE}"))?;
            (*name, addr, *state)
        }
        [name, input, state] => {
            let addr = match *input {
                "hold-open" => crate::panel::INPUT_HOLD_OPEN,
                "lockdown" => crate::panel::INPUT_LOCKDOWN,
                "emergency" => crate::panel::INPUT_EMERGENCY,
                "reset" => crate::panel::INPUT_RESET,
                other => return Err(format!("unknown panel input '{other}'; {USAGE}")),
            };
            (*name, addr, *state)
        }
        _ => return Err(USAGE.to_owned()),
    };
    let on = parse_on_off(state)?;
    let panel = devices.panel(name)?;
    if !panel.set_input(addr, on) {
        return Err(format!("{name} has no input {addr}"));
    }
    Ok(vec![format!("ok panel {name} input {addr}={}", on_off(on))])
}

/// A fault as the control port spells it, split into words: `["latency", "200ms"]`.
pub fn parse_fault(spec: &[&str]) -> Result<Fault, String> {
    match spec {
        ["none"] => Ok(Fault::None),
        ["noreply"] => Ok(Fault::NoReply),
        ["disconnect"] => Ok(Fault::Disconnect),
        ["garbage"] => Ok(Fault::Garbage),
        ["close-after-reply"] => Ok(Fault::CloseAfterReply),
        ["wrong-tid"] => Ok(Fault::WrongTransactionId),
        ["bad-crc"] => Ok(Fault::BadCrc),
        ["flap", ms] => ms
            .strip_suffix("ms")
            .unwrap_or(ms)
            .parse::<u64>()
            .ok()
            .filter(|ms| (10..=MAX_LATENCY_MS).contains(ms))
            .map(|ms| Fault::Flap(Duration::from_millis(ms)))
            .ok_or_else(|| format!("bad flap period '{ms}' (expected 10..{MAX_LATENCY_MS} ms)")),
        ["latency", ms] => ms
            .strip_suffix("ms")
            .unwrap_or(ms)
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= MAX_LATENCY_MS)
            .map(|ms| Fault::Latency(Duration::from_millis(ms)))
            .ok_or_else(|| format!("bad latency '{ms}' (expected 0..{MAX_LATENCY_MS} ms)")),
        ["exception", code] => {
            let parsed = match code.strip_prefix("0x") {
                Some(hex) => u8::from_str_radix(hex, 16),
                None => code.parse::<u8>(),
            };
            parsed
                .ok()
                .filter(|code| *code != 0)
                .map(|code| Fault::Exception(ExceptionCode::new(code)))
                .ok_or_else(|| {
                    format!("bad exception code '{code}' (expected 1..255, e.g. 2 or 0x06)")
                })
        }
        [] => Err("missing fault".to_owned()),
        other => Err(format!("unknown fault '{}'", other.join(" "))),
    }
}

fn status(devices: &Devices, args: &[&str]) -> Reply {
    if !args.is_empty() {
        return Err("usage: status".to_owned());
    }
    let mut lines = Vec::new();
    for (name, device) in devices.iter() {
        let server = device.server();
        let common = format!(
            "addr={} fault={} device-fault={} connections={}",
            server.endpoint(),
            server.fault(),
            server.unit_fault(device.unit()),
            server.connections()
        );
        lines.push(match device {
            Device::Reader(reader) => format!(
                "{name} reader unit={} queued={} acked={} {common}",
                reader.unit(),
                reader.queued(),
                reader.acked().len()
            ),
            Device::Relay(relay) => format!(
                "{name} relay unit={} lanes={} pulses={} fire={} tamper={} {common}",
                relay.unit(),
                relay.lanes(),
                relay.pulses().len(),
                on_off(relay.fire()),
                on_off(relay.tamper())
            ),
            Device::Panel(panel) => {
                let lamps = panel.lamps();
                format!(
                    "{name} panel unit={} lamps=normal:{},lockdown:{},emergency:{},offline:{} {common}",
                    panel.unit(),
                    on_off(lamps[0]),
                    on_off(lamps[1]),
                    on_off(lamps[2]),
                    on_off(lamps[3])
                )
            }
        });
    }
    lines.push(format!("ok {} devices", devices.by_name.len()));
    Ok(lines)
}

fn help() -> Vec<String> {
    [
        "present READER card|qr|face|pin CREDENTIAL [SCORE]   queue an event; SCORE 0.93 or 930 (thousandths), face default 0.95",
        "pulses RELAY                                         the pulses the daemon commanded",
        "bump RELAY LANE in|out                               count one person through a lane",
        "fire RELAY on|off                                    fire alarm contact",
        "tamper RELAY on|off                                  cabinet tamper contact",
        "fc6 RELAY on|off                                     off: refuse function 6 (exception 1), take 16 only",
        "button RELAY LANE in|out on|off                      press or let go of a request button",
        "stuck RELAY LANE in|out on|off|none                  stick a relay on or off, or free it",
        "door RELAY LANE open|closed                          a lane's door (or wing) contact",
        "fault DEVICE none|noreply|latency MS|exception CODE|disconnect|garbage|flap MS|close-after-reply|wrong-tid|bad-crc",
        "                                                     for every device on DEVICE's address",
        "device-fault DEVICE none|noreply|latency MS|exception CODE|garbage|flap MS|bad-crc",
        "                                                     for DEVICE alone (its unit)",
        "panel PANEL open LANE in|out on|off                  a lane's open button on a guard panel",
        "panel PANEL hold-open|lockdown|emergency|reset on|off  a guard panel's mode input",
        "status                                               devices, queues, faults",
        "quit                                                 close this connection",
        "ok",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn parse_lane(word: &str, usage: &str) -> Result<u16, String> {
    word.parse()
        .map_err(|_| format!("bad lane '{word}'; {usage}"))
}

fn parse_on_off(word: &str) -> Result<bool, String> {
    match word {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("bad state '{other}' (expected on or off)")),
    }
}

fn parse_direction(word: &str) -> Result<bool, String> {
    match word {
        "in" => Ok(false),
        "out" => Ok(true),
        other => Err(format!("bad direction '{other}' (expected in or out)")),
    }
}

fn direction_name(exit: bool) -> &'static str {
    if exit { "out" } else { "in" }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn rfc3339(at: SystemTime) -> String {
    DateTime::<Utc>::from(at).to_rfc3339_opts(SecondsFormat::Millis, true)
}
