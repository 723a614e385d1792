//! A target's health, from its attempts: pure, no IO.
//!
//! Failed attempts in a row make a run; once it holds `fail_after` of them
//! and has lasted `fail_for`, `target.failing` is due, and at the next
//! delivery `target.recovered`. The dispatcher sends what [`observe`] says
//! and, once the store holds it, calls [`TargetHealth::announced`]: a state
//! that could not be written is announced again at the next attempt.
//!
//! [`observe`]: TargetHealth::observe

use std::time::Duration;

use crate::event::Failing;

/// What a target's attempts have shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetHealth {
    /// The failed attempts in a row, if the last one failed (or, once
    /// announced, until a delivery is announced).
    run: Option<Failing>,
    /// Whether `target.failing` was stored for `run`.
    announced: bool,
}

/// A health event that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announce {
    Failing(Failing),
    Recovered(Failing),
}

/// One attempt's outcome, as health counts it.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    Delivered,
    Failed { error: &'a str, status: Option<u16> },
}

impl TargetHealth {
    /// The health a dispatcher starts with: failing, if the store says
    /// `target.failing` was sent and not yet followed by `target.recovered`.
    pub fn new(failing: Option<Failing>) -> TargetHealth {
        TargetHealth {
            announced: failing.is_some(),
            run: failing,
        }
    }

    /// Counts an attempt made at `at_ms`; says which event is due, if any.
    pub fn observe(
        &mut self,
        outcome: Outcome<'_>,
        at_ms: u64,
        fail_after: u32,
        fail_for: Duration,
    ) -> Option<Announce> {
        match outcome {
            Outcome::Delivered if self.announced => self.run.clone().map(Announce::Recovered),
            Outcome::Delivered => {
                self.run = None;
                None
            }
            Outcome::Failed { error, status } => {
                let run = self.run.get_or_insert_with(|| Failing {
                    failures: 0,
                    since_ms: at_ms,
                    error: String::new(),
                    status: None,
                });
                run.failures = run.failures.saturating_add(1);
                run.error = error.to_string();
                run.status = status;
                let long_enough = at_ms.saturating_sub(run.since_ms) >= fail_for.as_millis() as u64;
                (!self.announced && fail_after > 0 && run.failures >= fail_after && long_enough)
                    .then(|| Announce::Failing(run.clone()))
            }
        }
    }

    /// The store holds what `announce` said.
    pub fn announced(&mut self, announce: &Announce) {
        match announce {
            Announce::Failing(_) => self.announced = true,
            Announce::Recovered(_) => *self = TargetHealth::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILED: Outcome<'static> = Outcome::Failed {
        error: "HTTP status 503",
        status: Some(503),
    };

    /// Attempts at the given seconds, each failed (`false`) or delivered,
    /// with every announcement stored: the announcements and when.
    fn run(attempts: &[(u64, bool)], fail_after: u32, fail_for_s: u64) -> Vec<(u64, String)> {
        let mut health = TargetHealth::default();
        let mut said = Vec::new();
        for &(at_s, delivered) in attempts {
            let outcome = if delivered {
                Outcome::Delivered
            } else {
                FAILED
            };
            let fail_for = Duration::from_secs(fail_for_s);
            if let Some(announce) = health.observe(outcome, at_s * 1000, fail_after, fail_for) {
                let text = match &announce {
                    Announce::Failing(run) => format!("failing {}", run.failures),
                    Announce::Recovered(run) => format!("recovered {}", run.failures),
                };
                said.push((at_s, text));
                health.announced(&announce);
            }
        }
        said
    }

    #[test]
    fn failing_needs_both_the_count_and_the_time() {
        let failed = |seconds: &[u64]| -> Vec<(u64, bool)> {
            seconds.iter().map(|at| (*at, false)).collect()
        };
        // Three failures, but within 60 s: only the fourth, at 70 s.
        assert_eq!(
            run(&failed(&[0, 5, 10, 70]), 3, 60),
            [(70, "failing 4".to_string())]
        );
        // Long enough, but the count comes at the third.
        assert_eq!(
            run(&failed(&[0, 100, 200, 300]), 3, 60),
            [(200, "failing 3".to_string())]
        );
        // Once per run.
        assert_eq!(run(&failed(&[0, 1, 2, 3, 4]), 1, 0).len(), 1);
        // `fail_after = 0`: never.
        assert!(run(&failed(&[0, 100, 200]), 0, 0).is_empty());
    }

    #[test]
    fn a_delivery_ends_a_run_and_recovers_once() {
        // Delivered before the count: the run starts again.
        assert!(run(&[(0, false), (1, false), (2, true), (3, false)], 3, 0).is_empty());
        let said = run(
            &[(0, false), (1, false), (2, false), (3, true), (4, true)],
            3,
            0,
        );
        assert_eq!(
            said,
            [(2, "failing 3".to_string()), (3, "recovered 3".to_string())]
        );
    }

    #[test]
    fn an_announcement_not_stored_is_made_again() {
        let mut health = TargetHealth::default();
        let fail_for = Duration::ZERO;
        assert!(matches!(
            health.observe(FAILED, 0, 1, fail_for),
            Some(Announce::Failing(_))
        ));
        // Not stored: the next failure says it again.
        let again = health.observe(FAILED, 1, 1, fail_for);
        assert!(matches!(&again, Some(Announce::Failing(run)) if run.failures == 2));
        health.announced(&again.unwrap());
        assert_eq!(health.observe(FAILED, 2, 1, fail_for), None);
        let recovered = health.observe(Outcome::Delivered, 3, 1, fail_for);
        assert!(matches!(&recovered, Some(Announce::Recovered(run)) if run.since_ms == 0));
        assert_eq!(
            health.observe(Outcome::Delivered, 4, 1, fail_for),
            recovered
        );
    }

    #[test]
    fn a_restart_remembers_what_was_announced() {
        let stored = Failing {
            failures: 4,
            since_ms: 0,
            error: "refused".into(),
            status: None,
        };
        let mut health = TargetHealth::new(Some(stored.clone()));
        assert_eq!(health.observe(FAILED, 10, 1, Duration::ZERO), None);
        let recovered = health.observe(Outcome::Delivered, 20, 1, Duration::ZERO);
        assert!(matches!(recovered, Some(Announce::Recovered(run)) if run.failures == 5));
    }
}
