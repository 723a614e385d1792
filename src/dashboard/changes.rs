//! Pure: the difference between two versions of a document as a person
//! reads it: JSON as a tree of rows (the old value struck, the new one
//! marked), text side by side, items as added / removed / changed rows.
//! Bounded: a huge document shows its first [`MAX_ROWS`] rows.

use serde::Serialize;
use serde_json::Value;

use crate::diff::{Change, diff};
use crate::extract::{Document, Kind};

/// Rows shown at most, so that a page stays small.
pub const MAX_ROWS: usize = 2000;
/// Characters of a value shown at most.
const MAX_VALUE: usize = 200;

/// Two versions side by side, as the endpoint page renders them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shown {
    /// The same document.
    Same,
    Json {
        rows: Vec<TreeRow>,
        cut: bool,
    },
    Items {
        rows: Vec<ItemRow>,
        cut: bool,
    },
    Text {
        rows: Vec<TextRow>,
        cut: bool,
    },
    /// Not text: only the hashes differ.
    Bytes {
        old: String,
        new: String,
    },
}

/// What happened to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Same,
    Added,
    Removed,
    Changed,
    /// An object or array with changes inside: its rows follow.
    Inside,
}

/// One key of a JSON tree, `depth` levels down.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TreeRow {
    pub depth: usize,
    pub key: String,
    pub state: State,
    pub old: Option<String>,
    pub new: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemRow {
    pub key: String,
    pub state: State,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// A line of a side-by-side diff; a side without a line is `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextRow {
    pub state: State,
    pub old_line: Option<usize>,
    pub old: Option<String>,
    pub new_line: Option<usize>,
    pub new: Option<String>,
}

/// How `new` differs from `old`.
pub fn show(old: &Document, new: &Document) -> Shown {
    if old.hash == new.hash {
        return Shown::Same;
    }
    match (old.kind, new.kind) {
        (Kind::Items, Kind::Items) => items(old, new),
        (Kind::Json, Kind::Json) => match (old.json(), new.json()) {
            (Some(old), Some(new)) => {
                let mut rows = Vec::new();
                tree(&mut rows, 0, "", &old, &new);
                let cut = rows.len() > MAX_ROWS;
                rows.truncate(MAX_ROWS);
                Shown::Json { rows, cut }
            }
            _ => bytes(old, new),
        },
        (Kind::Text, Kind::Text) => text(&old.text(), &new.text()),
        _ => bytes(old, new),
    }
}

fn bytes(old: &Document, new: &Document) -> Shown {
    Shown::Bytes {
        old: old.hash_hex(),
        new: new.hash_hex(),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(MAX_VALUE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// The rows of `key` and, where it changed inside, of its children.
fn tree(rows: &mut Vec<TreeRow>, depth: usize, key: &str, old: &Value, new: &Value) {
    if rows.len() > MAX_ROWS {
        return;
    }
    let row = |state, old: Option<&Value>, new: Option<&Value>| TreeRow {
        depth,
        key: key.to_string(),
        state,
        old: old.map(short),
        new: new.map(short),
    };
    if old == new {
        rows.push(row(State::Same, Some(old), None));
        return;
    }
    match (old, new) {
        (Value::Object(old_map), Value::Object(new_map)) => {
            rows.push(row(State::Inside, None, None));
            let mut keys: Vec<&String> = old_map.keys().chain(new_map.keys()).collect();
            keys.sort();
            keys.dedup();
            for child in keys {
                child_rows(
                    rows,
                    depth + 1,
                    child,
                    old_map.get(child),
                    new_map.get(child),
                );
            }
        }
        (Value::Array(old_items), Value::Array(new_items)) => {
            rows.push(row(State::Inside, None, None));
            for index in 0..old_items.len().max(new_items.len()) {
                let child = format!("[{index}]");
                child_rows(
                    rows,
                    depth + 1,
                    &child,
                    old_items.get(index),
                    new_items.get(index),
                );
            }
        }
        _ => rows.push(row(State::Changed, Some(old), Some(new))),
    }
}

fn child_rows(
    rows: &mut Vec<TreeRow>,
    depth: usize,
    key: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) {
    let leaf = |state, old: Option<&Value>, new: Option<&Value>| TreeRow {
        depth,
        key: key.to_string(),
        state,
        old: old.map(short),
        new: new.map(short),
    };
    match (old, new) {
        (Some(old), Some(new)) => tree(rows, depth, key, old, new),
        (Some(old), None) => rows.push(leaf(State::Removed, Some(old), None)),
        (None, Some(new)) => rows.push(leaf(State::Added, None, Some(new))),
        (None, None) => {}
    }
}

fn items(old: &Document, new: &Document) -> Shown {
    let Some(Change::Items(changes)) = diff(Some(old), new) else {
        return bytes(old, new);
    };
    let row = |key: &Value, state, old: Option<&Value>, new: Option<&Value>| ItemRow {
        key: match key {
            Value::String(key) => key.clone(),
            key => key.to_string(),
        },
        state,
        old: old.map(short),
        new: new.map(short),
    };
    let mut rows: Vec<ItemRow> = Vec::new();
    rows.extend(
        changes
            .added
            .iter()
            .map(|(key, item)| row(key, State::Added, None, Some(item))),
    );
    rows.extend(
        changes
            .removed
            .iter()
            .map(|(key, item)| row(key, State::Removed, Some(item), None)),
    );
    rows.extend(changes.changed.iter().map(|change| {
        row(
            &change.key,
            State::Changed,
            Some(&change.previous),
            Some(&change.item),
        )
    }));
    let cut = rows.len() > MAX_ROWS;
    rows.truncate(MAX_ROWS);
    Shown::Items { rows, cut }
}

fn text(old: &str, new: &str) -> Shown {
    use similar::DiffTag;
    let diff = similar::TextDiff::from_lines(old, new);
    let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
    let new_lines: Vec<&str> = new.split_inclusive('\n').collect();
    let line = |lines: &[&str], index: usize| {
        lines
            .get(index)
            .map_or("", |line| line.trim_end_matches(['\n', '\r']))
            .to_string()
    };
    let mut rows = Vec::new();
    for op in diff.ops() {
        let (tag, old_range, new_range) = op.as_tag_tuple();
        let state = match tag {
            DiffTag::Equal => State::Same,
            DiffTag::Delete => State::Removed,
            DiffTag::Insert => State::Added,
            DiffTag::Replace => State::Changed,
        };
        for offset in 0..old_range.len().max(new_range.len()) {
            let old_index = (offset < old_range.len()).then(|| old_range.start + offset);
            let new_index = (offset < new_range.len()).then(|| new_range.start + offset);
            rows.push(TextRow {
                state,
                old_line: old_index.map(|index| index + 1),
                old: old_index.map(|index| line(&old_lines, index)),
                new_line: new_index.map(|index| index + 1),
                new: new_index.map(|index| line(&new_lines, index)),
            });
            if rows.len() > MAX_ROWS {
                break;
            }
        }
    }
    let cut = rows.len() > MAX_ROWS;
    rows.truncate(MAX_ROWS);
    Shown::Text { rows, cut }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(kind: Kind, value: Value) -> Document {
        Document::from_canonical(kind, serde_json::to_vec(&value).unwrap())
    }

    fn json_doc(value: Value) -> Document {
        doc(Kind::Json, value)
    }

    #[test]
    fn json_changes_are_a_tree_with_old_and_new_values() {
        let old = json_doc(json!({"price": 19.99, "name": "lamp", "tags": ["a"], "gone": 1}));
        let new =
            json_doc(json!({"price": 14.99, "name": "lamp", "tags": ["a", "b"], "new": true}));
        let Shown::Json { rows, cut } = show(&old, &new) else {
            panic!("not a tree");
        };
        assert!(!cut);
        type Seen<'a> = (usize, &'a str, State, Option<&'a str>, Option<&'a str>);
        let seen: Vec<Seen> = rows
            .iter()
            .map(|row| {
                (
                    row.depth,
                    row.key.as_str(),
                    row.state,
                    row.old.as_deref(),
                    row.new.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, "", State::Inside, None, None),
                (1, "gone", State::Removed, Some("1"), None),
                (1, "name", State::Same, Some("\"lamp\""), None),
                (1, "new", State::Added, None, Some("true")),
                (1, "price", State::Changed, Some("19.99"), Some("14.99")),
                (1, "tags", State::Inside, None, None),
                (2, "[0]", State::Same, Some("\"a\""), None),
                (2, "[1]", State::Added, None, Some("\"b\"")),
            ]
        );
        assert_eq!(show(&old, &old), Shown::Same);
    }

    #[test]
    fn text_is_side_by_side() {
        let old = Document::from_canonical(Kind::Text, b"one\ntwo\nthree\n".to_vec());
        let new = Document::from_canonical(Kind::Text, b"one\n2\nthree\nfour\n".to_vec());
        let Shown::Text { rows, .. } = show(&old, &new) else {
            panic!("not text");
        };
        let seen: Vec<(State, Option<&str>, Option<&str>)> = rows
            .iter()
            .map(|row| (row.state, row.old.as_deref(), row.new.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (State::Same, Some("one"), Some("one")),
                (State::Changed, Some("two"), Some("2")),
                (State::Same, Some("three"), Some("three")),
                (State::Added, None, Some("four")),
            ]
        );
        assert_eq!((rows[3].old_line, rows[3].new_line), (None, Some(4)));
    }

    #[test]
    fn items_are_added_removed_and_changed_rows() {
        let items = |list: Value| doc(Kind::Items, list);
        let old =
            items(json!([{"key": 1, "item": {"id": 1, "v": "a"}}, {"key": 2, "item": {"id": 2}}]));
        let new =
            items(json!([{"key": 1, "item": {"id": 1, "v": "b"}}, {"key": 3, "item": {"id": 3}}]));
        let Shown::Items { rows, .. } = show(&old, &new) else {
            panic!("not items");
        };
        let seen: Vec<(&str, State)> = rows
            .iter()
            .map(|row| (row.key.as_str(), row.state))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("3", State::Added),
                ("2", State::Removed),
                ("1", State::Changed)
            ]
        );
        assert_eq!(rows[2].old.as_deref(), Some(r#"{"id":1,"v":"a"}"#));
        assert_eq!(rows[2].new.as_deref(), Some(r#"{"id":1,"v":"b"}"#));
    }

    #[test]
    fn huge_documents_are_cut() {
        let old = json_doc(Value::Array((0..5000).map(|n| json!(n)).collect()));
        let new = json_doc(Value::Array((0..5000).map(|n| json!(n + 1)).collect()));
        let Shown::Json { rows, cut } = show(&old, &new) else {
            panic!("not a tree");
        };
        assert!(cut);
        assert_eq!(rows.len(), MAX_ROWS);
        let bytes = Document::from_canonical(Kind::Bytes, vec![1]);
        assert!(matches!(show(&bytes, &new), Shown::Bytes { .. }));
    }
}
