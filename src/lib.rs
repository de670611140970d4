//! gated: the gate access-control daemon. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub use gated_core as core;
pub mod demo;
pub mod gate;
pub mod hw;
pub mod logs;
pub mod passage;
pub mod store;
pub mod sync;
pub mod wall;
