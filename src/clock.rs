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
/// Total: a time past what the calendar reaches (a garbage record) is
/// shown as the latest time chrono knows, never a panic.
pub fn rfc3339(ms: u64) -> String {
    let time = i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_time_is_written_without_a_panic() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_800_000_000_123), "2027-01-15T08:00:00.123Z");
        for garbage in [u64::MAX, i64::MAX as u64, 1 << 62, 253_402_300_800_000] {
            assert!(!rfc3339(garbage).is_empty(), "{garbage}");
        }
    }
}
