//! Writing a change: its document file, then in ONE transaction its
//! snapshot and outbox rows, flushed by group commit before the rows are
//! shown to a dispatcher.

use super::*;

impl Store {
    /// Writes a new document file, then its snapshot and outbox rows in one
    /// transaction, makes them durable, then trims the history beyond
    /// `keep_history`. Until the flush is done the new rows are hidden from
    /// [`Store::outbox_rows`]: nothing reaches a receiver that a crash could
    /// make the store forget (it would come back as a new event, new id).
    pub async fn commit(&self, commit: &Commit<'_>) -> Result<Vec<OutboxKey>, StoreError> {
        let result = self.commit_unwatched(commit).await;
        if result.is_ok() {
            self.note_commit(commit.endpoint);
        }
        self.watch(result)
    }

    pub(super) async fn commit_unwatched(
        &self,
        commit: &Commit<'_>,
    ) -> Result<Vec<OutboxKey>, StoreError> {
        let snapshot = encode_snapshot(commit.snapshot);
        let version = commit.snapshot.version;
        // The version notified before, if this commit moves on from it.
        let released = self
            .snapshot(commit.endpoint)?
            .map(|previous| previous.notified)
            .filter(|notified| *notified != commit.snapshot.notified);
        let seen = commit.seen.map(crate::seen::SeenKeys::encode);
        // Before the snapshot refers to it. A crash before the snapshot is
        // written leaves a file that the version's next commit overwrites.
        let document = self.unwritten_document(
            commit.endpoint,
            version,
            commit.document,
            commit.snapshot.changed_at_ms,
        );
        if commit.deliveries.is_empty() {
            // A baseline, or a change no event was made of: without rows
            // there is nothing to make atomic, and a plain write shares
            // sled's log buffers where each transaction seals one of its own
            // (the first pass over 10,000 endpoints took 2.5 times as long).
            document.write()?;
            let trees = self.trees()?;
            // Before the snapshot: a key seen early only keeps back an
            // `item.added` that had no rows to send anyway.
            if let Some(seen) = seen {
                trees.seen.insert(commit.endpoint, seen)?;
            }
            trees.snapshots.insert(commit.endpoint, snapshot)?;
            self.trim_history(
                commit.endpoint,
                commit.snapshot,
                released,
                commit.keep_history,
            );
            return Ok(Vec::new());
        }
        // The events' diff needs the file even after a power cut.
        self.write_durably(document).await?;
        let keys = self
            .commit_state(
                |trees| &trees.snapshots,
                commit.endpoint,
                &snapshot,
                seen.as_deref(),
                &commit.deliveries,
            )
            .await?;
        self.trim_history(
            commit.endpoint,
            commit.snapshot,
            released,
            commit.keep_history,
        );
        Ok(keys)
    }

    /// Records that `endpoint` is failing (`Some`) or healthy again (`None`)
    /// with the rows of the health event that says so, in one transaction,
    /// durable before it returns: the event is sent exactly when the state
    /// it announces is stored.
    pub async fn commit_health(
        &self,
        endpoint: &str,
        failing: Option<&Failing>,
        deliveries: &[(&str, OutboxRow)],
    ) -> Result<Vec<OutboxKey>, StoreError> {
        self.queue_with(Some((Health::Endpoint, endpoint, failing)), deliveries)
            .await
    }

    /// [`Store::commit_health`] for a target: `target.failing` or
    /// `target.recovered` with the state it announces.
    pub async fn commit_target_health(
        &self,
        target: &str,
        failing: Option<&Failing>,
        deliveries: &[(&str, OutboxRow)],
    ) -> Result<Vec<OutboxKey>, StoreError> {
        self.queue_with(Some((Health::Target, target, failing)), deliveries)
            .await
    }

    /// Queues rows that go with no state of their own (`event.dead`),
    /// durable before it returns.
    pub async fn queue(
        &self,
        deliveries: &[(&str, OutboxRow)],
    ) -> Result<Vec<OutboxKey>, StoreError> {
        self.queue_with(None, deliveries).await
    }

    /// Queues `deliveries` in one transaction with a health state (the
    /// failing run of the named endpoint or target, or `None`: healthy).
    async fn queue_with(
        &self,
        state: Option<(Health, &str, Option<&Failing>)>,
        deliveries: &[(&str, OutboxRow)],
    ) -> Result<Vec<OutboxKey>, StoreError> {
        let encoded = state.map(|(of, name, failing)| (of, name, failing.map(encode_json)));
        let rows = encode_rows(deliveries);
        let generated = Unhide {
            store: self,
            keys: std::sync::Mutex::new(Vec::new()),
        };
        let trees = match self.trees() {
            Ok(trees) => trees,
            Err(error) => return self.watch(Err(error)),
        };
        let tree = match encoded {
            Some((Health::Target, ..)) => &trees.target_health,
            _ => &trees.health,
        };
        let result = (tree, &trees.outbox, &trees.due)
            .transaction(|(health, outbox, due)| {
                match &encoded {
                    Some((_, name, Some(state))) => {
                        health.insert(name.as_bytes(), state.as_slice())?;
                    }
                    Some((_, name, None)) => {
                        health.remove(name.as_bytes())?;
                    }
                    None => {}
                }
                self.insert_rows(outbox, due, &rows, &generated)
            })
            .map_err(transaction_error);
        let generation = trees.generation;
        drop(trees);
        let result = self.flushed(result, generated, generation).await;
        self.watch(result)
    }

    /// The failure run an `endpoint.failing` was sent for, if it has not
    /// recovered since.
    pub fn failing(&self, endpoint: &str) -> Result<Option<Failing>, StoreError> {
        self.watched(|trees| {
            trees
                .health
                .get(endpoint)?
                .map(|bytes| decode_json(&bytes, "health"))
                .transpose()
        })
    }

    /// The failure run a `target.failing` was sent for, if the target has
    /// not recovered since.
    pub fn target_failing(&self, target: &str) -> Result<Option<Failing>, StoreError> {
        self.watched(|trees| {
            trees
                .target_health
                .get(target)?
                .map(|bytes| decode_json(&bytes, "target health"))
                .transpose()
        })
    }

    /// Writes `value` as `endpoint`'s entry of the tree `state` picks (its
    /// snapshot or its cursor), its seen keys and the outbox rows of its
    /// events in one transaction, durable before it returns.
    pub(super) async fn commit_state(
        &self,
        state: impl Fn(&Trees) -> &sled::Tree,
        endpoint: &str,
        value: &[u8],
        seen: Option<&[u8]>,
        deliveries: &[(&str, OutboxRow)],
    ) -> Result<Vec<OutboxKey>, StoreError> {
        let rows = encode_rows(deliveries);
        // Every key a (possibly retried) transaction generated: unhidden when
        // this function ends, even if its caller drops it mid-flush.
        let generated = Unhide::new(self);
        let trees = self.trees()?;
        let result = (state(&trees), &trees.outbox, &trees.due, &trees.seen)
            .transaction(|(states, outbox, due, seen_keys)| {
                states.insert(endpoint.as_bytes(), value)?;
                if let Some(seen) = seen {
                    seen_keys.insert(endpoint.as_bytes(), seen)?;
                }
                self.insert_rows(outbox, due, &rows, &generated)
            })
            .map_err(transaction_error);
        let generation = trees.generation;
        // Not held over the flush: a reopening waits for every handle.
        drop(trees);
        self.flushed(result, generated, generation).await
    }

    /// Inserts outbox rows and their `due` entries inside a transaction,
    /// hidden until flushed.
    pub(super) fn insert_rows(
        &self,
        outbox: &sled::transaction::TransactionalTree,
        due: &sled::transaction::TransactionalTree,
        rows: &[EncodedRow<'_>],
        generated: &Unhide<'_>,
    ) -> Result<Vec<OutboxKey>, ConflictableTransactionError<StoreError>> {
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let key = OutboxKey::new(row.target, outbox.generate_id()?);
            // Hidden before the transaction can make it visible.
            self.hide(&key);
            lock(&generated.keys).push(key.clone());
            outbox.insert(key.0.as_slice(), row.bytes.as_slice())?;
            due.insert(due_key(&key, row.due_ms), &[])?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// Flushes a transaction that queued rows in the database's opening
    /// `generation`, then shows them. Rows whose flush failed stay hidden
    /// until a later flush covers them (or the database is opened again,
    /// and they are in it only if they were written to disk).
    pub(super) async fn flushed(
        &self,
        result: Result<Vec<OutboxKey>, StoreError>,
        generated: Unhide<'_>,
        generation: u64,
    ) -> Result<Vec<OutboxKey>, StoreError> {
        let flushed = match &result {
            Ok(keys) if !keys.is_empty() => {
                self.count_queued(keys.len(), 0);
                self.flush_generation(generation).await
            }
            _ => Ok(()),
        };
        match &flushed {
            // Written to a database since dropped: those keys are nowhere now.
            Err(StoreError::Reopened) | Ok(()) => drop(generated),
            Err(_) => generated.keep_hidden(),
        }
        let keys = result?;
        flushed?;
        Ok(keys)
    }

    pub(super) fn hide(&self, key: &OutboxKey) {
        lock(&self.unflushed).insert(key.clone());
    }

    /// Makes every write so far durable. Called after a commit and before its
    /// rows are handed to the dispatcher, so that nothing is sent that a
    /// crash could make the store forget.
    ///
    /// One flush runs at a time, and callers whose writes a flush started
    /// after them already covered return at once (group commit). Besides
    /// saving fsyncs, this keeps sled from deadlocking: each `flush_async`
    /// occupies a thread of sled's pool, and with the pool full of flushes
    /// queued behind a transaction, none was left to write the log buffer
    /// the first flush waited for (seen with 1,000 changes committed at once).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let result = match self.trees() {
            Ok(trees) => {
                let generation = trees.generation;
                drop(trees);
                self.flush_generation(generation).await
            }
            Err(error) => Err(error),
        };
        self.watch(result)
    }

    /// [`Store::flush`] for writes made to the database's opening
    /// `generation`: if it was opened again since, they are not covered by
    /// flushing the new one, and may be lost.
    pub(super) async fn flush_generation(&self, generation: u64) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        // Taken after this caller's writes: a flush that starts later covers them.
        let ticket = self.flush_requests.fetch_add(1, SeqCst) + 1;
        let _flushing = self.flushing.lock().await;
        let trees = self.trees()?;
        if trees.generation != generation {
            return Err(StoreError::Reopened);
        }
        if self.flushed_requests.load(SeqCst) >= ticket {
            return Ok(());
        }
        let covered = self.flush_requests.load(SeqCst);
        trees.db.flush_async().await?;
        self.flushed_requests.store(covered, SeqCst);
        Ok(())
    }
}

/// An outbox row, encoded, with its target and due time.
pub(super) struct EncodedRow<'a> {
    target: &'a str,
    bytes: Vec<u8>,
    due_ms: u64,
}

pub(super) fn encode_rows<'a>(deliveries: &[(&'a str, OutboxRow)]) -> Vec<EncodedRow<'a>> {
    deliveries
        .iter()
        .map(|(target, row)| EncodedRow {
            target,
            bytes: encode_json(row),
            due_ms: row.next_attempt_ms,
        })
        .collect()
}

/// Unhides the outbox keys of a commit when dropped.
pub(super) struct Unhide<'a> {
    store: &'a Store,
    keys: std::sync::Mutex<Vec<OutboxKey>>,
}

impl Unhide<'_> {
    /// For a transaction that is about to queue rows.
    pub(super) fn new(store: &Store) -> Unhide<'_> {
        Unhide {
            store,
            keys: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Leaves the keys hidden: their flush failed.
    fn keep_hidden(self) {
        let keys = std::mem::take(&mut *lock(&self.keys));
        lock(&self.store.unflushable).extend(keys);
    }
}

impl Drop for Unhide<'_> {
    fn drop(&mut self) {
        let mut unflushed = lock(&self.store.unflushed);
        for key in lock(&self.keys).iter() {
            unflushed.remove(key);
        }
    }
}

/// Whose health a state is.
#[derive(Debug, Clone, Copy)]
enum Health {
    Endpoint,
    Target,
}
