//! A device's Modbus link: its own TCP connection (`ModbusTcp`) or its unit on an RS-485 bus
//! (`bus::BusHandle`), behind one type, `Modbus`, that the device tasks use.
//!
//! Over TCP: one connection to one unit, with a timeout on every call and a reconnect after
//! any timeout or transport error (a late reply must never be taken for the next request's:
//! tokio-modbus #324, so the context is dropped, not reused).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_modbus::client::{Context, Reader, Writer, tcp};
use tokio_modbus::{ExceptionCode, Slave};

use super::DeviceError;
use super::bus::{BusHandle, Buses, Op, Reply, io_words, transport};
use crate::config::Link;

/// One device's link, whichever transport. Every reply's length is checked here.
pub struct Modbus {
    path: Path,
    /// Register writes as function 16 (write multiple registers), for boards that refuse
    /// function 6.
    fc16: bool,
}

enum Path {
    Tcp(ModbusTcp),
    Rtu {
        bus: BusHandle,
        unit: u8,
        timeout: Duration,
    },
}

impl Modbus {
    pub fn new(link: &Link, unit: u8, timeout: Duration, buses: &Buses) -> Self {
        let path = match link {
            Link::Tcp(address) => Path::Tcp(ModbusTcp::new(address, unit, timeout)),
            Link::Rtu(serial) => Path::Rtu {
                bus: buses.get(serial),
                unit,
                timeout,
            },
        };
        Modbus { path, fc16: false }
    }

    /// How many connections this link has made to its device (always 0 on a serial bus, which
    /// has none). Requests that are safe to repeat reconnect quietly when the device closed the
    /// connection, so a device that lost power and came back shows only here: a caller that
    /// keeps state on the device (a relay board's hold coils) writes it again when this moves.
    pub fn connects(&self) -> u64 {
        match &self.path {
            Path::Tcp(t) => t.connects,
            Path::Rtu { .. } => 0,
        }
    }

    /// Writes registers with function 16 instead of 6.
    pub fn with_fc16_writes(mut self, fc16: bool) -> Self {
        self.fc16 = fc16;
        self
    }

    async fn call(&mut self, op: Op, repeat: Repeat) -> Result<Reply, DeviceError> {
        match &mut self.path {
            Path::Tcp(t) => t.call(&op, repeat).await,
            Path::Rtu { bus, unit, timeout } => bus.call(*unit, op, *timeout).await,
        }
    }

    pub async fn read_input_registers(
        &mut self,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<u16>, DeviceError> {
        let r = self
            .call(Op::ReadInputRegisters(addr, cnt), Repeat::Safe)
            .await?;
        words(r, addr, cnt, "input registers")
    }

    pub async fn read_discrete_inputs(
        &mut self,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<bool>, DeviceError> {
        match self
            .call(Op::ReadDiscreteInputs(addr, cnt), Repeat::Safe)
            .await?
        {
            Reply::Bits(v) if v.len() >= usize::from(cnt) => Ok(v),
            other => Err(DeviceError::Garbage(format!(
                "asked for {cnt} discrete inputs at {addr}, got {other:?}"
            ))),
        }
    }

    /// Coils hold a state: writing them twice does no harm.
    pub async fn write_multiple_coils(
        &mut self,
        addr: u16,
        values: &[bool],
    ) -> Result<(), DeviceError> {
        self.call(Op::WriteMultipleCoils(addr, values.to_vec()), Repeat::Safe)
            .await
            .map(drop)
    }

    /// Writes one holding register, with function 6, or 16 on a board that takes only that.
    /// `repeat` says whether the write may be sent again on a new connection when the device
    /// closed the old one under it.
    pub async fn write_register(
        &mut self,
        addr: u16,
        value: u16,
        repeat: Repeat,
    ) -> Result<(), DeviceError> {
        let op = if self.fc16 {
            Op::WriteMultipleRegisters(addr, vec![value])
        } else {
            Op::WriteSingleRegister(addr, value)
        };
        self.call(op, repeat).await.map(drop)
    }
}

fn words(r: Reply, addr: u16, cnt: u16, what: &str) -> Result<Vec<u16>, DeviceError> {
    match r {
        Reply::Words(v) if v.len() == usize::from(cnt) => Ok(v),
        other => Err(DeviceError::Garbage(format!(
            "asked for {cnt} {what} at {addr}, got {other:?}"
        ))),
    }
}

pub struct ModbusTcp {
    address: String,
    unit: u8,
    timeout: Duration,
    ctx: Option<(Context, Arc<Socket>)>,
    /// Connections made so far: a new one may mean the device restarted (see `connects`).
    connects: u64,
}

type Raw<T> =
    Result<Result<Result<T, ExceptionCode>, tokio_modbus::Error>, tokio::time::error::Elapsed>;

/// A connection's socket, shared between tokio-modbus's framing (reads and writes) and the
/// link, which looks at it between requests: a device (or a serial-to-Ethernet gateway) that
/// closed it after its last reply must not cost the next request.
#[derive(Debug)]
struct Socket {
    stream: TcpStream,
    /// The device closed its side: a read returned end of stream.
    closed: AtomicBool,
}

impl Socket {
    /// Whether the connection is unfit for a new request: closed or reset by the device, or
    /// holding bytes nobody asked for (a late reply). Never waits.
    fn stale(&self) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return true;
        }
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Nothing to read is the one healthy answer. No request is in flight here, so the
        // no-op waker replaces no one's.
        !matches!(self.stream.poll_peek(&mut cx, &mut buf), Poll::Pending)
    }
}

/// The framing's handle on a `Socket`.
#[derive(Debug)]
struct Shared(Arc<Socket>);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let socket = &self.0;
        loop {
            ready!(socket.stream.poll_read_ready(cx))?;
            match socket.stream.try_read(buf.initialize_unfilled()) {
                Ok(0) if buf.remaining() > 0 => {
                    socket.closed.store(true, Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let socket = &self.0;
        loop {
            ready!(socket.stream.poll_write_ready(cx))?;
            match socket.stream.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Writes go straight to the socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        // The socket is closed when the connection is dropped.
        Poll::Ready(Ok(()))
    }
}

/// Whether a request may be sent again after it failed on a connection the device closed.
#[derive(Clone, Copy, PartialEq)]
pub enum Repeat {
    /// Reads, acks, coil states: doing it twice does no harm.
    Safe,
    /// A pulse: never sent twice (a lane released twice for one grant).
    Never,
}

impl ModbusTcp {
    pub fn new(address: &str, unit: u8, timeout: Duration) -> Self {
        Self {
            address: address.to_string(),
            unit,
            timeout,
            ctx: None,
            connects: 0,
        }
    }

    fn ms(&self) -> u64 {
        self.timeout.as_millis() as u64
    }

    /// The connection to send a request on: the open one unless the device has closed it
    /// since (then a new one, before anything is sent). A connect that fails sends nothing:
    /// its error is `Connect`.
    async fn context(&mut self) -> Result<&mut Context, DeviceError> {
        if self.ctx.as_ref().is_some_and(|(_, s)| s.stale()) {
            tracing::debug!(device = %self.address, "connection closed by the device since its last reply; reconnecting");
            self.ctx = None;
        }
        if self.ctx.is_none() {
            let connect = async {
                let addr = tokio::net::lookup_host(&self.address)
                    .await?
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))?;
                TcpStream::connect(addr).await
            };
            let stream = match timeout(self.timeout, connect).await {
                Err(_) => {
                    return Err(DeviceError::Connect(format!(
                        "{}: timed out after {} ms",
                        self.address,
                        self.ms()
                    )));
                }
                Ok(Err(e)) => {
                    return Err(DeviceError::Connect(format!(
                        "{}: {}",
                        self.address,
                        io_words(&e)
                    )));
                }
                Ok(Ok(stream)) => stream,
            };
            let _ = stream.set_nodelay(true);
            let socket = Arc::new(Socket {
                stream,
                closed: AtomicBool::new(false),
            });
            let ctx = tcp::attach_slave(Shared(Arc::clone(&socket)), Slave(self.unit));
            self.ctx = Some((ctx, socket));
            self.connects += 1;
        }
        self.ctx
            .as_mut()
            .map(|(c, _)| c)
            .ok_or_else(|| DeviceError::Connect("not connected".into()))
    }

    fn settle<T>(&mut self, r: Raw<T>) -> Result<T, DeviceError> {
        match r {
            Err(_) => {
                self.ctx = None;
                Err(DeviceError::Timeout(self.ms()))
            }
            Ok(Err(e)) => {
                // End of stream shows in tokio-modbus as the last OS error, whatever it was
                // (e.g. "Operation now in progress"): the socket knows better.
                let closed = self
                    .ctx
                    .take()
                    .is_some_and(|(_, s)| s.closed.load(Ordering::Relaxed));
                match e {
                    tokio_modbus::Error::Transport(_) if closed => Err(DeviceError::Transport(
                        "connection closed by the device".into(),
                    )),
                    e => Err(transport(e)),
                }
            }
            Ok(Ok(Err(code))) => Err(DeviceError::Exception(format!("{code:?}"))),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }

    /// One request; sent once more on a new connection when `repeat` allows it and the
    /// device closed the connection under it (a late close that the check before sending
    /// could not see yet).
    async fn call(&mut self, op: &Op, repeat: Repeat) -> Result<Reply, DeviceError> {
        let r = self.call_once(op).await;
        match r {
            Err(DeviceError::Transport(_)) if repeat == Repeat::Safe => self.call_once(op).await,
            r => r,
        }
    }

    async fn call_once(&mut self, op: &Op) -> Result<Reply, DeviceError> {
        let t = self.timeout;
        let ctx = self.context().await?;
        let r = match op {
            Op::ReadInputRegisters(a, n) => {
                timeout(t, async {
                    ctx.read_input_registers(*a, *n)
                        .await
                        .map(|r| r.map(Reply::Words))
                })
                .await
            }
            Op::ReadDiscreteInputs(a, n) => {
                timeout(t, async {
                    ctx.read_discrete_inputs(*a, *n)
                        .await
                        .map(|r| r.map(Reply::Bits))
                })
                .await
            }
            Op::WriteMultipleCoils(a, v) => {
                timeout(t, async {
                    ctx.write_multiple_coils(*a, v)
                        .await
                        .map(|r| r.map(|()| Reply::Done))
                })
                .await
            }
            Op::WriteSingleRegister(a, v) => {
                timeout(t, async {
                    ctx.write_single_register(*a, *v)
                        .await
                        .map(|r| r.map(|()| Reply::Done))
                })
                .await
            }
            Op::WriteMultipleRegisters(a, v) => {
                timeout(t, async {
                    ctx.write_multiple_registers(*a, v)
                        .await
                        .map(|r| r.map(|()| Reply::Done))
                })
                .await
            }
        };
        let reply = self.settle(r)?;
        // A reply that did not return what was asked may belong to another request: the
        // connection is rebuilt.
        let fits = match (op, &reply) {
            (Op::ReadInputRegisters(_, n), Reply::Words(v)) => v.len() == usize::from(*n),
            (Op::ReadDiscreteInputs(_, n), Reply::Bits(v)) => v.len() >= usize::from(*n),
            (Op::ReadInputRegisters(..) | Op::ReadDiscreteInputs(..), _) => false,
            _ => true,
        };
        if !fits {
            self.ctx = None;
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A board that takes register writes only as function 16 refuses function 6 with an
    /// exception (nothing released); with `write_function = 16` the pulse goes through.
    #[tokio::test]
    async fn a_board_that_refuses_function_6_takes_a_pulse_as_function_16() {
        let server = hw_sim::SimServer::bind("127.0.0.1:0".parse().expect("literal"))
            .await
            .expect("bind");
        let relay = server.add_relay(1, 2, hw_sim::RelayRegisters::default());
        relay.set_single_register_writes(false);
        let link = Link::Tcp(server.local_addr().to_string());
        let buses = Buses::default();
        let timeout = Duration::from_millis(500);

        let mut fc6 = Modbus::new(&link, 1, timeout, &buses);
        let r = fc6.write_register(100, 3000, Repeat::Never).await;
        assert!(
            matches!(&r, Err(e @ DeviceError::Exception(_)) if !e.may_have_reached_device()),
            "{r:?}"
        );
        assert!(relay.pulses().is_empty());

        let mut fc16 = Modbus::new(&link, 1, timeout, &buses).with_fc16_writes(true);
        fc16.write_register(100, 3000, Repeat::Never)
            .await
            .expect("function 16 is taken");
        let pulses = relay.pulses();
        assert_eq!(pulses.len(), 1);
        assert_eq!(
            (pulses[0].lane, pulses[0].exit, pulses[0].ms),
            (0, false, 3000)
        );
    }

    #[test]
    fn io_errors_are_put_in_words() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            io_words(&Error::from(ErrorKind::ConnectionRefused)),
            "connection refused"
        );
        assert_eq!(
            io_words(&Error::from(ErrorKind::UnexpectedEof)),
            "connection closed by the device"
        );
        assert_eq!(io_words(&Error::from(ErrorKind::TimedOut)), "timed out");
    }
}
