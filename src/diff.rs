//! What changed between two documents: pure, no IO.
//!
//! JSON gives an RFC 6902 JSON Patch, item lists the items added, removed
//! and changed (each change a patch), text a unified diff, anything else
//! only the two hashes. Identical documents (same hash) short-circuit before
//! any diff work.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::extract::{Document, Kind};

/// How a document changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// RFC 6902 operations that turn the previous document into the current.
    Json { patch: Value },
    /// Item mode: what happened to each item, by key.
    Items(ItemChanges),
    /// A unified diff, `previous` → `current`.
    Text { diff: String },
    /// Not diffable: only the hashes differ.
    Bytes {
        previous_hash: String,
        current_hash: String,
    },
}

/// The items added, removed and changed between two item documents, each
/// list sorted by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemChanges {
    /// `(key, item)`
    pub added: Vec<(Value, Value)>,
    /// `(key, the item as it was)`
    pub removed: Vec<(Value, Value)>,
    pub changed: Vec<ItemChange>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ItemChange {
    pub key: Value,
    pub previous: Value,
    pub item: Value,
    /// RFC 6902 operations from `previous` to `item`.
    pub patch: Value,
}

impl ItemChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// The three lists as events carry them: `added` and `removed` as
    /// `[{key, item}]`, `changed` as `[{key, item, patch}]`.
    pub fn into_json(self) -> [Vec<Value>; 3] {
        let entries = |list: Vec<(Value, Value)>| -> Vec<Value> {
            list.into_iter()
                .map(|(key, item)| serde_json::json!({ "key": key, "item": item }))
                .collect()
        };
        let changed = self
            .changed
            .into_iter()
            .map(|change| {
                serde_json::json!({ "key": change.key, "item": change.item, "patch": change.patch })
            })
            .collect();
        [entries(self.added), entries(self.removed), changed]
    }
}

/// The change from `previous` to `current`, or `None` when they are equal.
/// With no previous document (an initial event), everything is new.
pub fn diff(previous: Option<&Document>, current: &Document) -> Option<Change> {
    if previous.is_some_and(|previous| previous.hash == current.hash) {
        return None;
    }
    let previous_kind = previous.map_or(current.kind, |previous| previous.kind);
    Some(
        match (
            previous_kind,
            current.kind,
            previous.and_then(|p| p.json.as_ref()),
            &current.json,
        ) {
            (Kind::Items, Kind::Items, previous_json, Some(current_json)) => {
                Change::Items(item_changes(previous_json, current_json))
            }
            (Kind::Json, Kind::Json, previous_json, Some(current_json)) => {
                let patch = json_patch::diff(previous_json.unwrap_or(&Value::Null), current_json);
                Change::Json {
                    patch: serde_json::to_value(patch).unwrap_or(Value::Null),
                }
            }
            // An initial event in item mode: every item is new.
            (_, Kind::Items, None, Some(current_json)) if previous.is_none() => {
                Change::Items(item_changes(None, current_json))
            }
            (Kind::Bytes, _, _, _) | (_, Kind::Bytes, _, _) => Change::Bytes {
                previous_hash: previous.map(Document::hash_hex).unwrap_or_default(),
                current_hash: current.hash_hex(),
            },
            // Text, or a document that switched between JSON and text.
            _ => {
                let previous_text = previous.map(Document::text).unwrap_or_default();
                let current_text = current.text();
                let diff =
                    similar::TextDiff::from_lines(previous_text.as_ref(), current_text.as_ref())
                        .unified_diff()
                        .context_radius(3)
                        .header("previous", "current")
                        .to_string();
                Change::Text { diff }
            }
        },
    )
}

/// Compares two item documents (arrays of `{"key", "item"}`) by key.
fn item_changes(previous: Option<&Value>, current: &Value) -> ItemChanges {
    let entries = |document: Option<&Value>| -> BTreeMap<String, (Value, Value)> {
        document
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|entry| {
                let key = entry.get("key").cloned().unwrap_or(Value::Null);
                let item = entry.get("item").cloned().unwrap_or(Value::Null);
                (key.to_string(), (key, item))
            })
            .collect()
    };
    let mut before = entries(previous);
    let mut changes = ItemChanges::default();
    for (key_text, (key, item)) in entries(Some(current)) {
        match before.remove(&key_text) {
            None => changes.added.push((key, item)),
            Some((_, previous)) if previous != item => {
                let patch = json_patch::diff(&previous, &item);
                changes.changed.push(ItemChange {
                    key,
                    patch: serde_json::to_value(patch).unwrap_or(Value::Null),
                    previous,
                    item,
                });
            }
            Some(_) => {}
        }
    }
    changes.removed = before.into_values().collect();
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::extract::{Rules, extract};
    use serde_json::json;

    fn json(text: &str) -> Document {
        extract(
            text.as_bytes(),
            None,
            &Rules {
                format: Some(Format::Json),
                ..Rules::default()
            },
        )
        .unwrap()
    }

    fn text(text: &str) -> Document {
        extract(
            text.as_bytes(),
            None,
            &Rules {
                format: Some(Format::Text),
                ..Rules::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn json_changes_become_patches() {
        let check = |old: &str, new: &str, expected: Option<Value>| {
            let change = diff(Some(&json(old)), &json(new));
            let patch = change.map(|change| match change {
                Change::Json { patch } => patch,
                other => panic!("expected a patch, got {other:?}"),
            });
            assert_eq!(patch, expected, "{old} -> {new}");
        };
        check(r#"{"a":1}"#, r#"{"a":1}"#, None);
        check(r#"{"b":2,"a":1}"#, r#"{"a":1,"b":2}"#, None);
        check(
            r#"{"a":1}"#,
            r#"{"a":2}"#,
            Some(json!([{"op": "replace", "path": "/a", "value": 2}])),
        );
        check(
            r#"{"a":1}"#,
            r#"{"a":1,"b":"é"}"#,
            Some(json!([{"op": "add", "path": "/b", "value": "é"}])),
        );
        check(
            r#"{"a":1,"b":2}"#,
            r#"{"a":1}"#,
            Some(json!([{"op": "remove", "path": "/b"}])),
        );
    }

    #[test]
    fn initial_event_carries_the_whole_document() {
        let change = diff(None, &json(r#"{"a":1}"#)).unwrap();
        assert_eq!(
            change,
            Change::Json {
                patch: json!([{"op": "replace", "path": "", "value": {"a": 1}}])
            }
        );
    }

    #[test]
    fn text_changes_become_unified_diffs() {
        let change = diff(Some(&text("one\ntwo\nthree\n")), &text("one\n2\nthree\n")).unwrap();
        let Change::Text { diff } = change else {
            panic!("expected text")
        };
        assert!(diff.contains("--- previous\n+++ current\n"), "{diff}");
        assert!(diff.contains("-two\n+2\n"), "{diff}");
        assert!(super::diff(Some(&text("same")), &text("same")).is_none());
    }

    mod properties {
        use super::*;
        use crate::extract::ItemRules;
        use proptest::prelude::*;

        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "[a-c\\u{e9}\\u{2602}/~0-9]{0,4}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map("[a-c0-9~/]{0,3}", inner, 0..6)
                        .prop_map(|map| Value::Object(map.into_iter().collect())),
                ]
            })
        }

        fn pointer() -> impl Strategy<Value = String> {
            prop::collection::vec("[a-c0-9*~/]{0,2}", 0..4)
                .prop_map(|tokens| tokens.iter().map(|t| format!("/{t}")).collect())
        }

        fn rules(ignore: Vec<String>, item_mode: bool) -> Rules {
            Rules {
                format: Some(Format::Json),
                ignore,
                // `..` reaches items at any depth; `?` keeps odd ones keyless.
                items: item_mode.then(|| ItemRules {
                    items: "..".parse().unwrap(),
                    key: ".a? // .b?".parse().unwrap(),
                }),
                ..Rules::default()
            }
        }

        proptest! {
            /// Extract and diff never panic, and a document compared with
            /// itself is never a change.
            #[test]
            fn extract_and_diff_never_panic(
                before in any_json(),
                after in any_json(),
                ignore in prop::collection::vec(pointer(), 0..3),
                item_mode in any::<bool>(),
            ) {
                let rules = rules(ignore, item_mode);
                let extract_json = |value: &Value| {
                    extract(value.to_string().as_bytes(), None, &rules)
                };
                if let (Ok(before), Ok(after)) = (extract_json(&before), extract_json(&after)) {
                    prop_assert_eq!(diff(Some(&before), &before), None);
                    let change = diff(Some(&before), &after);
                    prop_assert_eq!(change.is_none(), before.hash == after.hash);
                    let _ = diff(None, &after);
                    let restored = Document::from_canonical(after.kind, after.canonical.clone());
                    prop_assert_eq!(restored.map(|doc| doc.hash).ok(), Some(after.hash));
                }
            }

            /// Any bytes at all, as JSON or text, give a document or an error.
            #[test]
            fn any_body_is_a_document_or_an_error(
                body in prop::collection::vec(any::<u8>(), 0..256),
                as_text in any::<bool>(),
            ) {
                let format = if as_text { Format::Text } else { Format::Json };
                let rules = Rules { format: Some(format), ..Rules::default() };
                if let Ok(document) = extract(&body, None, &rules) {
                    let _ = diff(Some(&document), &document);
                    let _ = diff(None, &document);
                }
            }
        }
    }
}
