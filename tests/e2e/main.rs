//! End-to-end tests: the real `gated` binary, hw-sim devices over Modbus TCP and RTU (a pseudo-terminal), and a real
//! mosquitto, checked through an MQTT subscriber exactly as an operator would see them.

mod broker;
mod cli;
mod clock;
mod compound;
mod demo;
mod disk;
mod exits;
mod faults;
mod fire;
mod free_exit;
mod gatectl;
mod harness;
mod lists;
mod outage;
mod panel;
mod pass;
mod passage;
mod release;
mod rtu;
mod schedules;
mod silence;
mod snapshot;
mod stale;
mod start_report;
mod store;
mod tidy;
mod tls;
mod trust;
