//! What the admin API sends and the CLI shows, and the commands both run,
//! in one place: the admin API builds these from the running daemon, the
//! CLI from the store when the daemon does not run, and the CLI reads them
//! back from the API. They are wire types, converted from the store's
//! records at the boundary, so either can change without the other.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::Endpoint;
use crate::extract::{Document, Kind};
use crate::poll::{NewReason, Observation};
use crate::poller::{Outcome, Report};
use crate::status::EndpointStatus;
use crate::store::{
    AttemptRecord, CursorState, DeadFilter, OutboxRow, Snapshot, Store, StoreError, StoredVersion,
};

/// An endpoint as the API shows it: runtime status plus what the store knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointView {
    pub name: String,
    pub url: String,
    pub schedule: String,
    pub targets: Vec<String>,
    pub last_poll_ms: Option<u64>,
    pub last_error: Option<String>,
    /// What the last poll warned of, though it worked.
    #[serde(default)]
    pub last_warning: Option<String>,
    /// Settings an operator should see at a glance: `tls_insecure`.
    #[serde(default)]
    pub marks: Vec<String>,
    pub consecutive_failures: u32,
    /// None while paused: a paused endpoint polls only when asked.
    pub next_poll_ms: Option<u64>,
    /// Since when an operator has paused it.
    #[serde(default)]
    pub paused_since_ms: Option<u64>,
    pub version: Option<u64>,
    pub last_change_ms: Option<u64>,
    pub pending_deliveries: usize,
    /// An incremental endpoint's `state.cursor`, as JSON text.
    #[serde(default)]
    pub cursor: Option<String>,
}

impl EndpointView {
    /// `status` is the running daemon's; without it (the daemon does not
    /// run) only the config and the store speak.
    pub fn new(
        endpoint: &Endpoint,
        status: Option<&EndpointStatus>,
        (snapshot, cursor): (Option<&Snapshot>, Option<&CursorState>),
        pending: &HashMap<String, usize>,
    ) -> EndpointView {
        EndpointView {
            name: endpoint.name.to_string(),
            url: endpoint.display_url().to_string(),
            schedule: endpoint.schedule.to_string(),
            targets: endpoint
                .targets
                .iter()
                .map(|subscription| subscription.target.clone())
                .collect(),
            last_poll_ms: status.and_then(|status| status.last_poll_ms),
            last_error: status.and_then(|status| status.last_error.clone()),
            last_warning: status.and_then(|status| status.last_warning.clone()),
            marks: endpoint
                .transport
                .as_ref()
                .filter(|transport| transport.insecure)
                .map(|_| "tls_insecure".to_string())
                .into_iter()
                .collect(),
            consecutive_failures: status.map_or(0, |status| status.consecutive_failures),
            next_poll_ms: status
                .filter(|status| status.paused_since_ms.is_none())
                .and_then(|status| status.next_poll_ms),
            paused_since_ms: status.and_then(|status| status.paused_since_ms),
            version: snapshot.map(|snapshot| snapshot.version),
            last_change_ms: snapshot.map(|snapshot| snapshot.changed_at_ms),
            pending_deliveries: pending.get(&*endpoint.name).copied().unwrap_or(0),
            cursor: cursor
                .filter(|state| state.definition == endpoint.definition)
                .and_then(|state| state.cursor.clone()),
        }
    }

    /// What the store holds for `endpoint` that its view shows.
    pub fn stored(
        store: &Store,
        endpoint: &Endpoint,
    ) -> Result<(Option<Snapshot>, Option<CursorState>), StoreError> {
        let cursor = match endpoint.incremental {
            Some(_) => store.cursor(&endpoint.name)?,
            None => None,
        };
        Ok((store.snapshot(&endpoint.name)?, cursor))
    }
}

/// The kind `history` lists for a damaged version.
pub const DAMAGED: &str = "damaged";

/// One stored version, as `history` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionView {
    pub version: u64,
    pub at_ms: u64,
    pub kind: String,
    pub bytes: usize,
}

impl From<StoredVersion> for VersionView {
    fn from(stored: StoredVersion) -> VersionView {
        VersionView {
            version: stored.version,
            at_ms: stored.at_ms,
            kind: stored.kind.map_or(DAMAGED, Kind::name).to_string(),
            bytes: stored.bytes,
        }
    }
}

/// A queued or dead webhook and its target, as the API sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRow {
    pub target: String,
    /// Whether the target is paused (410 Gone) and waits for `resume`.
    #[serde(default)]
    pub paused: bool,
    #[serde(flatten)]
    pub row: DeliveryView,
}

/// A webhook waiting for (or given up on by) its target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryView {
    pub event_id: String,
    pub event_type: String,
    pub endpoint: String,
    /// The exact bytes that are signed and sent.
    pub body: String,
    pub created_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(default)]
    pub attempt_log: Vec<AttemptView>,
    /// When it was dead-lettered, for dead letters.
    #[serde(default)]
    pub dead_at_ms: Option<u64>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub at_ms: u64,
    /// None when no response came (timeout, refused connection).
    pub status: Option<u16>,
    pub duration_ms: u64,
    /// The start of the receiver's answer.
    pub response: String,
    pub error: Option<String>,
    pub next_attempt_ms: Option<u64>,
}

impl From<OutboxRow> for DeliveryView {
    fn from(row: OutboxRow) -> DeliveryView {
        DeliveryView {
            event_id: row.event_id,
            event_type: row.event_type,
            endpoint: row.endpoint,
            body: row.body,
            created_ms: row.created_ms,
            attempts: row.attempts,
            next_attempt_ms: row.next_attempt_ms,
            last_status: row.last_status,
            last_error: row.last_error,
            attempt_log: row.attempt_log.into_iter().map(AttemptView::from).collect(),
            dead_at_ms: row.dead_at_ms,
        }
    }
}

impl From<AttemptRecord> for AttemptView {
    fn from(record: AttemptRecord) -> AttemptView {
        AttemptView {
            attempt: record.attempt,
            at_ms: record.at_ms,
            status: record.status,
            duration_ms: record.duration_ms,
            response: record.response,
            error: record.error,
            next_attempt_ms: record.next_attempt_ms,
        }
    }
}

/// Which rows `deliveries` and `dead` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    Queued,
    Dead,
}

/// The queued or dead rows of one target or all, each with whether its
/// target is paused.
pub fn target_rows(
    store: &Store,
    which: Rows,
    target: Option<&str>,
) -> Result<Vec<TargetRow>, StoreError> {
    let rows = match which {
        Rows::Queued => store.queued_rows(target)?,
        Rows::Dead => store.dead_rows(target)?,
    };
    let mut paused: HashMap<String, bool> = HashMap::new();
    let mut shown = Vec::with_capacity(rows.len());
    for (target, row) in rows {
        let is_paused = match paused.get(&target) {
            Some(is_paused) => *is_paused,
            None => {
                let is_paused = store.paused(&target)?.is_some();
                paused.insert(target.clone(), is_paused);
                is_paused
            }
        };
        shown.push(TargetRow {
            target,
            paused: is_paused,
            row: row.into(),
        });
    }
    Ok(shown)
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    pub replayed: usize,
    /// The targets whose rows were put back, to wake.
    pub targets: Vec<String>,
    /// Asked-for ids that are not dead letters.
    pub missing: Vec<String>,
}

/// Puts the dead letters that `filter` picks back in the queue (same id,
/// attempts reset), and says which asked-for ids were not dead letters.
pub fn replay(store: &Store, filter: &DeadFilter<'_>) -> Result<Replayed, StoreError> {
    // Only asked-for ids can be missing: without any, no letter is read.
    let missing = match filter.event_ids.is_empty() {
        true => Vec::new(),
        false => {
            let dead = store.dead_rows(filter.target)?;
            filter
                .event_ids
                .iter()
                .filter(|id| !dead.iter().any(|(_, row)| row.event_id == **id))
                .cloned()
                .collect()
        }
    };
    let mut targets = store.replay(filter)?;
    let replayed = targets.len();
    targets.sort();
    targets.dedup();
    Ok(Replayed {
        replayed,
        targets,
        missing,
    })
}

/// What a dry-run poll found, as `pollhook once` shows it: made by the CLI
/// from its own poll, or by the running daemon for
/// `POST /api/v1/endpoints/{name}/preview`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviewView {
    pub endpoint: String,
    /// `unchanged`, `baseline`, `rebaseline`, `changed`, `repaired`,
    /// `failed` or `cancelled`.
    pub result: String,
    /// The version it would store.
    pub version: Option<u64>,
    pub error: Option<String>,
    /// The webhook bodies it would queue.
    pub events: Vec<String>,
    /// What the poll warned about (a selector that matched nothing).
    #[serde(default)]
    pub warning: Option<String>,
    /// The extracted document's kind and text, when asked for.
    pub document: Option<(String, String)>,
    /// An incremental endpoint's cursor after this poll (in a dry run:
    /// that it would store).
    #[serde(default)]
    pub cursor: Option<String>,
}

impl PreviewView {
    /// With `document`, the extracted document (for an unchanged one, the
    /// stored one) is shown too.
    pub fn new(
        store: &Store,
        endpoint: &Endpoint,
        report: &Report,
        document: bool,
    ) -> Result<PreviewView, StoreError> {
        let incremental = endpoint.incremental.is_some();
        let endpoint = &*endpoint.name;
        let mut view = PreviewView {
            endpoint: endpoint.to_string(),
            result: String::new(),
            version: None,
            error: None,
            warning: report.warning.clone(),
            events: report.events.iter().map(|event| event.body()).collect(),
            document: None,
            cursor: None,
        };
        let shown =
            |document: &Document| (document.kind.name().to_string(), show_document(document));
        match &report.outcome {
            Outcome::Failed(error) => {
                view.result = "failed".into();
                view.error = Some(crate::error_chain(error));
            }
            Outcome::Cancelled => view.result = "cancelled".into(),
            Outcome::Observed(Observation::Unchanged { .. }) => {
                view.result = "unchanged".into();
                // Only incremental endpoints have one: the others need no
                // read per unchanged endpoint.
                if incremental {
                    view.cursor = store.cursor(endpoint)?.and_then(|state| state.cursor);
                }
                if let (true, Some(snapshot)) = (document, store.snapshot(endpoint)?) {
                    view.version = Some(snapshot.version);
                    view.document = store
                        .document(endpoint, snapshot.version)?
                        .as_ref()
                        .map(shown);
                }
            }
            Outcome::Observed(Observation::New {
                reason,
                snapshot,
                document: extracted,
                ..
            }) => {
                view.result = match reason {
                    NewReason::Baseline => "baseline",
                    NewReason::Rebaseline => "rebaseline",
                    NewReason::Changed => "changed",
                    NewReason::Repaired => "repaired",
                }
                .into();
                view.version = Some(snapshot.version);
                view.document = document.then(|| shown(extracted));
            }
            Outcome::Observed(Observation::Advanced {
                first,
                state,
                events,
                ..
            }) => {
                view.result = match (first, events.is_empty()) {
                    (true, _) => "baseline",
                    (false, true) => "unchanged",
                    (false, false) => "changed",
                }
                .into();
                view.cursor.clone_from(&state.cursor);
            }
        }
        Ok(view)
    }
}

/// A document as a person reads it: JSON pretty-printed, text as it is.
pub fn show_document(document: &Document) -> String {
    match (document.json(), document.kind) {
        (Some(json), _) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        (None, Kind::Text) => document.text().into_owned(),
        (None, _) => format!("(not text; sha256 {})", document.hash_hex()),
    }
}
