//! The running daemon: one task per endpoint, one dispatcher per target,
//! one `CancellationToken` to stop them and one `TaskTracker` to wait.
//!
//! [`run`] owns the tasks. It returns when `shutdown` is cancelled and every
//! task has finished (dispatchers get a grace period for POSTs in flight),
//! after flushing the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, info, info_span, warn};

use crate::clock;
use crate::config::{Config, Endpoint};
use crate::deliver;
use crate::poll::{self, NewReason, Observation};
use crate::schedule::Schedule;
use crate::store::Store;

/// What every endpoint task shares.
struct PollContext {
    store: Arc<Store>,
    client: reqwest::Client,
    /// The global cap on polls in flight.
    permits: Semaphore,
    /// Wakes the dispatcher of each target when rows are queued for it.
    wakes: HashMap<String, Arc<Notify>>,
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(&config.state_dir)?);
    let poll_client = crate::fetch::client()?;
    let delivery_client = deliver::client()?;
    let tracker = TaskTracker::new();

    let mut wakes = HashMap::new();
    for target in &config.targets {
        let wake = Arc::new(Notify::new());
        wakes.insert(target.name.clone(), wake.clone());
        let span = info_span!("target", target = %target.name);
        tracker.spawn(
            deliver::run_target(
                store.clone(),
                delivery_client.clone(),
                target.clone(),
                wake,
                shutdown.clone(),
                config.shutdown_grace,
            )
            .instrument(span),
        );
    }
    let context = Arc::new(PollContext {
        store: store.clone(),
        client: poll_client,
        permits: Semaphore::new(config.max_concurrent_polls),
        wakes,
    });
    for endpoint in &config.endpoints {
        let span = info_span!("endpoint", endpoint = %endpoint.name);
        tracker.spawn(
            endpoint_task(context.clone(), endpoint.clone(), shutdown.clone()).instrument(span),
        );
    }
    tracker.close();
    info!(
        endpoints = config.endpoints.len(),
        targets = config.targets.len(),
        state_dir = %config.state_dir.display(),
        queued = store.outbox_len(),
        "pollhook started"
    );

    shutdown.cancelled().await;
    info!("shutting down");
    tracker.wait().await;
    store.flush().await?;
    info!(queued = store.outbox_len(), "stopped");
    Ok(())
}

/// Polls one endpoint on its schedule until shutdown. A failed poll is
/// logged and retried with backoff; it never ends the task.
async fn endpoint_task(
    context: Arc<PollContext>,
    endpoint: Arc<Endpoint>,
    shutdown: CancellationToken,
) {
    let mut next_poll = Instant::now() + endpoint.schedule.first_delay(clock::now());
    let mut consecutive_failures: u32 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next_poll) => {}
        }
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = poll_once(&context, &endpoint) => result,
        };
        let now = Instant::now();
        match result {
            Ok(()) => {
                if consecutive_failures > 0 {
                    info!(failures = consecutive_failures, "polling works again");
                }
                consecutive_failures = 0;
                next_poll = match &endpoint.schedule {
                    // Keep to the grid (no drift), but never try to catch up.
                    Schedule::Every(interval) => (next_poll + *interval).max(now),
                    Schedule::Cron(_) => now + endpoint.schedule.next_delay(clock::now()),
                };
            }
            Err(error) => {
                consecutive_failures = consecutive_failures.saturating_add(1);
                let backoff = endpoint
                    .schedule
                    .retry_delay(consecutive_failures, clock::now());
                // A server that says when to come back (429/503) is listened to.
                let retry_in = match &error {
                    poll::PollError::Fetch(crate::fetch::FetchError::Status {
                        retry_after: Some(wait),
                        ..
                    }) => backoff.max(*wait),
                    _ => backoff,
                };
                warn!(
                    error = %crate::error_chain(&error),
                    failures = consecutive_failures,
                    retry_in = %humantime::format_duration(Duration::from_millis(retry_in.as_millis() as u64)),
                    "poll failed"
                );
                next_poll = now + retry_in;
            }
        }
    }
}

/// One poll: observe, write, wake the dispatchers of any rows queued.
async fn poll_once(context: &PollContext, endpoint: &Endpoint) -> Result<(), poll::PollError> {
    let observation = {
        let _permit = context
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        poll::observe(&context.client, &context.store, endpoint).await?
    };
    let queued = poll::apply(&context.store, endpoint, &observation).await?;
    if let Observation::New {
        reason, snapshot, ..
    } = &observation
    {
        match reason {
            NewReason::Baseline => info!(version = snapshot.version, queued, "baseline stored"),
            NewReason::Rebaseline => {
                info!(
                    version = snapshot.version,
                    "endpoint definition changed; re-baselined quietly"
                )
            }
            NewReason::Changed => info!(version = snapshot.version, queued, "changed"),
        }
    }
    if queued > 0 {
        for target in &endpoint.targets {
            if let Some(wake) = context.wakes.get(target) {
                wake.notify_one();
            }
        }
    }
    Ok(())
}
