//! The wall clock, read: the one place gated reads the time of day. Whether that time can be
//! trusted is the clock watcher's judgement (`clock.rs`, above the store and the devices);
//! the read itself sits below every layer that stamps a time.

/// Now, in Unix milliseconds (UTC).
pub fn now_ms() -> crate::core::UnixMs {
    chrono::Utc::now().timestamp_millis()
}
