//! A turnstile relay board unit: per lane, timed release pulses, hold-open coils and passage
//! counters; per board, the fire alarm and cabinet tamper contacts.
//!
//! Register map for lane `n` (offsets from [`RelayRegisters`]; "entry" is `2n`, "exit" `2n+1`):
//!
//! | register | meaning |
//! |---|---|
//! | holding `pulse_base` + 2n / +2n+1 | write `ms` to release entry / exit for that long; 0 cancels; reads the ms left |
//! | coil `coil_base` + 2n / +2n+1 | steady release (hold-open) of entry / exit |
//! | input `counter_base` + 2n / +2n+1 | entry / exit passage counters, wrapping at 65536 |
//! | discrete input `fire_input` | fire alarm contact (1 = alarm) |
//! | discrete input `tamper_input` | cabinet tamper (1 = open) |
//! | discrete input `button_base` + 2n / +2n+1 | request buttons of lane n's entry / exit (1 = pressed), for free exit (an extension of the reference profile) |
//! | discrete input `feedback_base` + 2n / +2n+1 | the entry / exit relay's feedback contact: 1 while the relay is energized (an extension) |
//! | discrete input `door_base` + n | lane n's door or wing contact, 1 = open (an extension) |
//!
//! A relay can be made stuck ([`SimRelay::set_stuck`]): stuck on, its lane stays released
//! whatever is written; stuck off, it never releases. Its feedback contact shows the truth.
//!
//! The board times its pulses itself, so a daemon that crashes mid-pulse cannot leave a lane
//! open; every nonzero pulse write is recorded as a [`Pulse`] for tests to check.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_modbus::{ExceptionCode, Request, Response};

use crate::modbus::{
    MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS, Now, check_quantity,
    echo_quantity, offset_in,
};
use crate::{SimServer, lock};

/// Where a relay board's registers sit. The default is the reference profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRegisters {
    /// Holding register of lane 0's entry pulse; lane n's entry / exit are +2n / +2n+1.
    pub pulse_base: u16,
    /// Coil of lane 0's entry hold-open.
    pub coil_base: u16,
    /// Input register of lane 0's entry counter.
    pub counter_base: u16,
    /// Discrete input of the fire alarm contact.
    pub fire_input: u16,
    /// Discrete input of the cabinet tamper contact.
    pub tamper_input: u16,
    /// Discrete input of lane 0's entry request button; lane n's entry / exit are +2n / +2n+1.
    pub button_base: u16,
    /// Discrete input of lane 0's entry relay feedback; lane n's entry / exit are +2n / +2n+1.
    pub feedback_base: u16,
    /// Discrete input of lane 0's door contact; lane n's is +n.
    pub door_base: u16,
}

impl Default for RelayRegisters {
    fn default() -> Self {
        Self {
            pulse_base: 100,
            coil_base: 0,
            counter_base: 0,
            fire_input: 0,
            tamper_input: 1,
            button_base: 8,
            feedback_base: 4000,
            door_base: 6000,
        }
    }
}

/// One nonzero write to a pulse register: the daemon released a lane for `ms` milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Pulse {
    pub lane: u16,
    /// false = entry, true = exit.
    pub exit: bool,
    pub ms: u16,
    /// When the board received the write.
    pub at: SystemTime,
}

/// The register model of one relay board, without I/O. Outputs (pulses, coils, counters) are
/// indexed `2 * lane + exit`.
#[derive(Debug)]
pub(crate) struct RelayState {
    regs: RelayRegisters,
    lanes: u16,
    pulse_until: Vec<Option<Instant>>,
    coils: Vec<bool>,
    counters: Vec<u16>,
    fire: bool,
    tamper: bool,
    buttons: Vec<bool>,
    /// A relay stuck on (`Some(true)`) or off, whatever is written.
    stuck: Vec<Option<bool>>,
    doors: Vec<bool>,
    /// Discrete-input reads answered, so a test can wait for the daemon to have looked.
    input_reads: u64,
    pulses: Vec<Pulse>,
    /// False for a board that only takes register writes as function 16: function 6 gets
    /// exception 1 (illegal function).
    single_writes: bool,
}

impl RelayState {
    pub(crate) fn new(lanes: u16, regs: RelayRegisters) -> Self {
        let outputs = 2 * usize::from(lanes);
        Self {
            regs,
            lanes,
            pulse_until: vec![None; outputs],
            coils: vec![false; outputs],
            counters: vec![0; outputs],
            fire: false,
            tamper: false,
            buttons: vec![false; outputs],
            stuck: vec![None; outputs],
            doors: vec![false; usize::from(lanes)],
            input_reads: 0,
            pulses: Vec::new(),
            single_writes: true,
        }
    }

    fn outputs(&self) -> usize {
        2 * usize::from(self.lanes)
    }

    fn index(&self, lane: u16, exit: bool) -> Option<usize> {
        (lane < self.lanes).then(|| 2 * usize::from(lane) + usize::from(exit))
    }

    fn write_pulse(&mut self, index: usize, ms: u16, now: Now) {
        if ms == 0 {
            self.pulse_until[index] = None;
            return;
        }
        self.pulse_until[index] = Some(now.mono + Duration::from_millis(u64::from(ms)));
        self.pulses.push(Pulse {
            // index < 2 * lanes, so index / 2 fits in u16.
            lane: u16::try_from(index / 2).unwrap_or(u16::MAX),
            exit: index % 2 == 1,
            ms,
            at: now.wall,
        });
    }

    /// Milliseconds left on a pulse, as the holding register reads back.
    fn remaining_ms(&self, index: usize, now: Instant) -> u16 {
        self.pulse_until[index].map_or(0, |until| {
            let left = until.saturating_duration_since(now).as_millis();
            u16::try_from(left).unwrap_or(u16::MAX)
        })
    }

    /// Whether the relay of output `i` is energized: released by a pulse or a hold coil,
    /// unless it is stuck.
    fn energized(&self, i: usize, now: Instant) -> bool {
        self.stuck[i].unwrap_or(self.coils[i] || self.remaining_ms(i, now) > 0)
    }

    fn discrete_input(&self, addr: u16, now: Instant) -> Result<bool, ExceptionCode> {
        let within =
            |base: u16, n: usize| addr.checked_sub(base).map(usize::from).filter(|i| *i < n);
        if addr == self.regs.fire_input {
            Ok(self.fire)
        } else if addr == self.regs.tamper_input {
            Ok(self.tamper)
        } else if let Some(i) = within(self.regs.button_base, self.outputs()) {
            Ok(self.buttons[i])
        } else if let Some(i) = within(self.regs.feedback_base, self.outputs()) {
            Ok(self.energized(i, now))
        } else if let Some(i) = within(self.regs.door_base, usize::from(self.lanes)) {
            Ok(self.doors[i])
        } else {
            Err(ExceptionCode::IllegalDataAddress)
        }
    }

    pub(crate) fn handle(
        &mut self,
        req: &Request<'_>,
        now: Now,
    ) -> Result<Response, ExceptionCode> {
        let outputs = self.outputs();
        let regs = self.regs;
        match req {
            Request::ReadInputRegisters(addr, quantity) => {
                let quantity = usize::from(*quantity);
                check_quantity(quantity, MAX_READ_REGISTERS)?;
                let at = offset_in(regs.counter_base, outputs, *addr, quantity)?;
                Ok(Response::ReadInputRegisters(
                    self.counters[at..at + quantity].to_vec(),
                ))
            }
            Request::ReadHoldingRegisters(addr, quantity) => {
                let quantity = usize::from(*quantity);
                check_quantity(quantity, MAX_READ_REGISTERS)?;
                let at = offset_in(regs.pulse_base, outputs, *addr, quantity)?;
                let left = (at..at + quantity)
                    .map(|index| self.remaining_ms(index, now.mono))
                    .collect();
                Ok(Response::ReadHoldingRegisters(left))
            }
            Request::WriteSingleRegister(_, _) if !self.single_writes => {
                Err(ExceptionCode::IllegalFunction)
            }
            Request::WriteSingleRegister(addr, ms) => {
                let at = offset_in(regs.pulse_base, outputs, *addr, 1)?;
                self.write_pulse(at, *ms, now);
                Ok(Response::WriteSingleRegister(*addr, *ms))
            }
            Request::WriteMultipleRegisters(addr, values) => {
                check_quantity(values.len(), MAX_WRITE_REGISTERS)?;
                let at = offset_in(regs.pulse_base, outputs, *addr, values.len())?;
                for (index, ms) in (at..).zip(values.iter()) {
                    self.write_pulse(index, *ms, now);
                }
                Ok(Response::WriteMultipleRegisters(
                    *addr,
                    echo_quantity(values.len())?,
                ))
            }
            Request::ReadCoils(addr, quantity) => {
                let quantity = usize::from(*quantity);
                check_quantity(quantity, MAX_READ_BITS)?;
                let at = offset_in(regs.coil_base, outputs, *addr, quantity)?;
                Ok(Response::ReadCoils(self.coils[at..at + quantity].to_vec()))
            }
            Request::WriteSingleCoil(addr, on) => {
                let at = offset_in(regs.coil_base, outputs, *addr, 1)?;
                self.coils[at] = *on;
                Ok(Response::WriteSingleCoil(*addr, *on))
            }
            Request::WriteMultipleCoils(addr, values) => {
                check_quantity(values.len(), MAX_WRITE_BITS)?;
                let at = offset_in(regs.coil_base, outputs, *addr, values.len())?;
                self.coils[at..at + values.len()].copy_from_slice(values);
                Ok(Response::WriteMultipleCoils(
                    *addr,
                    echo_quantity(values.len())?,
                ))
            }
            Request::ReadDiscreteInputs(addr, quantity) => {
                check_quantity(usize::from(*quantity), MAX_READ_BITS)?;
                // The two contacts may sit anywhere; a span that covers any other address is
                // out of range as a whole.
                let bits = (u32::from(*addr)..u32::from(*addr) + u32::from(*quantity))
                    .map(|addr| {
                        u16::try_from(addr)
                            .map_err(|_| ExceptionCode::IllegalDataAddress)
                            .and_then(|addr| self.discrete_input(addr, now.mono))
                    })
                    .collect::<Result<Vec<bool>, ExceptionCode>>()?;
                self.input_reads += 1;
                Ok(Response::ReadDiscreteInputs(bits))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// Handle on a simulated relay board unit. Clones share the device; the server it sits on
/// stays up while any handle to it is alive. Lanes beyond [`lanes`](Self::lanes) read as
/// closed and zero.
#[derive(Debug, Clone)]
pub struct SimRelay {
    unit: u8,
    state: Arc<Mutex<RelayState>>,
    server: SimServer,
}

impl SimRelay {
    pub(crate) fn new(unit: u8, state: Arc<Mutex<RelayState>>, server: SimServer) -> Self {
        Self {
            unit,
            state,
            server,
        }
    }

    /// Every nonzero pulse write so far, oldest first.
    pub fn pulses(&self) -> Vec<Pulse> {
        lock(&self.state).pulses.clone()
    }

    /// Whether the hold-open coil of this lane and direction is on.
    pub fn hold(&self, lane: u16, exit: bool) -> bool {
        let state = lock(&self.state);
        state.index(lane, exit).is_some_and(|i| state.coils[i])
    }

    /// Whether the lane is released right now: hold-open on, or a pulse still running (or
    /// its relay stuck on, and not if stuck off).
    pub fn released(&self, lane: u16, exit: bool) -> bool {
        let state = lock(&self.state);
        state
            .index(lane, exit)
            .is_some_and(|i| state.energized(i, Instant::now()))
    }

    /// Sticks the relay of this lane and direction on (`Some(true)`: welded contacts, the lane
    /// stays released) or off (`Some(false)`: it never releases); `None` frees it. Returns
    /// false if the board has no such lane.
    pub fn set_stuck(&self, lane: u16, exit: bool, stuck: Option<bool>) -> bool {
        let mut state = lock(&self.state);
        match state.index(lane, exit) {
            Some(i) => {
                state.stuck[i] = stuck;
                true
            }
            None => false,
        }
    }

    /// Opens (`true`) or closes lane `lane`'s door or wing contact. Returns false if the board
    /// has no such lane.
    pub fn set_door(&self, lane: u16, open: bool) -> bool {
        let mut state = lock(&self.state);
        match state.doors.get_mut(usize::from(lane)) {
            Some(d) => {
                *d = open;
                true
            }
            None => false,
        }
    }

    pub fn counter(&self, lane: u16, exit: bool) -> u16 {
        let state = lock(&self.state);
        state.index(lane, exit).map_or(0, |i| state.counters[i])
    }

    /// Counts one person through the lane, as the turnstile's passage sensor would.
    ///
    /// # Panics
    /// If `lane` is not below [`lanes`](Self::lanes): that is a bug in the calling test, and
    /// ignoring it would let the test pass for the wrong reason.
    /// [`try_bump_counter`](Self::try_bump_counter) returns `None` instead.
    pub fn bump_counter(&self, lane: u16, exit: bool) {
        let lanes = self.lanes();
        assert!(
            self.try_bump_counter(lane, exit).is_some(),
            "lane {lane} out of range: this relay has {lanes} lanes"
        );
    }

    /// Counts one person through the lane and returns the new counter value, or `None` if the
    /// board has no such lane.
    pub fn try_bump_counter(&self, lane: u16, exit: bool) -> Option<u16> {
        let mut state = lock(&self.state);
        let i = state.index(lane, exit)?;
        state.counters[i] = state.counters[i].wrapping_add(1);
        Some(state.counters[i])
    }

    /// A power cycle: the board comes back with its hold coils off and no pulse running, and
    /// every connection to it is dropped, as a real board's are when it reboots. The pulse log
    /// and the passage counters are kept.
    pub fn power_cycle(&self) {
        {
            let mut state = lock(&self.state);
            state.coils.fill(false);
            state.pulse_until.fill(None);
        }
        self.server.drop_connections();
    }

    /// Makes the board refuse single-register writes (function 6) with exception 1, taking
    /// register writes only as function 16, as some boards do; `true` accepts both again.
    pub fn set_single_register_writes(&self, accepted: bool) {
        lock(&self.state).single_writes = accepted;
    }

    pub fn set_fire(&self, on: bool) {
        lock(&self.state).fire = on;
    }

    pub fn set_tamper(&self, on: bool) {
        lock(&self.state).tamper = on;
    }

    /// How many discrete-input reads (contacts, buttons) the board has answered.
    pub fn input_reads(&self) -> u64 {
        lock(&self.state).input_reads
    }

    /// Presses (`true`) or lets go of (`false`) the request button of this lane and direction.
    /// Returns false if the board has no such lane.
    pub fn set_button(&self, lane: u16, exit: bool, pressed: bool) -> bool {
        let mut state = lock(&self.state);
        match state.index(lane, exit) {
            Some(i) => {
                state.buttons[i] = pressed;
                true
            }
            None => false,
        }
    }

    pub fn fire(&self) -> bool {
        lock(&self.state).fire
    }

    pub fn tamper(&self) -> bool {
        lock(&self.state).tamper
    }

    pub fn lanes(&self) -> u16 {
        lock(&self.state).lanes
    }

    pub fn unit(&self) -> u8 {
        self.unit
    }

    pub fn registers(&self) -> RelayRegisters {
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

    fn handle(
        state: &mut RelayState,
        req: Request<'_>,
        now: Now,
    ) -> Result<Response, ExceptionCode> {
        state.handle(&req, now)
    }

    #[test]
    fn pulse_is_recorded_timed_and_cancellable() {
        let mut state = RelayState::new(2, RelayRegisters::default());
        let now = Now::read();
        assert_eq!(
            handle(&mut state, Request::WriteSingleRegister(103, 3000), now),
            Ok(Response::WriteSingleRegister(103, 3000))
        );
        assert_eq!(state.pulses.len(), 1);
        assert_eq!(
            (
                state.pulses[0].lane,
                state.pulses[0].exit,
                state.pulses[0].ms
            ),
            (1, true, 3000)
        );
        assert_eq!(state.pulses[0].at, now.wall);
        assert_eq!(
            handle(&mut state, Request::ReadHoldingRegisters(100, 4), now),
            Ok(Response::ReadHoldingRegisters(vec![0, 0, 0, 3000]))
        );
        let later = Now {
            wall: now.wall,
            mono: now.mono + Duration::from_millis(2500),
        };
        assert_eq!(
            handle(&mut state, Request::ReadHoldingRegisters(103, 1), later),
            Ok(Response::ReadHoldingRegisters(vec![500]))
        );
        let expired = Now {
            wall: now.wall,
            mono: now.mono + Duration::from_millis(3001),
        };
        assert_eq!(
            handle(&mut state, Request::ReadHoldingRegisters(103, 1), expired),
            Ok(Response::ReadHoldingRegisters(vec![0]))
        );
        // 0 cancels and is not a pulse.
        assert!(handle(&mut state, Request::WriteSingleRegister(103, 3000), now).is_ok());
        assert!(handle(&mut state, Request::WriteSingleRegister(103, 0), now).is_ok());
        assert_eq!(state.remaining_ms(3, now.mono), 0);
        assert_eq!(state.pulses.len(), 2);
    }

    #[test]
    fn addresses_beyond_the_lanes_are_out_of_range() {
        let mut state = RelayState::new(2, RelayRegisters::default());
        let now = Now::read();
        for req in [
            Request::WriteSingleRegister(104, 1),
            Request::WriteSingleRegister(99, 1),
            Request::ReadInputRegisters(3, 2),
            Request::WriteSingleCoil(4, true),
            Request::ReadCoils(0, 5),
            Request::ReadDiscreteInputs(1, 2),
        ] {
            assert_eq!(
                handle(&mut state, req.clone(), now),
                Err(ExceptionCode::IllegalDataAddress),
                "{req:?}"
            );
        }
        assert!(state.pulses.is_empty());
    }

    #[test]
    fn discrete_inputs_follow_the_configured_addresses() {
        let mut state = RelayState::new(
            1,
            RelayRegisters {
                fire_input: 10,
                tamper_input: 11,
                ..RelayRegisters::default()
            },
        );
        state.fire = true;
        let now = Now::read();
        assert_eq!(
            handle(&mut state, Request::ReadDiscreteInputs(10, 2), now),
            Ok(Response::ReadDiscreteInputs(vec![true, false]))
        );
        assert_eq!(
            handle(&mut state, Request::ReadDiscreteInputs(0, 1), now),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            handle(&mut state, Request::ReadDiscreteInputs(u16::MAX, 2), now),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }

    #[test]
    fn coils_write_and_read_back() {
        let mut state = RelayState::new(2, RelayRegisters::default());
        let now = Now::read();
        assert_eq!(
            handle(
                &mut state,
                Request::WriteMultipleCoils(1, vec![true, false, true].into()),
                now
            ),
            Ok(Response::WriteMultipleCoils(1, 3))
        );
        assert_eq!(
            handle(&mut state, Request::ReadCoils(0, 4), now),
            Ok(Response::ReadCoils(vec![false, true, false, true]))
        );
    }
}
