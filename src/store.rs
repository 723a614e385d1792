//! The durable state: the only module that opens sled.
//!
//! Trees:
//! - `meta`: the schema version, so later formats migrate old stores.
//! - `snapshots`: endpoint name → [`Snapshot`] (version, hash, validators).
//! - `history`: endpoint name, 0, version → the extracted document of that
//!   version; the newest entry is the one the next poll diffs against.
//! - `outbox`: target name, 0, sequence → [`OutboxRow`] waiting for a 2xx.
//!
//! A change is written by [`Store::commit`] in ONE transaction: snapshot,
//! history entry and one outbox row per target. A crash can repeat a
//! delivery, never lose one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::extract::{Document, Kind};

/// The on-disk format this build reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

/// sled's default page cache is 1 GiB; snapshots are read once per change,
/// so a small cache is plenty and keeps the daemon's memory flat.
const CACHE_BYTES: u64 = 16 << 20;

const SCHEMA_KEY: &[u8] = b"schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("pollhook is running (pid {pid}); stop it or use the admin API")]
    Running { pid: u32 },
    #[error("the store in `{}` is locked by another process", path.display())]
    Locked { path: PathBuf },
    #[error("cannot open the store in `{}`", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(
        "the store in `{}` has schema version {found}, newer than this pollhook understands ({SCHEMA_VERSION}); upgrade pollhook",
        path.display()
    )]
    TooNew { path: PathBuf, found: u64 },
    #[error("store error")]
    Sled(#[from] sled::Error),
    #[error("corrupt {what} record in the store: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// What the store remembers of an endpoint between polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Counts every stored document: 1 for the baseline, +1 per change.
    pub version: u64,
    /// Hex SHA-256 of the extracted document.
    pub hash: String,
    /// The endpoint definition this snapshot was taken with.
    pub definition: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub changed_at_ms: u64,
}

/// One webhook waiting to be delivered to one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRow {
    /// The `webhook-id`: the same for every attempt, restart and replay.
    pub event_id: String,
    pub event_type: String,
    pub endpoint: String,
    /// The exact bytes that are signed and sent.
    pub body: String,
    pub created_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// An outbox row's key: target name, a zero byte, then a big-endian sequence
/// number, so one target's rows are contiguous and in the order they came.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutboxKey(Vec<u8>);

impl OutboxKey {
    fn new(target: &str, sequence: u64) -> OutboxKey {
        let mut key = prefix(target);
        key.extend_from_slice(&sequence.to_be_bytes());
        OutboxKey(key)
    }
}

/// Everything one detected change writes, applied atomically.
#[derive(Debug)]
pub struct Commit<'a> {
    pub endpoint: &'a str,
    pub snapshot: &'a Snapshot,
    pub document: &'a Document,
    pub keep_history: usize,
    /// One row per target; empty when nothing is to be sent (a baseline).
    pub deliveries: Vec<(&'a str, OutboxRow)>,
}

pub struct Store {
    db: sled::Db,
    snapshots: sled::Tree,
    history: sled::Tree,
    outbox: sled::Tree,
}

impl Store {
    /// Opens (or creates) the store in `dir`, migrating an older schema.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            source: source.into(),
        })?;
        let pid_file = dir.join("pollhook.pid");
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|error| match error {
                sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                    match read_pid(&pid_file) {
                        Some(pid) => StoreError::Running { pid },
                        None => StoreError::Locked {
                            path: dir.to_path_buf(),
                        },
                    }
                }
                source => StoreError::Open {
                    path: dir.to_path_buf(),
                    source,
                },
            })?;
        // Best effort: the pid only improves the message another process prints.
        let _ = std::fs::write(&pid_file, std::process::id().to_string());

        let meta = db.open_tree("meta")?;
        let found = match meta.get(SCHEMA_KEY)? {
            Some(bytes) => decode_u64(&bytes, "schema version")?,
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: dir.to_path_buf(),
                found,
            });
        }
        // Version 0 is an empty store; future versions add their migration
        // steps here, each taking the store from `n` to `n + 1`.
        if found < SCHEMA_VERSION {
            meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
        }
        Ok(Store {
            snapshots: db.open_tree("snapshots")?,
            history: db.open_tree("history")?,
            outbox: db.open_tree("outbox")?,
            db,
        })
    }

    pub fn snapshot(&self, endpoint: &str) -> Result<Option<Snapshot>, StoreError> {
        self.snapshots
            .get(endpoint)?
            .map(|bytes| decode_json(&bytes, "snapshot"))
            .transpose()
    }

    /// The stored document of one version of an endpoint.
    pub fn document(&self, endpoint: &str, version: u64) -> Result<Option<Document>, StoreError> {
        self.history
            .get(history_key(endpoint, version))?
            .map(|bytes| decode_history(&bytes))
            .transpose()
    }

    /// Writes a new snapshot, its history entry and its outbox rows in one
    /// transaction, then trims the history beyond `keep_history`.
    pub fn commit(&self, commit: &Commit<'_>) -> Result<Vec<OutboxKey>, StoreError> {
        let snapshot = serde_json::to_vec(commit.snapshot).expect("a snapshot always serialises");
        let history = encode_history(commit.document, commit.snapshot.changed_at_ms);
        let rows: Vec<(&str, Vec<u8>)> = commit
            .deliveries
            .iter()
            .map(|(target, row)| {
                (
                    *target,
                    serde_json::to_vec(row).expect("a row always serialises"),
                )
            })
            .collect();
        let version = commit.snapshot.version;
        let keys = (&self.snapshots, &self.history, &self.outbox)
            .transaction(|(snapshots, history_tree, outbox)| {
                snapshots.insert(commit.endpoint.as_bytes(), snapshot.as_slice())?;
                history_tree.insert(history_key(commit.endpoint, version), history.as_slice())?;
                let mut keys = Vec::with_capacity(rows.len());
                for (target, row) in &rows {
                    let sequence = outbox.generate_id()?;
                    let key = OutboxKey::new(target, sequence);
                    outbox.insert(key.0.as_slice(), row.as_slice())?;
                    keys.push(key);
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(keys)
            })
            .map_err(|error| match error {
                TransactionError::Abort(error) => error,
                TransactionError::Storage(error) => StoreError::Sled(error),
            })?;
        self.trim_history(commit.endpoint, version, commit.keep_history)?;
        Ok(keys)
    }

    /// Removes history entries older than the newest `keep` versions.
    fn trim_history(&self, endpoint: &str, newest: u64, keep: usize) -> Result<(), StoreError> {
        let keep = keep.max(1) as u64;
        if newest <= keep {
            return Ok(());
        }
        let start = history_key(endpoint, 0);
        let end = history_key(endpoint, newest - keep + 1);
        for entry in self.history.range(start..end) {
            let (key, _) = entry?;
            self.history.remove(key)?;
        }
        Ok(())
    }

    /// Updates only the conditional-request validators of a snapshot (a
    /// server may send a new ETag for identical content).
    pub fn update_snapshot(&self, endpoint: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(snapshot).expect("a snapshot always serialises");
        self.snapshots.insert(endpoint, bytes)?;
        Ok(())
    }

    /// Makes every write so far durable. Called after a commit and before its
    /// rows are handed to the dispatcher, so that nothing is sent that a
    /// crash could make the store forget.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// All rows queued for a target, oldest first.
    pub fn outbox_rows(&self, target: &str) -> Result<Vec<(OutboxKey, OutboxRow)>, StoreError> {
        self.outbox
            .scan_prefix(prefix(target))
            .map(|entry| {
                let (key, value) = entry?;
                Ok((OutboxKey(key.to_vec()), decode_json(&value, "outbox")?))
            })
            .collect()
    }

    /// Every queued row of every target, for `pollhook deliveries`.
    pub fn all_outbox_rows(&self) -> Result<Vec<(String, OutboxRow)>, StoreError> {
        self.outbox
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                let target = key.split(|byte| *byte == 0).next().unwrap_or_default();
                Ok((
                    String::from_utf8_lossy(target).into_owned(),
                    decode_json(&value, "outbox")?,
                ))
            })
            .collect()
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Removes a delivered row. Only the dispatcher calls this, after a 2xx.
    pub fn complete(&self, key: &OutboxKey) -> Result<(), StoreError> {
        self.outbox.remove(&key.0)?;
        Ok(())
    }

    /// Records a failed attempt and when to try again.
    pub fn reschedule(&self, key: &OutboxKey, row: &OutboxRow) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(row).expect("a row always serialises");
        self.outbox.insert(&key.0, bytes)?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

fn prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 9);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

fn history_key(endpoint: &str, version: u64) -> Vec<u8> {
    let mut key = prefix(endpoint);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// History values: one byte of kind, eight of time, then the document.
fn encode_history(document: &Document, at_ms: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(9 + document.canonical.len());
    bytes.push(document.kind as u8);
    bytes.extend_from_slice(&at_ms.to_be_bytes());
    bytes.extend_from_slice(&document.canonical);
    bytes
}

fn decode_history(bytes: &[u8]) -> Result<Document, StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        what: "history",
        detail: detail.to_string(),
    };
    let (&kind, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
    let kind = Kind::from_u8(kind).ok_or_else(|| corrupt("unknown document kind"))?;
    let document = rest.get(8..).ok_or_else(|| corrupt("truncated"))?;
    Document::from_canonical(kind, document.to_vec()).map_err(|error| corrupt(&error.to_string()))
}

fn decode_json<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        what,
        detail: error.to_string(),
    })
}

fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("{} bytes, expected 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
