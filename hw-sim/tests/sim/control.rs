//! The control port, served in-process on a free port and driven over TCP like `nc` would.

use std::net::SocketAddr;
use std::time::Duration;

use hw_sim::{
    Devices, Fault, ReaderRegisters, RelayRegisters, SimReader, SimRelay, SimServer, serve_control,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_modbus::ExceptionCode;
use tokio_modbus::prelude::*;

use crate::util::{any_port, connect, within};

/// A person at `nc`.
struct Console {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Console {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        let (read, write) = stream.into_split();
        Self {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    async fn next_line(&mut self) -> Option<String> {
        within(self.lines.next_line()).await.expect("read")
    }

    /// Sends one command and returns its reply, up to the final `ok`/`error:` line.
    async fn send(&mut self, command: &str) -> Vec<String> {
        within(self.write.write_all(format!("{command}\n").as_bytes()))
            .await
            .expect("send");
        let mut reply = Vec::new();
        loop {
            let line = self.next_line().await.expect("a reply line");
            let last = line.starts_with("ok") || line.starts_with("error: ");
            reply.push(line);
            if last {
                return reply;
            }
        }
    }

    /// Sends a command that answers with one line, and returns it.
    async fn one(&mut self, command: &str) -> String {
        let reply = self.send(command).await;
        assert_eq!(reply.len(), 1, "{command}: {reply:?}");
        reply.into_iter().next().unwrap_or_default()
    }
}

struct Rig {
    reader: SimReader,
    reader2: SimReader,
    relay: SimRelay,
    control: SocketAddr,
}

/// reader1 (unit 1) and relay1 (unit 2, 2 lanes) share one socket; reader2 has its own.
async fn rig() -> Rig {
    let shared = SimServer::bind(any_port()).await.expect("bind");
    let own = SimServer::bind(any_port()).await.expect("bind");
    let reader = shared.add_reader(1, ReaderRegisters::default());
    let relay = shared.add_relay(2, 2, RelayRegisters::default());
    let reader2 = own.add_reader(1, ReaderRegisters::default());
    let mut devices = Devices::new();
    devices.add_reader("reader1", reader.clone()).expect("name");
    devices
        .add_reader("reader2", reader2.clone())
        .expect("name");
    devices.add_relay("relay1", relay.clone()).expect("name");
    let listener = tokio::net::TcpListener::bind(any_port())
        .await
        .expect("bind");
    let control = listener.local_addr().expect("addr");
    tokio::spawn(serve_control(listener, devices));
    Rig {
        reader,
        reader2,
        relay,
        control,
    }
}

fn assert_error(reply: &str, mentions: &str) {
    assert!(
        reply.starts_with("error: ") && reply.contains(mentions),
        "{reply:?} should be an error mentioning {mentions:?}"
    );
}

#[tokio::test]
async fn present_queues_events_and_names_what_is_wrong() {
    let rig = rig().await;
    let mut console = Console::connect(rig.control).await;

    assert_eq!(
        console.one("present reader1 card 0012345678").await,
        "ok seq=1"
    );
    assert_eq!(console.one("present reader1 face P1001").await, "ok seq=2");
    assert_eq!(
        console.one("present reader1 face P1002 420").await,
        "ok seq=3"
    );
    assert_eq!(rig.reader.queued(), 3);
    assert_eq!(rig.reader2.queued(), 0);

    // The face without a score got the default clear match.
    let server = rig.reader.server().local_addr();
    let mut ctx = connect(server, 1).await;
    within(ctx.write_single_register(0, 1))
        .await
        .expect("io")
        .expect("ack");
    let head = within(ctx.read_input_registers(0, 3))
        .await
        .expect("io")
        .expect("regs");
    assert_eq!(head, vec![2, hw_sim::KIND_FACE, 950]);

    assert_error(
        &console.one("present reader1 badge 1").await,
        "unknown kind 'badge'",
    );
    assert_error(
        &console.one("present nosuch card 1").await,
        "unknown device 'nosuch'",
    );
    assert_error(&console.one("present relay1 card 1").await, "not a reader");
    assert_error(
        &console.one("present reader1 face X 1001").await,
        "bad score '1001'",
    );
    assert_error(
        &console.one("present reader1 face X 1.5").await,
        "bad score '1.5'",
    );
    // A score as the daemon's `min_face_score` writes it: 0.93 is the register's 930.
    assert_eq!(
        console.one("present reader1 face P1003 0.93").await,
        "ok seq=4"
    );
    within(ctx.write_single_register(0, 2))
        .await
        .expect("io")
        .expect("ack");
    within(ctx.write_single_register(0, 3))
        .await
        .expect("io")
        .expect("ack");
    let head = within(ctx.read_input_registers(0, 3))
        .await
        .expect("io")
        .expect("regs");
    assert_eq!(head, vec![4, hw_sim::KIND_FACE, 930]);
    assert_error(
        &console
            .one(&format!("present reader1 card {}", "9".repeat(65)))
            .await,
        "64",
    );
    assert_error(&console.one("present reader1 card").await, "usage: present");
    assert_error(&console.one("open sesame").await, "unknown command 'open'");
    assert_eq!(rig.reader.queued(), 1, "nothing queued by bad commands");
}

#[tokio::test]
async fn relay_commands_pulses_counters_and_contacts() {
    let rig = rig().await;
    let mut console = Console::connect(rig.control).await;

    assert_eq!(console.send("pulses relay1").await, vec!["ok 0 pulses"]);
    let mut ctx = connect(rig.relay.server().local_addr(), 2).await;
    within(ctx.write_single_register(100, 3000))
        .await
        .expect("io")
        .expect("pulse");
    within(ctx.write_single_register(103, 800))
        .await
        .expect("io")
        .expect("pulse");
    let reply = console.send("pulses relay1").await;
    assert_eq!(reply.len(), 3, "{reply:?}");
    assert!(
        reply[0].starts_with("lane=0 dir=in ms=3000 at="),
        "{reply:?}"
    );
    assert!(
        reply[1].starts_with("lane=1 dir=out ms=800 at="),
        "{reply:?}"
    );
    assert_eq!(reply[2], "ok 2 pulses");
    let at = reply[0].rsplit("at=").next().unwrap_or_default();
    assert_eq!(
        at.len(),
        "2026-11-21T08:01:02.345Z".len(),
        "millisecond precision, UTC: {at}"
    );
    let parsed = chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
    let recorded = chrono::DateTime::<chrono::Utc>::from(rig.relay.pulses()[0].at);
    assert_eq!(parsed.timestamp_millis(), recorded.timestamp_millis());

    assert_eq!(console.one("bump relay1 1 out").await, "ok counter=1");
    assert_eq!(console.one("bump relay1 1 out").await, "ok counter=2");
    assert_eq!(rig.relay.counter(1, true), 2);
    assert_error(
        &console.one("bump relay1 2 in").await,
        "bad lane '2' (relay1 has lanes 0..1)",
    );
    assert_error(
        &console.one("bump relay1 0 sideways").await,
        "bad direction 'sideways'",
    );
    assert_error(&console.one("bump reader1 0 in").await, "not a relay");

    assert_eq!(console.one("fire relay1 on").await, "ok fire=on");
    assert!(rig.relay.fire());
    assert_eq!(
        within(ctx.read_discrete_inputs(0, 1)).await.expect("io"),
        Ok(vec![true])
    );
    assert_eq!(console.one("tamper relay1 on").await, "ok tamper=on");
    assert_eq!(console.one("fire relay1 off").await, "ok fire=off");
    assert!(!rig.relay.fire() && rig.relay.tamper());
    assert_error(
        &console.one("tamper relay1 maybe").await,
        "bad state 'maybe'",
    );

    // A board that takes register writes only as function 16.
    assert_eq!(console.one("fc6 relay1 off").await, "ok fc6=off");
    let pulses = rig.relay.pulses().len();
    assert_eq!(
        within(ctx.write_single_register(101, 2000))
            .await
            .expect("io"),
        Err(ExceptionCode::IllegalFunction)
    );
    assert_eq!(rig.relay.pulses().len(), pulses, "refused: no pulse");
    within(ctx.write_multiple_registers(101, &[2000]))
        .await
        .expect("io")
        .expect("function 16 is taken");
    assert_eq!(rig.relay.pulses().len(), pulses + 1);
    assert_eq!(console.one("fc6 relay1 on").await, "ok fc6=on");
    within(ctx.write_single_register(101, 0))
        .await
        .expect("io")
        .expect("function 6 taken again");
}

#[tokio::test]
async fn fault_applies_to_the_socket_and_status_shows_it() {
    let rig = rig().await;
    let mut console = Console::connect(rig.control).await;
    let server = rig.reader.server();

    let reply = console.one("fault reader1 latency 50").await;
    assert!(reply.starts_with("ok fault=latency 50ms on "), "{reply}");
    assert!(
        reply.ends_with("(reader1, relay1)"),
        "names the devices it hit: {reply}"
    );
    assert_eq!(server.fault(), Fault::Latency(Duration::from_millis(50)));
    assert_eq!(rig.reader2.server().fault(), Fault::None);

    console.one("fault relay1 exception 0x06").await;
    assert_eq!(
        server.fault(),
        Fault::Exception(ExceptionCode::ServerDeviceBusy)
    );
    console.one("fault reader1 exception 2").await;
    assert_eq!(
        server.fault(),
        Fault::Exception(ExceptionCode::IllegalDataAddress)
    );
    for (command, fault) in [
        (
            "fault reader1 latency 75ms",
            Fault::Latency(Duration::from_millis(75)),
        ),
        ("fault reader1 noreply", Fault::NoReply),
        ("fault reader1 garbage", Fault::Garbage),
        ("fault reader1 disconnect", Fault::Disconnect),
        ("fault reader1 none", Fault::None),
    ] {
        assert!(console.one(command).await.starts_with("ok"));
        assert_eq!(server.fault(), fault, "{command}");
    }
    assert_error(
        &console.one("fault reader1 flaky").await,
        "unknown fault 'flaky'",
    );
    assert_error(
        &console.one("fault reader1 latency soon").await,
        "bad latency 'soon'",
    );
    assert_error(
        &console.one("fault reader1 exception 0").await,
        "bad exception code '0'",
    );
    assert_error(
        &console.one("fault ghost none").await,
        "unknown device 'ghost'",
    );

    console.one("fault reader2 noreply").await;
    rig.reader2
        .present(hw_sim::KIND_PIN, "1234", 0)
        .expect("present");
    let status = console.send("status").await;
    assert_eq!(status.len(), 4, "{status:?}");
    assert!(
        status[0].starts_with("reader1 reader unit=1 queued=0 "),
        "{status:?}"
    );
    assert!(
        status[1].starts_with("reader2 reader unit=1 queued=1 "),
        "{status:?}"
    );
    assert!(status[1].contains("fault=noreply"), "{status:?}");
    assert!(status[1].contains(&format!("addr={}", rig.reader2.server().local_addr())));
    assert!(
        status[2].starts_with("relay1 relay unit=2 lanes=2 "),
        "{status:?}"
    );
    assert!(status[2].contains("fault=none"), "{status:?}");
    assert_eq!(status[3], "ok 3 devices");
}

#[tokio::test]
async fn the_port_survives_bad_input_and_serves_many_consoles() {
    let rig = rig().await;
    let mut first = Console::connect(rig.control).await;
    let mut second = Console::connect(rig.control).await;

    let help = first.send("help").await;
    assert!(
        help.len() > 5 && help.last().is_some_and(|l| l == "ok"),
        "{help:?}"
    );
    assert!(help.iter().any(|l| l.starts_with("present READER")));

    // An empty line gets no reply: the next reply is the next command's.
    assert_eq!(
        second.send("\r\n\nstatus").await.last().map(String::as_str),
        Some("ok 3 devices")
    );

    // Invalid UTF-8 is an unknown command, not a dead port.
    within(first.write.write_all(b"\xff\xfe\n"))
        .await
        .expect("send");
    let reply = first.next_line().await.expect("reply");
    assert_error(&reply, "unknown command");

    // A runaway line is refused and skipped; the connection goes on.
    within(first.write.write_all(&[b'x'; 5000]))
        .await
        .expect("send");
    // The newline that ends it is the only thing `one("")` sends.
    assert_error(&first.one("").await, "longer than 1024 bytes");
    assert_eq!(
        first.send("status").await.last().map(String::as_str),
        Some("ok 3 devices")
    );

    assert_eq!(first.one("quit").await, "ok bye");
    assert_eq!(first.next_line().await, None, "closed after quit");
    assert_eq!(second.one("present reader1 qr T0K3N").await, "ok seq=1");
}
