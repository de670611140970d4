//! The Modbus TCP side: one listener per [`SimServer`], hosting reader and relay units by unit
//! id, with fault injection.
//!
//! Requests are decoded and answered by tokio-modbus's own server, so the daemon talks to a
//! real Modbus TCP stack. The simulator adds two layers around it:
//!
//! - a per-connection [`Service`] that routes each request to its unit's register model and
//!   applies the request-level faults (no reply, latency, exception). A unit id the server does
//!   not host gets no reply at all, like an absent device on a bus;
//! - a per-connection transport wrapper (`SimStream`) around the TCP stream, for the faults
//!   tokio-modbus cannot express: closing connections on demand (disconnect) or after every
//!   reply (a serial-to-Ethernet gateway), replacing the encoded response with bytes that are
//!   not a frame (garbage), and answering with another transaction id.
//!
//! A server can instead serve Modbus RTU on a pseudo-terminal ([`SimServer::serial`]), as the
//! units of one RS-485 bus: the daemon opens the terminal's path as it would open
//! `/dev/ttyUSB0`. The server answers on a second pseudo-terminal, relayed to the daemon's,
//! where a bad CRC is made.
//!
//! Faults are set on the whole server ([`SimServer::set_fault`]: a dead box, a bad cable, a
//! bus that is cut) or on one unit ([`SimServer::set_unit_fault`]: one device that stops
//! answering, answers slowly, answers nonsense or flaps, while the others on the same socket or
//! bus go on). The server's fault, when it has one, wins.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::lock;
use crate::modbus::Now;
use crate::reader::{ReaderRegisters, ReaderState, SimReader};
use crate::relay::{RelayRegisters, RelayState, SimRelay};

/// A fault of the device on a socket. It applies to every unit of the [`SimServer`] and to
/// every connection, open or new, until another fault (or [`Fault::None`]) is set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    /// Healthy: every request is answered at once.
    #[default]
    None,
    /// Requests are read but never answered; connections stay open. The client times out.
    NoReply,
    /// Every request is handled and answered after this delay (its effect, e.g. a pulse,
    /// happens after the delay too, as on a slow device).
    Latency(Duration),
    /// Every request to a hosted unit is answered with this exception.
    Exception(ExceptionCode),
    /// Every open connection is closed, and new ones are closed as soon as they are accepted
    /// (the TCP handshake itself succeeds: the kernel completes it before the server sees it).
    Disconnect,
    /// Every answer is replaced by random bytes that are not a valid frame. The bytes are
    /// shaped like an MBAP header with a complete length but a nonzero protocol id, so a
    /// client rejects them at once instead of waiting for more; requests still take effect.
    /// On one unit, or on a serial server, the answer is instead a well-formed frame of the
    /// wrong function (a unit talking nonsense), which a client rejects just as well.
    Garbage,
    /// The device flaps (a loose connector): it answers for this long, then stays silent for
    /// as long, and so on, starting with an answering phase when the fault is set.
    Flap(Duration),
    /// Every request is answered, then the connection is closed by the device, as many
    /// serial-to-Ethernet gateways do. Set on a TCP server (a socket); on a unit or a serial
    /// server it changes nothing.
    CloseAfterReply,
    /// Every answer carries a transaction id other than its request's, as if it answered
    /// another request; requests still take effect. Set on a TCP server; on a unit or a
    /// serial server (which has no transaction ids) it changes nothing.
    WrongTransactionId,
    /// Every answer arrives with a CRC that does not match (line noise, a wrong baud rate);
    /// requests still take effect. Serial servers only (set on the server or on a unit); on
    /// TCP, which has no CRC, it changes nothing.
    BadCrc,
}

impl fmt::Display for Fault {
    /// The control port's spelling, e.g. `latency 200ms` or `exception 2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => f.write_str("none"),
            Fault::NoReply => f.write_str("noreply"),
            Fault::Latency(delay) => write!(f, "latency {}ms", delay.as_millis()),
            Fault::Exception(code) => write!(f, "exception {}", u8::from(*code)),
            Fault::Disconnect => f.write_str("disconnect"),
            Fault::Garbage => f.write_str("garbage"),
            Fault::Flap(period) => write!(f, "flap {}ms", period.as_millis()),
            Fault::CloseAfterReply => f.write_str("close-after-reply"),
            Fault::WrongTransactionId => f.write_str("wrong-tid"),
            Fault::BadCrc => f.write_str("bad-crc"),
        }
    }
}

/// What every connection of a server watches.
#[derive(Debug, Clone)]
struct Control {
    fault: Fault,
    /// When `fault` was set (a flap counts its phases from here).
    since: std::time::Instant,
    /// Bumped each time `Disconnect` is set or connections are dropped. A connection remembers the epoch it was accepted
    /// in and closes when it changes, so even a `Disconnect` that is cleared again before the
    /// connection's task runs still closes it.
    epoch: u64,
    shutdown: bool,
    /// Set by the accept task when it has stopped and the listener is closed.
    stopped: bool,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            fault: Fault::None,
            since: std::time::Instant::now(),
            epoch: 0,
            shutdown: false,
            stopped: false,
        }
    }
}

impl Fault {
    /// The fault as it acts at `now`, for one set at `since`: a flap is `NoReply` in its
    /// silent phases and no fault in the others.
    fn at(&self, since: std::time::Instant, now: std::time::Instant) -> Fault {
        match self {
            Fault::Flap(period) => {
                let phase = now.duration_since(since).as_millis() / period.as_millis().max(1);
                if phase % 2 == 1 {
                    Fault::NoReply
                } else {
                    Fault::None
                }
            }
            other => other.clone(),
        }
    }
}

impl Control {
    fn drops(&self, epoch: u64) -> bool {
        self.shutdown || self.epoch != epoch
    }
}

/// A hosted unit: the register model behind one unit id.
#[derive(Debug, Clone)]
enum Unit {
    Reader(Arc<Mutex<ReaderState>>),
    Relay(Arc<Mutex<RelayState>>),
    Panel(Arc<Mutex<crate::panel::PanelState>>),
}

impl Unit {
    fn handle(&self, req: &Request<'_>, now: Now) -> Result<Response, ExceptionCode> {
        match self {
            Unit::Reader(state) => lock(state).handle(req, now),
            Unit::Relay(state) => lock(state).handle(req, now),
            Unit::Panel(state) => lock(state).handle(req),
        }
    }
}

struct Shared {
    local_addr: SocketAddr,
    /// A serial server: the pseudo-terminal's path, and its slave end, held open so that the
    /// daemon may close and reopen the path (a pty whose last slave closes hangs up).
    serial: Option<(
        std::path::PathBuf,
        Mutex<Option<tokio_serial::SerialStream>>,
    )>,
    units: Mutex<HashMap<u8, Unit>>,
    /// Faults of single units, with when they were set.
    unit_faults: Mutex<HashMap<u8, (Fault, std::time::Instant)>>,
    control: watch::Sender<Control>,
    connections: AtomicUsize,
    /// Requests received and not yet answered (or left unanswered), a delayed one included.
    pending: AtomicUsize,
}

/// Counts a request as pending for as long as it lives.
struct Pending<'a>(&'a AtomicUsize);

impl<'a> Pending<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Pending(count)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn request_shutdown(&self) {
        self.control.send_modify(|control| control.shutdown = true);
    }

    fn unit(&self, id: u8) -> Option<Unit> {
        lock(&self.units).get(&id).cloned()
    }

    /// Decides whether to serve a new connection. `None` closes it at once (the stream is
    /// dropped), which is how `Disconnect` refuses clients.
    fn accept(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Connection, SimStream)> {
        let control = self.control.borrow().clone();
        if control.shutdown || control.fault == Fault::Disconnect {
            tracing::debug!(%peer, server = %self.local_addr, "connection refused (disconnect fault)");
            return None;
        }
        // Requests and responses are small and strictly alternate; without this, Nagle's
        // algorithm can hold a response back and distort latency benchmarks.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
        }
        tracing::debug!(%peer, server = %self.local_addr, "connection accepted");
        let epoch = control.epoch;
        let connection = Connection {
            shared: Arc::clone(self),
            epoch,
        };
        Some((connection, SimStream::new(stream, Arc::clone(self), epoch)))
    }

    /// Answers one request, faults included. `Ok(None)` sends nothing.
    async fn answer(
        &self,
        req: SlaveRequest<'static>,
        epoch: u64,
    ) -> Result<Option<Response>, ExceptionCode> {
        let _pending = Pending::start(&self.pending);
        let now = std::time::Instant::now();
        let (server_fault, since) = {
            let c = self.control.borrow();
            (c.fault.clone(), c.since)
        };
        let server_fault = server_fault.at(since, now);
        // Garbage on a TCP socket is done by the stream (bytes that are not a frame); on a
        // unit or a serial line it is a frame of the wrong function.
        let mut wrong_frame = self.serial.is_some() && server_fault == Fault::Garbage;
        let fault = if server_fault == Fault::None {
            let unit = lock(&self.unit_faults).get(&req.slave).cloned();
            let f = unit.map_or(Fault::None, |(f, since)| f.at(since, now));
            wrong_frame |= f == Fault::Garbage;
            f
        } else {
            server_fault
        };
        match fault {
            // On a serial line there are no connections to drop: a disconnected device is a
            // silent one.
            Fault::NoReply | Fault::Disconnect => return Ok(None),
            Fault::Latency(delay) => {
                // A connection dropped during the delay must not answer afterwards.
                let mut control = self.control.subscribe();
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = dropped(&mut control, epoch) => return Ok(None),
                }
            }
            _ => {}
        }
        let Some(unit) = self.unit(req.slave) else {
            return Ok(None);
        };
        if let Fault::Exception(code) = fault {
            return Err(code);
        }
        let answer = unit.handle(&req.request, Now::read())?;
        if wrong_frame {
            // The request took effect; the answer is nonsense.
            return Ok(Some(match answer {
                Response::ReadCoils(_) => Response::ReadDiscreteInputs(vec![true; 8]),
                _ => Response::ReadCoils(vec![true; 8]),
            }));
        }
        Ok(Some(answer))
    }
}

/// Resolves when a connection accepted in `epoch` must close: on `Disconnect`, on shutdown, or
/// when the server is gone.
async fn dropped(control: &mut watch::Receiver<Control>, epoch: u64) {
    // Err means the sender is gone, i.e. the server too: close as well.
    let _ = control.wait_for(|control| control.drops(epoch)).await;
}

/// The tokio-modbus service of one connection.
struct Connection {
    shared: Arc<Shared>,
    epoch: u64,
}

impl Service for Connection {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let epoch = self.epoch;
        Box::pin(async move { shared.answer(req, epoch).await })
    }
}

/// The TCP stream of one connection, as tokio-modbus's server sees it. It reads end-of-stream
/// once the connection must be dropped (so the server's request loop ends and closes the
/// socket), and swaps outgoing bytes for garbage while [`Fault::Garbage`] is set.
struct SimStream {
    inner: TcpStream,
    control: watch::Receiver<Control>,
    /// Resolves when this connection must close; polled from the read and write paths so that
    /// a change of fault wakes a connection that is idle in a read.
    drop_signal: Pin<Box<dyn Future<Output = ()> + Send>>,
    is_dropped: bool,
    /// Garbage still to send, and how much of it has gone out.
    garbage: Vec<u8>,
    garbage_sent: usize,
    /// An answer was written under `Fault::CloseAfterReply`: close once it is flushed.
    close_after_flush: bool,
    shared: Arc<Shared>,
}

impl SimStream {
    fn new(inner: TcpStream, shared: Arc<Shared>, epoch: u64) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let mut control = shared.control.subscribe();
        Self {
            inner,
            control: shared.control.subscribe(),
            drop_signal: Box::pin(async move { dropped(&mut control, epoch).await }),
            is_dropped: false,
            garbage: Vec::new(),
            garbage_sent: 0,
            close_after_flush: false,
            shared,
        }
    }

    fn poll_dropped(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_dropped && self.drop_signal.as_mut().poll(cx).is_ready() {
            self.is_dropped = true;
        }
        self.is_dropped
    }

    fn poll_send_garbage(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.garbage_sent < self.garbage.len() {
            let rest = &self.garbage[self.garbage_sent..];
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.garbage_sent += n;
        }
        self.garbage.clear();
        self.garbage_sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

fn dropped_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "dropped by the simulator")
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_dropped(cx) {
            // End of stream: tokio-modbus ends the connection's loop and drops the socket.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_dropped(cx) {
            return Poll::Ready(Err(dropped_error()));
        }
        ready!(this.poll_send_garbage(cx))?;
        let fault = this.control.borrow().fault.clone();
        match fault {
            Fault::Garbage => {
                // Take the real bytes as written and queue garbage in their place; flush sends
                // it.
                this.garbage = garbage(buf.len());
                return Poll::Ready(Ok(buf.len()));
            }
            Fault::WrongTransactionId => {
                // The whole answer is taken at once (so `buf` starts with its MBAP header)
                // and queued with another transaction id.
                this.garbage = other_transaction(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            Fault::CloseAfterReply => this.close_after_flush = true,
            _ => {}
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_dropped(cx) {
            return Poll::Ready(Err(dropped_error()));
        }
        ready!(this.poll_send_garbage(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        if std::mem::take(&mut this.close_after_flush) {
            // The answer is out: the next read ends the connection, which closes the socket.
            this.is_dropped = true;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_garbage(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Random bytes standing in for a response of `len` bytes. They look like an MBAP header whose
/// length matches what is sent, so a Modbus TCP client has the whole "frame" at once and
/// rejects it on the protocol id (forced nonzero) instead of waiting for more bytes.
fn garbage(len: usize) -> Vec<u8> {
    let len = len.max(9);
    let mut rng = rand::rng();
    let mut bytes = vec![0; len];
    rng.fill(&mut bytes[..]);
    bytes[2] = rng.random_range(1..=u8::MAX);
    let body = u16::try_from(len - 6).unwrap_or(u16::MAX);
    bytes[4..6].copy_from_slice(&body.to_be_bytes());
    bytes
}

/// `answer` with its MBAP transaction id (its first two bytes) changed.
fn other_transaction(answer: &[u8]) -> Vec<u8> {
    let mut bytes = answer.to_vec();
    if let [hi, lo, ..] = bytes[..] {
        let tid = u16::from_be_bytes([hi, lo]).wrapping_add(0x5A5A);
        bytes[..2].copy_from_slice(&tid.to_be_bytes());
    }
    bytes
}

/// Accepts connections until shutdown. tokio-modbus's `serve` returns only on an accept error
/// (e.g. out of file descriptors), and then its connections are cancelled with it; the loop
/// serves again after a pause instead of leaving the port dead, and clients reconnect.
async fn run(server: Server, shared: Arc<Shared>) {
    let mut control = shared.control.subscribe();
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, io::Error>(shared.accept(stream, peer)) }
    };
    let on_process_error = |err: io::Error| {
        tracing::debug!(%err, "modbus connection ended with an error");
    };
    loop {
        tokio::select! {
            result = server.serve(&on_connected, on_process_error) => {
                if let Err(err) = result {
                    tracing::warn!(%err, addr = %shared.local_addr, "accept failed; serving again shortly");
                }
            }
            () = shutdown_requested(&mut control) => break,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = shutdown_requested(&mut control) => break,
        }
    }
    // Dropping `server` here closes the listener; the connections were cancelled when the
    // `serve` future was dropped.
    drop(server);
    tracing::debug!(addr = %shared.local_addr, "modbus server stopped");
    shared.control.send_modify(|control| control.stopped = true);
}

/// Serves RTU on the master end of the pty until shutdown. The connection's epoch is the one
/// at start: a serial line has no connections to drop.
async fn run_serial(master: tokio_serial::SerialStream, shared: Arc<Shared>) {
    let mut control = shared.control.subscribe();
    let epoch = control.borrow().epoch;
    let connection = Connection {
        shared: Arc::clone(&shared),
        epoch,
    };
    let server = tokio_modbus::server::rtu::Server::new(master);
    tokio::select! {
        r = server.serve_forever(connection) => {
            if let Err(err) = r {
                tracing::error!(%err, "modbus RTU server stopped");
            }
        }
        () = shutdown_requested(&mut control) => {}
    }
    if let Some((_, slave)) = &shared.serial {
        lock(slave).take();
    }
    shared.control.send_modify(|control| control.stopped = true);
}

/// Carries requests from the daemon's line to the server's and answers back, corrupting an
/// answer's last byte under `Fault::BadCrc` (on the server, or on the unit the answer comes
/// from): a frame whose CRC does not match, as line noise or a wrong baud rate make.
async fn relay_line(
    daemon: tokio_serial::SerialStream,
    server: tokio_serial::SerialStream,
    shared: Arc<Shared>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut control = shared.control.subscribe();
    let (mut from_daemon, mut to_daemon) = tokio::io::split(daemon);
    let (mut from_server, mut to_server) = tokio::io::split(server);
    let requests = async {
        let r = tokio::io::copy(&mut from_daemon, &mut to_server).await;
        tracing::debug!(?r, "serial line relay (requests) stopped");
    };
    let answers = async {
        let mut buf = [0u8; 512];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let unit_fault = || {
                lock(&shared.unit_faults)
                    .get(&buf[0])
                    .is_some_and(|(f, _)| *f == Fault::BadCrc)
            };
            if shared.control.borrow().fault == Fault::BadCrc || unit_fault() {
                buf[n - 1] ^= 0x01;
            }
            if to_daemon.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        tracing::debug!("serial line relay (answers) stopped");
    };
    tokio::select! {
        () = requests => {}
        () = answers => {}
        () = shutdown_requested(&mut control) => {}
    }
}

async fn shutdown_requested(control: &mut watch::Receiver<Control>) {
    let _ = control.wait_for(|control| control.shutdown).await;
}

/// A simulated device on one Modbus TCP socket, hosting one or more units. Cheap to clone; the
/// server stops when [`shutdown`](Self::shutdown) is called or when the last handle to it
/// (including the [`SimReader`] and [`SimRelay`] handles of its units) is dropped.
#[derive(Clone)]
pub struct SimServer {
    shared: Arc<Shared>,
    /// Shared by the handles only (not by the accept task or connections), so that dropping
    /// the last handle stops the server.
    _alive: Arc<Alive>,
}

struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.request_shutdown();
    }
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimServer")
            .field("addr", &self.shared.local_addr)
            .field("fault", &self.fault())
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// Listens on `addr` (use `127.0.0.1:0` for a free port) and serves in a spawned task.
    /// Must be called inside a tokio runtime.
    pub async fn bind(addr: SocketAddr) -> io::Result<SimServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            local_addr,
            serial: None,
            units: Mutex::new(HashMap::new()),
            unit_faults: Mutex::new(HashMap::new()),
            control: watch::Sender::new(Control::default()),
            connections: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
        });
        tokio::spawn(run(Server::new(listener), Arc::clone(&shared)));
        tracing::debug!(addr = %local_addr, "modbus server listening");
        Ok(SimServer {
            _alive: Arc::new(Alive(Arc::clone(&shared))),
            shared,
        })
    }

    /// Serves Modbus RTU on a new pseudo-terminal pair, as the units of one RS-485 bus: the
    /// daemon opens [`serial_path`](Self::serial_path) like a serial adapter. Baud rate and
    /// parity are whatever the daemon sets (a pty ignores them). Must be called inside a tokio
    /// runtime.
    pub async fn serial() -> io::Result<SimServer> {
        use tokio_serial::SerialPort as _;
        let (master, slave) = tokio_serial::SerialStream::pair().map_err(io::Error::other)?;
        // The server answers on a line of its own, relayed to the daemon's: the relay is where
        // a bad CRC is made.
        let (server_end, relay_end) =
            tokio_serial::SerialStream::pair().map_err(io::Error::other)?;
        let path = slave
            .name()
            .ok_or_else(|| io::Error::other("the pseudo-terminal has no name"))?;
        let shared = Arc::new(Shared {
            local_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            serial: Some((path.clone().into(), Mutex::new(Some(slave)))),
            units: Mutex::new(HashMap::new()),
            unit_faults: Mutex::new(HashMap::new()),
            control: watch::Sender::new(Control::default()),
            connections: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
        });
        tokio::spawn(run_serial(server_end, Arc::clone(&shared)));
        tokio::spawn(relay_line(master, relay_end, Arc::clone(&shared)));
        tracing::debug!(%path, "modbus RTU server on a pseudo-terminal");
        Ok(SimServer {
            _alive: Arc::new(Alive(Arc::clone(&shared))),
            shared,
        })
    }

    /// The TCP address served; `0.0.0.0:0` for a serial server (see
    /// [`serial_path`](Self::serial_path)).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The path the daemon opens, for a serial server.
    pub fn serial_path(&self) -> Option<&std::path::Path> {
        self.shared.serial.as_ref().map(|(p, _)| p.as_path())
    }

    /// Where the server is, for messages: `127.0.0.1:5020` or `/dev/pts/3`.
    pub fn endpoint(&self) -> String {
        match self.serial_path() {
            Some(p) => p.display().to_string(),
            None => self.shared.local_addr.to_string(),
        }
    }

    /// Sets the fault of one unit (one device on the socket or bus); the others are spared.
    /// [`Fault::Disconnect`] on a unit is [`Fault::NoReply`]: its socket stays up for the
    /// others. [`Fault::None`] clears it.
    pub fn set_unit_fault(&self, unit: u8, fault: Fault) {
        let mut faults = lock(&self.shared.unit_faults);
        if fault == Fault::None {
            faults.remove(&unit);
        } else {
            faults.insert(unit, (fault, std::time::Instant::now()));
        }
    }

    /// The fault set on one unit.
    pub fn unit_fault(&self, unit: u8) -> Fault {
        lock(&self.shared.unit_faults)
            .get(&unit)
            .map_or(Fault::None, |(f, _)| f.clone())
    }

    /// Hosts a reader at `unit`, replacing whatever that unit id hosted before.
    pub fn add_reader(&self, unit: u8, regs: ReaderRegisters) -> SimReader {
        let state = Arc::new(Mutex::new(ReaderState::new(regs)));
        self.host(unit, Unit::Reader(Arc::clone(&state)));
        SimReader::new(unit, state, self.clone())
    }

    /// Hosts a relay board with `lanes` lanes at `unit`, replacing whatever that unit id hosted
    /// before.
    pub fn add_relay(&self, unit: u8, lanes: u16, regs: RelayRegisters) -> SimRelay {
        let state = Arc::new(Mutex::new(RelayState::new(lanes, regs)));
        self.host(unit, Unit::Relay(Arc::clone(&state)));
        SimRelay::new(unit, state, self.clone())
    }

    /// Hosts a guard panel at `unit`, replacing whatever that unit id hosted before.
    pub fn add_panel(&self, unit: u8) -> crate::SimPanel {
        let state = Arc::new(Mutex::new(crate::panel::PanelState::default()));
        self.host(unit, Unit::Panel(Arc::clone(&state)));
        crate::SimPanel::new(unit, state, self.clone())
    }

    fn host(&self, id: u8, unit: Unit) {
        if lock(&self.shared.units).insert(id, unit).is_some() {
            tracing::warn!(at = %self.endpoint(), unit = id, "unit replaced");
        }
    }

    /// Sets the fault of the device on this socket (all its units, all connections).
    pub fn set_fault(&self, fault: Fault) {
        self.shared.control.send_modify(|control| {
            if fault == Fault::Disconnect {
                control.epoch = control.epoch.wrapping_add(1);
            }
            control.fault = fault;
            control.since = std::time::Instant::now();
        });
    }

    /// Closes every open connection, as a device that reboots does; new ones are accepted.
    /// The fault in force stays.
    pub fn drop_connections(&self) {
        self.shared.control.send_modify(|control| {
            control.epoch = control.epoch.wrapping_add(1);
        });
    }

    pub fn fault(&self) -> Fault {
        self.shared.control.borrow().fault.clone()
    }

    /// Requests received and not answered yet (those delayed by `Latency` included). Zero
    /// once every request that reached the device has been carried out or dropped.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Connections open now. Useful to see that a client reconnected, or did not.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Stops listening and closes every connection. Returns at once; await
    /// [`stopped`](Self::stopped) to know the port is free again.
    pub fn shutdown(&self) {
        self.shared.request_shutdown();
    }

    /// Resolves once the server has stopped listening after a shutdown.
    pub async fn stopped(&self) {
        let mut control = self.shared.control.subscribe();
        let _ = control.wait_for(|control| control.stopped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_never_a_valid_mbap_frame() {
        for len in [0, 1, 9, 12, 260] {
            let bytes = garbage(len);
            assert!(bytes.len() >= 9 && bytes.len() >= len);
            assert_ne!(&bytes[2..4], &[0, 0], "protocol id must be nonzero");
            let body = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
            assert_eq!(
                body + 6,
                bytes.len(),
                "the length covers exactly what is sent"
            );
        }
    }

    #[test]
    fn fault_prints_as_the_control_port_spells_it() {
        assert_eq!(
            Fault::Latency(Duration::from_millis(250)).to_string(),
            "latency 250ms"
        );
        assert_eq!(
            Fault::Exception(ExceptionCode::ServerDeviceBusy).to_string(),
            "exception 6"
        );
        assert_eq!(Fault::NoReply.to_string(), "noreply");
    }
}
