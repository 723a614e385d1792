//! One poll of one endpoint: fetch → extract → diff → what to write.
//!
//! [`observe`] decides and writes nothing, so `pollhook once` can show what
//! would be sent; [`apply`] writes the decision to the store in one
//! transaction. The endpoint tasks in `daemon` call both.

use crate::clock;
use crate::config::Endpoint;
use crate::diff::diff;
use crate::event::{self, Event};
use crate::extract::{self, Document, ExtractError, Rules};
use crate::fetch::{self, FetchError, Fetched, Validators};
use crate::store::{Commit, OutboxRow, Snapshot, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a poll produced a new document to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewReason {
    /// The first poll of this endpoint.
    Baseline,
    /// The endpoint's definition changed since the snapshot was taken.
    Rebaseline,
    /// The document changed.
    Changed,
}

/// What one poll found.
#[derive(Debug)]
pub enum Observation {
    /// A 304, or the same document. `refreshed` carries new validators
    /// when the server sent different ones for the same content.
    Unchanged { refreshed: Option<Snapshot> },
    /// A document to store, and the events to queue (none for a quiet
    /// baseline).
    New {
        reason: NewReason,
        snapshot: Snapshot,
        document: Document,
        events: Vec<Event>,
    },
}

impl Observation {
    pub fn events(&self) -> &[Event] {
        match self {
            Observation::Unchanged { .. } => &[],
            Observation::New { events, .. } => events,
        }
    }
}

/// Polls `endpoint` and compares with its snapshot. Writes nothing.
pub async fn observe(
    client: &reqwest::Client,
    store: &Store,
    endpoint: &Endpoint,
) -> Result<Observation, PollError> {
    let previous = store.snapshot(&endpoint.name)?;
    // Validators taken with another definition describe another resource.
    let same_definition = previous
        .as_ref()
        .filter(|snapshot| snapshot.definition == endpoint.definition);
    let validators = same_definition.map(|snapshot| Validators {
        etag: snapshot.etag.clone(),
        last_modified: snapshot.last_modified.clone(),
    });
    let (bytes, content_type, validators) =
        match fetch::fetch(client, endpoint, validators.as_ref()).await? {
            Fetched::NotModified if same_definition.is_some() => {
                return Ok(Observation::Unchanged { refreshed: None });
            }
            // A 304 to a request that was not conditional cannot be compared.
            Fetched::NotModified => {
                return Err(FetchError::Status {
                    status: 304,
                    retry_after: None,
                }
                .into());
            }
            Fetched::Body {
                bytes,
                content_type,
                validators,
            } => (bytes, content_type, validators),
        };
    let rules = Rules {
        format: endpoint.format,
        ignore: &endpoint.ignore,
    };
    let document = extract::extract(&bytes, content_type.as_deref(), rules)?;
    let now_ms = clock::now_ms();
    let new_snapshot = |version: u64| Snapshot {
        version,
        hash: document.hash_hex(),
        definition: endpoint.definition.clone(),
        etag: validators.etag.clone(),
        last_modified: validators.last_modified.clone(),
        changed_at_ms: now_ms,
    };

    let Some(previous) = previous else {
        let events = if endpoint.emit_initial {
            let change = diff(None, &document);
            change
                .map(|change| event::endpoint_changed(endpoint, None, 1, change, now_ms))
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        let snapshot = new_snapshot(1);
        return Ok(Observation::New {
            reason: NewReason::Baseline,
            snapshot,
            document,
            events,
        });
    };
    let version = previous.version + 1;
    if previous.definition != endpoint.definition {
        let snapshot = new_snapshot(version);
        return Ok(Observation::New {
            reason: NewReason::Rebaseline,
            snapshot,
            document,
            events: Vec::new(),
        });
    }
    if previous.hash == document.hash_hex() {
        let fresh_validators =
            previous.etag != validators.etag || previous.last_modified != validators.last_modified;
        let refreshed = fresh_validators.then(|| Snapshot {
            etag: validators.etag.clone(),
            last_modified: validators.last_modified.clone(),
            ..previous.clone()
        });
        return Ok(Observation::Unchanged { refreshed });
    }
    let previous_document = store.document(&endpoint.name, previous.version)?;
    let events = diff(previous_document.as_ref(), &document)
        .map(|change| {
            event::endpoint_changed(endpoint, Some(previous.version), version, change, now_ms)
        })
        .into_iter()
        .collect();
    let snapshot = new_snapshot(version);
    Ok(Observation::New {
        reason: NewReason::Changed,
        snapshot,
        document,
        events,
    })
}

/// Writes what [`observe`] found: snapshot, history and one outbox row per
/// event and target, in one transaction, durable before it returns.
/// Returns the number of rows queued.
pub async fn apply(
    store: &Store,
    endpoint: &Endpoint,
    observation: &Observation,
) -> Result<usize, StoreError> {
    match observation {
        Observation::Unchanged { refreshed: None } => Ok(0),
        Observation::Unchanged {
            refreshed: Some(snapshot),
        } => {
            store.update_snapshot(&endpoint.name, snapshot)?;
            Ok(0)
        }
        Observation::New {
            snapshot,
            document,
            events,
            ..
        } => {
            let now_ms = clock::now_ms();
            let deliveries: Vec<(&str, OutboxRow)> = events
                .iter()
                .flat_map(|event| {
                    endpoint.targets.iter().map(move |target| {
                        (
                            target.as_str(),
                            OutboxRow {
                                event_id: event.id.clone(),
                                event_type: event.kind.to_string(),
                                endpoint: endpoint.name.clone(),
                                body: event.body(),
                                created_ms: event.timestamp_ms,
                                attempts: 0,
                                next_attempt_ms: now_ms,
                                last_status: None,
                                last_error: None,
                                attempt_log: Vec::new(),
                                dead_at_ms: None,
                            },
                        )
                    })
                })
                .collect();
            let queued = deliveries.len();
            store
                .commit(&Commit {
                    endpoint: &endpoint.name,
                    snapshot,
                    document,
                    keep_history: endpoint.keep_history,
                    deliveries,
                })
                .await?;
            Ok(queued)
        }
    }
}
