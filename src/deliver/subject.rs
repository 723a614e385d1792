//! Pure: the NATS subject an event is published on, rendered from the
//! target's `subject` template over the event, as an MQTT `topic` is (see
//! [`topic_context`]). The endpoint's name is made one subject token, so
//! that `pollhook.events.{{ endpoint }}` stays three tokens whatever the
//! name holds.

use serde_json::{Value, json};

use super::format;

/// What a topic or subject template sees: `endpoint` (the event's
/// endpoint, else its target, else `pollhook`), `type`, `id`, `data`,
/// `timestamp` and `event`.
pub fn topic_context(event: &Value, event_id: &str, endpoint: impl Fn(&str) -> String) -> Value {
    let data = &event["data"];
    let name = data["endpoint"]
        .as_str()
        .or_else(|| data["target"].as_str())
        .unwrap_or("pollhook");
    json!({
        "endpoint": endpoint(name),
        "type": event["type"],
        "id": event_id,
        "data": data,
        "timestamp": event["timestamp"],
        "event": event,
    })
}

/// A name as one subject token: what is not a letter, a digit, `-` or
/// `_` becomes `_`.
fn token(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            _ => '_',
        })
        .collect()
}

/// The subject of the event `body` (the stored envelope) with id `event_id`.
pub fn subject(template: &str, body: &str, event_id: &str) -> Result<String, String> {
    let event: Value =
        serde_json::from_str(body).map_err(|error| format!("the event is not JSON: {error}"))?;
    let context = topic_context(&event, event_id, token);
    let subject = format::render_text(template, &context)
        .map_err(|error| format!("cannot render `subject`: {error}"))?;
    check_subject(&subject)?;
    Ok(subject)
}

/// A subject one may publish on: tokens of visible characters between
/// dots, none empty, no wildcard.
fn check_subject(subject: &str) -> Result<(), String> {
    let problem = if subject.is_empty() {
        "it is empty"
    } else if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it holds a space or a control character"
    } else if subject.split('.').any(|token| matches!(token, "*" | ">")) {
        "it holds a wildcard (`*` or `>`)"
    } else if subject.split('.').any(str::is_empty) {
        "it has an empty token (`..`, or a dot at an end)"
    } else {
        return Ok(());
    };
    Err(format!(
        "the subject `{subject}` cannot be published on: {problem}"
    ))
}

/// Checks a `subject` template: its syntax, and what it gives for an
/// `endpoint.changed` event, so that a subject that can never be published
/// on is a config error instead of dead letters.
pub fn check_subject_template(template: &str) -> Result<(), String> {
    format::check_template(template)?;
    let example = json!({
        "type": crate::event_type::ENDPOINT_CHANGED,
        "timestamp": "2026-01-01T00:00:00Z",
        "data": { "endpoint": "example", "version": 2, "previous_version": 1, "patch": [] },
    });
    subject(template, &example.to_string(), "msg_example").map(|_| ())
}

/// The subjects a stream must take for `template`: up to the token where
/// the template starts, then `>`; a template with no expression is its
/// own subject.
pub fn stream_subjects(template: &str) -> String {
    let Some(start) = template.find("{{").or_else(|| template.find("{%")) else {
        return template.to_string();
    };
    match template[..start].rfind('.') {
        Some(dot) => format!("{}.>", &template[..dot]),
        None => ">".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"type":"endpoint.changed","timestamp":"t","data":{"endpoint":"btc eur.v2","version":2}}"#;

    #[test]
    fn subjects_from_templates() {
        let subject = subject(crate::config::DEFAULT_SUBJECT, BODY, "msg_1").unwrap();
        assert_eq!(subject, "pollhook.events.btc_eur_v2");
        let custom = super::subject("ev.{{ type }}.v{{ data.version }}", BODY, "msg_1").unwrap();
        assert_eq!(custom, "ev.endpoint.changed.v2");
        for (template, why) in [
            ("", "it is empty"),
            ("a.*.b", "wildcard"),
            ("a.>", "wildcard"),
            ("a..{{ endpoint }}", "empty token"),
            ("a b", "space"),
        ] {
            let error = super::subject(template, BODY, "msg_1").unwrap_err();
            assert!(error.contains(why), "{template}: {error}");
        }
        assert!(check_subject_template("x.{{ endpoint }}").is_ok());
        assert!(check_subject_template("x.{{ endpoint").is_err());
    }

    #[test]
    fn the_subjects_a_stream_takes() {
        assert_eq!(
            stream_subjects(crate::config::DEFAULT_SUBJECT),
            "pollhook.events.>"
        );
        assert_eq!(stream_subjects("alerts"), "alerts");
        assert_eq!(stream_subjects("{{ type }}.x"), ">");
        assert_eq!(stream_subjects("a.b{{ type }}"), "a.>");
    }
}
