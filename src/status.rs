//! What the daemon knows of each endpoint while it runs, and how the admin
//! API asks it for things: the types the daemon, the admin API and the
//! metrics share, so that none of them reaches into another.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use tokio::sync::{Notify, oneshot};

use crate::config::Endpoint;
pub use crate::locks::{read, write};
use crate::watched::Watched;

/// One event as it was produced, for `/api/v1/events` and `pollhook tail`.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub id: String,
    pub kind: String,
    pub endpoint: String,
    /// The webhook body, exactly as queued.
    pub body: String,
}

/// A running endpoint, as the admin API sees it: its config and what its
/// polls did. Only what changes is kept here; the rest is read from the
/// config when asked for.
#[derive(Debug, Clone)]
pub struct EndpointStatus {
    pub endpoint: Arc<Endpoint>,
    pub last_poll_ms: Option<u64>,
    pub last_error: Option<String>,
    /// What the last poll warned of, though it worked.
    pub last_warning: Option<String>,
    pub consecutive_failures: u32,
    pub next_poll_ms: Option<u64>,
    /// Since when an operator has paused it (it is not polled).
    pub paused_since_ms: Option<u64>,
    pub counts: EndpointCounts,
}

/// Every endpoint's status, by name.
pub type Statuses = Arc<RwLock<BTreeMap<Arc<str>, EndpointStatus>>>;

/// Requests the admin API makes of the supervisor.
pub enum Control {
    /// Re-read the config; answers with a summary or the errors.
    Reload(oneshot::Sender<Result<String, String>>),
    /// Poll this endpoint now, or right after its running poll.
    PollNow(String),
    /// Stop polling this endpoint until it is resumed (the store has the
    /// pause already).
    Pause(String),
    /// Poll this paused endpoint again.
    Resume(String),
    /// From the cluster's node: poll the endpoints of these shards (and no
    /// others); answered once applied.
    Shards(std::collections::BTreeSet<u32>, oneshot::Sender<()>),
}

/// Each running target's wake: rows were queued, or it was resumed.
#[derive(Debug, Default)]
pub struct Wakes(RwLock<HashMap<String, Arc<Notify>>>);

impl Wakes {
    /// Wakes a target's dispatcher, if it runs.
    pub fn wake(&self, target: &str) {
        if let Some(wake) = read(&self.0).get(target) {
            wake.notify_one();
        }
    }

    /// The wake of a target's new dispatcher.
    pub fn insert(&self, target: &str) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        write(&self.0).insert(target.to_string(), wake.clone());
        wake
    }

    pub fn remove(&self, target: &str) {
        write(&self.0).remove(target);
    }

    /// Wakes the dispatchers of every target of `endpoint`: rows were
    /// queued for them.
    pub fn wake_targets_of(&self, endpoint: &Endpoint) {
        for subscription in endpoint.targets.iter() {
            self.wake(&subscription.target);
        }
    }

    /// Wakes every dispatcher.
    pub fn wake_all(&self) {
        for wake in read(&self.0).values() {
            wake.notify_one();
        }
    }
}

/// What a poll came to, as the `result` label of `pollhook_polls_total`
/// says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollResult {
    Baseline,
    Changed,
    Unchanged,
    Failed,
}

impl PollResult {
    pub(crate) const ALL: [PollResult; 4] = [
        PollResult::Baseline,
        PollResult::Changed,
        PollResult::Unchanged,
        PollResult::Failed,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            PollResult::Baseline => "baseline",
            PollResult::Changed => "changed",
            PollResult::Unchanged => "unchanged",
            PollResult::Failed => "failed",
        }
    }
}

/// An endpoint's own metrics, kept with its status: one small record per
/// endpoint instead of a label set (and its map entry) per metric and result.
/// `/metrics` writes them when it is scraped.
#[derive(Debug, Clone, Default)]
pub struct EndpointCounts {
    pub(crate) polls: [u64; PollResult::ALL.len()],
    pub(crate) last_success_ms: Option<u64>,
    /// The last answer's status, certificate expiry and `metrics` values;
    /// boxed, made at the first answer.
    pub(crate) watched: Option<Box<Watched>>,
}

impl EndpointCounts {
    pub fn polled(&mut self, result: PollResult, at_ms: u64) {
        self.polls[result as usize] += 1;
        if result != PollResult::Failed {
            self.last_success_ms = Some(at_ms);
        }
    }

    /// What the metrics show of the endpoint's last answer.
    pub fn watched(&self) -> Option<&Watched> {
        self.watched.as_deref()
    }

    pub fn watched_mut(&mut self) -> &mut Watched {
        self.watched.get_or_insert_default()
    }
}

impl EndpointStatus {
    pub(crate) fn new(endpoint: Arc<Endpoint>) -> EndpointStatus {
        EndpointStatus {
            endpoint,
            last_poll_ms: None,
            last_error: None,
            last_warning: None,
            consecutive_failures: 0,
            next_poll_ms: None,
            paused_since_ms: None,
            counts: EndpointCounts::default(),
        }
    }
}
