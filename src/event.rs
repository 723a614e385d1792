//! The webhook body: a Standard Webhooks envelope around what changed.

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Endpoint;
use crate::diff::Change;

pub const ENDPOINT_CHANGED: &str = "endpoint.changed";

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

/// `endpoint.changed`: the extracted document went from `previous_version`
/// (none for an initial event) to `version`.
pub fn endpoint_changed(
    endpoint: &Endpoint,
    previous_version: Option<u64>,
    version: u64,
    change: Change,
    at_ms: u64,
) -> Event {
    let mut data = json!({
        "endpoint": endpoint.name,
        "url": endpoint.display_url(),
        "version": version,
        "previous_version": previous_version,
    });
    let fields = data.as_object_mut().expect("built as an object");
    match change {
        Change::Json { patch } => {
            fields.insert("patch".into(), patch);
        }
        Change::Text { diff } => {
            fields.insert("diff".into(), Value::String(diff));
        }
        Change::Bytes {
            previous_hash,
            current_hash,
        } => {
            fields.insert("previous_hash".into(), Value::String(previous_hash));
            fields.insert("current_hash".into(), Value::String(current_hash));
        }
    }
    Event {
        id: new_id(),
        kind: ENDPOINT_CHANGED,
        timestamp_ms: at_ms,
        data,
    }
}
