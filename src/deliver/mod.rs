//! Delivering outbox rows to targets.
//!
//! One dispatcher task per target reads only from the outbox, signs each
//! row with a fresh timestamp, POSTs it, and removes it only after a 2xx;
//! anything else reschedules it. A row is never in two attempts at once.

pub mod retry;
pub mod sign;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock;
use crate::config::Target;
use crate::store::{OutboxKey, OutboxRow, Store, StoreError};
use retry::RetryAction;

/// The row each running attempt works on, by task.
type InFlight = HashMap<tokio::task::Id, OutboxKey>;

/// Attempts in flight per target at most.
const PARALLEL_PER_TARGET: usize = 4;

/// The client every delivery shares. Redirects are not followed: a 3xx
/// is a failed delivery, as the Standard Webhooks guidance says.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("pollhook/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
}

/// What one POST returned.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The HTTP status; none when no response came (timeout, refused).
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

/// POSTs one row to its target, signed with a fresh timestamp.
pub async fn attempt(client: &reqwest::Client, target: &Target, row: &OutboxRow) -> Attempt {
    let started = Instant::now();
    let timestamp = clock::now_ms() / 1000;
    let mut request = client
        .post(target.url.clone())
        .timeout(target.timeout)
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", &row.event_id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(secret) = &target.secret {
        let signature =
            sign::signature_header([secret], &row.event_id, timestamp, row.body.as_bytes());
        request = request.header("webhook-signature", signature);
    }
    let result = request.body(row.body.clone()).send().await;
    let (status, error) = match result {
        Ok(response) => {
            let status = response.status();
            let error = (!status.is_success()).then(|| format!("HTTP status {}", status.as_u16()));
            (Some(status.as_u16()), error)
        }
        Err(error) if error.is_timeout() => (
            None,
            Some(format!(
                "timed out after {}",
                humantime::format_duration(target.timeout)
            )),
        ),
        Err(error) => (None, Some(crate::error_chain(&error.without_url()))),
    };
    Attempt {
        status,
        error,
        duration: started.elapsed(),
    }
}

/// Applies an attempt's outcome to its row: removed on a 2xx, rescheduled
/// otherwise.
fn record(
    store: &Store,
    target: &Target,
    key: &OutboxKey,
    mut row: OutboxRow,
    attempt: &Attempt,
) -> Result<(), StoreError> {
    row.attempts += 1;
    match retry::classify(attempt.status, row.attempts, &target.retry) {
        RetryAction::Success => {
            store.complete(key)?;
            info!(
                target = %target.name, event_id = %row.event_id, endpoint = %row.endpoint,
                status = attempt.status, attempts = row.attempts, "delivered"
            );
        }
        RetryAction::Retry(wait) => {
            row.next_attempt_ms = clock::now_ms().saturating_add(wait.as_millis() as u64);
            row.last_status = attempt.status;
            row.last_error = attempt.error.clone();
            store.reschedule(key, &row)?;
            warn!(
                target = %target.name, event_id = %row.event_id, attempts = row.attempts,
                error = attempt.error.as_deref().unwrap_or("unknown"),
                retry_in = %humantime::format_duration(Duration::from_secs(wait.as_secs())),
                "delivery failed"
            );
        }
    }
    Ok(())
}

/// Attempts every due row of `target` once, one after another. Used by
/// `pollhook once --send`; the daemon runs [`run_target`] instead.
pub async fn deliver_due(
    store: &Store,
    client: &reqwest::Client,
    target: &Target,
) -> Result<usize, StoreError> {
    let now = clock::now_ms();
    let mut delivered = 0;
    for (key, row) in store.outbox_rows(&target.name)? {
        if row.next_attempt_ms > now {
            continue;
        }
        let result = attempt(client, target, &row).await;
        delivered += usize::from(matches!(result.status, Some(200..=299)));
        record(store, target, &key, row, &result)?;
    }
    Ok(delivered)
}

/// The dispatcher of one target: runs until `shutdown`, then lets the
/// attempts in flight finish for up to `grace`. Rows not delivered stay in
/// the outbox for the next start.
pub async fn run_target(
    store: Arc<Store>,
    client: reqwest::Client,
    target: Arc<Target>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut in_flight = InFlight::new();
    let mut attempts: JoinSet<(OutboxKey, OutboxRow, Attempt)> = JoinSet::new();
    loop {
        let next_due = match start_due(&store, &client, &target, &mut in_flight, &mut attempts) {
            Ok(next_due) => next_due,
            Err(error) => {
                warn!(target = %target.name, error = %crate::error_chain(&error), "cannot read the outbox");
                Some(clock::now_ms() + 1000)
            }
        };
        let wait = next_due.map(|due| Duration::from_millis(due.saturating_sub(clock::now_ms())));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait.unwrap_or(Duration::MAX)), if wait.is_some() => {}
            Some(done) = attempts.join_next_with_id() => finish(&store, &target, &mut in_flight, done),
        }
    }
    if !attempts.is_empty() {
        debug!(target = %target.name, in_flight = attempts.len(), "waiting for deliveries in flight");
    }
    let drain = async {
        while let Some(done) = attempts.join_next_with_id().await {
            finish(&store, &target, &mut in_flight, done);
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        warn!(target = %target.name, "deliveries still in flight after the grace period; they stay queued");
    }
}

/// Starts attempts for due rows up to the parallel limit; returns when the
/// earliest row not started is due.
fn start_due(
    store: &Store,
    client: &reqwest::Client,
    target: &Arc<Target>,
    in_flight: &mut InFlight,
    attempts: &mut JoinSet<(OutboxKey, OutboxRow, Attempt)>,
) -> Result<Option<u64>, StoreError> {
    let now = clock::now_ms();
    let mut next_due: Option<u64> = None;
    for (key, row) in store.outbox_rows(&target.name)? {
        if in_flight.values().any(|busy| *busy == key) {
            continue;
        }
        if row.next_attempt_ms > now || in_flight.len() >= PARALLEL_PER_TARGET {
            // A full set of attempts wakes the loop when one finishes.
            if row.next_attempt_ms > now {
                next_due =
                    Some(next_due.map_or(row.next_attempt_ms, |due| due.min(row.next_attempt_ms)));
            }
            continue;
        }
        let client = client.clone();
        let target = target.clone();
        let busy = key.clone();
        let handle = attempts.spawn(async move {
            let result = attempt(&client, &target, &row).await;
            (key, row, result)
        });
        in_flight.insert(handle.id(), busy);
    }
    Ok(next_due)
}

fn finish(
    store: &Store,
    target: &Target,
    in_flight: &mut InFlight,
    done: Result<(tokio::task::Id, (OutboxKey, OutboxRow, Attempt)), tokio::task::JoinError>,
) {
    match done {
        Ok((id, (key, row, result))) => {
            in_flight.remove(&id);
            if let Err(error) = record(store, target, &key, row, &result) {
                warn!(target = %target.name, error = %crate::error_chain(&error), "cannot record a delivery attempt");
            }
        }
        Err(error) => {
            // The row stays queued as it was and is tried again.
            in_flight.remove(&error.id());
            warn!(target = %target.name, "a delivery attempt did not finish");
        }
    }
}
