//! The one poller: what a poll of one endpoint does, the same for the
//! daemon, `pollhook once` and the load benchmark.
//!
//! [`Poller::poll`] waits at the host's gate (`per_host`,
//! `per_host_spacing`), then for a permit of the global cap
//! (`max_concurrent_polls`), in that order so that a busy host never holds
//! permits other hosts could use; then it fetches, extracts, diffs and
//! decides ([`poll::observe`], abandoned if cancelled), and, unless it is a
//! dry run, commits the decision and the endpoint's health state
//! (`endpoint.failing` at `fail_after` failures in a row, `recovered` after).
//! It returns what happened and the events it queued; announcing them and
//! choosing the next poll are the caller's.

use std::sync::Arc;

use futures_util::{Stream, StreamExt as _};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock;
use crate::config::{Config, Endpoint};
use crate::event::{self, Event, Failing};
use crate::hosts::Hosts;
use crate::poll::{self, Observation, PollError};
use crate::store::Store;

/// What every poll shares.
pub struct Poller {
    pub store: Arc<Store>,
    client: reqwest::Client,
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
    /// Failed polls in a row, this one included; 0 after a success.
    pub failures: u32,
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
    /// Duplicate item keys are reported once, not at every poll.
    reported_duplicates: Vec<Value>,
}

impl PollState {
    /// The state an endpoint starts with: its health as the store keeps it.
    pub fn load(store: &Store, endpoint: &Endpoint) -> PollState {
        PollState {
            health: Health::load(store, endpoint),
            reported_duplicates: Vec::new(),
        }
    }
}

impl Poller {
    pub fn new(store: Arc<Store>, config: &Config) -> Result<Poller, reqwest::Error> {
        Ok(Poller {
            store,
            client: crate::fetch::client()?,
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
        let observe = async {
            let _host = self.hosts.enter(endpoint.url.url()).await;
            let _permit = self
                .permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            poll::observe(&self.client, &self.store, endpoint).await
        };
        let observed = tokio::select! {
            _ = cancel.cancelled() => return Report {
                outcome: Outcome::Cancelled,
                events: Vec::new(),
                queued: 0,
                failures: state.health.failures(),
            },
            observed = observe => observed,
        };
        let committed = match (observed, mode) {
            (Ok(observation), Mode::Commit) => poll::apply(&self.store, endpoint, &observation)
                .await
                .map(|queued| (observation, queued))
                .map_err(PollError::from),
            (observed, _) => observed.map(|observation| (observation, 0)),
        };
        let (observation, mut queued) = match committed {
            Ok(committed) => committed,
            Err(error) => {
                let (failures, health_event) = state
                    .health
                    .failed(&self.store, endpoint, &error, mode)
                    .await;
                let events: Vec<Event> = health_event.into_iter().collect();
                return Report {
                    outcome: Outcome::Failed(error),
                    queued: events.iter().map(|event| endpoint.takers(event.kind)).sum(),
                    events,
                    failures,
                };
            }
        };
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
        }
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
                let report = self.poll(&endpoint, &mut state, mode, &never).await;
                (endpoint, report)
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

    /// Counts a failed poll; at `fail_after` in a row, commits
    /// `endpoint.failing` (not in a dry run). Returns the failures in a row
    /// and the event, if one was queued.
    async fn failed(
        &mut self,
        store: &Store,
        endpoint: &Endpoint,
        error: &PollError,
        mode: Mode,
    ) -> (u32, Option<Event>) {
        let status = match error {
            PollError::Fetch(crate::fetch::FetchError::Status { status, .. }) => Some(*status),
            _ => None,
        };
        let run = self.run.get_or_insert_with(|| {
            Box::new(Failing {
                failures: 0,
                since_ms: clock::now_ms(),
                error: String::new(),
                status: None,
            })
        });
        run.failures = run.failures.saturating_add(1);
        run.error = crate::error_chain(error);
        run.status = status;
        let failures = run.failures;
        if mode == Mode::DryRun
            || self.alerted
            || endpoint.fail_after == 0
            || failures < endpoint.fail_after
        {
            return (failures, None);
        }
        let event = event::endpoint_failing(endpoint, run, clock::now_ms());
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
