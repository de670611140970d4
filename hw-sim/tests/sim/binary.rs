//! The `hw-sim` binary as a person runs it: flags, the printed addresses, the control port,
//! Modbus, and a clean stop on SIGTERM.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_modbus::prelude::*;

use crate::util::{connect, within};

fn hw_sim() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hw-sim"));
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The address printed after `marker` in a line like `hw-sim: reader r1 on 127.0.0.1:4711 unit 1`.
fn addr_after(line: &str, marker: &str) -> SocketAddr {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address after {marker:?} in {line:?}"))
}

#[tokio::test]
async fn serves_devices_and_the_control_port_until_terminated() {
    // Port 0 everywhere: each device gets a free port of its own, and the binary prints it.
    // Two readers on unit 1, both on port 0, are two devices, not a clash.
    let mut child = hw_sim()
        .args([
            "--reader",
            "r1=127.0.0.1:0",
            "--reader",
            "r2=127.0.0.1:0",
            "--relay",
            "k1=127.0.0.1:0/2/3",
            "--control",
            "127.0.0.1:0",
        ])
        .spawn()
        .expect("spawn hw-sim");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    while let Some(line) = within(lines.next_line()).await.expect("read stdout") {
        let done = line.contains("serving until");
        printed.push(line);
        if done {
            break;
        }
    }
    let reader_line = printed
        .iter()
        .find(|l| l.contains("reader r1 on"))
        .expect("reader line");
    let relay_line = printed
        .iter()
        .find(|l| l.contains("relay k1 on"))
        .expect("relay line");
    let control_line = printed
        .iter()
        .find(|l| l.contains("control on"))
        .expect("control line");
    let modbus = addr_after(reader_line, " on ");
    let relay_addr = addr_after(relay_line, " on ");
    assert_ne!(
        relay_addr.port(),
        modbus.port(),
        "port 0: each device on a free port of its own"
    );
    assert!(relay_line.contains("unit 2, 3 lanes"), "{relay_line}");
    let control = addr_after(control_line, " on ");

    let stream = within(TcpStream::connect(control))
        .await
        .expect("control port");
    let (read, mut write) = stream.into_split();
    let mut replies = BufReader::new(read).lines();
    within(write.write_all(b"present r1 card 0012345678\n"))
        .await
        .expect("send");
    let reply = within(replies.next_line())
        .await
        .expect("read")
        .expect("a reply");
    assert_eq!(reply, "ok seq=1");

    let r2_line = printed
        .iter()
        .find(|l| l.contains("reader r2 on"))
        .expect("reader r2 line");
    let r2 = addr_after(r2_line, " on ");
    assert!(
        r2.port() != modbus.port() && r2.port() != relay_addr.port(),
        "{printed:?}"
    );
    let mut reader2 = connect(r2, 1).await;
    let empty = within(reader2.read_input_registers(0, 1))
        .await
        .expect("io")
        .expect("regs");
    assert_eq!(
        empty,
        vec![0],
        "r2 is a reader of its own, with nothing queued"
    );
    let mut reader = connect(modbus, 1).await;
    let head = within(reader.read_input_registers(0, 4))
        .await
        .expect("io")
        .expect("regs");
    assert_eq!(head, vec![1, hw_sim::KIND_CARD, 0, 10]);
    let mut relay = connect(relay_addr, 2).await;
    within(relay.write_single_register(105, 1500))
        .await
        .expect("io")
        .expect("pulse");
    within(write.write_all(b"pulses k1\n")).await.expect("send");
    let pulse = within(replies.next_line())
        .await
        .expect("read")
        .expect("a reply");
    assert!(pulse.starts_with("lane=2 dir=out ms=1500 at="), "{pulse}");

    let pid = child.id().expect("running").to_string();
    let killed = within(Command::new("kill").args(["-TERM", &pid]).status())
        .await
        .expect("run kill");
    assert!(killed.success());
    let status = within(child.wait()).await.expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let rest = within(lines.next_line()).await.expect("read stdout");
    assert_eq!(rest.as_deref(), Some("hw-sim: stopped"));
}

#[tokio::test]
async fn bad_flags_are_refused_with_the_reason() {
    for (args, reason) in [
        (
            vec!["--reader", "r1=localhost:5020"],
            "bad address 'localhost:5020'",
        ),
        (vec!["--relay", "k1=127.0.0.1:0/1/0"], "bad lane count '0'"),
        (
            vec![
                "--reader",
                "a=127.0.0.1:5020/1",
                "--relay",
                "b=127.0.0.1:5020/1",
            ],
            "a and b are both unit 1",
        ),
        (vec!["--control", "127.0.0.1:0"], "nothing to serve"),
    ] {
        let output = within(hw_sim().args(&args).output())
            .await
            .expect("run hw-sim");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}
