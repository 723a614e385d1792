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
//! - A paused endpoint waits for nothing: it is out of the timer wheel
//!   until resumed, through config changes too. A poll running when it is
//!   paused finishes (a poll-now asked for is dropped); a poll-now while
//!   paused polls once, and it stays paused. Resumed, it polls on its grid
//!   from its last poll (at once if that is overdue).
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
    /// Paused by an operator: after any poll it goes back to `Paused`.
    paused: bool,
}

enum Phase<S> {
    Waiting {
        due: Instant,
        state: S,
    },
    Polling {
        then: Then,
    },
    /// Not in the timer wheel: paused, and no poll-now asked for.
    Paused {
        state: S,
    },
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
    /// `first_due` with the state `load` gives them, or are paused when
    /// `paused` says so.
    pub fn apply(
        &mut self,
        endpoints: &Changes<Endpoint>,
        first_due: impl Fn(&Endpoint) -> Instant,
        load: impl Fn(&Endpoint) -> S,
        paused: impl Fn(&Endpoint) -> bool,
    ) -> Vec<Action<S>> {
        let mut actions = Vec::new();
        for name in &endpoints.removed {
            let Some(slot) = self.slots.get_mut(name.as_str()) else {
                continue;
            };
            let name: Arc<str> = name.as_str().into();
            match slot.phase {
                Phase::Waiting { .. } | Phase::Paused { .. } => {
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
                let paused = paused(endpoint);
                let phase = match paused {
                    true => Phase::Paused { state },
                    false => {
                        actions.push(Action::Wait {
                            name: name.clone(),
                            due,
                        });
                        Phase::Waiting { due, state }
                    }
                };
                let endpoint = Some(endpoint.clone());
                self.slots.insert(
                    name,
                    Slot {
                        endpoint,
                        phase,
                        paused,
                    },
                );
                continue;
            };
            slot.endpoint = Some(endpoint.clone());
            match &mut slot.phase {
                Phase::Waiting { due: waiting, .. } => {
                    *waiting = due;
                    actions.push(Action::Wait { name, due });
                }
                Phase::Paused { .. } => {}
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
        let (endpoint, due) = (endpoint.clone(), *due);
        let state = slot.phase.take_state();
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
            Then::PollNow => now,
            _ if slot.paused => {
                slot.phase = Phase::Paused { state };
                return Vec::new();
            }
            Then::Schedule => next,
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
        let Some((name, slot)) = self.slot(name) else {
            return (false, Vec::new());
        };
        match &mut slot.phase {
            Phase::Waiting { due, .. } => *due = now,
            Phase::Polling { then } => {
                *then = Then::PollNow;
                return (true, Vec::new());
            }
            Phase::Paused { .. } => {
                let state = slot.phase.take_state();
                slot.phase = Phase::Waiting { due: now, state };
            }
        }
        (true, vec![Action::Wait { name, due: now }])
    }

    /// Pauses `name` (it stays paused across config changes until
    /// [`resume`](Scheduler::resume)d). False when no such endpoint is in
    /// the config.
    pub fn pause(&mut self, name: &str) -> (bool, Vec<Action<S>>) {
        let Some((name, slot)) = self.slot(name) else {
            return (false, Vec::new());
        };
        slot.paused = true;
        match &mut slot.phase {
            Phase::Waiting { .. } => {
                let state = slot.phase.take_state();
                slot.phase = Phase::Paused { state };
                return (true, vec![Action::Unwait { name }]);
            }
            // A poll-now asked for earlier is dropped; a restart stays.
            Phase::Polling { then } if *then == Then::PollNow => *then = Then::Schedule,
            Phase::Polling { .. } | Phase::Paused { .. } => {}
        }
        (true, Vec::new())
    }

    /// Resumes `name`: a paused one waits for `first_due`; one that polls
    /// waits for what its poll decides. False when no such endpoint is in
    /// the config.
    pub fn resume(
        &mut self,
        name: &str,
        first_due: impl FnOnce(&Endpoint) -> Instant,
    ) -> (bool, Vec<Action<S>>) {
        let Some((name, slot)) = self.slot(name) else {
            return (false, Vec::new());
        };
        slot.paused = false;
        let (Some(endpoint), Phase::Paused { .. }) = (&slot.endpoint, &slot.phase) else {
            return (true, Vec::new());
        };
        let due = first_due(endpoint);
        let state = slot.phase.take_state();
        slot.phase = Phase::Waiting { due, state };
        (true, vec![Action::Wait { name, due }])
    }

    /// The slot of an endpoint in the config, and its name.
    fn slot(&mut self, name: &str) -> Option<(Arc<str>, &mut Slot<S>)> {
        let name = self.slots.get_key_value(name)?.0.clone();
        let slot = self
            .slots
            .get_mut(&name)
            .filter(|slot| slot.endpoint.is_some())?;
        Some((name, slot))
    }
}

impl<S> Phase<S> {
    /// The state of a waiting or paused endpoint, taken out; the phase is
    /// to be set again at once.
    fn take_state(&mut self) -> S {
        let polling = Phase::Polling {
            then: Then::Schedule,
        };
        match std::mem::replace(self, polling) {
            Phase::Waiting { state, .. } | Phase::Paused { state } => state,
            Phase::Polling { .. } => unreachable!("only a waiting or paused phase has a state"),
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
        /// Endpoints the store says are paused when they are added.
        stored_pauses: Vec<&'static str>,
    }

    impl Check {
        fn new() -> Check {
            Check {
                scheduler: Scheduler::default(),
                clock: Clock(Instant::now()),
                config: config(&[]),
                stored_pauses: Vec::new(),
            }
        }

        /// Applies a config; a first poll is due 10 s after `now`, and a
        /// loaded state is 0.
        fn apply(&mut self, endpoints: &[(&str, &str)], now: u64) -> Vec<String> {
            let new = config(endpoints);
            let diff = ConfigDiff::new(&self.config, &new);
            self.config = new;
            let due = self.clock.at(now + 10);
            let paused = |endpoint: &Endpoint| self.stored_pauses.contains(&&*endpoint.name);
            let actions = self
                .scheduler
                .apply(&diff.endpoints, |_| due, |_| 0, paused);
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

        fn pause(&mut self, name: &str) -> (bool, Vec<String>) {
            let (known, actions) = self.scheduler.pause(name);
            (known, show(actions, &self.clock))
        }

        /// Resumes; on its grid, the endpoint would poll 10 s after `now`.
        fn resume(&mut self, name: &str, now: u64) -> (bool, Vec<String>) {
            let due = self.clock.at(now + 10);
            let (known, actions) = self.scheduler.resume(name, |_| due);
            (known, show(actions, &self.clock))
        }
    }

    fn said(actions: &[&str]) -> (bool, Vec<String>) {
        (
            true,
            actions.iter().map(|action| action.to_string()).collect(),
        )
    }

    #[test]
    fn a_paused_endpoint_waits_for_nothing_until_resumed_and_polls_once_when_asked() {
        let mut check = Check::new();
        check.apply(&[("a", "1m")], 0);
        assert_eq!(check.pause("a"), said(&["unwait a"]));
        assert_eq!(check.due("a", 10), Vec::<String>::new(), "a stale wake");
        assert_eq!(
            check.apply(&[("a", "2m")], 11),
            Vec::<String>::new(),
            "a change keeps the pause"
        );
        assert_eq!(check.pause("a"), said(&[]), "paused already");
        assert_eq!(check.poll_now("a", 20), said(&["wait a @20"]));
        assert_eq!(check.due("a", 20), ["start a @20 s0"]);
        assert_eq!(
            check.ended("a", 1, 140, 21),
            Vec::<String>::new(),
            "paused again"
        );
        assert_eq!(check.resume("a", 30), said(&["wait a @40"]));
        assert_eq!(check.due("a", 40), ["start a @40 s1"]);
        assert_eq!(check.ended("a", 2, 160, 41), ["wait a @160"]);
        assert_eq!(check.resume("a", 42), said(&[]), "not paused");
        assert_eq!(check.pause("nosuch"), (false, Vec::new()));
        assert_eq!(check.resume("nosuch", 42), (false, Vec::new()));
    }

    #[test]
    fn a_poll_running_when_paused_ends_and_its_poll_now_is_dropped() {
        let mut check = Check::new();
        check.apply(&[("a", "1m")], 0);
        check.due("a", 10);
        check.poll_now("a", 11);
        assert_eq!(check.pause("a"), said(&[]));
        assert_eq!(check.ended("a", 1, 70, 12), Vec::<String>::new());
        // Paused and resumed while polling: the poll's own next time holds.
        check.resume("a", 13);
        check.poll_now("a", 13);
        check.due("a", 13);
        check.pause("a");
        assert_eq!(check.resume("a", 14), said(&[]));
        assert_eq!(check.ended("a", 2, 75, 15), ["wait a @75"]);
    }

    #[test]
    fn endpoints_paused_in_the_store_start_paused() {
        let mut check = Check::new();
        check.stored_pauses = vec!["a"];
        assert_eq!(check.apply(&[("a", "1m"), ("b", "1m")], 0), ["wait b @10"]);
        assert_eq!(check.due("a", 10), Vec::<String>::new());
        assert_eq!(check.resume("a", 20), said(&["wait a @30"]));
        // Removed while paused, it leaves the schedule.
        check.pause("a");
        assert_eq!(check.apply(&[("b", "1m")], 21), ["unwait a"]);
        assert_eq!(check.scheduler.len(), 1);
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
