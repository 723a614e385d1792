//! Wall-clock time that follows tokio's clock.
//!
//! Delivery times are stored as Unix milliseconds so they survive restarts.
//! Reading them through tokio's `Instant` means a test that pauses and
//! advances tokio's clock moves this clock too, so retry schedules can be
//! checked without sleeping.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static ANCHOR: OnceLock<(SystemTime, std::time::Instant)> = OnceLock::new();

/// The current time.
pub fn now() -> SystemTime {
    let (wall, monotonic) = *ANCHOR.get_or_init(|| (SystemTime::now(), std::time::Instant::now()));
    let elapsed = tokio::time::Instant::now()
        .into_std()
        .saturating_duration_since(monotonic);
    wall + elapsed
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    to_ms(now())
}

pub fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// RFC 3339 text of a Unix-millisecond time, as event bodies carry it.
pub fn rfc3339(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
