//! Wall-clock timestamps as stored in records (unix milliseconds / seconds).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Seconds since the unix epoch (0 if the clock is before it).
pub fn now_secs() -> i64 {
    now_ms() / 1000
}
