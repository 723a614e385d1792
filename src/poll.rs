//! One poll of one endpoint: fetch → extract → diff → what to write.
//!
//! [`observe`] decides and writes nothing, so `pollhook once` can show what
//! would be sent; [`apply`] writes the decision to the store in one
//! transaction. The poll tasks in `daemon` call both.

use serde_json::{Value, json};

use crate::clock;
use crate::config::{Endpoint, Incremental, ItemEvent, Subscription, Vars, WhenPrevious};
use crate::diff::{Change, diff};
use crate::event::{self, Event};
use crate::extract::{self, Document, ExtractError, Kind};
use crate::fetch::{self, FetchError, Fetched, Validators};
use crate::request;
use crate::seen::{self, SeenKeys, SeenLimit};
use crate::store::{
    Commit, CursorCommit, CursorState, OutboxRow, Snapshot, Store, StoreError, Stored,
};
use crate::watched::Answer;

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
    /// The stored document it would be compared with is damaged: the new
    /// one replaces it, quietly, since a diff against garbage would report
    /// changes that never happened.
    Repaired,
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
        /// Item mode: the seen keys to store with it (boxed: most
        /// observations have none).
        seen: Option<Box<SeenKeys>>,
    },
    /// An incremental endpoint's answer with something new: its new items
    /// as events, and where the feed is now.
    Advanced {
        /// The first poll (or the first since the definition changed):
        /// the cursor is set, and events made only with `emit_initial`.
        first: bool,
        state: CursorState,
        events: Vec<Event>,
        seen: Option<Box<SeenKeys>>,
    },
}

impl Observation {
    pub fn events(&self) -> &[Event] {
        match self {
            Observation::Unchanged { .. } => &[],
            Observation::New { events, .. } | Observation::Advanced { events, .. } => events,
        }
    }
}

/// What a poll noted besides what it observed.
#[derive(Debug, Default)]
pub struct Notes {
    /// The fetch's warning, if it had one ([`Fetched::Body`]).
    pub warning: Option<String>,
    /// The answer's status, certificate and `metrics` values.
    pub answer: Option<Answer>,
}

/// Polls `endpoint` and compares with its snapshot (an incremental one:
/// takes its new items), with what it noted on the way. Writes nothing.
/// `last_success_ms` is what its templates call `last_success`.
pub async fn observe(
    client: &reqwest::Client,
    tokens: &crate::oauth::Tokens,
    store: &Store,
    endpoint: &Endpoint,
    last_success_ms: Option<u64>,
) -> Result<(Observation, Notes), PollError> {
    let mut notes = Notes::default();
    let observation = compare(client, tokens, store, endpoint, last_success_ms, &mut notes).await?;
    Ok((observation, notes))
}

/// Notes a body's answer, with the values of the endpoint's `metrics`.
fn note(notes: &mut Notes, endpoint: &Endpoint, mut answer: Answer, bytes: &[u8]) {
    if let Some(filters) = &endpoint.metrics {
        answer.values = Some(crate::watched::values(filters, bytes));
    }
    notes.answer = Some(answer);
}

async fn compare(
    client: &reqwest::Client,
    tokens: &crate::oauth::Tokens,
    store: &Store,
    endpoint: &Endpoint,
    last_success_ms: Option<u64>,
    notes: &mut Notes,
) -> Result<Observation, PollError> {
    if let Some(incremental) = &endpoint.incremental {
        return advance(
            client,
            tokens,
            store,
            endpoint,
            incremental,
            last_success_ms,
            notes,
        )
        .await;
    }
    let vars = Vars {
        now_ms: clock::now_ms(),
        last_success_ms,
        cursor: None,
    };
    let request = request::render(endpoint, &vars).map_err(FetchError::Template)?;
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
        match fetch::fetch(client, tokens, endpoint, &request, validators.as_ref()).await? {
            Fetched::NotModified { answer } if same_definition.is_some() => {
                notes.answer = Some(answer);
                return Ok(Observation::Unchanged { refreshed: None });
            }
            // A 304 to a request that was not conditional cannot be compared.
            Fetched::NotModified { .. } => {
                return Err(FetchError::Status {
                    status: 304,
                    retry_after: None,
                }
                .into());
            }
            Fetched::Body {
                answer,
                bytes,
                content_type,
                validators,
                warning,
                ..
            } => {
                notes.warning = warning;
                note(notes, endpoint, answer, &bytes);
                (bytes, content_type, validators)
            }
        };
    let (document, unmatched) =
        extract::extract_with_warning(&bytes, content_type.as_deref(), endpoint.rules())?;
    let feed = extract::converted_format(content_type.as_deref(), endpoint.rules())
        == Some(extract::Format::Feed);
    let on = endpoint.item_events(feed);
    if let Some(unmatched) = unmatched {
        notes.warning = Some(match notes.warning.take() {
            Some(fetched) => format!("{fetched}; {unmatched}"),
            None => unmatched,
        });
    }
    let now_ms = clock::now_ms();
    let new_snapshot = |version: u64, notified: u64| Snapshot {
        version,
        hash: document.hash,
        definition: endpoint.definition,
        etag: validators.etag.clone(),
        last_modified: validators.last_modified.clone(),
        changed_at_ms: now_ms,
        notified,
    };
    // Item mode remembers keys (see `seen`).
    let seen_limit = endpoint.seen.filter(|_| document.kind == Kind::Items);
    let fresh_seen = |document: &Document| {
        seen_limit.map(|limit| {
            let mut seen = Box::<SeenKeys>::default();
            remember(&mut seen, [document], limit, now_ms);
            seen
        })
    };

    let Some(previous) = previous else {
        let events = match endpoint.emit_initial {
            true => events(endpoint, on, None, &document, 1, now_ms, None)?,
            false => Vec::new(),
        };
        return Ok(Observation::New {
            reason: NewReason::Baseline,
            snapshot: new_snapshot(1, 1),
            seen: fresh_seen(&document),
            document,
            events,
        });
    };
    let version = previous.version + 1;
    if previous.definition != endpoint.definition {
        return Ok(Observation::New {
            reason: NewReason::Rebaseline,
            snapshot: new_snapshot(version, version),
            seen: fresh_seen(&document),
            document,
            events: Vec::new(),
        });
    }
    if previous.hash == document.hash {
        let fresh_validators =
            previous.etag != validators.etag || previous.last_modified != validators.last_modified;
        let refreshed = fresh_validators.then(|| Snapshot {
            etag: validators.etag.clone(),
            last_modified: validators.last_modified.clone(),
            ..previous.clone()
        });
        return Ok(Observation::Unchanged { refreshed });
    }
    // What `when` and the events compare with: the last poll's version, or
    // the last one an event was sent for (when its file is still good).
    let mut base = match endpoint.when_previous {
        WhenPrevious::Notified if previous.notified != previous.version => {
            match store.read_document(&endpoint.name, previous.notified)? {
                Stored::Kept(document) => Some((previous.notified, document)),
                Stored::Missing | Stored::Damaged { .. } => None,
            }
        }
        _ => None,
    };
    if base.is_none() {
        let document = match store.read_document(&endpoint.name, previous.version)? {
            Stored::Kept(document) => document,
            // A file lost to a power cut: the change is reported by hash.
            Stored::Missing => Document::with_hash(Kind::Bytes, previous.hash, Vec::new()),
            // Logged by the store, once: from now on the new document is compared.
            Stored::Damaged { .. } => {
                let mut seen = seen_limit
                    .map(|_| store.seen(&endpoint.name).map(Box::new))
                    .transpose()?;
                if let (Some(seen), Some(limit)) = (&mut seen, seen_limit) {
                    remember(seen, [&document], limit, now_ms);
                }
                return Ok(Observation::New {
                    reason: NewReason::Repaired,
                    snapshot: new_snapshot(version, version),
                    seen,
                    document,
                    events: Vec::new(),
                });
            }
        };
        base = Some((previous.version, document));
    }
    let (base_version, base_document) = base.expect("set above");
    // A feed compared as text before feeds were read by their Content-Type:
    // its items start afresh instead of a diff between text and items.
    if base_document.kind == Kind::Text && document.kind == Kind::Items {
        return Ok(Observation::New {
            reason: NewReason::Rebaseline,
            snapshot: new_snapshot(version, version),
            seen: fresh_seen(&document),
            document,
            events: Vec::new(),
        });
    }
    let mut seen = seen_limit
        .map(|_| store.seen(&endpoint.name).map(Box::new))
        .transpose()?;
    let events = events(
        endpoint,
        on,
        Some((base_version, &base_document)),
        &document,
        version,
        now_ms,
        seen.as_deref(),
    )?;
    if let (Some(seen), Some(limit)) = (&mut seen, seen_limit) {
        // The base's keys too: those gone now were there until now.
        remember(seen, [&base_document, &document], limit, now_ms);
    }
    let notified = match (endpoint.when_previous, events.is_empty()) {
        (WhenPrevious::Notified, true) => base_version,
        _ => version,
    };
    Ok(Observation::New {
        reason: NewReason::Changed,
        snapshot: new_snapshot(version, notified),
        seen,
        document,
        events,
    })
}

/// Polls an incremental endpoint from its cursor: every item of the answer
/// whose key was not seen is `item.added`, in the answer's order, and
/// `cursor` finds the next cursor (none, or `null`: it stays). No document
/// is kept. `Unchanged` when there is nothing new to write.
async fn advance(
    client: &reqwest::Client,
    tokens: &crate::oauth::Tokens,
    store: &Store,
    endpoint: &Endpoint,
    incremental: &Incremental,
    last_success_ms: Option<u64>,
    notes: &mut Notes,
) -> Result<Observation, PollError> {
    // A cursor of another definition belongs to another feed.
    let previous = store
        .cursor(&endpoint.name)?
        .filter(|state| state.definition == endpoint.definition);
    let cursor = previous.as_ref().and_then(CursorState::value);
    let now_ms = clock::now_ms();
    let vars = Vars {
        now_ms,
        last_success_ms,
        cursor: cursor.as_ref(),
    };
    let request = request::render(endpoint, &vars).map_err(FetchError::Template)?;
    // Never conditional: each answer is a new question.
    let bytes = match fetch::fetch(client, tokens, endpoint, &request, None).await? {
        Fetched::Body {
            answer,
            bytes,
            warning,
            ..
        } => {
            notes.warning = warning;
            note(notes, endpoint, answer, &bytes);
            bytes
        }
        Fetched::NotModified { .. } => {
            return Err(FetchError::Status {
                status: 304,
                retry_after: None,
            }
            .into());
        }
    };
    let (response, items) = extract::new_items(&bytes, endpoint.rules())?;
    let next = match &incremental.cursor {
        None => None,
        Some(rule) => {
            let (filter, over_keys) = rule.filter();
            let keys = || Value::Array(items.iter().map(|(key, _)| key.clone()).collect());
            let input = match over_keys {
                true => &keys(),
                false => &response,
            };
            let outputs = filter.run(input).map_err(|message| ExtractError::Filter {
                name: "cursor",
                source_text: filter.source().to_string(),
                message,
            })?;
            outputs.into_iter().find(|value| !value.is_null())
        }
    };
    let first = previous.is_none();
    let stored_cursor = previous.as_ref().and_then(|state| state.cursor.clone());
    let next_cursor = next
        .map(|value| value.to_string())
        .or(stored_cursor.clone());
    let mut seen = match (&endpoint.seen, first) {
        (None, _) => None,
        (Some(_), true) => Some(Box::<SeenKeys>::default()),
        (Some(_), false) => Some(Box::new(store.seen(&endpoint.name)?)),
    };
    // New: a key neither seen before nor earlier in this answer.
    let mut fresh = std::collections::HashSet::new();
    let new_items: Vec<(Value, Value)> = items
        .into_iter()
        .filter(|(key, _)| {
            let hash = seen::key_hash(key);
            !seen.as_ref().is_some_and(|seen| seen.contains(hash)) && fresh.insert(hash)
        })
        .collect();
    if !first && new_items.is_empty() && next_cursor == stored_cursor {
        return Ok(Observation::Unchanged { refreshed: None });
    }
    if let (Some(seen), Some(limit)) = (&mut seen, endpoint.seen) {
        seen.record(fresh, now_ms);
        seen.trim(limit, now_ms);
    }
    let events = match first && !endpoint.emit_initial {
        true => Vec::new(),
        false => new_items
            .into_iter()
            .map(|(key, item)| event::item_added(endpoint, key, item, now_ms))
            .collect(),
    };
    Ok(Observation::Advanced {
        first,
        state: CursorState {
            definition: endpoint.definition,
            cursor: next_cursor,
            polled_ms: now_ms,
        },
        events,
        seen,
    })
}

/// Marks the item keys of `documents` as seen at `now_ms`, within `limit`.
fn remember<'d>(
    seen: &mut SeenKeys,
    documents: impl IntoIterator<Item = &'d Document>,
    limit: SeenLimit,
    now_ms: u64,
) {
    for document in documents {
        let Some(Value::Array(entries)) = document.json() else {
            continue;
        };
        let keys = entries
            .iter()
            .map(|entry| seen::key_hash(entry.get("key").unwrap_or(&Value::Null)));
        seen.record(keys, now_ms);
    }
    seen.trim(limit, now_ms);
}

/// The events to send for the change from `previous` to `current`: the
/// diff, narrowed by `when`, made into events.
fn events(
    endpoint: &Endpoint,
    on: &[ItemEvent],
    previous: Option<(u64, &Document)>,
    current: &Document,
    version: u64,
    now_ms: u64,
    seen: Option<&SeenKeys>,
) -> Result<Vec<Event>, ExtractError> {
    let (previous_version, previous) = previous.unzip();
    let Some(mut change) = diff(previous, current) else {
        return Ok(Vec::new());
    };
    // An item seen before is not new, whatever the last document said.
    if let (Change::Items(items), Some(seen)) = (&mut change, seen) {
        items
            .added
            .retain(|(key, _)| !seen.contains(seen::key_hash(key)));
    }
    let change = match &endpoint.when {
        None => Some(change),
        Some(when) => {
            let holds = |previous: Value, current: Value| {
                let input = json!({ "previous": previous, "current": current });
                when.run_one(&input)
                    .map(|verdict| verdict == Value::Bool(true))
                    .map_err(|message| ExtractError::Filter {
                        name: "when",
                        source_text: when.source().to_string(),
                        message,
                    })
            };
            match change {
                // In item mode the condition is asked of each item.
                Change::Items(mut items) => {
                    items.added =
                        retain(items.added, |(_, item)| holds(Value::Null, item.clone()))?;
                    items.removed =
                        retain(items.removed, |(_, item)| holds(item.clone(), Value::Null))?;
                    items.changed = retain(items.changed, |change| {
                        holds(change.previous.clone(), change.item.clone())
                    })?;
                    (!items.is_empty()).then_some(Change::Items(items))
                }
                change => {
                    let previous = previous.map_or(Value::Null, Document::value);
                    holds(previous, current.value())?.then_some(change)
                }
            }
        }
    };
    Ok(change
        .map(|change| event::for_change(endpoint, on, previous_version, version, change, now_ms))
        .unwrap_or_default())
}

/// The elements for which `keep` holds, or its first error.
fn retain<T, E>(
    elements: Vec<T>,
    mut keep: impl FnMut(&T) -> Result<bool, E>,
) -> Result<Vec<T>, E> {
    let mut kept = Vec::with_capacity(elements.len());
    for element in elements {
        if keep(&element)? {
            kept.push(element);
        }
    }
    Ok(kept)
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
            seen,
            ..
        } => {
            let deliveries = outbox_rows(endpoint, events);
            let queued = deliveries.len();
            store
                .commit(&Commit {
                    endpoint: &endpoint.name,
                    snapshot,
                    document,
                    keep_history: endpoint.keep_history,
                    deliveries,
                    seen: seen.as_deref(),
                })
                .await?;
            Ok(queued)
        }
        Observation::Advanced {
            state,
            events,
            seen,
            ..
        } => {
            let deliveries = outbox_rows(endpoint, events);
            let queued = deliveries.len();
            store
                .commit_cursor(&CursorCommit {
                    endpoint: &endpoint.name,
                    state,
                    deliveries,
                    seen: seen.as_deref(),
                })
                .await?;
            Ok(queued)
        }
    }
}

/// One outbox row per event and target of `endpoint` that takes it, due now.
pub fn outbox_rows<'e>(endpoint: &'e Endpoint, events: &[Event]) -> Vec<(&'e str, OutboxRow)> {
    let now_ms = clock::now_ms();
    events
        .iter()
        .flat_map(|event| {
            let takes = |subscription: &&'e Subscription| subscription.events.contains(event.kind);
            endpoint
                .targets
                .iter()
                .filter(takes)
                .map(move |subscription| {
                    (
                        subscription.target.as_str(),
                        OutboxRow {
                            event_id: event.id.clone(),
                            event_type: event.kind.to_string(),
                            endpoint: endpoint.name.to_string(),
                            body: event.body(),
                            created_ms: event.timestamp_ms,
                            next_attempt_ms: now_ms,
                            ..OutboxRow::default()
                        },
                    )
                })
        })
        .collect()
}
