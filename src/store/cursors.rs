//! Incremental endpoints' cursors (tree `cursors`): advanced in ONE
//! transaction with the outbox rows of the events the same answer made,
//! and the seen keys, so that a crash repeats nothing committed and skips
//! nothing.

use super::*;

/// Where an incremental endpoint is in its feed, in postcard (sled keeps
/// every record in memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorState {
    /// The endpoint's definition it was taken with: under another one the
    /// endpoint starts again, as if never polled.
    pub definition: [u8; 32],
    /// `state.cursor` as JSON text; `None`: the API has given none yet.
    pub cursor: Option<String>,
    /// When the poll that stored it succeeded.
    pub polled_ms: u64,
}

impl CursorState {
    /// The cursor as templates see it.
    pub fn value(&self) -> Option<serde_json::Value> {
        self.cursor
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
    }
}

/// What one answer of an incremental endpoint writes, atomically.
#[derive(Debug)]
pub struct CursorCommit<'a> {
    pub endpoint: &'a str,
    pub state: &'a CursorState,
    /// One row per event and target; empty for a first poll.
    pub deliveries: Vec<(&'a str, OutboxRow)>,
    pub seen: Option<&'a crate::seen::SeenKeys>,
}

impl Store {
    /// An incremental endpoint's cursor; none for one never polled.
    pub fn cursor(&self, endpoint: &str) -> Result<Option<CursorState>, StoreError> {
        self.watched(|trees| {
            trees
                .cursors
                .get(endpoint)?
                .map(|bytes| {
                    postcard::from_bytes(&bytes).map_err(|error| StoreError::Corrupt {
                        what: "cursor",
                        detail: error.to_string(),
                    })
                })
                .transpose()
        })
    }

    /// Writes the cursor, the seen keys and the outbox rows in one
    /// transaction, durable before it returns (the rows stay hidden from
    /// the dispatchers until then, as a change's do).
    pub async fn commit_cursor(
        &self,
        commit: &CursorCommit<'_>,
    ) -> Result<Vec<OutboxKey>, StoreError> {
        let result = self.commit_cursor_unwatched(commit).await;
        if result.is_ok() {
            self.note_commit(commit.endpoint);
        }
        self.watch(result)
    }

    async fn commit_cursor_unwatched(
        &self,
        commit: &CursorCommit<'_>,
    ) -> Result<Vec<OutboxKey>, StoreError> {
        // Byte arrays, strings and numbers: it always serialises.
        let state = postcard::to_allocvec(commit.state).unwrap_or_default();
        let seen = commit.seen.map(crate::seen::SeenKeys::encode);
        self.commit_state(
            |trees| &trees.cursors,
            commit.endpoint,
            &state,
            seen.as_deref(),
            &commit.deliveries,
        )
        .await
    }
}
