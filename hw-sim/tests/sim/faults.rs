//! Each fault as a Modbus client experiences it, and recovery once it is cleared.

use std::time::{Duration, Instant};

use hw_sim::{Fault, KIND_CARD, ReaderRegisters, SimServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_modbus::ExceptionCode;
use tokio_modbus::Slave;
use tokio_modbus::client::tcp;
use tokio_modbus::prelude::*;

use crate::util::{SILENCE, any_port, connect, eventually, eventually_async, within};

async fn server_with_reader() -> (SimServer, hw_sim::SimReader) {
    let server = SimServer::bind(any_port()).await.expect("bind");
    let reader = server.add_reader(1, ReaderRegisters::default());
    (server, reader)
}

/// A fresh connection's first request succeeds.
async fn answers(server: &SimServer) -> bool {
    let Ok(Ok(mut ctx)) =
        tokio::time::timeout(SILENCE, tcp::connect_slave(server.local_addr(), Slave(1))).await
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(SILENCE, ctx.read_input_registers(0, 1)).await,
        Ok(Ok(Ok(_)))
    )
}

#[tokio::test]
async fn no_reply_keeps_the_connection_but_never_answers() {
    let (server, _reader) = server_with_reader().await;
    let mut ctx = connect(server.local_addr(), 1).await;
    server.set_fault(Fault::NoReply);

    let silent = tokio::time::timeout(SILENCE, ctx.read_input_registers(0, 1)).await;
    assert!(silent.is_err(), "answered under NoReply: {silent:?}");
    assert_eq!(server.connections(), 1, "the connection stays open");

    server.set_fault(Fault::None);
    assert!(answers(&server).await);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let (server, reader) = server_with_reader().await;
    let delay = Duration::from_millis(200);
    server.set_fault(Fault::Latency(delay));
    let seq = reader.present(KIND_CARD, "1", 0).expect("present");
    let mut ctx = connect(server.local_addr(), 1).await;

    let start = Instant::now();
    let regs = within(ctx.read_input_registers(0, 1)).await.expect("io");
    assert_eq!(regs, Ok(vec![seq]));
    assert!(
        start.elapsed() >= delay,
        "answered after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn exception_answers_every_request_with_it_and_changes_nothing() {
    let (server, reader) = server_with_reader().await;
    let seq = reader.present(KIND_CARD, "1", 0).expect("present");
    server.set_fault(Fault::Exception(ExceptionCode::ServerDeviceBusy));
    let mut ctx = connect(server.local_addr(), 1).await;

    assert_eq!(
        within(ctx.read_input_registers(0, 1)).await.expect("io"),
        Err(ExceptionCode::ServerDeviceBusy)
    );
    assert_eq!(
        within(ctx.write_single_register(0, seq)).await.expect("io"),
        Err(ExceptionCode::ServerDeviceBusy)
    );
    assert_eq!(reader.queued(), 1, "the ack was refused, not applied");

    server.set_fault(Fault::None);
    assert_eq!(
        within(ctx.read_input_registers(0, 1)).await.expect("io"),
        Ok(vec![seq])
    );
}

#[tokio::test]
async fn disconnect_closes_open_connections_and_refuses_new_ones() {
    let (server, _reader) = server_with_reader().await;
    let mut ctx = connect(server.local_addr(), 1).await;
    assert!(within(ctx.read_input_registers(0, 1)).await.is_ok());
    let mut idle = within(TcpStream::connect(server.local_addr()))
        .await
        .expect("connect");
    eventually("both connections to be served", || {
        server.connections() == 2
    })
    .await;

    server.set_fault(Fault::Disconnect);
    // Closed by the device, not merely failing at the next request: an idle client sees EOF.
    let mut byte = [0u8; 1];
    assert_eq!(within(idle.read(&mut byte)).await.expect("read"), 0, "EOF");
    eventually("the connections to be gone", || server.connections() == 0).await;
    assert!(
        within(ctx.read_input_registers(0, 1)).await.is_err(),
        "an open connection is closed"
    );

    // The kernel may complete the handshake, but the device closes at once.
    let refused = within(async {
        let mut ctx = tcp::connect_slave(server.local_addr(), Slave(1)).await?;
        ctx.read_input_registers(0, 1).await
    })
    .await;
    assert!(refused.is_err(), "a new connection was served: {refused:?}");

    server.set_fault(Fault::None);
    eventually_async("the device to come back", || answers(&server)).await;
}

#[tokio::test]
async fn garbage_replaces_answers_with_bytes_that_are_not_a_frame() {
    let (server, reader) = server_with_reader().await;
    let seq = reader.present(KIND_CARD, "1", 0).expect("present");
    server.set_fault(Fault::Garbage);

    let mut ctx = connect(server.local_addr(), 1).await;
    assert!(
        within(ctx.read_input_registers(0, 1)).await.is_err(),
        "a tokio-modbus client rejects the answer as a transport error"
    );

    // What is on the wire: a read of input register 0, unit 1, answered with a protocol id
    // that is not Modbus (0).
    let mut raw = within(TcpStream::connect(server.local_addr()))
        .await
        .expect("connect");
    let request = [0x12, 0x34, 0, 0, 0, 6, 1, 0x04, 0, 0, 0, 1];
    within(raw.write_all(&request)).await.expect("send");
    let mut answer = [0u8; 9];
    within(raw.read_exact(&mut answer))
        .await
        .expect("some answer");
    assert_ne!(
        &answer[2..4],
        &[0, 0],
        "protocol id must not be Modbus: {answer:?}"
    );

    // The request itself still reaches the device: an ack is applied though its answer is
    // garbled, so the daemon's retry must be harmless (and is: the seq is gone from the head).
    let mut ctx = connect(server.local_addr(), 1).await;
    assert!(within(ctx.write_single_register(0, seq)).await.is_err());
    assert_eq!(reader.acked(), vec![seq]);

    server.set_fault(Fault::None);
    assert!(answers(&server).await);
}

#[tokio::test]
async fn malformed_requests_cost_only_their_own_connection() {
    let (server, _reader) = server_with_reader().await;
    let frames: [&[u8]; 5] = [
        // Protocol id 1.
        &[0, 1, 0, 1, 0, 6, 1, 0x04, 0, 0, 0, 1],
        // Length 0.
        &[0, 1, 0, 0, 0, 0, 1],
        // Write multiple registers claiming 0x8000 registers. tokio-modbus 0.17's decoder
        // computes quantity * 2 in u16: in a debug build that panics inside the connection's
        // task (tokio contains it); in release it wraps and the frame is refused.
        &[0, 1, 0, 0, 0, 7, 1, 0x10, 0, 0, 0x80, 0x00, 0x00],
        // Unknown function code.
        &[0, 1, 0, 0, 0, 2, 1, 0x41],
        // Exception-range function code.
        &[0, 1, 0, 0, 0, 2, 1, 0x84],
    ];
    for frame in frames {
        let mut raw = within(TcpStream::connect(server.local_addr()))
            .await
            .expect("connect");
        within(raw.write_all(frame)).await.expect("send");
        // Whatever the answer (an exception, or a closed connection), read until the device
        // has dealt with the frame.
        let mut answer = [0u8; 64];
        let _ = tokio::time::timeout(SILENCE, raw.read(&mut answer)).await;
        assert!(
            answers(&server).await,
            "server still serves after {frame:?}"
        );
    }
}
