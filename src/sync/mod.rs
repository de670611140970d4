//! MQTT sync: the contract types, the uplink (outbox → broker) and the downlink (lists and
//! commands → store, acked).

pub mod contract;
