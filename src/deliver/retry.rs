//! Deciding what a delivery attempt's result means: pure, no IO.

use std::time::Duration;

use crate::schedule::with_jitter;

/// The waits between attempts, after the first immediate one (Standard
/// Webhooks, Svix): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h. Eight attempts
/// over about 32 hours.
pub const DEFAULT_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// The first wait of an exponential schedule (`max_attempts` without `retry`).
const EXPONENTIAL_FIRST: Duration = Duration::from_secs(5);
/// No exponential wait grows past this.
const EXPONENTIAL_CAP: Duration = Duration::from_secs(10 * 3600);

/// The waits after each failed attempt; one attempt more than waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub waits: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            waits: DEFAULT_SCHEDULE.to_vec(),
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts, waiting 5 s, 10 s, 20 s, ... (at most 10 h).
    pub fn exponential(max_attempts: u32) -> RetryPolicy {
        let waits = (0..max_attempts.saturating_sub(1))
            .map(|index| {
                let factor = 2u32.saturating_pow(index.min(31));
                EXPONENTIAL_FIRST
                    .saturating_mul(factor)
                    .min(EXPONENTIAL_CAP)
            })
            .collect();
        RetryPolicy { waits }
    }

    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.waits.len()).unwrap_or(u32::MAX - 1) + 1
    }
}

/// What to do with a row after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// 2xx: the row is done.
    Success,
    /// Try again after this wait.
    Retry(Duration),
    /// The schedule is exhausted: move the row to the dead letters.
    Dead,
    /// 410 Gone: the receiver says it is gone for good. Pause the target,
    /// keep its rows, and let an operator decide.
    Pause,
}

/// Decides after an attempt. Success is 2xx only; a redirect, an error
/// status, a timeout or a refused connection (`status` none) is a failure.
/// `attempts` counts the attempts made so far, this one included. On 429
/// and 503 a `Retry-After` is honoured, clamped to [scheduled wait, twice
/// the scheduled wait] so a receiver can slow pollhook down but neither stop
/// it nor make it hammer.
pub fn decide(
    status: Option<u16>,
    retry_after: Option<Duration>,
    attempts: u32,
    policy: &RetryPolicy,
) -> RetryAction {
    match status {
        Some(200..=299) => return RetryAction::Success,
        Some(410) => return RetryAction::Pause,
        _ => {}
    }
    let index = attempts.max(1) as usize - 1;
    let Some(wait) = policy.waits.get(index) else {
        return RetryAction::Dead;
    };
    let scheduled = with_jitter(*wait, 0.2);
    let wait = match (status, retry_after) {
        (Some(429 | 503), Some(asked)) => asked.clamp(scheduled, scheduled * 2),
        _ => scheduled,
    };
    RetryAction::Retry(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn only_2xx_succeeds_and_410_pauses() {
        let policy = RetryPolicy::default();
        assert_eq!(decide(Some(200), None, 1, &policy), RetryAction::Success);
        assert_eq!(decide(Some(204), None, 1, &policy), RetryAction::Success);
        assert_eq!(decide(Some(410), None, 1, &policy), RetryAction::Pause);
        for failing in [Some(301), Some(304), Some(403), Some(404), Some(500), None] {
            assert!(
                matches!(decide(failing, None, 1, &policy), RetryAction::Retry(_)),
                "{failing:?}"
            );
        }
    }

    #[test]
    fn waits_follow_the_schedule_with_jitter_then_dead() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.max_attempts(), 8);
        for (index, expected) in DEFAULT_SCHEDULE.iter().enumerate() {
            let RetryAction::Retry(wait) = decide(Some(500), None, index as u32 + 1, &policy)
            else {
                panic!("attempt {} should be retried", index + 1);
            };
            assert!(
                wait >= expected.mul_f64(0.8) && wait <= expected.mul_f64(1.2),
                "{index}: {wait:?}"
            );
        }
        assert_eq!(decide(Some(500), None, 8, &policy), RetryAction::Dead);
        assert_eq!(decide(None, None, 9, &policy), RetryAction::Dead);
    }

    #[test]
    fn retry_after_is_clamped_to_the_schedule() {
        let policy = RetryPolicy {
            waits: vec![10 * SECOND],
        };
        let check = |status, asked: Option<Duration>, low: Duration, high: Duration| {
            let RetryAction::Retry(wait) = decide(Some(status), asked, 1, &policy) else {
                panic!()
            };
            assert!(wait >= low && wait <= high, "{status} {asked:?}: {wait:?}");
        };
        check(429, Some(15 * SECOND), 15 * SECOND, 15 * SECOND);
        check(503, Some(SECOND), 8 * SECOND, 12 * SECOND);
        check(429, Some(3600 * SECOND), 16 * SECOND, 24 * SECOND);
        // Other statuses do not get a say.
        check(500, Some(3600 * SECOND), 8 * SECOND, 12 * SECOND);
    }

    #[test]
    fn exponential_policies_double_up_to_a_cap() {
        assert_eq!(RetryPolicy::exponential(1).waits, Vec::<Duration>::new());
        assert_eq!(
            RetryPolicy::exponential(4).waits,
            vec![5 * SECOND, 10 * SECOND, 20 * SECOND]
        );
        let long = RetryPolicy::exponential(40);
        assert_eq!(long.max_attempts(), 40);
        assert_eq!(*long.waits.last().unwrap(), EXPONENTIAL_CAP);
    }
}
