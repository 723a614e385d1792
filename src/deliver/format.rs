//! Writing an event the way its target reads it: pure, no IO.
//!
//! The outbox always keeps the Standard Webhooks envelope; a target's
//! `format` is applied when a row is sent, so a dead letter replayed after a
//! config change is rendered with the new format, and the signature covers
//! the bytes actually sent.
//!
//! - `standard`: the envelope, byte for byte.
//! - `slack`: `{"text": summary}` for an incoming webhook.
//! - `discord`: `{"content": summary, "allowed_mentions": {"parse": []}}`;
//!   the empty `allowed_mentions` keeps an API's text from pinging
//!   `@everyone` or a role.
//! - `ntfy`: the summary as plain text, with `Title` and `Tags` headers
//!   (and `Priority: high` for `endpoint.failing`).
//! - `apprise`: `{"title", "body", "type"}` for an apprise-api server's
//!   `/notify/<key>`, which passes it on to ~100 services; `type` is
//!   `failure`, `success` or `info`, so each service can show it.
//! - `template`: a minijinja template of the user's own (see [`Template`]).
//!
//! Email is written here too ([`email`]): a subject and a plain-text body.
//!
//! The summary is one line a person reads on a phone, naming what it can:
//! the values (`btc-eur: /price 19.99 → 14.99`), the item
//! (`rust-releases: added 1.91.0 — https://...`), the failure
//! (`api: failing since 12:03 UTC, HTTP 503`).

use std::fmt::Write as _;

use serde_json::{Value, json};

/// How a target wants its events written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TargetFormat {
    /// The Standard Webhooks envelope, unchanged.
    #[default]
    Standard,
    Slack,
    Discord,
    Ntfy,
    Apprise,
    Template(Template),
}

impl TargetFormat {
    /// The name as written in the config, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            TargetFormat::Standard => "standard",
            TargetFormat::Slack => "slack",
            TargetFormat::Discord => "discord",
            TargetFormat::Ntfy => "ntfy",
            TargetFormat::Apprise => "apprise",
            TargetFormat::Template(_) => "template",
        }
    }
}

/// A minijinja template, checked when the config is loaded and rendered for
/// every delivery.
///
/// The context holds `event` (the whole envelope), and for convenience
/// `type`, `data` and `timestamp` (its three fields) and `summary` (the one
/// line the chat formats send). Undefined values are chainable: in a
/// template shared by several event types, `{{ data.item.name }}` renders as
/// nothing for an event without an item instead of failing the delivery.
/// The `tojson` filter writes any value as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The template text (from `template`, or read from `template_file`).
    pub source: String,
    /// The `Content-Type` sent. Without one, output that parses as JSON
    /// goes as `application/json`, anything else as UTF-8 plain text.
    pub content_type: Option<String>,
}

/// The body and headers one delivery sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The bytes that are signed and sent.
    pub body: Vec<u8>,
    pub content_type: String,
    /// Headers the format adds (ntfy's `Title`, `Tags`).
    pub headers: Vec<(&'static str, String)>,
}

/// Slack accepts 40,000 characters of `text`, but it folds long messages
/// behind "show more" and its own blocks stop at 3,000: more than that is
/// no longer a notification.
pub const SLACK_LIMIT_CHARS: usize = 3_000;
/// Discord refuses `content` longer than 2,000 characters.
pub const DISCORD_LIMIT_CHARS: usize = 2_000;
/// ntfy turns a message longer than 4,096 bytes into an attachment.
pub const NTFY_LIMIT_BYTES: usize = 4_096;

const JSON: &str = "application/json";
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";
/// How many item keys or patch paths a summary names before `…`.
const LISTED: usize = 3;
/// Item keys longer than this are cut in a summary.
const LABEL_CHARS: usize = 40;
/// A poll error longer than this is cut in a summary.
const ERROR_CHARS: usize = 200;
/// An item's link longer than this is cut in a summary.
const URL_CHARS: usize = 200;

/// Writes the envelope `body` (as the outbox keeps it) in `format`. An
/// error means this row can never be sent to this target as configured.
pub fn render(format: &TargetFormat, body: &str) -> Result<Rendered, String> {
    let event = || -> Result<Value, String> {
        serde_json::from_str(body).map_err(|error| format!("the event is not JSON: {error}"))
    };
    let rendered = match format {
        TargetFormat::Standard => Rendered {
            body: body.as_bytes().to_vec(),
            content_type: JSON.into(),
            headers: Vec::new(),
        },
        TargetFormat::Slack => {
            let text = escape_and_cut(&summary(&event()?), slack_escape, SLACK_LIMIT_CHARS, chars);
            json_body(&json!({ "text": text }))
        }
        TargetFormat::Discord => {
            let content = escape_and_cut(
                &summary(&event()?),
                discord_escape,
                DISCORD_LIMIT_CHARS,
                chars,
            );
            json_body(&json!({ "content": content, "allowed_mentions": { "parse": [] } }))
        }
        TargetFormat::Ntfy => ntfy_body(&event()?),
        TargetFormat::Apprise => apprise_body(&event()?),
        TargetFormat::Template(template) => render_template(template, &event()?)?,
    };
    Ok(rendered)
}

fn ntfy_body(event: &Value) -> Rendered {
    let message = escape_and_cut(&summary(event), verbatim, NTFY_LIMIT_BYTES, bytes);
    let kind = event["type"].as_str().unwrap_or_default();
    let mut headers = vec![
        ("Title", header_text(&title(event))),
        ("Tags", header_text(&format!("{},{kind}", ntfy_emoji(kind)))),
    ];
    if matches!(kind, "endpoint.failing" | "target.failing" | "event.dead") {
        headers.push(("Priority", "high".into()));
    }
    Rendered {
        body: message.into_bytes(),
        content_type: PLAIN_TEXT.into(),
        headers,
    }
}

fn apprise_body(event: &Value) -> Rendered {
    let kind = match event["type"].as_str().unwrap_or_default() {
        "endpoint.failing" | "target.failing" | "event.dead" => "failure",
        "endpoint.recovered" | "target.recovered" => "success",
        _ => "info",
    };
    json_body(&json!({ "title": title(event), "body": summary(event), "type": kind }))
}

fn json_body(value: &Value) -> Rendered {
    Rendered {
        body: value.to_string().into_bytes(),
        content_type: JSON.into(),
        headers: Vec::new(),
    }
}

fn environment() -> minijinja::Environment<'static> {
    let mut environment = minijinja::Environment::new();
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    environment
}

/// Parses a template without rendering it: the config check.
pub fn check_template(source: &str) -> Result<(), String> {
    environment()
        .template_from_str(source)
        .map(|_| ())
        .map_err(|error| template_error(&error))
}

/// A template's text for `event` (see [`Template`] for what it sees).
fn template_text(source: &str, event: &Value) -> Result<String, String> {
    let context = json!({
        "event": event,
        "type": event["type"],
        "data": event["data"],
        "timestamp": event["timestamp"],
        "summary": summary(event),
    });
    render_text(source, &context).map_err(|error| format!("cannot render the template: {error}"))
}

fn render_template(template: &Template, event: &Value) -> Result<Rendered, String> {
    let text = template_text(&template.source, event)?;
    let content_type = match &template.content_type {
        Some(content_type) => content_type.clone(),
        None if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok() => JSON.into(),
        None => PLAIN_TEXT.into(),
    };
    Ok(Rendered {
        body: text.into_bytes(),
        content_type,
        headers: Vec::new(),
    })
}

/// A JSON value as a template sees it (see [`TemplateValue`]): for the
/// request templates' `state.cursor`.
pub fn template_value(value: &Value) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(TemplateValue(value)))
}

/// Renders a template (checked by [`check_template`]) over a JSON context,
/// as every template of a target is rendered.
pub fn render_text(source: &str, context: &Value) -> Result<String, String> {
    environment()
        .render_str(source, template_value(context))
        .map_err(|error| template_error(&error))
}

/// An email's subject and plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailText {
    pub subject: String,
    pub body: String,
}

/// Mail clients show about this much of a subject.
const SUBJECT_CHARS: usize = 200;

/// Writes the envelope `body` as an email: the subject from the `subject`
/// template or the summary; the body from a `template` format, or the
/// summary, what changed (the diff, or the event's data) and the event's
/// type and time. Pure, like [`render`]; an error means it can never be sent.
pub fn email(
    format: &TargetFormat,
    subject: Option<&str>,
    body: &str,
) -> Result<EmailText, String> {
    let event: Value =
        serde_json::from_str(body).map_err(|error| format!("the event is not JSON: {error}"))?;
    let summary = summary(&event);
    let subject = match subject {
        Some(source) => template_text(source, &event)?,
        None => summary.clone(),
    };
    // A header is one line: a template's newlines would end it.
    let subject = cut(
        subject
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_str(),
        SUBJECT_CHARS,
    );
    let body = match format {
        TargetFormat::Template(template) => template_text(&template.source, &event)?,
        _ => {
            let data = &event["data"];
            let detail = match data["diff"].as_str() {
                Some(diff) => diff.to_string(),
                None => serde_json::to_string_pretty(data).unwrap_or_default(),
            };
            format!(
                "{summary}\n\n{}\n\n-- \n{} at {}, sent by pollhook\n",
                detail.trim_end(),
                event["type"].as_str().unwrap_or("event"),
                event["timestamp"].as_str().unwrap_or_default(),
            )
        }
    };
    Ok(EmailText { subject, body })
}

/// A JSON value as a template sees it. With serde_json's
/// `arbitrary_precision`, a `Value`'s numbers serialise as maps holding
/// their text, which only serde_json reads back as numbers; minijinja is
/// given numbers: integers as integers (up to 128 bits, so exact), anything
/// else as an `f64`, as before. So a template rounds a decimal of more than
/// 17 digits or a bigger integer (the standard format's body has them all),
/// and sees a number beyond an `f64`'s range as its text.
struct TemplateValue<'a>(&'a Value);

impl serde::Serialize for TemplateValue<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Number(number) => {
                if let Some(integer) = number.as_u64() {
                    serializer.serialize_u64(integer)
                } else if let Some(integer) = number.as_i64() {
                    serializer.serialize_i64(integer)
                } else if let Ok(integer) = number.as_str().parse::<u128>() {
                    serializer.serialize_u128(integer)
                } else if let Ok(integer) = number.as_str().parse::<i128>() {
                    serializer.serialize_i128(integer)
                } else {
                    match number.as_str().parse::<f64>() {
                        Ok(float) if float.is_finite() => serializer.serialize_f64(float),
                        _ => serializer.serialize_str(number.as_str()),
                    }
                }
            }
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&TemplateValue(item))?;
                }
                seq.end()
            }
            Value::Object(members) => {
                let mut map = serializer.serialize_map(Some(members.len()))?;
                for (key, value) in members {
                    map.serialize_entry(key, &TemplateValue(value))?;
                }
                map.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// `syntax error: unexpected end of input (template line 2)`, without
/// minijinja's `<string>` name.
fn template_error(error: &minijinja::Error) -> String {
    let mut text = error.kind().to_string();
    if let Some(detail) = error.detail() {
        let _ = write!(text, ": {detail}");
    }
    if let Some(line) = error.line() {
        let _ = write!(text, " (template line {line})");
    }
    text
}

/// One line saying what happened, for a person: `prices: changed (3
/// operations: /btc/usd, /eth/usd, /sol/usd)`. Never fails: an event it does
/// not know is named by its type.
pub fn summary(event: &Value) -> String {
    let data = &event["data"];
    let endpoint = data["endpoint"].as_str().unwrap_or("pollhook");
    let what = match event["type"].as_str().unwrap_or_default() {
        "endpoint.changed" => document_change(data),
        "item.added" => format!("added {}{}", item_label(data), link(&data["item"])),
        "item.removed" => format!("removed {}", item_label(data)),
        "item.changed" => match values_changed(&data["patch"], |path| {
            data["previous"].pointer(path).cloned()
        }) {
            Some(values) => format!("{}: {values}", item_label(data)),
            None => format!(
                "changed {}{}",
                item_label(data),
                patch_detail(&data["patch"])
            ),
        },
        "items.changed" => batch_change(data),
        "endpoint.failing" => failing(data, "failed poll", "failed polls"),
        "endpoint.recovered" | "target.recovered" => recovered(event, data),
        "target.failing" => format!(
            "target `{}` {}",
            data["target"].as_str().unwrap_or_default(),
            failing(data, "failed attempt", "failed attempts")
        ),
        "event.dead" => dead(data),
        "pollhook.test" => format!(
            "test event for target `{}`: it works",
            data["target"].as_str().unwrap_or_default()
        ),
        "" => "event".to_string(),
        other => other.to_string(),
    };
    match event["type"].as_str() {
        Some("target.recovered") => format!(
            "{endpoint}: target `{}` {what}",
            data["target"].as_str().unwrap_or_default()
        ),
        _ => format!("{endpoint}: {what}"),
    }
}

/// `/price 19.99 → 14.99, /stock 3 → 0` for a patch of at most a few
/// scalar changes; `previous` finds the value a path had. `None` when the
/// patch says more than one line can.
fn values_changed(patch: &Value, previous: impl Fn(&str) -> Option<Value>) -> Option<String> {
    let operations = patch.as_array()?;
    if operations.is_empty() || operations.len() > LISTED {
        return None;
    }
    let scalar = |value: &Value| !value.is_object() && !value.is_array();
    let parts = operations.iter().map(|operation| {
        let path = operation["path"].as_str()?;
        let shown_path = match path {
            "" => String::new(),
            path => format!("{} ", cut(path, LABEL_CHARS)),
        };
        let value = &operation["value"];
        match operation["op"].as_str()? {
            "replace" if scalar(value) => Some(match previous(path).filter(scalar) {
                Some(was) => format!("{shown_path}{} → {}", shown(&was), shown(value)),
                None => format!("{shown_path}now {}", shown(value)),
            }),
            "add" if scalar(value) => Some(format!("{shown_path}+ {}", shown(value))),
            "remove" => Some(format!("{}removed", shown_path)),
            _ => None,
        }
    });
    parts
        .collect::<Option<Vec<String>>>()
        .map(|parts| parts.join(", "))
}

/// A scalar as a person reads it: strings without quotes, cut when long.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => cut(text, LABEL_CHARS),
        other => cut(&other.to_string(), LABEL_CHARS),
    }
}

/// ` — https://...`: the item's own link, if it has one at its top level
/// (GitHub's `html_url`, a feed's `link`, ...).
fn link(item: &Value) -> String {
    const NAMED: [&str; 4] = ["html_url", "url", "link", "href"];
    let is_link = |value: &Value| {
        value
            .as_str()
            .filter(|text| text.starts_with("https://") || text.starts_with("http://"))
            .map(str::to_string)
    };
    let Some(fields) = item.as_object() else {
        return String::new();
    };
    NAMED
        .iter()
        .find_map(|name| fields.get(*name).and_then(is_link))
        .or_else(|| fields.values().find_map(is_link))
        .map(|url| format!(" — {}", cut(&url, URL_CHARS)))
        .unwrap_or_default()
}

/// `api: event msg_… (item.added) to `ha` given up after 8 attempts (HTTP 500)`.
fn dead(data: &Value) -> String {
    let cause = match data["status"].as_u64() {
        Some(status) => format!("HTTP {status}"),
        None => cut(data["error"].as_str().unwrap_or("error"), ERROR_CHARS),
    };
    format!(
        "event {} ({}) to `{}` given up after {} ({cause})",
        data["event_id"].as_str().unwrap_or_default(),
        data["event_type"].as_str().unwrap_or_default(),
        data["target"].as_str().unwrap_or_default(),
        count(
            data["attempts"].as_u64().unwrap_or(0) as usize,
            "attempt",
            "attempts"
        ),
    )
}

fn document_change(data: &Value) -> String {
    if data["previous_version"].is_null() {
        return "first version".to_string();
    }
    if data.get("patch").is_some() {
        let replaced = &data["replaced"];
        return values_changed(&data["patch"], |path| replaced.get(path).cloned())
            .unwrap_or_else(|| format!("changed{}", patch_detail(&data["patch"])));
    }
    if let Some(diff) = data["diff"].as_str() {
        let (added, removed) = diff_lines(diff);
        return format!("text changed (+{added} \u{2212}{removed} lines)");
    }
    match (
        data["previous_hash"].as_str(),
        data["current_hash"].as_str(),
    ) {
        (Some(previous), Some(current)) => format!(
            "content changed (hash {} → {})",
            short_hash(previous),
            short_hash(current)
        ),
        _ => "changed".to_string(),
    }
}

/// ` (3 operations: /a, /b, /c, …)`, or nothing for an empty patch.
fn patch_detail(patch: &Value) -> String {
    let operations = patch.as_array().map(Vec::as_slice).unwrap_or_default();
    if operations.is_empty() {
        return String::new();
    }
    let mut paths: Vec<&str> = Vec::new();
    for operation in operations {
        let path = operation["path"].as_str().unwrap_or_default();
        let path = if path.is_empty() { "/" } else { path };
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    format!(
        " ({}: {})",
        count(operations.len(), "operation", "operations"),
        listed(paths.into_iter().map(|path| cut(path, LABEL_CHARS)))
    )
}

/// Lines added and removed in a unified diff, headers not counted.
fn diff_lines(diff: &str) -> (usize, usize) {
    let mut added = 0;
    let mut removed = 0;
    for line in diff.lines() {
        if line.starts_with('+') && !line.starts_with("+++") {
            added += 1;
        } else if line.starts_with('-') && !line.starts_with("---") {
            removed += 1;
        }
    }
    (added, removed)
}

fn short_hash(hash: &str) -> &str {
    hash.get(..8).unwrap_or(hash)
}

/// `1 added (1.91.0), 0 removed`, then `, 2 changed (a, b)` when some changed.
fn batch_change(data: &Value) -> String {
    let keys = |field: &str| -> Vec<String> {
        data[field]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|entry| label(&entry["key"]))
            .collect()
    };
    let part = |field: &str| {
        let keys = keys(field);
        if keys.is_empty() {
            format!("0 {field}")
        } else {
            format!("{} {field} ({})", keys.len(), listed(keys.into_iter()))
        }
    };
    let mut text = format!("{}, {}", part("added"), part("removed"));
    if !keys("changed").is_empty() {
        let _ = write!(text, ", {}", part("changed"));
    }
    text
}

/// `failing since 12:03 UTC, HTTP 503 (3 failed polls)`.
fn failing(data: &Value, one: &str, many: &str) -> String {
    let cause = match data["status"].as_u64() {
        Some(status) => format!("HTTP {status}"),
        None => cut(data["error"].as_str().unwrap_or("error"), ERROR_CHARS),
    };
    let failures = data["failures"].as_u64().unwrap_or(0) as usize;
    let since = data["since"]
        .as_str()
        .map(|since| format!(" since {}", clock_time(since)))
        .unwrap_or_default();
    format!("failing{since}, {cause} ({})", count(failures, one, many))
}

/// `recovered after 5m`.
fn recovered(event: &Value, data: &Value) -> String {
    let parse = |value: &Value| {
        value
            .as_str()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
    };
    let recovered_at = parse(&data["recovered_at"]).or_else(|| parse(&event["timestamp"]));
    match (parse(&data["since"]), recovered_at) {
        (Some(since), Some(recovered_at)) => {
            let seconds = (recovered_at - since).num_seconds().max(0) as u64;
            format!("recovered after {}", rough_duration(seconds))
        }
        _ => "recovered".to_string(),
    }
}

/// `12:03 UTC` from an RFC 3339 time; the text as it is if it is not one.
fn clock_time(text: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(time) if time.offset().local_minus_utc() == 0 => {
            format!("{} UTC", time.format("%H:%M"))
        }
        Ok(time) => time.format("%H:%M %:z").to_string(),
        Err(_) => cut(text, LABEL_CHARS),
    }
}

/// The two largest units: `45s`, `5m`, `5m 30s`, `1h 2m`, `3d 4h`.
fn rough_duration(seconds: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let parts: Vec<String> = units
        .iter()
        .scan(seconds, |left, (size, unit)| {
            let amount = *left / size;
            *left %= size;
            Some((amount, *unit))
        })
        .skip_while(|(amount, _)| *amount == 0)
        .take(2)
        .filter(|(amount, _)| *amount > 0)
        .map(|(amount, unit)| format!("{amount}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".to_string()
    } else {
        parts.join(" ")
    }
}

/// An item known by its `id` (a feed's entry, most APIs' records) is
/// named by its `title` when it has one: `1.91.0`, not
/// `tag:github.com,2008:Repository/724712/1.91.0`; any other by its key.
fn item_label(data: &Value) -> String {
    let item = &data["item"];
    match item["title"].as_str() {
        Some(title) if !title.trim().is_empty() && item["id"] == data["key"] => {
            cut(title.trim(), LABEL_CHARS)
        }
        _ => label(&data["key"]),
    }
}

/// An item's key as a person reads it: strings without quotes, anything
/// else as JSON, cut when long.
fn label(key: &Value) -> String {
    match key {
        Value::String(text) => cut(text, LABEL_CHARS),
        Value::Null => "an item".to_string(),
        other => cut(&other.to_string(), LABEL_CHARS),
    }
}

/// The first few, then `…`.
fn listed(mut labels: impl Iterator<Item = String>) -> String {
    let mut shown: Vec<String> = labels.by_ref().take(LISTED).collect();
    if labels.next().is_some() {
        shown.push("…".to_string());
    }
    shown.join(", ")
}

fn count(number: usize, one: &str, many: &str) -> String {
    format!("{number} {}", if number == 1 { one } else { many })
}

/// A short title: `api is failing`, `rust-releases: item added`.
fn title(event: &Value) -> String {
    let data = &event["data"];
    let endpoint = data["endpoint"].as_str().unwrap_or("pollhook");
    let target = data["target"].as_str().unwrap_or_default();
    match event["type"].as_str().unwrap_or_default() {
        "target.failing" => format!("target {target} is failing"),
        "target.recovered" => format!("target {target} recovered"),
        "event.dead" => format!("{endpoint}: an event to {target} was given up"),
        "endpoint.changed" => format!("{endpoint} changed"),
        "item.added" => format!("{endpoint}: item added"),
        "item.removed" => format!("{endpoint}: item removed"),
        "item.changed" => format!("{endpoint}: item changed"),
        "items.changed" => format!("{endpoint}: items changed"),
        "endpoint.failing" => format!("{endpoint} is failing"),
        "endpoint.recovered" => format!("{endpoint} recovered"),
        other => format!("{endpoint}: {other}"),
    }
}

/// The tag ntfy shows as an emoji in front of the title.
fn ntfy_emoji(kind: &str) -> &'static str {
    match kind {
        "item.added" => "new",
        "item.removed" => "wastebasket",
        "endpoint.changed" | "item.changed" | "items.changed" => "arrows_counterclockwise",
        "endpoint.failing" | "target.failing" | "event.dead" => "warning",
        "endpoint.recovered" | "target.recovered" => "white_check_mark",
        _ => "bell",
    }
}

/// Header values must be visible ASCII (an invalid one would fail every
/// attempt): anything else becomes `?`, and a long value ends in `...`.
fn header_text(text: &str) -> String {
    const MAX: usize = 250;
    let mut text: String = text
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.len() > MAX {
        text.truncate(MAX - 3);
        text.push_str("...");
    }
    text
}

/// Slack reads `&`, `<` and `>` as markup (links, `<!channel>`).
fn slack_escape(c: char, out: &mut String) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        c => out.push(c),
    }
}

/// Discord reads these as Markdown: `rust_releases` would lose its
/// underscores to italics.
fn discord_escape(c: char, out: &mut String) {
    if matches!(
        c,
        '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '#' | '[' | ']'
    ) {
        out.push('\\');
    }
    out.push(c);
}

fn verbatim(c: char, out: &mut String) {
    out.push(c);
}

fn chars(text: &str) -> usize {
    text.chars().count()
}

fn bytes(text: &str) -> usize {
    text.len()
}

/// At most `max` characters, ending in `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    escape_and_cut(text, verbatim, max, chars)
}

/// Escapes `text` one character at a time and keeps what fits in `max`
/// (as `measure` counts: characters or bytes), ending in `…` when something
/// had to go. Cuts fall between characters and never inside an escape.
pub fn escape_and_cut(
    text: &str,
    escape: fn(char, &mut String),
    max: usize,
    measure: fn(&str) -> usize,
) -> String {
    let mut out = String::with_capacity(text.len());
    // Where each piece starts in `out`, and the size of what comes before it.
    let mut pieces = Vec::with_capacity(text.len());
    let mut size = 0;
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        escape(c, &mut piece);
        pieces.push((out.len(), size));
        size += measure(&piece);
        out.push_str(&piece);
    }
    if size <= max {
        return out;
    }
    let room = max.saturating_sub(measure("…"));
    // The last piece boundary where the text before it still fits.
    let end = pieces
        .iter()
        .rev()
        .find(|(_, size)| *size <= room)
        .map_or(0, |(offset, _)| *offset);
    out.truncate(end);
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: Value) -> Value {
        json!({"type": kind, "timestamp": "2026-05-01T12:10:00.000Z", "data": data})
    }

    #[test]
    fn summaries_say_what_happened() {
        let cases = [
            (
                event(
                    "items.changed",
                    json!({"endpoint": "rust-releases", "url": "u", "version": 4,
                        "added": [{"key": "1.91.0", "item": {}}], "removed": [], "changed": []}),
                ),
                "rust-releases: 1 added (1.91.0), 0 removed",
            ),
            (
                event(
                    "items.changed",
                    json!({"endpoint": "shop", "url": "u", "version": 4,
                        "added": [{"key": 1}, {"key": 2}, {"key": 3}, {"key": 4}],
                        "removed": [{"key": {"id": 7}}],
                        "changed": [{"key": "a", "patch": []}]}),
                ),
                r#"shop: 4 added (1, 2, 3, …), 1 removed ({"id":7}), 1 changed (a)"#,
            ),
            (
                event(
                    "endpoint.changed",
                    json!({"endpoint": "prices", "url": "u", "version": 2, "previous_version": 1,
                        "patch": [
                            {"op": "replace", "path": "/btc/usd", "value": 1},
                            {"op": "replace", "path": "/eth/usd", "value": 1},
                            {"op": "add", "path": "/sol", "value": 1},
                            {"op": "remove", "path": "/doge"}]}),
                ),
                "prices: changed (4 operations: /btc/usd, /eth/usd, /sol, …)",
            ),
            (
                event(
                    "endpoint.changed",
                    json!({"endpoint": "prices", "url": "u", "version": 2, "previous_version": 1,
                        "patch": [{"op": "replace", "path": "", "value": {"a": 1}}]}),
                ),
                "prices: changed (1 operation: /)",
            ),
            (
                event(
                    "endpoint.changed",
                    json!({"endpoint": "btc-eur", "url": "u", "version": 2, "previous_version": 1,
                        "patch": [{"op": "replace", "path": "/price", "value": 14.99}],
                        "replaced": {"/price": 19.99}}),
                ),
                "btc-eur: /price 19.99 → 14.99",
            ),
            (
                event(
                    "endpoint.changed",
                    json!({"endpoint": "shop", "url": "u", "version": 2, "previous_version": 1,
                        "patch": [
                            {"op": "replace", "path": "/state", "value": "open"},
                            {"op": "add", "path": "/sale", "value": true},
                            {"op": "remove", "path": "/closed_at"}]}),
                ),
                "shop: /state now open, /sale + true, /closed_at removed",
            ),
            (
                event(
                    "endpoint.changed",
                    json!({"endpoint": "temp", "url": "u", "version": 2, "previous_version": 1,
                        "patch": [{"op": "replace", "path": "", "value": 21}], "replaced": {"": 20}}),
                ),
                "temp: 20 → 21",
            ),
            (
                event(
                    "endpoint.changed",
                    json!({"endpoint": "prices", "url": "u", "version": 1, "previous_version": null,
                        "patch": [{"op": "replace", "path": "", "value": 1}]}),
                ),
                "prices: first version",
            ),
            (
                event(
                    "endpoint.changed",
                    json!({"endpoint": "status-page", "url": "u", "version": 3, "previous_version": 2,
                        "diff": "--- previous\n+++ current\n@@ -1,2 +1,3 @@\n-all good\n+degraded\n+api slow\n same\n"}),
                ),
                "status-page: text changed (+2 \u{2212}1 lines)",
            ),
            (
                event(
                    "endpoint.changed",
                    json!({"endpoint": "logo", "url": "u", "version": 3, "previous_version": 2,
                        "previous_hash": "0123456789abcdef", "current_hash": "fedcba9876543210"}),
                ),
                "logo: content changed (hash 01234567 → fedcba98)",
            ),
            (
                event(
                    "item.added",
                    json!({"endpoint": "rust-releases", "url": "u", "version": 4, "key": "1.91.0", "item": {}}),
                ),
                "rust-releases: added 1.91.0",
            ),
            (
                event(
                    "item.added",
                    json!({"endpoint": "rust-releases", "url": "u", "version": 4, "key": "1.91.0",
                        "item": {"url": "https://api.github.com/x", "html_url": "https://github.com/rust-lang/rust/releases/1.91.0", "tag": "1.91.0"}}),
                ),
                "rust-releases: added 1.91.0 — https://github.com/rust-lang/rust/releases/1.91.0",
            ),
            (
                event(
                    "item.added",
                    json!({"endpoint": "feed", "url": "u", "version": 4, "key": "a",
                        "item": {"guid": "a", "permalink": "http://example.com/a", "title": "ftp://no"}}),
                ),
                "feed: added a — http://example.com/a",
            ),
            (
                event(
                    "item.added",
                    json!({"endpoint": "rust", "url": "u", "version": 4, "key": "tag:github.com,2008:Repository/724712/1.91.0",
                        "item": {"id": "tag:github.com,2008:Repository/724712/1.91.0", "title": "Rust 1.91.0",
                            "link": "https://github.com/rust-lang/rust/releases/tag/1.91.0"}}),
                ),
                "rust: added Rust 1.91.0 — https://github.com/rust-lang/rust/releases/tag/1.91.0",
            ),
            (
                event(
                    "item.removed",
                    json!({"endpoint": "orders", "url": "u", "version": 4, "key": 1234, "item": {}}),
                ),
                "orders: removed 1234",
            ),
            (
                event(
                    "item.changed",
                    json!({"endpoint": "orders", "url": "u", "version": 4, "key": "A-1",
                        "item": {"status": "shipped"}, "previous": {"status": "paid"},
                        "patch": [{"op": "replace", "path": "/status", "value": "shipped"}]}),
                ),
                "orders: A-1: /status paid → shipped",
            ),
            (
                event(
                    "item.changed",
                    json!({"endpoint": "orders", "url": "u", "version": 4, "key": "A-1", "item": {},
                        "patch": [{"op": "replace", "path": "/lines", "value": [1, 2]}]}),
                ),
                "orders: changed A-1 (1 operation: /lines)",
            ),
            (
                event(
                    "endpoint.failing",
                    json!({"endpoint": "api", "url": "u", "failures": 3,
                        "since": "2026-05-01T12:03:41.000Z", "error": "HTTP status 503", "status": 503}),
                ),
                "api: failing since 12:03 UTC, HTTP 503 (3 failed polls)",
            ),
            (
                event(
                    "endpoint.failing",
                    json!({"endpoint": "api", "url": "u", "failures": 1,
                        "since": "2026-05-01T14:03:00+02:00", "error": "connection refused", "status": null}),
                ),
                "api: failing since 14:03 +02:00, connection refused (1 failed poll)",
            ),
            (
                event(
                    "endpoint.recovered",
                    json!({"endpoint": "api", "url": "u", "failures": 3,
                        "since": "2026-05-01T12:03:00.000Z", "recovered_at": "2026-05-01T12:08:00.000Z"}),
                ),
                "api: recovered after 5m",
            ),
            (
                event(
                    "target.failing",
                    json!({"target": "ha", "failures": 5, "since": "2026-05-01T12:03:00.000Z",
                        "error": "connection refused", "status": null}),
                ),
                "pollhook: target `ha` failing since 12:03 UTC, connection refused (5 failed attempts)",
            ),
            (
                event(
                    "target.recovered",
                    json!({"target": "ha", "failures": 5, "since": "2026-05-01T12:03:00.000Z",
                        "recovered_at": "2026-05-01T13:03:00.000Z"}),
                ),
                "pollhook: target `ha` recovered after 1h",
            ),
            (
                event(
                    "event.dead",
                    json!({"endpoint": "api", "target": "ha", "event_id": "msg_1",
                        "event_type": "item.added", "attempts": 8, "status": 500, "error": "HTTP status 500"}),
                ),
                "api: event msg_1 (item.added) to `ha` given up after 8 attempts (HTTP 500)",
            ),
            (
                event("something.new", json!({"endpoint": "x", "url": "u"})),
                "x: something.new",
            ),
            (json!("not an object"), "pollhook: event"),
        ];
        for (event, expected) in cases {
            assert_eq!(summary(&event), expected, "{event}");
        }
    }

    #[test]
    fn durations_are_rounded_to_two_units() {
        for (seconds, expected) in [
            (0, "0s"),
            (45, "45s"),
            (300, "5m"),
            (330, "5m 30s"),
            (3_720, "1h 2m"),
            (3_601, "1h"),
            (90_061, "1d 1h"),
        ] {
            assert_eq!(rough_duration(seconds), expected, "{seconds}");
        }
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        // Each `é` is two bytes, each `😀` four.
        assert_eq!(escape_and_cut("ééé", verbatim, 6, bytes), "ééé");
        assert_eq!(escape_and_cut("éééé", verbatim, 6, bytes), "é…");
        assert_eq!(escape_and_cut("a😀b", verbatim, 6, bytes), "a😀b");
        assert_eq!(escape_and_cut("a😀b", verbatim, 5, bytes), "a…");
        assert_eq!(escape_and_cut("a😀bcdef", verbatim, 8, bytes), "a😀…");
        assert_eq!(cut("😀😀😀", 3), "😀😀😀");
        assert_eq!(cut("😀😀😀😀", 3), "😀😀…");
        assert_eq!(cut("abc", 0), "…");
        // An escape is kept whole or dropped whole.
        assert_eq!(escape_and_cut("a<b", slack_escape, 5, chars), "a…");
        assert_eq!(escape_and_cut("a<b", slack_escape, 6, chars), "a&lt;b");
        assert_eq!(escape_and_cut("a_b_c", discord_escape, 5, chars), "a\\_b…");
    }

    #[test]
    fn chat_bodies_stay_within_each_limit() {
        let long_error: String = "é".repeat(10_000);
        let body = event(
            "items.changed",
            json!({"endpoint": "big", "url": "u", "version": 2,
                "added": [{"key": long_error}], "removed": [], "changed": []}),
        )
        .to_string();
        let slack = render(&TargetFormat::Slack, &body).unwrap();
        let slack: Value = serde_json::from_slice(&slack.body).unwrap();
        assert!(slack["text"].as_str().unwrap().chars().count() <= SLACK_LIMIT_CHARS);

        // Summaries cut long keys themselves; a very long endpoint name is
        // what reaches each service's limit.
        let name = "ü".repeat(5_000);
        let body = event("endpoint.recovered", json!({"endpoint": name, "url": "u"})).to_string();
        let discord = render(&TargetFormat::Discord, &body).unwrap();
        let discord: Value = serde_json::from_slice(&discord.body).unwrap();
        let content = discord["content"].as_str().unwrap();
        assert_eq!(content.chars().count(), DISCORD_LIMIT_CHARS);
        assert!(content.ends_with('…'));
        let ntfy = render(&TargetFormat::Ntfy, &body).unwrap();
        assert!(ntfy.body.len() <= NTFY_LIMIT_BYTES);
        assert!(ntfy.body.len() > NTFY_LIMIT_BYTES - 4);
        assert!(String::from_utf8(ntfy.body).unwrap().ends_with('…'));
        let slack = render(&TargetFormat::Slack, &body).unwrap();
        let slack: Value = serde_json::from_slice(&slack.body).unwrap();
        assert_eq!(
            slack["text"].as_str().unwrap().chars().count(),
            SLACK_LIMIT_CHARS
        );
    }

    #[test]
    fn standard_is_the_envelope_byte_for_byte() {
        let body = r#"{"type":"endpoint.changed","timestamp":"t","data":{"a":"é"}}"#;
        let rendered = render(&TargetFormat::Standard, body).unwrap();
        assert_eq!(rendered.body, body.as_bytes());
        assert_eq!(rendered.content_type, "application/json");
        assert!(rendered.headers.is_empty());
    }

    #[test]
    fn chat_formats_escape_markup() {
        let body = event(
            "item.added",
            json!({"endpoint": "my_feed", "url": "u", "key": "<!channel> & *bold*"}),
        )
        .to_string();
        let slack = render(&TargetFormat::Slack, &body).unwrap();
        assert_eq!(
            String::from_utf8(slack.body).unwrap(),
            r#"{"text":"my_feed: added &lt;!channel&gt; &amp; *bold*"}"#
        );
        let discord = render(&TargetFormat::Discord, &body).unwrap();
        assert_eq!(
            String::from_utf8(discord.body).unwrap(),
            r#"{"allowed_mentions":{"parse":[]},"content":"my\\_feed: added <!channel\\> & \\*bold\\*"}"#
        );
    }

    #[test]
    fn ntfy_sends_text_with_title_and_tags() {
        let body = event(
            "endpoint.failing",
            json!({"endpoint": "api", "url": "u", "failures": 3,
                "since": "2026-05-01T12:03:00.000Z", "error": "HTTP status 503", "status": 503}),
        )
        .to_string();
        let ntfy = render(&TargetFormat::Ntfy, &body).unwrap();
        assert_eq!(
            String::from_utf8(ntfy.body).unwrap(),
            "api: failing since 12:03 UTC, HTTP 503 (3 failed polls)"
        );
        assert_eq!(ntfy.content_type, "text/plain; charset=utf-8");
        assert_eq!(header_text("née\n"), "n?e?");
        assert_eq!(
            header_text(&"x".repeat(300)),
            format!("{}...", "x".repeat(247))
        );
        assert_eq!(
            ntfy.headers,
            vec![
                ("Title", "api is failing".to_string()),
                ("Tags", "warning,endpoint.failing".to_string()),
                ("Priority", "high".to_string()),
            ]
        );
    }

    #[test]
    fn templates_see_the_event_and_its_parts() {
        let template = |source: &str| {
            TargetFormat::Template(Template {
                source: source.to_string(),
                content_type: None,
            })
        };
        let body = event(
            "item.added",
            json!({"endpoint": "rel", "url": "u", "key": "v2", "item": {"name": "two"}}),
        )
        .to_string();
        let rendered = render(
            &template("{{ type }} {{ data.item.name }} {{ timestamp }} {{ event.data.key }} {{ summary }}{{ data.nothing.deeper }}"),
            &body,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(rendered.body).unwrap(),
            "item.added two 2026-05-01T12:10:00.000Z v2 rel: added v2"
        );
        assert_eq!(rendered.content_type, "text/plain; charset=utf-8");

        let rendered = render(&template(r#"{"msg": {{ summary | tojson }}}"#), &body).unwrap();
        assert_eq!(rendered.content_type, "application/json");
        assert_eq!(rendered.body, br#"{"msg": "rel: added v2"}"#);

        let custom = TargetFormat::Template(Template {
            source: "x".into(),
            content_type: Some("text/markdown".into()),
        });
        assert_eq!(
            render(&custom, &body).unwrap().content_type,
            "text/markdown"
        );

        let failing = render(&template("{{ 1 / 0 }}"), &body).unwrap_err();
        assert!(
            failing.starts_with("cannot render the template"),
            "{failing}"
        );
    }

    #[test]
    fn templates_see_numbers_as_numbers() {
        let template = TargetFormat::Template(Template {
            source: "{{ data.version + 1 }} {{ data.price * 2 }} {{ data.wei }} {{ data.neg }} \
                     {{ data.long }} {{ data.huge }} {{ data | tojson }}"
                .into(),
            content_type: None,
        });
        let body = r#"{"type":"endpoint.changed","timestamp":"t","data":{"version":2,"price":1.5,
            "wei":1000000000000000000002,"neg":-170141183460469231731687303715884105728,
            "long":0.12345678901234567891,"huge":1e+400}}"#;
        let rendered = render(&template, body).unwrap();
        assert_eq!(
            String::from_utf8(rendered.body).unwrap(),
            "3 3.0 1000000000000000000002 -170141183460469231731687303715884105728 \
             0.12345678901234568 1e+400 \
             {\"huge\": \"1e+400\", \"long\": 0.12345678901234568, \
             \"neg\": -170141183460469231731687303715884105728, \"price\": 1.5, \"version\": 2, \
             \"wei\": 1000000000000000000002}"
        );
    }

    #[test]
    fn apprise_gets_a_title_a_body_and_a_type() {
        let apprise = |kind: &str, data: Value| {
            let rendered = render(&TargetFormat::Apprise, &event(kind, data).to_string()).unwrap();
            assert_eq!(rendered.content_type, "application/json");
            serde_json::from_slice::<Value>(&rendered.body).unwrap()
        };
        assert_eq!(
            apprise(
                "item.added",
                json!({"endpoint": "rel", "url": "u", "key": "v2", "item": {}})
            ),
            json!({"title": "rel: item added", "body": "rel: added v2", "type": "info"})
        );
        let failing = json!({"endpoint": "api", "url": "u", "failures": 3,
            "since": "2026-05-01T12:03:00.000Z", "error": "HTTP status 503", "status": 503});
        assert_eq!(apprise("endpoint.failing", failing)["type"], "failure");
        let recovered = json!({"target": "ha", "failures": 1, "since": "2026-05-01T12:03:00.000Z"});
        let recovered = apprise("target.recovered", recovered);
        assert_eq!(recovered["type"], "success");
        assert_eq!(recovered["title"], "target ha recovered");
        assert_eq!(
            apprise("event.dead", json!({"target": "ha"}))["type"],
            "failure"
        );
    }

    #[test]
    fn email_is_the_summary_and_what_changed() {
        let body = event(
            "endpoint.changed",
            json!({"endpoint": "status", "url": "u", "version": 3, "previous_version": 2,
                "diff": "--- previous\n+++ current\n@@ -1 +1 @@\n-up\n+down\n"}),
        )
        .to_string();
        let text = email(&TargetFormat::Standard, None, &body).unwrap();
        assert_eq!(text.subject, "status: text changed (+1 \u{2212}1 lines)");
        assert_eq!(
            text.body,
            "status: text changed (+1 \u{2212}1 lines)\n\n--- previous\n+++ current\n@@ -1 +1 @@\n-up\n+down\n\n\
             -- \nendpoint.changed at 2026-05-01T12:10:00.000Z, sent by pollhook\n"
        );
        let patch = event(
            "endpoint.changed",
            json!({"endpoint": "p", "url": "u", "version": 3, "previous_version": 2,
                "patch": [{"op": "replace", "path": "/wei", "value": 1000000000000000000002u128}]}),
        )
        .to_string();
        let text = email(&TargetFormat::Standard, None, &patch).unwrap();
        assert!(
            text.body.contains("\"value\": 1000000000000000000002"),
            "{}",
            text.body
        );

        let template = TargetFormat::Template(Template {
            source: "{{ data.endpoint }} is at version {{ data.version }}".into(),
            content_type: None,
        });
        let text = email(&template, Some("[{{ type }}]\n{{ summary }}"), &body).unwrap();
        assert_eq!(
            text.subject,
            "[endpoint.changed] status: text changed (+1 \u{2212}1 lines)"
        );
        assert_eq!(text.body, "status is at version 3");
        let long = email(&TargetFormat::Standard, Some(&"x".repeat(500)), &body).unwrap();
        assert_eq!(long.subject.chars().count(), SUBJECT_CHARS);
        assert!(email(&TargetFormat::Standard, Some("{{ 1 / 0 }}"), &body).is_err());
    }

    #[test]
    fn template_syntax_errors_name_the_line() {
        assert!(check_template("{{ summary }}").is_ok());
        let error = check_template("line one\n{{ summary ").unwrap_err();
        assert!(error.starts_with("syntax error"), "{error}");
        assert!(error.ends_with("(template line 2)"), "{error}");
    }
}
