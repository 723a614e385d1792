//! When to poll: pure functions from a schedule and a time to a delay.
//!
//! The timer wheel in `daemon` does the waiting; this module only decides.

use std::time::{Duration, SystemTime};

use rand::RngExt as _;

use crate::config::CronExpr;

/// How often an endpoint is polled.
#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<CronExpr>),
}

/// The first retry after a failed poll; it doubles per consecutive failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest a server's `Retry-After` holds an endpoint back, unless its
/// schedule waits longer anyway.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl Schedule {
    /// How long from `now` until the next regular poll.
    pub fn next_delay(&self, now: SystemTime) -> Duration {
        match self {
            Schedule::Every(interval) => *interval,
            Schedule::Cron(cron) => {
                let now = chrono::DateTime::<chrono::Utc>::from(now);
                cron.schedule
                    .after(&now)
                    .next()
                    .and_then(|next| (next - now).to_std().ok())
                    // An expression with no future time (a past year) never fires again.
                    .unwrap_or(Duration::MAX)
            }
        }
    }

    /// The delay before the first poll after start-up. Interval schedules are
    /// spread uniformly over one interval so that thousands of endpoints do
    /// not fire in the same millisecond; cron schedules fire when they say.
    pub fn first_delay(&self, now: SystemTime) -> Duration {
        match self {
            Schedule::Every(interval) => interval.mul_f64(rand::rng().random_range(0.0..1.0)),
            Schedule::Cron(_) => self.next_delay(now),
        }
    }

    /// The delay before retrying a poll that failed `consecutive_failures`
    /// times in a row: exponential with ±20 % jitter, never later than the
    /// next regular poll would be.
    pub fn retry_delay(&self, consecutive_failures: u32, now: SystemTime) -> Duration {
        let exponent = consecutive_failures.saturating_sub(1).min(20);
        let backoff = with_jitter(FIRST_BACKOFF * 2u32.pow(exponent), 0.2);
        backoff.min(self.next_delay(now))
    }
}

impl Schedule {
    /// The wait after a failed poll: the backoff, or longer when the server
    /// said when to come back (`Retry-After` on 429 and 503), but at most the
    /// longer of the schedule's next wait and an hour: a server can slow a
    /// watch down, never stop it.
    pub fn failed_delay(
        &self,
        consecutive_failures: u32,
        retry_after: Option<Duration>,
        now: SystemTime,
    ) -> Duration {
        let backoff = self.retry_delay(consecutive_failures, now);
        let Some(asked) = retry_after else {
            return backoff;
        };
        let longest = self.next_delay(now).max(LONGEST_RETRY_AFTER);
        backoff.max(asked.min(longest))
    }
}

/// `duration` scaled by a random factor in `[1 - fraction, 1 + fraction]`.
pub fn with_jitter(duration: Duration, fraction: f64) -> Duration {
    let factor = rand::rng().random_range((1.0 - fraction)..=(1.0 + fraction));
    duration.mul_f64(factor)
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(interval) => {
                write!(f, "every {}", humantime::format_duration(*interval))
            }
            Schedule::Cron(cron) => write!(f, "cron `{}`", cron.source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_polls_are_spread_over_the_interval() {
        let schedule = Schedule::Every(Duration::from_secs(10));
        let delays: Vec<Duration> = (0..200)
            .map(|_| schedule.first_delay(SystemTime::now()))
            .collect();
        assert!(delays.iter().all(|delay| *delay < Duration::from_secs(10)));
        assert!(delays.iter().any(|delay| *delay < Duration::from_secs(3)));
        assert!(delays.iter().any(|delay| *delay > Duration::from_secs(7)));
    }

    #[test]
    fn failed_polls_back_off_up_to_the_interval() {
        let schedule = Schedule::Every(Duration::from_secs(60));
        let now = SystemTime::now();
        let first = schedule.retry_delay(1, now);
        assert!(
            first >= Duration::from_millis(800) && first <= Duration::from_millis(1200),
            "{first:?}"
        );
        let fourth = schedule.retry_delay(4, now);
        assert!(
            fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600),
            "{fourth:?}"
        );
        assert_eq!(schedule.retry_delay(30, now), Duration::from_secs(60));
    }

    #[test]
    fn retry_after_is_honoured_up_to_an_hour_or_the_interval() {
        let now = SystemTime::now();
        let minute = Schedule::Every(Duration::from_secs(60));
        // After 30 failures the backoff is the interval; after 1, a second.
        let check = |schedule: &Schedule, failures, asked: Option<u64>, expected: u64| {
            let delay = schedule.failed_delay(failures, asked.map(Duration::from_secs), now);
            assert_eq!(
                delay,
                Duration::from_secs(expected),
                "{schedule} asked {asked:?}"
            );
        };
        check(&minute, 30, None, 60);
        check(&minute, 30, Some(10), 60);
        check(&minute, 1, Some(5), 5);
        check(&minute, 1, Some(120), 120);
        check(&minute, 1, Some(u64::MAX), 3600);
        let daily = Schedule::Every(Duration::from_secs(86_400));
        check(&daily, 1, Some(7200), 7200);
        check(&daily, 1, Some(u64::MAX), 86_400);
    }

    #[test]
    fn cron_waits_for_the_next_tick() {
        let schedule = Schedule::Cron(Box::new("*/5 * * * *".parse().unwrap()));
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:02:30Z").unwrap();
        let delay = schedule.next_delay(at.into());
        assert_eq!(delay, Duration::from_secs(150));
    }
}
