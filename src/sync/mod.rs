//! MQTT sync: the contract types, the link to the broker (uplink: outbox → broker; downlink:
//! lists → store, acked; alarms the store could not record, sent past the outbox), the
//! envelope check of what the centre sends, the transport security (TLS, username and
//! password) of the connections, and the report of a gate that cannot start.

pub mod contract;
pub mod direct;
pub mod downlink;
pub mod envelope;
pub mod link;
pub mod start_report;
pub mod transport;
