//! The MQTT contract (docs/design.md, docs/mqtt.md) as types: topics and safe names, pass
//! events, alarms, list bodies, commands, acks and status, and the signed envelope they travel
//! in. Everything that is put on or taken off the wire has its shape here and nowhere else, so
//! that the gate, gatectl, the bench and a central service speak exactly the same contract.
//!
//! Parsing here is strict (unknown fields in what the centre sends are refused: a typo in a
//! list must never widen access), and every check names what was wrong.
//!
//! No I/O runtime: no tokio, no SQLite, no MQTT client. The vocabulary the contract shares with
//! the decision core (credential kinds, directions, reasons, modes, times) comes from
//! `gated-core`, the one crate below this one.
//!
//! One file per message kind; the items are re-exported here, so that users name them
//! `gated_contract::PassEvent`. The envelope keeps its own module (`gated_contract::envelope`).

mod ack;
mod alarm;
mod command;
pub mod envelope;
mod event;
mod fields;
mod lists;
mod refusal;
mod status;
mod topics;

pub use ack::*;
pub use alarm::*;
pub use command::*;
pub use event::*;
pub use fields::*;
pub use lists::*;
pub use refusal::MAX_TEXT_LEN;
pub use refusal::Refusal;
pub use status::*;
pub use topics::*;
