//! The webhook body: a Standard Webhooks envelope around what changed.
//!
//! Types: `endpoint.changed` (a patch, diff or hashes), `item.added`,
//! `item.removed`, `item.changed` and `items.changed` (item mode), and the
//! health events `endpoint.failing` and `endpoint.recovered`; the targets'
//! own `target.failing`, `target.recovered` and `event.dead`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{Endpoint, ItemEvent};
use crate::diff::Change;

pub use crate::event_type::*;

/// One event, as it will be queued for every target of its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The `webhook-id`: the same for every target, attempt and replay.
    pub id: String,
    pub kind: &'static str,
    pub timestamp_ms: u64,
    pub data: Value,
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: &'a Value,
}

impl Event {
    /// The exact bytes that are signed and sent.
    pub fn body(&self) -> String {
        let envelope = Envelope {
            kind: self.kind,
            timestamp: crate::clock::rfc3339(self.timestamp_ms),
            data: &self.data,
        };
        serde_json::to_string(&envelope).expect("an envelope always serialises")
    }
}

/// A fresh, time-ordered event id.
pub fn new_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// The events a change makes: one `endpoint.changed`, or in item mode one
/// event per item (only the kinds in `on`), or one `items.changed` with
/// `batch`. None when item mode leaves nothing to send.
pub fn for_change(
    endpoint: &Endpoint,
    on: &[ItemEvent],
    previous_version: Option<u64>,
    version: u64,
    change: Change,
    at_ms: u64,
) -> Vec<Event> {
    let base = |extra: Value| {
        let mut data = json!({
            "endpoint": &*endpoint.name,
            "url": endpoint.display_url(),
            "version": version,
            "previous_version": previous_version,
        });
        let fields = data.as_object_mut().expect("built as an object");
        if let Value::Object(extra) = extra {
            fields.extend(extra);
        }
        data
    };
    let event = |kind: &'static str, data: Value| Event {
        id: new_id(),
        kind,
        timestamp_ms: at_ms,
        data,
    };
    let items = match change {
        Change::Json { patch, replaced } => {
            let change = json!({ "patch": patch, "replaced": replaced });
            return vec![event(ENDPOINT_CHANGED, base(change))];
        }
        Change::Text { diff } => {
            return vec![event(ENDPOINT_CHANGED, base(json!({ "diff": diff })))];
        }
        Change::Bytes {
            previous_hash,
            current_hash,
        } => {
            let hashes = json!({ "previous_hash": previous_hash, "current_hash": current_hash });
            return vec![event(ENDPOINT_CHANGED, base(hashes))];
        }
        Change::Items(items) => items,
    };
    let wanted = |kind: ItemEvent, list: Vec<Value>| match on.contains(&kind) {
        true => list,
        false => Vec::new(),
    };
    let [added, removed, changed] = items.into_json();
    let added = wanted(ItemEvent::Added, added);
    let removed = wanted(ItemEvent::Removed, removed);
    let changed = wanted(ItemEvent::Changed, changed);
    if added.is_empty() && removed.is_empty() && changed.is_empty() {
        return Vec::new();
    }
    if endpoint.batch {
        let lists = json!({ "added": added, "removed": removed, "changed": changed });
        return vec![event(ITEMS_CHANGED, base(lists))];
    }
    let tagged = [
        (ITEM_ADDED, added),
        (ITEM_CHANGED, changed),
        (ITEM_REMOVED, removed),
    ];
    tagged
        .into_iter()
        .flat_map(|(kind, entries)| entries.into_iter().map(move |entry| (kind, entry)))
        .map(|(kind, entry)| event(kind, base(entry)))
        .collect()
}

/// An incremental endpoint's new item: `item.added` with its key.
pub fn item_added(endpoint: &Endpoint, key: Value, item: Value, at_ms: u64) -> Event {
    Event {
        id: new_id(),
        kind: ITEM_ADDED,
        timestamp_ms: at_ms,
        data: json!({
            "endpoint": &*endpoint.name,
            "url": endpoint.display_url(),
            "key": key,
            "item": item,
        }),
    }
}

/// The event `pollhook test TARGET` sends: marked as a test in its type
/// and its data, so that a receiver's rules can tell it apart.
pub fn test_event(target: &str, at_ms: u64) -> Event {
    Event {
        id: new_id(),
        kind: POLLHOOK_TEST,
        timestamp_ms: at_ms,
        data: json!({
            "test": true,
            "target": target,
            "message": format!("a test event from pollhook to target `{target}`; it can be ignored"),
        }),
    }
}

/// A run of failed polls, as the health events describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failing {
    /// Failed polls in a row.
    pub failures: u32,
    /// When the first of them happened.
    pub since_ms: u64,
    /// The latest error, as logged.
    pub error: String,
    /// The latest HTTP status, when the server answered.
    pub status: Option<u16>,
}

/// `endpoint.failing`: sent once when an endpoint has failed `fail_after`
/// polls in a row.
pub fn endpoint_failing(endpoint: &Endpoint, health: &Failing, at_ms: u64) -> Event {
    Event {
        id: new_id(),
        kind: ENDPOINT_FAILING,
        timestamp_ms: at_ms,
        data: json!({
            "endpoint": &*endpoint.name,
            "url": endpoint.display_url(),
            "failures": health.failures,
            "since": crate::clock::rfc3339(health.since_ms),
            "error": health.error,
            "status": health.status,
        }),
    }
}

/// `endpoint.recovered`: the first successful poll after `endpoint.failing`.
pub fn endpoint_recovered(endpoint: &Endpoint, health: &Failing, at_ms: u64) -> Event {
    Event {
        id: new_id(),
        kind: ENDPOINT_RECOVERED,
        timestamp_ms: at_ms,
        data: json!({
            "endpoint": &*endpoint.name,
            "url": endpoint.display_url(),
            "failures": health.failures,
            "since": crate::clock::rfc3339(health.since_ms),
            "recovered_at": crate::clock::rfc3339(at_ms),
        }),
    }
}

/// `target.failing`: a target's attempts have failed `fail_after` times in
/// a row over at least `fail_for`. Goes to the other targets that take it.
pub fn target_failing(target: &str, health: &Failing, at_ms: u64) -> Event {
    Event {
        id: new_id(),
        kind: TARGET_FAILING,
        timestamp_ms: at_ms,
        data: json!({
            "target": target,
            "failures": health.failures,
            "since": crate::clock::rfc3339(health.since_ms),
            "error": health.error,
            "status": health.status,
        }),
    }
}

/// `target.recovered`: the first delivery to a target after `target.failing`.
pub fn target_recovered(target: &str, health: &Failing, at_ms: u64) -> Event {
    Event {
        id: new_id(),
        kind: TARGET_RECOVERED,
        timestamp_ms: at_ms,
        data: json!({
            "target": target,
            "failures": health.failures,
            "since": crate::clock::rfc3339(health.since_ms),
            "recovered_at": crate::clock::rfc3339(at_ms),
        }),
    }
}

/// An event given up on: what `event.dead` says about it.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    pub target: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub endpoint: &'a str,
    pub attempts: u32,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
}

/// `event.dead`: an event's schedule ran out and it was dead-lettered.
pub fn event_dead(dead: &DeadLetter<'_>, at_ms: u64) -> Event {
    Event {
        id: new_id(),
        kind: EVENT_DEAD,
        timestamp_ms: at_ms,
        data: json!({
            "endpoint": dead.endpoint,
            "target": dead.target,
            "event_id": dead.event_id,
            "event_type": dead.event_type,
            "attempts": dead.attempts,
            "status": dead.status,
            "error": dead.error,
            "replay": format!("pollhook replay {}", dead.event_id),
        }),
    }
}
