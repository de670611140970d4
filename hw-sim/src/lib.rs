//! hw-sim: the gate devices of the reference profile (docs/design.md, "The reference device profile
//! (Modbus)"), served over real Modbus TCP sockets, with fault injection.
//!
//! It exists so that `gated`'s integration tests, benchmarks and demo talk to something that
//! behaves like the hardware on the wire — the same frames, the same timeouts, the same dropped
//! connections — without the hardware.
//!
//! - [`SimServer`]: one TCP listener (one "device on a socket") hosting one or more unit ids.
//!   A [`Fault`] set on it applies to everything on that socket.
//! - [`SimReader`]: a card reader or face terminal unit; its events form a mailbox queue that the
//!   daemon reads and acknowledges.
//! - [`SimRelay`]: a turnstile relay board unit: timed pulses, hold-open coils, passage counters,
//!   fire and tamper inputs.
//! - [`SimPanel`]: a guard's button panel (a Modbus IO module): buttons and lamps.
//! - [`serve_control`]: the line-based control port that the `hw-sim` binary offers to a person
//!   at a terminal (`nc 127.0.0.1 5099`).
//!
//! Architecture invariant: the register maps ([`reader`], [`relay`]) are plain state machines
//! that take the time as an argument; only [`server`] touches sockets and clocks.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use hw_sim::{KIND_CARD, ReaderRegisters, SimServer};
//! let server = SimServer::bind("127.0.0.1:0".parse().expect("literal address")).await?;
//! let reader = server.add_reader(1, ReaderRegisters::default());
//! let seq = reader.present(KIND_CARD, "0012345678", 0).expect("short ASCII credential");
//! // ... point the daemon at server.local_addr(), unit 1, then wait for reader.acked() ...
//! # let _ = seq; Ok(()) }
//! ```

pub mod control;
mod modbus;
pub mod panel;
pub mod reader;
pub mod relay;
pub mod server;

pub use control::{Device, Devices, serve_control};
pub use panel::SimPanel;
pub use reader::{
    CREDENTIAL_MAX, KIND_CARD, KIND_FACE, KIND_PIN, KIND_QR, QUEUE_CAPACITY, READER_INPUTS,
    ReaderRegisters, SNAPSHOTS_KEPT, SimReader,
};
pub use relay::{Pulse, RelayRegisters, SimRelay};
pub use server::{Fault, SimServer};

/// What a simulator call refuses. Nothing from the network produces one of these: a bad
/// Modbus request gets a Modbus exception instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("credential is {len} bytes; a reader holds at most {CREDENTIAL_MAX}")]
    CredentialTooLong { len: usize },
    #[error("credential is not ASCII (use present_raw for arbitrary bytes)")]
    NotAscii,
    #[error("snapshot is {len} bytes; the data block holds at most {max}")]
    SnapshotTooLarge { len: usize, max: usize },
    #[error("the reader queue is full ({QUEUE_CAPACITY} events not acknowledged)")]
    QueueFull,
    #[error("device name {0:?} is already taken")]
    DuplicateName(String),
    #[error("device name {0:?} must be a non-empty word of letters, digits, '_' or '-'")]
    BadName(String),
}

/// Locks simulator state, recovering it if a panicking thread poisoned the lock: the state is
/// plain data that stays consistent between statements, and a simulator that stops answering
/// after one bug would hide the bug behind a second symptom.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
