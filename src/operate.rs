//! What the admin API and the dashboard read of, and ask of, the running
//! daemon: the [`Context`] the daemon hands them, and the commands both
//! run (poll now, pause, preview, replay, resume), so that a button on a
//! page and a `POST /api/v1/...` do the same thing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::poller::{Mode, PollState, Poller};
use crate::status::{Control, EndpointStatus, LiveEvent, Statuses, Wakes, read, write};
use crate::store::{DeadFilter, Store, StoreError};
use crate::views::{self, EndpointView, PreviewView, Replayed};

/// What the admin API reads, and asks of, the running daemon.
pub struct Context {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub statuses: Statuses,
    pub live: broadcast::Sender<Arc<LiveEvent>>,
    /// True once every task is running, false again while stopping.
    pub ready: Arc<AtomicBool>,
    /// What every route but the health checks needs, when set.
    pub token: Option<String>,
    pub control: mpsc::Sender<Control>,
    pub wakes: Arc<Wakes>,
    /// For previews: the daemon's poller (its politeness) and config file.
    pub poller: Arc<Poller>,
    pub config_path: PathBuf,
    /// The shards polled here.
    pub cluster: crate::cluster::SharedView,
    /// Held while an endpoint is paused or resumed, so that the store and
    /// the schedule hear of pauses in the same order.
    pub pausing: tokio::sync::Mutex<()>,
}

/// Why a command could not be done.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    NotFound(String),
    /// The config file does not load (a preview reads it).
    #[error("{0}")]
    Config(String),
    #[error("shutting down")]
    ShuttingDown,
    #[error("{}", crate::error_chain(.0))]
    Store(#[from] StoreError),
}

impl Context {
    /// The status of a running endpoint.
    pub fn status(&self, name: &str) -> Result<EndpointStatus, CommandError> {
        read(&self.statuses)
            .get(name)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("no endpoint named `{name}`")))
    }

    /// The view of a running endpoint; `pending` counts its queued rows.
    pub fn view(&self, status: &EndpointStatus, pending: &HashMap<String, usize>) -> EndpointView {
        let (snapshot, cursor) =
            EndpointView::stored(&self.store, &status.endpoint).unwrap_or_default();
        EndpointView::new(
            &status.endpoint,
            Some(status),
            (snapshot.as_ref(), cursor.as_ref()),
            pending,
        )
    }

    /// Asks the supervisor to poll `name` now (or right after its running poll).
    pub async fn poll_now(&self, name: &str) -> Result<(), CommandError> {
        self.status(name)?;
        self.ask(Control::PollNow(name.to_string())).await
    }

    /// Pauses a running endpoint: durably (a restart keeps it paused),
    /// then out of the schedule. Since when it is paused.
    pub async fn pause_endpoint(&self, name: &str) -> Result<u64, CommandError> {
        self.status(name)?;
        let _pausing = self.pausing.lock().await;
        let since = self
            .store
            .pause_endpoint(name, crate::clock::now_ms())
            .await?;
        self.ask(Control::Pause(name.to_string())).await?;
        if let Some(status) = write(&self.statuses).get_mut(name) {
            status.paused_since_ms = Some(since);
        }
        Ok(since)
    }

    /// Resumes a paused endpoint; false when it was not paused.
    pub async fn resume_endpoint(&self, name: &str) -> Result<bool, CommandError> {
        self.status(name)?;
        let _pausing = self.pausing.lock().await;
        let resumed = self.store.resume_endpoint(name).await?;
        self.ask(Control::Resume(name.to_string())).await?;
        if let Some(status) = write(&self.statuses).get_mut(name) {
            status.paused_since_ms = None;
        }
        Ok(resumed)
    }

    async fn ask(&self, request: Control) -> Result<(), CommandError> {
        self.control
            .send(request)
            .await
            .map_err(|_| CommandError::ShuttingDown)
    }

    /// A dry-run poll of the endpoint as the daemon's config file defines
    /// it now (edited, not reloaded yet), against the live snapshot: fetch,
    /// extract, diff, decide; nothing is written or sent.
    pub async fn preview(
        &self,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Result<PreviewView, CommandError> {
        let path = self.config_path.clone();
        let config = match tokio::task::spawn_blocking(move || Config::load(&path)).await {
            Ok(Ok(config)) => config,
            Ok(Err(error)) => return Err(CommandError::Config(crate::error_chain(&error))),
            Err(_) => return Err(CommandError::ShuttingDown),
        };
        let Some(endpoint) = config.endpoint(name) else {
            return Err(CommandError::NotFound(format!(
                "no endpoint named `{name}` in `{}`",
                config.path.display()
            )));
        };
        let mut poll_state = PollState::load(&self.store, endpoint);
        let report = self
            .poller
            .poll(endpoint, &mut poll_state, Mode::DryRun, shutdown)
            .await;
        Ok(PreviewView::new(&self.store, endpoint, &report, true)?)
    }

    /// Puts back the dead letters `filter` picks and wakes their targets;
    /// asking only for ids that are not dead letters is not found.
    pub fn replay(&self, filter: &DeadFilter<'_>) -> Result<Replayed, CommandError> {
        let replayed = views::replay(&self.store, filter)?;
        if replayed.replayed == 0 && !replayed.missing.is_empty() {
            return Err(CommandError::NotFound(format!(
                "no dead letter with id {}",
                replayed.missing.join(", ")
            )));
        }
        for target in &replayed.targets {
            self.wakes.wake(target);
        }
        Ok(replayed)
    }

    /// Un-pauses a target and wakes it; false when it was not paused.
    pub fn resume(&self, target: &str) -> Result<bool, CommandError> {
        let resumed = self.store.resume(target)?;
        self.wakes.wake(target);
        Ok(resumed)
    }
}
