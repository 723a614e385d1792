//! XML → JSON the way xmltodict (and so Home Assistant's `rest`) writes
//! it: an element is `{name: value}`; attributes are `@name`, the text of
//! an element that also has attributes or children is `#text`, an element
//! with only text is that text, an empty one is `null`, and elements
//! repeated under one parent are an array. Names keep their namespace
//! prefixes as written (`gesmes:Envelope`).
//!
//! Entities: the five predefined ones and character references only. A
//! document type is never read, so no entity it declares is expanded (no
//! XXE, no billion laughs): a reference to one fails the conversion.

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;
use serde_json::{Map, Value};

use super::{FormatError, MAX_DEPTH};

/// An element being read: its name, attributes and children so far, and
/// its text.
struct Open {
    name: String,
    members: Map<String, Value>,
    has_children: bool,
    text: String,
}

/// Converts an XML document to JSON.
pub fn to_json(body: &[u8]) -> Result<Value, FormatError> {
    let text = decode(body);
    let mut reader = Reader::from_str(&text);
    let error = |reader: &Reader<&[u8]>, message: String| FormatError::Xml {
        position: reader.error_position(),
        message,
    };
    let mut open: Vec<Open> = Vec::new();
    let mut root: Option<Value> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|cause| error(&reader, cause.to_string()))?;
        match event {
            Event::Start(start) => {
                if open.len() >= MAX_DEPTH {
                    return Err(error(
                        &reader,
                        format!("elements nested deeper than {MAX_DEPTH}"),
                    ));
                }
                if root.is_some() {
                    return Err(error(&reader, "a second root element".to_string()));
                }
                open.push(element(&start).map_err(|message| error(&reader, message))?);
            }
            Event::Empty(start) => {
                let element = element(&start).map_err(|message| error(&reader, message))?;
                close(element, &mut open, &mut root).map_err(|message| error(&reader, message))?;
            }
            Event::End(_) => {
                let element = open
                    .pop()
                    .ok_or_else(|| error(&reader, "an unmatched end tag".into()))?;
                close(element, &mut open, &mut root).map_err(|message| error(&reader, message))?;
            }
            Event::Text(text) => {
                if let Some(element) = open.last_mut() {
                    element.text.push_str(&text.xml10_content());
                }
            }
            Event::CData(data) => {
                if let Some(element) = open.last_mut() {
                    element.text.push_str(&data.xml10_content());
                }
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference
                    .resolve_char_ref()
                    .map_err(|cause| error(&reader, cause.to_string()))?
                {
                    Some(character) => character.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&reference)
                        .ok_or_else(|| {
                            error(
                                &reader,
                                format!(
                                    "the entity `&{};` is not expanded (no DTD is read)",
                                    &*reference
                                ),
                            )
                        })?
                        .to_string(),
                };
                if let Some(element) = open.last_mut() {
                    element.text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
    if let Some(element) = open.last() {
        return Err(error(
            &reader,
            format!("the document ends inside `<{}>`", element.name),
        ));
    }
    root.ok_or_else(|| error(&reader, "no root element".to_string()))
}

/// The document's text, in the encoding its byte order mark or its XML
/// declaration names (`<?xml version="1.0" encoding="ISO-8859-1"?>`).
fn decode(body: &[u8]) -> std::borrow::Cow<'_, str> {
    super::decode(body, |head| {
        let declaration = head.strip_prefix(b"<?xml")?;
        let end = declaration.iter().position(|byte| *byte == b'>')?;
        super::value_after(&declaration[..end], b"encoding")
    })
}

/// Refuses an XML body nested deeper than [`MAX_DEPTH`] before a parser
/// that recurses (feed-rs) reads it. Anything else wrong with it is left
/// for that parser to report.
pub fn check_depth(body: &[u8]) -> Result<(), FormatError> {
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'<') {
        return Ok(());
    }
    let text = String::from_utf8_lossy(body);
    let mut reader = Reader::from_str(&text);
    reader.config_mut().check_end_names = false;
    let mut depth = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Start(_)) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(FormatError::Xml {
                        position: reader.buffer_position(),
                        message: format!("elements nested deeper than {MAX_DEPTH}"),
                    });
                }
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Eof) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

fn element(start: &BytesStart<'_>) -> Result<Open, String> {
    let mut members = Map::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|cause| cause.to_string())?;
        let value = attribute
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|cause| cause.to_string())?;
        members.insert(
            format!("@{}", attribute.key.as_ref()),
            Value::String(value.into_owned()),
        );
    }
    Ok(Open {
        name: start.name().as_ref().to_string(),
        members,
        has_children: false,
        text: String::new(),
    })
}

/// Ends `element`: its value goes under its name into its parent, or
/// becomes the root.
fn close(element: Open, open: &mut [Open], root: &mut Option<Value>) -> Result<(), String> {
    let Open {
        name,
        mut members,
        has_children,
        text,
    } = element;
    let text = text.trim();
    let value = if members.is_empty() && !has_children {
        match text.is_empty() {
            true => Value::Null,
            false => Value::String(text.to_string()),
        }
    } else {
        if !text.is_empty() {
            members.insert("#text".to_string(), Value::String(text.to_string()));
        }
        Value::Object(members)
    };
    let Some(parent) = open.last_mut() else {
        if root.is_some() {
            return Err("a second root element".to_string());
        }
        *root = Some(Value::Object(Map::from_iter([(name, value)])));
        return Ok(());
    };
    parent.has_children = true;
    match parent.members.get_mut(&name) {
        None => {
            parent.members.insert(name, value);
        }
        Some(Value::Array(repeated)) => repeated.push(value),
        Some(first) => {
            let first = first.take();
            parent
                .members
                .insert(name, Value::Array(vec![first, value]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn check(xml: &str, expected: Value) {
        assert_eq!(to_json(xml.as_bytes()).unwrap(), expected, "{xml}");
    }

    #[test]
    fn converts_as_xmltodict_does() {
        check("<a>1</a>", json!({"a": "1"}));
        check("<a/>", json!({"a": null}));
        check(r#"<a x="1">t</a>"#, json!({"a": {"@x": "1", "#text": "t"}}));
        check(
            "<a><b>1</b><b>2</b><c/></a>",
            json!({"a": {"b": ["1", "2"], "c": null}}),
        );
        check(
            "<a><b>1</b><b>2</b><b>3</b></a>",
            json!({"a": {"b": ["1", "2", "3"]}}),
        );
        check(
            r#"<g:E xmlns:g="urn:x"><g:s> a &amp; b &#x41; </g:s></g:E>"#,
            json!({"g:E": {"@xmlns:g": "urn:x", "g:s": "a & b A"}}),
        );
        check("<a><![CDATA[<x>]]></a>", json!({"a": "<x>"}));
    }

    #[test]
    fn the_declared_encoding_or_the_byte_order_mark_is_read() {
        let latin1 = b"<?xml version=\"1.0\" encoding='ISO-8859-1' ?><city>Z\xfcrich</city>";
        assert_eq!(to_json(latin1).unwrap(), json!({"city": "Z\u{fc}rich"}));
        let mut utf16 = vec![0xff, 0xfe];
        utf16.extend("<p>\u{20ac}1</p>".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(to_json(&utf16).unwrap(), json!({"p": "\u{20ac}1"}));
        check("<p>Z\u{fc}rich</p>", json!({"p": "Z\u{fc}rich"}));
        let unknown = b"<?xml version=\"1.0\" encoding=\"no-such\"?><p>\xc3\xbc</p>";
        assert_eq!(
            to_json(unknown).unwrap(),
            json!({"p": "\u{fc}"}),
            "read as UTF-8"
        );
    }

    #[test]
    fn an_array_of_one_stays_apart_from_an_attribute() {
        // An attribute `@b` and a child `b` are different members.
        check(
            r#"<a b="x"><b>1</b></a>"#,
            json!({"a": {"@b": "x", "b": "1"}}),
        );
    }

    #[test]
    fn refuses_what_is_not_one_well_formed_document() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "</a>",
            "<a>&bogus;</a>",
            r#"<!DOCTYPE a [<!ENTITY x "boom">]><a>&x;</a>"#,
        ] {
            assert!(to_json(bad.as_bytes()).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn refuses_a_tree_too_deep() {
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        let error = to_json(deep.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("nested deeper"), "{error}");
        let fine = "<a>".repeat(MAX_DEPTH) + &"</a>".repeat(MAX_DEPTH);
        assert!(to_json(fine.as_bytes()).is_ok());
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = to_json(&body);
        }

        #[test]
        fn never_panics_on_xmlish_text(body in "[<>/a-c =\"'&;#x0-9!\\[\\]CDATA-]{0,200}") {
            let _ = to_json(body.as_bytes());
        }
    }
}
