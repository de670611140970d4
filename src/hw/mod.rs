//! Devices: the Modbus transport with timeouts and reconnects, the reader mailbox, the relay
//! board, and the health registry that status and alarms read.
//!
//! Architecture invariant: one task per device owns that device's connection. A lane never
//! waits on another lane's device; a faulty device only stalls its own work.

pub mod bus;
pub mod gpio;
pub mod health;
pub mod modbus;
pub mod panel;
pub mod reader;
pub mod relay;
pub mod snapshot;
pub mod wiegand;

/// What went wrong talking to a device. A device's exception is kept apart from a broken
/// transport (tokio-modbus's `Result<Result<T, ExceptionCode>, Error>`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    #[error("no reply within {0} ms")]
    Timeout(u64),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("device exception: {0}")]
    Exception(String),
    #[error("garbage from device: {0}")]
    Garbage(String),
    /// A serial reply arrived whole, but its CRC does not match: noise on the line, a wrong
    /// baud rate or parity, a bad termination.
    #[error("CRC error: {0}")]
    Crc(String),
    #[error("device task stopped")]
    Stopped,
    /// The device answers, but a relay's feedback contact contradicts what it was told.
    #[error("{0}")]
    Stuck(String),
}

impl DeviceError {
    /// Whether the request may have reached the device (and been carried out) although it
    /// failed: a request sent but not answered (timeout), cut off (transport) or answered by
    /// a reply to another one (garbage). A connection that could not be made sent nothing, and
    /// a device's exception says it did not carry the request out.
    pub fn may_have_reached_device(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_) | Self::Transport(_) | Self::Garbage(_) | Self::Crc(_)
        )
    }

    /// The short state shown in status (`"timeout"`, `"exception"`, …).
    pub fn state(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "disconnected",
            Self::Transport(_) => "disconnected",
            Self::Exception(_) => "exception",
            Self::Garbage(_) => "garbage",
            Self::Crc(_) => "crc_error",
            Self::Stopped => "stopped",
            Self::Stuck(_) => "stuck",
        }
    }
}

/// Exponential backoff with jitter, for reconnecting to a device or a broker.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: std::time::Duration,
    max: std::time::Duration,
    next: std::time::Duration,
}

impl Backoff {
    pub fn new(min: std::time::Duration, max: std::time::Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; doubles up to `max`, with up to 25% jitter so that many gates
    /// (or devices) that failed together do not retry in lockstep.
    pub fn next_delay(&mut self) -> std::time::Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = base.mul_f64(rand::random::<f64>() * 0.25);
        base + jitter
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}
