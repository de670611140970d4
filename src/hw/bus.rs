//! An RS-485 bus (Modbus RTU): one task owns the serial port; the device tasks of the units
//! on it send it requests and await the replies.
//!
//! A bus carries one request at a time, so the order is the owner's choice. It serves the
//! units round-robin, one request per unit per round: a dead unit costs the others one
//! timeout per round at most (and its own task backs off after each failure, so it asks less
//! and less), never a queue of them.
//!
//! After a timeout or a broken frame the port is closed, the line is left quiet for `quiet()`
//! (the time of the longest frame at the bus's baud rate, plus a margin), and the port is
//! opened again with its input flushed: a reply that comes late must never be taken for the
//! answer to the next request (tokio-modbus #324). A device slower than that is not covered;
//! the reply's CRC, unit and function checks remain.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_modbus::client::{Context, Reader, Writer, rtu};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};
use tokio_serial::{SerialPort, SerialPortBuilderExt};

use super::DeviceError;
use crate::config::{Parity, SerialLink};

/// How long the line is left quiet after a request that failed, before the next one: a late
/// reply of the longest frame has finished by then.
fn quiet(link: &SerialLink) -> Duration {
    link.frame_time() + Duration::from_millis(50)
}
/// After the port could not be opened, requests fail at once for this long before another
/// open is tried: a missing adapter must not cost every request an open attempt.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// One Modbus request on the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    ReadInputRegisters(u16, u16),
    ReadDiscreteInputs(u16, u16),
    WriteMultipleCoils(u16, Vec<bool>),
    WriteSingleRegister(u16, u16),
    WriteMultipleRegisters(u16, Vec<u16>),
}

/// What a request gives back.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    Done,
}

struct Request {
    unit: u8,
    op: Op,
    timeout: Duration,
    reply: oneshot::Sender<Result<Reply, DeviceError>>,
}

/// A handle on one bus's owner task. Cheap to clone.
#[derive(Clone)]
pub struct BusHandle {
    tx: mpsc::Sender<Request>,
}

impl BusHandle {
    /// Sends one request for `unit` and waits for its turn and its reply. `wait` bounds the
    /// wire time of this request, not its time in the queue.
    pub async fn call(&self, unit: u8, op: Op, wait: Duration) -> Result<Reply, DeviceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                unit,
                op,
                timeout: wait,
                reply,
            })
            .await
            .map_err(|_| DeviceError::Stopped)?;
        rx.await.map_err(|_| DeviceError::Stopped)?
    }
}

/// The buses of a gate by serial path, each started on first use. Every device on one path
/// gets the same bus (the config checked that they agree on its settings).
#[derive(Clone, Default)]
pub struct Buses {
    by_path: Arc<Mutex<HashMap<PathBuf, BusHandle>>>,
}

impl Buses {
    /// The bus of `link`, its owner task started if this is the first device on it. Must be
    /// called inside the runtime. The task ends when every handle is gone.
    pub fn get(&self, link: &SerialLink) -> BusHandle {
        let mut map = self
            .by_path
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(link.path.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(run(link.clone(), rx));
                BusHandle { tx }
            })
            .clone()
    }
}

/// The requests waiting, one queue per unit, served round-robin.
#[derive(Default)]
struct Queues {
    by_unit: BTreeMap<u8, VecDeque<Request>>,
    /// The unit served last; the next turn goes to the first unit after it that waits.
    last: Option<u8>,
}

impl Queues {
    fn push(&mut self, r: Request) {
        self.by_unit.entry(r.unit).or_default().push_back(r);
    }

    fn is_empty(&self) -> bool {
        self.by_unit.values().all(VecDeque::is_empty)
    }

    /// The next request in round-robin order; requests whose caller has gone are dropped.
    fn next(&mut self) -> Option<Request> {
        loop {
            let after = self.last.map_or(0, |u| u16::from(u) + 1);
            let unit = self
                .by_unit
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(u, _)| *u)
                .find(|u| u16::from(*u) >= after)
                .or_else(|| {
                    self.by_unit
                        .iter()
                        .find(|(_, q)| !q.is_empty())
                        .map(|(u, _)| *u)
                })?;
            self.last = Some(unit);
            let r = self.by_unit.get_mut(&unit)?.pop_front()?;
            if !r.reply.is_closed() {
                return Some(r);
            }
        }
    }
}

/// The serial port as tokio-modbus uses it, keeping the bytes received since a request was
/// last written: when no answer could be made of them, they tell a reply that failed its CRC
/// from silence or a cut-off frame.
struct Heard {
    port: tokio_serial::SerialStream,
    since_write: Arc<Mutex<Vec<u8>>>,
}

/// The longest Modbus RTU frame; more heard than this is not one reply.
const MAX_FRAME: usize = 256;

impl AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.port).poll_read(cx, buf))?;
        let mut heard = lock(&self.since_write);
        let room = MAX_FRAME.saturating_sub(heard.len());
        let new = &buf.filled()[before..];
        heard.extend_from_slice(&new[..new.len().min(room)]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Heard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        lock(&self.since_write).clear();
        Pin::new(&mut self.port).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.port).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.port).poll_shutdown(cx)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CRC-16/MODBUS.
fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Whether `heard`, after a request `op` to `unit` got no usable answer, holds a whole reply
/// from that unit whose CRC does not match. A reply cut short is not judged (it is a timeout).
fn failed_crc(heard: &[u8], unit: u8, op: &Op) -> Option<String> {
    let (&first, &function) = (heard.first()?, heard.get(1)?);
    if first != unit {
        return None;
    }
    let len = if function & 0x80 != 0 {
        5
    } else {
        match op {
            Op::ReadInputRegisters(_, n) => 5 + 2 * usize::from(*n),
            Op::ReadDiscreteInputs(_, n) => 5 + usize::from(*n).div_ceil(8),
            Op::WriteMultipleCoils(..)
            | Op::WriteSingleRegister(..)
            | Op::WriteMultipleRegisters(..) => 8,
        }
    };
    let frame = heard.get(..len)?;
    let (body, sent) = frame.split_at(len - 2);
    let sent = u16::from_le_bytes([sent[0], sent[1]]);
    let computed = crc16(body);
    (sent != computed).then(|| {
        format!("a reply of {len} bytes from unit {unit} carries CRC {sent:04X}, its bytes make {computed:04X}")
    })
}

/// The serial port, opened on demand.
struct Port {
    link: SerialLink,
    ctx: Option<Context>,
    /// What the port received since the last request was written.
    heard: Arc<Mutex<Vec<u8>>>,
    /// When the last open failed, and why: requests fail fast until `REOPEN_AFTER` has passed.
    failed: Option<(Instant, String)>,
}

impl Port {
    fn open(&mut self) -> Result<&mut Context, DeviceError> {
        if self.ctx.is_none() {
            if let Some((at, why)) = &self.failed
                && at.elapsed() < REOPEN_AFTER
            {
                return Err(DeviceError::Connect(why.clone()));
            }
            let l = &self.link;
            let opened = tokio_serial::new(l.path.to_string_lossy(), l.baud)
                .data_bits(tokio_serial::DataBits::Eight)
                .parity(match l.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .stop_bits(if l.stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .flow_control(tokio_serial::FlowControl::None)
                .open_native_async();
            let port = match opened {
                Ok(p) => p,
                Err(e) => {
                    let why = format!("{}: {e}", l.path.display());
                    tracing::warn!(bus = %l.path.display(), error = %e, "cannot open the serial port");
                    self.failed = Some((Instant::now(), why.clone()));
                    return Err(DeviceError::Connect(why));
                }
            };
            // Whatever a device sent while the port was closed is not an answer to anything.
            if let Err(e) = port.clear(tokio_serial::ClearBuffer::All) {
                tracing::debug!(bus = %l.path.display(), error = %e, "cannot flush the port");
            }
            if self.failed.take().is_some() {
                tracing::info!(bus = %l.path.display(), "serial port open again");
            }
            self.ctx = Some(rtu::attach(Heard {
                port,
                since_write: Arc::clone(&self.heard),
            }));
        }
        self.ctx
            .as_mut()
            .ok_or_else(|| DeviceError::Connect("not open".into()))
    }
}

async fn run(link: SerialLink, mut rx: mpsc::Receiver<Request>) {
    let mut port = Port {
        link,
        ctx: None,
        heard: Arc::default(),
        failed: None,
    };
    let mut queues = Queues::default();
    loop {
        if queues.is_empty() {
            match rx.recv().await {
                Some(r) => queues.push(r),
                None => return, // every device task has stopped
            }
        }
        while let Ok(r) = rx.try_recv() {
            queues.push(r);
        }
        let Some(r) = queues.next() else { continue };
        let result = serve(&mut port, r.unit, &r.op, r.timeout).await;
        if matches!(
            result,
            Err(DeviceError::Timeout(_)
                | DeviceError::Transport(_)
                | DeviceError::Garbage(_)
                | DeviceError::Crc(_))
        ) {
            // Close, let a late reply die out, and open again with the input flushed.
            port.ctx = None;
            tokio::time::sleep(quiet(&port.link)).await;
        }
        let _ = r.reply.send(result);
    }
}

async fn serve(port: &mut Port, unit: u8, op: &Op, wait: Duration) -> Result<Reply, DeviceError> {
    let ctx = port.open()?;
    ctx.set_slave(Slave(unit));
    let ms = wait.as_millis() as u64;
    let settle = |r: Result<
        Result<Result<Reply, ExceptionCode>, tokio_modbus::Error>,
        tokio::time::error::Elapsed,
    >| match r {
        Err(_) => Err(DeviceError::Timeout(ms)),
        Ok(Err(e)) => Err(transport(e)),
        Ok(Ok(Err(code))) => Err(DeviceError::Exception(format!("{code:?}"))),
        Ok(Ok(Ok(v))) => Ok(v),
    };
    let r = match op {
        Op::ReadInputRegisters(a, n) => {
            timeout(wait, async {
                ctx.read_input_registers(*a, *n)
                    .await
                    .map(|r| r.map(Reply::Words))
            })
            .await
        }
        Op::ReadDiscreteInputs(a, n) => {
            timeout(wait, async {
                ctx.read_discrete_inputs(*a, *n)
                    .await
                    .map(|r| r.map(Reply::Bits))
            })
            .await
        }
        Op::WriteMultipleCoils(a, v) => {
            timeout(wait, async {
                ctx.write_multiple_coils(*a, v)
                    .await
                    .map(|r| r.map(|()| Reply::Done))
            })
            .await
        }
        Op::WriteSingleRegister(a, v) => {
            timeout(wait, async {
                ctx.write_single_register(*a, *v)
                    .await
                    .map(|r| r.map(|()| Reply::Done))
            })
            .await
        }
        Op::WriteMultipleRegisters(a, v) => {
            timeout(wait, async {
                ctx.write_multiple_registers(*a, v)
                    .await
                    .map(|r| r.map(|()| Reply::Done))
            })
            .await
        }
    };
    // tokio-modbus drops bytes of a frame whose CRC fails, looking for one that does, and in
    // the end times out or gives up with "Too many retries": what was heard tells which.
    settle(r).map_err(|e| match e {
        DeviceError::Timeout(_) | DeviceError::Transport(_) | DeviceError::Garbage(_) => {
            match failed_crc(&lock(&port.heard), unit, op) {
                Some(why) => DeviceError::Crc(why),
                None => e,
            }
        }
        e => e,
    })
}

// The words for a link's failures, shared by the TCP links (`modbus.rs`) and the buses.

/// A broken frame (a wrong function, a header that does not match) is the device talking
/// nonsense, shown as `garbage`; an I/O error is a broken link.
pub(super) fn transport(e: tokio_modbus::Error) -> DeviceError {
    match e {
        tokio_modbus::Error::Protocol(p) => DeviceError::Garbage(p.to_string()),
        tokio_modbus::Error::Transport(io) => DeviceError::Transport(io_words(&io)),
    }
}

/// An I/O error in words, for status and alarms: what happened, not the OS's error number.
pub(super) fn io_words(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let what = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by the device",
        K::ConnectionAborted => "connection aborted",
        K::BrokenPipe | K::UnexpectedEof => "connection closed by the device",
        K::NotConnected => "not connected",
        K::TimedOut => "timed out",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable | K::NetworkDown => "network unreachable",
        K::AddrNotAvailable => "address not available",
        K::NotFound => "no such device or address",
        K::PermissionDenied => "permission denied",
        K::InvalidData => return format!("invalid data ({e})"),
        _ => return format!("I/O error ({e})"),
    };
    what.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(unit: u8) -> (Request, oneshot::Receiver<Result<Reply, DeviceError>>) {
        let (reply, rx) = oneshot::channel();
        (
            Request {
                unit,
                op: Op::WriteSingleRegister(0, 0),
                timeout: Duration::from_millis(10),
                reply,
            },
            rx,
        )
    }

    #[test]
    fn units_take_turns_whatever_the_queue_lengths() {
        let mut q = Queues::default();
        let mut keep = Vec::new();
        // Unit 5 (dead, say) has queued five requests; units 1 and 9 one each.
        for u in [5, 5, 5, 5, 5, 1, 9] {
            let (r, rx) = req(u);
            q.push(r);
            keep.push(rx);
        }
        let order: Vec<u8> = std::iter::from_fn(|| q.next().map(|r| r.unit)).collect();
        assert_eq!(order, vec![1, 5, 9, 5, 5, 5, 5]);
    }

    #[test]
    fn the_quiet_time_covers_the_longest_frame() {
        let link = |baud, parity| SerialLink {
            path: "/dev/x".into(),
            baud,
            parity,
            stop_bits: 1,
        };
        // 256 bytes of 11 bits at 9600 baud: 293 ms.
        assert_eq!(link(9600, Parity::Even).frame_time().as_millis(), 293);
        assert_eq!(link(115_200, Parity::None).frame_time().as_millis(), 22);
    }

    /// Unit 1 answers late (after the timeout); the next request, to unit 2, must get unit 2's
    /// own answer, not unit 1's late one.
    #[tokio::test]
    async fn a_late_reply_is_never_taken_for_the_next_units_answer() {
        let bus = hw_sim::SimServer::serial().await.expect("pty");
        let slow = bus.add_reader(1, hw_sim::ReaderRegisters::default());
        let fast = bus.add_reader(2, hw_sim::ReaderRegisters::default());
        slow.present(hw_sim::KIND_CARD, "SLOW-UNIT", 0)
            .expect("queued");
        fast.present(hw_sim::KIND_CARD, "FAST-UNIT", 0)
            .expect("queued");
        let timeout = Duration::from_millis(150);
        bus.set_unit_fault(
            1,
            hw_sim::Fault::Latency(timeout + Duration::from_millis(50)),
        );
        let link = SerialLink {
            path: bus.serial_path().expect("serial").to_path_buf(),
            baud: 19_200,
            parity: Parity::Even,
            stop_bits: 1,
        };
        let handle = Buses::default().get(&link);
        let r = handle.call(1, Op::ReadInputRegisters(0, 36), timeout).await;
        assert!(matches!(r, Err(DeviceError::Timeout(_))), "{r:?}");
        for _ in 0..3 {
            let r = handle
                .call(2, Op::ReadInputRegisters(0, 36), timeout)
                .await
                .expect("unit 2 answers");
            let Reply::Words(w) = r else {
                panic!("words expected, got {r:?}")
            };
            let bytes: Vec<u8> = w[4..9].iter().flat_map(|x| x.to_be_bytes()).collect();
            assert_eq!(&bytes[..9], b"FAST-UNIT", "unit 2's own mailbox");
        }
    }

    /// What a dead unit costs the others on its bus: its timeout, then the quiet time, before
    /// the next unit is asked. At 9600 8E1 with `timeout_ms = 400`: 400 + 293 + 50 = 743 ms.
    /// `cargo test -p gated --lib hw::bus::tests::a_dead_unit -- --nocapture` prints it.
    #[tokio::test]
    async fn a_dead_unit_costs_the_others_its_timeout_plus_the_quiet_time() {
        let bus = hw_sim::SimServer::serial().await.expect("pty");
        let _live = bus.add_reader(2, hw_sim::ReaderRegisters::default());
        let link = SerialLink {
            path: bus.serial_path().expect("serial").to_path_buf(),
            baud: 9600,
            parity: Parity::Even,
            stop_bits: 1,
        };
        let timeout = Duration::from_millis(400);
        let handle = Buses::default().get(&link);
        // Unit 9 is not on the bus: it never answers.
        let started = Instant::now();
        let (dead, live) = tokio::join!(
            handle.call(9, Op::ReadInputRegisters(0, 36), timeout),
            async {
                // Queued behind the dead unit's request.
                tokio::task::yield_now().await;
                handle.call(2, Op::ReadInputRegisters(0, 36), timeout).await
            }
        );
        let cost = started.elapsed();
        assert!(matches!(dead, Err(DeviceError::Timeout(400))), "{dead:?}");
        live.expect("the live unit answers");
        let floor = timeout + quiet(&link);
        eprintln!(
            "a dead unit at 9600 8E1, timeout 400 ms: the next unit answered after {} ms (timeout + quiet time = {} ms)",
            cost.as_millis(),
            floor.as_millis()
        );
        assert_eq!(floor.as_millis(), 743);
        assert!(
            cost >= floor && cost < floor + Duration::from_millis(400),
            "{cost:?}"
        );
    }

    /// A unit whose answers fail their CRC (noise, a wrong baud rate) is shown as that, not
    /// as `disconnected` or `timeout`; its neighbour on the bus is not affected.
    #[tokio::test]
    async fn a_reply_that_fails_its_crc_is_a_crc_error() {
        let bus = hw_sim::SimServer::serial().await.expect("pty");
        let _noisy = bus.add_reader(1, hw_sim::ReaderRegisters::default());
        let _clean = bus.add_reader(2, hw_sim::ReaderRegisters::default());
        bus.set_unit_fault(1, hw_sim::Fault::BadCrc);
        let link = SerialLink {
            path: bus.serial_path().expect("serial").to_path_buf(),
            baud: 19_200,
            parity: Parity::Even,
            stop_bits: 1,
        };
        let timeout = Duration::from_millis(200);
        let handle = Buses::default().get(&link);
        for op in [Op::ReadInputRegisters(0, 36), Op::WriteSingleRegister(0, 5)] {
            let r = handle.call(1, op.clone(), timeout).await;
            let e = r.expect_err("a bad CRC is no answer");
            assert_eq!(e.state(), "crc_error", "{op:?}: {e}");
            assert!(e.to_string().contains("CRC"), "{e}");
            handle
                .call(2, Op::ReadInputRegisters(0, 36), timeout)
                .await
                .expect("unit 2 answers");
        }
    }

    #[test]
    fn the_crc_is_crc16_modbus() {
        assert_eq!(crc16(b"123456789"), 0x4B37);
        // Read 1 input register of unit 1 answered 0x0007: a frame whose CRC matches.
        let mut frame = vec![1, 4, 2, 0, 7];
        frame.extend(crc16(&frame).to_le_bytes());
        assert_eq!(failed_crc(&frame, 1, &Op::ReadInputRegisters(0, 1)), None);
        frame[6] ^= 1;
        assert!(failed_crc(&frame, 1, &Op::ReadInputRegisters(0, 1)).is_some());
        assert_eq!(
            failed_crc(&frame[..5], 1, &Op::ReadInputRegisters(0, 1)),
            None,
            "a reply cut short is not judged"
        );
    }

    #[test]
    fn a_request_whose_caller_left_is_skipped() {
        let mut q = Queues::default();
        let (gone, rx) = req(2);
        drop(rx);
        q.push(gone);
        let (live, _rx) = req(3);
        q.push(live);
        assert_eq!(q.next().map(|r| r.unit), Some(3));
        assert!(q.next().is_none());
    }
}
