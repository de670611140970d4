//! `hw-sim`: serves simulated gate devices over Modbus TCP for a person driving them by hand
//! (the demo), with a line-based control port. Parses the command line, then calls into the
//! library; devices given the same address share one socket (one [`SimServer`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use clap::Parser;
use hw_sim::{Devices, ReaderRegisters, RelayRegisters, SimServer, serve_control};
use tokio::net::TcpListener;

const DEFAULT_UNIT: u8 = 1;
const DEFAULT_LANES: u16 = 2;
/// Enough for any gate; keeps the pulse registers (100 + 2n) well inside the address space.
const MAX_LANES: u16 = 1000;

#[derive(Debug, Parser)]
#[command(
    name = "hw-sim",
    version,
    about = "Simulated gate readers, relay boards and guard panels over Modbus TCP or RTU",
    after_help = "Example:\n  hw-sim --reader reader1=127.0.0.1:5020/1 --reader reader2=rtu:bus1/2 \\\n         --relay relay1=127.0.0.1:5030/1/2 --panel panel1=127.0.0.1:5040/1 \\\n         --device-fault reader2='flap 500ms' --control 127.0.0.1:5099\n  nc 127.0.0.1 5099   (then type: help)\n\nDevices with the same ADDR share one socket, under different unit ids; port 0 gives each\ndevice a free port of its own (printed). ADDR rtu:NAME\nserves Modbus RTU on a pseudo-terminal (an RS-485 bus); its path is printed, for the\ndaemon's `serial = { path = ... }`, and devices with the same NAME share that bus.\nLog detail: RUST_LOG=hw_sim=debug."
)]
struct Cli {
    /// A reader or face terminal; UNIT defaults to 1.
    #[arg(long = "reader", value_name = "NAME=ADDR[/UNIT]", value_parser = parse_reader)]
    readers: Vec<Spec>,
    /// A relay board; UNIT defaults to 1, LANES to 2.
    #[arg(long = "relay", value_name = "NAME=ADDR[/UNIT[/LANES]]", value_parser = parse_relay)]
    relays: Vec<Spec>,
    /// A guard panel (a Modbus IO module); UNIT defaults to 1.
    #[arg(long = "panel", value_name = "NAME=ADDR[/UNIT]", value_parser = parse_reader)]
    panels: Vec<Spec>,
    /// Starts with a fault on one device (its unit), as the control port's `device-fault`.
    #[arg(long = "device-fault", value_name = "NAME=FAULT", value_parser = parse_device_fault)]
    device_faults: Vec<(String, hw_sim::Fault)>,
    /// Where to serve the control port (e.g. 127.0.0.1:5099).
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
}

fn parse_device_fault(value: &str) -> Result<(String, hw_sim::Fault), String> {
    let (name, spec) = value
        .split_once('=')
        .ok_or_else(|| format!("'{value}' has no '=' (expected NAME=FAULT)"))?;
    let words: Vec<&str> = spec.split_whitespace().collect();
    let fault = hw_sim::control::parse_fault(&words)?;
    Ok((name.to_owned(), fault))
}

/// Where a device is served: a TCP socket, or a named RS-485 bus (a pseudo-terminal).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Endpoint {
    Tcp(SocketAddr),
    Rtu(String),
}

impl Endpoint {
    /// Port 0: a free port, picked for this device alone.
    fn any_port(&self) -> bool {
        matches!(self, Endpoint::Tcp(a) if a.port() == 0)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Rtu(n) => write!(f, "rtu:{n}"),
        }
    }
}

/// One `--reader`, `--relay` or `--panel` value.
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    name: String,
    addr: Endpoint,
    unit: u8,
    lanes: u16,
}

fn parse_reader(value: &str) -> Result<Spec, String> {
    parse_spec(value, false)
}

fn parse_relay(value: &str) -> Result<Spec, String> {
    parse_spec(value, true)
}

fn parse_spec(value: &str, relay: bool) -> Result<Spec, String> {
    let (name, rest) = value
        .split_once('=')
        .ok_or_else(|| format!("'{value}' has no '=' (expected NAME=ADDR...)"))?;
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(format!(
            "bad name '{name}' (use letters, digits, '_' or '-')"
        ));
    }
    let mut parts = rest.split('/');
    let addr = parts.next().unwrap_or_default();
    let addr = match addr.strip_prefix("rtu:") {
        Some(bus) if !bus.is_empty() => Endpoint::Rtu(bus.to_owned()),
        _ => Endpoint::Tcp(addr.parse().map_err(|_| {
            format!("bad address '{addr}' (expected IP:PORT, e.g. 127.0.0.1:5020, or rtu:NAME)")
        })?),
    };
    let unit = match parts.next() {
        None => DEFAULT_UNIT,
        Some(unit) => unit
            .parse()
            .map_err(|_| format!("bad unit '{unit}' (expected 0..255)"))?,
    };
    let lanes = match parts.next() {
        None => DEFAULT_LANES,
        Some(lanes) if relay => lanes
            .parse()
            .ok()
            .filter(|lanes| (1..=MAX_LANES).contains(lanes))
            .ok_or_else(|| format!("bad lane count '{lanes}' (expected 1..{MAX_LANES})"))?,
        Some(_) => return Err(format!("'{value}': a reader takes NAME=ADDR[/UNIT]")),
    };
    if parts.next().is_some() {
        return Err(format!("'{value}' has too many '/' parts"));
    }
    Ok(Spec {
        name: name.to_owned(),
        addr,
        unit,
        lanes,
    })
}

/// Refuses two devices on the same address and unit: one would silently replace the other.
/// A device on port 0 gets a socket of its own, so it clashes with nothing.
fn check_units(specs: &[&Spec]) -> anyhow::Result<()> {
    let mut seen: BTreeMap<(Endpoint, u8), &str> = BTreeMap::new();
    for spec in specs.iter().filter(|s| !s.addr.any_port()) {
        if let Some(other) = seen.insert((spec.addr.clone(), spec.unit), &spec.name) {
            bail!(
                "{other} and {} are both unit {} on {}",
                spec.name,
                spec.unit,
                spec.addr
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.readers.is_empty() && cli.relays.is_empty() && cli.panels.is_empty() {
        bail!("nothing to serve: give at least one --reader, --relay or --panel (see --help)");
    }
    check_units(
        &cli.readers
            .iter()
            .chain(&cli.relays)
            .chain(&cli.panels)
            .collect::<Vec<_>>(),
    )?;

    let mut servers: BTreeMap<Endpoint, SimServer> = BTreeMap::new();
    let mut devices = Devices::new();
    for (spec, kind) in cli
        .readers
        .iter()
        .map(|spec| (spec, "reader"))
        .chain(cli.relays.iter().map(|spec| (spec, "relay")))
        .chain(cli.panels.iter().map(|spec| (spec, "panel")))
    {
        let server = match servers.get(&spec.addr).filter(|_| !spec.addr.any_port()) {
            Some(server) => server.clone(),
            None => {
                let server = match &spec.addr {
                    Endpoint::Tcp(addr) => SimServer::bind(*addr).await,
                    Endpoint::Rtu(_) => SimServer::serial().await,
                }
                .with_context(|| format!("cannot serve {} for {}", spec.addr, spec.name))?;
                if let Endpoint::Rtu(bus) = &spec.addr {
                    println!("hw-sim: bus {bus} is {}", server.endpoint());
                }
                // Keyed by the address the server got: each port-0 device is kept apart.
                let key = match &spec.addr {
                    Endpoint::Tcp(_) => Endpoint::Tcp(server.local_addr()),
                    rtu => rtu.clone(),
                };
                servers.insert(key, server.clone());
                server
            }
        };
        match kind {
            "relay" => {
                let handle = server.add_relay(spec.unit, spec.lanes, RelayRegisters::default());
                devices.add_relay(&spec.name, handle)?;
            }
            "panel" => devices.add_panel(&spec.name, server.add_panel(spec.unit))?,
            _ => devices.add_reader(
                &spec.name,
                server.add_reader(spec.unit, ReaderRegisters::default()),
            )?,
        }
        let lanes = if kind == "relay" {
            format!(", {} lanes", spec.lanes)
        } else {
            String::new()
        };
        println!(
            "hw-sim: {kind} {} on {} unit {}{lanes}",
            spec.name,
            server.endpoint(),
            spec.unit,
        );
    }
    for (name, fault) in &cli.device_faults {
        let reply = hw_sim::control::execute(&devices, &format!("device-fault {name} {fault}"));
        let last = reply.last().cloned().unwrap_or_default();
        if !last.starts_with("ok") {
            bail!("--device-fault {name}={fault}: {last}");
        }
        println!("hw-sim: {last}");
    }

    let control = match cli.control {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the control port"))?;
            let addr = listener.local_addr()?;
            println!(
                "hw-sim: control on {addr} (nc {} {}, then: help)",
                addr.ip(),
                addr.port()
            );
            Some(tokio::spawn(serve_control(listener, devices)))
        }
        None => None,
    };
    let stop = shutdown_signal()?;
    println!("hw-sim: serving until Ctrl-C");
    stop.await;
    if let Some(control) = control {
        control.abort();
    }
    for server in servers.values() {
        server.shutdown();
    }
    for server in servers.values() {
        server.stopped().await;
    }
    println!("hw-sim: stopped");
    Ok(())
}

/// Ctrl-C, or SIGTERM (what a test harness or systemd sends). The handlers are installed
/// before this returns, so a signal sent right after the "serving" line is not missed.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot watch Ctrl-C; stopping");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_take_defaults() {
        let spec = parse_reader("reader1=127.0.0.1:5020").expect("valid");
        assert_eq!(
            (spec.unit, spec.addr.clone()),
            (1, Endpoint::Tcp("127.0.0.1:5020".parse().expect("literal")))
        );
        let spec = parse_reader("r2=rtu:bus1/3").expect("valid");
        assert_eq!(
            (spec.unit, spec.addr),
            (3, Endpoint::Rtu("bus1".to_owned()))
        );
        assert_eq!(
            parse_device_fault("r2=flap 500ms").expect("valid"),
            (
                "r2".to_owned(),
                hw_sim::Fault::Flap(std::time::Duration::from_millis(500))
            )
        );
        assert!(parse_device_fault("r2=wobble").is_err());
        let spec = parse_relay("relay1=127.0.0.1:5030/3/4").expect("valid");
        assert_eq!(
            (spec.name.as_str(), spec.unit, spec.lanes),
            ("relay1", 3, 4)
        );
        let spec = parse_relay("relay1=[::1]:5030/7").expect("valid");
        assert_eq!((spec.unit, spec.lanes), (7, 2));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases = [
            (parse_reader("reader1"), "no '='"),
            (parse_reader("=127.0.0.1:1"), "bad name"),
            (parse_reader("r 1=127.0.0.1:1"), "bad name"),
            (parse_reader("r1=localhost:1"), "bad address"),
            (parse_reader("r1=127.0.0.1:1/256"), "bad unit"),
            (parse_reader("r1=127.0.0.1:1/1/2"), "a reader takes"),
            (parse_relay("k1=127.0.0.1:1/1/0"), "bad lane count"),
            (parse_relay("k1=127.0.0.1:1/1/2/3"), "too many"),
        ];
        for (result, expected) in cases {
            let err = result.expect_err("must be refused");
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn same_address_and_unit_is_refused() {
        let a = parse_reader("a=127.0.0.1:5020/1").expect("valid");
        let b = parse_relay("b=127.0.0.1:5020/1").expect("valid");
        let c = parse_relay("c=127.0.0.1:5020/2").expect("valid");
        assert!(check_units(&[&a, &c]).is_ok());
        assert!(check_units(&[&a, &b]).is_err());
        // Port 0: each gets a free port of its own.
        let d = parse_reader("d=127.0.0.1:0/1").expect("valid");
        let e = parse_reader("e=127.0.0.1:0/1").expect("valid");
        assert!(check_units(&[&d, &e]).is_ok());
    }
}
