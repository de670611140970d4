//! MQTT sync: the contract types, the link to the broker (uplink: outbox → broker; downlink:
//! lists → store, acked), the envelope check of what the centre sends, and the transport
//! security (TLS, username and password) of the connections.

pub mod contract;
pub mod downlink;
pub mod envelope;
pub mod link;
pub mod transport;
