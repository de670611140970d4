//! gated: the gate access-control daemon. See ARCHITECTURE.md for the map.

pub mod config;
pub mod core;
pub mod store;
pub mod sync;
