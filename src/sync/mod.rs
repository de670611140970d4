//! MQTT sync: the contract types, the link to the broker (uplink: outbox → broker; downlink:
//! lists → store, acked), and the envelope check of what the centre sends.

pub mod contract;
pub mod downlink;
pub mod envelope;
pub mod link;
