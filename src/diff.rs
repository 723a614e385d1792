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
    let bytes_change = || Change::Bytes {
        previous_hash: previous.map(Document::hash_hex).unwrap_or_default(),
        current_hash: current.hash_hex(),
    };
    Some(match (previous_kind, current.kind) {
        (Kind::Json, Kind::Json) => {
            let patch = match previous {
                Some(previous) => json_patch_between(&previous.canonical, &current.canonical),
                None => current
                    .json()
                    .map(|current| patch_value(&Value::Null, &current)),
            };
            // Only for bytes that are not JSON (a corrupt store): say so by hash.
            patch.map_or_else(bytes_change, |patch| Change::Json { patch })
        }
        (Kind::Items, Kind::Items) => Change::Items(item_changes(
            previous.and_then(Document::json).as_ref(),
            &current.json().unwrap_or(Value::Null),
        )),
        (Kind::Bytes, _) | (_, Kind::Bytes) => bytes_change(),
        // Text, or a document that switched between JSON and text.
        _ => {
            let previous_text = previous.map(Document::text).unwrap_or_default();
            let current_text = current.text();
            let diff = similar::TextDiff::from_lines(previous_text.as_ref(), current_text.as_ref())
                .unified_diff()
                .context_radius(3)
                .header("previous", "current")
                .to_string();
            Change::Text { diff }
        }
    })
}

fn patch_value(previous: &Value, current: &Value) -> Value {
    serde_json::to_value(json_patch::diff(previous, current)).unwrap_or(Value::Null)
}

/// The JSON Patch between two canonical JSON documents, parsing only the
/// smallest container that holds every byte in which they differ.
///
/// JSON Patch diffing is compositional: members that are equal yield no
/// operations. So when the documents are byte for byte the same outside one
/// container at the same place in both, the patch of the whole is the patch
/// of that container with its pointer put before every path. On a 10 MiB
/// document with one changed field this parses a few hundred bytes instead
/// of 20 MiB. `None` when the bytes are not JSON.
fn json_patch_between(previous: &[u8], current: &[u8]) -> Option<Value> {
    let (prefix, previous_part, current_part) = match changed_container(previous, current) {
        Some(container) => (
            container.pointer,
            &previous[container.previous],
            &current[container.current],
        ),
        None => (String::new(), previous, current),
    };
    let previous_value: Value = serde_json::from_slice(previous_part).ok()?;
    let current_value: Value = serde_json::from_slice(current_part).ok()?;
    let mut patch = patch_value(&previous_value, &current_value);
    if !prefix.is_empty() {
        for operation in patch.as_array_mut().into_iter().flatten() {
            if let Some(Value::String(path)) = operation.get_mut("path") {
                path.insert_str(0, &prefix);
            }
        }
    }
    Some(patch)
}

/// Where two canonical documents differ: the innermost container holding
/// every differing byte of both, as its JSON Pointer and its byte range in
/// each document.
#[derive(Debug, PartialEq)]
struct Container {
    pointer: String,
    previous: std::ops::RangeInclusive<usize>,
    current: std::ops::RangeInclusive<usize>,
}

/// `None` when the whole documents must be compared (a scalar document, a
/// change at the top level, or bytes that do not scan as JSON).
fn changed_container(previous: &[u8], current: &[u8]) -> Option<Container> {
    let shorter = previous.len().min(current.len());
    let same_start = previous
        .iter()
        .zip(current)
        .position(|(a, b)| a != b)
        .unwrap_or(shorter);
    // The common end may not overlap the common start.
    let same_end = previous
        .iter()
        .rev()
        .zip(current.iter().rev())
        .take(shorter - same_start)
        .position(|(a, b)| a != b)
        .unwrap_or(shorter - same_start);
    // Identical up to `same_start`: both are inside the same containers there.
    let mut scan = Scan::default();
    for (at, &byte) in previous[..same_start].iter().enumerate() {
        scan.step(at, byte);
    }
    let open = scan.stack.clone();
    let previous_closes = scan.clone().closes(previous, same_start, open.len())?;
    let current_closes = scan.closes(current, same_start, open.len())?;
    // The innermost container that ends, in both documents, inside the
    // common end, at the same distance from the end: outside it they are equal.
    let depth = (0..open.len()).rev().find(|&depth| {
        let (previous_close, current_close) = (previous_closes[depth], current_closes[depth]);
        previous_close >= previous.len() - same_end
            && current_close >= current.len() - same_end
            && previous.len() - previous_close == current.len() - current_close
    })?;
    let mut pointer = String::new();
    for parent in &open[..depth] {
        pointer.push('/');
        match parent.key {
            None => pointer.push_str(&parent.index.to_string()),
            Some((start, end)) => {
                let key: String = serde_json::from_slice(&previous[start..end]).ok()?;
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
        }
    }
    Some(Container {
        pointer,
        previous: open[depth].open..=previous_closes[depth],
        current: open[depth].open..=current_closes[depth],
    })
}

/// A container open at some point of a scan.
#[derive(Debug, Clone)]
struct Frame {
    /// Where its `{` or `[` is.
    open: usize,
    is_array: bool,
    /// For arrays: the index of the current element.
    index: usize,
    /// For objects: the byte range of the current member's key (quotes included).
    key: Option<(usize, usize)>,
    /// For objects: the next string is a key.
    expect_key: bool,
}

/// A byte-by-byte scan of compact JSON that knows which containers are open.
#[derive(Debug, Clone, Default)]
struct Scan {
    stack: Vec<Frame>,
    in_string: bool,
    escaped: bool,
    string_start: usize,
}

impl Scan {
    /// Takes one byte; returns the frame it closed, if any.
    fn step(&mut self, at: usize, byte: u8) -> Option<Frame> {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
                if let Some(frame) = self.stack.last_mut()
                    && !frame.is_array
                    && frame.expect_key
                {
                    frame.key = Some((self.string_start, at + 1));
                    frame.expect_key = false;
                }
            }
            return None;
        }
        match byte {
            b'"' => {
                self.in_string = true;
                self.string_start = at;
            }
            b'{' | b'[' => self.stack.push(Frame {
                open: at,
                is_array: byte == b'[',
                index: 0,
                key: None,
                expect_key: byte == b'{',
            }),
            b'}' | b']' => return self.stack.pop(),
            b',' => {
                if let Some(frame) = self.stack.last_mut() {
                    if frame.is_array {
                        frame.index += 1;
                    } else {
                        frame.expect_key = true;
                    }
                }
            }
            _ => {}
        }
        None
    }

    /// Scans `document` on from `from` and returns where each of the first
    /// `open` containers closes; `None` if one never does.
    fn closes(mut self, document: &[u8], from: usize, open: usize) -> Option<Vec<usize>> {
        let mut closes = vec![None; open];
        for (at, &byte) in document.iter().enumerate().skip(from) {
            let depth = self.stack.len();
            // The first close at a depth is the original container's: a
            // later one at that depth was opened after it closed.
            if self.step(at, byte).is_some() && depth <= open && closes[depth - 1].is_none() {
                closes[depth - 1] = Some(at);
                if depth == 1 {
                    break;
                }
            }
        }
        closes.into_iter().collect()
    }
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
    fn patches_of_the_changed_part_equal_patches_of_the_whole() {
        let pairs = [
            (
                r#"{"a":{"b":[1,2,3]},"c":1}"#,
                r#"{"a":{"b":[1,5,3]},"c":1}"#,
            ),
            (r#"{"a":{"b":[1,2,3]},"c":1}"#, r#"{"a":{"b":[1,2]},"c":1}"#),
            (
                r#"{"a":{"b":[1,2]},"c":1}"#,
                r#"{"a":{"b":[1,2,[3]]},"c":1}"#,
            ),
            (r#"{"a":[[1],[2]]}"#, r#"{"a":[[1],[2],[2]]}"#),
            (r#"{"a":[[1],[2],[2]]}"#, r#"{"a":[[1],[2]]}"#),
            (
                r#"{"a/b":{"m~n":[{"x":"1"}]}}"#,
                r#"{"a/b":{"m~n":[{"x":"2"}]}}"#,
            ),
            (r#"{"\u00e9\"":{"k":1}}"#, r#"{"\u00e9\"":{"k":2}}"#),
            (r#"{"k":"a\"b","l":[1]}"#, r#"{"k":"a\"b","l":[2]}"#),
            (r#"{"a":1}"#, r#"{"a":1,"b":2}"#),
            (r#"{"a":1,"b":2}"#, r#"{"b":2}"#),
            (r#"[1,2,3]"#, r#"[1,2,4]"#),
            (r#"[{"a":1},{"a":1}]"#, r#"[{"a":1},{"a":2}]"#),
            (r#"[{"a":1},{"a":2}]"#, r#"[{"a":2},{"a":2}]"#),
            (r#"{"x":{"y":{}}}"#, r#"{"x":{"y":{"z":[]}}}"#),
            (r#"{"x":{"y":{"z":[]}}}"#, r#"{"x":{"y":{}}}"#),
            (r#""text""#, r#""other""#),
            (r#"1"#, r#"[1]"#),
            (r#"{"a":[1]}"#, r#"[1]"#),
            (
                r#"{"a":{"b":1},"c":{"d":1}}"#,
                r#"{"a":{"b":2},"c":{"d":2}}"#,
            ),
        ];
        for (old, new) in pairs {
            let (old, new) = (json(old), json(new));
            let whole = patch_value(&old.json().unwrap(), &new.json().unwrap());
            assert_eq!(
                json_patch_between(&old.canonical, &new.canonical),
                Some(whole),
                "{} -> {}",
                old.text(),
                new.text()
            );
        }
    }

    /// Random documents and random edits of them: the patch of the changed
    /// part always equals the patch of the whole.
    #[test]
    fn random_edits_patch_as_the_whole_does() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        fn random_value(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> Value {
            match next(if depth > 3 { 4 } else { 6 }) {
                0 => Value::Null,
                1 => json!(next(3)),
                2 => json!(["a", "b/c", "d~e", "\"q\"", "é"][next(5) as usize]),
                3 => json!(next(2) == 0),
                4 => Value::Array(
                    (0..next(4))
                        .map(|_| random_value(next, depth + 1))
                        .collect(),
                ),
                _ => Value::Object(
                    (0..next(4))
                        .map(|_| {
                            let key = ["k", "a/b", "m~n", "\"", "z"][next(5) as usize];
                            (key.to_string(), random_value(next, depth + 1))
                        })
                        .collect(),
                ),
            }
        }
        fn edit(value: &mut Value, next: &mut dyn FnMut(u64) -> u64) {
            let children = match value {
                Value::Array(items) if !items.is_empty() => items.len(),
                Value::Object(map) if !map.is_empty() => map.len(),
                _ => 0,
            };
            if children == 0 || next(3) == 0 {
                *value = random_value(next, 2);
                return;
            }
            let pick = next(children as u64) as usize;
            match value {
                Value::Array(items) if next(4) == 0 => {
                    items.remove(pick);
                }
                Value::Array(items) => edit(&mut items[pick], next),
                Value::Object(map) => {
                    let key = map.keys().nth(pick).cloned().unwrap_or_default();
                    edit(map.get_mut(&key).unwrap(), next);
                }
                _ => {}
            }
        }
        for _ in 0..2000 {
            let old = random_value(&mut next, 0);
            let mut new = old.clone();
            edit(&mut new, &mut next);
            let (old_document, new_document) = (json(&old.to_string()), json(&new.to_string()));
            assert_eq!(
                json_patch_between(&old_document.canonical, &new_document.canonical),
                Some(patch_value(&old, &new)),
                "{old} -> {new}"
            );
        }
    }

    #[test]
    fn one_change_in_a_large_document_parses_only_its_container() {
        let items = |changed: usize| {
            let items: Vec<Value> = (0..1000)
                .map(|id| json!({"id": id, "price": if id == changed { 1 } else { 0 }}))
                .collect();
            json(&json!({"items": items, "meta": {"n": 1000}}).to_string())
        };
        let (old, new) = (items(usize::MAX), items(500));
        let container = changed_container(&old.canonical, &new.canonical).unwrap();
        assert_eq!(container.pointer, "/items/500");
        assert_eq!(
            &old.canonical[container.previous],
            br#"{"id":500,"price":0}"#
        );
        assert_eq!(
            diff(Some(&old), &new),
            Some(Change::Json {
                patch: json!([{"op": "replace", "path": "/items/500/price", "value": 1}])
            })
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
