//! Integration tests of hw-sim: real tokio-modbus clients and real TCP connections against
//! simulated devices on free ports. One test binary (shared harness in `util`), one module per
//! area.

mod binary;
mod control;
mod faults;
mod modbus;
mod rtu;
mod util;
