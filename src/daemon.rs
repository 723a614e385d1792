//! The running daemon: one timer wheel for every endpoint's next poll, one
//! dispatcher per target, the admin API, and a supervisor loop that owns
//! them.
//!
//! [`run`] holds the `CancellationToken` every task listens to and the
//! `TaskTracker` it waits on. Start-up and reload go through the same
//! [`Running::apply`]: endpoints and targets that are new start, removed ones
//! stop, changed ones restart. The supervisor `select!`s over shutdown,
//! SIGHUP, requests from the admin API, the watchdog tick, polls falling due
//! and polls ending.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant as StdInstant};

use futures_util::StreamExt as _;
use sd_notify::NotifyState;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, oneshot};
use tokio::task::{self, JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::clock;
use crate::config::{Admin, Config, Endpoint, Target};
use crate::deliver;
use crate::event::{self, Event};
use crate::hosts::Hosts;
use crate::metrics::{EndpointCounts, Metrics, PollResult};
use crate::poll::{self, NewReason, Observation};
use crate::schedule::Schedule;
use crate::store::{Failing, Store};

/// Live events kept for slow stream clients before they are dropped.
const LIVE_BUFFER: usize = 1024;
/// How often a store that cannot write is checked for whether it can again.
const RECOVERY_EVERY: Duration = Duration::from_secs(1);
/// How often `STATUS=` is refreshed when systemd asks for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// The longest single wait in the timer wheel, which reaches only about two
/// years ahead; a later poll (a cron for 29 February) waits in steps.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far ahead "never" is: a cron expression whose last year has gone by
/// never fires again. Any wait over half of it is shown as never.
const NEVER: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);

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
    pub consecutive_failures: u32,
    pub next_poll_ms: Option<u64>,
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
}

/// What the tasks and the admin API share.
pub struct Shared {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub live: broadcast::Sender<Arc<LiveEvent>>,
    /// Also read by the metrics when scraped.
    pub endpoints: Statuses,
    /// True once every task is running, false again while stopping.
    pub ready: AtomicBool,
    pub admin: Admin,
    pub control: mpsc::Sender<Control>,
    /// Wakes a target's dispatcher: rows were queued, or it was resumed.
    pub wakes: RwLock<HashMap<String, Arc<Notify>>>,
    /// The global cap on polls in flight.
    permits: Semaphore,
    /// The per-host caps and spacing.
    hosts: Hosts,
    poll_client: reqwest::Client,
}

impl Shared {
    pub fn wake_target(&self, target: &str) {
        if let Some(wake) = read(&self.wakes).get(target) {
            wake.notify_one();
        }
    }

    /// `polling 42 endpoints, 0 failing, 3 queued`, for systemd's STATUS=.
    pub fn summary(&self) -> String {
        let endpoints = read(&self.endpoints);
        let failing = endpoints
            .values()
            .filter(|status| status.consecutive_failures > 0)
            .count();
        format!(
            "polling {} endpoints, {failing} failing, {} queued",
            endpoints.len(),
            self.store.outbox_len()
        )
    }
}

/// Reads a lock, also one a panicking task left behind: the maps in it are
/// only ever replaced entry by entry.
pub fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Tells systemd, when it is listening; a no-op otherwise.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        warn!(error = %error, "cannot notify systemd");
    }
}

/// Hands the allocator's free pages back to the system. Reading a config
/// builds a document several times the size of what is kept (about 1 KiB
/// per endpoint), and glibc keeps the pages it freed when live allocations
/// sit above them: at 10,000 endpoints, 5 MiB that nothing would use again.
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases pages that no allocation uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps large blocks in mappings of their own. glibc raises the size from
/// which it maps a block each time one is unmapped, so after the config's
/// large vectors come and go, blocks of hundreds of KiB would come from its
/// heaps instead, where a zeroed block has to be written: sled zeroes 41
/// metrics histograms of 512 KiB when it opens and never writes them again.
/// Mapped, their pages are never touched. An operator's own setting
/// (`GLIBC_TUNABLES` or `MALLOC_MMAP_THRESHOLD_`) wins.
fn keep_large_blocks_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none()
        && std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
    {
        // SAFETY: mallopt only sets a tunable of the allocator.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    keep_large_blocks_mapped();
    return_free_memory();
    let store = Arc::new(Store::open(&config.state_dir)?);
    let (control, mut requests) = mpsc::channel(8);
    let statuses = Statuses::default();
    let shared = Arc::new(Shared {
        store: store.clone(),
        metrics: Arc::new(Metrics::new(statuses.clone())),
        live: broadcast::channel(LIVE_BUFFER).0,
        endpoints: statuses,
        ready: AtomicBool::new(false),
        admin: config.admin.clone(),
        control,
        wakes: RwLock::new(HashMap::new()),
        permits: Semaphore::new(config.max_concurrent_polls),
        hosts: Hosts::new(config.per_host, config.per_host_spacing),
        poll_client: crate::fetch::client()?,
    });
    let tracker = TaskTracker::new();
    let admin_address =
        crate::admin::serve(&config.admin, shared.clone(), shutdown.clone(), &tracker).await?;

    let mut running = Running {
        shared: shared.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        delivery_client: deliver::client()?,
        config: Arc::new(config.clone()),
        polls: Polls::default(),
        targets: HashMap::new(),
        reloads: 0,
    };
    running.apply(config);
    tracker.spawn(recover_store(shared.clone(), shutdown.clone()));
    shared.ready.store(true, Ordering::SeqCst);
    // The CLI finds a running daemon's API here, even on a port chosen by the
    // OS, once it is ready. Written aside and renamed, so that no reader ever
    // sees it half written.
    let address_file = running.config.state_dir.join(crate::admin::ADDRESS_FILE);
    let written = address_file.with_extension("addr.new");
    std::fs::write(&written, &admin_address)?;
    std::fs::rename(&written, &address_file)?;
    info!(
        endpoints = running.polls.slots.len(),
        targets = running.targets.len(),
        state_dir = %running.config.state_dir.display(),
        admin = %admin_address,
        queued = store.outbox_len(),
        "pollhook started"
    );
    notify(&[NotifyState::Ready, NotifyState::Status(&shared.summary())]);

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Pinging from this loop means a wedged supervisor gets restarted.
    let watchdog = sd_notify::watchdog_enabled();
    let mut tick = tokio::time::interval(watchdog.map_or(STATUS_EVERY, |timeout| timeout / 2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hangup.recv() => {
                info!("SIGHUP received: reloading the config");
                let _ = running.reload();
            }
            Some(request) = requests.recv() => match request {
                Control::Reload(reply) => {
                    let _ = reply.send(running.reload());
                }
                Control::PollNow(name) => running.poll_now(&name),
            },
            Some(due) = running.polls.due.next() => running.start_poll(due.into_inner()),
            Some(ended) = running.polls.running.join_next_with_id() => running.poll_ended(ended),
            _ = tick.tick() => {
                if watchdog.is_some() {
                    notify(&[NotifyState::Watchdog]);
                }
                notify(&[NotifyState::Status(&shared.summary())]);
            }
        }
    }
    shared.ready.store(false, Ordering::SeqCst);
    notify(&[NotifyState::Stopping]);
    info!("shutting down");
    // Running polls see the shutdown too; they are tracked, so this also
    // waits for them to write what they decided.
    tracker.close();
    tracker.wait().await;
    store.flush().await?;
    let _ = std::fs::remove_file(&address_file);
    info!(queued = store.outbox_len(), "stopped");
    Ok(())
}

/// While the store cannot write (a full disk), asks it every second to
/// check whether it can again ([`Store::recover`], which opens sled again
/// when needed and backs off between tries); once it can, wakes every
/// dispatcher, whose rows held back since their results could not be
/// written are due again.
async fn recover_store(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RECOVERY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if shared.store.write_failure().is_none() {
            continue;
        }
        let store = shared.store.clone();
        match task::spawn_blocking(move || store.recover()).await {
            Ok(Ok(())) => {
                for wake in read(&shared.wakes).values() {
                    wake.notify_one();
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(error = %crate::error_chain(&error), "the store cannot write yet");
            }
            Err(error) => warn!(error = %error, "checking whether the store writes again failed"),
        }
    }
}

/// A target's dispatcher, and the config it was started with.
struct Dispatcher {
    target: Arc<Target>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Every endpoint's place in its schedule. One timer wheel holds all the
/// waits, and a poll is a task only while it runs: a waiting endpoint costs
/// its slot, not a sleeping task with its own timer and cancel token.
#[derive(Default)]
struct Polls {
    /// The waiting endpoints, by name, each at its next poll.
    due: DelayQueue<Arc<str>>,
    slots: HashMap<Arc<str>, Slot>,
    running: JoinSet<Polled>,
    /// The endpoint of each running poll, to find it again if it panicked.
    names: HashMap<task::Id, Arc<str>>,
}

struct Slot {
    /// `None`: removed from the config while its poll was running.
    endpoint: Option<Arc<Endpoint>>,
    phase: Phase,
}

enum Phase {
    Waiting {
        key: delay_queue::Key,
        due: Instant,
        state: PollState,
    },
    Polling {
        cancel: CancellationToken,
        then: Then,
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

/// What an endpoint keeps from one poll to the next.
struct PollState {
    health: Health,
    /// Duplicate item keys are reported once, not at every poll.
    reported_duplicates: Vec<serde_json::Value>,
}

impl PollState {
    fn load(shared: &Shared, endpoint: &Endpoint) -> PollState {
        PollState {
            health: Health::load(shared, endpoint),
            reported_duplicates: Vec::new(),
        }
    }
}

/// A poll's outcome for the scheduler: the state, and when to poll next.
struct Polled {
    state: PollState,
    next: Instant,
}

/// The tasks of the current config.
struct Running {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    delivery_client: reqwest::Client,
    config: Arc<Config>,
    polls: Polls,
    targets: HashMap<String, Dispatcher>,
    /// How many times [`Running::apply`] ran: 0 until start-up is done.
    reloads: u64,
}

impl Running {
    /// Re-reads the config file. On any error the running config stays.
    fn reload(&mut self) -> Result<String, String> {
        notify(&[
            NotifyState::Reloading,
            NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Reloading),
        ]);
        let result = match Config::load(&self.config.path) {
            Ok(config) => {
                let summary = self.apply(config);
                return_free_memory();
                info!(%summary, "config reloaded");
                Ok(summary)
            }
            Err(problems) => {
                let text = crate::error_chain(&problems);
                error!(problems = %text, "reload failed; the running config stays");
                Err(text)
            }
        };
        notify(&[
            NotifyState::Ready,
            NotifyState::Status(&self.shared.summary()),
        ]);
        result
    }

    /// Makes the running tasks match `config`: the one path for start-up and
    /// reload. Returns a summary of what changed.
    fn apply(&mut self, config: Config) -> String {
        let restart_only = [
            ("state_dir", config.state_dir != self.config.state_dir),
            ("admin", config.admin != self.config.admin),
            (
                "max_concurrent_polls",
                config.max_concurrent_polls != self.config.max_concurrent_polls,
            ),
            ("per_host", config.per_host != self.config.per_host),
            (
                "per_host_spacing",
                config.per_host_spacing != self.config.per_host_spacing,
            ),
        ];
        let reloading = self.reloads > 0;
        if reloading {
            for (key, changed) in restart_only {
                if changed {
                    warn!(key, "`{key}` changed: it takes effect at the next restart");
                }
            }
        }
        let (mut started, mut stopped, mut restarted) = (0, 0, 0);

        let wanted_targets: HashMap<String, Arc<Target>> = config
            .targets
            .iter()
            .map(|target| (target.name.clone(), target.clone()))
            .collect();
        for name in self.targets.keys().cloned().collect::<Vec<_>>() {
            if !wanted_targets.contains_key(&name) {
                let task = self.targets.remove(&name).expect("listed above");
                task.cancel.cancel();
                write(&self.shared.wakes).remove(&name);
                stopped += 1;
                let queued = self
                    .shared
                    .store
                    .outbox_rows(&name)
                    .map(|rows| rows.len())
                    .unwrap_or(0);
                if queued > 0 {
                    warn!(target = %name, queued, "target removed from the config; its queued webhooks stay in the store");
                }
            }
        }
        for (name, target) in wanted_targets {
            // A reload is an operator's word that a paused target may go on.
            if reloading && matches!(self.shared.store.resume(&name), Ok(true)) {
                info!(target = %name, "target resumed by the reload");
            }
            let previous = match self.targets.remove(&name) {
                Some(task) if *task.target == *target => {
                    self.targets.insert(name.clone(), task);
                    self.shared.wake_target(&name);
                    continue;
                }
                Some(task) => {
                    task.cancel.cancel();
                    restarted += 1;
                    Some(task.handle)
                }
                None => {
                    started += 1;
                    None
                }
            };
            let task = self.spawn_target(target, previous);
            self.targets.insert(name, task);
        }

        let wanted: HashMap<&str, &Arc<Endpoint>> = config
            .endpoints
            .iter()
            .map(|endpoint| (&*endpoint.name, endpoint))
            .collect();
        let removed: Vec<Arc<str>> = self
            .polls
            .slots
            .iter()
            .filter(|(name, slot)| slot.endpoint.is_some() && !wanted.contains_key(&name[..]))
            .map(|(name, _)| name.clone())
            .collect();
        for name in removed {
            self.stop_endpoint(&name);
            write(&self.shared.endpoints).remove(&*name);
            stopped += 1;
        }
        // Room for one wait per endpoint at once: grown one insert at a time,
        // the timer wheel's storage doubled past them (at 10,000 endpoints,
        // 0.4 MiB never used).
        let waits = config.endpoints.len().saturating_sub(self.polls.due.len());
        self.polls.due.reserve(waits);
        for endpoint in &config.endpoints {
            let Some(slot) = self.polls.slots.get_mut(&*endpoint.name) else {
                self.start_endpoint(endpoint);
                started += 1;
                continue;
            };
            match &slot.endpoint {
                Some(running) if same_endpoint(running, endpoint) => continue,
                Some(_) => restarted += 1,
                // Removed while polling, and back before that poll ended.
                None => started += 1,
            }
            slot.endpoint = Some(endpoint.clone());
            match &mut slot.phase {
                Phase::Waiting { key, due, .. } => {
                    *due = first_poll(endpoint);
                    self.polls.due.reset_at(key, wheel_deadline(*due));
                    show_next_poll(&self.shared, &endpoint.name, *due);
                }
                Phase::Polling { cancel, then } => {
                    cancel.cancel();
                    *then = Then::Restart;
                }
            }
            write(&self.shared.endpoints)
                .entry(endpoint.name.clone())
                .and_modify(|status| status.endpoint = endpoint.clone())
                .or_insert_with(|| EndpointStatus::new(endpoint.clone()));
        }
        if started > 0 {
            // Inserted one at a time, a B-tree's nodes are left half full;
            // built from its entries in order, they are full.
            let mut statuses = write(&self.shared.endpoints);
            *statuses = std::mem::take(&mut *statuses).into_iter().collect();
        }
        self.config = Arc::new(config);
        self.reloads += 1;
        format!("{started} started, {stopped} stopped, {restarted} restarted")
    }

    /// Starts a dispatcher; a restarted one waits for its predecessor, so a
    /// row is never in two attempts at once.
    fn spawn_target(&self, target: Arc<Target>, previous: Option<JoinHandle<()>>) -> Dispatcher {
        let cancel = self.shutdown.child_token();
        let wake = Arc::new(Notify::new());
        write(&self.shared.wakes).insert(target.name.clone(), wake.clone());
        let dispatcher = deliver::run_target(
            self.shared.store.clone(),
            self.delivery_client.clone(),
            target.clone(),
            wake,
            self.shared.metrics.clone(),
            cancel.clone(),
            self.config.shutdown_grace,
        );
        let span = info_span!("target", target = %target.name);
        let handle = self.tracker.spawn(
            async move {
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                dispatcher.await;
            }
            .instrument(span),
        );
        Dispatcher {
            target,
            cancel,
            handle,
        }
    }

    /// Schedules a new endpoint's first poll, spread over its interval.
    fn start_endpoint(&mut self, endpoint: &Arc<Endpoint>) {
        let name = endpoint.name.clone();
        write(&self.shared.endpoints).insert(name.clone(), EndpointStatus::new(endpoint.clone()));
        let state = PollState::load(&self.shared, endpoint);
        let phase = wait(
            &mut self.polls.due,
            &self.shared,
            &name,
            first_poll(endpoint),
            state,
        );
        self.polls.slots.insert(
            name,
            Slot {
                endpoint: Some(endpoint.clone()),
                phase,
            },
        );
    }

    /// Takes an endpoint out of the schedule. A running poll is cancelled;
    /// its slot stays until the poll has ended, so that the endpoint, if it
    /// comes back, never has two polls at once.
    fn stop_endpoint(&mut self, name: &str) {
        let Some(slot) = self.polls.slots.get_mut(name) else {
            return;
        };
        match &slot.phase {
            Phase::Waiting { key, .. } => {
                self.polls.due.remove(key);
                self.polls.slots.remove(name);
            }
            Phase::Polling { cancel, .. } => {
                cancel.cancel();
                slot.endpoint = None;
            }
        }
    }

    /// An endpoint's wait is over: its poll starts as a task of its own.
    fn start_poll(&mut self, name: Arc<str>) {
        let Some(slot) = self.polls.slots.get_mut(&name) else {
            return;
        };
        let (Some(endpoint), Phase::Waiting { key, due, .. }) = (&slot.endpoint, &mut slot.phase)
        else {
            return;
        };
        // Only a wait longer than the wheel reaches ends early.
        if due.saturating_duration_since(Instant::now()) > Duration::from_secs(1) {
            *key = self.polls.due.insert_at(name, wheel_deadline(*due));
            return;
        }
        let endpoint = endpoint.clone();
        let cancel = self.shutdown.child_token();
        let polling = Phase::Polling {
            cancel: cancel.clone(),
            then: Then::Schedule,
        };
        let Phase::Waiting { due, state, .. } = std::mem::replace(&mut slot.phase, polling) else {
            unreachable!("matched as waiting above");
        };
        let span = info_span!("endpoint", endpoint = %name);
        let poll = poll_task(self.shared.clone(), endpoint, state, due, cancel);
        let handle = self
            .polls
            .running
            .spawn(self.tracker.track_future(poll.instrument(span)));
        self.polls.names.insert(handle.id(), name);
    }

    /// An endpoint's poll has ended: it waits for its next one.
    fn poll_ended(&mut self, ended: Result<(task::Id, Polled), JoinError>) {
        let (id, polled) = match ended {
            Ok((id, polled)) => (id, Some(polled)),
            Err(error) => (error.id(), None),
        };
        let Some(name) = self.polls.names.remove(&id) else {
            return;
        };
        let Some(slot) = self.polls.slots.get_mut(&name) else {
            return;
        };
        let (Some(endpoint), Phase::Polling { then, .. }) = (slot.endpoint.clone(), &slot.phase)
        else {
            // Removed from the config while it polled.
            self.polls.slots.remove(&name);
            return;
        };
        let then = *then;
        let now = Instant::now();
        let Polled { state, next } = polled.unwrap_or_else(|| {
            error!(endpoint = %name, "a poll panicked; the endpoint goes on after a pause");
            Polled {
                state: PollState::load(&self.shared, &endpoint),
                next: later(now, endpoint.schedule.retry_delay(1, clock::now())),
            }
        });
        let due = match then {
            Then::Schedule => next,
            Then::PollNow => now,
            Then::Restart => first_poll(&endpoint),
        };
        slot.phase = wait(&mut self.polls.due, &self.shared, &name, due, state);
    }

    /// Polls an endpoint now, or right after the poll it is running.
    fn poll_now(&mut self, name: &str) {
        let Some(Slot {
            endpoint: Some(_),
            phase,
        }) = self.polls.slots.get_mut(name)
        else {
            return;
        };
        match phase {
            Phase::Waiting { key, due, .. } => {
                *due = Instant::now();
                self.polls.due.reset_at(key, *due);
                show_next_poll(&self.shared, name, *due);
            }
            Phase::Polling { then, .. } => *then = Then::PollNow,
        }
    }
}

impl EndpointStatus {
    pub(crate) fn new(endpoint: Arc<Endpoint>) -> EndpointStatus {
        EndpointStatus {
            endpoint,
            last_poll_ms: None,
            last_error: None,
            consecutive_failures: 0,
            next_poll_ms: None,
            counts: EndpointCounts::default(),
        }
    }
}

/// Puts an endpoint in the timer wheel until `due`.
fn wait(
    wheel: &mut DelayQueue<Arc<str>>,
    shared: &Shared,
    name: &Arc<str>,
    due: Instant,
    state: PollState,
) -> Phase {
    show_next_poll(shared, name, due);
    Phase::Waiting {
        key: wheel.insert_at(name.clone(), wheel_deadline(due)),
        due,
        state,
    }
}

/// Tells the admin API when an endpoint polls next.
fn show_next_poll(shared: &Shared, name: &str, due: Instant) {
    let wait = due.saturating_duration_since(Instant::now());
    set_status(shared, name, |status| {
        status.next_poll_ms = (wait < NEVER / 2).then(|| clock::now_ms() + wait.as_millis() as u64);
    });
}

/// `delay` after `now`; a delay past [`NEVER`] is never.
fn later(now: Instant, delay: Duration) -> Instant {
    now + delay.min(NEVER)
}

/// When a new or changed endpoint polls first.
fn first_poll(endpoint: &Endpoint) -> Instant {
    later(Instant::now(), endpoint.schedule.first_delay(clock::now()))
}

/// `due`, or as far ahead as the timer wheel reaches.
fn wheel_deadline(due: Instant) -> Instant {
    due.min(Instant::now() + LONGEST_WAIT)
}

/// Whether an endpoint's schedule and state can go on with `new` unchanged.
fn same_endpoint(old: &Endpoint, new: &Endpoint) -> bool {
    // The definition hash covers header values; `Debug` covers the rest
    // (schedule, targets, limits) and hides sensitive headers.
    old.definition == new.definition && format!("{old:?}") == format!("{new:?}")
}

/// One poll of an endpoint that was `due`, and what follows from it:
/// metrics, health events, status, and when the next poll is. A failed poll
/// is logged and retried with backoff.
async fn poll_task(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    mut state: PollState,
    due: Instant,
    cancel: CancellationToken,
) -> Polled {
    let started = StdInstant::now();
    let result = poll_once(&shared, &endpoint, &cancel, &mut state.reported_duplicates).await;
    shared
        .metrics
        .poll_duration
        .observe(started.elapsed().as_secs_f64());
    let now = Instant::now();
    let next = match result {
        Ok(Some(result)) => {
            state.health.succeeded(&shared, &endpoint).await;
            set_status(&shared, &endpoint.name, |status| {
                let at_ms = clock::now_ms();
                status.counts.polled(result, at_ms);
                status.last_poll_ms = Some(at_ms);
                status.last_error = None;
                status.consecutive_failures = 0;
            });
            match &endpoint.schedule {
                // Keep to the grid (no drift), but never try to catch up.
                Schedule::Every(interval) => (due + *interval).max(now),
                Schedule::Cron(_) => later(now, endpoint.schedule.next_delay(clock::now())),
            }
        }
        // Cancelled while polling: whoever cancelled decides what is next.
        Ok(None) => now,
        Err(error) => {
            let error_text = crate::error_chain(&error);
            let (status, retry_after) = match &error {
                poll::PollError::Fetch(crate::fetch::FetchError::Status {
                    status,
                    retry_after,
                }) => (Some(*status), *retry_after),
                _ => (None, None),
            };
            let failures = state
                .health
                .failed(&shared, &endpoint, &error_text, status)
                .await;
            let backoff = endpoint.schedule.retry_delay(failures, clock::now());
            // A server that says when to come back (429/503) is listened to.
            let retry_in = retry_after.map_or(backoff, |wait| backoff.max(wait));
            warn!(
                error = %error_text,
                failures,
                retry_in = %humantime::format_duration(Duration::from_millis(retry_in.as_millis() as u64)),
                "poll failed"
            );
            set_status(&shared, &endpoint.name, |status| {
                let at_ms = clock::now_ms();
                status.counts.polled(PollResult::Failed, at_ms);
                status.last_poll_ms = Some(at_ms);
                status.last_error = Some(error_text);
                status.consecutive_failures = failures;
            });
            later(now, retry_in)
        }
    };
    Polled { state, next }
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
    fn load(shared: &Shared, endpoint: &Endpoint) -> Health {
        match shared.store.failing(&endpoint.name) {
            Ok(Some(failing)) => Health {
                run: Some(Box::new(failing)),
                alerted: true,
            },
            Ok(None) => Health {
                run: None,
                alerted: false,
            },
            Err(error) => {
                warn!(error = %crate::error_chain(&error), "cannot read the health state");
                Health {
                    run: None,
                    alerted: false,
                }
            }
        }
    }

    /// Counts a failed poll; sends `endpoint.failing` once the run reaches
    /// `fail_after`. Returns the failures in a row.
    async fn failed(
        &mut self,
        shared: &Shared,
        endpoint: &Endpoint,
        error: &str,
        status: Option<u16>,
    ) -> u32 {
        let run = self.run.get_or_insert_with(|| {
            Box::new(Failing {
                failures: 0,
                since_ms: clock::now_ms(),
                error: String::new(),
                status: None,
            })
        });
        run.failures = run.failures.saturating_add(1);
        run.error = error.to_string();
        run.status = status;
        let failures = run.failures;
        if !self.alerted && endpoint.fail_after > 0 && failures >= endpoint.fail_after {
            let event = event::endpoint_failing(endpoint, run, clock::now_ms());
            if send_health(shared, endpoint, Some(&**run), event).await {
                error!(failures, since = %clock::rfc3339(run.since_ms), "endpoint is failing");
                self.alerted = true;
            }
        }
        failures
    }

    /// Ends a run of failures; sends `endpoint.recovered` if it was alerted.
    async fn succeeded(&mut self, shared: &Shared, endpoint: &Endpoint) {
        let Some(run) = &self.run else {
            return;
        };
        info!(failures = run.failures, "polling works again");
        if self.alerted {
            let event = event::endpoint_recovered(endpoint, run, clock::now_ms());
            if !send_health(shared, endpoint, None, event).await {
                // Kept: the next successful poll tries again.
                return;
            }
            self.alerted = false;
        }
        self.run = None;
    }
}

/// Stores the health state and queues its event in one transaction, then
/// announces it. False when the store failed (logged).
async fn send_health(
    shared: &Shared,
    endpoint: &Endpoint,
    failing: Option<&Failing>,
    event: Event,
) -> bool {
    let events = [event];
    let rows = poll::outbox_rows(endpoint, &events);
    match shared
        .store
        .commit_health(&endpoint.name, failing, &rows)
        .await
    {
        Ok(keys) => {
            announce(shared, endpoint, &events, keys.len());
            true
        }
        Err(error) => {
            let error = crate::error_chain(&error);
            // A store that cannot write said so at ERROR, once.
            if shared.store.write_failure().is_some() {
                warn!(error = %error, "cannot queue a health event");
            } else {
                error!(error = %error, "cannot queue a health event");
            }
            false
        }
    }
}

fn set_status(shared: &Shared, endpoint: &str, change: impl FnOnce(&mut EndpointStatus)) {
    if let Some(status) = write(&shared.endpoints).get_mut(endpoint) {
        change(status);
    }
}

/// One poll: observe (abandoned if cancelled), then write and announce.
/// Returns what the poll came to, or `None` when cancelled.
async fn poll_once(
    shared: &Shared,
    endpoint: &Endpoint,
    cancel: &CancellationToken,
    reported_duplicates: &mut Vec<serde_json::Value>,
) -> Result<Option<PollResult>, poll::PollError> {
    let observe = async {
        // The host's gate first: waiting for a busy host must not hold one
        // of the global permits that other hosts could use.
        let _host = shared.hosts.enter(&endpoint.url).await;
        let _permit = shared
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        poll::observe(&shared.poll_client, &shared.store, endpoint).await
    };
    let observation = tokio::select! {
        _ = cancel.cancelled() => return Ok(None),
        observation = observe => observation?,
    };
    // Not raced with cancellation: a decided change is always written whole.
    let queued = poll::apply(&shared.store, endpoint, &observation).await?;
    let result = match &observation {
        Observation::Unchanged { .. } => PollResult::Unchanged,
        Observation::New {
            reason,
            snapshot,
            document,
            ..
        } => {
            // Reported once, not at every poll while the response has them.
            if document.duplicate_keys != *reported_duplicates {
                if !document.duplicate_keys.is_empty() {
                    warn!(
                        keys = %serde_json::Value::Array(document.duplicate_keys.clone()),
                        "several items have the same key; of each, the one that sorts first is kept"
                    );
                }
                reported_duplicates.clone_from(&document.duplicate_keys);
            }
            match reason {
                NewReason::Baseline => {
                    info!(version = snapshot.version, queued, "baseline stored");
                    PollResult::Baseline
                }
                NewReason::Rebaseline => {
                    info!(
                        version = snapshot.version,
                        "endpoint definition changed; re-baselined quietly"
                    );
                    PollResult::Baseline
                }
                NewReason::Changed => {
                    info!(version = snapshot.version, queued, "changed");
                    PollResult::Changed
                }
                NewReason::Repaired => {
                    info!(
                        version = snapshot.version,
                        "the stored document was damaged; re-baselined quietly"
                    );
                    PollResult::Baseline
                }
            }
        }
    };
    announce(shared, endpoint, observation.events(), queued);
    Ok(Some(result))
}

/// Shows queued events to live-stream clients and wakes their dispatchers.
fn announce(shared: &Shared, endpoint: &Endpoint, events: &[Event], queued: usize) {
    for event in events {
        // No subscriber is fine: the event is in the outbox either way.
        let _ = shared.live.send(Arc::new(LiveEvent {
            id: event.id.clone(),
            kind: event.kind.to_string(),
            endpoint: endpoint.name.to_string(),
            body: event.body(),
        }));
    }
    if queued > 0 {
        for target in endpoint.targets.iter() {
            shared.wake_target(target);
        }
    }
}

/// Where a running daemon's admin API can be reached, from its state dir.
pub fn admin_address_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join(crate::admin::ADDRESS_FILE)
}
