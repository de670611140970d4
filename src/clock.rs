//! The shell's one clock read. The core never reads the clock; everything else asks here.

/// Now, in Unix milliseconds (UTC).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
