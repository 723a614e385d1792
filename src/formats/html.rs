//! HTML pages → what their CSS selectors pick (scraper, on html5ever: it
//! reads any page as a browser would, so no markup makes it fail). Each
//! value is the text of an element, its whitespace collapsed, or one of its
//! attributes (`attr`):
//!
//! - `css = "span.price"`: the array of every match's value;
//! - `css = { price = "span.price", stock = "#stock" }`: an object of the
//!   first match of each (`null` for none);
//! - `items_css = "li.release"` with such a table: an array of one object
//!   per block, its fields selected inside the block.
//!
//! A selector that matches nothing is named in [`Converted::unmatched`]
//! (the poller reports it once), rather than failing the poll.

use std::fmt;

use scraper::{ElementRef, Html, Selector};
use serde_json::{Map, Value};

use super::{Converted, FormatError};

/// A CSS selector with the text it was parsed from (for messages and the
/// endpoint's definition).
#[derive(Clone)]
pub struct Css {
    pub source: String,
    selector: Selector,
}

impl fmt::Debug for Css {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Css({:?})", self.source)
    }
}

impl std::str::FromStr for Css {
    type Err = String;

    fn from_str(source: &str) -> Result<Css, String> {
        let selector = Selector::parse(source)
            .map_err(|error| format!("invalid CSS selector `{source}`: {error}"))?;
        Ok(Css {
            source: source.to_string(),
            selector,
        })
    }
}

/// One value to pick: a selector and, optionally, the attribute to take
/// instead of the text.
#[derive(Debug, Clone)]
pub struct Field {
    pub css: Css,
    pub attr: Option<String>,
}

/// What an `html` endpoint picks from the page.
#[derive(Debug, Clone)]
pub enum Pick {
    /// Every match of one selector.
    All(Field),
    /// The first match of each named selector.
    Named(Vec<(String, Field)>),
    /// One object per block, with the named fields found inside it.
    Items {
        block: Css,
        fields: Vec<(String, Field)>,
    },
}

impl Pick {
    /// What shapes the document, for the endpoint's definition hash.
    pub fn describe(&self) -> String {
        let field = |field: &Field| {
            format!(
                "{}@{}",
                field.css.source,
                field.attr.as_deref().unwrap_or("")
            )
        };
        let fields = |fields: &[(String, Field)]| {
            fields
                .iter()
                .map(|(name, value)| format!("{name}={}", field(value)))
                .collect::<Vec<_>>()
                .join("\u{1f}")
        };
        match self {
            Pick::All(one) => format!("all {}", field(one)),
            Pick::Named(named) => format!("named {}", fields(named)),
            Pick::Items {
                block,
                fields: named,
            } => {
                format!("items {} {}", block.source, fields(named))
            }
        }
    }
}

/// Applies `pick` to a page.
pub fn to_json(body: &[u8], pick: &Pick) -> Result<Converted, FormatError> {
    if body.iter().take(4096).any(|byte| *byte == 0) {
        return Err(FormatError::Html(
            "it holds binary data (a NUL byte)".to_string(),
        ));
    }
    // The charset a `<meta>` names, as a browser's prescan finds it.
    let text = super::decode(body, |head| super::value_after(head, b"charset"));
    let page = Html::parse_document(&text);
    let root = page.root_element();
    let mut unmatched = Vec::new();
    let value = match pick {
        Pick::All(field) => {
            let values: Vec<Value> = root
                .select(&field.css.selector)
                .map(|element| value_of(element, field))
                .collect();
            if values.is_empty() {
                unmatched.push(field.css.source.clone());
            }
            Value::Array(values)
        }
        Pick::Named(fields) => {
            let mut object = Map::new();
            for (name, field) in fields {
                let value = first(root, field);
                if value.is_null() {
                    unmatched.push(field.css.source.clone());
                }
                object.insert(name.clone(), value);
            }
            Value::Object(object)
        }
        Pick::Items { block, fields } => {
            let mut found = vec![false; fields.len()];
            let items: Vec<Value> = root
                .select(&block.selector)
                .map(|element| {
                    let mut object = Map::new();
                    for ((name, field), found) in fields.iter().zip(&mut found) {
                        let value = first(element, field);
                        *found |= !value.is_null();
                        object.insert(name.clone(), value);
                    }
                    Value::Object(object)
                })
                .collect();
            if items.is_empty() {
                unmatched.push(block.source.clone());
            } else {
                for ((_, field), found) in fields.iter().zip(found) {
                    if !found {
                        unmatched.push(field.css.source.clone());
                    }
                }
            }
            Value::Array(items)
        }
    };
    Ok(Converted { value, unmatched })
}

/// The value of the first match inside `scope`, `null` when none.
fn first(scope: ElementRef<'_>, field: &Field) -> Value {
    scope
        .select(&field.css.selector)
        .next()
        .map_or(Value::Null, |element| value_of(element, field))
}

/// An element's text with its whitespace collapsed, or its attribute
/// (`null` when it has none).
fn value_of(element: ElementRef<'_>, field: &Field) -> Value {
    match &field.attr {
        Some(attr) => element
            .value()
            .attr(attr)
            .map_or(Value::Null, |value| Value::String(value.trim().to_string())),
        None => {
            let mut text = String::new();
            for word in element.text().flat_map(str::split_whitespace) {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(word);
            }
            Value::String(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn field(css: &str, attr: Option<&str>) -> Field {
        Field {
            css: css.parse().unwrap(),
            attr: attr.map(str::to_string),
        }
    }

    const PAGE: &str = r#"<html><body>
        <h1>Widget</h1><span class="price"> 19,99
          € </span><p id="stock">In stock</p>
        <ul><li class="r"><h2>1.2</h2><a href="/1.2">notes</a></li>
            <li class="r"><h2>1.1</h2></li></ul></body></html>"#;

    #[test]
    fn a_page_is_read_in_the_charset_its_meta_names() {
        let price = Pick::All(field(".price", None));
        for head in [
            &b"<meta charset=\"windows-1252\">"[..],
            b"<meta http-equiv=Content-Type content='text/html; charset=ISO-8859-1'>",
            b"<META CHARSET=latin1>",
        ] {
            let page = [head, b"<span class=price>19,99 \x80</span>"].concat();
            let value = to_json(&page, &price).unwrap().value;
            assert_eq!(
                value,
                json!(["19,99 \u{20ac}"]),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        let utf8 = to_json("<span class=price>19,99 \u{20ac}</span>".as_bytes(), &price);
        assert_eq!(utf8.unwrap().value, json!(["19,99 \u{20ac}"]));
    }

    #[test]
    fn picks_text_attributes_tables_and_items() {
        let all = to_json(PAGE.as_bytes(), &Pick::All(field("span.price", None))).unwrap();
        assert_eq!(all.value, json!(["19,99 €"]));
        assert!(all.unmatched.is_empty());

        let named = Pick::Named(vec![
            ("price".into(), field(".price", None)),
            ("stock".into(), field("#stock", None)),
            ("gone".into(), field("#gone", None)),
        ]);
        let named = to_json(PAGE.as_bytes(), &named).unwrap();
        assert_eq!(
            named.value,
            json!({"price": "19,99 €", "stock": "In stock", "gone": null})
        );
        assert_eq!(named.unmatched, ["#gone"]);

        let items = Pick::Items {
            block: "li.r".parse().unwrap(),
            fields: vec![
                ("version".into(), field("h2", None)),
                ("link".into(), field("a", Some("href"))),
            ],
        };
        let items = to_json(PAGE.as_bytes(), &items).unwrap();
        assert_eq!(
            items.value,
            json!([{"version": "1.2", "link": "/1.2"}, {"version": "1.1", "link": null}])
        );
        assert!(items.unmatched.is_empty());
    }

    #[test]
    fn a_selector_that_matches_nothing_is_reported() {
        let none = to_json(b"<p>x</p>", &Pick::All(field("span.price", None))).unwrap();
        assert_eq!(none.value, json!([]));
        assert_eq!(none.unmatched, ["span.price"]);
    }

    #[test]
    fn binary_is_not_a_page_and_bad_selectors_do_not_parse() {
        assert!(to_json(b"\x89PNG\r\n\x1a\n\0\0", &Pick::All(field("p", None))).is_err());
        assert!("span[".parse::<Css>().is_err());
        assert!("".parse::<Css>().is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let pick = Pick::Items {
                block: "li, div".parse().unwrap(),
                fields: vec![("a".into(), field("a", Some("href"))), ("t".into(), field("*", None))],
            };
            let _ = to_json(&body, &pick);
        }
    }
}
