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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant as StdInstant};

use futures_util::StreamExt as _;
use sd_notify::NotifyState;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{self, JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::clock;
use crate::cluster::{self, ClusterView, Held};
use crate::config::{Config, ConfigDiff, Endpoint, Target};
use crate::deliver;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::poll::{self, NewReason, Observation};
use crate::poller::{Mode, Outcome, PollState, Poller};
use crate::schedule::Schedule;
use crate::scheduler::{Action, Scheduler};
use crate::status::{Control, EndpointStatus, LiveEvent, PollResult, Statuses, Wakes, read, write};
use crate::store::Store;

/// Live events kept for slow stream clients before they are dropped.
const LIVE_BUFFER: usize = 1024;
/// How often a store that cannot write is checked for whether it can again.
const RECOVERY_EVERY: Duration = Duration::from_secs(1);
/// How often `STATUS=` is refreshed when systemd asks for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// How often the last poll of every endpoint is stored (and at shutdown).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(300);
/// The longest single wait in the timer wheel, which reaches only about two
/// years ahead; a later poll (a cron for 29 February) waits in steps.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far ahead "never" is: a cron expression whose last year has gone by
/// never fires again. Any wait over half of it is shown as never.
const NEVER: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);

/// What the tasks and the admin API share.
pub struct Shared {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub live: broadcast::Sender<Arc<LiveEvent>>,
    /// Also read by the metrics when scraped.
    pub endpoints: Statuses,
    /// True once every task is running, false again while stopping.
    pub ready: Arc<AtomicBool>,
    pub control: mpsc::Sender<Control>,
    pub wakes: Arc<Wakes>,
    /// The shards polled here and their endpoints, for the admin API.
    pub cluster: cluster::SharedView,
    /// What every poll shares: the global and per-host caps, the client.
    poller: Arc<Poller>,
}

impl Shared {
    /// `polling 42 endpoints, 0 failing, 3 queued`, for systemd's STATUS=.
    pub fn summary(&self) -> String {
        let endpoints = read(&self.endpoints);
        let failing = endpoints
            .values()
            .filter(|status| status.consecutive_failures > 0)
            .count();
        let shards = crate::locks::read(&self.cluster)
            .line()
            .map(|line| format!(" ({line})"))
            .unwrap_or_default();
        format!(
            "polling {} endpoints, {failing} failing, {} queued{shards}",
            endpoints.len(),
            self.store.outbox_len()
        )
    }
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
/// (`GLIBC_TUNABLES` or `MALLOC_MMAP_THRESHOLD_`) wins. `pollhook once`
/// calls it too: the 20 MiB written cost its pass 3 ms and the page faults.
pub(crate) fn keep_large_blocks_mapped() {
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
        ready: Arc::new(AtomicBool::new(false)),
        control,
        wakes: Arc::default(),
        cluster: Arc::default(),
        poller: Arc::new(Poller::new(store.clone(), &config)?),
    });
    let tracker = TaskTracker::new();
    let context = crate::admin::Context {
        store: store.clone(),
        metrics: shared.metrics.clone(),
        statuses: shared.endpoints.clone(),
        live: shared.live.clone(),
        ready: shared.ready.clone(),
        token: config.admin.token.clone(),
        control: shared.control.clone(),
        wakes: shared.wakes.clone(),
        poller: shared.poller.clone(),
        config_path: config.path.clone(),
        cluster: shared.cluster.clone(),
        pausing: Default::default(),
    };
    let admin_address =
        crate::admin::serve(&config.admin, context, shutdown.clone(), &tracker).await?;

    let mut running = Running {
        shared: shared.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        delivery_clients: deliver::clients()?,
        config: Arc::new(config.clone()),
        polls: Polls::default(),
        targets: HashMap::new(),
        reloads: 0,
        held: Held::at_start(&config),
        source: watch::channel(Arc::new(config.clone())).0,
        releasing: Vec::new(),
    };
    let node = start_node(&config, &shared, &running);
    running.apply(config, true);
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
        endpoints = running.polls.schedule.len(),
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
    let mut checkpoint = tokio::time::interval(CHECKPOINT_EVERY);
    checkpoint.reset();
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
                Control::Pause(name) => running.pause(&name),
                Control::Resume(name) => running.resume(&name),
                Control::Shards(shards, reply) => running.hold(shards, reply),
            },
            Some(due) = running.polls.wheel.next() => running.start_poll(due.into_inner()),
            Some(ended) = running.polls.running.join_next_with_id() => running.poll_ended(ended),
            _ = checkpoint.tick() => checkpoint_polls(&shared),
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
    // A node asking for shards now is answered by the channel's end.
    drop(requests);
    // Running polls see the shutdown too; they are tracked, so this also
    // waits for them to write what they decided.
    tracker.close();
    tracker.wait().await;
    // Only once nothing polls: the node gives the leases up.
    if let Some((stop, handle)) = node {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    }
    checkpoint_polls(&shared);
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
                shared.wakes.wake_all();
            }
            Ok(Err(error)) => {
                tracing::debug!(error = %crate::error_chain(&error), "the store cannot write yet");
            }
            Err(error) => warn!(error = %error, "checking whether the store writes again failed"),
        }
    }
}

/// A target's running dispatcher.
struct Dispatcher {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Every endpoint's place in its schedule: the rules in [`Scheduler`], the
/// waiting and the running here. One timer wheel holds all the waits, and a
/// poll is a task only while it runs: a waiting endpoint costs its slot,
/// not a sleeping task with its own timer and cancel token.
#[derive(Default)]
struct Polls {
    schedule: Scheduler<PollState>,
    /// The waiting endpoints, by name, each at its next poll.
    wheel: DelayQueue<Arc<str>>,
    /// Each waiting endpoint's entry in the wheel.
    keys: HashMap<Arc<str>, delay_queue::Key>,
    running: JoinSet<Polled>,
    /// The endpoint of each running poll, to find it again if it panicked.
    names: HashMap<task::Id, Arc<str>>,
    /// How to cancel each running poll.
    cancels: HashMap<Arc<str>, CancellationToken>,
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
    delivery_clients: Arc<crate::fetch::Clients>,
    config: Arc<Config>,
    polls: Polls,
    targets: HashMap<String, Dispatcher>,
    /// How many times [`Running::apply`] ran: 0 until start-up is done.
    reloads: u64,
    /// In a cluster: the shards whose endpoints are polled here.
    held: Option<Held>,
    /// The whole config, of which `config` is the held shards' part.
    source: watch::Sender<Arc<Config>>,
    /// Shard changes answered once these polls (of endpoints no longer
    /// held) have ended.
    releasing: Vec<(std::collections::HashSet<Arc<str>>, oneshot::Sender<()>)>,
}

/// With `[cluster] nats`: the node that holds this instance's shards,
/// stopped (by the token) only after the polls are.
fn start_node(
    config: &Config,
    shared: &Shared,
    running: &Running,
) -> Option<(CancellationToken, JoinHandle<()>)> {
    let (Some(nats), Some(home)) = (config.cluster.nats.clone(), config.cluster.shard) else {
        return None;
    };
    let stop = CancellationToken::new();
    let node = cluster::node::Node {
        nats,
        home,
        store: shared.store.clone(),
        config: running.source.subscribe(),
        control: shared.control.clone(),
        shutdown: stop.clone(),
    };
    let span = info_span!("cluster", shard = %home);
    Some((
        stop,
        tokio::spawn(cluster::node::run(node).instrument(span)),
    ))
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
                let summary = self.apply(config, true);
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

    /// Polls the endpoints of `shards` from now on, through the same path
    /// as a reload of the config as it was.
    /// Answers `reply` once no poll of an endpoint left out is running, so
    /// that a shard given up is no longer polled here when it is let go.
    fn hold(&mut self, shards: std::collections::BTreeSet<u32>, reply: oneshot::Sender<()>) {
        let Some(held) = &mut self.held else {
            let _ = reply.send(());
            return;
        };
        held.shards = shards;
        let config = Config::clone(&self.source.borrow());
        let summary = self.apply(config, false);
        info!(%summary, "shards changed");
        let still: std::collections::HashSet<Arc<str>> = self
            .polls
            .cancels
            .keys()
            .filter(|name| self.config.endpoint(name).is_none())
            .cloned()
            .collect();
        match still.is_empty() {
            true => {
                let _ = reply.send(());
            }
            false => self.releasing.push((still, reply)),
        }
    }

    /// Makes the running tasks match `config` (of which it keeps the held
    /// shards' endpoints): the one path for start-up, reload and a change
    /// of shards (not the `operator`'s: no warnings again, no resumes).
    /// Returns a summary of what changed.
    fn apply(&mut self, config: Config, operator: bool) -> String {
        if operator {
            for warning in &config.warnings {
                warn!("{warning}");
            }
        }
        self.source.send_replace(Arc::new(config.clone()));
        let config = match &self.held {
            Some(held) => held.restrict(config),
            None => config,
        };
        *crate::locks::write(&self.shared.cluster) = ClusterView::new(&config, self.held.as_ref());
        self.shared
            .metrics
            .show_shards(&crate::locks::read(&self.shared.cluster));
        let reloading = self.reloads > 0;
        let diff = match reloading {
            true => ConfigDiff::new(&self.config, &config),
            false => ConfigDiff::start(&config),
        };
        for key in &diff.restart_only {
            warn!(key, "`{key}` changed: it takes effect at the next restart");
        }

        for name in &diff.targets.removed {
            let Some(task) = self.targets.remove(name) else {
                continue;
            };
            task.cancel.cancel();
            self.shared.wakes.remove(name);
            let queued = self
                .shared
                .store
                .outbox_rows(name)
                .map(|rows| rows.len())
                .unwrap_or(0);
            if queued > 0 {
                warn!(target = %name, queued, "target removed from the config; its queued webhooks stay in the store");
            }
        }
        let targets = &diff.targets;
        for target in targets
            .added
            .iter()
            .chain(&targets.changed)
            .chain(&targets.unchanged)
        {
            // A reload is an operator's word that a paused target may go on.
            if reloading && operator && matches!(self.shared.store.resume(&target.name), Ok(true)) {
                info!(target = %target.name, "target resumed by the reload");
            }
        }
        for target in &targets.unchanged {
            self.shared.wakes.wake(&target.name);
        }
        for target in targets.added.iter().chain(&targets.changed) {
            let previous = self.targets.remove(&target.name).map(|task| {
                task.cancel.cancel();
                task.handle
            });
            let task = self.spawn_target(target.clone(), previous);
            self.targets.insert(target.name.clone(), task);
        }

        let paused = match diff.endpoints.added.is_empty() {
            true => HashMap::new(),
            false => self.shared.store.paused_endpoints().unwrap_or_else(|error| {
                warn!(error = %crate::error_chain(&error), "cannot read which endpoints are paused; they are polled");
                HashMap::new()
            }),
        };
        {
            let mut statuses = write(&self.shared.endpoints);
            for name in &diff.endpoints.removed {
                statuses.remove(name.as_str());
            }
            for endpoint in diff.endpoints.added.iter().chain(&diff.endpoints.changed) {
                statuses
                    .entry(endpoint.name.clone())
                    .and_modify(|status| status.endpoint = endpoint.clone())
                    .or_insert_with(|| EndpointStatus {
                        paused_since_ms: paused.get(&*endpoint.name).copied(),
                        ..EndpointStatus::new(endpoint.clone())
                    });
            }
            if !diff.endpoints.added.is_empty() {
                // Inserted one at a time, a B-tree's nodes are left half
                // full; built from its entries in order, they are full.
                *statuses = std::mem::take(&mut *statuses).into_iter().collect();
            }
        }
        // Room for one wait per endpoint at once: grown one insert at a time,
        // the timer wheel's storage doubled past them (at 10,000 endpoints,
        // 0.4 MiB never used).
        let waits = config
            .endpoints
            .len()
            .saturating_sub(self.polls.wheel.len());
        self.polls.wheel.reserve(waits);
        self.polls.keys.reserve(waits);
        let shared = self.shared.clone();
        let actions = self.polls.schedule.apply(
            &diff.endpoints,
            |endpoint| first_poll(&shared, endpoint),
            |endpoint| PollState::load(&shared.store, endpoint),
            |endpoint| paused.contains_key(&*endpoint.name),
        );
        self.act(actions);

        let (endpoints_started, endpoints_stopped, endpoints_restarted) = diff.endpoints.counts();
        let (targets_started, targets_stopped, targets_restarted) = diff.targets.counts();
        self.config = Arc::new(config);
        self.reloads += 1;
        format!(
            "{} started, {} stopped, {} restarted",
            endpoints_started + targets_started,
            endpoints_stopped + targets_stopped,
            endpoints_restarted + targets_restarted
        )
    }

    /// Starts a dispatcher; a restarted one waits for its predecessor, so a
    /// row is never in two attempts at once.
    fn spawn_target(&self, target: Arc<Target>, previous: Option<JoinHandle<()>>) -> Dispatcher {
        let cancel = self.shutdown.child_token();
        let wake = self.shared.wakes.insert(&target.name);
        let dispatch = deliver::Dispatch {
            store: self.shared.store.clone(),
            clients: self.delivery_clients.clone(),
            metrics: self.shared.metrics.clone(),
            grace: self.config.shutdown_grace,
            wakes: self.shared.wakes.clone(),
        };
        let dispatcher = deliver::run_target(
            dispatch,
            target.clone(),
            wake,
            cancel.clone(),
            deliver::Until::Shutdown,
        );
        let span = info_span!("target", target = %target.name);
        let handle = self.tracker.spawn(
            async move {
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                let _delivered = dispatcher.await;
            }
            .instrument(span),
        );
        Dispatcher { cancel, handle }
    }

    /// Does what the schedule decided.
    fn act(&mut self, actions: Vec<Action<PollState>>) {
        let polls = &mut self.polls;
        for action in actions {
            match action {
                Action::Wait { name, due } => {
                    show_next_poll(&self.shared, &name, due);
                    let deadline = wheel_deadline(due);
                    match polls.keys.get(&name) {
                        Some(key) => polls.wheel.reset_at(key, deadline),
                        None => {
                            let key = polls.wheel.insert_at(name.clone(), deadline);
                            polls.keys.insert(name, key);
                        }
                    }
                }
                Action::Unwait { name } => {
                    if let Some(key) = polls.keys.remove(&name) {
                        polls.wheel.remove(&key);
                    }
                }
                Action::Start {
                    endpoint,
                    due,
                    state,
                } => {
                    let name = endpoint.name.clone();
                    let cancel = self.shutdown.child_token();
                    let span = info_span!("endpoint", endpoint = %name);
                    let poll = poll_task(self.shared.clone(), endpoint, state, due, cancel.clone());
                    let handle = polls
                        .running
                        .spawn(self.tracker.track_future(poll.instrument(span)));
                    polls.names.insert(handle.id(), name.clone());
                    polls.cancels.insert(name, cancel);
                }
                Action::Cancel { name } => {
                    if let Some(cancel) = polls.cancels.get(&name) {
                        cancel.cancel();
                    }
                }
            }
        }
    }

    /// An endpoint's wait is over: its poll starts as a task of its own.
    fn start_poll(&mut self, name: Arc<str>) {
        // The wheel has given up the entry.
        self.polls.keys.remove(&name);
        let actions = self.polls.schedule.due(&name, Instant::now());
        self.act(actions);
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
        self.polls.cancels.remove(&name);
        self.releasing.retain_mut(|(names, _)| {
            names.remove(&name);
            !names.is_empty()
        });
        // A dropped answer is an answer too: the node waits for either.
        let now = Instant::now();
        let shared = &self.shared;
        let outcome = |endpoint: &Arc<Endpoint>| match polled {
            Some(Polled { state, next }) => (state, next),
            None => {
                error!(endpoint = %name, "a poll panicked; the endpoint goes on after a pause");
                let next = later(now, endpoint.schedule.next_delay(clock::now()));
                (PollState::load(&shared.store, endpoint), next)
            }
        };
        let actions = self
            .polls
            .schedule
            .ended(&name, outcome, now, |endpoint| first_poll(shared, endpoint));
        self.act(actions);
    }

    /// Polls an endpoint now, or right after the poll it is running.
    fn poll_now(&mut self, name: &str) {
        let (_, actions) = self.polls.schedule.poll_now(name, Instant::now());
        self.act(actions);
    }

    fn pause(&mut self, name: &str) {
        let (_, actions) = self.polls.schedule.pause(name);
        self.act(actions);
    }

    fn resume(&mut self, name: &str) {
        let shared = &self.shared;
        let (_, actions) = self
            .polls
            .schedule
            .resume(name, |endpoint| first_poll(shared, endpoint));
        self.act(actions);
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

/// When a new or changed endpoint polls first: on its grid from its last
/// poll, this run's or (after a restart) the store's.
fn first_poll(shared: &Shared, endpoint: &Endpoint) -> Instant {
    let last_ms = crate::status::read(&shared.endpoints)
        .get(&endpoint.name)
        .and_then(|status| status.last_poll_ms)
        .or_else(|| shared.store.last_poll_ms(&endpoint.name).ok().flatten());
    let last = last_ms.map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms));
    later(
        Instant::now(),
        endpoint.schedule.resume_delay(last, clock::now()),
    )
}

/// Stores every endpoint's last poll, so that a restart resumes the
/// schedules (best effort: without it, the first polls are spread).
fn checkpoint_polls(shared: &Shared) {
    let statuses = crate::status::read(&shared.endpoints);
    let polls = statuses
        .iter()
        .filter_map(|(name, status)| Some((&**name, status.last_poll_ms?)));
    if let Err(error) = shared.store.record_polls(polls) {
        warn!(error = %crate::error_chain(&error), "cannot store when endpoints last polled");
    }
}

/// `due`, or as far ahead as the timer wheel reaches.
fn wheel_deadline(due: Instant) -> Instant {
    due.min(Instant::now() + LONGEST_WAIT)
}

/// One poll of an endpoint that was `due`, and what follows from it:
/// metrics, status, announcing its events, and when the next poll is. A
/// failed poll is logged and retried with backoff.
async fn poll_task(
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint>,
    mut state: PollState,
    due: Instant,
    cancel: CancellationToken,
) -> Polled {
    let started = StdInstant::now();
    let report = shared
        .poller
        .poll(&endpoint, &mut state, Mode::Commit, &cancel)
        .await;
    shared
        .metrics
        .poll_duration
        .observe(started.elapsed().as_secs_f64());
    announce(&shared, &endpoint, &report.events, report.queued);
    let now = Instant::now();
    // Keep to the grid (no drift), but never try to catch up.
    let regular = || match &endpoint.schedule {
        Schedule::Every(interval) => (due + *interval).max(now),
        Schedule::Cron(_) => later(now, endpoint.schedule.next_delay(clock::now())),
    };
    let next = match &report.outcome {
        Outcome::Observed(observation) => {
            let result = log_observation(observation, report.queued);
            set_status(&shared, &endpoint.name, |status| {
                let at_ms = clock::now_ms();
                status.counts.polled(result, at_ms);
                status.last_poll_ms = Some(at_ms);
                status.last_error = None;
                status.last_warning.clone_from(&report.warning);
                status.consecutive_failures = 0;
                if let Some(answer) = &report.answer {
                    for (name, why) in status.counts.watched_mut().answered(answer) {
                        warn!(metric = %name, why = %why, "a `metrics` value is not a number, so it is not exported");
                    }
                }
            });
            regular()
        }
        // Cancelled while polling: whoever cancelled decides what is next.
        Outcome::Cancelled => now,
        Outcome::Failed(error) => {
            let error_text = crate::error_chain(error);
            let (answered, retry_after) = match error {
                poll::PollError::Fetch(crate::fetch::FetchError::Status {
                    status,
                    retry_after,
                }) => (Some(*status), *retry_after),
                _ => (None, None),
            };
            let failures = report.failures;
            let next = match report.retry_in {
                Some(wait) => later(now, wait),
                None => match retry_after {
                    None => regular(),
                    Some(asked) => {
                        regular().max(later(now, endpoint.schedule.held_back(asked, clock::now())))
                    }
                },
            };
            let retry_in = next.saturating_duration_since(now);
            warn!(
                error = %error_text,
                failures,
                retry_in = %humantime::format_duration(Duration::from_millis(retry_in.as_millis() as u64)),
                quick = report.retry_in.is_some(),
                "poll failed"
            );
            set_status(&shared, &endpoint.name, |status| {
                let at_ms = clock::now_ms();
                status.counts.polled(PollResult::Failed, at_ms);
                status.last_poll_ms = Some(at_ms);
                status.last_error = Some(error_text);
                status.last_warning = None;
                status.consecutive_failures = failures;
                if let Some(answered) = answered {
                    status.counts.watched_mut().failed(answered);
                }
            });
            next
        }
    };
    Polled { state, next }
}

/// Logs what a successful poll found, and says what it came to.
fn log_observation(observation: &Observation, queued: usize) -> PollResult {
    match observation {
        Observation::Unchanged { .. } => PollResult::Unchanged,
        Observation::New {
            reason, snapshot, ..
        } => match reason {
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
        },
        Observation::Advanced {
            first: true, state, ..
        } => {
            info!(cursor = state.cursor.as_deref(), queued, "cursor set");
            PollResult::Baseline
        }
        Observation::Advanced { state, events, .. } => {
            info!(cursor = state.cursor.as_deref(), queued, "new items");
            match events.is_empty() {
                true => PollResult::Unchanged,
                false => PollResult::Changed,
            }
        }
    }
}

fn set_status(shared: &Shared, endpoint: &str, change: impl FnOnce(&mut EndpointStatus)) {
    if let Some(status) = write(&shared.endpoints).get_mut(endpoint) {
        change(status);
    }
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
        shared.wakes.wake_targets_of(endpoint);
    }
}

/// Where a running daemon's admin API can be reached, from its state dir.
pub fn admin_address_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join(crate::admin::ADDRESS_FILE)
}
