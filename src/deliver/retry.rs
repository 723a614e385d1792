//! Deciding what a delivery attempt's result means: pure, no IO.

use std::time::Duration;

use crate::schedule::with_jitter;

/// The waits between attempts, after the first immediate one (Standard
/// Webhooks, Svix): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub const DEFAULT_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// What to do with a row after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// 2xx: the row is done.
    Success,
    /// Anything else: try again after the given wait.
    Retry(Duration),
}

/// Success is 2xx only; a redirect, an error status, a timeout or a refused
/// connection (`status` none) is retried. `attempts` counts the attempts
/// made so far, this one included.
pub fn classify(status: Option<u16>, attempts: u32, schedule: &[Duration]) -> RetryAction {
    match status {
        Some(200..=299) => RetryAction::Success,
        _ => RetryAction::Retry(retry_delay(attempts, schedule)),
    }
}

/// The wait after the `attempts`-th failed attempt, with ±20 % jitter.
/// Past the end of the schedule the last wait repeats: a row is never
/// dropped.
pub fn retry_delay(attempts: u32, schedule: &[Duration]) -> Duration {
    let schedule = if schedule.is_empty() {
        &DEFAULT_SCHEDULE[..]
    } else {
        schedule
    };
    let index = (attempts.max(1) as usize - 1).min(schedule.len() - 1);
    with_jitter(schedule[index], 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_2xx_succeeds() {
        assert_eq!(
            classify(Some(200), 1, &DEFAULT_SCHEDULE),
            RetryAction::Success
        );
        assert_eq!(
            classify(Some(204), 1, &DEFAULT_SCHEDULE),
            RetryAction::Success
        );
        for failing in [Some(301), Some(404), Some(500), None] {
            assert!(
                matches!(
                    classify(failing, 1, &DEFAULT_SCHEDULE),
                    RetryAction::Retry(_)
                ),
                "{failing:?}"
            );
        }
    }

    #[test]
    fn waits_follow_the_schedule_with_jitter() {
        for (index, expected) in DEFAULT_SCHEDULE.iter().enumerate() {
            let wait = retry_delay(index as u32 + 1, &DEFAULT_SCHEDULE);
            assert!(
                wait >= expected.mul_f64(0.8) && wait <= expected.mul_f64(1.2),
                "{index}: {wait:?}"
            );
        }
        let beyond = retry_delay(100, &DEFAULT_SCHEDULE);
        assert!(beyond >= Duration::from_secs(8 * 3600), "{beyond:?}");
    }
}
