//! The durable state: the only module that opens sled.
//!
//! Trees:
//! - `meta`: the schema version, so later formats migrate old stores.
//! - `snapshots`: endpoint name → [`Snapshot`] (version, hash, validators).
//!   The snapshot's version is the newest document, the one the next poll
//!   diffs against.
//! - `outbox`: target name, 0, sequence → [`OutboxRow`] waiting for a 2xx.
//! - `due`: target name, 0, due time, sequence → nothing: one entry per
//!   outbox row, so that a dispatcher finds its due rows without reading a
//!   backlog of rows waiting for their retry.
//! - `dead`: the same keys → rows whose retry schedule ran out, with every
//!   attempt; capped per target.
//! - `attempts`: target name, 0, sequence → [`AttemptRecord`], a bounded log.
//! - `paused`: target name → [`Pause`], for targets that answered 410 Gone.
//! - `tokens`: an OAuth2 token source's key → [`RotatedToken`], the refresh
//!   token its server rotated to, which replaces the configured one.
//!
//! The documents are files in `documents/`, one per kept version, in 256
//! directories by their name's first byte, each starting with its kind,
//! time and hash. sled keeps in memory every key and value it has read or
//! written, whatever its cache size: documents in sled made memory grow
//! with their size, and an entry per version (about 400 bytes of RAM each)
//! made it grow with the history.
//!
//! A change is written by [`Store::commit`]: its document file first, then
//! in ONE transaction the snapshot and one outbox row per target. A crash
//! can repeat a delivery, never lose one.
//!
//! sled fails every write after an IO error (a full disk) until it is
//! opened again, so the store holds its sled handles behind a lock that
//! [`Store::recover`] swaps: a failed write marks the store failed (see
//! [`Store::write_failure`]), and recovering drops every handle and opens
//! the database again once the disk takes writes.
//!
//! One `Store`, its parts by concern: opening, health and recovery here;
//! `documents` (snapshots and document files), `commit` (a change's one
//! transaction, group commit), `outbox` (the queue, `due` index, dead
//! letters, attempt log, pauses), `tokens` (rotated OAuth2 refresh
//! tokens), `migrate` (older schemas) and `encoding` (how records are
//! written).

use std::collections::{HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use hex::FromHex as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::event::Failing;
use crate::extract::{Document, Kind};
use crate::locks::{lock, read, write};

mod commit;
mod cursors;
mod documents;
mod encoding;
mod migrate;
mod mirrored;
mod outbox;
mod paused;
#[cfg(test)]
mod tests;
mod tokens;

pub use cursors::{CursorCommit, CursorState};
pub use documents::Stored;
use documents::*;
use encoding::*;
pub use mirrored::{Committed, Mirrored};
use outbox::*;
pub use tokens::RotatedToken;

/// The on-disk format this build reads and writes. 1: documents in the
/// `history` tree; 2: documents in files, described by a `versions` tree;
/// 3: documents in files that describe themselves; 4: snapshots in postcard
/// instead of JSON; 5: the `due` index of the outbox; 6: document files in
/// 256 directories.
pub const SCHEMA_VERSION: u64 = 7;

/// sled's default page cache is 1 GiB; snapshots are read once per poll, so
/// a small cache is plenty (sled's memory is several times this anyway).
const CACHE_BYTES: u64 = 4 << 20;

const SCHEMA_KEY: &[u8] = b"schema_version";
/// Written by [`Store::recover`] to see whether sled takes writes again.
const PROBE_KEY: &[u8] = b"write_probe";

/// Attempt records kept per target in the `attempts` log.
const ATTEMPT_LOG_CAP: usize = 1000;
/// Dead letters kept per target; the oldest go first.
const DEAD_LETTER_CAP: usize = 10_000;
/// Response bytes kept per attempt.
pub const RESPONSE_KEEP: usize = 4096;

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
    #[error(
        "the database in `{}` is damaged ({detail}): restore it from a backup, or move it away to start afresh (the queued webhooks in it would be lost)",
        path.display()
    )]
    Damaged { path: PathBuf, detail: String },
    #[error("the database in `{}` is closed until it can be opened again", path.display())]
    Closed { path: PathBuf },
    #[error("the database was opened again before this write was flushed; it may be lost")]
    Reopened,
    #[error("store error")]
    Sled(#[from] sled::Error),
    #[error("corrupt {what} record in the store: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("cannot {action} the document file `{}`", path.display())]
    DocumentFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the store remembers of an endpoint between polls. Stored with
/// postcard: about 90 bytes, where its JSON with hex hashes took 250, and
/// sled keeps every record in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Counts every stored document: 1 for the baseline, +1 per change.
    pub version: u64,
    /// SHA-256 of the extracted document.
    pub hash: [u8; 32],
    /// The endpoint's definition when this snapshot was taken.
    pub definition: [u8; 32],
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub changed_at_ms: u64,
    /// The last version an event was sent for (or the baseline): what
    /// `when_previous = "notified"` compares with. Its document is kept
    /// past `keep_history` while it is.
    pub notified: u64,
}

/// One webhook waiting to be delivered to one target. The default fields
/// are those of a row never attempted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Every attempt so far; it goes with the row into the dead letters.
    #[serde(default)]
    pub attempt_log: Vec<AttemptRecord>,
    /// When the row was dead-lettered, for rows in `dead`.
    #[serde(default)]
    pub dead_at_ms: Option<u64>,
}

/// One delivery attempt, as the attempt log and dead letters keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub event_id: String,
    pub attempt: u32,
    pub at_ms: u64,
    /// None when no response came (timeout, refused connection).
    pub status: Option<u16>,
    pub duration_ms: u64,
    /// The first [`RESPONSE_KEEP`] bytes of the response body.
    pub response: String,
    pub error: Option<String>,
    /// None when there will be no next attempt (delivered, dead, paused).
    pub next_attempt_ms: Option<u64>,
}

/// Why and since when a target is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub since_ms: u64,
    pub reason: String,
}

/// One kept version of an endpoint's document, as its file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub version: u64,
    pub at_ms: u64,
    /// `None`: the file is damaged (see [`Stored::Damaged`]).
    pub kind: Option<Kind>,
    /// The document's size.
    pub bytes: usize,
}

/// What becomes of a row after an attempt (see [`Store::settle`]).
#[derive(Debug, Clone, Copy)]
pub enum Fate<'a> {
    /// Delivered: the row leaves the outbox.
    Delivered,
    /// Tried again at the row's `next_attempt_ms`.
    Rescheduled(&'a OutboxRow),
    /// Its schedule ran out: into the dead letters (the oldest beyond the
    /// cap are dropped).
    Dead(&'a OutboxRow),
    /// The target answered 410 Gone: the row waits, rescheduled, and the
    /// target is paused.
    Paused(&'a OutboxRow, &'a Pause),
}

/// Which dead letters `replay` puts back.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter<'a> {
    /// Only these event ids (all when empty).
    pub event_ids: &'a [String],
    pub target: Option<&'a str>,
    /// Only rows that died at or after this time.
    pub since_ms: Option<u64>,
}

/// An outbox row with its key.
pub type QueuedRow = (OutboxKey, OutboxRow);

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
    /// Item mode: the seen keys, stored with the snapshot.
    pub seen: Option<&'a crate::seen::SeenKeys>,
}

pub struct Store {
    /// The state dir: sled's database is `db` in it.
    dir: PathBuf,
    /// sled's handles, behind a lock so that [`Store::recover`] can drop
    /// them all and open the database again: after an IO error (a full
    /// disk) sled fails every write until it is reopened. `None` only
    /// while that reopening has not succeeded yet.
    trees: std::sync::RwLock<Option<Arc<Trees>>>,
    /// How many times the database was opened again.
    generation: AtomicU64,
    /// One file per stored version: see [`Store::document_path`].
    documents: PathBuf,
    /// How many rows the outbox holds: counting them is a scan in sled,
    /// and the status line and every `/metrics` scrape ask.
    queued: std::sync::atomic::AtomicUsize,
    /// Outbox rows committed but not yet flushed: not handed out yet.
    unflushed: std::sync::Mutex<HashSet<OutboxKey>>,
    /// Rows of commits whose flush failed, kept hidden: they are sent only
    /// once a later flush covers them (see [`Store::recover`]).
    unflushable: std::sync::Mutex<Vec<OutboxKey>>,
    /// Entries in each target's attempt log, counted once per process.
    attempt_counts: std::sync::Mutex<HashMap<String, usize>>,
    /// Group sync of document files: see [`Store::write_durably`].
    syncing: tokio::sync::Mutex<()>,
    unsynced: std::sync::Mutex<Vec<Unsynced>>,
    /// Group commit: see [`Store::flush`].
    flushing: tokio::sync::Mutex<()>,
    flush_requests: AtomicU64,
    flushed_requests: AtomicU64,
    /// Why the store cannot write, while it cannot: see [`Store::write_failure`].
    failure: std::sync::Mutex<Option<Failure>>,
    /// How many times writing failed and then worked again.
    recoveries: AtomicU64,
    /// When [`Store::recover`] may reopen the database next, and the wait
    /// after that.
    next_reopen: std::sync::Mutex<(tokio::time::Instant, std::time::Duration)>,
    /// The endpoints written since a cluster's mirror last asked.
    committed: std::sync::OnceLock<Arc<Committed>>,
}

/// The handles of one opening of the sled database.
struct Trees {
    /// Which opening: a flush answers only for writes made to its own.
    generation: u64,
    db: sled::Db,
    meta: sled::Tree,
    snapshots: sled::Tree,
    outbox: sled::Tree,
    /// The outbox by due time: see [`due_key`].
    due: sled::Tree,
    dead: sled::Tree,
    attempts: sled::Tree,
    paused: sled::Tree,
    /// Endpoints whose `endpoint.failing` was sent, until they recover.
    health: sled::Tree,
    /// Targets whose `target.failing` was sent, until they recover.
    target_health: sled::Tree,
    /// Item mode: each endpoint's seen keys ([`crate::seen::SeenKeys`]).
    seen: sled::Tree,
    /// When each endpoint last polled (ms), as of the last checkpoint.
    polled: sled::Tree,
    /// Incremental endpoints' cursors ([`CursorState`]).
    cursors: sled::Tree,
}

impl Trees {
    /// Opens the database in `dir` and its trees. sled finishes a closed
    /// database's last writes on its own threads, so a store this process
    /// has just closed can keep its lock for a moment: that is waited for
    /// (up to a second), never another process.
    fn open(dir: &Path, generation: u64) -> Result<Trees, StoreError> {
        let pid_file = dir.join("pollhook.pid");
        let db_dir = dir.join("db");
        discard_unfinished_snapshots(&db_dir);
        let config = sled::Config::new().path(db_dir).cache_capacity(CACHE_BYTES);
        let is_lock = |error: &sled::Error| matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"));
        let mut opened = config.open();
        for _ in 0..100 {
            match &opened {
                Err(error) if is_lock(error) && !held_by_another_process(&pid_file) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    opened = config.open();
                }
                _ => break,
            }
        }
        let db = opened.map_err(|error| match error {
            error if is_lock(&error) => match read_pid(&pid_file) {
                Some(pid) => StoreError::Running { pid },
                None => StoreError::Locked {
                    path: dir.to_path_buf(),
                },
            },
            source => StoreError::Open {
                path: dir.to_path_buf(),
                source,
            },
        })?;
        // Best effort: the pid only improves the message another process prints.
        let _ = std::fs::write(&pid_file, std::process::id().to_string());
        Ok(Trees {
            generation,
            meta: db.open_tree("meta")?,
            snapshots: db.open_tree("snapshots")?,
            outbox: db.open_tree("outbox")?,
            due: db.open_tree("due")?,
            dead: db.open_tree("dead")?,
            attempts: db.open_tree("attempts")?,
            paused: db.open_tree("paused")?,
            health: db.open_tree("health")?,
            target_health: db.open_tree("target_health")?,
            seen: db.open_tree("seen")?,
            polled: db.open_tree("polled")?,
            cursors: db.open_tree("cursors")?,
            db,
        })
    }
}

/// Why the store cannot write, and since when.
#[derive(Debug, Clone)]
struct Failure {
    since: tokio::time::Instant,
    error: String,
}

/// The first wait before the database is reopened after a failed write,
/// and the longest (the wait doubles while reopening does not help).
const REOPEN_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const REOPEN_LONGEST: std::time::Duration = std::time::Duration::from_secs(60);

impl Store {
    /// Whether `dir` holds a store (an [`open`](Store::open) would not make one).
    pub fn exists(dir: &Path) -> bool {
        dir.join("db").exists()
    }

    /// Opens (or creates) the store in `dir`, migrating an older schema.
    ///
    /// A damaged database is an error that says so, also when sled panics
    /// over it (a log cut short leaves its snapshot pointing past the end
    /// of the file, and sled indexes past its segments): the panic is
    /// caught, and its message kept out of the user's terminal.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let damaged = |detail: String| StoreError::Damaged {
            path: dir.join("db"),
            detail,
        };
        match quietly(|| Store::open_unguarded(dir)) {
            Err(message) => Err(damaged(format!("sled gave up reading it: {message}"))),
            Ok(Err(error)) => match corruption(&error) {
                Some(detail) => Err(damaged(detail)),
                None => Err(error),
            },
            Ok(Ok(store)) => Ok(store),
        }
    }

    fn open_unguarded(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            source: source.into(),
        })?;
        let trees = Trees::open(dir, 0)?;
        let found = match trees.meta.get(SCHEMA_KEY)? {
            Some(bytes) => decode_u64(&bytes, "schema version")?,
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: dir.to_path_buf(),
                found,
            });
        }
        let documents = dir.join("documents");
        create_shards(&documents).map_err(|source| StoreError::Open {
            path: documents.clone(),
            source: source.into(),
        })?;
        let store = Store {
            dir: dir.to_path_buf(),
            trees: std::sync::RwLock::new(Some(Arc::new(trees))),
            generation: AtomicU64::new(0),
            documents,
            queued: Default::default(),
            unflushed: Default::default(),
            unflushable: Default::default(),
            attempt_counts: Default::default(),
            syncing: Default::default(),
            unsynced: Default::default(),
            flushing: Default::default(),
            flush_requests: Default::default(),
            flushed_requests: Default::default(),
            failure: Default::default(),
            recoveries: Default::default(),
            next_reopen: std::sync::Mutex::new((tokio::time::Instant::now(), REOPEN_FIRST)),
            committed: Default::default(),
        };
        // Version 0 is an empty store. Each step takes the store one schema
        // further and can be run again if a crash interrupts it.
        match found {
            1 => store.documents_from_history()?,
            2 => store.documents_from_versions()?,
            _ => {}
        }
        if (1..4).contains(&found) {
            store.snapshots_to_postcard()?;
        }
        if (1..5).contains(&found) {
            store.index_outbox()?;
        }
        if (1..6).contains(&found) {
            store.documents_into_shards()?;
        }
        if (1..7).contains(&found) {
            store.snapshots_gain_notified()?;
        }
        let trees = store.trees()?;
        if found < SCHEMA_VERSION {
            trees
                .meta
                .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
            trees.db.flush()?;
        }
        store.queued.store(
            count(trees.outbox.iter().keys())?,
            std::sync::atomic::Ordering::Relaxed,
        );
        // The old trees go once the new schema number is stored, also when
        // a migration stopped right after storing it (dropping a tree that
        // does not exist does nothing).
        for old in ["history", "versions"] {
            trees.db.drop_tree(old)?;
        }
        drop(trees);
        Ok(store)
    }

    /// sled's handles, for one call.
    fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        read(&self.trees).clone().ok_or_else(|| StoreError::Closed {
            path: self.dir.join("db"),
        })
    }

    /// Runs `op` on sled's handles, noting a failure to write (see
    /// [`Store::watch`]).
    fn watched<T>(
        &self,
        op: impl FnOnce(&Trees) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = self.trees().and_then(|trees| op(&trees));
        self.watch(result)
    }

    /// Notes `result`'s error if it says the store cannot write: logged at
    /// ERROR once, when writes start failing, not at every write.
    /// A sled corruption error becomes [`StoreError::Damaged`], which says
    /// what to do.
    fn watch<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let result = result.map_err(|error| match corruption(&error) {
            Some(detail) => StoreError::Damaged {
                path: self.dir.join("db"),
                detail,
            },
            None => error,
        });
        let Err(error) = &result else {
            return result;
        };
        let cannot_write = matches!(
            error,
            StoreError::Sled(sled::Error::Io(_))
                | StoreError::Closed { .. }
                | StoreError::DocumentFile {
                    action: "write" | "sync",
                    ..
                }
        );
        if cannot_write {
            let mut failure = lock(&self.failure);
            if failure.is_none() {
                let error = crate::error_chain(error);
                tracing::error!(
                    state_dir = %self.dir.display(), error = %error,
                    "the store cannot write (is the disk full?): polls and deliveries wait, and go on by themselves once it can"
                );
                let now = tokio::time::Instant::now();
                *failure = Some(Failure { since: now, error });
                *lock(&self.next_reopen) = (now + REOPEN_FIRST, REOPEN_FIRST);
            }
        }
        result
    }

    /// Why the store cannot write, while it cannot (for `/readyz`).
    pub fn write_failure(&self) -> Option<String> {
        lock(&self.failure).as_ref().map(|failure| {
            format!(
                "the store cannot write (for {} s): {}",
                failure.since.elapsed().as_secs(),
                failure.error
            )
        })
    }

    /// How many times writing failed and then worked again: a dispatcher
    /// that held rows back because their results could not be written
    /// lets them go when this changes.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// While writes fail, checks whether they work again: the file system
    /// first (a small file written, synced and removed), then sled (a write
    /// and a flush). sled fails every write after an IO error until it is
    /// opened again, so if it still fails, every handle is dropped and the
    /// database opened again, at most once per [`REOPEN_FIRST`], doubling
    /// to [`REOPEN_LONGEST`] while that does not help. What was flushed is
    /// on disk and comes back; what was not, no caller was told was stored
    /// (a commit's rows are sent only once flushed).
    ///
    /// Blocks (it opens sled): call it from a blocking thread. `Ok` when
    /// the store writes (again), else why not.
    pub fn recover(&self) -> Result<(), StoreError> {
        if lock(&self.failure).is_none() {
            return Ok(());
        }
        let probe = self.dir.join(".write-probe");
        let probed = std::fs::write(&probe, [0u8; 4096])
            .and_then(|()| std::fs::File::open(&probe)?.sync_all())
            .and_then(|()| std::fs::remove_file(&probe));
        if let Err(source) = probed {
            let _ = std::fs::remove_file(&probe);
            return Err(StoreError::DocumentFile {
                action: "write",
                path: probe,
                source,
            });
        }
        if self.probe_sled().is_err() {
            let now = tokio::time::Instant::now();
            {
                let mut next_reopen = lock(&self.next_reopen);
                if now < next_reopen.0 {
                    return Err(StoreError::Closed {
                        path: self.dir.join("db"),
                    });
                }
                let wait = (next_reopen.1 * 2).min(REOPEN_LONGEST);
                *next_reopen = (now + next_reopen.1, wait);
            }
            self.reopen()?;
            self.probe_sled()?;
        }
        // The probe's flush covered every write before it.
        let kept = std::mem::take(&mut *lock(&self.unflushable));
        {
            let mut unflushed = lock(&self.unflushed);
            for key in &kept {
                unflushed.remove(key);
            }
        }
        if let Some(failure) = lock(&self.failure).take() {
            tracing::info!(
                failed_for = %humantime::format_duration(std::time::Duration::from_secs(failure.since.elapsed().as_secs())),
                "the store writes again"
            );
        }
        self.recoveries
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// A write and a flush, to see whether sled takes writes.
    fn probe_sled(&self) -> Result<(), StoreError> {
        let trees = self.trees()?;
        trees
            .meta
            .insert(PROBE_KEY, &crate::clock::now_ms().to_be_bytes())?;
        trees.db.flush()?;
        Ok(())
    }

    /// Drops every sled handle and opens the database again. Flushes wait
    /// meanwhile, and other calls fail (the store is `Closed`) instead of
    /// waiting for the open.
    fn reopen(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let _flushing = self.flushing.blocking_lock();
        // Calls in flight hold their own handle until they return; opening
        // waits (up to a second) for them to let go of sled's lock.
        drop(write(&self.trees).take());
        let generation = self.generation.load(SeqCst) + 1;
        let trees = match quietly(|| Trees::open(&self.dir, generation)) {
            Ok(opened) => opened?,
            Err(message) => {
                return Err(StoreError::Damaged {
                    path: self.dir.join("db"),
                    detail: format!("sled gave up reading it: {message}"),
                });
            }
        };
        // All it holds was read from disk: nothing waits for a flush.
        lock(&self.unflushed).clear();
        lock(&self.unflushable).clear();
        lock(&self.attempt_counts).clear();
        self.queued
            .store(count(trees.outbox.iter().keys())?, SeqCst);
        self.generation.store(generation, SeqCst);
        *write(&self.trees) = Some(Arc::new(trees));
        tracing::info!(generation, "the database was opened again");
        Ok(())
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.watched(|trees| Ok(trees.db.size_on_disk()?))
    }
}

/// Counts the entries of a sled iterator, stopping at the first error.
/// sled's own `len` (and `Iterator::count`) counts the errors too, and an
/// iterator over a damaged page returns the same error for ever: counting
/// a damaged outbox at open never returned.
fn count<T>(entries: impl Iterator<Item = sled::Result<T>>) -> Result<usize, StoreError> {
    let mut counted = 0;
    for entry in entries {
        entry?;
        counted += 1;
    }
    Ok(counted)
}

fn transaction_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => StoreError::Sled(error),
    }
}

/// What a sled error says about a damaged database, if it is one.
fn corruption(error: &StoreError) -> Option<String> {
    let (StoreError::Open { source, .. } | StoreError::Sled(source)) = error else {
        return None;
    };
    match source {
        sled::Error::Corruption { .. } => Some("sled found corrupt data in it".to_string()),
        sled::Error::ReportableBug(bug) => Some(format!("sled found it inconsistent: {bug}")),
        _ => None,
    }
}

thread_local! {
    /// Set while [`quietly`] runs on this thread.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work`, turning a panic in it into an error with the panic's
/// message, and keeping the panic hook from printing it (and its hint to
/// set `RUST_BACKTRACE`). Only panics on this thread, within `work`, are
/// kept quiet: the hook is replaced once, by one that asks a thread-local
/// flag, so other threads panicking meanwhile are reported as usual.
fn quietly<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was_quiet = QUIET.with(|quiet| quiet.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    QUIET.with(|quiet| quiet.set(was_quiet));
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|message| message.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "an internal error".to_string());
        // The first line: assertion messages go on with their operands.
        let line = message.lines().next().unwrap_or_default();
        match line.char_indices().nth(200) {
            Some((end, _)) => format!("{}...", &line[..end]),
            None => line.to_string(),
        }
    })
}

/// Removes the sled snapshot an open killed midway left behind.
///
/// sled writes its snapshot only while it opens, to `snap.<lsn>.generating`,
/// and renames it once it is complete and synced; until then the snapshot
/// before it stays. A kill before the rename leaves the file, which sled
/// 0.34 takes for the newest snapshot and refuses the database over
/// (spacejam/sled#1527). Without it the directory is as it was when that
/// open began, so the next open starts where the killed one did. Only while
/// no one holds the database's lock: another process's snapshot is never
/// taken from under it.
fn discard_unfinished_snapshots(db_dir: &Path) {
    let Ok(file) = std::fs::File::open(db_dir.join("db")) else {
        return;
    };
    if file.try_lock().is_err() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(db_dir) else {
        return;
    };
    for path in entries.filter_map(|entry| Some(entry.ok()?.path())) {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::warn!(file = %path.display(), "removed a sled snapshot an interrupted opening of the database left unfinished")
                }
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "cannot remove a sled snapshot an interrupted opening of the database left unfinished")
                }
            }
        }
    }
}

/// Whether the pid file names a process other than this one that still
/// runs. A lock whose holder is not such a process is this process's own:
/// a store it has just closed (sled finishes the last writes on its own
/// threads), perhaps after a CLI command of ours wrote its pid there.
fn held_by_another_process(pid_file: &Path) -> bool {
    match read_pid(pid_file) {
        Some(pid) if pid != std::process::id() => Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
