//! The event types, and the sets of them a target's `events` takes: a
//! leaf, so that the config can name them.

pub const ENDPOINT_CHANGED: &str = "endpoint.changed";
pub const ITEM_ADDED: &str = "item.added";
pub const ITEM_REMOVED: &str = "item.removed";
pub const ITEM_CHANGED: &str = "item.changed";
pub const ITEMS_CHANGED: &str = "items.changed";
pub const ENDPOINT_FAILING: &str = "endpoint.failing";
pub const ENDPOINT_RECOVERED: &str = "endpoint.recovered";
pub const TARGET_FAILING: &str = "target.failing";
pub const TARGET_RECOVERED: &str = "target.recovered";
pub const EVENT_DEAD: &str = "event.dead";
/// What `pollhook test TARGET` sends; every target takes it.
pub const POLLHOOK_TEST: &str = "pollhook.test";

/// Every event type, in the order of [`EventTypes`]' bits: first those a
/// poll makes, then those the dispatchers make about the targets.
pub const TYPES: [&str; 10] = [
    ENDPOINT_CHANGED,
    ITEM_ADDED,
    ITEM_REMOVED,
    ITEM_CHANGED,
    ITEMS_CHANGED,
    ENDPOINT_FAILING,
    ENDPOINT_RECOVERED,
    TARGET_FAILING,
    TARGET_RECOVERED,
    EVENT_DEAD,
];

/// How many of [`TYPES`] a poll makes.
const POLL_TYPES: usize = 7;

/// A set of event types: what a target's `events` lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTypes(u16);

impl EventTypes {
    pub const ALL: EventTypes = EventTypes((1 << TYPES.len()) - 1);
    /// What a target without `events` takes: what the polls make. The
    /// targets' own health goes only where `events` asks for it, since a
    /// receiver that expects changes may not know what to do with it.
    pub const POLLS: EventTypes = EventTypes((1 << POLL_TYPES) - 1);
    pub const NONE: EventTypes = EventTypes(0);

    /// The types a pattern names: a type (`item.added`), or one with `*`
    /// standing for any run of characters (`item.*`, `*.changed`, `*`).
    pub fn matching(pattern: &str) -> EventTypes {
        let bits = TYPES
            .iter()
            .enumerate()
            .filter(|(_, kind)| glob_matches(pattern, kind))
            .fold(0, |bits, (index, _)| bits | 1 << index);
        EventTypes(bits)
    }

    pub fn union(self, other: EventTypes) -> EventTypes {
        EventTypes(self.0 | other.0)
    }

    /// Whether the two sets share a type.
    pub fn overlaps(self, other: EventTypes) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether events of type `kind` pass; a test event always does.
    pub fn contains(self, kind: &str) -> bool {
        kind == POLLHOOK_TEST
            || TYPES
                .iter()
                .position(|known| *known == kind)
                .is_some_and(|index| self.0 & 1 << index != 0)
    }
}

/// `*` matches any run of characters, anything else itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(text) = text.strip_prefix(head) else {
                return false;
            };
            (0..=text.len())
                .filter(|at| text.is_char_boundary(*at))
                .any(|at| glob_matches(rest, &text[at..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_name_the_types_they_match() {
        let items = EventTypes::matching("item.*");
        assert!(items.contains(ITEM_ADDED) && items.contains(ITEM_CHANGED));
        assert!(!items.contains(ITEMS_CHANGED) && !items.contains(ENDPOINT_CHANGED));
        let changed = EventTypes::matching("*.changed");
        assert!(changed.contains(ITEMS_CHANGED) && changed.contains(ENDPOINT_CHANGED));
        assert!(!changed.contains(ITEM_ADDED));
        assert_eq!(EventTypes::matching("*"), EventTypes::ALL);
        let targets = EventTypes::matching("target.*").union(EventTypes::matching("event.dead"));
        assert!(targets.contains(TARGET_FAILING) && targets.contains(EVENT_DEAD));
        assert!(
            !EventTypes::POLLS.contains(TARGET_RECOVERED)
                && !EventTypes::POLLS.contains(EVENT_DEAD)
        );
        assert!(EventTypes::POLLS.contains(ENDPOINT_RECOVERED));
        assert_eq!(
            EventTypes::matching("endpoint.failing"),
            EventTypes::matching("endpoint.fail*")
        );
        assert!(EventTypes::matching("item.add").is_empty());
        // A test event passes whatever the filter.
        assert!(EventTypes::NONE.contains(POLLHOOK_TEST));
        assert!(!EventTypes::ALL.contains("no.such"));
    }
}
