//! The one poller: what a poll of one endpoint does, the same for the
//! daemon, `pollhook once` and the load benchmark.
//!
//! [`Poller::poll`] waits at the host's gate (`per_host`,
//! `per_host_spacing`), then for a permit of the global cap
//! (`max_concurrent_polls`), in that order so that a busy host never holds
//! permits other hosts could use; then it fetches, extracts, diffs and
//! decides ([`poll::observe`], abandoned if cancelled), and, unless it is a
//! dry run, commits the decision and the endpoint's health state.
//!
//! A failed poll gets a few quick retries ([`Schedule::quick_retry`]); only
//! a scheduled poll whose retries failed too counts as a failure.
//! `endpoint.failing` is sent when `fail_after` of them came in a row and
//! the endpoint has been failing for `fail_for`; `recovered` after. The
//! poll returns what happened, the events it queued and when to retry;
//! announcing the events and choosing the next poll are the caller's.
//!
//! [`Schedule::quick_retry`]: crate::schedule::Schedule::quick_retry

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock;
use crate::config::{Config, Endpoint};
use crate::event::{self, Event, Failing};
use crate::fetch::FetchError;
use crate::hosts::Hosts;
use crate::poll::{self, Observation, PollError};
use crate::store::Store;

/// What every poll shares.
pub struct Poller {
    pub store: Arc<Store>,
    clients: crate::fetch::Clients,
    /// OAuth2 access tokens, shared by the endpoints of one token source.
    tokens: crate::oauth::Tokens,
    /// The global cap on polls in flight.
    permits: Semaphore,
    /// The per-host caps and spacing.
    hosts: Hosts,
}

/// Whether a poll writes what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decide and report, write nothing: `pollhook once` without `--send`.
    DryRun,
    /// Store the decision and its events, and keep the health state.
    Commit,
}

/// What one poll came to.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    /// The events queued (in a dry run: that would be), the change's and a
    /// health event's.
    pub events: Vec<Event>,
    /// Outbox rows queued, over every target.
    pub queued: usize,
    /// Failed scheduled polls in a row; 0 after a success.
    pub failures: u32,
    /// After a failure: the wait before its quick retry, if it gets one.
    /// `None`: the next try is the next regular poll.
    pub retry_in: Option<Duration>,
    /// What a poll that worked warned of (more pages than `max_pages`).
    pub warning: Option<String>,
    /// What the answer of a poll that worked said for the metrics.
    pub answer: Option<crate::watched::Answer>,
}

#[derive(Debug)]
pub enum Outcome {
    /// Cancelled before it decided anything: nothing was written.
    Cancelled,
    Observed(Observation),
    Failed(PollError),
}

/// What an endpoint keeps from one poll to the next.
pub struct PollState {
    health: Health,
    /// Quick retries made of the current scheduled poll.
    retries: u32,
    /// Duplicate item keys are reported once, not at every poll.
    reported_duplicates: Vec<Value>,
    /// So is a poll's warning (a selector that matched nothing).
    reported_warning: Option<String>,
    /// When the last successful poll started: templates' `last_success`.
    last_success_ms: Option<u64>,
}

impl PollState {
    /// The state an endpoint starts with: its health as the store keeps it,
    /// and for templates its last success: an incremental endpoint's is
    /// stored with its cursor; another's is not (it would be a write per
    /// poll), so its snapshot's last change stands for it, a success no
    /// later than the last, which makes a `since` ask for too much rather
    /// than too little.
    pub fn load(store: &Store, endpoint: &Endpoint) -> PollState {
        let last_success_ms = if endpoint.incremental.is_some() {
            store
                .cursor(&endpoint.name)
                .ok()
                .flatten()
                .filter(|state| state.definition == endpoint.definition)
                .map(|state| state.polled_ms)
        } else if endpoint.request.is_some() {
            store
                .snapshot(&endpoint.name)
                .ok()
                .flatten()
                .map(|snapshot| snapshot.changed_at_ms)
        } else {
            None
        };
        PollState {
            health: Health::load(store, endpoint),
            retries: 0,
            reported_duplicates: Vec::new(),
            reported_warning: None,
            last_success_ms,
        }
    }
}

impl Poller {
    pub fn new(store: Arc<Store>, config: &Config) -> Result<Poller, reqwest::Error> {
        Ok(Poller {
            tokens: crate::oauth::Tokens::new(store.clone()),
            store,
            clients: crate::fetch::Clients::for_polls()?,
            permits: Semaphore::new(config.max_concurrent_polls),
            hosts: Hosts::new(config.per_host, config.per_host_spacing),
        })
    }

    /// Polls `endpoint` once. Observing is abandoned if `cancel` fires; a
    /// decided change is always written whole.
    pub async fn poll(
        &self,
        endpoint: &Endpoint,
        state: &mut PollState,
        mode: Mode,
        cancel: &CancellationToken,
    ) -> Report {
        let (last_success_ms, started_ms) = (state.last_success_ms, clock::now_ms());
        let observe = async {
            let _host = self.hosts.enter(endpoint.url.url()).await;
            let _permit = self
                .permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            let client = self
                .clients
                .get(endpoint.transport.as_deref())
                .map_err(|why| PollError::from(FetchError::Request(why)))?;
            poll::observe(
                &client,
                &self.tokens,
                &self.store,
                endpoint,
                last_success_ms,
            )
            .await
        };
        let observed = tokio::select! {
            _ = cancel.cancelled() => return Report {
                outcome: Outcome::Cancelled,
                events: Vec::new(),
                queued: 0,
                failures: state.health.failures(),
                retry_in: None,
                warning: None,
                answer: None,
            },
            observed = observe => observed,
        };
        let committed = match (observed, mode) {
            (Ok((observation, notes)), Mode::Commit) => {
                poll::apply(&self.store, endpoint, &observation)
                    .await
                    .map(|queued| (observation, notes, queued))
                    .map_err(PollError::from)
            }
            (observed, _) => observed.map(|(observation, notes)| (observation, notes, 0)),
        };
        let (observation, notes, mut queued) = match committed {
            Ok(committed) => committed,
            Err(error) => {
                let retry_in = match (mode, retryable(&error)) {
                    (Mode::Commit, Some(retry_after)) => {
                        endpoint
                            .schedule
                            .quick_retry(state.retries, retry_after, clock::now())
                    }
                    _ => None,
                };
                state.retries = match retry_in {
                    Some(_) => state.retries + 1,
                    None => 0,
                };
                let (failures, health_event) = state
                    .health
                    .failed(&self.store, endpoint, &error, retry_in.is_none(), mode)
                    .await;
                let events: Vec<Event> = health_event.into_iter().collect();
                return Report {
                    outcome: Outcome::Failed(error),
                    queued: events.iter().map(|event| endpoint.takers(event.kind)).sum(),
                    events,
                    failures,
                    retry_in,
                    warning: None,
                    answer: None,
                };
            }
        };
        state.retries = 0;
        state.last_success_ms = Some(started_ms);
        if let Observation::New { document, .. } = &observation
            && document.duplicate_keys != state.reported_duplicates
        {
            if !document.duplicate_keys.is_empty() {
                warn!(
                    keys = %serde_json::Value::Array(document.duplicate_keys.clone()),
                    "several items have the same key; of each, the one that sorts first is kept"
                );
            }
            state
                .reported_duplicates
                .clone_from(&document.duplicate_keys);
        }
        if notes.warning != state.reported_warning {
            if let Some(warning) = &notes.warning {
                warn!(warning = %warning, "the poll succeeded with a warning");
            }
            state.reported_warning.clone_from(&notes.warning);
        }
        let mut events = observation.events().to_vec();
        if let Some(recovered) = state.health.succeeded(&self.store, endpoint, mode).await {
            queued += endpoint.takers(recovered.kind);
            events.push(recovered);
        }
        Report {
            outcome: Outcome::Observed(observation),
            events,
            queued,
            failures: 0,
            retry_in: None,
            warning: notes.warning,
            answer: notes.answer,
        }
    }
}

/// Whether a failed poll may be retried quickly, with the server's
/// `Retry-After`: not when the server refused the request itself (a 4xx
/// other than 408 and 429), nor when the store failed.
fn retryable(error: &PollError) -> Option<Option<Duration>> {
    match error {
        PollError::Fetch(FetchError::Status {
            status,
            retry_after,
        }) => match status {
            408 | 429 | 500.. => Some(*retry_after),
            _ => None,
        },
        PollError::Fetch(
            FetchError::TooLarge { .. }
            | FetchError::Redirect { .. }
            | FetchError::Auth(_)
            | FetchError::Template(_),
        ) => None,
        PollError::Fetch(_) | PollError::Extract(_) => Some(None),
        PollError::Store(_) => None,
    }
}

impl Poller {
    /// Polls each endpoint once, at most `limit` at a time, taking hosts in
    /// turn so that one busy host does not hold the others back; yields
    /// each endpoint's report as it comes. `pollhook once` and the load
    /// benchmark's one pass.
    pub fn poll_all(
        &self,
        endpoints: Vec<Arc<Endpoint>>,
        mode: Mode,
        limit: usize,
    ) -> impl Stream<Item = (Arc<Endpoint>, Report)> + '_ {
        futures_util::stream::iter(by_host_in_turn(endpoints))
            .map(move |endpoint| async move {
                let mut state = PollState::load(&self.store, &endpoint);
                let never = CancellationToken::new();
                // As the daemon does, a failed poll gets its quick retries.
                loop {
                    let report = self.poll(&endpoint, &mut state, mode, &never).await;
                    match report.retry_in {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => return (endpoint, report),
                    }
                }
            })
            .buffer_unordered(limit.max(1))
    }
}

/// Endpoints reordered so that consecutive ones are on different hosts as
/// long as there are several: `a1 b1 c1 a2 b2 a3`.
fn by_host_in_turn(endpoints: Vec<Arc<Endpoint>>) -> Vec<Arc<Endpoint>> {
    let mut hosts: Vec<(String, std::collections::VecDeque<Arc<Endpoint>>)> = Vec::new();
    for endpoint in endpoints {
        let url = endpoint.url.url();
        let host = format!(
            "{}:{:?}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default()
        );
        match hosts.iter_mut().find(|(name, _)| *name == host) {
            Some((_, queue)) => queue.push_back(endpoint),
            None => hosts.push((host, [endpoint].into())),
        }
    }
    let mut ordered = Vec::new();
    while !hosts.is_empty() {
        hosts.retain_mut(|(_, queue)| {
            ordered.extend(queue.pop_front());
            !queue.is_empty()
        });
    }
    ordered
}

/// An endpoint's run of failed polls, and whether `endpoint.failing` was
/// sent for it. The sent state is kept in the store, so a restart neither
/// repeats the alert nor forgets to send `endpoint.recovered`.
struct Health {
    /// Boxed: most endpoints are not failing, and every slot holds one.
    run: Option<Box<Failing>>,
    alerted: bool,
}

impl Health {
    fn load(store: &Store, endpoint: &Endpoint) -> Health {
        let run = store.failing(&endpoint.name).unwrap_or_else(|error| {
            warn!(endpoint = %endpoint.name, error = %crate::error_chain(&error), "cannot read the health state");
            None
        });
        Health {
            alerted: run.is_some(),
            run: run.map(Box::new),
        }
    }

    fn failures(&self) -> u32 {
        self.run.as_ref().map_or(0, |run| run.failures)
    }

    /// Notes a failed attempt at `now_ms`; `counted` when it ends a
    /// scheduled poll (no quick retry follows), which counts as a failure.
    /// True when `endpoint.failing` is due: `fail_after` failures in a row,
    /// over at least `fail_for` since the first failed attempt, not yet
    /// alerted.
    fn note_failure(
        &mut self,
        error: String,
        status: Option<u16>,
        counted: bool,
        now_ms: u64,
        (fail_after, fail_for): (u32, Duration),
    ) -> bool {
        let run = self.run.get_or_insert_with(|| {
            Box::new(Failing {
                failures: 0,
                since_ms: now_ms,
                error: String::new(),
                status: None,
            })
        });
        if counted {
            run.failures = run.failures.saturating_add(1);
        }
        run.error = error;
        run.status = status;
        let failing_for = Duration::from_millis(now_ms.saturating_sub(run.since_ms));
        counted
            && !self.alerted
            && fail_after > 0
            && run.failures >= fail_after
            && failing_for >= fail_for
    }

    /// Notes a failed attempt (see [`Health::note_failure`]) and commits
    /// `endpoint.failing` when it is due (not in a dry run). Returns the
    /// failures in a row and the event, if one was queued.
    async fn failed(
        &mut self,
        store: &Store,
        endpoint: &Endpoint,
        error: &PollError,
        counted: bool,
        mode: Mode,
    ) -> (u32, Option<Event>) {
        let status = match error {
            PollError::Fetch(FetchError::Status { status, .. }) => Some(*status),
            _ => None,
        };
        let now_ms = clock::now_ms();
        let due = self.note_failure(
            crate::error_chain(error),
            status,
            counted,
            now_ms,
            endpoint.failing_rule(),
        );
        let failures = self.failures();
        let Some(run) = self.run.as_deref().filter(|_| due && mode == Mode::Commit) else {
            return (failures, None);
        };
        let event = event::endpoint_failing(endpoint, run, now_ms);
        if !commit_health(store, endpoint, Some(run), &event).await {
            return (failures, None);
        }
        error!(failures, since = %clock::rfc3339(run.since_ms), "endpoint is failing");
        self.alerted = true;
        (failures, Some(event))
    }

    /// Ends a run of failures; commits `endpoint.recovered` if it was
    /// alerted, and returns it.
    async fn succeeded(&mut self, store: &Store, endpoint: &Endpoint, mode: Mode) -> Option<Event> {
        let run = self.run.as_ref()?;
        if mode == Mode::DryRun {
            return None;
        }
        info!(failures = run.failures, "polling works again");
        let mut recovered = None;
        if self.alerted {
            let event = event::endpoint_recovered(endpoint, run, clock::now_ms());
            if !commit_health(store, endpoint, None, &event).await {
                // Kept: the next successful poll tries again.
                return None;
            }
            self.alerted = false;
            recovered = Some(event);
        }
        self.run = None;
        recovered
    }
}

/// Stores the health state and queues its event in one transaction. False
/// when the store failed (logged).
async fn commit_health(
    store: &Store,
    endpoint: &Endpoint,
    failing: Option<&Failing>,
    event: &Event,
) -> bool {
    let rows = poll::outbox_rows(endpoint, std::slice::from_ref(event));
    match store.commit_health(&endpoint.name, failing, &rows).await {
        Ok(_) => true,
        Err(error) => {
            let error = crate::error_chain(&error);
            // A store that cannot write said so at ERROR, once.
            if store.write_failure().is_some() {
                warn!(error = %error, "cannot queue a health event");
            } else {
                error!(error = %error, "cannot queue a health event");
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    /// An endpoint down from `down.0` to `down.1` (seconds), polled on
    /// `schedule` from 0 s with quick retries: the times `endpoint.failing`
    /// would be sent and the requests made while it was down.
    fn alerts(schedule: &Schedule, down: (f64, f64), rule: (u32, Duration)) -> (Vec<f64>, usize) {
        let start = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut health = Health {
            run: None,
            alerted: false,
        };
        let (mut alerts, mut requests, mut retries) = (Vec::new(), 0, 0);
        let (mut at, mut due) = (0.0, 0.0);
        while at < down.1 + 7200.0 {
            let now = start + Duration::from_secs_f64(at);
            // As the daemon: from the scheduled time (a cron's is absolute).
            let since = start + Duration::from_secs_f64(due);
            let regular = due + schedule.next_delay(since).as_secs_f64();
            if !(down.0..down.1).contains(&at) {
                health.run = None;
                health.alerted = false;
                (at, due) = (regular, regular);
                continue;
            }
            requests += 1;
            let retry = schedule.quick_retry(retries, None, now);
            retries = if retry.is_some() { retries + 1 } else { 0 };
            let now_ms = (at * 1000.0) as u64;
            if health.note_failure("down".into(), Some(503), retry.is_none(), now_ms, rule) {
                health.alerted = true;
                alerts.push(at);
            }
            match retry {
                Some(wait) => at += wait.as_secs_f64(),
                None => (at, due) = (regular, regular),
            }
        }
        (alerts, requests)
    }

    #[test]
    fn an_hourly_endpoint_down_for_seconds_sends_no_alert() {
        let hourly = Schedule::Cron(Box::new("@hourly".parse().unwrap()));
        let rule = (3, hourly.interval(std::time::SystemTime::now()));
        // Down 13 s from its poll at 0 s: the poll and 3 quick retries.
        let (sent, requests) = alerts(&hourly, (0.0, 13.0), rule);
        assert!(sent.is_empty(), "{sent:?}");
        assert_eq!(requests, 4);
        // Down for 3 hours: one alert, at the third failed scheduled poll.
        let (sent, requests) = alerts(&hourly, (0.0, 3.0 * 3600.0 + 60.0), rule);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!((7200.0..7210.0).contains(&sent[0]), "{sent:?}");
        assert_eq!(requests, 4 * 4);
    }

    #[test]
    fn fail_for_holds_the_alert_until_the_endpoint_has_failed_that_long() {
        let minute = Schedule::Every(Duration::from_secs(60));
        let rule = (3, Duration::from_secs(600));
        let (sent, _) = alerts(&minute, (0.0, 3600.0), rule);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!((600.0..660.0).contains(&sent[0]), "{sent:?}");
        // Without `fail_for`, the third failed poll.
        let (sent, _) = alerts(&minute, (0.0, 3600.0), (3, Duration::ZERO));
        assert!((120.0..130.0).contains(&sent[0]), "{sent:?}");
        // `fail_after = 0`: never.
        assert!(
            alerts(&minute, (0.0, 3600.0), (0, Duration::ZERO))
                .0
                .is_empty()
        );
    }
}
