//! A guard's button panel: a Modbus IO module of the reference profile.
//!
//! | register | meaning |
//! |---|---|
//! | discrete input 2n / 2n+1 | open-once entry / exit button of lane n (n < 16) |
//! | discrete input 32 | hold-open |
//! | discrete input 33 | lockdown |
//! | discrete input 34 | emergency release |
//! | discrete input 35 | reset (back to normal) |
//! | coil 0..3 | lamps: normal, lockdown, emergency, offline |
//!
//! Inputs are levels: a test or a person presses (on) and lets go (off). Every answered
//! discrete-input read is counted, so a test can wait until the daemon has looked.

use std::sync::{Arc, Mutex};

use tokio_modbus::{ExceptionCode, Request, Response};

use crate::modbus::{MAX_READ_BITS, MAX_WRITE_BITS, check_quantity, echo_quantity, offset_in};
use crate::{SimServer, lock};

/// Discrete inputs of the panel.
pub const PANEL_INPUTS: usize = 36;
/// Lamps (coils) of the panel.
pub const PANEL_LAMPS: usize = 4;
pub const INPUT_HOLD_OPEN: u16 = 32;
pub const INPUT_LOCKDOWN: u16 = 33;
pub const INPUT_EMERGENCY: u16 = 34;
pub const INPUT_RESET: u16 = 35;

#[derive(Debug)]
pub(crate) struct PanelState {
    inputs: [bool; PANEL_INPUTS],
    lamps: [bool; PANEL_LAMPS],
    reads: u64,
}

impl Default for PanelState {
    fn default() -> Self {
        Self {
            inputs: [false; PANEL_INPUTS],
            lamps: [false; PANEL_LAMPS],
            reads: 0,
        }
    }
}

impl PanelState {
    pub(crate) fn handle(&mut self, req: &Request<'_>) -> Result<Response, ExceptionCode> {
        match req {
            Request::ReadDiscreteInputs(addr, quantity) => {
                let n = usize::from(*quantity);
                check_quantity(n, MAX_READ_BITS)?;
                let at = offset_in(0, PANEL_INPUTS, *addr, n)?;
                self.reads += 1;
                Ok(Response::ReadDiscreteInputs(
                    self.inputs[at..at + n].to_vec(),
                ))
            }
            Request::ReadCoils(addr, quantity) => {
                let n = usize::from(*quantity);
                check_quantity(n, MAX_READ_BITS)?;
                let at = offset_in(0, PANEL_LAMPS, *addr, n)?;
                Ok(Response::ReadCoils(self.lamps[at..at + n].to_vec()))
            }
            Request::WriteSingleCoil(addr, on) => {
                let at = offset_in(0, PANEL_LAMPS, *addr, 1)?;
                self.lamps[at] = *on;
                Ok(Response::WriteSingleCoil(*addr, *on))
            }
            Request::WriteMultipleCoils(addr, values) => {
                check_quantity(values.len(), MAX_WRITE_BITS)?;
                let at = offset_in(0, PANEL_LAMPS, *addr, values.len())?;
                self.lamps[at..at + values.len()].copy_from_slice(values);
                Ok(Response::WriteMultipleCoils(
                    *addr,
                    echo_quantity(values.len())?,
                ))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// Handle on a simulated guard panel. Clones share the device.
#[derive(Debug, Clone)]
pub struct SimPanel {
    unit: u8,
    state: Arc<Mutex<PanelState>>,
    server: SimServer,
}

impl SimPanel {
    pub(crate) fn new(unit: u8, state: Arc<Mutex<PanelState>>, server: SimServer) -> Self {
        Self {
            unit,
            state,
            server,
        }
    }

    /// Presses (`true`) or lets go of (`false`) input `addr`; false if there is no such input.
    pub fn set_input(&self, addr: u16, on: bool) -> bool {
        let mut state = lock(&self.state);
        match state.inputs.get_mut(usize::from(addr)) {
            Some(i) => {
                *i = on;
                true
            }
            None => false,
        }
    }

    /// The lamps: normal, lockdown, emergency, offline.
    pub fn lamps(&self) -> [bool; PANEL_LAMPS] {
        lock(&self.state).lamps
    }

    /// How many discrete-input reads the panel has answered.
    pub fn input_reads(&self) -> u64 {
        lock(&self.state).reads
    }

    pub fn unit(&self) -> u8 {
        self.unit
    }

    /// The server (socket) this unit is on, e.g. to inject a fault.
    pub fn server(&self) -> &SimServer {
        &self.server
    }
}
