//! MQTT sync: the link to the broker (uplink: outbox → broker; downlink: lists → store,
//! acked; alarms the store could not record, sent past the outbox), the transport security
//! (TLS, username and password) of the connections, and the report of a gate that cannot
//! start. The shapes on the wire and the envelope check are the `gated-contract` crate.

pub mod direct;
pub mod downlink;
pub mod link;
pub mod start_report;
pub mod transport;
