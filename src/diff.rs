//! What changed between two documents: pure, no IO.
//!
//! JSON gives an RFC 6902 JSON Patch, item lists the items added, removed
//! and changed (each change a patch), text a unified diff, anything else
//! only the two hashes. Identical documents (same hash) short-circuit before
//! any diff work.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::extract::{Document, Kind};

/// How a document changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// RFC 6902 operations that turn the previous document into the current,
    /// and for each `replace` of a scalar the value it replaced (by path), so
    /// that a message can say `/price 19.99 → 14.99`.
    Json { patch: Value, replaced: Value },
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
    /// `[{key, item}]`, `changed` as `[{key, item, previous, patch}]`: the
    /// item as it was too, so that a template can say "from → to".
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
                serde_json::json!({
                    "key": change.key,
                    "item": change.item,
                    "previous": change.previous,
                    "patch": change.patch,
                })
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
                    .map(|current| (patch_value(&Value::Null, &current), json!({}))),
            };
            // Only for bytes that are not JSON (a corrupt store): say so by hash.
            patch.map_or_else(bytes_change, |(patch, replaced)| Change::Json {
                patch,
                replaced,
            })
        }
        (Kind::Items, Kind::Items) => match previous.map(Document::json) {
            // Stored bytes that are not JSON: not every item is new.
            Some(None) => bytes_change(),
            previous => Change::Items(item_changes(
                previous.flatten().as_ref(),
                &current.json().unwrap_or(Value::Null),
            )),
        },
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
/// values that differ; `None` when the bytes are not JSON.
///
/// JSON Patch diffing is compositional: members that are equal yield no
/// operations. So when the documents are byte for byte the same outside one
/// container at the same place in both, the patch of the whole is the patch
/// of that container with its pointer put before every path. Inside it
/// [`diff_canonical`] leaves out the children that are the same, and parses
/// only the ones that differ. On a 10 MiB document with one changed field
/// this parses a few bytes instead of 20 MiB; with 10 % of a long list
/// changed, it parses those items only.
fn json_patch_between(previous: &[u8], current: &[u8]) -> Option<(Value, Value)> {
    let (mut pointer, previous_part, current_part) = match changed_container(previous, current) {
        Some(container) => (
            container.pointer,
            &previous[container.previous],
            &current[container.current],
        ),
        None => (String::new(), previous, current),
    };
    let mut operations = Vec::new();
    diff_canonical(
        previous_part,
        current_part,
        &mut pointer,
        &mut operations,
        0,
    )?;
    // `diff_canonical` marks each scalar it replaced with `was`: moved out
    // here, so the patch stays plain RFC 6902.
    let mut replaced = serde_json::Map::new();
    for operation in &mut operations {
        if let Some(fields) = operation.as_object_mut()
            && let Some(was) = fields.remove("was")
            && let Some(Value::String(path)) = fields.get("path")
        {
            replaced.insert(path.clone(), was);
        }
    }
    Some((Value::Array(operations), Value::Object(replaced)))
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
///
/// One pass over the previous document and the differing middle of the
/// current one: the common start tells which containers are open where the
/// documents start to differ, the middle of each which of those stay open
/// through it, and the common end where the innermost of them closes.
fn changed_container(previous: &[u8], current: &[u8]) -> Option<Container> {
    let same_start = common_prefix(previous, current);
    // The common end may not overlap the common start.
    let same_end = common_suffix(&previous[same_start..], &current[same_start..]);
    let mut at_start = Scan::default();
    at_start.run(previous, 0..same_start, |_, _| false);
    let (mut in_previous, mut in_current) = (at_start.clone(), at_start.clone());
    let depth = in_previous
        .fewest_open(previous, same_start..previous.len() - same_end)
        .min(in_current.fewest_open(current, same_start..current.len() - same_end));
    // From the same state over the same bytes, both close it at the same
    // distance from their end.
    if depth == 0 || !in_previous.same_state(&in_current) {
        return None;
    }
    let close = in_previous.close(previous, previous.len() - same_end, depth)?;
    let mut pointer = String::new();
    for parent in &at_start.stack[..depth - 1] {
        match parent.key {
            None => {
                pointer.push('/');
                pointer.push_str(&parent.index.to_string());
            }
            Some((start, end)) => push_token(&mut pointer, &key_text(&previous[start..end])?),
        }
    }
    let open = at_start.stack[depth - 1].open;
    Some(Container {
        pointer,
        previous: open..=close,
        current: open..=current.len() - (previous.len() - close),
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

/// A byte-by-byte scan of canonical JSON that knows which containers are open.
#[derive(Debug, Clone, Default)]
struct Scan {
    stack: Vec<Frame>,
    in_string: bool,
    escaped: bool,
    string_start: usize,
}

impl Scan {
    /// Takes one byte; true when it closed a container.
    fn step(&mut self, at: usize, byte: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
                if let Some(frame) = self.stack.last_mut()
                    && frame.expect_key
                {
                    frame.key = Some((self.string_start, at + 1));
                    frame.expect_key = false;
                }
            }
            return false;
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
            b'}' | b']' => return self.stack.pop().is_some(),
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
        false
    }

    /// Scans `bytes[range]` until `stop` says so of a close (given where it
    /// is and how many containers are left open); returns that close.
    fn run(
        &mut self,
        bytes: &[u8],
        range: std::ops::Range<usize>,
        mut stop: impl FnMut(usize, usize) -> bool,
    ) -> Option<usize> {
        let mut at = range.start;
        while at < range.end {
            // Straight to the next byte that can matter: in a string a quote
            // or a backslash, outside one a quote, bracket or comma.
            if !self.escaped {
                let rest = &bytes[at..range.end];
                let next = if self.in_string {
                    rest.iter().position(|&byte| byte == b'"' || byte == b'\\')
                } else {
                    rest.iter()
                        .position(|&byte| matches!(byte, b'"' | b'{' | b'}' | b'[' | b']' | b','))
                };
                match next {
                    Some(length) => at += length,
                    None => break,
                }
            }
            if self.step(at, bytes[at]) && stop(at, self.stack.len()) {
                return Some(at);
            }
            at += 1;
        }
        None
    }

    /// Scans `bytes[range]`; returns the fewest containers open on the way.
    fn fewest_open(&mut self, bytes: &[u8], range: std::ops::Range<usize>) -> usize {
        let mut fewest = self.stack.len();
        self.run(bytes, range, |_, open| {
            fewest = fewest.min(open);
            false
        });
        fewest
    }

    /// Scans on from `from` to the close that leaves fewer than `depth`
    /// containers open, and returns where it is.
    fn close(&mut self, bytes: &[u8], from: usize, depth: usize) -> Option<usize> {
        self.run(bytes, from..bytes.len(), |_, open| open < depth)
    }

    /// Whether the same bytes would scan the same from here in both.
    fn same_state(&self, other: &Scan) -> bool {
        self.stack.len() == other.stack.len()
            && self.in_string == other.in_string
            && self.escaped == other.escaped
    }
}

/// Appends to `operations` exactly what `json_patch::diff` would give for
/// the two canonical values, with `pointer` before every path, without
/// parsing what is byte for byte the same.
///
/// Canonical JSON is deterministic, so equal bytes are equal values. The
/// walk mirrors json_patch 5's: objects member by member in key order (adds
/// and replaces first, then removes), arrays index by index (removes of a
/// shorter array all at the first missing index), anything else compared as
/// parsed values. Those are equal only when their bytes are: numbers keep
/// their exact canonical text in a `Value` (serde_json's
/// `arbitrary_precision`) and compare by it, so `1000000000000000000001`
/// and `1000000000000000000002` differ, and so do `0.0` and `-0.0`, as
/// they do in the document's hash.
///
/// `depth` counts the containers gone into: past serde_json's nesting
/// limit, which no parsed document reaches, the bytes are not JSON (a
/// damaged store) and the recursion stops.
fn diff_canonical(
    previous: &[u8],
    current: &[u8],
    pointer: &mut String,
    operations: &mut Vec<Value>,
    depth: usize,
) -> Option<()> {
    if previous == current {
        return Some(());
    }
    if depth > 128 {
        return None;
    }
    let parse = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).ok();
    match (previous.first(), current.first()) {
        (Some(b'{'), Some(b'{')) => {
            let (_, before, after) = differing_children(previous, current)?;
            let (before, after) = (members(previous, before)?, members(current, after)?);
            let find = |members: &[(Cow<'_, str>, &[u8])], key: &str| {
                members
                    .binary_search_by(|(other, _)| other.as_ref().cmp(key))
                    .ok()
            };
            for (key, value) in &after {
                let parent = pointer.len();
                push_token(pointer, key);
                match find(&before, key) {
                    Some(found) => {
                        diff_canonical(before[found].1, value, pointer, operations, depth + 1)?
                    }
                    None => operations.push(json!({
                        "op": "add", "path": pointer.as_str(), "value": parse(value)?
                    })),
                }
                pointer.truncate(parent);
            }
            for (key, _) in &before {
                if find(&after, key).is_none() {
                    let parent = pointer.len();
                    push_token(pointer, key);
                    operations.push(json!({ "op": "remove", "path": pointer.as_str() }));
                    pointer.truncate(parent);
                }
            }
        }
        (Some(b'['), Some(b'[')) => {
            let (skipped, before, after) = differing_children(previous, current)?;
            // Each removal shifts the rest down: all land on one index.
            let mut shift = 0;
            for index in 0..before.len().max(after.len()) {
                let parent = pointer.len();
                pointer.push('/');
                pointer.push_str(&(skipped + index - shift).to_string());
                match (before.get(index), after.get(index)) {
                    (Some(old), Some(new)) => diff_canonical(
                        &previous[old.value.clone()],
                        &current[new.value.clone()],
                        pointer,
                        operations,
                        depth + 1,
                    )?,
                    (Some(_), None) => {
                        shift += 1;
                        operations.push(json!({ "op": "remove", "path": pointer.as_str() }));
                    }
                    (None, Some(new)) => operations.push(json!({
                        "op": "add", "path": pointer.as_str(), "value": parse(&current[new.value.clone()])?
                    })),
                    (None, None) => {}
                }
                pointer.truncate(parent);
            }
        }
        _ => {
            let (before, after) = (parse(previous)?, parse(current)?);
            if before != after {
                let mut operation =
                    json!({ "op": "replace", "path": pointer.as_str(), "value": after });
                if !before.is_object() && !before.is_array() {
                    operation["was"] = before;
                }
                operations.push(operation);
            }
        }
    }
    Some(())
}

/// An object's members as (key, value bytes), sorted by key as
/// `serde_json`'s maps iterate (canonical objects already are).
fn members(object: &[u8], children: Vec<Child>) -> Option<Vec<(Cow<'_, str>, &[u8])>> {
    let mut members = children
        .into_iter()
        .map(|child| Some((key_text(&object[child.key?])?, &object[child.value])))
        .collect::<Option<Vec<_>>>()?;
    members.sort_by(|a, b| a.0.cmp(&b.0));
    Some(members)
}

/// A key's text from its quoted bytes: borrowed unless it has escapes.
fn key_text(quoted: &[u8]) -> Option<Cow<'_, str>> {
    let inner = quoted.get(1..quoted.len().checked_sub(1)?)?;
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(quoted)
            .ok()
            .map(Cow::Owned)
    } else {
        std::str::from_utf8(inner).ok().map(Cow::Borrowed)
    }
}

/// Appends one RFC 6901 reference token to `pointer`.
fn push_token(pointer: &mut String, key: &str) {
    pointer.push('/');
    pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
}

/// Blocks compared at once when looking for the common start and end:
/// large enough that comparing costs a `memcmp` call per 4 KiB.
const BLOCK: usize = 4096;

/// How many bytes `a` and `b` share at their start, compared in blocks.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let blocks = a
        .chunks_exact(BLOCK)
        .zip(b.chunks_exact(BLOCK))
        .take_while(|(x, y)| x == y)
        .count();
    let whole = blocks * BLOCK;
    whole
        + a[whole..]
            .iter()
            .zip(&b[whole..])
            .take_while(|(x, y)| x == y)
            .count()
}

/// How many bytes `a` and `b` share at their end, compared in blocks.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let blocks = a
        .rchunks_exact(BLOCK)
        .zip(b.rchunks_exact(BLOCK))
        .take_while(|(x, y)| x == y)
        .count();
    let whole = blocks * BLOCK;
    whole
        + a[..a.len() - whole]
            .iter()
            .rev()
            .zip(b[..b.len() - whole].iter().rev())
            .take_while(|(x, y)| x == y)
            .count()
}

/// One member of an object (with its quoted key) or element of an array,
/// as byte ranges of the container's bytes.
#[derive(Debug, Clone, PartialEq)]
struct Child {
    key: Option<std::ops::Range<usize>>,
    value: std::ops::Range<usize>,
}

/// The children of two canonical containers of one kind, `{...}` or
/// `[...]`, leaving out those at the start and at the end that are byte for
/// byte the same in both: how many were left out at the start, and the
/// rest of each. The common start is scanned once, the common end not at
/// all, so a change in a long list costs a scan of the list up to it.
fn differing_children(previous: &[u8], current: &[u8]) -> Option<(usize, Vec<Child>, Vec<Child>)> {
    let is_object = *previous.first()? == b'{';
    let same_start = common_prefix(previous, current);
    let same_end = common_suffix(&previous[same_start..], &current[same_start..]);
    // A child whose delimiter is still in the common start is in both.
    let (mut first, mut skipped) = (1, 0);
    while !matches!(previous.get(first)?, b'}' | b']') {
        let child = child_at(previous, first, is_object)?;
        if child.value.end >= same_start || previous[child.value.end] != b',' {
            break;
        }
        first = child.value.end + 1;
        skipped += 1;
    }
    // The children from `first` on; with `to_the_end` false, only up to
    // one after which the container has no more bytes than its common end.
    // Also returns how many bytes follow the last one.
    let rest = |bytes: &[u8], to_the_end: bool| -> Option<(Vec<Child>, usize)> {
        let mut children = Vec::new();
        let mut at = first;
        if matches!(bytes.get(at)?, b'}' | b']') {
            return Some((children, bytes.len() - at));
        }
        loop {
            let child = child_at(bytes, at, is_object)?;
            let end = child.value.end;
            children.push(child);
            let tail = bytes.len() - end;
            match bytes.get(end)? {
                _ if !to_the_end && tail <= same_end => return Some((children, tail)),
                b',' => at = end + 1,
                b'}' | b']' => return Some((children, tail)),
                _ => return None,
            }
        }
    };
    let ((before, before_tail), (after, after_tail)) =
        (rest(previous, false)?, rest(current, false)?);
    // Equally long ends within the common end are the same bytes, so the
    // same children; in an array they must also keep their indexes, unless
    // there are none (just the closing bracket).
    if before_tail == after_tail && (is_object || before.len() == after.len() || before_tail == 1) {
        return Some((skipped, before, after));
    }
    Some((skipped, rest(previous, true)?.0, rest(current, true)?.0))
}

/// The child that starts at `at`: a `"key":value` member or an element.
fn child_at(bytes: &[u8], at: usize, is_object: bool) -> Option<Child> {
    let (key, value_start) = if is_object {
        let key_end = string_end(bytes, at)?;
        if bytes.get(key_end) != Some(&b':') {
            return None;
        }
        (Some(at..key_end), key_end + 1)
    } else {
        (None, at)
    };
    let value_end = value_end(bytes, value_start)?;
    Some(Child {
        key,
        value: value_start..value_end,
    })
}

/// Just past the canonical value that starts at `at`. Only structure is
/// tracked; string contents are skipped with `memchr`, which is what makes
/// scanning megabytes cheap.
fn value_end(bytes: &[u8], at: usize) -> Option<usize> {
    match *bytes.get(at)? {
        b'"' => string_end(bytes, at),
        b'{' | b'[' => {
            let mut depth = 0_usize;
            let mut position = at;
            loop {
                match *bytes.get(position)? {
                    b'"' => {
                        position = string_end(bytes, position)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(position + 1);
                        }
                    }
                    _ => {}
                }
                position += 1;
            }
        }
        // A number, `true`, `false` or `null`: up to the next delimiter.
        _ => Some(
            bytes[at..]
                .iter()
                .position(|byte| matches!(byte, b',' | b']' | b'}'))
                .map_or(bytes.len(), |length| at + length),
        ),
    }
}

/// Just past the closing quote of the string whose opening quote is at `at`.
fn string_end(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    // Most strings (keys, short values) end within a few bytes, where a
    // plain loop beats setting up memchr's vector search.
    const SHORT: usize = 16;
    let mut position = at + 1;
    loop {
        let rest = bytes.get(position..)?;
        position += match rest
            .iter()
            .take(SHORT)
            .position(|&byte| byte == b'"' || byte == b'\\')
        {
            Some(length) => length,
            None => SHORT + memchr::memchr2(b'"', b'\\', rest.get(SHORT..)?)?,
        };
        if bytes[position] == b'"' {
            return Some(position + 1);
        }
        // A backslash: the byte after it never ends the string.
        position += 2;
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

    /// A number from its text, with all its digits.
    fn number(text: &str) -> Value {
        Value::Number(text.parse().unwrap())
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
                Change::Json { patch, .. } => patch,
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
        // Numbers beyond an f64: compared and reported with all their digits.
        check(
            r#"{"wei":1000000000000000000001,"x":0.12345678901234567890}"#,
            r#"{"wei":1000000000000000000002,"x":0.12345678901234567891}"#,
            Some(json!([
                {"op": "replace", "path": "/wei", "value": number("1000000000000000000002")},
                {"op": "replace", "path": "/x", "value": number("0.12345678901234567891")},
            ])),
        );
        check(
            r#"{"wei":1000000000000000000001}"#,
            r#"{"wei":1.000000000000000000001e21}"#,
            None,
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
            // Escaped quotes and backslashes must not end a string early.
            (r#"{"s":"\\","t":[1]}"#, r#"{"s":"\\","t":[2]}"#),
            (r#"{"s":"\\\"","t":[1]}"#, r#"{"s":"\\\"]","t":[1]}"#),
            (r#"["a\"b",{"k":"]}"}]"#, r#"["a\"b",{"k":"]}}"}]"#),
            (r#"{"\\":{"\"":1}}"#, r#"{"\\":{"\"":2}}"#),
            // Unicode in keys and values, escaped and not.
            (r#"{"é":{"☂":"ü"}}"#, r#"{"é":{"☂":"ű"}}"#),
            (r#"{"\u0001":[1]}"#, r#"{"\u0001":[1,2]}"#),
            // Nested arrays, element-wise: changes, adds and removes.
            (r#"[[1,[2,3]],[4]]"#, r#"[[1,[2,5]],[6]]"#),
            (r#"[[1],[2],[3],[4]]"#, r#"[[1],[9]]"#),
            (r#"[[1],[2]]"#, r#"[[0],[2],[3],[4]]"#),
            (r#"[1,{"a":[2]},3]"#, r#"[1,[2],"3"]"#),
            // Empty containers.
            (r#"{}"#, r#"{"a":[]}"#),
            (r#"[]"#, r#"[{}]"#),
            (r#"{"a":[]}"#, r#"{"a":{}}"#),
            (r#"{"a":[{}],"b":{}}"#, r#"{"a":[],"b":{}}"#),
            // Zero and minus zero: different texts, so a replace (as f64s
            // they were equal, and their change had no operation).
            (r#"{"a":[0.0,1]}"#, r#"{"a":[-0.0,2]}"#),
            // Keys that sort differently escaped and unescaped.
            (r#"{"a\"":1,"a#":1}"#, r#"{"a\"":2,"a#":2}"#),
        ];
        for (old, new) in pairs {
            let (old, new) = (json(old), json(new));
            let whole = patch_value(&old.json().unwrap(), &new.json().unwrap());
            assert_eq!(
                json_patch_between(&old.canonical, &new.canonical).map(|(patch, _)| patch),
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
                1 => [
                    json!(next(3)),
                    json!(1.5),
                    number("1000000000000000000001"),
                    number("1000000000000000000002"),
                    number("0.12345678901234567891"),
                    number("1e+400"),
                ][next(6) as usize]
                    .clone(),
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
        for round in 0..4000 {
            let old = random_value(&mut next, 0);
            let mut new = old.clone();
            // One edit mostly; several exercise the element-wise walk.
            for _ in 0..=(round % 4) {
                edit(&mut new, &mut next);
            }
            let (old_document, new_document) = (json(&old.to_string()), json(&new.to_string()));
            assert_eq!(
                json_patch_between(&old_document.canonical, &new_document.canonical)
                    .map(|(patch, _)| patch),
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
            &new.canonical[container.current],
            br#"{"id":500,"price":1}"#
        );
        // Two changes: the list holds both, and only those two items of it differ.
        let (old, new) = (items(usize::MAX), {
            let mut new = new.json().unwrap();
            new["items"][900]["price"] = json!(2);
            json(&new.to_string())
        });
        let container = changed_container(&old.canonical, &new.canonical).unwrap();
        assert_eq!(container.pointer, "/items");
        let (skipped, before, after) = differing_children(
            &old.canonical[container.previous],
            &new.canonical[container.current],
        )
        .unwrap();
        assert_eq!((skipped, before.len(), after.len()), (500, 401, 401));
        assert_eq!(
            diff(Some(&old), &new),
            Some(Change::Json {
                patch: json!([
                    {"op": "replace", "path": "/items/500/price", "value": 1},
                    {"op": "replace", "path": "/items/900/price", "value": 2},
                ]),
                replaced: json!({"/items/500/price": 0, "/items/900/price": 0}),
            })
        );
    }

    #[test]
    fn many_changed_items_patch_as_the_whole_does() {
        let items = |changed_every: usize, count: usize| {
            let items: Vec<Value> = (0..count)
                .map(|id| {
                    let changed = changed_every > 0 && id % changed_every == 3;
                    json!({"id": id, "name": format!("item \"{id}\\"), "price": if changed { 1 } else { 0 }, "tags": ["a", "é"]})
                })
                .collect();
            json(&json!({"items": items, "meta": {"n": count}}).to_string())
        };
        for (old, new) in [
            (items(0, 500), items(10, 500)),
            (items(0, 500), items(7, 480)),
            (items(3, 450), items(0, 500)),
        ] {
            let whole = patch_value(&old.json().unwrap(), &new.json().unwrap());
            assert!(!whole.as_array().unwrap().is_empty());
            assert_eq!(
                json_patch_between(&old.canonical, &new.canonical).map(|(patch, _)| patch),
                Some(whole)
            );
        }
    }

    #[test]
    fn scanning_finds_values_and_the_children_that_differ() {
        let check = |bytes: &str, expected: Option<usize>| {
            assert_eq!(value_end(bytes.as_bytes(), 0), expected, "{bytes}");
        };
        check(r#""a\"b",1"#, Some(6));
        check(r#""\\",1"#, Some(4));
        check(r#"[[],{},"]",["\\"]],0"#, Some(18));
        check(r#"{"a":{"b":"}"}},"#, Some(15));
        // Past the short loop: memchr finds the escape and the quote.
        check(r#""0123456789abcdefghij\"k\\",1"#, Some(27));
        check("12.5e3]", Some(6));
        check("true", Some(4));
        check(r#""unterminated\""#, None);
        check("[1,[2]", None);
        let check = |previous: &str, current: &str, expected: Option<(usize, usize, usize)>| {
            let found = differing_children(previous.as_bytes(), current.as_bytes());
            let counts = found.map(|(skipped, before, after)| (skipped, before.len(), after.len()));
            assert_eq!(counts, expected, "{previous} -> {current}");
        };
        // A change in place: what surrounds it is left out.
        check("[1,[2],3,4]", "[1,[5],3,4]", Some((1, 1, 1)));
        check(
            r#"{"a":1,"b\"":[2,3],"c":{}}"#,
            r#"{"a":1,"b\"":[2,4],"c":{}}"#,
            Some((1, 1, 1)),
        );
        // An element removed: the rest shift, so they are all kept.
        check("[1,2,3,4]", "[1,3,4]", Some((1, 3, 2)));
        // Removed from an object: members are matched by key after.
        check(
            r#"{"a":1,"b":2,"c":3}"#,
            r#"{"a":1,"c":3}"#,
            Some((1, 2, 1)),
        );
        // Added: after an element whose delimiter changed, to an empty
        // container, and a comma moved into a string.
        check("[1,2]", "[1,2,3]", Some((1, 1, 2)));
        check("[]", "[{}]", Some((0, 0, 1)));
        check(r#"["a","b,c"]"#, r#"["a,b","c"]"#, Some((0, 2, 2)));
        // Not JSON.
        check(r#"{"a"1}"#, r#"{"a":1}"#, None);
        check("[1,2", "[1,3", None);
    }

    #[test]
    fn damaged_stored_documents_are_compared_by_hash() {
        // Not JSON (deeper than any parsed document), changed at both ends.
        let nested = |first: u8, last: u8| {
            let depth = 100_000;
            let mut bytes = format!("[{first},").into_bytes();
            bytes.extend(std::iter::repeat_n(b'[', depth));
            bytes.push(last);
            bytes.extend(std::iter::repeat_n(b']', depth + 1));
            Document::from_canonical(Kind::Json, bytes)
        };
        let (previous, current) = (nested(0, b'1'), nested(1, b'2'));
        assert!(matches!(
            diff(Some(&previous), &current),
            Some(Change::Bytes { .. })
        ));
        // Nor does a damaged item list make every item look added.
        let damaged = Document::from_canonical(Kind::Items, br#"[{"key":1,"#.to_vec());
        let items = Document::from_canonical(Kind::Items, br#"[{"key":1,"item":2}]"#.to_vec());
        assert!(matches!(
            diff(Some(&damaged), &items),
            Some(Change::Bytes { .. })
        ));
    }

    #[test]
    fn replaced_scalars_keep_their_previous_values() {
        let change = diff(
            Some(&json(
                r#"{"price":19.99,"name":"a","tags":[1],"meta":{"x":1}}"#,
            )),
            &json(r#"{"price":14.99,"name":"b","tags":[1,2],"meta":{"x":{"y":1}}}"#),
        );
        let Some(Change::Json { replaced, .. }) = change else {
            panic!("expected a patch, got {change:?}");
        };
        // Containers are not kept: only what a message can name.
        assert_eq!(
            replaced,
            json!({"/price": 19.99, "/name": "a", "/meta/x": 1})
        );
    }

    #[test]
    fn initial_event_carries_the_whole_document() {
        let change = diff(None, &json(r#"{"a":1}"#)).unwrap();
        assert_eq!(
            change,
            Change::Json {
                patch: json!([{"op": "replace", "path": "", "value": {"a": 1}}]),
                replaced: json!({}),
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
                // Beyond an f64: integers and decimals with many digits,
                // written as a response might.
                r"-?[1-9][0-9]{18,30}".prop_map(|text| number(&text)),
                r"-?[0-9]\.[0-9]{16,25}([eE][-+]?[0-9]{1,3})?".prop_map(|text| number(&text)),
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
                    prop_assert_eq!(restored.hash, after.hash);
                }
            }

            /// However a body orders its keys, spaces itself or repeats a
            /// key, its canonical form is what its `Value` writes.
            #[test]
            fn canonical_form_is_what_values_write(value in any_json()) {
                /// Keys in reverse, spaced out, each object's last key
                /// first given a throwaway value that the later one overrides.
                fn shuffled(value: &Value) -> String {
                    match value {
                        Value::Array(items) => {
                            let items: Vec<_> = items.iter().map(shuffled).collect();
                            format!("[ {} ]", items.join(" , "))
                        }
                        Value::Object(map) => {
                            let mut members: Vec<_> = map
                                .iter()
                                .rev()
                                .map(|(key, value)| format!("{} : {}", Value::from(key.as_str()), shuffled(value)))
                                .collect();
                            if let Some((key, _)) = map.iter().next_back() {
                                members.insert(0, format!("{}: \"dropped\"", Value::from(key.as_str())));
                            }
                            format!("{{ {} }}", members.join(",\n"))
                        }
                        other => other.to_string(),
                    }
                }
                let body = shuffled(&value);
                let rules = Rules { format: Some(Format::Json), ..Rules::default() };
                let document = extract(body.as_bytes(), None, &rules).unwrap();
                // Parsed again rather than `value` itself: the body has its
                // numbers as `value` wrote them, not yet canonical.
                let mut parsed: Value = serde_json::from_str(&body).unwrap();
                crate::number::canonicalise(&mut parsed);
                prop_assert_eq!(
                    String::from_utf8(document.canonical).unwrap(),
                    parsed.to_string()
                );
            }

            /// Stored bytes that are not JSON (a damaged store) never make
            /// the scan of the diff panic, however much structure they hold.
            #[test]
            fn damaged_stored_documents_diff_without_panicking(
                previous in r#"[\[\]{}",:\\a1]{0,40}"#,
                current in r#"[\[\]{}",:\\a1]{0,40}"#,
            ) {
                let previous = Document::from_canonical(Kind::Json, previous.into_bytes());
                let current = Document::from_canonical(Kind::Json, current.into_bytes());
                let change = diff(Some(&previous), &current);
                prop_assert_eq!(change.is_none(), previous.hash == current.hash);
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
