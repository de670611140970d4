//! MQTT sync: the contract types, the link to the broker (uplink: outbox → broker; downlink:
//! lists → store, acked; alarms the store could not record, sent past the outbox), the
//! envelope check of what the centre sends, and the transport
//! security (TLS, username and password) of the connections.

pub mod contract;
pub mod direct;
pub mod downlink;
pub mod envelope;
pub mod link;
pub mod transport;
