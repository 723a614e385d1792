//! What a cluster mirrors of an endpoint to the other instances: its
//! snapshot (version, hash, definition, validators), its seen item keys
//! and its cursor, never its documents. [`Store::committed`] tells which
//! endpoints were written since it was last asked; [`Store::mirrored`]
//! reads a record and [`Store::adopt`] writes one that is newer than what
//! this store has, so that an instance that takes a shard over goes on
//! where its owner was. Its previous document is missing, so the next
//! change is reported by hash, and an unchanged one is no event.

use std::collections::BTreeSet;

use super::*;

/// The mirrored records of one endpoint, in postcard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirrored {
    pub snapshot: Option<Snapshot>,
    /// [`crate::seen::SeenKeys`] as the store encodes them.
    pub seen: Option<Vec<u8>>,
    pub cursor: Option<CursorState>,
}

impl Mirrored {
    pub fn encode(&self) -> Vec<u8> {
        // Byte arrays, strings and numbers: it always serialises.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Mirrored, StoreError> {
        postcard::from_bytes(bytes).map_err(|error| StoreError::Corrupt {
            what: "mirrored",
            detail: error.to_string(),
        })
    }
}

/// The endpoints written since the watcher last took them.
#[derive(Debug, Default)]
pub struct Committed {
    names: std::sync::Mutex<BTreeSet<String>>,
    pub notify: tokio::sync::Notify,
}

impl Committed {
    pub fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *lock(&self.names))
    }

    pub(super) fn add(&self, endpoint: &str) {
        lock(&self.names).insert(endpoint.to_string());
        self.notify.notify_one();
    }
}

impl Store {
    /// From now on, every endpoint written is noted in what this returns.
    pub fn committed(&self) -> Arc<Committed> {
        self.committed.get_or_init(Default::default).clone()
    }

    /// Notes that `endpoint` was written, when someone watches.
    pub(super) fn note_commit(&self, endpoint: &str) {
        if let Some(committed) = self.committed.get() {
            committed.add(endpoint);
        }
    }

    /// What is mirrored of `endpoint`; `None` for one never written.
    pub fn mirrored(&self, endpoint: &str) -> Result<Option<Mirrored>, StoreError> {
        let snapshot = self.snapshot(endpoint)?;
        let cursor = self.cursor(endpoint)?;
        if snapshot.is_none() && cursor.is_none() {
            return Ok(None);
        }
        let seen =
            self.watched(|trees| Ok(trees.seen.get(endpoint)?.map(|bytes| bytes.to_vec())))?;
        Ok(Some(Mirrored {
            snapshot,
            seen,
            cursor,
        }))
    }

    /// Writes `record` for `endpoint` where it is newer than what is here
    /// (a later snapshot version, a later cursor). Returns whether it did.
    pub fn adopt(&self, endpoint: &str, record: &Mirrored) -> Result<bool, StoreError> {
        let local = self.snapshot(endpoint)?;
        let newer_snapshot = match (&record.snapshot, &local) {
            (Some(remote), Some(local)) => remote.version > local.version,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let newer_cursor = match (&record.cursor, self.cursor(endpoint)?) {
            (Some(remote), Some(local)) => remote.polled_ms > local.polled_ms,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !newer_snapshot && !newer_cursor {
            return Ok(false);
        }
        if let (true, Some(snapshot)) = (newer_snapshot, &record.snapshot) {
            // A file of that version here is from an earlier time this
            // instance held the endpoint: another document.
            let _ = std::fs::remove_file(self.document_path(endpoint, snapshot.version));
        }
        let result = self.watched(|trees| {
            if let (true, Some(snapshot)) = (newer_snapshot, &record.snapshot) {
                if let Some(seen) = &record.seen {
                    trees.seen.insert(endpoint, seen.as_slice())?;
                }
                trees
                    .snapshots
                    .insert(endpoint, encode_snapshot(snapshot))?;
            }
            if let (true, Some(cursor)) = (newer_cursor, &record.cursor) {
                if let Some(seen) = &record.seen {
                    trees.seen.insert(endpoint, seen.as_slice())?;
                }
                let state = postcard::to_allocvec(cursor).unwrap_or_default();
                trees.cursors.insert(endpoint, state)?;
            }
            Ok(())
        });
        result.map(|()| true)
    }
}
