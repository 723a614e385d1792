//! The outbox and what goes with it: the `due` index, dead letters, the
//! attempt log and paused targets; settling an attempt in one transaction.

use super::*;

impl Store {
    /// The rows queued for a target that are safe to send, oldest first.
    pub fn outbox_rows(&self, target: &str) -> Result<Vec<QueuedRow>, StoreError> {
        self.watch(self.visible_rows(target).collect())
    }

    /// The rows queued for a target that are safe to send, oldest first,
    /// each decoded only when it is reached.
    pub(super) fn visible_rows(
        &self,
        target: &str,
    ) -> impl Iterator<Item = Result<QueuedRow, StoreError>> + '_ {
        // sled's iterator holds its tree: no handle is borrowed past this call.
        let (scan, closed) = match self.trees() {
            Ok(trees) => (Some(trees.outbox.scan_prefix(prefix(target))), None),
            Err(error) => (None, Some(Err(error))),
        };
        closed
            .into_iter()
            .chain(scan.into_iter().flatten().filter_map(move |entry| {
                let (key, value) = match entry {
                    Ok(entry) => entry,
                    Err(error) => return Some(Err(error.into())),
                };
                let key = OutboxKey(key.to_vec());
                (!self.is_hidden(&key)).then(|| Ok((key, decode_json(&value, "outbox")?)))
            }))
    }

    /// Whether a row is committed but not yet flushed, so not to be sent.
    pub(super) fn is_hidden(&self, key: &OutboxKey) -> bool {
        lock(&self.unflushed).contains(key)
    }

    /// What a dispatcher starts next: up to `limit` rows of `target` due at
    /// `now_ms`, in the order they fell due, passing over those `busy` says
    /// are being attempted; and when the first row not yet due falls due.
    /// Reads the due rows and one entry more, however long the backlog of
    /// rows waiting for a retry (reading them all at every wake made a
    /// target that came back after an outage drain in quadratic time).
    pub fn due_rows(
        &self,
        target: &str,
        now_ms: u64,
        limit: usize,
        busy: impl Fn(&OutboxKey) -> bool,
    ) -> Result<(Vec<QueuedRow>, Option<u64>), StoreError> {
        self.watched(|trees| {
            let mut rows = Vec::new();
            if limit == 0 {
                return Ok((rows, None));
            }
            for entry in trees.due.scan_prefix(prefix(target)).keys() {
                let (key, due_ms) = from_due_key(&entry?)?;
                if due_ms > now_ms {
                    return Ok((rows, Some(due_ms)));
                }
                if busy(&key) || self.is_hidden(&key) {
                    continue;
                }
                let Some(value) = trees.outbox.get(&key.0)? else {
                    continue;
                };
                rows.push((key, decode_json(&value, "outbox")?));
                if rows.len() == limit {
                    break;
                }
            }
            Ok((rows, None))
        })
    }

    /// The oldest row of `target` that is safe to send: the only one an
    /// ordered target looks at.
    pub fn head_row(&self, target: &str) -> Result<Option<QueuedRow>, StoreError> {
        self.watch(self.visible_rows(target).next().transpose())
    }

    /// Queued rows, oldest first, of one target or all, for `pollhook deliveries`.
    pub fn queued_rows(
        &self,
        target: Option<&str>,
    ) -> Result<Vec<(String, OutboxRow)>, StoreError> {
        self.watched(|trees| rows_of(&trees.outbox, target))
    }

    /// How many rows each endpoint has queued, over all targets. Decodes
    /// only each row's endpoint: `/endpoints` shows the count of every
    /// endpoint, and matching each against every decoded row cost
    /// endpoints × rows.
    pub fn pending_by_endpoint(&self) -> Result<HashMap<String, usize>, StoreError> {
        self.watched(|trees| {
            #[derive(Deserialize)]
            struct RowEndpoint {
                endpoint: String,
            }
            let mut counts = HashMap::new();
            for value in trees.outbox.iter().values() {
                let row: RowEndpoint = decode_json(&value?, "outbox")?;
                *counts.entry(row.endpoint).or_default() += 1;
            }
            Ok(counts)
        })
    }

    pub fn dead_len(&self) -> usize {
        // For the gauges: a store that cannot be read shows none.
        self.trees()
            .and_then(|trees| count(trees.dead.iter().keys()))
            .unwrap_or(0)
    }

    pub fn outbox_len(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn count_queued(&self, added: usize, removed: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = self.queued.fetch_update(Relaxed, Relaxed, |queued| {
            Some((queued + added).saturating_sub(removed))
        });
    }

    /// Settles an attempt of the row at `key`, which was due at `due_ms`:
    /// its `fate` and the attempt's entry in the attempt log are written in
    /// ONE transaction, so a crash never leaves a row rescheduled without
    /// its attempt logged, or paused without its target paused. Only the
    /// dispatcher calls this (and tests, without an attempt).
    pub fn settle(
        &self,
        key: &OutboxKey,
        due_ms: u64,
        fate: Fate<'_>,
        attempt: Option<&AttemptRecord>,
    ) -> Result<(), StoreError> {
        let target = target_of(&key.0);
        let logged = attempt.map(encode_json);
        let row = match &fate {
            Fate::Delivered => None,
            Fate::Rescheduled(row) | Fate::Dead(row) | Fate::Paused(row, _) => {
                Some(encode_json(row))
            }
        };
        let pause = match &fate {
            Fate::Paused(_, pause) => Some(encode_json(pause)),
            _ => None,
        };
        self.watched(|trees| {
            let removed = (
                &trees.outbox,
                &trees.due,
                &trees.dead,
                &trees.attempts,
                &trees.paused,
            )
                .transaction(|(outbox, due, dead, attempts, paused)| {
                    if let Some(logged) = &logged {
                        let log_key = OutboxKey::new(&target, attempts.generate_id()?);
                        attempts.insert(log_key.0.as_slice(), logged.as_slice())?;
                    }
                    due.remove(due_key(key, due_ms))?;
                    let row = row.as_deref().unwrap_or_default();
                    let removed = match &fate {
                        Fate::Delivered => outbox.remove(key.0.as_slice())?.is_some(),
                        Fate::Dead(_) => {
                            dead.insert(key.0.as_slice(), row)?;
                            outbox.remove(key.0.as_slice())?.is_some()
                        }
                        Fate::Rescheduled(next) | Fate::Paused(next, _) => {
                            outbox.insert(key.0.as_slice(), row)?;
                            due.insert(due_key(key, next.next_attempt_ms), &[])?;
                            false
                        }
                    };
                    if let Some(pause) = &pause {
                        paused.insert(target.as_bytes(), pause.as_slice())?;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(removed)
                })
                .map_err(transaction_error)?;
            self.count_queued(0, usize::from(removed));
            if attempt.is_some() {
                self.count_logged_attempt(trees, &target)?;
            }
            if matches!(fate, Fate::Dead(_)) {
                let target_prefix = &key.0[..key.0.len() - 8];
                trim_prefix(&trees.dead, target_prefix, DEAD_LETTER_CAP)?;
            }
            Ok(())
        })
    }

    /// Dead letters, oldest first, of one target or all.
    pub fn dead_rows(&self, target: Option<&str>) -> Result<Vec<(String, OutboxRow)>, StoreError> {
        self.watched(|trees| rows_of(&trees.dead, target))
    }

    /// Puts dead letters back in the outbox, due now, with their attempts
    /// reset and the same event id. Returns the target of each.
    pub fn replay(&self, filter: &DeadFilter<'_>) -> Result<Vec<String>, StoreError> {
        self.watched(|trees| {
            let now = crate::clock::now_ms();
            let mut replayed = Vec::new();
            let candidates = match filter.target {
                Some(target) => trees.dead.scan_prefix(prefix(target)),
                None => trees.dead.iter(),
            };
            for entry in candidates {
                let (key, value) = entry?;
                let mut row: OutboxRow = decode_json(&value, "dead letter")?;
                let wanted = (filter.event_ids.is_empty()
                    || filter.event_ids.contains(&row.event_id))
                    && filter
                        .since_ms
                        .is_none_or(|since| row.dead_at_ms.unwrap_or(0) >= since);
                if !wanted {
                    continue;
                }
                let target = target_of(&key);
                row.attempts = 0;
                row.attempt_log.clear();
                row.next_attempt_ms = now;
                row.dead_at_ms = None;
                let bytes = encode_json(&row);
                (&trees.outbox, &trees.due, &trees.dead)
                    .transaction(|(outbox, due, dead)| {
                        // A new sequence: a replayed row joins the end of the queue.
                        let fresh = OutboxKey::new(&target, outbox.generate_id()?);
                        outbox.insert(fresh.0.as_slice(), bytes.as_slice())?;
                        due.insert(due_key(&fresh, now), &[])?;
                        dead.remove(&key)?;
                        Ok::<_, ConflictableTransactionError<StoreError>>(())
                    })
                    .map_err(transaction_error)?;
                replayed.push(target);
                self.count_queued(1, 0);
            }
            Ok(replayed)
        })
    }

    /// Counts an entry just added to a target's attempt log, and drops the
    /// oldest beyond the cap. Counting the log at every attempt would cost
    /// a scan per delivery: it is counted once, then trimmed in batches.
    pub(super) fn count_logged_attempt(
        &self,
        trees: &Trees,
        target: &str,
    ) -> Result<(), StoreError> {
        let mut counts = lock(&self.attempt_counts);
        let count = match counts.entry(target.to_string()) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let logged = count(trees.attempts.scan_prefix(prefix(target)).keys())?;
                entry.insert(logged.saturating_sub(1))
            }
        };
        *count += 1;
        if *count > ATTEMPT_LOG_CAP + ATTEMPT_LOG_CAP / 10 {
            trim_prefix(&trees.attempts, &prefix(target), ATTEMPT_LOG_CAP)?;
            *count = ATTEMPT_LOG_CAP;
        }
        Ok(())
    }

    /// A target's attempt log, oldest first.
    pub fn attempt_log(&self, target: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        self.watched(|trees| {
            trees
                .attempts
                .scan_prefix(prefix(target))
                .values()
                .map(|value| decode_json(&value?, "attempt"))
                .collect()
        })
    }

    /// Un-pauses a target; false when it was not paused.
    pub fn resume(&self, target: &str) -> Result<bool, StoreError> {
        self.watched(|trees| Ok(trees.paused.remove(target)?.is_some()))
    }

    pub fn paused(&self, target: &str) -> Result<Option<Pause>, StoreError> {
        self.watched(|trees| {
            trees
                .paused
                .get(target)?
                .map(|bytes| decode_json(&bytes, "pause"))
                .transpose()
        })
    }
}

/// The `due` entry of an outbox row: its target's prefix, the time it is
/// due, then its sequence, so that a target's entries sort by due time and,
/// at the same time, in queue order.
pub(super) fn due_key(key: &OutboxKey, due_ms: u64) -> Vec<u8> {
    let (target, sequence) = key.0.split_at(key.0.len() - 8);
    [target, &due_ms.to_be_bytes(), sequence].concat()
}

/// The outbox key and due time of a `due` entry.
pub(super) fn from_due_key(entry: &[u8]) -> Result<(OutboxKey, u64), StoreError> {
    let split = entry
        .len()
        .checked_sub(16)
        .ok_or_else(|| StoreError::Corrupt {
            what: "due",
            detail: "a key too short".to_string(),
        })?;
    let (target, rest) = entry.split_at(split);
    let due_ms = decode_u64(&rest[..8], "due time")?;
    Ok((OutboxKey([target, &rest[8..]].concat()), due_ms))
}

pub(super) fn prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 9);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

pub(super) fn rows_of(
    tree: &sled::Tree,
    target: Option<&str>,
) -> Result<Vec<(String, OutboxRow)>, StoreError> {
    let entries = match target {
        Some(target) => tree.scan_prefix(prefix(target)),
        None => tree.iter(),
    };
    entries
        .map(|entry| {
            let (key, value) = entry?;
            Ok((target_of(&key), decode_json(&value, "outbox")?))
        })
        .collect()
}

/// The target name at the start of an outbox, dead or attempt key.
pub(super) fn target_of(key: &[u8]) -> String {
    let name = key.split(|byte| *byte == 0).next().unwrap_or_default();
    String::from_utf8_lossy(name).into_owned()
}

/// Keeps only the newest `cap` entries under `prefix` (keys end in a
/// sequence, so the first ones are the oldest).
pub(super) fn trim_prefix(tree: &sled::Tree, prefix: &[u8], cap: usize) -> Result<(), StoreError> {
    let entries = count(tree.scan_prefix(prefix).keys())?;
    for key in tree
        .scan_prefix(prefix)
        .keys()
        .take(entries.saturating_sub(cap))
    {
        tree.remove(key?)?;
    }
    Ok(())
}
