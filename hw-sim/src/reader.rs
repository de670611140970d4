//! A card reader or face terminal unit: a mailbox queue of credential events.
//!
//! The device keeps every event until the daemon acknowledges it by writing its sequence
//! number, so no event is lost when the daemon is slow, restarts, or loses the connection, and
//! none is read twice when the daemon acks exactly what it recorded. Register map (offsets from
//! [`ReaderRegisters`]):
//!
//! | register | meaning |
//! |---|---|
//! | input +0 | `head_seq`: sequence number of the head event; 0 = queue empty |
//! | input +1 | `kind`: [`KIND_CARD`], [`KIND_QR`], [`KIND_FACE`], [`KIND_PIN`] |
//! | input +2 | `score`: face match score in thousandths, else 0 |
//! | input +3 | `len`: credential length in bytes (≤ 64) |
//! | input +4..+35 | credential bytes, two per register, high byte first |
//! | holding `ack_register` | `ack_seq`: writing the head's seq drops it; other values are ignored |
//!
//! A face terminal also keeps the snapshots of its last [`SNAPSHOTS_KEPT`] events (an extension
//! of the reference profile; `docs/devices.md`):
//!
//! | register | meaning |
//! |---|---|
//! | holding `snapshot_select` | the daemon writes the seq whose snapshot it wants |
//! | input `snapshot_base` +0 | `snap_seq`: the seq whose snapshot is shown (the one selected, if kept), 0 = none |
//! | input `snapshot_base` +1, +2 | its length in bytes, high word first |
//! | input `snapshot_data` + i | bytes 2i, 2i+1 of the image, high byte first; zeros past its end |

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_modbus::{ExceptionCode, Request, Response};

use crate::modbus::{
    MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS, Now, check_quantity,
    echo_quantity, offset_in,
};
use crate::{SimError, SimServer, lock};

pub const KIND_CARD: u16 = 1;
pub const KIND_QR: u16 = 2;
pub const KIND_FACE: u16 = 3;
pub const KIND_PIN: u16 = 4;

/// Most credential bytes a reader can show: 32 registers of two bytes.
pub const CREDENTIAL_MAX: usize = 64;
/// Input registers a reader exposes from `input_base`: header (4) + credential (32).
pub const READER_INPUTS: u16 = 36;
/// Most events a reader holds unacknowledged. Real devices have a bounded queue too, and the
/// bound keeps sequence numbers (which wrap at 65535) unique within the queue.
pub const QUEUE_CAPACITY: usize = 32_768;

/// Where a reader's registers sit. Real devices differ; the semantics do not. The default is
/// the reference profile: inputs from 0, ack in holding register 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderRegisters {
    /// First of the 36 input registers (`head_seq`).
    pub input_base: u16,
    /// The holding register the daemon writes `ack_seq` to.
    pub ack_register: u16,
    /// The holding register that selects a snapshot by seq.
    pub snapshot_select: u16,
    /// The three input registers of the selected snapshot's header.
    pub snapshot_base: u16,
    /// The first input register of the selected snapshot's bytes.
    pub snapshot_data: u16,
}

impl Default for ReaderRegisters {
    fn default() -> Self {
        Self {
            input_base: 0,
            ack_register: 0,
            snapshot_select: 1,
            snapshot_base: 40,
            snapshot_data: 1000,
        }
    }
}

/// How many events' snapshots a terminal keeps.
pub const SNAPSHOTS_KEPT: usize = 8;

#[derive(Debug, Clone)]
struct Event {
    seq: u16,
    kind: u16,
    score: u16,
    credential: Vec<u8>,
}

/// The register model of one reader unit, without I/O: requests and time go in, responses
/// come out.
#[derive(Debug)]
pub(crate) struct ReaderState {
    regs: ReaderRegisters,
    queue: VecDeque<Event>,
    next_seq: u16,
    /// Last value written to the ack register: reading it back returns this.
    ack_value: u16,
    acked: Vec<u16>,
    /// When each seq became the head. Keyed by seq, so it holds at most 65535 entries however
    /// long a benchmark runs; a wrapped seq overwrites its predecessor.
    head_since: HashMap<u16, SystemTime>,
    /// How many more valid acks to accept and not act on: a device that keeps showing an
    /// event it was told to drop (a slow scan cycle, a queue restored after a reboot).
    ignore_acks: usize,
    /// The snapshots of the last events, oldest first, and the seq selected.
    snapshots: VecDeque<(u16, Vec<u8>)>,
    select: u16,
    /// When a snapshot was last selected.
    selected_at: Option<SystemTime>,
}

impl ReaderState {
    pub(crate) fn new(regs: ReaderRegisters) -> Self {
        Self {
            regs,
            queue: VecDeque::new(),
            next_seq: 1,
            ack_value: 0,
            acked: Vec::new(),
            head_since: HashMap::new(),
            ignore_acks: 0,
            snapshots: VecDeque::new(),
            select: 0,
            selected_at: None,
        }
    }

    /// Keeps `image` as the snapshot of event `seq`, dropping the oldest beyond
    /// [`SNAPSHOTS_KEPT`].
    fn add_snapshot(&mut self, seq: u16, image: Vec<u8>) {
        self.snapshots.push_back((seq, image));
        while self.snapshots.len() > SNAPSHOTS_KEPT {
            self.snapshots.pop_front();
        }
    }

    /// Registers of the snapshot data block: up to the end of the address space.
    fn data_regs(&self) -> usize {
        65_536 - usize::from(self.regs.snapshot_data)
    }

    fn snapshot_header(&self) -> [u16; 3] {
        match self.snapshots.iter().find(|(seq, _)| *seq == self.select) {
            Some((seq, image)) => {
                let len = u32::try_from(image.len()).unwrap_or(u32::MAX);
                [*seq, (len >> 16) as u16, len as u16]
            }
            None => [0; 3],
        }
    }

    fn snapshot_words(&self, at: usize, quantity: usize) -> Vec<u16> {
        let image = self
            .snapshots
            .iter()
            .find(|(seq, _)| *seq == self.select)
            .map_or(&[][..], |(_, image)| image.as_slice());
        (at..at + quantity)
            .map(|i| {
                let high = image.get(2 * i).copied().unwrap_or(0);
                let low = image.get(2 * i + 1).copied().unwrap_or(0);
                u16::from_be_bytes([high, low])
            })
            .collect()
    }

    fn present(
        &mut self,
        kind: u16,
        credential: &[u8],
        score: u16,
        now: SystemTime,
    ) -> Result<u16, SimError> {
        if credential.len() > CREDENTIAL_MAX {
            return Err(SimError::CredentialTooLong {
                len: credential.len(),
            });
        }
        if self.queue.len() >= QUEUE_CAPACITY {
            return Err(SimError::QueueFull);
        }
        let seq = self.next_seq;
        // 0 means "empty", so the sequence skips it when it wraps.
        self.next_seq = if seq == u16::MAX { 1 } else { seq + 1 };
        if self.queue.is_empty() {
            self.head_since.insert(seq, now);
        } else {
            // A wrapped seq must not report the time of the event that used it before.
            self.head_since.remove(&seq);
        }
        self.queue.push_back(Event {
            seq,
            kind,
            score,
            credential: credential.to_vec(),
        });
        Ok(seq)
    }

    /// The 36 input registers as the daemon sees them now.
    fn image(&self) -> [u16; READER_INPUTS as usize] {
        let mut regs = [0; READER_INPUTS as usize];
        if let Some(head) = self.queue.front() {
            regs[0] = head.seq;
            regs[1] = head.kind;
            regs[2] = head.score;
            // present() caps the credential at 64 bytes, so the length and the chunks fit.
            regs[3] = u16::try_from(head.credential.len()).unwrap_or(u16::MAX);
            for (reg, pair) in regs[4..].iter_mut().zip(head.credential.chunks(2)) {
                let high = pair.first().copied().unwrap_or(0);
                let low = pair.get(1).copied().unwrap_or(0);
                *reg = u16::from_be_bytes([high, low]);
            }
        }
        regs
    }

    fn write_ack(&mut self, value: u16, now: SystemTime) {
        self.ack_value = value;
        // Only the head's own seq drops it: a stale or wrong ack (a daemon that restarted, a
        // retried write) must never drop an event that was not recorded.
        if value == 0 || self.queue.front().is_none_or(|head| head.seq != value) {
            return;
        }
        if self.ignore_acks > 0 {
            self.ignore_acks -= 1;
            return;
        }
        self.queue.pop_front();
        self.acked.push(value);
        if let Some(next) = self.queue.front() {
            self.head_since.insert(next.seq, now);
        }
    }

    pub(crate) fn handle(
        &mut self,
        req: &Request<'_>,
        now: Now,
    ) -> Result<Response, ExceptionCode> {
        let inputs = usize::from(READER_INPUTS);
        match req {
            Request::ReadInputRegisters(addr, quantity) => {
                let quantity = usize::from(*quantity);
                check_quantity(quantity, MAX_READ_REGISTERS)?;
                // The mailbox first: a configured base may sit inside the default data block.
                if let Ok(at) = offset_in(self.regs.input_base, inputs, *addr, quantity) {
                    let image = self.image();
                    return Ok(Response::ReadInputRegisters(
                        image[at..at + quantity].to_vec(),
                    ));
                }
                if let Ok(at) = offset_in(self.regs.snapshot_base, 3, *addr, quantity) {
                    let header = self.snapshot_header();
                    return Ok(Response::ReadInputRegisters(
                        header[at..at + quantity].to_vec(),
                    ));
                }
                if let Ok(at) =
                    offset_in(self.regs.snapshot_data, self.data_regs(), *addr, quantity)
                {
                    return Ok(Response::ReadInputRegisters(
                        self.snapshot_words(at, quantity),
                    ));
                }
                Err(ExceptionCode::IllegalDataAddress)
            }
            Request::ReadHoldingRegisters(addr, quantity) => {
                let quantity = usize::from(*quantity);
                check_quantity(quantity, MAX_READ_REGISTERS)?;
                offset_in(self.regs.ack_register, 1, *addr, quantity)?;
                Ok(Response::ReadHoldingRegisters(vec![self.ack_value]))
            }
            Request::WriteSingleRegister(addr, value) if *addr == self.regs.snapshot_select => {
                self.select = *value;
                self.selected_at = Some(now.wall);
                Ok(Response::WriteSingleRegister(*addr, *value))
            }
            Request::WriteSingleRegister(addr, value) => {
                offset_in(self.regs.ack_register, 1, *addr, 1)?;
                self.write_ack(*value, now.wall);
                Ok(Response::WriteSingleRegister(*addr, *value))
            }
            Request::WriteMultipleRegisters(addr, values) => {
                check_quantity(values.len(), MAX_WRITE_REGISTERS)?;
                offset_in(self.regs.ack_register, 1, *addr, values.len())?;
                for value in values.iter() {
                    self.write_ack(*value, now.wall);
                }
                Ok(Response::WriteMultipleRegisters(
                    *addr,
                    echo_quantity(values.len())?,
                ))
            }
            // A reader has no coils or discrete inputs: every such address is out of range.
            Request::ReadCoils(_, quantity) | Request::ReadDiscreteInputs(_, quantity) => {
                check_quantity(usize::from(*quantity), MAX_READ_BITS)?;
                Err(ExceptionCode::IllegalDataAddress)
            }
            Request::WriteMultipleCoils(_, coils) => {
                check_quantity(coils.len(), MAX_WRITE_BITS)?;
                Err(ExceptionCode::IllegalDataAddress)
            }
            Request::WriteSingleCoil(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// Handle on a simulated reader unit. Clones share the device; the server it sits on stays up
/// while any handle to it (this one included) is alive.
#[derive(Debug, Clone)]
pub struct SimReader {
    unit: u8,
    state: Arc<Mutex<ReaderState>>,
    server: SimServer,
}

impl SimReader {
    pub(crate) fn new(unit: u8, state: Arc<Mutex<ReaderState>>, server: SimServer) -> Self {
        Self {
            unit,
            state,
            server,
        }
    }

    /// Queues a credential event, as if someone presented a card, code or face, and returns
    /// the seq assigned to it. If the queue was empty, the event is at the head (visible in
    /// `head_seq`) when this returns. `kind` and `score` are passed through unchecked, so a
    /// test can play a device that sends values outside the profile.
    pub fn present(&self, kind: u16, credential: &str, score: u16) -> Result<u16, SimError> {
        if !credential.is_ascii() {
            return Err(SimError::NotAscii);
        }
        self.present_raw(kind, credential.as_bytes(), score)
    }

    /// Like [`present`](Self::present), for any bytes (at most 64): a misbehaving device.
    pub fn present_raw(&self, kind: u16, credential: &[u8], score: u16) -> Result<u16, SimError> {
        lock(&self.state).present(kind, credential, score, SystemTime::now())
    }

    /// Like [`present`](Self::present), for a face terminal that also took a snapshot (any
    /// bytes: a JPEG, or something hostile). The terminal keeps the last
    /// [`SNAPSHOTS_KEPT`]; an image too large for the data block is refused.
    pub fn present_with_snapshot(
        &self,
        kind: u16,
        credential: &str,
        score: u16,
        image: Vec<u8>,
    ) -> Result<u16, SimError> {
        let mut state = lock(&self.state);
        let max = 2 * state.data_regs();
        if image.len() > max {
            return Err(SimError::SnapshotTooLarge {
                len: image.len(),
                max,
            });
        }
        if !credential.is_ascii() {
            return Err(SimError::NotAscii);
        }
        let seq = state.present(kind, credential.as_bytes(), score, SystemTime::now())?;
        state.add_snapshot(seq, image);
        Ok(seq)
    }

    /// When the daemon last selected a snapshot (wrote `snapshot_select`).
    pub fn snapshot_selected_at(&self) -> Option<SystemTime> {
        lock(&self.state).selected_at
    }

    /// Events not acknowledged yet, the head included.
    pub fn queued(&self) -> usize {
        lock(&self.state).queue.len()
    }

    /// The seq at the head of the queue, if any: what input `head_seq` reads now.
    pub fn head(&self) -> Option<u16> {
        lock(&self.state).queue.front().map(|event| event.seq)
    }

    /// Makes the reader accept the next `n` acks of its head without dropping it, as a device
    /// that keeps showing an acknowledged event would.
    pub fn ignore_next_acks(&self, n: usize) {
        lock(&self.state).ignore_acks = n;
    }

    /// The seqs the daemon acknowledged, in the order it did.
    pub fn acked(&self) -> Vec<u16> {
        lock(&self.state).acked.clone()
    }

    /// When the event with this seq became the head, i.e. became readable as `head_seq`: the
    /// start of the daemon's reaction time. `None` if it has not reached the head yet.
    pub fn presented_at(&self, seq: u16) -> Option<SystemTime> {
        lock(&self.state).head_since.get(&seq).copied()
    }

    pub fn unit(&self) -> u8 {
        self.unit
    }

    pub fn registers(&self) -> ReaderRegisters {
        lock(&self.state).regs
    }

    /// The server (socket) this unit is on, e.g. to inject a fault.
    pub fn server(&self) -> &SimServer {
        &self.server
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(state: &mut ReaderState, addr: u16, quantity: u16) -> Result<Vec<u16>, ExceptionCode> {
        match state.handle(&Request::ReadInputRegisters(addr, quantity), Now::read())? {
            Response::ReadInputRegisters(regs) => Ok(regs),
            other => panic!("unexpected response {other:?}"),
        }
    }

    fn ack(state: &mut ReaderState, seq: u16) {
        let res = state.handle(&Request::WriteSingleRegister(0, seq), Now::read());
        assert_eq!(res, Ok(Response::WriteSingleRegister(0, seq)));
    }

    #[test]
    fn credential_is_packed_high_byte_first_with_odd_length_padded() {
        let mut state = ReaderState::new(ReaderRegisters::default());
        let seq = state.present(KIND_FACE, b"ABC", 912, SystemTime::now());
        assert_eq!(seq, Ok(1));
        let regs = read(&mut state, 0, 36).expect("in range");
        assert_eq!(&regs[..6], &[1, KIND_FACE, 912, 3, 0x4142, 0x4300]);
        assert!(regs[6..].iter().all(|&r| r == 0));
    }

    #[test]
    fn full_length_credential_fills_every_register() {
        let mut state = ReaderState::new(ReaderRegisters::default());
        let credential = [b'7'; CREDENTIAL_MAX];
        assert!(
            state
                .present(KIND_CARD, &credential, 0, SystemTime::now())
                .is_ok()
        );
        let regs = read(&mut state, 0, 36).expect("in range");
        assert_eq!(regs[3], 64);
        assert!(regs[4..].iter().all(|&r| r == 0x3737));
        assert_eq!(
            state.present(KIND_CARD, &[b'7'; 65], 0, SystemTime::now()),
            Err(SimError::CredentialTooLong { len: 65 })
        );
    }

    #[test]
    fn only_the_head_seq_acks_the_head() {
        let mut state = ReaderState::new(ReaderRegisters::default());
        let now = SystemTime::now();
        assert_eq!(state.present(KIND_CARD, b"1", 0, now), Ok(1));
        assert_eq!(state.present(KIND_CARD, b"2", 0, now), Ok(2));
        ack(&mut state, 2); // not the head: ignored
        ack(&mut state, 0);
        assert_eq!(state.queue.len(), 2);
        assert_eq!(state.ack_value, 0);
        ack(&mut state, 1);
        assert_eq!(read(&mut state, 0, 1), Ok(vec![2]));
        assert!(state.head_since.contains_key(&2));
        ack(&mut state, 1); // a repeated ack changes nothing
        ack(&mut state, 2);
        assert_eq!(read(&mut state, 0, 4), Ok(vec![0, 0, 0, 0]));
        assert_eq!(state.acked, vec![1, 2]);
    }

    #[test]
    fn seq_wraps_from_65535_to_1() {
        let mut state = ReaderState::new(ReaderRegisters::default());
        state.next_seq = u16::MAX;
        let now = SystemTime::now();
        assert_eq!(state.present(KIND_PIN, b"1", 0, now), Ok(u16::MAX));
        assert_eq!(state.present(KIND_PIN, b"2", 0, now), Ok(1));
    }

    #[test]
    fn a_selected_snapshot_shows_its_header_and_bytes_and_old_ones_are_dropped() {
        let mut state = ReaderState::new(ReaderRegisters::default());
        let now = SystemTime::now();
        let mut seqs = Vec::new();
        for i in 0..=SNAPSHOTS_KEPT {
            let seq = state.present(KIND_FACE, b"P1", 900, now).expect("queued");
            state.add_snapshot(seq, vec![0xFF, 0xD8, i as u8]);
            seqs.push(seq);
        }
        let select = |state: &mut ReaderState, seq: u16| {
            state
                .handle(&Request::WriteSingleRegister(1, seq), Now::read())
                .expect("select")
        };
        let last = *seqs.last().expect("seqs");
        select(&mut state, last);
        assert_eq!(read(&mut state, 40, 3), Ok(vec![last, 0, 3]));
        assert_eq!(read(&mut state, 1000, 3), Ok(vec![0xFFD8, 0x0800, 0]));
        // The first one is no longer kept: no snapshot.
        select(&mut state, seqs[0]);
        assert_eq!(read(&mut state, 40, 3), Ok(vec![0, 0, 0]));
        assert_eq!(read(&mut state, 1000, 1), Ok(vec![0]));
    }

    #[test]
    fn configured_bases_move_the_map() {
        let mut state = ReaderState::new(ReaderRegisters {
            input_base: 1000,
            ack_register: 7,
            snapshot_base: 2000,
            snapshot_data: 3000,
            ..ReaderRegisters::default()
        });
        assert!(state.present(KIND_QR, b"QR", 0, SystemTime::now()).is_ok());
        assert_eq!(read(&mut state, 1000, 2), Ok(vec![1, KIND_QR]));
        assert_eq!(
            read(&mut state, 0, 1),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            read(&mut state, 1034, 3),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            state.handle(&Request::WriteSingleRegister(0, 1), Now::read()),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            state.handle(&Request::WriteSingleRegister(7, 1), Now::read()),
            Ok(Response::WriteSingleRegister(7, 1))
        );
        assert_eq!(state.queue.len(), 0);
    }

    #[test]
    fn bad_quantities_and_functions_are_exceptions() {
        let mut state = ReaderState::new(ReaderRegisters::default());
        assert_eq!(read(&mut state, 0, 0), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(
            read(&mut state, 0, 126),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            state.handle(&Request::ReadCoils(0, 1), Now::read()),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            state.handle(&Request::MaskWriteRegister(0, 0, 0), Now::read()),
            Err(ExceptionCode::IllegalFunction)
        );
    }
}
