//! Modbus RTU on a pseudo-terminal (an RS-485 bus): several units on one line, and faults of
//! one unit that spare the others, over TCP and RTU alike.

use std::time::Duration;

use hw_sim::{Fault, KIND_CARD, ReaderRegisters, RelayRegisters, SimServer};
use tokio_modbus::client::{Context, rtu};
use tokio_modbus::prelude::*;

use crate::util::{SILENCE, any_port, connect, within};

/// Opens the simulator's pty as the daemon would open a serial adapter.
fn open_bus(server: &SimServer) -> Context {
    let path = server.serial_path().expect("a serial server has a path");
    let port = tokio_serial::SerialStream::open(&tokio_serial::new(path.to_string_lossy(), 19_200))
        .expect("open the pseudo-terminal");
    rtu::attach(port)
}

#[tokio::test]
async fn units_on_one_bus_answer_by_their_own_unit_id() {
    let bus = SimServer::serial().await.expect("pty");
    let reader = bus.add_reader(2, ReaderRegisters::default());
    let relay = bus.add_relay(7, 2, RelayRegisters::default());
    let mut ctx = open_bus(&bus);

    let seq = reader.present(KIND_CARD, "0012345678", 0).expect("queued");
    ctx.set_slave(Slave(2));
    let regs = within(ctx.read_input_registers(0, 36))
        .await
        .expect("transport")
        .expect("no exception");
    assert_eq!(regs[0], seq);
    within(ctx.write_single_register(0, seq))
        .await
        .expect("transport")
        .expect("no exception");
    assert_eq!(reader.acked(), vec![seq]);

    ctx.set_slave(Slave(7));
    within(ctx.write_single_register(101, 500))
        .await
        .expect("transport")
        .expect("no exception");
    assert!(relay.released(0, true), "lane 0 exit released");

    // A unit nobody hosts stays silent, like an absent device on a bus.
    ctx.set_slave(Slave(9));
    let silent = tokio::time::timeout(SILENCE, ctx.read_input_registers(0, 1)).await;
    assert!(silent.is_err(), "unit 9 answered: {silent:?}");
}

#[tokio::test]
async fn a_silent_unit_on_the_bus_spares_the_others() {
    let bus = SimServer::serial().await.expect("pty");
    let _dead = bus.add_reader(1, ReaderRegisters::default());
    let live = bus.add_reader(2, ReaderRegisters::default());
    bus.set_unit_fault(1, Fault::NoReply);

    let mut ctx = open_bus(&bus);
    ctx.set_slave(Slave(1));
    let silent = tokio::time::timeout(SILENCE, ctx.read_input_registers(0, 1)).await;
    assert!(silent.is_err(), "the faulty unit answered: {silent:?}");
    // A late reply must not be taken for the next answer: open the port afresh, as gated does.
    drop(ctx);
    let mut ctx = open_bus(&bus);
    ctx.set_slave(Slave(2));
    let seq = live.present(KIND_CARD, "42", 0).expect("queued");
    let regs = within(ctx.read_input_registers(0, 1))
        .await
        .expect("transport")
        .expect("no exception");
    assert_eq!(regs[0], seq, "the healthy unit answers");

    bus.set_unit_fault(1, Fault::None);
    ctx.set_slave(Slave(1));
    within(ctx.read_input_registers(0, 1))
        .await
        .expect("transport")
        .expect("answers again once the fault is cleared");
}

#[tokio::test]
async fn a_unit_fault_on_a_tcp_socket_spares_the_other_units() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let _a = server.add_reader(1, ReaderRegisters::default());
    let _b = server.add_reader(2, ReaderRegisters::default());
    server.set_unit_fault(1, Fault::Exception(ExceptionCode::ServerDeviceBusy));
    let mut one = connect(server.local_addr(), 1).await;
    let mut two = connect(server.local_addr(), 2).await;
    let r = within(one.read_input_registers(0, 1))
        .await
        .expect("transport");
    assert_eq!(r, Err(ExceptionCode::ServerDeviceBusy));
    within(two.read_input_registers(0, 1))
        .await
        .expect("transport")
        .expect("unit 2 is spared");

    // Garbage on one unit: a frame of the wrong function, which the client refuses.
    server.set_unit_fault(1, Fault::Garbage);
    let r = within(one.read_input_registers(0, 1)).await;
    assert!(
        r.is_err(),
        "a wrong function must be a protocol error: {r:?}"
    );
    within(two.read_input_registers(0, 1))
        .await
        .expect("transport")
        .expect("unit 2 is spared");
}

#[tokio::test]
async fn a_flapping_unit_answers_and_falls_silent_in_turn() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let _reader = server.add_reader(1, ReaderRegisters::default());
    let period = Duration::from_millis(400);
    server.set_unit_fault(1, Fault::Flap(period));
    let started = std::time::Instant::now();
    let (mut answered, mut silent) = (0, 0);
    // Two whole periods, sampled; a fresh connection after each silence (as a client that
    // timed out would do).
    let mut ctx = connect(server.local_addr(), 1).await;
    while started.elapsed() < 4 * period {
        match tokio::time::timeout(Duration::from_millis(50), ctx.read_input_registers(0, 1)).await
        {
            Ok(Ok(Ok(_))) => answered += 1,
            _ => {
                silent += 1;
                ctx = connect(server.local_addr(), 1).await;
            }
        }
    }
    assert!(
        answered > 0 && silent > 0,
        "a flap both answers and falls silent: {answered} answers, {silent} silences"
    );
    server.set_unit_fault(1, Fault::None);
    within(ctx.read_input_registers(0, 1))
        .await
        .expect("transport")
        .expect("steady again");
}
