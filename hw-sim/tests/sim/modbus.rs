//! The device profile over the wire: mailbox, pulses, coils, counters, contacts, addressing,
//! and the server's life cycle under many clients.

use std::time::SystemTime;

use hw_sim::{KIND_CARD, KIND_FACE, Pulse, ReaderRegisters, RelayRegisters, SimServer};
use tokio_modbus::ExceptionCode;
use tokio_modbus::prelude::*;

use crate::util::{SILENCE, any_port, connect, credential, eventually, eventually_async, within};

#[tokio::test]
async fn mailbox_shows_each_event_until_its_seq_is_acked() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let reader = server.add_reader(1, ReaderRegisters::default());
    let mut ctx = connect(server.local_addr(), 1).await;

    let empty = within(ctx.read_input_registers(0, 36))
        .await
        .expect("io")
        .expect("regs");
    assert_eq!(empty, vec![0; 36], "an empty queue reads as zeros");

    assert_eq!(reader.present(KIND_CARD, "0012345678", 0), Ok(1));
    assert!(reader.presented_at(1).is_some(), "visible at once");
    assert_eq!(reader.present(KIND_FACE, "P1001", 912), Ok(2));
    assert_eq!(reader.presented_at(2), None, "not at the head yet");

    let head = within(ctx.read_input_registers(0, 36))
        .await
        .expect("io")
        .expect("regs");
    assert_eq!(&head[..4], &[1, KIND_CARD, 0, 10]);
    assert_eq!(credential(&head), "0012345678");

    // A wrong ack is accepted, read back, and changes nothing.
    within(ctx.write_single_register(0, 2))
        .await
        .expect("io")
        .expect("write");
    assert_eq!(
        within(ctx.read_holding_registers(0, 1)).await.expect("io"),
        Ok(vec![2])
    );
    assert_eq!(reader.queued(), 2);
    assert_eq!(reader.head(), Some(1));

    within(ctx.write_single_register(0, 1))
        .await
        .expect("io")
        .expect("write");
    let head = within(ctx.read_input_registers(0, 36))
        .await
        .expect("io")
        .expect("regs");
    assert_eq!(&head[..4], &[2, KIND_FACE, 912, 5]);
    assert_eq!(credential(&head), "P1001");
    let first = reader.presented_at(1).expect("was head");
    let second = reader.presented_at(2).expect("is head now");
    assert!(second >= first);

    // Write multiple registers (0x10) acks too.
    within(ctx.write_multiple_registers(0, &[2]))
        .await
        .expect("io")
        .expect("write");
    let head = within(ctx.read_input_registers(0, 4))
        .await
        .expect("io")
        .expect("regs");
    assert_eq!(head, vec![0, 0, 0, 0]);
    assert_eq!(reader.acked(), vec![1, 2]);
    assert_eq!(reader.queued(), 0);
}

#[tokio::test]
async fn a_unit_the_server_does_not_host_never_answers() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let _reader = server.add_reader(1, ReaderRegisters::default());

    let mut absent = connect(server.local_addr(), 2).await;
    let silent = tokio::time::timeout(SILENCE, absent.read_input_registers(0, 1)).await;
    assert!(silent.is_err(), "unit 2 answered: {silent:?}");

    let mut present = connect(server.local_addr(), 1).await;
    assert_eq!(
        within(present.read_input_registers(0, 1))
            .await
            .expect("io"),
        Ok(vec![0])
    );
}

#[tokio::test]
async fn pulses_are_recorded_with_a_timestamp_and_timed_by_the_board() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let relay = server.add_relay(1, 2, RelayRegisters::default());
    let mut ctx = connect(server.local_addr(), 1).await;

    let before = SystemTime::now();
    // Lane 1 exit: holding 101 + 2*1.
    within(ctx.write_single_register(103, 3000))
        .await
        .expect("io")
        .expect("write");
    let after = SystemTime::now();
    let pulses = relay.pulses();
    assert_eq!(pulses.len(), 1);
    let Pulse { lane, exit, ms, at } = pulses[0].clone();
    assert_eq!((lane, exit, ms), (1, true, 3000));
    assert!(before <= at && at <= after, "timestamp taken at the write");
    assert!(relay.released(1, true));
    assert!(!relay.released(1, false));

    let left = within(ctx.read_holding_registers(103, 1))
        .await
        .expect("io")
        .expect("regs");
    assert!(
        left[0] > 0 && left[0] <= 3000,
        "reads the time left: {left:?}"
    );

    // 0 cancels, and is not a pulse.
    within(ctx.write_single_register(103, 0))
        .await
        .expect("io")
        .expect("write");
    assert_eq!(
        within(ctx.read_holding_registers(103, 1))
            .await
            .expect("io"),
        Ok(vec![0])
    );
    assert!(!relay.released(1, true));

    within(ctx.write_multiple_registers(100, &[500, 0]))
        .await
        .expect("io")
        .expect("write");
    let pulses = relay.pulses();
    assert_eq!(pulses.len(), 2);
    assert_eq!(
        (pulses[1].lane, pulses[1].exit, pulses[1].ms),
        (0, false, 500)
    );
}

#[tokio::test]
async fn coils_counters_and_contacts() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let relay = server.add_relay(1, 2, RelayRegisters::default());
    let mut ctx = connect(server.local_addr(), 1).await;

    within(ctx.write_single_coil(1, true))
        .await
        .expect("io")
        .expect("write");
    assert!(relay.hold(0, true));
    assert!(relay.released(0, true));
    within(ctx.write_multiple_coils(2, &[true, true]))
        .await
        .expect("io")
        .expect("write");
    assert!(relay.hold(1, false) && relay.hold(1, true));
    within(ctx.write_single_coil(1, false))
        .await
        .expect("io")
        .expect("write");
    assert_eq!(
        within(ctx.read_coils(0, 4)).await.expect("io"),
        Ok(vec![false, false, true, true])
    );

    relay.bump_counter(0, false);
    relay.bump_counter(0, false);
    relay.bump_counter(1, true);
    assert_eq!(
        within(ctx.read_input_registers(0, 4)).await.expect("io"),
        Ok(vec![2, 0, 0, 1])
    );
    assert_eq!(relay.counter(0, false), 2);

    assert_eq!(
        within(ctx.read_discrete_inputs(0, 2)).await.expect("io"),
        Ok(vec![false, false])
    );
    relay.set_fire(true);
    assert_eq!(
        within(ctx.read_discrete_inputs(0, 2)).await.expect("io"),
        Ok(vec![true, false])
    );
    relay.set_tamper(true);
    relay.set_fire(false);
    assert_eq!(
        within(ctx.read_discrete_inputs(0, 2)).await.expect("io"),
        Ok(vec![false, true])
    );
}

#[tokio::test]
async fn out_of_range_addresses_are_illegal_data_address() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let _reader = server.add_reader(1, ReaderRegisters::default());
    let _relay = server.add_relay(2, 2, RelayRegisters::default());
    let mut reader = connect(server.local_addr(), 1).await;
    let mut relay = connect(server.local_addr(), 2).await;
    let illegal = ExceptionCode::IllegalDataAddress;

    assert_eq!(
        within(reader.read_input_registers(30, 10))
            .await
            .expect("io"),
        Err(illegal)
    );
    assert_eq!(
        within(reader.write_single_register(2, 5))
            .await
            .expect("io"),
        Err(illegal)
    );
    assert_eq!(
        within(reader.read_coils(0, 1)).await.expect("io"),
        Err(illegal)
    );
    assert_eq!(
        within(reader.read_input_registers(0, 0)).await.expect("io"),
        Err(ExceptionCode::IllegalDataValue)
    );

    assert_eq!(
        within(relay.write_single_register(104, 100))
            .await
            .expect("io"),
        Err(illegal)
    );
    assert_eq!(
        within(relay.read_coils(0, 5)).await.expect("io"),
        Err(illegal)
    );
    assert_eq!(
        within(relay.read_discrete_inputs(2, 1)).await.expect("io"),
        Err(illegal)
    );
    assert_eq!(
        within(relay.read_input_registers(3, 2)).await.expect("io"),
        Err(illegal)
    );

    // An exception does not cost the connection.
    assert_eq!(
        within(relay.read_input_registers(0, 4)).await.expect("io"),
        Ok(vec![0; 4])
    );
}

#[tokio::test]
async fn register_bases_are_configurable() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let reader = server.add_reader(
        5,
        ReaderRegisters {
            input_base: 2000,
            ack_register: 3000,
            ..ReaderRegisters::default()
        },
    );
    let relay = server.add_relay(
        6,
        1,
        RelayRegisters {
            pulse_base: 40,
            coil_base: 16,
            counter_base: 300,
            fire_input: 7,
            tamper_input: 9,
            button_base: 20,
            feedback_base: 500,
            door_base: 600,
        },
    );
    let seq = reader.present(KIND_CARD, "77", 0).expect("present");
    let mut ctx = connect(server.local_addr(), 5).await;
    assert_eq!(
        within(ctx.read_input_registers(2000, 1)).await.expect("io"),
        Ok(vec![seq])
    );
    within(ctx.write_single_register(3000, seq))
        .await
        .expect("io")
        .expect("ack");
    assert_eq!(reader.acked(), vec![seq]);

    let mut ctx = connect(server.local_addr(), 6).await;
    within(ctx.write_single_register(41, 700))
        .await
        .expect("io")
        .expect("pulse");
    assert_eq!((relay.pulses()[0].lane, relay.pulses()[0].exit), (0, true));
    within(ctx.write_single_coil(16, true))
        .await
        .expect("io")
        .expect("coil");
    assert!(relay.hold(0, false));
    relay.bump_counter(0, true);
    assert_eq!(
        within(ctx.read_input_registers(300, 2)).await.expect("io"),
        Ok(vec![0, 1])
    );
    relay.set_tamper(true);
    assert_eq!(
        within(ctx.read_discrete_inputs(9, 1)).await.expect("io"),
        Ok(vec![true])
    );
    assert_eq!(
        within(ctx.read_discrete_inputs(7, 3)).await.expect("io"),
        Err(ExceptionCode::IllegalDataAddress),
        "address 8 is neither contact"
    );
    // The request buttons of lane 0 sit at 20 (entry) and 21 (exit); 22 is beyond the lane.
    assert!(relay.set_button(0, true, true));
    assert!(!relay.set_button(1, false, true), "no lane 1");
    assert_eq!(
        within(ctx.read_discrete_inputs(20, 2)).await.expect("io"),
        Ok(vec![false, true])
    );
    assert_eq!(
        within(ctx.read_discrete_inputs(21, 2)).await.expect("io"),
        Err(ExceptionCode::IllegalDataAddress)
    );
}

#[tokio::test]
async fn many_clients_at_once_and_clients_that_reconnect() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let reader = server.add_reader(1, ReaderRegisters::default());
    let seq = reader.present(KIND_CARD, "1", 0).expect("present");
    let addr = server.local_addr();

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..50 {
        clients.spawn(async move {
            let mut ctx = connect(addr, 1).await;
            for _ in 0..20 {
                let regs = within(ctx.read_input_registers(0, 36))
                    .await
                    .expect("io")
                    .expect("regs");
                assert_eq!(regs[0], seq);
            }
        });
    }
    eventually("all 50 clients connected at some point", || {
        server.connections() > 1
    })
    .await;
    while let Some(joined) = clients.join_next().await {
        joined.expect("client task");
    }

    for _ in 0..30 {
        let mut ctx = connect(addr, 1).await;
        let regs = within(ctx.read_input_registers(0, 1)).await.expect("io");
        assert_eq!(regs, Ok(vec![seq]));
    }
    eventually("closed connections to be released", || {
        server.connections() == 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_the_listener() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let _reader = server.add_reader(1, ReaderRegisters::default());
    let addr = server.local_addr();
    let mut ctx = connect(addr, 1).await;
    assert!(within(ctx.read_input_registers(0, 1)).await.is_ok());

    server.shutdown();
    within(server.stopped()).await;
    assert!(within(ctx.read_input_registers(0, 1)).await.is_err());
    assert!(within(tokio::net::TcpStream::connect(addr)).await.is_err());
}

#[tokio::test]
async fn dropping_every_handle_stops_the_server() {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let addr = server.local_addr();
    let reader = server.add_reader(1, ReaderRegisters::default());
    drop(server);
    // The unit's handle keeps the device alive...
    let mut ctx = connect(addr, 1).await;
    assert!(within(ctx.read_input_registers(0, 1)).await.is_ok());
    // ...until it goes too.
    drop(reader);
    eventually_async("the listener to close", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
}
