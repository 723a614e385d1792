//! The schedule's rules, without IO: when each endpoint polls, and what a
//! poll-now or a config change does to it. The daemon keeps the timer
//! wheel and the running polls and does what the [`Action`]s say.
//!
//! The rules:
//! - An endpoint is *waiting* (in the timer wheel) or *polling*, never
//!   both: it never has two polls at once.
//! - A poll-now while waiting polls at once; while polling, once more
//!   right after that poll ends (however often it was asked).
//! - A change of an endpoint while it waits starts it over (its first poll
//!   is spread again); while it polls, the poll is cancelled and it starts
//!   over when that poll has ended.
//! - An endpoint removed while it polls keeps its slot until the poll has
//!   ended, so that, back at once, it still never polls twice at once.
//!
//! Each slot carries the state `S` an endpoint keeps between polls (its
//! health); it goes with the poll and comes back when the poll ends.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::{Duration, Instant};

use crate::config::{Changes, Endpoint};

/// What the daemon must do to follow the rules.
#[derive(Debug)]
pub enum Action<S> {
    /// Put the endpoint in the timer wheel at `due`, in place of its
    /// earlier wait if it had one.
    Wait { name: Arc<str>, due: Instant },
    /// Take it out of the timer wheel.
    Unwait { name: Arc<str> },
    /// Start a poll, which was due at `due`, with the endpoint's state.
    Start {
        endpoint: Arc<Endpoint>,
        due: Instant,
        state: S,
    },
    /// Cancel the endpoint's running poll.
    Cancel { name: Arc<str> },
}

/// Every endpoint's place in its schedule.
pub struct Scheduler<S> {
    slots: HashMap<Arc<str>, Slot<S>>,
}

struct Slot<S> {
    /// `None`: removed from the config while its poll was running.
    endpoint: Option<Arc<Endpoint>>,
    phase: Phase<S>,
}

enum Phase<S> {
    Waiting { due: Instant, state: S },
    Polling { then: Then },
}

/// What an endpoint does when its running poll ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Waits for the time the poll decided.
    Schedule,
    /// Polls again at once: it was asked to while polling.
    PollNow,
    /// Starts over with its new config, which came while polling.
    Restart,
}

/// The timer wheel's reach: an earlier wake for a later poll only waits on.
const EARLY: Duration = Duration::from_secs(1);

impl<S> Default for Scheduler<S> {
    fn default() -> Self {
        Scheduler {
            slots: HashMap::new(),
        }
    }
}

impl<S> Scheduler<S> {
    /// Endpoints in the schedule, removed ones still polling included.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Makes the schedule follow a config change. New endpoints wait for
    /// `first_due` with the state `load` gives them.
    pub fn apply(
        &mut self,
        endpoints: &Changes<Endpoint>,
        first_due: impl Fn(&Endpoint) -> Instant,
        load: impl Fn(&Endpoint) -> S,
    ) -> Vec<Action<S>> {
        let mut actions = Vec::new();
        for name in &endpoints.removed {
            let Some(slot) = self.slots.get_mut(name.as_str()) else {
                continue;
            };
            let name: Arc<str> = name.as_str().into();
            match slot.phase {
                Phase::Waiting { .. } => {
                    self.slots.remove(&name);
                    actions.push(Action::Unwait { name });
                }
                Phase::Polling { .. } => {
                    slot.endpoint = None;
                    actions.push(Action::Cancel { name });
                }
            }
        }
        for endpoint in endpoints.added.iter().chain(&endpoints.changed) {
            let name = endpoint.name.clone();
            let due = first_due(endpoint);
            let Some(slot) = self.slots.get_mut(&name) else {
                let state = load(endpoint);
                self.slots.insert(
                    name.clone(),
                    Slot {
                        endpoint: Some(endpoint.clone()),
                        phase: Phase::Waiting { due, state },
                    },
                );
                actions.push(Action::Wait { name, due });
                continue;
            };
            slot.endpoint = Some(endpoint.clone());
            match &mut slot.phase {
                Phase::Waiting { due: waiting, .. } => {
                    *waiting = due;
                    actions.push(Action::Wait { name, due });
                }
                Phase::Polling { then } => {
                    *then = Then::Restart;
                    actions.push(Action::Cancel { name });
                }
            }
        }
        actions
    }

    /// The timer wheel says `name` is due.
    pub fn due(&mut self, name: &Arc<str>, now: Instant) -> Vec<Action<S>> {
        let Some(slot) = self.slots.get_mut(name) else {
            return Vec::new();
        };
        let (Some(endpoint), Phase::Waiting { due, .. }) = (&slot.endpoint, &slot.phase) else {
            return Vec::new();
        };
        // Woken early because its poll is beyond the wheel's reach.
        if due.saturating_duration_since(now) > EARLY {
            return vec![Action::Wait {
                name: name.clone(),
                due: *due,
            }];
        }
        let endpoint = endpoint.clone();
        let polling = Phase::Polling {
            then: Then::Schedule,
        };
        let Phase::Waiting { due, state } = std::mem::replace(&mut slot.phase, polling) else {
            unreachable!("matched as waiting above");
        };
        vec![Action::Start {
            endpoint,
            due,
            state,
        }]
    }

    /// A poll of `name` has ended. `outcome` gives, for an endpoint still in
    /// the config, the state the poll leaves and the time it asked to poll
    /// next; a changed endpoint starts over at `first_due`.
    pub fn ended(
        &mut self,
        name: &Arc<str>,
        outcome: impl FnOnce(&Arc<Endpoint>) -> (S, Instant),
        now: Instant,
        first_due: impl Fn(&Endpoint) -> Instant,
    ) -> Vec<Action<S>> {
        let Some(slot) = self.slots.get_mut(name) else {
            return Vec::new();
        };
        let (Some(endpoint), Phase::Polling { then }) = (&slot.endpoint, &slot.phase) else {
            // Removed from the config while it polled.
            if matches!(slot.phase, Phase::Polling { .. }) {
                self.slots.remove(name);
            }
            return Vec::new();
        };
        let (state, next) = outcome(endpoint);
        let due = match then {
            Then::Schedule => next,
            Then::PollNow => now,
            Then::Restart => first_due(endpoint),
        };
        slot.phase = Phase::Waiting { due, state };
        vec![Action::Wait {
            name: name.clone(),
            due,
        }]
    }

    /// Polls `name` now, or right after its running poll. False when no
    /// such endpoint is in the config.
    pub fn poll_now(&mut self, name: &str, now: Instant) -> (bool, Vec<Action<S>>) {
        let Some(name) = self.slots.get_key_value(name).map(|(name, _)| name.clone()) else {
            return (false, Vec::new());
        };
        let Some(slot) = self
            .slots
            .get_mut(&name)
            .filter(|slot| slot.endpoint.is_some())
        else {
            return (false, Vec::new());
        };
        match &mut slot.phase {
            Phase::Waiting { due, .. } => {
                *due = now;
                (true, vec![Action::Wait { name, due: now }])
            }
            Phase::Polling { then } => {
                *then = Then::PollNow;
                (true, Vec::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigDiff};

    /// A fake clock: times are seconds after a fixed start.
    struct Clock(Instant);

    impl Clock {
        fn at(&self, seconds: u64) -> Instant {
            self.0 + Duration::from_secs(seconds)
        }
    }

    /// A config of these endpoints (none is not a valid config file, but
    /// is what a reload removing them all would be).
    fn config(endpoints: &[(&str, &str)]) -> Config {
        let text: String = endpoints
            .iter()
            .chain([("placeholder", "1m")].iter().take(usize::from(endpoints.is_empty())))
            .map(|(name, every)| {
                format!("[[endpoint]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:1/\"\nevery = \"{every}\"\n")
            })
            .collect();
        let mut config = Config::compile(&text, Path::new("c.toml")).unwrap();
        config
            .endpoints
            .retain(|endpoint| &*endpoint.name != "placeholder");
        config
    }

    /// The actions, written short: `wait a @10`, `unwait a`, `start a @10 s1`, `cancel a`.
    fn show(actions: Vec<Action<u32>>, clock: &Clock) -> Vec<String> {
        let at = |instant: Instant| (instant - clock.0).as_secs();
        actions
            .into_iter()
            .map(|action| match action {
                Action::Wait { name, due } => format!("wait {name} @{}", at(due)),
                Action::Unwait { name } => format!("unwait {name}"),
                Action::Start {
                    endpoint,
                    due,
                    state,
                } => format!("start {} @{} s{state}", endpoint.name, at(due)),
                Action::Cancel { name } => format!("cancel {name}"),
            })
            .collect()
    }

    struct Check {
        scheduler: Scheduler<u32>,
        clock: Clock,
        config: Config,
    }

    impl Check {
        fn new() -> Check {
            Check {
                scheduler: Scheduler::default(),
                clock: Clock(Instant::now()),
                config: config(&[]),
            }
        }

        /// Applies a config; a first poll is due 10 s after `now`, and a
        /// loaded state is 0.
        fn apply(&mut self, endpoints: &[(&str, &str)], now: u64) -> Vec<String> {
            let new = config(endpoints);
            let diff = ConfigDiff::new(&self.config, &new);
            self.config = new;
            let due = self.clock.at(now + 10);
            let actions = self.scheduler.apply(&diff.endpoints, |_| due, |_| 0);
            show(actions, &self.clock)
        }

        fn due(&mut self, name: &str, now: u64) -> Vec<String> {
            let actions = self.scheduler.due(&name.into(), self.clock.at(now));
            show(actions, &self.clock)
        }

        fn ended(&mut self, name: &str, state: u32, next: u64, now: u64) -> Vec<String> {
            let due = self.clock.at(now + 10);
            let next = self.clock.at(next);
            let actions =
                self.scheduler
                    .ended(&name.into(), |_| (state, next), self.clock.at(now), |_| due);
            show(actions, &self.clock)
        }

        fn poll_now(&mut self, name: &str, now: u64) -> (bool, Vec<String>) {
            let (known, actions) = self.scheduler.poll_now(name, self.clock.at(now));
            (known, show(actions, &self.clock))
        }
    }

    #[test]
    fn polls_wait_start_and_come_back_with_their_state() {
        let mut check = Check::new();
        assert_eq!(check.apply(&[("a", "1m")], 0), ["wait a @10"]);
        assert_eq!(check.due("a", 10), ["start a @10 s0"]);
        // Due again while polling (a stale wheel entry): nothing.
        assert_eq!(check.due("a", 11), Vec::<String>::new());
        assert_eq!(check.ended("a", 7, 70, 12), ["wait a @70"]);
        assert_eq!(check.due("a", 70), ["start a @70 s7"]);
    }

    #[test]
    fn a_wake_before_the_wheel_reaches_the_poll_waits_on() {
        let mut check = Check::new();
        check.apply(&[("a", "1m")], 0);
        assert_eq!(check.due("a", 5), ["wait a @10"]);
        assert_eq!(check.due("a", 9), ["start a @10 s0"], "within a second");
    }

    #[test]
    fn poll_now_polls_at_once_or_once_after_the_running_poll() {
        let mut check = Check::new();
        check.apply(&[("a", "1m")], 0);
        assert_eq!(
            check.poll_now("a", 3),
            (true, vec!["wait a @3".to_string()])
        );
        assert_eq!(check.due("a", 3), ["start a @3 s0"]);
        for _ in 0..3 {
            assert_eq!(check.poll_now("a", 4), (true, Vec::new()));
        }
        assert_eq!(check.ended("a", 1, 63, 5), ["wait a @5"], "once more, now");
        assert_eq!(check.due("a", 5), ["start a @5 s1"]);
        assert_eq!(
            check.ended("a", 2, 65, 6),
            ["wait a @65"],
            "then on schedule"
        );
        assert_eq!(check.poll_now("nosuch", 6), (false, Vec::new()));
    }

    #[test]
    fn a_change_while_waiting_starts_over_and_while_polling_after_the_poll() {
        let mut check = Check::new();
        check.apply(&[("a", "1m"), ("b", "1m")], 0);
        assert_eq!(check.apply(&[("a", "2m"), ("b", "1m")], 1), ["wait a @11"]);
        check.due("b", 10);
        assert_eq!(check.apply(&[("a", "2m"), ("b", "5m")], 12), ["cancel b"]);
        assert_eq!(check.due("b", 13), Vec::<String>::new(), "still polling");
        assert_eq!(check.ended("b", 3, 70, 14), ["wait b @24"], "starts over");
    }

    #[test]
    fn a_removed_endpoint_stops_and_one_back_at_once_never_polls_twice() {
        let mut check = Check::new();
        check.apply(&[("a", "1m"), ("b", "1m")], 0);
        assert_eq!(check.apply(&[("b", "1m")], 1), ["unwait a"]);
        assert_eq!(check.poll_now("a", 1), (false, Vec::new()));
        assert_eq!(check.scheduler.len(), 1);

        check.due("b", 10);
        assert_eq!(check.apply(&[], 11), ["cancel b"]);
        assert_eq!(check.poll_now("b", 11), (false, Vec::new()), "removed");
        // Back before its cancelled poll has ended: it waits for that poll.
        assert_eq!(check.apply(&[("b", "1m")], 12), ["cancel b"]);
        assert_eq!(check.due("b", 13), Vec::<String>::new());
        assert_eq!(check.ended("b", 4, 70, 14), ["wait b @24"]);
        assert_eq!(check.due("b", 24), ["start b @24 s4"]);

        // Removed for good: its slot goes when its poll ends.
        assert_eq!(check.apply(&[], 25), ["cancel b"]);
        assert_eq!(check.ended("b", 5, 80, 26), Vec::<String>::new());
        assert!(check.scheduler.is_empty());
    }
}
