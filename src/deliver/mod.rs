//! Delivering outbox rows to targets.
//!
//! One dispatcher task per target reads only from the outbox, signs each
//! row with a fresh timestamp, POSTs it (or publishes it to an MQTT broker,
//! see [`mqtt`]), and removes it only after a 2xx (or a PUBACK);
//! a failure reschedules it, an exhausted schedule moves it to the dead
//! letters, a 410 pauses the target. A row is never in two attempts at once.
//! A row is written in its target's format ([`format`](mod@format)) just
//! before it is sent; one that cannot be is dead-lettered at once.
//! A row whose attempt's result cannot be written (a full disk) is held
//! back in memory for a while, since the store still says it is due.
//! An `smtp://` or `smtps://` target gets email instead ([`email`]), a
//! `nats://` or `tls://` one a JetStream publish ([`nats`]).
//! A target's failing attempts and dead letters become events for the other
//! targets that take them ([`health`]).

pub mod email;
pub mod format;
pub mod health;
pub mod mqtt;
pub mod nats;
pub mod retry;
pub mod sign;
pub mod subject;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock;
use crate::config::{Target, TargetKind};
use crate::event::{self, Event};
use crate::fetch::Clients;
use crate::metrics::Metrics;
use crate::status::Wakes;
use crate::store::{
    AttemptRecord, Fate, OutboxKey, OutboxRow, Pause, RESPONSE_KEEP, Store, StoreError,
};
use health::{Announce, Outcome, TargetHealth};
use retry::RetryAction;

/// The clients deliveries share: one, and one per target with a proxy or
/// TLS settings of its own. Redirects are not followed: a 3xx is a failed
/// delivery, as the Standard Webhooks guidance says.
pub fn clients() -> Result<Arc<Clients>, reqwest::Error> {
    Clients::new(|| {
        reqwest::Client::builder()
            .user_agent(concat!("pollhook/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
    })
    .map(Arc::new)
}

/// What one POST returned.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at_ms: u64,
    /// The HTTP status; none when no response came (timeout, refused).
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    /// The first bytes of the response body.
    pub response: String,
    pub error: Option<String>,
    pub duration: Duration,
    /// The row could not be written in the target's format, so nothing was
    /// sent: retrying cannot help, the row goes to the dead letters (a
    /// replay after the config is fixed sends it).
    pub unsendable: bool,
    /// The receiver acknowledged it without an HTTP status (an MQTT PUBACK).
    pub acknowledged: bool,
}

/// How a dispatcher reaches its target; clones share the connection.
#[derive(Clone)]
pub enum Link {
    Http(Arc<Clients>),
    Mqtt(mqtt::Connection),
    /// A connection to the mail server per attempt (see [`email`]).
    Email(Box<crate::config::Email>),
    /// A connection of the target's own to its NATS server (see [`nats`]).
    Nats(nats::Connection),
}

impl Link {
    /// The way to `target`: the shared HTTP clients, a connection of the
    /// target's own to its MQTT broker, which speaks for the daemon when
    /// given the store (see [`mqtt`]), or its mail server.
    pub fn open(clients: &Arc<Clients>, target: &Arc<Target>, store: Option<Arc<Store>>) -> Link {
        match &target.kind {
            TargetKind::Http => Link::Http(clients.clone()),
            TargetKind::Mqtt(mqtt) => {
                Link::Mqtt(mqtt::Connection::open(target.clone(), mqtt, store))
            }
            TargetKind::Email(email) => Link::Email(email.clone()),
            TargetKind::Nats(target) => Link::Nats(nats::Connection::open(target)),
        }
    }

    /// Sends one row to its target.
    pub async fn attempt(&self, target: &Target, row: &OutboxRow) -> Attempt {
        match self {
            Link::Http(clients) => attempt(clients, target, row).await,
            Link::Mqtt(connection) => connection.attempt(row).await,
            Link::Email(email) => email::attempt(target, email, row).await,
            Link::Nats(connection) => connection.attempt(target, row).await,
        }
    }

    /// Ends a connection of the target's own, saying goodbye.
    pub async fn close(&self) {
        if let Link::Mqtt(connection) = self {
            connection.close().await;
        }
    }
}

impl Attempt {
    /// An attempt starting now, with nothing back yet.
    pub(crate) fn starting() -> Attempt {
        Attempt {
            at_ms: clock::now_ms(),
            status: None,
            retry_after: None,
            response: String::new(),
            error: None,
            duration: Duration::ZERO,
            unsendable: false,
            acknowledged: false,
        }
    }
}

/// Sends one row to a webhook, as an HTTP request signed with a fresh
/// timestamp.
async fn attempt(clients: &Clients, target: &Target, row: &OutboxRow) -> Attempt {
    let started = Instant::now();
    let mut attempt = Attempt::starting();
    let timestamp = attempt.at_ms / 1000;
    let rendered = match format::render(&target.format, &row.body) {
        Ok(rendered) => rendered,
        Err(error) => {
            attempt.error = Some(format!(
                "cannot write the event as `format = \"{}\"`: {error}",
                target.format.name()
            ));
            attempt.unsendable = true;
            attempt.duration = started.elapsed();
            return attempt;
        }
    };
    let client = match clients.get(target.transport.as_deref()) {
        Ok(client) => client,
        Err(error) => {
            // Retried: the file may be back at the next attempt.
            attempt.error = Some(error);
            attempt.duration = started.elapsed();
            return attempt;
        }
    };
    let mut request = client
        .request(
            target.method.clone(),
            event_url(target.url.url(), &row.event_id),
        )
        .timeout(target.timeout)
        .header(CONTENT_TYPE, &rendered.content_type)
        .header("webhook-id", &row.event_id)
        .header("webhook-timestamp", timestamp.to_string());
    for (name, value) in &rendered.headers {
        request = request.header(*name, value);
    }
    // After the format's: the user's own win (ntfy's `Priority`, say).
    request = request.headers(target.headers.clone());
    if let Some(auth) = &target.auth {
        match auth.header() {
            Ok(header) => request = request.header(reqwest::header::AUTHORIZATION, header),
            Err(error) => {
                // Retried: the file may be there at the next attempt.
                attempt.error = Some(format!("cannot send `auth`: {error}"));
                attempt.duration = started.elapsed();
                return attempt;
            }
        }
    }
    if !target.secrets.is_empty() {
        // The signature covers the bytes sent, whatever the format.
        let signature =
            sign::signature_header(&target.secrets, &row.event_id, timestamp, &rendered.body);
        request = request.header("webhook-signature", signature);
    }
    let describe = |error: reqwest::Error| {
        if error.is_timeout() {
            format!(
                "timed out after {}",
                humantime::format_duration(target.timeout)
            )
        } else {
            crate::error_chain(&error.without_url())
        }
    };
    match request.body(rendered.body).send().await {
        Ok(mut response) => {
            let status = response.status();
            attempt.status = Some(status.as_u16());
            attempt.retry_after = crate::fetch::retry_after(response.headers());
            if !status.is_success() {
                attempt.error = Some(format!("HTTP status {}", status.as_u16()));
            }
            // Keep the start of the answer for the attempt log; the rest is dropped.
            let mut kept = Vec::new();
            while kept.len() < RESPONSE_KEEP {
                match response.chunk().await {
                    Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(error) => {
                        attempt.error.get_or_insert_with(|| describe(error));
                        break;
                    }
                }
            }
            kept.truncate(RESPONSE_KEEP);
            attempt.response = String::from_utf8_lossy(&kept).into_owned();
        }
        Err(error) => attempt.error = Some(describe(error)),
    }
    attempt.duration = started.elapsed();
    attempt
}

/// The URL one event goes to: `{event_id}` in the target's URL becomes the
/// event's id, the same at every attempt, so a receiver that keys requests
/// by their URL (Matrix's transaction ids) drops a repeat.
fn event_url(url: &url::Url, event_id: &str) -> url::Url {
    const PLACEHOLDER: &str = "{event_id}";
    // The path keeps the braces percent-encoded, the query as written.
    const ENCODED: &str = "%7Bevent_id%7D";
    let text = url.as_str();
    if !text.contains(PLACEHOLDER) && !text.contains(ENCODED) {
        return url.clone();
    }
    let replaced = text
        .replace(PLACEHOLDER, event_id)
        .replace(ENCODED, event_id);
    url::Url::parse(&replaced).unwrap_or_else(|_| url.clone())
}

/// The rows that tell `target`'s watchers (the other targets that take
/// them) about `event`: each row for one watcher taking its type.
fn watcher_rows<'t>(
    target: &'t Target,
    event: &Event,
    endpoint: &str,
) -> Vec<(&'t str, OutboxRow)> {
    let now_ms = clock::now_ms();
    target
        .watchers
        .iter()
        .filter(|watcher| watcher.events.contains(event.kind))
        .map(|watcher| {
            (
                watcher.target.as_str(),
                OutboxRow {
                    event_id: event.id.clone(),
                    event_type: event.kind.to_string(),
                    endpoint: endpoint.to_string(),
                    body: event.body(),
                    created_ms: now_ms,
                    next_attempt_ms: now_ms,
                    ..OutboxRow::default()
                },
            )
        })
        .collect()
}

/// Applies an attempt's outcome to its row and the attempt log, and says
/// what was decided.
fn record(
    store: &Store,
    metrics: &Metrics,
    target: &Target,
    key: &OutboxKey,
    mut row: OutboxRow,
    attempt: &Attempt,
) -> Result<RetryAction, StoreError> {
    let was_due_ms = row.next_attempt_ms;
    row.attempts += 1;
    let action = if attempt.unsendable {
        RetryAction::Dead
    } else if attempt.acknowledged {
        RetryAction::Success
    } else {
        retry::decide(
            attempt.status,
            attempt.retry_after,
            row.attempts,
            &target.retry,
        )
    };
    let next_attempt_ms = match action {
        RetryAction::Retry(wait) => Some(clock::now_ms().saturating_add(wait.as_millis() as u64)),
        RetryAction::Success | RetryAction::Dead | RetryAction::Pause => None,
    };
    let record = AttemptRecord {
        event_id: row.event_id.clone(),
        attempt: row.attempts,
        at_ms: attempt.at_ms,
        status: attempt.status,
        duration_ms: attempt.duration.as_millis() as u64,
        response: attempt.response.clone(),
        error: attempt.error.clone(),
        next_attempt_ms,
    };
    row.last_status = attempt.status;
    row.last_error = attempt.error.clone();
    row.attempt_log.push(record.clone());
    let error_text = attempt.error.as_deref().unwrap_or("unknown");
    let result = match action {
        RetryAction::Success => "delivered",
        RetryAction::Retry(_) => "failed",
        RetryAction::Dead => "dead",
        RetryAction::Pause => "paused",
    };
    metrics.delivery(&target.name, result);
    // Decided first, then written in one transaction with the attempt.
    let pause;
    let fate = match action {
        RetryAction::Success => Fate::Delivered,
        RetryAction::Retry(_) => {
            row.next_attempt_ms = next_attempt_ms.unwrap_or_default();
            Fate::Rescheduled(&row)
        }
        RetryAction::Dead => {
            row.dead_at_ms = Some(clock::now_ms());
            Fate::Dead(&row)
        }
        RetryAction::Pause => {
            // The row waits, due at once, for the target to be resumed.
            row.next_attempt_ms = clock::now_ms();
            pause = Pause {
                since_ms: clock::now_ms(),
                reason: format!("answered 410 Gone to event {}", row.event_id),
            };
            Fate::Paused(&row, &pause)
        }
    };
    store.settle(key, was_due_ms, fate, Some(&record))?;
    match action {
        RetryAction::Success => info!(
            target = %target.name, event_id = %row.event_id, endpoint = %row.endpoint,
            status = attempt.status, attempts = row.attempts, "delivered"
        ),
        RetryAction::Retry(wait) => warn!(
            target = %target.name, event_id = %row.event_id, attempts = row.attempts, error = error_text,
            retry_in = %humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
            "delivery failed"
        ),
        RetryAction::Dead => {
            let why = if attempt.unsendable {
                "it cannot be written in the target's format"
            } else {
                "every attempt failed"
            };
            error!(
                target = %target.name, event_id = %row.event_id, endpoint = %row.endpoint,
                attempts = row.attempts, error = error_text,
                "event.dead: {why}; kept as a dead letter (`pollhook replay {}`)", row.event_id
            );
        }
        RetryAction::Pause => error!(
            target = %target.name, event_id = %row.event_id,
            "target answered 410 Gone: paused, its events stay queued; run `pollhook resume {}` to deliver again",
            target.name
        ),
    }
    Ok(action)
}

/// A running attempt's result: the row it was for, and what came back.
type Finished = (OutboxKey, OutboxRow, Attempt);

/// What `event.dead` says of a row, kept from before the row is recorded.
struct DeadRow {
    event_id: String,
    event_type: String,
    endpoint: String,
    /// Before the last.
    attempts: u32,
}

impl DeadRow {
    fn of(row: &OutboxRow) -> DeadRow {
        DeadRow {
            event_id: row.event_id.clone(),
            event_type: row.event_type.clone(),
            endpoint: row.endpoint.clone(),
            attempts: row.attempts,
        }
    }
}

/// The dispatcher of one target.
struct TargetTask {
    store: Arc<Store>,
    link: Link,
    target: Arc<Target>,
    metrics: Arc<Metrics>,
    /// The other dispatchers, woken for the health events queued for them.
    wakes: Arc<Wakes>,
    /// For `target.failing` and `target.recovered`.
    health: TargetHealth,
    /// The row each running attempt works on, by task.
    in_flight: HashMap<tokio::task::Id, OutboxKey>,
    attempts: JoinSet<Finished>,
    /// When the last attempt started, for the `rate` cap.
    last_start: Option<Instant>,
    paused: bool,
    /// Rows delivered since the dispatcher started.
    delivered: usize,
    /// Rows whose attempt's result could not be written (a full disk):
    /// the store still says they are due, and without this they would be
    /// sent again at once, over and over. Released when the store writes
    /// again, or when their record is written.
    held: HashMap<OutboxKey, Held>,
}

/// A row held back, and for how long.
#[derive(Debug, Clone, Copy)]
struct Held {
    until: Instant,
    /// Results not written in a row.
    failures: u32,
    /// [`Store::recoveries`] when it was held.
    recoveries: u64,
}

/// How long a row waits after its result could not be written for the
/// `failures`th time in a row: 1 s, doubling, at most a minute.
fn hold_for(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    (Duration::from_secs(1) * 2u32.pow(doublings)).min(Duration::from_secs(60))
}

/// How long a dispatcher runs.
#[derive(Debug, Clone)]
pub enum Until {
    /// Until shutdown: the daemon's.
    Shutdown,
    /// Once the token is cancelled (no more rows will come), until no row
    /// is due any more and no attempt is in flight (rows whose retry is not
    /// due yet stay queued): `pollhook once --send`, whose dispatchers
    /// deliver while its later polls still run.
    Drained(CancellationToken),
}

/// What every target's dispatcher works with.
#[derive(Clone)]
pub struct Dispatch {
    pub store: Arc<Store>,
    pub clients: Arc<Clients>,
    pub metrics: Arc<Metrics>,
    /// How long attempts in flight may finish once the dispatcher stops.
    pub grace: Duration,
    /// Every running dispatcher's wake: a target's health events are
    /// queued for the others.
    pub wakes: Arc<Wakes>,
}

/// Runs the dispatcher of one target until `shutdown` (or, with
/// [`Until::Drained`], until nothing is due once no more rows come), then lets the attempts in
/// flight finish for up to `grace`. Rows not delivered stay in the outbox
/// for the next start. `wake` says rows were queued or the target resumed.
/// Returns how many rows were delivered.
pub async fn run_target(
    dispatch: Dispatch,
    target: Arc<Target>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    until: Until,
) -> usize {
    let Dispatch {
        store,
        clients,
        metrics,
        grace,
        wakes,
    } = dispatch;
    let paused = match store.paused(&target.name) {
        Ok(pause) => pause,
        Err(error) => {
            warn!(target = %target.name, error = %crate::error_chain(&error), "cannot read the pause state; assuming paused");
            Some(Pause {
                since_ms: 0,
                reason: "unknown".into(),
            })
        }
    };
    if let Some(pause) = &paused {
        error!(
            target = %target.name, reason = %pause.reason,
            "target is paused: its events stay queued; run `pollhook resume {}` to deliver again", target.name
        );
    }
    let failing = match store.target_failing(&target.name) {
        Ok(failing) => failing,
        Err(error) => {
            // At worst a `target.failing` sent twice, or a recovery unsaid.
            warn!(target = %target.name, error = %crate::error_chain(&error), "cannot read the target's health; assuming healthy");
            None
        }
    };
    let link = Link::open(&clients, &target, Some(store.clone()));
    let mut task = TargetTask {
        store,
        link,
        target,
        metrics,
        wakes,
        health: TargetHealth::new(failing),
        in_flight: HashMap::new(),
        attempts: JoinSet::new(),
        last_start: None,
        paused: paused.is_some(),
        delivered: 0,
        held: HashMap::new(),
    };
    loop {
        if task.paused {
            // `resume` (CLI, admin API or reload) clears the flag and wakes us.
            task.paused = !matches!(task.store.paused(&task.target.name), Ok(None));
            if !task.paused {
                info!(target = %task.target.name, "target resumed");
            }
        }
        let (wake_at, due_now) = if task.paused {
            (None, false)
        } else {
            match task.start_due() {
                Ok(next) => next,
                Err(error) => {
                    warn!(target = %task.target.name, error = %crate::error_chain(&error), "cannot read the outbox");
                    (Some(Instant::now() + Duration::from_secs(1)), false)
                }
            }
        };
        let no_more = match &until {
            Until::Drained(no_more) => Some(no_more),
            Until::Shutdown => None,
        };
        let waiting_for_rows = no_more.is_some_and(|no_more| !no_more.is_cancelled());
        if no_more.is_some() && !waiting_for_rows && !due_now && task.attempts.is_empty() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = async { no_more.expect("waiting for rows").cancelled().await }, if waiting_for_rows => {}
            _ = tokio::time::sleep_until(wake_at.unwrap_or_else(far_future)), if wake_at.is_some() => {}
            Some(done) = task.attempts.join_next_with_id() => task.finish(done).await,
        }
    }
    if !task.attempts.is_empty() {
        debug!(target = %task.target.name, in_flight = task.attempts.len(), "waiting for deliveries in flight");
    }
    let drain = async {
        while let Some(done) = task.attempts.join_next_with_id().await {
            task.finish(done).await;
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        warn!(target = %task.target.name, "deliveries still in flight after the grace period; they stay queued");
    }
    task.link.close().await;
    task.delivered
}

/// Runs a dispatcher for each target at once, each woken through `wakes`
/// when rows are queued for it, until `no_more` is cancelled and nothing is
/// due; returns how many rows each delivered.
pub async fn drain(
    dispatch: &Dispatch,
    targets: &[Arc<Target>],
    wakes: &Wakes,
    no_more: CancellationToken,
) -> Vec<usize> {
    let never = CancellationToken::new();
    let dispatchers = targets.iter().map(|target| {
        run_target(
            dispatch.clone(),
            target.clone(),
            wakes.insert(&target.name),
            never.clone(),
            Until::Drained(no_more.clone()),
        )
    });
    futures_util::future::join_all(dispatchers).await
}

/// Moves `wake_at` earlier to `at` if `at` is sooner.
fn no_later(wake_at: &mut Option<Instant>, at: Instant) {
    *wake_at = Some(wake_at.map_or(at, |current| current.min(at)));
}

/// The longest a dispatcher sleeps without looking again.
const FAR_AHEAD: Duration = Duration::from_secs(86400 * 365);

fn far_future() -> Instant {
    Instant::now() + FAR_AHEAD
}

impl TargetTask {
    /// Starts attempts for due rows, within `parallel`, `rate` and, for
    /// ordered targets, only the head of the queue. Returns when to look
    /// again if nothing else wakes the loop first, and whether a row was due
    /// now (started, or held back by `parallel` or `rate`).
    fn start_due(&mut self) -> Result<(Option<Instant>, bool), StoreError> {
        let now_ms = clock::now_ms();
        let now = Instant::now();
        // Once the store writes again, what it could not write is retried.
        let recoveries = self.store.recoveries();
        self.held.retain(|_, held| held.recoveries == recoveries);
        let held_until = self
            .held
            .values()
            .map(|held| held.until)
            .filter(|until| *until > now)
            .min();
        let busy = |key: &OutboxKey| {
            self.in_flight.values().any(|running| running == key)
                || self.held.get(key).is_some_and(|held| held.until > now)
        };
        let (due, next_ms) = if self.target.ordered {
            // Strict FIFO: nothing behind the head is looked at.
            match self.store.head_row(&self.target.name)? {
                Some((key, _)) if busy(&key) => (Vec::new(), None),
                Some((_, row)) if row.next_attempt_ms > now_ms => {
                    (Vec::new(), Some(row.next_attempt_ms))
                }
                head => (head.into_iter().collect(), None),
            }
        } else {
            let free = self.target.parallel.saturating_sub(self.in_flight.len());
            self.store.due_rows(&self.target.name, now_ms, free, busy)?
        };
        // Capped: a garbage due time must not overflow the clock.
        let mut wake_at = next_ms.map(|due_ms| {
            now + Duration::from_millis(due_ms.saturating_sub(now_ms)).min(FAR_AHEAD)
        });
        if let Some(until) = held_until {
            no_later(&mut wake_at, until);
        }
        let due_now = !due.is_empty();
        for (key, row) in due {
            if self.in_flight.len() >= self.target.parallel {
                break; // a finishing attempt wakes the loop
            }
            if let (Some(spacing), Some(last)) = (self.target.min_spacing, self.last_start) {
                let allowed = last + spacing;
                if allowed > Instant::now() {
                    no_later(&mut wake_at, allowed);
                    break;
                }
            }
            self.last_start = Some(Instant::now());
            let link = self.link.clone();
            let target = self.target.clone();
            let running = key.clone();
            let handle = self.attempts.spawn(async move {
                let result = link.attempt(&target, &row).await;
                (key, row, result)
            });
            self.in_flight.insert(handle.id(), running);
        }
        Ok((wake_at, due_now))
    }

    async fn finish(&mut self, done: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        match done {
            Ok((id, (key, row, result))) => {
                self.in_flight.remove(&id);
                let dead = DeadRow::of(&row);
                match record(&self.store, &self.metrics, &self.target, &key, row, &result) {
                    Ok(action) => {
                        self.held.remove(&key);
                        match action {
                            RetryAction::Pause => self.paused = true,
                            RetryAction::Success => self.delivered += 1,
                            RetryAction::Retry(_) => {}
                            RetryAction::Dead => self.announce_dead(dead, &result).await,
                        }
                        self.observe_health(action, &result).await;
                    }
                    Err(error) => {
                        let wait = self.hold(key);
                        warn!(
                            target = %self.target.name, error = %crate::error_chain(&error),
                            retry_in = %humantime::format_duration(wait),
                            "cannot record a delivery attempt"
                        );
                    }
                }
            }
            Err(error) => {
                // The row stays queued as it was and is tried again.
                let key = self.in_flight.remove(&error.id());
                let wait = key.map(|key| self.hold(key)).unwrap_or_default();
                warn!(
                    target = %self.target.name, retry_in = %humantime::format_duration(wait),
                    "a delivery attempt did not finish"
                );
            }
        }
    }

    /// Counts an attempt towards the target's health, and queues
    /// `target.failing` or `target.recovered` for the watchers when due.
    async fn observe_health(&mut self, action: RetryAction, attempt: &Attempt) {
        let target = &self.target;
        if target.watchers.is_empty() || attempt.unsendable {
            // Nobody to tell; or the config's fault, not the receiver's.
            return;
        }
        let outcome = match action {
            RetryAction::Success => Outcome::Delivered,
            _ => Outcome::Failed {
                error: attempt.error.as_deref().unwrap_or("unknown"),
                status: attempt.status,
            },
        };
        let Some(announce) =
            self.health
                .observe(outcome, attempt.at_ms, target.fail_after, target.fail_for)
        else {
            return;
        };
        let now_ms = clock::now_ms();
        let (event, state) = match &announce {
            Announce::Failing(run) => (event::target_failing(&target.name, run, now_ms), Some(run)),
            Announce::Recovered(run) => (event::target_recovered(&target.name, run, now_ms), None),
        };
        let rows = watcher_rows(target, &event, "");
        match self
            .store
            .commit_target_health(&target.name, state, &rows)
            .await
        {
            Ok(_) => {
                self.health.announced(&announce);
                match state {
                    Some(run) => error!(
                        target = %target.name, failures = run.failures, error = %run.error,
                        "{}: its deliveries keep failing", event.kind
                    ),
                    None => info!(target = %target.name, "{}", event.kind),
                }
                self.wake(&rows);
            }
            Err(error) => warn!(
                target = %target.name, error = %crate::error_chain(&error),
                "cannot queue {}; it is tried again at the next attempt", event.kind
            ),
        }
    }

    /// Queues `event.dead` for the watchers of a row just dead-lettered.
    /// Not in the dead-lettering's own transaction: a crash between the two
    /// loses this notice, never the dead letter (`pollhook dead` lists it).
    async fn announce_dead(&self, dead: DeadRow, attempt: &Attempt) {
        let target = &self.target;
        if !target
            .watchers
            .iter()
            .any(|watcher| watcher.events.contains(event::EVENT_DEAD))
        {
            return;
        }
        let letter = event::DeadLetter {
            target: &target.name,
            event_id: &dead.event_id,
            event_type: &dead.event_type,
            endpoint: &dead.endpoint,
            attempts: dead.attempts + 1,
            status: attempt.status,
            error: attempt.error.as_deref(),
        };
        let event = event::event_dead(&letter, clock::now_ms());
        let rows = watcher_rows(target, &event, &dead.endpoint);
        match self.store.queue(&rows).await {
            Ok(_) => self.wake(&rows),
            Err(error) => warn!(
                target = %target.name, event_id = %dead.event_id, error = %crate::error_chain(&error),
                "cannot queue event.dead"
            ),
        }
    }

    fn wake(&self, rows: &[(&str, OutboxRow)]) {
        for (watcher, _) in rows {
            self.wakes.wake(watcher);
        }
    }

    /// Holds a row back from its next attempt, longer each time in a row;
    /// returns for how long.
    fn hold(&mut self, key: OutboxKey) -> Duration {
        let recoveries = self.store.recoveries();
        let failures = self
            .held
            .get(&key)
            .filter(|held| held.recoveries == recoveries)
            .map_or(0, |held| held.failures)
            .saturating_add(1);
        let wait = hold_for(failures);
        self.held.insert(
            key,
            Held {
                until: Instant::now() + wait,
                failures,
                recoveries,
            },
        );
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_in_a_target_url_becomes_the_events() {
        let check = |url: &str, expected: &str| {
            let url = url::Url::parse(url).unwrap();
            assert_eq!(event_url(&url, "msg_1").as_str(), expected);
        };
        check(
            "https://matrix.example.org/_matrix/client/v3/rooms/!r:example.org/send/m.room.message/{event_id}",
            "https://matrix.example.org/_matrix/client/v3/rooms/!r:example.org/send/m.room.message/msg_1",
        );
        check(
            "http://127.0.0.1/hook?id={event_id}",
            "http://127.0.0.1/hook?id=msg_1",
        );
        check("http://127.0.0.1/hook", "http://127.0.0.1/hook");
    }

    #[test]
    fn a_row_whose_result_cannot_be_written_waits_longer_each_time() {
        let waits: Vec<u64> = (1..=9)
            .map(|failures| hold_for(failures).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(hold_for(0), Duration::from_secs(1));
        assert_eq!(hold_for(u32::MAX), Duration::from_secs(60));
    }
}
