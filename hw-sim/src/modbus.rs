//! Small Modbus rules shared by the unit models: quantity limits, address blocks, and the
//! time a request is handled at.
//!
//! The limits are the ones of the Modbus application protocol spec (V1.1b3, section 6). They
//! are checked here, before a response is built, because tokio-modbus's server drops the
//! connection when asked to encode a response that does not fit in a PDU.

use std::time::{Instant, SystemTime};

use tokio_modbus::ExceptionCode;

/// Most registers one read may ask for (function 0x03 / 0x04).
pub(crate) const MAX_READ_REGISTERS: usize = 125;
/// Most bits one read may ask for (function 0x01 / 0x02).
pub(crate) const MAX_READ_BITS: usize = 2000;
/// Most registers one write may carry (function 0x10).
pub(crate) const MAX_WRITE_REGISTERS: usize = 123;
/// Most coils one write may carry (function 0x0F).
pub(crate) const MAX_WRITE_BITS: usize = 1968;

/// The instant a request is handled, on both clocks: wall time for what tests record and
/// compare with the daemon's timestamps, monotonic time for what the device times itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) wall: SystemTime,
    pub(crate) mono: Instant,
}

impl Now {
    pub(crate) fn read() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

/// A quantity of 0 or above the limit is exception 3 (illegal data value), checked before the
/// address, as the spec orders it.
pub(crate) fn check_quantity(quantity: usize, max: usize) -> Result<(), ExceptionCode> {
    if quantity == 0 || quantity > max {
        Err(ExceptionCode::IllegalDataValue)
    } else {
        Ok(())
    }
}

/// Where `[addr, addr + quantity)` starts inside the block `[base, base + len)`, if the whole
/// span lies inside it; otherwise exception 2 (illegal data address). Computed in usize so
/// that no base, length or address near 65535 can overflow.
pub(crate) fn offset_in(
    base: u16,
    len: usize,
    addr: u16,
    quantity: usize,
) -> Result<usize, ExceptionCode> {
    let start = usize::from(addr);
    let base = usize::from(base);
    if start >= base && start + quantity <= base + len {
        Ok(start - base)
    } else {
        Err(ExceptionCode::IllegalDataAddress)
    }
}

/// A quantity already checked against a limit, as the u16 a write response echoes.
pub(crate) fn echo_quantity(quantity: usize) -> Result<u16, ExceptionCode> {
    u16::try_from(quantity).map_err(|_| ExceptionCode::IllegalDataValue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_must_lie_inside_the_block() {
        assert_eq!(offset_in(100, 4, 100, 4), Ok(0));
        assert_eq!(offset_in(100, 4, 102, 2), Ok(2));
        assert_eq!(
            offset_in(100, 4, 102, 3),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            offset_in(100, 4, 99, 1),
            Err(ExceptionCode::IllegalDataAddress)
        );
        // No overflow at the top of the address space.
        assert_eq!(
            offset_in(u16::MAX, 1, u16::MAX, 2),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(offset_in(u16::MAX, 1, u16::MAX, 1), Ok(0));
    }

    #[test]
    fn quantities_are_bounded() {
        assert_eq!(
            check_quantity(0, MAX_READ_REGISTERS),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(check_quantity(125, MAX_READ_REGISTERS), Ok(()));
        assert_eq!(
            check_quantity(126, MAX_READ_REGISTERS),
            Err(ExceptionCode::IllegalDataValue)
        );
    }
}
