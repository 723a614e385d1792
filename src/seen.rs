//! The item keys an endpoint has seen, so that `item.added` is sent once
//! per item ever, not again when an item comes back into a window
//! (`?per_page=10` after the newest was deleted, a short response, an API
//! restart). Pure: the store keeps the encoded set, the poll decides.
//!
//! A key is kept as 8 bytes of its SHA-256 with the time it was last seen
//! (in a document, or leaving one); the set is bounded by `seen`: a count
//! (the most recently seen kept) or an age.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// How much an endpoint remembers, from `seen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeenLimit {
    /// The most recently seen keys, at most this many.
    Keys(usize),
    /// The keys seen within this long, at most [`MOST_KEYS`].
    Within(Duration),
}

/// The default `seen`.
pub const DEFAULT: SeenLimit = SeenLimit::Keys(10_000);
/// The most keys any set keeps (16 bytes each: 16 MB).
pub const MOST_KEYS: usize = 1_000_000;

const ENTRY: usize = 16;

/// A set of seen keys: `(hash, last seen ms)`, sorted by hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenKeys {
    entries: Vec<(u64, u64)>,
}

/// The identity of an item key in a [`SeenKeys`].
pub fn key_hash(key: &Value) -> u64 {
    let digest = Sha256::digest(key.to_string().as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl SeenKeys {
    /// From [`SeenKeys::encode`]'s bytes; a torn tail is dropped.
    pub fn decode(bytes: &[u8]) -> SeenKeys {
        let mut entries: Vec<(u64, u64)> = bytes
            .chunks_exact(ENTRY)
            .map(|entry| {
                let (hash, at) = entry.split_at(8);
                (
                    u64::from_be_bytes(hash.try_into().expect("8 bytes")),
                    u64::from_be_bytes(at.try_into().expect("8 bytes")),
                )
            })
            .collect();
        entries.sort_unstable();
        entries.dedup_by_key(|(hash, _)| *hash);
        SeenKeys { entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.entries.len() * ENTRY);
        for (hash, at) in &self.entries {
            bytes.extend_from_slice(&hash.to_be_bytes());
            bytes.extend_from_slice(&at.to_be_bytes());
        }
        bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, hash: u64) -> bool {
        self.find(hash).is_ok()
    }

    fn find(&self, hash: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&hash, |(hash, _)| *hash)
    }

    /// Marks `hashes` as seen at `now_ms`.
    pub fn record(&mut self, hashes: impl IntoIterator<Item = u64>, now_ms: u64) {
        for hash in hashes {
            match self.find(hash) {
                Ok(at) => self.entries[at].1 = self.entries[at].1.max(now_ms),
                Err(at) => self.entries.insert(at, (hash, now_ms)),
            }
        }
    }

    /// Forgets what `limit` does not keep.
    pub fn trim(&mut self, limit: SeenLimit, now_ms: u64) {
        let keep = match limit {
            SeenLimit::Keys(keys) => keys.min(MOST_KEYS),
            SeenLimit::Within(age) => {
                let oldest = now_ms.saturating_sub(age.as_millis() as u64);
                self.entries.retain(|(_, at)| *at >= oldest);
                MOST_KEYS
            }
        };
        if self.entries.len() > keep {
            // The `keep` most recently seen stay.
            self.entries
                .sort_unstable_by_key(|&(hash, at)| (std::cmp::Reverse(at), hash));
            self.entries.truncate(keep);
            self.entries.sort_unstable();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_round_trip_and_are_found() {
        let mut seen = SeenKeys::default();
        let keys = [json!("1.91.0"), json!(42), json!({"id": 1})];
        seen.record(keys.iter().map(key_hash), 1_000);
        let again = SeenKeys::decode(&seen.encode());
        assert_eq!(again, seen);
        assert!(keys.iter().all(|key| again.contains(key_hash(key))));
        assert!(!again.contains(key_hash(&json!("1.90.0"))));
        // A number key and a string key with the same digits differ.
        assert!(!again.contains(key_hash(&json!("42"))));
        // A torn write loses only its tail.
        let bytes = seen.encode();
        assert_eq!(SeenKeys::decode(&bytes[..bytes.len() - 3]).len(), 2);
    }

    #[test]
    fn a_count_keeps_the_most_recently_seen() {
        let mut seen = SeenKeys::default();
        for n in 0..100u64 {
            seen.record([n], n);
        }
        // Seen again late: kept although its hash is small.
        seen.record([0], 1_000);
        seen.trim(SeenLimit::Keys(10), 1_000);
        assert_eq!(seen.len(), 10);
        assert!(seen.contains(0));
        assert!((91..100).all(|n| seen.contains(n)));
        assert!(!seen.contains(90));
        seen.trim(SeenLimit::Keys(0), 1_000);
        assert!(seen.is_empty());
    }

    #[test]
    fn ties_at_the_cut_leave_exactly_the_count() {
        let mut seen = SeenKeys::default();
        seen.record(0..50, 7);
        seen.trim(SeenLimit::Keys(20), 7);
        assert_eq!(seen.len(), 20);
    }

    #[test]
    fn an_age_forgets_what_was_not_seen_within_it() {
        let day = 86_400_000;
        let mut seen = SeenKeys::default();
        seen.record([1], 0);
        seen.record([2], 80 * day);
        seen.trim(
            SeenLimit::Within(Duration::from_secs(90 * 86_400)),
            100 * day,
        );
        assert!(!seen.contains(1) && seen.contains(2));
    }
}
