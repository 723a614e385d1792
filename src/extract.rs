//! From a response body to the document that is compared: pure, no IO.
//!
//! JSON is parsed, narrowed by the `select` jq filter, the `ignore` pointers
//! are removed, and it is written back in canonical form (object keys
//! sorted, no whitespace, each number in its one exact text: see
//! [`crate::number`]), so key order and formatting never make a change,
//! and a change in any digit of a number always does.
//! In item mode the document is the list of items by key, sorted, so their
//! order never makes a change either. Text keeps the lines that `match`,
//! normalised by `replace`. Anything else is compared by hash only.
//!
//! Only the canonical bytes are kept: the diff parses the part of them that
//! changed, so a poll never holds a parsed tree of a large document for
//! longer than extracting it takes.

use std::borrow::Cow;

use regex::Regex;
use serde::Serialize;
use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::formats::{self, Converted, html::Pick};
use crate::jq::{self, Jq};
use crate::number;

/// How a response body is read (`format` in the config). Without it, the
/// Content-Type decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Text,
    /// RSS, Atom or JSON Feed: the feed's items (see [`formats::feed`]).
    Feed,
    /// XML as JSON the xmltodict way (see [`formats::xml`]).
    Xml,
    /// What the `css` selectors pick from a page (see [`formats::html`]).
    Html,
}

impl Format {
    /// The name as the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Text => "text",
            Format::Feed => "feed",
            Format::Xml => "xml",
            Format::Html => "html",
        }
    }

    /// Formats made into JSON before the JSON rules apply.
    pub fn is_converted(self) -> bool {
        matches!(self, Format::Feed | Format::Xml | Format::Html)
    }
}

/// What kind of document an endpoint produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Json = 1,
    Text = 2,
    Bytes = 3,
    /// Item mode: a JSON array of `{"key", "item"}`, sorted by key.
    Items = 4,
}

impl Kind {
    pub fn from_u8(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Json),
            2 => Some(Kind::Text),
            3 => Some(Kind::Bytes),
            4 => Some(Kind::Items),
            _ => None,
        }
    }

    /// The name the history listing shows.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::Text => "text",
            Kind::Bytes => "bytes",
            Kind::Items => "items",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Json, Kind::Text, Kind::Bytes, Kind::Items]
            .into_iter()
            .find(|kind| kind.name() == name)
    }

    fn is_json(self) -> bool {
        matches!(self, Kind::Json | Kind::Items)
    }
}

/// An extracted document, ready to compare and store.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub kind: Kind,
    /// The canonical bytes: what is hashed, stored and diffed.
    pub canonical: Vec<u8>,
    pub hash: [u8; 32],
    /// Item mode: keys that more than one item had. Only the item whose
    /// canonical form sorts first was kept, whatever the response's order.
    pub duplicate_keys: Vec<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("the response is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error(transparent)]
    Format(#[from] formats::FormatError),
    #[error("the `{name}` filter `{source_text}` failed: {message}")]
    Filter {
        name: &'static str,
        source_text: String,
        message: String,
    },
}

impl Document {
    /// Rebuilds a document from its stored canonical bytes. They are not
    /// parsed here: the diff parses only what changed, and bytes that turn
    /// out not to be JSON (a damaged store) are compared by hash.
    pub fn from_canonical(kind: Kind, canonical: Vec<u8>) -> Document {
        Document::with_hash(kind, hash(kind, &canonical), canonical)
    }

    /// A stored document whose hash is already known (its file header
    /// holds it): hashing megabytes again would only repeat the answer.
    pub fn with_hash(kind: Kind, hash: [u8; 32], canonical: Vec<u8>) -> Document {
        Document {
            hash,
            kind,
            canonical,
            duplicate_keys: Vec::new(),
        }
    }

    fn from_json(kind: Kind, value: &Value) -> Document {
        // Without serde_json's `preserve_order`, objects are B-tree maps: this
        // writes keys sorted, which is the canonical form.
        let canonical = serde_json::to_vec(value).expect("a JSON value always serialises");
        Document::from_canonical(kind, canonical)
    }

    /// The parsed value of a JSON or item document.
    pub fn json(&self) -> Option<Value> {
        match self.kind.is_json() {
            true => serde_json::from_slice(&self.canonical).ok(),
            false => None,
        }
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// The document as text, for text diffs and printing.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.canonical)
    }

    /// The document as a JSON value: itself for JSON, a string for text,
    /// `null` for bytes. What `when` filters see.
    pub fn value(&self) -> Value {
        match self.kind {
            Kind::Json | Kind::Items => self.json().unwrap_or(Value::Null),
            Kind::Text => Value::String(self.text().into_owned()),
            Kind::Bytes => Value::Null,
        }
    }
}

fn hash(kind: Kind, canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([kind as u8]);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// How a response body becomes the document to compare.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Set in the config; otherwise the rules or the Content-Type decide.
    pub format: Option<Format>,
    /// A jq filter that narrows a JSON document first.
    pub select: Option<Jq>,
    /// JSON pointers removed before comparing; `*` matches every key or index.
    pub ignore: Vec<String>,
    /// Item mode.
    pub items: Option<ItemRules>,
    /// Text: only the lines that match this are kept.
    pub keep_lines: Option<Regex>,
    /// Text: each replacement is applied to every kept line, in order.
    pub replace: Vec<(Regex, String)>,
    /// HTML: what the `css` selectors pick.
    pub html: Option<Pick>,
}

/// `items` yields the items of a JSON document, `key` each item's identity.
#[derive(Debug, Clone)]
pub struct ItemRules {
    pub items: Jq,
    pub key: Jq,
}

impl Rules {
    /// No rules: the body's format alone decides how it is compared.
    pub const NONE: Rules = Rules {
        format: None,
        select: None,
        ignore: Vec::new(),
        items: None,
        keep_lines: None,
        replace: Vec::new(),
        html: None,
    };

    pub fn is_none(&self) -> bool {
        let Rules {
            format,
            select,
            ignore,
            items,
            keep_lines,
            replace,
            html,
        } = self;
        format.is_none()
            && select.is_none()
            && ignore.is_empty()
            && items.is_none()
            && keep_lines.is_none()
            && replace.is_empty()
            && html.is_none()
    }

    /// JSON-only rules make a JSON document, text-only rules a text one.
    fn kind(&self, body: &[u8], content_type: Option<&str>) -> Kind {
        match self.format {
            Some(Format::Json) => Kind::Json,
            Some(Format::Text) => Kind::Text,
            // Made into JSON by `convert` first.
            Some(Format::Feed | Format::Xml | Format::Html) => Kind::Json,
            None if self.select.is_some() || self.items.is_some() => Kind::Json,
            None if self.keep_lines.is_some() || !self.replace.is_empty() => Kind::Text,
            None => sniff(body, content_type),
        }
    }
}

/// Turns a response body into the document to compare.
pub fn extract(
    body: &[u8],
    content_type: Option<&str>,
    rules: &Rules,
) -> Result<Document, ExtractError> {
    extract_with_warning(body, content_type, rules).map(|(document, _)| document)
}

/// [`extract`], and what the poll should warn about: the CSS selectors
/// that matched nothing on a page.
pub fn extract_with_warning(
    body: &[u8],
    content_type: Option<&str>,
    rules: &Rules,
) -> Result<(Document, Option<String>), ExtractError> {
    if let Some(format) = converted_format(content_type, rules) {
        let Converted { value, unmatched } = convert(body, format, rules)?;
        let document = from_value(value, rules, Some(format))?;
        return Ok((document, unmatched_warning(&unmatched)));
    }
    let plain_json = rules.select.is_none() && rules.ignore.is_empty() && rules.items.is_none();
    let document = match rules.kind(body, content_type) {
        // The fast path: no tree of `Value`s for a document kept as it is.
        Kind::Json if plain_json => {
            let mut writer = Writer {
                out: Vec::with_capacity(body.len()),
                members: Vec::new(),
                scratch: Vec::new(),
            };
            // One UTF-8 check of the whole body is cheaper than one per
            // string; a body that fails it is parsed as bytes for the error.
            match std::str::from_utf8(body) {
                Ok(text) => canonicalise(serde_json::Deserializer::from_str(text), &mut writer),
                Err(_) => canonicalise(serde_json::Deserializer::from_slice(body), &mut writer),
            }
            .map_err(ExtractError::NotJson)?;
            Ok(Document::from_canonical(Kind::Json, writer.out))
        }
        Kind::Json | Kind::Items => {
            let mut value: Value = serde_json::from_slice(body).map_err(ExtractError::NotJson)?;
            // Numbers as the response wrote them → canonical text. (jq
            // outputs come back canonical: see `jq::Jq::run`.)
            number::canonicalise(&mut value);
            from_value(value, rules, None)
        }
        Kind::Text => {
            let text = normalise_text(&String::from_utf8_lossy(body), rules).into_bytes();
            Ok(Document {
                hash: hash(Kind::Text, &text),
                kind: Kind::Text,
                canonical: text,
                duplicate_keys: Vec::new(),
            })
        }
        Kind::Bytes => {
            // Only the hash matters: keeping megabytes of an image helps nobody.
            let digest = hash(Kind::Bytes, body);
            Ok(Document {
                hash: digest,
                kind: Kind::Bytes,
                canonical: Vec::new(),
                duplicate_keys: Vec::new(),
            })
        }
    }?;
    Ok((document, None))
}

/// What a page's selectors did not find, as the poll's warning.
fn unmatched_warning(unmatched: &[String]) -> Option<String> {
    let (first, rest) = unmatched.split_first()?;
    let mut names = format!("`{first}`");
    for name in rest {
        names.push_str(&format!(", `{name}`"));
    }
    Some(format!(
        "CSS selector(s) {names} matched nothing on the page"
    ))
}

/// A JSON value through `select`, `ignore` and `items` (or, without
/// `items`, the format's own item rules).
fn from_value(
    mut value: Value,
    rules: &Rules,
    format: Option<Format>,
) -> Result<Document, ExtractError> {
    if let Some(select) = &rules.select {
        value = run(select, "select", &value).map(jq::collapse)?;
    }
    for pointer in &rules.ignore {
        remove_pointer(&mut value, pointer);
    }
    match item_rules(rules, format) {
        Some(item_rules) => items_document(&value, item_rules),
        None => Ok(Document::from_json(Kind::Json, &value)),
    }
}

/// A feed is item mode by default: its items, known by their id.
static FEED_ITEMS: std::sync::LazyLock<ItemRules> = std::sync::LazyLock::new(|| ItemRules {
    items: ".[]".parse().expect("`.[]` compiles"),
    key: ".id".parse().expect("`.id` compiles"),
});

/// The format made into JSON here, if any: the endpoint's, or a feed's
/// Content-Type when no text rule asks for the body as text.
pub fn converted_format(content_type: Option<&str>, rules: &Rules) -> Option<Format> {
    match rules.format {
        Some(format) if format.is_converted() => Some(format),
        Some(_) => None,
        None if rules.keep_lines.is_some() || !rules.replace.is_empty() => None,
        None => formats::is_feed_media_type(&media_type(content_type)).then_some(Format::Feed),
    }
}

/// A feed, an XML document or the values picked from a page as JSON, its
/// numbers canonical and a page's texts through `match` and `replace`.
fn convert(body: &[u8], format: Format, rules: &Rules) -> Result<Converted, ExtractError> {
    let mut converted: Converted = match (format, &rules.html) {
        (Format::Feed, _) => formats::feed::to_json(body)?.into(),
        (Format::Html, Some(pick)) => formats::html::to_json(body, pick)?,
        // `format = "html"` without `css` is refused by the config; as XML
        // otherwise.
        _ => formats::xml::to_json(body)?.into(),
    };
    number::canonicalise(&mut converted.value);
    if format == Format::Html {
        normalise_strings(&mut converted.value, rules);
    }
    Ok(converted)
}

/// The item rules of `rules`; a feed's entries are items by themselves,
/// known by `.id`.
fn item_rules(rules: &Rules, format: Option<Format>) -> Option<&ItemRules> {
    let feed = (format == Some(Format::Feed)).then(|| &*FEED_ITEMS);
    rules.items.as_ref().or(feed)
}

/// HTML: `match` and `replace` on every text picked.
fn normalise_strings(value: &mut Value, rules: &Rules) {
    match value {
        Value::String(text) => {
            let normalised = normalise_text(text, rules);
            *text = normalised.trim_end_matches('\n').to_string();
        }
        Value::Array(values) => values
            .iter_mut()
            .for_each(|value| normalise_strings(value, rules)),
        Value::Object(members) => members
            .values_mut()
            .for_each(|value| normalise_strings(value, rules)),
        _ => {}
    }
}

/// Parses one JSON document into `writer` in canonical form.
fn canonicalise<'de, R: serde_json::de::Read<'de>>(
    mut deserializer: serde_json::Deserializer<R>,
    writer: &mut Writer<'de>,
) -> Result<(), serde_json::Error> {
    Canonical(writer).deserialize(&mut deserializer)?;
    deserializer.end()
}

fn run(filter: &Jq, name: &'static str, input: &Value) -> Result<Vec<Value>, ExtractError> {
    filter.run(input).map_err(|message| ExtractError::Filter {
        name,
        source_text: filter.source().to_string(),
        message,
    })
}

/// Incremental mode: the response as JSON, and its items as `(key, item)`
/// in the response's order (after `select` and `ignore`, as in item mode).
pub fn new_items(body: &[u8], rules: &Rules) -> Result<(Value, Vec<(Value, Value)>), ExtractError> {
    let format = rules.format.filter(|format| format.is_converted());
    let response: Value = match format {
        Some(format) => convert(body, format, rules)?.value,
        None => {
            let mut response = serde_json::from_slice(body).map_err(ExtractError::NotJson)?;
            number::canonicalise(&mut response);
            response
        }
    };
    let narrowed = match (&rules.select, rules.ignore.is_empty()) {
        (None, true) => None,
        (select, _) => {
            let mut value = match select {
                Some(select) => run(select, "select", &response).map(jq::collapse)?,
                None => response.clone(),
            };
            for pointer in &rules.ignore {
                remove_pointer(&mut value, pointer);
            }
            Some(value)
        }
    };
    let Some(item_rules) = item_rules(rules, format) else {
        return Ok((response, Vec::new()));
    };
    let mut items = Vec::new();
    for item in run(
        &item_rules.items,
        "items",
        narrowed.as_ref().unwrap_or(&response),
    )? {
        let key = run(&item_rules.key, "key", &item).map(jq::collapse)?;
        items.push((key, item));
    }
    Ok((response, items))
}

/// The items of `value` by key, sorted by key, so that their order in the
/// response never makes a change. Of several items with one key the one
/// whose canonical form sorts first is kept, whatever the response's order.
fn items_document(value: &Value, rules: &ItemRules) -> Result<Document, ExtractError> {
    let mut entries = Vec::new();
    for item in run(&rules.items, "items", value)? {
        let key = run(&rules.key, "key", &item).map(jq::collapse)?;
        let sort_key = (key.to_string(), item.to_string());
        entries.push((sort_key, key, item));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut duplicate_keys: Vec<Value> = Vec::new();
    let mut kept: Vec<Value> = Vec::with_capacity(entries.len());
    let mut previous_key: Option<String> = None;
    for ((key_text, _), key, item) in entries {
        if previous_key.as_ref() == Some(&key_text) {
            if duplicate_keys.last() != Some(&key) {
                duplicate_keys.push(key);
            }
            continue;
        }
        previous_key = Some(key_text);
        kept.push(json!({ "key": key, "item": item }));
    }
    let mut document = Document::from_json(Kind::Items, &Value::Array(kept));
    document.duplicate_keys = duplicate_keys;
    Ok(document)
}

/// Parses JSON and writes it in canonical form as it goes, without building
/// a tree: arrays, strings and numbers are written the moment they are read,
/// and an object's members are written in the order they come and only
/// rearranged (one copy of that object's bytes) when their keys are not
/// already sorted and unique. The bytes are exactly those a [`Value`] writes
/// once [`number::canonicalise`] has given its numbers their canonical text
/// (same numbers, same escaping, keys in the same order, the last of
/// duplicate keys kept), so both paths give the same document.
struct Canonical<'w, 'de>(&'w mut Writer<'de>);

/// The output, and buffers shared by every object of a document so that
/// one does not allocate its own.
struct Writer<'de> {
    out: Vec<u8>,
    /// The members of the objects being written, innermost last: each
    /// one's key and the range of its `"key":value` bytes in `out`.
    members: Vec<(Cow<'de, str>, std::ops::Range<usize>)>,
    /// An object's members while they are rearranged.
    scratch: Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Canonical<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Canonical<'_, 'de> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_bool<E>(self, value: bool) -> Result<(), E> {
        self.0
            .out
            .extend_from_slice(if value { b"true" } else { b"false" });
        Ok(())
    }

    fn visit_i64<E>(self, value: i64) -> Result<(), E> {
        write_json(&mut self.0.out, &value);
        Ok(())
    }

    fn visit_u64<E>(self, value: u64) -> Result<(), E> {
        write_json(&mut self.0.out, &value);
        Ok(())
    }

    fn visit_f64<E>(self, value: f64) -> Result<(), E> {
        // serde_json reads floats as text (see `visit_map`); this is only
        // for a deserializer that does not. As `Value` does: a float JSON
        // cannot hold becomes null.
        write_json(&mut self.0.out, &value);
        Ok(())
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<(), E> {
        write_unescaped(&mut self.0.out, value);
        Ok(())
    }

    fn visit_str<E>(self, value: &str) -> Result<(), E> {
        write_json(&mut self.0.out, value);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let writer = self.0;
        writer.out.push(b'[');
        let mut first = true;
        loop {
            let comma = writer.out.len();
            if !first {
                writer.out.push(b',');
            }
            if seq.next_element_seed(Canonical(&mut *writer))?.is_none() {
                writer.out.truncate(comma);
                break;
            }
            first = false;
        }
        writer.out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let writer = self.0;
        let mut next_key = map.next_key()?;
        if let Some(Key(key)) = &next_key
            && key == NUMBER_TOKEN
        {
            // With `arbitrary_precision`, serde_json hands over every number
            // that is not a 64-bit integer as a map whose one member holds
            // its text. (A member of that name in a response is read the
            // same way, as serde_json's `Value` reads it.)
            let text: Cow<'de, str> = map.next_value::<Text>()?.0;
            return number::write(&mut writer.out, &text).map_err(serde::de::Error::custom);
        }
        writer.out.push(b'{');
        let members_start = writer.out.len();
        let first = writer.members.len();
        let mut in_order = true;
        while let Some(Key(key)) = next_key {
            if writer.members.len() > first {
                writer.out.push(b',');
            }
            let start = writer.out.len();
            match &key {
                Cow::Borrowed(key) => write_unescaped(&mut writer.out, key),
                Cow::Owned(key) => write_json(&mut writer.out, key),
            }
            writer.out.push(b':');
            // Objects inside leave `members` as they found it.
            map.next_value_seed(Canonical(&mut *writer))?;
            in_order &= writer.members.len() == first
                || writer.members.last().is_some_and(|(last, _)| *last < key);
            writer.members.push((key, start..writer.out.len()));
            next_key = map.next_key()?;
        }
        if !in_order {
            writer.scratch.clear();
            writer
                .scratch
                .extend_from_slice(&writer.out[members_start..]);
            writer.out.truncate(members_start);
            let members = &mut writer.members[first..];
            // Stable: of equal keys the last stays last, and is the one kept.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            for (index, (key, range)) in members.iter().enumerate() {
                if members.get(index + 1).is_some_and(|(next, _)| next == key) {
                    continue;
                }
                if writer.out.len() > members_start {
                    writer.out.push(b',');
                }
                writer.out.extend_from_slice(
                    &writer.scratch[range.start - members_start..range.end - members_start],
                );
            }
        }
        writer.members.truncate(first);
        writer.out.push(b'}');
        Ok(())
    }
}

/// Writes a string that serde_json borrowed from the body: it had no escapes
/// there, so no quote, backslash or control character, and goes out as it is.
fn write_unescaped(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// Writes what serde_json writes for `value`.
fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("a string or a number always serialises");
}

/// The name of the one member of the map serde_json's `arbitrary_precision`
/// makes of a number (serde_json's own `Value` looks for it the same way).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// An object key, borrowed from the body when it holds no escapes.
struct Key<'a>(Cow<'a, str>);

/// A number's text, as serde_json hands it over.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_str(TextVisitor("an object key"))
            .map(Key)
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_str(TextVisitor("a number's text"))
            .map(Text)
    }
}

/// A string, borrowed when it can be.
struct TextVisitor(&'static str);

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.0)
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(value))
    }
}

/// Keeps the lines that match `keep_lines` and applies `replace` to each.
fn normalise_text(text: &str, rules: &Rules) -> String {
    if rules.keep_lines.is_none() && rules.replace.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if rules
            .keep_lines
            .as_ref()
            .is_some_and(|keep| !keep.is_match(line))
        {
            continue;
        }
        let mut line = std::borrow::Cow::Borrowed(line);
        for (pattern, replacement) in &rules.replace {
            if let std::borrow::Cow::Owned(replaced) =
                pattern.replace_all(&line, replacement.as_str())
            {
                line = std::borrow::Cow::Owned(replaced);
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// JSON when the Content-Type says so (`application/json`, `+json`), text
/// when it is textual or the body is UTF-8, bytes otherwise.
/// The media type of a Content-Type, lowercase, without parameters.
fn media_type(content_type: Option<&str>) -> String {
    content_type
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn sniff(body: &[u8], content_type: Option<&str>) -> Kind {
    let media_type = media_type(content_type);
    if media_type == "application/json"
        || media_type.ends_with("+json")
        || media_type == "text/json"
    {
        Kind::Json
    } else if media_type.starts_with("text/")
        || media_type.ends_with("xml")
        || media_type.ends_with("javascript")
        || std::str::from_utf8(body).is_ok()
    {
        Kind::Text
    } else {
        Kind::Bytes
    }
}

/// Removes what an RFC 6901 pointer names; `*` as a token matches every
/// member of an object or element of an array. A pointer that names nothing
/// removes nothing.
pub fn remove_pointer(value: &mut Value, pointer: &str) {
    let tokens: Vec<String> = match pointer.strip_prefix('/') {
        Some(rest) => rest
            .split('/')
            .map(|token| token.replace("~1", "/").replace("~0", "~"))
            .collect(),
        None => return,
    };
    remove_tokens(value, &tokens);
}

fn remove_tokens(value: &mut Value, tokens: &[String]) {
    let Some((first, rest)) = tokens.split_first() else {
        return;
    };
    if rest.is_empty() {
        match value {
            Value::Object(map) if first == "*" => map.clear(),
            Value::Object(map) => {
                map.remove(first);
            }
            Value::Array(items) if first == "*" => items.clear(),
            Value::Array(items) => {
                if let Some(index) = array_index(first, items.len()) {
                    items.remove(index);
                }
            }
            _ => {}
        }
        return;
    }
    match value {
        Value::Object(map) if first == "*" => map
            .values_mut()
            .for_each(|child| remove_tokens(child, rest)),
        Value::Object(map) => {
            if let Some(child) = map.get_mut(first) {
                remove_tokens(child, rest);
            }
        }
        Value::Array(items) if first == "*" => items
            .iter_mut()
            .for_each(|child| remove_tokens(child, rest)),
        Value::Array(items) => {
            if let Some(child) =
                array_index(first, items.len()).and_then(|index| items.get_mut(index))
            {
                remove_tokens(child, rest);
            }
        }
        _ => {}
    }
}

/// RFC 6901 array indexes: digits without leading zeros, inside the array.
fn array_index(token: &str, len: usize) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok().filter(|index| *index < len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_rules(ignore: &[String]) -> Rules {
        Rules {
            ignore: ignore.to_vec(),
            ..Rules::default()
        }
    }

    #[test]
    fn key_order_and_whitespace_are_not_changes() {
        let a = extract(
            br#"{"b": 1, "a": [1, 2], "c": {"y": 1, "x": 2}}"#,
            Some("application/json"),
            &json_rules(&[]),
        )
        .unwrap();
        let b = extract(
            br#"{"c":{"x":2,"y":1},"a":[1,2],"b":1}"#,
            Some("application/json"),
            &json_rules(&[]),
        )
        .unwrap();
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.canonical, br#"{"a":[1,2],"b":1,"c":{"x":2,"y":1}}"#);
    }

    #[test]
    fn ignore_pointers_remove_what_they_name() {
        let check = |input: Value, pointers: &[&str], expected: Value| {
            let pointers: Vec<String> = pointers.iter().map(|p| p.to_string()).collect();
            let mut value = input;
            for pointer in &pointers {
                remove_pointer(&mut value, pointer);
            }
            assert_eq!(value, expected, "pointers {pointers:?}");
        };
        check(
            json!({"a": 1, "meta": {"at": 5, "v": 1}}),
            &["/meta/at"],
            json!({"a": 1, "meta": {"v": 1}}),
        );
        check(
            json!([{"r": 1, "id": 1}, {"r": 2, "id": 2}]),
            &["/0/r"],
            json!([{"id": 1}, {"r": 2, "id": 2}]),
        );
        check(
            json!({"items": [{"v": 1, "id": 1}, {"v": 2, "id": 2}]}),
            &["/items/*/v"],
            json!({"items": [{"id": 1}, {"id": 2}]}),
        );
        check(
            json!({"a/b": 1, "m~n": 2, "c": 3}),
            &["/a~1b", "/m~0n"],
            json!({"c": 3}),
        );
        check(
            json!({"a": [1]}),
            &["/missing/x", "/a/7", "/a/01", "/a/x"],
            json!({"a": [1]}),
        );
        check(json!("scalar"), &["/x/y"], json!("scalar"));
    }

    #[test]
    fn content_type_decides_unless_format_is_set() {
        let body = br#"{"a":1}"#;
        assert_eq!(
            extract(
                body,
                Some("application/json; charset=utf-8"),
                &json_rules(&[])
            )
            .unwrap()
            .kind,
            Kind::Json
        );
        assert_eq!(
            extract(body, Some("application/vnd.github+json"), &json_rules(&[]))
                .unwrap()
                .kind,
            Kind::Json
        );
        assert_eq!(
            extract(body, Some("text/plain"), &json_rules(&[]))
                .unwrap()
                .kind,
            Kind::Text
        );
        let forced = Rules {
            format: Some(Format::Json),
            ..Rules::default()
        };
        assert_eq!(
            extract(body, Some("text/plain"), &forced).unwrap().kind,
            Kind::Json
        );
        assert_eq!(
            extract(&[0xff, 0xfe, 0], None, &json_rules(&[]))
                .unwrap()
                .kind,
            Kind::Bytes
        );
    }

    #[test]
    fn a_body_that_should_be_json_but_is_not_is_an_error() {
        let error = extract(
            b"<html>oops</html>",
            Some("application/json"),
            &json_rules(&[]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("not valid JSON"), "{error}");
        // Not UTF-8: the error still says where, as serde_json finds it.
        let error = extract(
            b"{\"a\":\"\xff\"}",
            Some("application/json"),
            &json_rules(&[]),
        )
        .unwrap_err();
        assert!(error.to_string().contains("line 1 column"), "{error}");
    }

    #[test]
    fn canonical_form_is_what_serde_json_values_write() {
        let bodies = [
            r#"{"b":1,"a":[1,2.5,-3,1e3,1.0e-7,18446744073709551615,-9223372036854775808]}"#,
            r#"{"z":"\u00e9\n\"q\" \/ \ud83d\ude00","a\u0062":null,"ab":true,"A":false}"#,
            r#"{"dup":1,"x":{"dup":[1]},"dup":2,"dup":{"last":true}}"#,
            r#"[{"k":{}},[],[[]],"",0,-0,-0.0,123456789012345678901234567890]"#,
            r#"  "just a string"  "#,
            r#"{"é":1,"e":2,"\u00e9\u00e9":3,"ü":{"b":[],"a":{}}}"#,
        ];
        for body in bodies {
            let mut value = serde_json::from_str::<Value>(body).unwrap();
            number::canonicalise(&mut value);
            let expected = serde_json::to_vec(&value).unwrap();
            let document =
                extract(body.as_bytes(), Some("application/json"), &json_rules(&[])).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&document.canonical),
                String::from_utf8_lossy(&expected),
                "{body}"
            );
            assert!(extract(b"{\"a\":1,}", Some("application/json"), &json_rules(&[])).is_err());
        }
    }

    /// Plain JSON (written while parsed) and JSON through a filter (a tree
    /// of `Value`s) give numbers the same canonical text: what pollhook
    /// always wrote for a number an `f64` held, so that stored documents
    /// keep their hashes, and the exact value for any other.
    #[test]
    fn numbers_have_one_canonical_text_on_every_path() {
        let check = |body: &str, expected: &str| {
            let through_select = Rules {
                select: Some(".".parse().unwrap()),
                ..Rules::default()
            };
            let through_items = item_rules(".", "0");
            for rules in [json_rules(&[]), through_select] {
                let document = extract(body.as_bytes(), Some("application/json"), &rules).unwrap();
                assert_eq!(document.text(), expected, "{body}");
            }
            let items = extract(body.as_bytes(), None, &through_items).unwrap();
            assert_eq!(
                items.text(),
                format!(r#"[{{"item":{expected},"key":0}}]"#),
                "{body}"
            );
        };
        // As before: these are the bytes stored documents have.
        check(
            r#"{"b":1,"a":[1,2.5,-3,1e3,1.0e-7,18446744073709551615,-9223372036854775808]}"#,
            r#"{"a":[1,2.5,-3,1000.0,1e-7,18446744073709551615,-9223372036854775808],"b":1}"#,
        );
        check(
            "[0,-0,0.0,-0.0,1E2,1e+2,0.1,1.50,1e16,1e22,5e-324,0.0000123]",
            "[0,-0.0,0.0,-0.0,100.0,100.0,0.1,1.5,1e+16,1e+22,5e-324,0.0000123]",
        );
        // Beyond an f64: exact, in one form per value (f64 had 1e+21,
        // 1e+22, 1.2345678901234568e+29, 0.12345678901234568, an error).
        check(
            "[1000000000000000000001,1.000000000000000000001e21]",
            "[1000000000000000000001,1000000000000000000001]",
        );
        check(
            "[10000000000000000000001,1.0000000000000000000001E+22]",
            "[10000000000000000000001,10000000000000000000001]",
        );
        check(
            "[123456789012345678901234567890,-18446744073709551616]",
            "[123456789012345678901234567890,-18446744073709551616]",
        );
        check(
            "[0.12345678901234567890,0.12345678901234567891,1e400]",
            "[0.1234567890123456789,0.12345678901234567891,1e+400]",
        );
        // serde_json's `Value` reads a member by this name as a number:
        // so does the plain path, or the diff would see another document.
        check(r#"{"$serde_json::private::Number":"1.0e2"}"#, "100.0");
        assert!(
            extract(
                br#"{"$serde_json::private::Number":"x"}"#,
                Some("application/json"),
                &json_rules(&[]),
            )
            .is_err()
        );
    }

    #[test]
    fn stored_documents_round_trip() {
        let original = extract(
            br#"{"z":[1,{"b":2,"a":"\u00e9"}]}"#,
            Some("application/json"),
            &json_rules(&[]),
        )
        .unwrap();
        let restored = Document::from_canonical(Kind::Json, original.canonical.clone());
        assert_eq!(restored, original);
    }

    fn item_rules(items: &str, key: &str) -> Rules {
        Rules {
            items: Some(ItemRules {
                items: items.parse().unwrap(),
                key: key.parse().unwrap(),
            }),
            ..Rules::default()
        }
    }

    /// The `(key, item)` pairs of an item document, in stored order.
    fn entries(document: &Document) -> Vec<(Value, Value)> {
        document
            .json()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| (entry["key"].clone(), entry["item"].clone()))
            .collect()
    }

    #[test]
    fn incremental_pages_and_feeds_have_their_items_as_in_item_mode() {
        let text = r#"[[endpoint]]
name = "e"
url = "http://127.0.0.1:1/"
every = "1m"
mode = "incremental"
format = "html"
items_css = "li"
css = { v = "b" }
key = ".v"
replace = [["^release ", ""]]
"#;
        let config = crate::config::Config::compile(text, std::path::Path::new("c.toml")).unwrap();
        let body = b"<ul><li><b>release 1.2</b></li><li><b> release  1.1 </b></li></ul>";
        let (_, items) = new_items(body, config.endpoints[0].rules()).unwrap();
        let keys: Vec<Value> = items.into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, [json!("1.2"), json!("1.1")]);

        // A feed's entries are its items, known by their ids.
        let feed = text
            .lines()
            .take(5)
            .chain(["format = \"feed\""])
            .collect::<Vec<_>>()
            .join("\n");
        let config = crate::config::Config::compile(&feed, std::path::Path::new("c.toml")).unwrap();
        let atom = br#"<feed xmlns="http://www.w3.org/2005/Atom"><id>f</id><title>t</title>
            <updated>2026-01-01T00:00:00Z</updated>
            <entry><id>tag:1.91</id><title>1.91</title><updated>2026-01-01T00:00:00Z</updated></entry>
            </feed>"#;
        let (_, items) = new_items(atom, config.endpoints[0].rules()).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].0, json!("tag:1.91"));
    }

    #[test]
    fn item_documents_are_keyed_and_sorted() {
        let rules = item_rules(".data[]", ".id");
        // (case, body, expected (key, item) pairs, expected duplicate keys)
        type Case = (&'static str, &'static str, Vec<(Value, Value)>, Vec<Value>);
        let cases: Vec<Case> = vec![
            (
                "sorted by key whatever the order",
                r#"{"data":[{"id":2,"n":"b"},{"id":1,"n":"a"}]}"#,
                vec![
                    (json!(1), json!({"id":1,"n":"a"})),
                    (json!(2), json!({"id":2,"n":"b"})),
                ],
                vec![],
            ),
            ("an empty list", r#"{"data":[]}"#, vec![], vec![]),
            (
                "duplicate keys keep the item that sorts first",
                r#"{"data":[{"id":1,"n":"z"},{"id":1,"n":"a"},{"id":2}]}"#,
                vec![
                    (json!(1), json!({"id":1,"n":"a"})),
                    (json!(2), json!({"id":2})),
                ],
                vec![json!(1)],
            ),
            (
                "string keys and unicode",
                r#"{"data":[{"id":"ünï","v":"☂"},{"id":"abc"}]}"#,
                vec![
                    (json!("abc"), json!({"id":"abc"})),
                    (json!("ünï"), json!({"id":"ünï","v":"☂"})),
                ],
                vec![],
            ),
        ];
        for (case, body, expected, duplicates) in cases {
            let document = extract(body.as_bytes(), None, &rules).unwrap();
            assert_eq!(document.kind, Kind::Items, "{case}");
            assert_eq!(entries(&document), expected, "{case}");
            assert_eq!(document.duplicate_keys, duplicates, "{case}");
        }
        // Items the key cannot index are a failed poll, as in jq; with `?`
        // the key has no output, which is `[]` (see `jq::collapse`).
        assert!(extract(br#"{"data":["x"]}"#, None, &rules).is_err());
        let lenient = item_rules(".data[]", ".id?");
        let document = extract(br#"{"data":["x", {"id": 1}]}"#, None, &lenient).unwrap();
        assert_eq!(
            entries(&document),
            vec![(json!(1), json!({"id": 1})), (json!([]), json!("x"))]
        );
        // Order and duplicates never change the hash.
        let a = extract(
            br#"{"data":[{"id":1,"n":"z"},{"id":1,"n":"a"},{"id":2}]}"#,
            None,
            &rules,
        )
        .unwrap();
        let b = extract(
            br#"{"data":[{"id":2},{"id":1,"n":"a"},{"id":1,"n":"z"}]}"#,
            None,
            &rules,
        )
        .unwrap();
        assert_eq!(a.hash, b.hash);
    }

    #[test]
    fn select_and_nested_ignores_apply_before_items() {
        let rules = Rules {
            select: Some(".result".parse().unwrap()),
            ignore: vec!["/items/*/stats/views".into(), "/generated".into()],
            ..item_rules(".items[]", ".id")
        };
        let body = br#"{"meta":1,"result":{"generated":"now","items":[{"id":1,"stats":{"views":9,"likes":2}}]}}"#;
        let document = extract(body, None, &rules).unwrap();
        assert_eq!(
            entries(&document),
            vec![(json!(1), json!({"id":1,"stats":{"likes":2}}))]
        );
    }

    #[test]
    fn filters_that_fail_on_a_response_are_errors() {
        let cases = [
            (
                Rules {
                    select: Some(".a[0]".parse().unwrap()),
                    ..Rules::default()
                },
                "select",
            ),
            (item_rules(".a[]", ".id"), "items"),
            (item_rules(".[]", ".id"), "key"),
        ];
        for (rules, name) in cases {
            let error = extract(br#"{"a": 5}"#, None, &rules)
                .map(|_| ())
                .unwrap_err();
            assert!(
                error.to_string().contains(&format!("the `{name}` filter")),
                "{error}"
            );
        }
    }

    #[test]
    fn text_keeps_matching_lines_normalised() {
        let rules = Rules {
            keep_lines: Some(Regex::new("^(api|search):").unwrap()),
            replace: vec![
                (Regex::new(r"\(\d+ ms\)").unwrap(), "(… ms)".into()),
                (Regex::new("degraded").unwrap(), "DEGRADED".into()),
            ],
            ..Rules::default()
        };
        let body = "updated 12:03\napi: up (12 ms)\nsearch: degraded (340 ms)\nbilling: up\n";
        let document = extract(body.as_bytes(), Some("application/json"), &rules).unwrap();
        assert_eq!(document.kind, Kind::Text, "text rules make a text document");
        assert_eq!(document.text(), "api: up (… ms)\nsearch: DEGRADED (… ms)\n");
        let later = "updated 12:04\napi: up (15 ms)\nsearch: degraded (290 ms)\nbilling: down\n";
        assert_eq!(
            extract(later.as_bytes(), None, &rules).unwrap().hash,
            document.hash
        );
    }
}
