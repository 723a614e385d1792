//! Bodies that are not JSON, made into JSON so that `select`, `items`,
//! `key`, `ignore` and `when` work on them as on any JSON answer: feeds
//! (RSS, Atom, JSON Feed) become their normalised items, XML becomes the
//! JSON that xmltodict and Home Assistant make of it, and HTML pages become
//! what their CSS selectors pick. Pure: no IO, and no input makes them
//! panic; the body was already cut at `max_body` by the fetch.

pub mod feed;
pub mod html;
pub mod xml;

use serde_json::Value;

/// Elements nested deeper than this are refused: a tree that deep is an
/// attack or a mistake, and dropping it would recurse as deep.
pub const MAX_DEPTH: usize = 128;

/// A body the format could not read: the poll fails and the snapshot stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the response is not a feed (RSS, Atom or JSON Feed): {0}")]
    Feed(String),
    #[error("the response is not well-formed XML: {message} at byte {position}")]
    Xml { position: u64, message: String },
    #[error("the response is not an HTML page: {0}")]
    Html(String),
}

/// A converted body, with what the page's selectors did not find.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub value: Value,
    /// HTML: the selectors that matched nothing on this page.
    pub unmatched: Vec<String>,
}

impl From<Value> for Converted {
    fn from(value: Value) -> Converted {
        Converted {
            value,
            unmatched: Vec::new(),
        }
    }
}

/// The format a Content-Type names, among those converted here. Only
/// feeds are recognised: a plain XML or HTML answer is compared as text
/// unless the endpoint says `format = "xml"` or `"html"`.
/// A document's text: in the encoding of its byte order mark, else the one
/// `declared` finds in its first KiB, else UTF-8. Bytes that are not of
/// the encoding become U+FFFD.
fn decode(body: &[u8], declared: fn(&[u8]) -> Option<&[u8]>) -> std::borrow::Cow<'_, str> {
    if let Some((encoding, bom)) = encoding_rs::Encoding::for_bom(body) {
        return encoding.decode_without_bom_handling(&body[bom..]).0;
    }
    let head = &body[..body.len().min(1024)];
    let encoding = declared(head)
        .and_then(encoding_rs::Encoding::for_label)
        .unwrap_or(encoding_rs::UTF_8);
    encoding.decode_without_bom_handling(body).0
}

/// The value of the first `name=value` in `text` (`name` in any case, the
/// value quoted or not).
fn value_after<'a>(text: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let at = text
        .windows(name.len())
        .position(|window| window.eq_ignore_ascii_case(name))?;
    let rest = text[at + name.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b"=")?.trim_ascii_start();
    let (value, ends): (&[u8], &[u8]) = match rest.first()? {
        quote @ (b'"' | b'\'') => (&rest[1..], std::slice::from_ref(quote)),
        _ => (rest, b" \t\r\n;\"'>/"),
    };
    let end = value.iter().position(|byte| ends.contains(byte))?;
    Some(&value[..end])
}

pub fn is_feed_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/rss+xml"
            | "application/atom+xml"
            | "application/rdf+xml"
            | "application/feed+json"
    )
}
