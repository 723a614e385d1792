//! What an MQTT target publishes, and where: pure, no IO.
//!
//! - each event, QoS 1, on its `topic` (default `pollhook/<endpoint>/<type>`);
//! - retained, per endpoint: `pollhook/<endpoint>/state` (the current
//!   document) and `pollhook/<endpoint>/failing` (`ON` / `OFF`);
//! - retained, `pollhook/status`: `online`, or `offline` (also the last
//!   will, so the broker says it when pollhook vanishes);
//! - with `homeassistant = true`, retained Home Assistant discovery configs:
//!   a sensor and a `failing` binary sensor per endpoint, on one device per
//!   endpoint, available while `pollhook/status` is `online`.

use std::fmt;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::deliver::format::{self, TargetFormat};
use crate::extract::{Document, Kind};

/// Where availability is published, retained, and the connection's last will.
pub const STATUS_TOPIC: &str = "pollhook/status";
pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";
/// Home Assistant's default discovery prefix.
const DISCOVERY_PREFIX: &str = "homeassistant";
/// The `<node_id>` level of pollhook's discovery topics.
const NODE_ID: &str = "pollhook";
/// What a topic template is when `topic` is not set.
pub const DEFAULT_TOPIC: &str = "pollhook/{{ endpoint }}/{{ type }}";
/// The longest topic MQTT allows (its length is a 16-bit number).
const MAX_TOPIC_BYTES: usize = 65_535;

/// The sensor's state: a scalar document is its own value; an object or a
/// list shows how many entries it has (its content is in the attributes);
/// text is cut where Home Assistant's 255 characters end.
const VALUE_TEMPLATE: &str = "{% if value_json is defined and (value_json is mapping or \
     (value_json is sequence and value_json is not string)) %}{{ value_json | length }}\
     {% elif value_json is defined %}{{ (value_json | string)[:255] }}\
     {% else %}{{ value[:255] }}{% endif %}";
/// The attributes: an object document as it is, anything else as `value`.
const ATTRIBUTES_TEMPLATE: &str = "{% if value_json is defined and value_json is mapping %}\
     {{ value_json | tojson }}{% elif value_json is defined %}{{ {'value': value_json} | tojson }}\
     {% else %}{{ {'value': value} | tojson }}{% endif %}";

/// A target with an `mqtt://` or `mqtts://` URL, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS (rustls) with the system's CAs.
    pub tls: bool,
    /// Both may come from `${...}`; never shown.
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: String,
    /// The minijinja template of each event's topic (checked at load).
    pub topic: String,
    /// Publish Home Assistant discovery configs.
    pub homeassistant: bool,
    /// The endpoints whose events this target takes: their state and
    /// discovery configs are published when the connection is made. A
    /// target is changed (and reconnects) when this list changes.
    pub endpoints: Vec<String>,
}

impl fmt::Debug for MqttTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |value: &Option<String>| value.as_ref().map(|_| "<redacted>");
        f.debug_struct("MqttTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &redacted(&self.username))
            .field("password", &redacted(&self.password))
            .field("client_id", &self.client_id)
            .field("topic", &self.topic)
            .field("homeassistant", &self.homeassistant)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    fn retained(topic: String, payload: impl Into<Vec<u8>>) -> Message {
        Message {
            topic,
            payload: payload.into(),
            retain: true,
        }
    }
}

/// The event a row holds, published on its topic: the payload is what the
/// target's `format` writes; the standard envelope gets the event's `id`
/// as its first field, since MQTT has no `webhook-id` header to carry it.
/// An error means the row can never be published as configured.
pub fn event_message(
    target: &MqttTarget,
    format: &TargetFormat,
    event_id: &str,
    body: &str,
) -> Result<Message, String> {
    let event: Value =
        serde_json::from_str(body).map_err(|error| format!("the event is not JSON: {error}"))?;
    let topic = event_topic(&target.topic, &event, event_id)?;
    let payload = match format {
        TargetFormat::Standard => with_id(event_id, body),
        other => format::render(other, body)?.body,
    };
    Ok(Message {
        topic,
        payload,
        retain: false,
    })
}

/// `{"id":"msg_…",` followed by the rest of the envelope, byte for byte.
fn with_id(event_id: &str, body: &str) -> Vec<u8> {
    let rest = body.strip_prefix('{').unwrap_or(body);
    let separator = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    format!("{{\"id\":{}{separator}{rest}", json!(event_id)).into_bytes()
}

/// Renders a topic template over the event: `endpoint` (the event's
/// endpoint, else its target, else `pollhook`), `type`, `id`, `data`,
/// `timestamp` and `event`.
fn event_topic(template: &str, event: &Value, event_id: &str) -> Result<String, String> {
    let context = crate::deliver::subject::topic_context(event, event_id, str::to_string);
    let topic = format::render_text(template, &context)
        .map_err(|error| format!("cannot render `topic`: {error}"))?;
    check_topic(&topic)?;
    Ok(topic)
}

/// Checks a `topic` template: its syntax, and what it gives for an
/// `endpoint.changed` event, so that a topic that can never be published
/// on is a config error instead of dead letters.
pub fn check_topic_template(template: &str) -> Result<(), String> {
    format::check_template(template)?;
    let example = json!({
        "type": crate::event_type::ENDPOINT_CHANGED,
        "timestamp": "2026-01-01T00:00:00Z",
        "data": { "endpoint": "example", "version": 2, "previous_version": 1, "patch": [] },
    });
    event_topic(template, &example, "msg_example").map(|_| ())
}

/// A topic one may publish on: not empty, no wildcards, no NUL, and short
/// enough for MQTT.
fn check_topic(topic: &str) -> Result<(), String> {
    let problem = if topic.is_empty() {
        "it is empty"
    } else if topic.contains(['+', '#']) {
        "it holds a wildcard (`+` or `#`)"
    } else if topic.contains('\0') {
        "it holds a NUL character"
    } else if topic.len() > MAX_TOPIC_BYTES {
        "it is longer than 65,535 bytes"
    } else {
        return Ok(());
    };
    Err(format!(
        "the topic `{}` cannot be published on: {problem}",
        topic.escape_debug()
    ))
}

/// The endpoint's current document, retained on `pollhook/<endpoint>/state`:
/// JSON as canonical JSON, text as text, other bytes as they came, and in
/// item mode the list of items (sorted by key).
pub fn state_message(endpoint: &str, document: &Document) -> Message {
    let payload = match document.kind {
        Kind::Json | Kind::Text | Kind::Bytes => document.canonical.clone(),
        Kind::Items => {
            items_only(&document.canonical).unwrap_or_else(|| document.canonical.clone())
        }
    };
    Message::retained(state_topic(endpoint), payload)
}

/// `[item, …]` from the stored `[{"key", "item"}, …]`.
fn items_only(canonical: &[u8]) -> Option<Vec<u8>> {
    let entries: Vec<Value> = serde_json::from_slice(canonical).ok()?;
    let items: Vec<&Value> = entries.iter().map(|entry| &entry["item"]).collect();
    serde_json::to_vec(&items).ok()
}

/// `ON` while the endpoint is failing (from `endpoint.failing` until
/// `endpoint.recovered`), else `OFF`; retained.
pub fn failing_message(endpoint: &str, failing: bool) -> Message {
    let payload = if failing { "ON" } else { "OFF" };
    Message::retained(failing_topic(endpoint), payload)
}

/// What an event of this type says about an endpoint's failing state.
pub fn failing_after(event_type: &str) -> Option<bool> {
    match event_type {
        crate::event_type::ENDPOINT_FAILING => Some(true),
        crate::event_type::ENDPOINT_RECOVERED => Some(false),
        _ => None,
    }
}

/// Whether an event of this type comes with a new document.
pub fn changes_state(event_type: &str) -> bool {
    use crate::event_type::{
        ENDPOINT_CHANGED, ITEM_ADDED, ITEM_CHANGED, ITEM_REMOVED, ITEMS_CHANGED,
    };
    [
        ENDPOINT_CHANGED,
        ITEM_ADDED,
        ITEM_CHANGED,
        ITEM_REMOVED,
        ITEMS_CHANGED,
    ]
    .contains(&event_type)
}

/// `online` or `offline` on [`STATUS_TOPIC`], retained.
pub fn status_message(online: bool) -> Message {
    Message::retained(
        STATUS_TOPIC.to_string(),
        if online { ONLINE } else { OFFLINE },
    )
}

pub fn state_topic(endpoint: &str) -> String {
    format!("pollhook/{endpoint}/state")
}

pub fn failing_topic(endpoint: &str) -> String {
    format!("pollhook/{endpoint}/failing")
}

/// An endpoint's name as Home Assistant's ids allow (`[a-zA-Z0-9_-]`):
/// other characters become `_`, and then a hash of the name keeps `a.b`
/// and `a_b` apart.
fn object_id(endpoint: &str) -> String {
    let plain: String = endpoint
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '_',
            },
        )
        .collect();
    if plain == endpoint {
        return plain;
    }
    let hash = Sha256::digest(endpoint.as_bytes());
    format!("{plain}_{}", hex::encode(&hash[..4]))
}

/// The Home Assistant discovery configs of one endpoint, retained: a
/// sensor holding its value (attributes: the document) and a `problem`
/// binary sensor that is on while it fails, both on one device named
/// after the endpoint.
pub fn discovery_messages(endpoint: &str) -> [Message; 2] {
    let object = object_id(endpoint);
    let version = env!("CARGO_PKG_VERSION");
    let availability = json!([{
        "topic": STATUS_TOPIC,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
    }]);
    let device = json!({
        "identifiers": [format!("pollhook_{object}")],
        "name": endpoint,
        "manufacturer": "pollhook",
        "model": "polled endpoint",
        "sw_version": version,
    });
    let origin = json!({ "name": "pollhook", "sw_version": version });
    let state = state_topic(endpoint);
    let sensor = json!({
        // The device's main entity: Home Assistant names it after the device.
        "name": null,
        "unique_id": format!("pollhook_{object}"),
        "state_topic": state,
        "value_template": VALUE_TEMPLATE,
        "json_attributes_topic": state,
        "json_attributes_template": ATTRIBUTES_TEMPLATE,
        "availability": availability,
        "qos": 1,
        "device": device,
        "origin": origin,
    });
    let failing = json!({
        "name": "Failing",
        "unique_id": format!("pollhook_{object}_failing"),
        "state_topic": failing_topic(endpoint),
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "problem",
        "entity_category": "diagnostic",
        "availability": availability,
        "qos": 1,
        "device": device,
        "origin": origin,
    });
    let topic =
        |component: &str| format!("{DISCOVERY_PREFIX}/{component}/{NODE_ID}/{object}/config");
    [
        Message::retained(topic("sensor"), sensor.to_string()),
        Message::retained(topic("binary_sensor"), failing.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(topic: &str) -> MqttTarget {
        MqttTarget {
            host: "127.0.0.1".into(),
            port: 1883,
            tls: false,
            username: Some("user".into()),
            password: Some("hunter2".into()),
            client_id: "pollhook-ha".into(),
            topic: topic.into(),
            homeassistant: true,
            endpoints: vec!["prices".into()],
        }
    }

    const BODY: &str = r#"{"type":"endpoint.changed","timestamp":"2026-01-01T00:00:00Z","data":{"endpoint":"prices","version":2}}"#;

    #[test]
    fn events_go_to_their_topic_with_their_id() {
        let message = event_message(
            &target(DEFAULT_TOPIC),
            &TargetFormat::Standard,
            "msg_1",
            BODY,
        )
        .unwrap();
        assert_eq!(message.topic, "pollhook/prices/endpoint.changed");
        assert!(!message.retain);
        let payload: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(payload["id"], "msg_1");
        assert_eq!(payload["data"]["version"], 2);
        assert!(message.payload.ends_with(&BODY.as_bytes()[1..]));

        let custom = target("home/{{ data.endpoint }}/v{{ data.version }}/{{ id }}");
        let message = event_message(&custom, &TargetFormat::Standard, "msg_1", BODY).unwrap();
        assert_eq!(message.topic, "home/prices/v2/msg_1");

        // An event about no endpoint goes under its target's name.
        let test = r#"{"type":"pollhook.test","timestamp":"t","data":{"target":"ha"}}"#;
        let message = event_message(
            &target(DEFAULT_TOPIC),
            &TargetFormat::Standard,
            "msg_2",
            test,
        )
        .unwrap();
        assert_eq!(message.topic, "pollhook/ha/pollhook.test");
    }

    #[test]
    fn topics_that_cannot_be_published_on_are_errors() {
        for (template, why) in [
            ("", "it is empty"),
            ("a/+/{{ type }}", "wildcard"),
            ("a/{{ data.missing }}#", "wildcard"),
        ] {
            let error = event_message(&target(template), &TargetFormat::Standard, "msg_1", BODY)
                .unwrap_err();
            assert!(error.contains(why), "{template}: {error}");
        }
        assert!(event_message(&target(DEFAULT_TOPIC), &TargetFormat::Standard, "m", "{").is_err());
    }

    #[test]
    fn state_is_the_document_and_items_are_listed() {
        let json = Document::from_canonical(Kind::Json, br#"{"price":1}"#.to_vec());
        let message = state_message("prices", &json);
        assert_eq!(message.topic, "pollhook/prices/state");
        assert_eq!(message.payload, br#"{"price":1}"#);
        assert!(message.retain);
        let items = Document::from_canonical(
            Kind::Items,
            br#"[{"key":"a","item":{"v":1}},{"key":"b","item":2}]"#.to_vec(),
        );
        assert_eq!(state_message("r", &items).payload, br#"[{"v":1},2]"#);
        let text = Document::from_canonical(Kind::Text, b"hello".to_vec());
        assert_eq!(state_message("t", &text).payload, b"hello");
    }

    #[test]
    fn failing_follows_the_health_events() {
        assert_eq!(failing_after("endpoint.failing"), Some(true));
        assert_eq!(failing_after("endpoint.recovered"), Some(false));
        assert_eq!(failing_after("endpoint.changed"), None);
        assert_eq!(failing_message("a", true).payload, b"ON");
        assert_eq!(failing_message("a", false).topic, "pollhook/a/failing");
        assert!(changes_state("item.added") && !changes_state("endpoint.failing"));
    }

    #[test]
    fn object_ids_are_plain_and_distinct() {
        assert_eq!(object_id("btc-eur_1"), "btc-eur_1");
        assert!(object_id("a.b").starts_with("a_b_"));
        assert_ne!(object_id("a.b"), object_id("a_b"));
        assert!(
            object_id("a.b")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        );
    }

    #[test]
    fn debug_shows_no_credentials() {
        let shown = format!("{:?}", target(DEFAULT_TOPIC));
        assert!(
            !shown.contains("hunter2") && !shown.contains("\"user\""),
            "{shown}"
        );
    }
}
