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

/// The on-disk format this build reads and writes. 1: documents in the
/// `history` tree; 2: documents in files, described by a `versions` tree;
/// 3: documents in files that describe themselves; 4: snapshots in postcard
/// instead of JSON; 5: the `due` index of the outbox; 6: document files in
/// 256 directories.
pub const SCHEMA_VERSION: u64 = 6;

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
}

impl Trees {
    /// Opens the database in `dir` and its trees. sled finishes a closed
    /// database's last writes on its own threads, so a store this process
    /// has just closed can keep its lock for a moment: that is waited for
    /// (up to a second), never another process.
    fn open(dir: &Path, generation: u64) -> Result<Trees, StoreError> {
        let pid_file = dir.join("pollhook.pid");
        let config = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES);
        let is_lock = |error: &sled::Error| matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"));
        let mut opened = config.open();
        for _ in 0..100 {
            match &opened {
                Err(error) if is_lock(error) && read_pid(&pid_file) == Some(std::process::id()) => {
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
            flushing: Default::default(),
            flush_requests: Default::default(),
            flushed_requests: Default::default(),
            failure: Default::default(),
            recoveries: Default::default(),
            next_reopen: std::sync::Mutex::new((tokio::time::Instant::now(), REOPEN_FIRST)),
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

    /// Schema 4 → 5: every outbox row gets its entry in the `due` index.
    fn index_outbox(&self) -> Result<(), StoreError> {
        self.watched(|trees| {
            for entry in trees.outbox.iter() {
                let (key, value) = entry?;
                let row: OutboxRow = decode_json(&value, "outbox")?;
                trees
                    .due
                    .insert(due_key(&OutboxKey(key.to_vec()), row.next_attempt_ms), &[])?;
            }
            Ok(())
        })
    }

    /// Schema 5 → 6: each document file moves into the directory of its
    /// stem's first byte, durably before the schema number says so.
    fn documents_into_shards(&self) -> Result<(), StoreError> {
        let failed = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::DocumentFile {
                action,
                path,
                source,
            }
        };
        let mut shards = std::collections::BTreeSet::new();
        let entries =
            std::fs::read_dir(&self.documents).map_err(failed("read", &self.documents))?;
        for entry in entries {
            let path = entry.map_err(failed("read", &self.documents))?.path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            // `<32 hex digits>.<version>`; the shards are the other entries.
            if name.find('.') != Some(32) {
                continue;
            }
            let shard = self.documents.join(&name[..2]);
            std::fs::rename(&path, shard.join(name)).map_err(failed("move", &path))?;
            shards.insert(shard);
        }
        for dir in shards.iter().chain([&self.documents]) {
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(failed("sync", dir))?;
        }
        Ok(())
    }

    /// Schema 1 → 3: every document of the `history` tree becomes a file.
    fn documents_from_history(&self) -> Result<(), StoreError> {
        self.watched(|trees| {
            for entry in trees.db.open_tree("history")?.iter() {
                let (key, value) = entry?;
                let corrupt = |detail: &str| StoreError::Corrupt {
                    what: "history",
                    detail: detail.to_string(),
                };
                let (&kind, rest) = value.split_first().ok_or_else(|| corrupt("empty"))?;
                let kind = Kind::from_u8(kind).ok_or_else(|| corrupt("unknown document kind"))?;
                let at_ms = decode_u64(rest.get(..8).ok_or_else(|| corrupt("truncated"))?, "time")?;
                let (endpoint, version) = split_version_key(&key)?;
                let document = Document::from_canonical(kind, rest[8..].to_vec());
                self.write_document(endpoint, version, &document, at_ms)?
                    .sync()?;
            }
            Ok(())
        })
    }

    /// Schema 3 → 4: every snapshot from JSON with hex hashes to postcard,
    /// in one atomic batch, so that a second run finds all or none done.
    fn snapshots_to_postcard(&self) -> Result<(), StoreError> {
        self.watched(|trees| {
            #[derive(Deserialize)]
            struct JsonSnapshot {
                version: u64,
                hash: String,
                definition: String,
                etag: Option<String>,
                last_modified: Option<String>,
                changed_at_ms: u64,
            }
            let sha256 = |hex: &str| {
                <[u8; 32]>::from_hex(hex).map_err(|error| StoreError::Corrupt {
                    what: "snapshot",
                    detail: format!("`{hex}` is not a hex SHA-256: {error}"),
                })
            };
            let mut batch = sled::Batch::default();
            for entry in trees.snapshots.iter() {
                let (key, value) = entry?;
                let Ok(json) = serde_json::from_slice::<JsonSnapshot>(&value) else {
                    // Converted by a run that stopped before storing the schema.
                    decode_snapshot(&value)?;
                    continue;
                };
                let snapshot = Snapshot {
                    version: json.version,
                    hash: sha256(&json.hash)?,
                    definition: sha256(&json.definition)?,
                    etag: json.etag,
                    last_modified: json.last_modified,
                    changed_at_ms: json.changed_at_ms,
                };
                batch.insert(key, encode_snapshot(&snapshot));
            }
            trees.snapshots.apply_batch(batch)?;
            Ok(())
        })
    }

    /// Schema 2 → 3: each document file described by a `versions` entry
    /// (kind, time, size and hash, 49 bytes) is written again with that
    /// description in front, under its new name; then the old file goes.
    fn documents_from_versions(&self) -> Result<(), StoreError> {
        self.watched(|trees| {
            for entry in trees.db.open_tree("versions")?.iter() {
                let (key, value) = entry?;
                let (endpoint, version) = split_version_key(&key)?;
                let corrupt = || StoreError::Corrupt {
                    what: "version",
                    detail: format!("{} bytes, kind {:?}", value.len(), value.first()),
                };
                if value.len() != 49 {
                    return Err(corrupt());
                }
                let kind = Kind::from_u8(value[0]).ok_or_else(corrupt)?;
                let hash: [u8; 32] = value[17..].try_into().map_err(|_| corrupt())?;
                let at_ms = decode_u64(&value[1..9], "version time")?;
                let old = self
                    .documents
                    .join(format!("{}-{version}", file_stem(endpoint)));
                let canonical = match std::fs::read(&old) {
                    Ok(bytes) => bytes,
                    // Moved before an interruption, or lost: nothing to move.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(StoreError::DocumentFile {
                            action: "read",
                            path: old,
                            source,
                        });
                    }
                };
                let document = Document::with_hash(kind, hash, canonical);
                self.write_document(endpoint, version, &document, at_ms)?
                    .sync()?;
                std::fs::remove_file(&old).map_err(|source| StoreError::DocumentFile {
                    action: "remove",
                    path: old,
                    source,
                })?;
            }
            Ok(())
        })
    }

    pub fn snapshot(&self, endpoint: &str) -> Result<Option<Snapshot>, StoreError> {
        self.watched(|trees| {
            trees
                .snapshots
                .get(endpoint)?
                .map(|bytes| decode_snapshot(&bytes))
                .transpose()
        })
    }

    /// The stored document of one version of an endpoint, or `None` for a
    /// version not kept, a file lost to a power cut between writing it and
    /// its snapshot, and a damaged file (logged): see [`Store::read_document`].
    pub fn document(&self, endpoint: &str, version: u64) -> Result<Option<Document>, StoreError> {
        Ok(match self.read_document(endpoint, version)? {
            Stored::Kept(document) => Some(document),
            Stored::Missing | Stored::Damaged { .. } => None,
        })
    }

    /// The stored document of one version of an endpoint, checked against
    /// the hash its header holds: bytes changed on disk would otherwise be
    /// diffed as if they had come from the endpoint. A damaged file is
    /// logged (a WARN naming it) each time it is read; the poller reads it
    /// once, and re-baselines.
    pub fn read_document(&self, endpoint: &str, version: u64) -> Result<Stored, StoreError> {
        Ok(match self.check_document(endpoint, version)? {
            Checked::Missing => Stored::Missing,
            Checked::Sound { document, .. } => Stored::Kept(document),
            Checked::Damaged { path, why, .. } => {
                tracing::warn!(
                    file = %path.display(), version, why = %why,
                    "a stored document is damaged: it is not compared with"
                );
                Stored::Damaged { path, why }
            }
        })
    }

    /// Reads a document file whole and checks it.
    fn check_document(&self, endpoint: &str, version: u64) -> Result<Checked, StoreError> {
        let (header, mut file, path) = match self.open_document(endpoint, version)? {
            Opened::Missing => return Ok(Checked::Missing),
            Opened::File { header, file, path } => (header, file, path),
        };
        let mut canonical = Vec::new();
        file.read_to_end(&mut canonical)
            .map_err(|source| StoreError::DocumentFile {
                action: "read",
                path: path.clone(),
                source,
            })?;
        let bytes = canonical.len();
        let header = match header {
            Ok(header) => header,
            Err(why) => {
                return Ok(Checked::Damaged {
                    path,
                    why,
                    at_ms: None,
                    bytes,
                });
            }
        };
        // Hashing it again costs a pass over the document, once per change:
        // little beside the diff, and what makes a flipped byte visible.
        let document = Document::from_canonical(header.kind, canonical);
        if document.hash != header.hash {
            return Ok(Checked::Damaged {
                path,
                why: "its contents do not match the SHA-256 stored with them".to_string(),
                at_ms: Some(header.at_ms),
                bytes,
            });
        }
        Ok(Checked::Sound {
            document,
            at_ms: header.at_ms,
        })
    }

    /// The stored versions of an endpoint, oldest first. Each file is read
    /// and checked: a damaged one is listed without a kind.
    pub fn history(&self, endpoint: &str) -> Result<Vec<StoredVersion>, StoreError> {
        let Some(newest) = self.snapshot(endpoint)?.map(|snapshot| snapshot.version) else {
            return Ok(Vec::new());
        };
        let mut versions = Vec::new();
        // The kept versions are the newest ones, without gaps, except that
        // a power cut may have lost the newest file.
        for version in (1..=newest).rev() {
            let (kind, at_ms, bytes) = match self.check_document(endpoint, version)? {
                Checked::Missing if version == newest => continue,
                Checked::Missing => break,
                Checked::Sound { document, at_ms } => {
                    (Some(document.kind), at_ms, document.canonical.len())
                }
                Checked::Damaged { at_ms, bytes, .. } => (None, at_ms.unwrap_or(0), bytes),
            };
            versions.push(StoredVersion {
                version,
                at_ms,
                kind,
                bytes,
            });
        }
        versions.reverse();
        Ok(versions)
    }

    /// Where version `version` of `endpoint`'s document is kept: in one
    /// of 256 directories, by the first byte of the stem.
    fn document_path(&self, endpoint: &str, version: u64) -> PathBuf {
        let stem = file_stem(endpoint);
        self.documents
            .join(&stem[..2])
            .join(format!("{stem}.{version}"))
    }

    /// A document file's header (or why it is garbage), and the file
    /// positioned after it. Missing when there is no such file, or only
    /// the start of one (written but never synced when the power went).
    fn open_document(&self, endpoint: &str, version: u64) -> Result<Opened, StoreError> {
        let path = self.document_path(endpoint, version);
        let mut header = [0; Header::LEN];
        let opened = std::fs::File::open(&path).and_then(|mut file| {
            file.read_exact(&mut header)?;
            Ok(file)
        });
        let file = match opened {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Opened::Missing);
            }
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::warn!(file = %path.display(), "a stored document was cut short: it is ignored");
                return Ok(Opened::Missing);
            }
            Err(source) => {
                return Err(StoreError::DocumentFile {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        Ok(Opened::File {
            header: Header::decode(&header),
            file,
            path,
        })
    }

    /// Writes a document file, not yet durable: see [`DocumentFile::sync`].
    fn write_document(
        &self,
        endpoint: &str,
        version: u64,
        document: &Document,
        at_ms: u64,
    ) -> Result<DocumentFile, StoreError> {
        let path = self.document_path(endpoint, version);
        let header = Header {
            kind: document.kind,
            at_ms,
            hash: document.hash,
        };
        let dir = path.parent().unwrap_or(&self.documents).to_path_buf();
        let created = match std::fs::File::create(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // Its shard was removed since the store was opened.
                std::fs::create_dir_all(&dir)
                    .and_then(|()| std::fs::File::open(&self.documents)?.sync_all())
                    .and_then(|()| std::fs::File::create(&path))
            }
            created => created,
        };
        let written = created.and_then(|mut file| {
            file.write_all(&header.encode())?;
            file.write_all(&document.canonical)?;
            Ok(file)
        });
        match written {
            Ok(file) => Ok(DocumentFile { file, path, dir }),
            Err(source) => Err(StoreError::DocumentFile {
                action: "write",
                path,
                source,
            }),
        }
    }

    /// Writes a new document file, then its snapshot and outbox rows in one
    /// transaction, makes them durable, then trims the history beyond
    /// `keep_history`. Until the flush is done the new rows are hidden from
    /// [`Store::outbox_rows`]: nothing reaches a receiver that a crash could
    /// make the store forget (it would come back as a new event, new id).
    pub async fn commit(&self, commit: &Commit<'_>) -> Result<Vec<OutboxKey>, StoreError> {
        let result = self.commit_unwatched(commit).await;
        self.watch(result)
    }

    async fn commit_unwatched(&self, commit: &Commit<'_>) -> Result<Vec<OutboxKey>, StoreError> {
        let snapshot = encode_snapshot(commit.snapshot);
        let version = commit.snapshot.version;
        // Before the snapshot refers to it. A crash before the snapshot is
        // written leaves a file that the version's next commit overwrites.
        let file = self.write_document(
            commit.endpoint,
            version,
            commit.document,
            commit.snapshot.changed_at_ms,
        )?;
        if commit.deliveries.is_empty() {
            // A baseline, or a change no event was made of: without rows
            // there is nothing to make atomic, and a plain write shares
            // sled's log buffers where each transaction seals one of its own
            // (the first pass over 10,000 endpoints took 2.5 times as long).
            self.trees()?.snapshots.insert(commit.endpoint, snapshot)?;
            self.trim_history(commit.endpoint, version, commit.keep_history);
            return Ok(Vec::new());
        }
        let rows = encode_rows(&commit.deliveries);
        // The events' diff needs the file even after a power cut.
        let path = file.path.clone();
        tokio::task::spawn_blocking(move || file.sync())
            .await
            .map_err(|error| StoreError::DocumentFile {
                action: "sync",
                path,
                source: std::io::Error::other(error),
            })??;
        // Every key a (possibly retried) transaction generated: unhidden when
        // this function ends, even if its caller drops it mid-flush.
        let generated = Unhide {
            store: self,
            keys: std::sync::Mutex::new(Vec::new()),
        };
        let trees = self.trees()?;
        let result = (&trees.snapshots, &trees.outbox, &trees.due)
            .transaction(|(snapshots, outbox, due)| {
                snapshots.insert(commit.endpoint.as_bytes(), snapshot.as_slice())?;
                self.insert_rows(outbox, due, &rows, &generated)
            })
            .map_err(transaction_error);
        let generation = trees.generation;
        // Not held over the flush: a reopening waits for every handle.
        drop(trees);
        let keys = self.flushed(result, generated, generation).await?;
        self.trim_history(commit.endpoint, version, commit.keep_history);
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
        let state = failing.map(encode_json);
        let rows = encode_rows(deliveries);
        let generated = Unhide {
            store: self,
            keys: std::sync::Mutex::new(Vec::new()),
        };
        let trees = match self.trees() {
            Ok(trees) => trees,
            Err(error) => return self.watch(Err(error)),
        };
        let result = (&trees.health, &trees.outbox, &trees.due)
            .transaction(|(health, outbox, due)| {
                match &state {
                    Some(state) => health.insert(endpoint.as_bytes(), state.as_slice())?,
                    None => health.remove(endpoint.as_bytes())?,
                };
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

    /// Inserts outbox rows and their `due` entries inside a transaction,
    /// hidden until flushed.
    fn insert_rows(
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
    async fn flushed(
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

    fn hide(&self, key: &OutboxKey) {
        lock(&self.unflushed).insert(key.clone());
    }

    /// Removes the document files older than the newest `keep`: usually
    /// the one version that just fell out, more after `keep_history` was
    /// lowered. A file that cannot be removed is logged and left.
    fn trim_history(&self, endpoint: &str, newest: u64, keep: usize) {
        let oldest_kept = newest.saturating_sub(keep.max(1) as u64) + 1;
        for version in (1..oldest_kept).rev() {
            let path = self.document_path(endpoint, version);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                // The versions before it went at earlier commits.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
                Err(error) => {
                    tracing::warn!(file = %path.display(), error = %error, "cannot remove an old document");
                }
            }
        }
    }

    /// Updates only the conditional-request validators of a snapshot (a
    /// server may send a new ETag for identical content).
    pub fn update_snapshot(&self, endpoint: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.watched(|trees| {
            trees
                .snapshots
                .insert(endpoint, encode_snapshot(snapshot))?;
            Ok(())
        })
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
    async fn flush_generation(&self, generation: u64) -> Result<(), StoreError> {
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

    /// The rows queued for a target that are safe to send, oldest first.
    pub fn outbox_rows(&self, target: &str) -> Result<Vec<QueuedRow>, StoreError> {
        self.watch(self.visible_rows(target).collect())
    }

    /// The rows queued for a target that are safe to send, oldest first,
    /// each decoded only when it is reached.
    fn visible_rows(
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
    fn is_hidden(&self, key: &OutboxKey) -> bool {
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

    fn count_queued(&self, added: usize, removed: usize) {
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
    fn count_logged_attempt(&self, trees: &Trees, target: &str) -> Result<(), StoreError> {
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

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.watched(|trees| Ok(trees.db.size_on_disk()?))
    }
}

/// An outbox row, encoded, with its target and due time.
struct EncodedRow<'a> {
    target: &'a str,
    bytes: Vec<u8>,
    due_ms: u64,
}

fn encode_rows<'a>(deliveries: &[(&'a str, OutboxRow)]) -> Vec<EncodedRow<'a>> {
    deliveries
        .iter()
        .map(|(target, row)| EncodedRow {
            target,
            bytes: encode_json(row),
            due_ms: row.next_attempt_ms,
        })
        .collect()
}

/// The `due` entry of an outbox row: its target's prefix, the time it is
/// due, then its sequence, so that a target's entries sort by due time and,
/// at the same time, in queue order.
fn due_key(key: &OutboxKey, due_ms: u64) -> Vec<u8> {
    let (target, sequence) = key.0.split_at(key.0.len() - 8);
    [target, &due_ms.to_be_bytes(), sequence].concat()
}

/// The outbox key and due time of a `due` entry.
fn from_due_key(entry: &[u8]) -> Result<(OutboxKey, u64), StoreError> {
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

fn prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 9);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// Document files are named by a hash of the endpoint's name, so that names
/// differing only in case stay apart on case-insensitive file systems.
fn file_stem(endpoint: &str) -> String {
    hex::encode(&Sha256::digest(endpoint.as_bytes())[..16])
}

/// The endpoint name and version number of a schema 1 `history` or schema
/// 2 `versions` key: the name, 0, the version (big-endian).
fn split_version_key(key: &[u8]) -> Result<(&str, u64), StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "version key",
        detail: format!("{} bytes", key.len()),
    };
    let (name, version) = key
        .len()
        .checked_sub(9)
        .map(|end| (&key[..end], &key[end + 1..]))
        .ok_or_else(corrupt)?;
    let name = std::str::from_utf8(name).map_err(|_| corrupt())?;
    Ok((name, decode_u64(version, "version number")?))
}

/// Creates the documents directory and its 256 shards, durably. Made all
/// at once: created as their first documents came, each cost a sync of the
/// documents directory on a runtime thread, and a fresh store's first
/// polls stalled behind them, then ran in bursts (at 10,000 endpoints, up
/// to 73 connections opened in the first 250 ms).
fn create_shards(documents: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(documents)?;
    let mut created = false;
    for byte in 0..=u8::MAX {
        match std::fs::create_dir(documents.join(format!("{byte:02x}"))) {
            Ok(()) => created = true,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
    }
    if created {
        std::fs::File::open(documents)?.sync_all()?;
    }
    Ok(())
}

/// A document file just written.
struct DocumentFile {
    file: std::fs::File,
    path: PathBuf,
    dir: PathBuf,
}

impl DocumentFile {
    /// Makes the file, and its name in the directory, survive a power cut.
    fn sync(self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all())
            .map_err(|source| StoreError::DocumentFile {
                action: "sync",
                path: self.path,
                source,
            })
    }
}

/// 9999-12-31T23:59:59.999Z: no document file was written later.
const LATEST_TIME_MS: u64 = 253_402_300_799_999;

/// A stored version of a document, as read back from its file.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Kept(Document),
    /// Never kept or trimmed since, or a file lost to a power cut.
    Missing,
    /// The file is there but does not hold what was written: its bytes do
    /// not hash to the hash in its header, or the header is garbage.
    Damaged {
        path: PathBuf,
        why: String,
    },
}

/// A document file opened, its header read.
enum Opened {
    Missing,
    File {
        header: Result<Header, String>,
        file: std::fs::File,
        path: PathBuf,
    },
}

/// A document file read whole and checked against its header.
enum Checked {
    Missing,
    Sound {
        document: Document,
        at_ms: u64,
    },
    Damaged {
        path: PathBuf,
        why: String,
        /// The header's time, when the header is sound.
        at_ms: Option<u64>,
        /// The file's size past the header.
        bytes: usize,
    },
}

/// What a document file starts with: kind (1 byte), time (8 bytes,
/// big-endian) and hash, so that neither listing nor diffing needs sled.
struct Header {
    kind: Kind,
    at_ms: u64,
    hash: [u8; 32],
}

impl Header {
    const LEN: usize = 1 + 8 + 32;

    fn encode(&self) -> [u8; Header::LEN] {
        let mut bytes = [0; Header::LEN];
        bytes[0] = self.kind as u8;
        bytes[1..9].copy_from_slice(&self.at_ms.to_be_bytes());
        bytes[9..].copy_from_slice(&self.hash);
        bytes
    }

    /// The header in `bytes`, or why they cannot be one: a kind no
    /// pollhook writes, or a time past the year 9999.
    fn decode(bytes: &[u8; Header::LEN]) -> Result<Header, String> {
        let kind = Kind::from_u8(bytes[0])
            .ok_or_else(|| format!("its header is garbage (document kind {})", bytes[0]))?;
        let mut at_ms = [0; 8];
        at_ms.copy_from_slice(&bytes[1..9]);
        let at_ms = u64::from_be_bytes(at_ms);
        if at_ms > LATEST_TIME_MS {
            return Err(format!("its header is garbage (time {at_ms} ms)"));
        }
        let mut hash = [0; 32];
        hash.copy_from_slice(&bytes[9..]);
        Ok(Header { kind, at_ms, hash })
    }
}

/// Unhides the outbox keys of a commit when dropped.
struct Unhide<'a> {
    store: &'a Store,
    keys: std::sync::Mutex<Vec<OutboxKey>>,
}

impl Unhide<'_> {
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

/// Reads a lock, also one a panicking thread left behind (it only ever
/// holds a complete value).
fn read<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks a mutex, also one a panicking thread left behind (the data are
/// plain sets and counters that stay consistent).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn rows_of(
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
fn target_of(key: &[u8]) -> String {
    let name = key.split(|byte| *byte == 0).next().unwrap_or_default();
    String::from_utf8_lossy(name).into_owned()
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

/// Keeps only the newest `cap` entries under `prefix` (keys end in a
/// sequence, so the first ones are the oldest).
fn trim_prefix(tree: &sled::Tree, prefix: &[u8], cap: usize) -> Result<(), StoreError> {
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

fn transaction_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => StoreError::Sled(error),
    }
}

fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain structs of strings and numbers: they always serialise.
    serde_json::to_vec(value).unwrap_or_default()
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

fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    // Numbers, byte arrays and strings: it always serialises.
    postcard::to_allocvec(snapshot).unwrap_or_default()
}

fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::Corrupt {
        what: "snapshot",
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

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{Rules, extract};

    #[test]
    fn a_panic_in_quiet_work_is_its_first_line_and_the_hook_is_back_after() {
        let message = quietly::<()>(|| panic!("index out of bounds\n  left: 1"));
        assert_eq!(message, Err("index out of bounds".to_string()));
        assert_eq!(quietly(|| 7), Ok(7));
        assert!(!QUIET.with(std::cell::Cell::get));
    }

    #[test]
    fn counting_stops_at_the_first_error_of_an_endless_one() {
        let endless = std::iter::once(Ok(1)).chain(std::iter::repeat_with(|| {
            Err(sled::Error::Unsupported("damaged".into()))
        }));
        assert!(count(endless).is_err());
        assert_eq!(count([Ok(1), Ok(2)].into_iter()).unwrap(), 2);
    }

    fn version_key(endpoint: &str, version: u64) -> Vec<u8> {
        let mut key = prefix(endpoint);
        key.extend_from_slice(&version.to_be_bytes());
        key
    }

    fn queued_row(event_id: &str, next_attempt_ms: u64) -> OutboxRow {
        OutboxRow {
            event_id: event_id.to_string(),
            event_type: "endpoint.changed".into(),
            endpoint: "api".into(),
            body: "{}".into(),
            next_attempt_ms,
            ..OutboxRow::default()
        }
    }

    /// The event ids of `target`'s rows due at `now_ms`, and the next due time.
    fn due_ids(store: &Store, now_ms: u64, limit: usize) -> (Vec<String>, Option<u64>) {
        let (rows, next) = store.due_rows("sink", now_ms, limit, |_| false).unwrap();
        (
            rows.into_iter().map(|(_, row)| row.event_id).collect(),
            next,
        )
    }

    /// An attempt's record and its row's fate are one write: after it,
    /// both are there.
    #[tokio::test]
    async fn an_attempt_is_settled_in_one_transaction_with_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rows = [
            ("sink", queued_row("gone", 100)),
            ("sink", queued_row("dead", 100)),
        ];
        let keys = store.commit_health("api", None, &rows).await.unwrap();
        let record = |event_id: &str| AttemptRecord {
            event_id: event_id.into(),
            attempt: 1,
            at_ms: 100,
            status: Some(410),
            duration_ms: 3,
            response: "gone".into(),
            error: None,
            next_attempt_ms: None,
        };
        let mut waiting = rows[0].1.clone();
        waiting.next_attempt_ms = 150;
        let pause = Pause {
            since_ms: 100,
            reason: "410".into(),
        };
        store
            .settle(
                &keys[0],
                100,
                Fate::Paused(&waiting, &pause),
                Some(&record("gone")),
            )
            .unwrap();
        assert_eq!(store.paused("sink").unwrap(), Some(pause));
        store
            .settle(&keys[1], 100, Fate::Dead(&rows[1].1), Some(&record("dead")))
            .unwrap();
        let logged: Vec<String> = store
            .attempt_log("sink")
            .unwrap()
            .into_iter()
            .map(|attempt| attempt.event_id)
            .collect();
        assert_eq!(logged, ["gone", "dead"]);
        assert_eq!(store.dead_rows(Some("sink")).unwrap().len(), 1);
        assert_eq!(store.outbox_len(), 1);
        assert_eq!(due_ids(&store, 149, 10), (vec![], Some(150)));
    }

    #[tokio::test]
    async fn due_rows_come_in_due_order_and_follow_every_move_of_their_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rows = [
            ("sink", queued_row("later", 500)),
            ("sink", queued_row("first", 100)),
            ("sink", queued_row("second", 100)),
            ("other", queued_row("elsewhere", 0)),
        ];
        let keys = store.commit_health("api", None, &rows).await.unwrap();

        assert_eq!(due_ids(&store, 50, 10), (vec![], Some(100)));
        // Same due time: queue order.
        assert_eq!(
            due_ids(&store, 100, 10),
            (vec!["first".into(), "second".into()], Some(500))
        );
        assert_eq!(due_ids(&store, 1000, 1), (vec!["first".into()], None));
        // A row being attempted is passed over.
        let (busy, _) = store
            .due_rows("sink", 100, 10, |key| *key == keys[1])
            .unwrap();
        assert_eq!(busy.len(), 1);
        assert_eq!(busy[0].1.event_id, "second");

        // `first` fails and waits; `second` is delivered; `later` runs out.
        let mut first = rows[1].1.clone();
        first.next_attempt_ms = 700;
        store
            .settle(&keys[1], 100, Fate::Rescheduled(&first), None)
            .unwrap();
        store.settle(&keys[2], 100, Fate::Delivered, None).unwrap();
        store
            .settle(&keys[0], 500, Fate::Dead(&rows[0].1), None)
            .unwrap();
        assert_eq!(due_ids(&store, 600, 10), (vec![], Some(700)));
        assert_eq!(due_ids(&store, 700, 10), (vec!["first".into()], None));

        // A replayed dead letter is due at once, behind the rest.
        let replayed = store
            .replay(&DeadFilter {
                target: Some("sink"),
                event_ids: &[],
                since_ms: None,
            })
            .unwrap();
        assert_eq!(replayed, ["sink"]);
        assert_eq!(
            due_ids(&store, u64::MAX, 10),
            (vec!["first".into(), "later".into()], None)
        );
        assert_eq!(
            store.trees().unwrap().due.len(),
            store.trees().unwrap().outbox.len()
        );
        assert_eq!(store.outbox_len(), 3);
        drop(store);
        write_pid(dir.path());
        assert_eq!(Store::open(dir.path()).unwrap().outbox_len(), 3);
    }

    #[test]
    fn a_store_opens_with_every_document_directory_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let shards = std::fs::read_dir(dir.path().join("documents"))
            .unwrap()
            .count();
        assert_eq!(shards, 256);
        for endpoint in ["api", "feed", "e9999"] {
            assert!(store.document_path(endpoint, 1).parent().unwrap().is_dir());
        }
        drop(store);
        write_pid(dir.path());
        // Opened again, they are all still there and nothing else is.
        Store::open(dir.path()).unwrap();
        let shards = std::fs::read_dir(dir.path().join("documents"))
            .unwrap()
            .count();
        assert_eq!(shards, 256);
    }

    #[tokio::test]
    async fn pending_rows_are_counted_per_endpoint_over_every_target() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let feed = OutboxRow {
            endpoint: "feed".into(),
            ..queued_row("feed", 0)
        };
        let rows = [
            ("sink", queued_row("api", 0)),
            ("other", queued_row("api", 0)),
            ("sink", feed.clone()),
        ];
        let keys = store.commit_health("api", None, &rows).await.unwrap();
        let counts = |store: &Store| {
            let mut counts: Vec<_> = store.pending_by_endpoint().unwrap().into_iter().collect();
            counts.sort();
            counts
        };
        assert_eq!(counts(&store), [("api".into(), 2), ("feed".into(), 1)]);

        store.settle(&keys[0], 0, Fate::Delivered, None).unwrap();
        store.settle(&keys[2], 0, Fate::Dead(&feed), None).unwrap();
        assert_eq!(counts(&store), [("api".into(), 1)]);
    }

    fn json(text: &str) -> Document {
        let rules = Rules::default();
        extract(text.as_bytes(), Some("application/json"), &rules).unwrap()
    }

    fn snapshot(version: u64, document: &Document) -> Snapshot {
        Snapshot {
            version,
            hash: document.hash,
            definition: [7; 32],
            etag: None,
            last_modified: None,
            changed_at_ms: 1000 + version,
        }
    }

    /// A snapshot as schemas 1 to 3 stored it: JSON, hashes in hex.
    fn json_snapshot(snapshot: &Snapshot) -> Vec<u8> {
        let json = serde_json::json!({
            "version": snapshot.version,
            "hash": hex::encode(snapshot.hash),
            "definition": hex::encode(snapshot.definition),
            "etag": snapshot.etag,
            "last_modified": snapshot.last_modified,
            "changed_at_ms": snapshot.changed_at_ms,
        });
        serde_json::to_vec(&json).unwrap()
    }

    async fn commit(store: &Store, version: u64, document: &Document, keep_history: usize) {
        let snapshot = snapshot(version, document);
        let commit = Commit {
            endpoint: "api.v1",
            snapshot: &snapshot,
            document,
            keep_history,
            deliveries: Vec::new(),
        };
        store.commit(&commit).await.unwrap();
    }

    /// The document files in `dir`'s store.
    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("documents"))
            .unwrap()
            .map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap().count())
            .sum()
    }

    #[tokio::test]
    async fn documents_live_in_files_and_leave_when_the_history_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let documents: Vec<Document> = (1..=4).map(|n| json(&format!(r#"{{"n":{n}}}"#))).collect();
        for (index, document) in documents.iter().enumerate() {
            commit(&store, index as u64 + 1, document, 2).await;
        }
        // Versions 3 and 4 are kept, each a file.
        assert_eq!(files(dir.path()), 2);
        assert_eq!(store.document("api.v1", 2).unwrap(), None);
        assert_eq!(
            store.document("api.v1", 4).unwrap().as_ref(),
            Some(&documents[3])
        );
        let versions = store.history("api.v1").unwrap();
        let listed: Vec<(u64, u64, usize)> = versions
            .iter()
            .map(|version| (version.version, version.at_ms, version.bytes))
            .collect();
        assert_eq!(listed, [(3, 1003, 7), (4, 1004, 7)]);

        // With `keep_history` lowered, every version that fell out goes.
        let fifth = json(r#"{"n":5}"#);
        commit(&store, 5, &fifth, 1).await;
        assert_eq!(files(dir.path()), 1);
        assert_eq!(store.history("api.v1").unwrap()[0].version, 5);

        // The newest file lost to a power cut, or cut short: no document,
        // and the history lists the versions still there.
        commit(&store, 6, &json(r#"{"n":6}"#), 2).await;
        std::fs::write(store.document_path("api.v1", 6), [Kind::Json as u8, 0, 0]).unwrap();
        assert_eq!(store.document("api.v1", 6).unwrap(), None);
        std::fs::remove_file(store.document_path("api.v1", 6)).unwrap();
        assert_eq!(store.document("api.v1", 6).unwrap(), None);
        let listed: Vec<u64> = store
            .history("api.v1")
            .unwrap()
            .iter()
            .map(|version| version.version)
            .collect();
        assert_eq!(listed, [5]);
    }

    #[tokio::test]
    async fn a_document_file_that_does_not_match_its_hash_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = json(r#"{"a":1,"b":[1,2]}"#);
        commit(&store, 1, &first, 5).await;
        assert_eq!(
            store.read_document("api.v1", 1).unwrap(),
            Stored::Kept(first.clone())
        );

        // A byte flipped in the document: `a` would seem to have been 7.
        let path = store.document_path("api.v1", 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = Header::LEN + br#"{"a":"#.len();
        assert_eq!(bytes[at], b'1');
        bytes[at] = b'7';
        std::fs::write(&path, &bytes).unwrap();
        let Stored::Damaged { path: named, why } = store.read_document("api.v1", 1).unwrap() else {
            panic!("a flipped byte went unnoticed");
        };
        assert_eq!(named, path);
        assert!(why.contains("SHA-256"), "{why}");
        assert_eq!(store.document("api.v1", 1).unwrap(), None);

        // A header overwritten: an unknown kind, or a valid one with a
        // time past any calendar.
        commit(&store, 2, &json(r#"{"a":2}"#), 5).await;
        commit(&store, 3, &json(r#"{"a":3}"#), 5).await;
        for (version, kind) in [(2, 156), (3, Kind::Json as u8)] {
            let path = store.document_path("api.v1", version);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[0] = kind;
            bytes[1..Header::LEN].fill(0xff);
            std::fs::write(&path, &bytes).unwrap();
            let stored = store.read_document("api.v1", version).unwrap();
            assert!(
                matches!(&stored, Stored::Damaged { why, .. } if why.contains("header is garbage")),
                "{stored:?}"
            );
        }
        let fourth = json(r#"{"a":4}"#);
        commit(&store, 4, &fourth, 5).await;
        let listed: Vec<(u64, u64, Option<Kind>)> = store
            .history("api.v1")
            .unwrap()
            .into_iter()
            .map(|version| (version.version, version.at_ms, version.kind))
            .collect();
        assert_eq!(
            listed,
            [
                (1, 1001, None),
                (2, 0, None),
                (3, 0, None),
                (4, 1004, Some(Kind::Json)),
            ]
        );
        assert_eq!(store.document("api.v1", 4).unwrap(), Some(fourth));
    }

    /// sled deadlocked when many `flush_async` calls filled its thread pool
    /// behind a waiting transaction; flushes now go one at a time.
    #[test]
    fn many_changes_committed_at_once_all_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let (done, finished) = std::sync::mpsc::channel();
        let committing = store.clone();
        // A deadlock blocks every thread of the runtime that commits, its
        // timers included: the test waits from outside it.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let queued = runtime.block_on(async move {
                let mut commits = tokio::task::JoinSet::new();
                for n in 0..500u64 {
                    let store = committing.clone();
                    commits.spawn(async move {
                        let name = format!("e{n}");
                        let document = json(&format!(r#"{{"n":{n}}}"#));
                        let snapshot = snapshot(2, &document);
                        let row = queued_row(&format!("msg_{n}"), 0);
                        let commit = Commit {
                            endpoint: &name,
                            snapshot: &snapshot,
                            document: &document,
                            keep_history: 2,
                            deliveries: vec![("sink", row)],
                        };
                        store.commit(&commit).await.unwrap().len()
                    });
                }
                let mut queued = 0;
                while let Some(keys) = commits.join_next().await {
                    queued += keys.unwrap();
                }
                queued
            });
            let _ = done.send(queued);
        });
        let queued = finished.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(queued.ok(), Some(500), "the commits did not all finish");
        assert_eq!(store.outbox_rows("sink").unwrap().len(), 500);
    }

    /// Marks a test store as written by this process, as `Store::open`
    /// does: sled may keep its lock for a moment after the drop, which
    /// `Store::open` waits out for this pid.
    fn write_pid(dir: &Path) {
        std::fs::write(dir.join("pollhook.pid"), std::process::id().to_string()).unwrap();
    }

    /// Stores `version` as the schema of `db`, durably.
    fn set_schema(db: &sled::Db, version: u64) {
        db.open_tree("meta")
            .unwrap()
            .insert(SCHEMA_KEY, &version.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }

    fn schema(store: &Store) -> u64 {
        let meta = store.trees().unwrap().db.open_tree("meta").unwrap();
        decode_u64(&meta.get(SCHEMA_KEY).unwrap().unwrap(), "schema").unwrap()
    }

    #[tokio::test]
    async fn a_schema_1_store_moves_its_documents_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let document = json(r#"{"b":[1,2],"a":"x"}"#);
        {
            // A store as pollhook 0.1 with schema 1 wrote it.
            let db = sled::open(dir.path().join("db")).unwrap();
            set_schema(&db, 1);
            db.open_tree("snapshots")
                .unwrap()
                .insert("api.v1", json_snapshot(&snapshot(7, &document)))
                .unwrap();
            let mut value = vec![Kind::Json as u8];
            value.extend_from_slice(&1007u64.to_be_bytes());
            value.extend_from_slice(&document.canonical);
            db.open_tree("history")
                .unwrap()
                .insert(version_key("api.v1", 7), value)
                .unwrap();
            db.flush().unwrap();
            write_pid(dir.path());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.snapshot("api.v1").unwrap(),
            Some(snapshot(7, &document))
        );
        assert_eq!(store.document("api.v1", 7).unwrap(), Some(document.clone()));
        assert_eq!(store.history("api.v1").unwrap()[0].at_ms, 1007);
        assert_eq!(files(dir.path()), 1);
        assert!(
            !store
                .trees()
                .unwrap()
                .db
                .tree_names()
                .iter()
                .any(|name| name == b"history")
        );
        drop(store);

        // Opened again, the store is at the current schema and has nothing
        // to move.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(schema(&store), SCHEMA_VERSION);
        assert_eq!(store.document("api.v1", 7).unwrap(), Some(document));
    }

    #[tokio::test]
    async fn a_schema_2_store_moves_each_description_into_its_document_file() {
        let dir = tempfile::tempdir().unwrap();
        let documents = [json(r#"{"v":1}"#), json(r#"{"v":22}"#)];
        {
            // A store as schema 2 left it: files named `<stem>-<version>`,
            // each described by a `versions` entry (kind, time, size, hash).
            let db = sled::open(dir.path().join("db")).unwrap();
            set_schema(&db, 2);
            db.open_tree("snapshots")
                .unwrap()
                .insert("api.v1", json_snapshot(&snapshot(2, &documents[1])))
                .unwrap();
            let versions = db.open_tree("versions").unwrap();
            std::fs::create_dir(dir.path().join("documents")).unwrap();
            for (version, document) in (1u64..).zip(&documents) {
                let mut value = vec![document.kind as u8];
                value.extend_from_slice(&(1000 + version).to_be_bytes());
                value.extend_from_slice(&(document.canonical.len() as u64).to_be_bytes());
                value.extend_from_slice(&document.hash);
                versions
                    .insert(version_key("api.v1", version), value)
                    .unwrap();
                let file = format!("documents/{}-{version}", file_stem("api.v1"));
                std::fs::write(dir.path().join(file), &document.canonical).unwrap();
            }
            db.flush().unwrap();
            write_pid(dir.path());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(schema(&store), SCHEMA_VERSION);
        assert_eq!(
            store.snapshot("api.v1").unwrap(),
            Some(snapshot(2, &documents[1]))
        );
        assert!(
            !store
                .trees()
                .unwrap()
                .db
                .tree_names()
                .iter()
                .any(|name| name == b"versions")
        );
        assert_eq!(files(dir.path()), 2);
        for (version, document) in (1u64..).zip(&documents) {
            assert_eq!(
                store.document("api.v1", version).unwrap().as_ref(),
                Some(document)
            );
        }
        let listed: Vec<(u64, u64, usize)> = store
            .history("api.v1")
            .unwrap()
            .iter()
            .map(|version| (version.version, version.at_ms, version.bytes))
            .collect();
        assert_eq!(listed, [(1, 1001, 7), (2, 1002, 8)]);
    }

    #[tokio::test]
    async fn a_schema_3_store_keeps_its_snapshots_in_postcard() {
        let dir = tempfile::tempdir().unwrap();
        let mut with_validators = snapshot(3, &json(r#"{"v":3}"#));
        with_validators.etag = Some("\"abc\"".to_string());
        with_validators.last_modified = Some("Mon, 23 Nov 2026 10:00:00 GMT".to_string());
        let snapshots = [
            ("a", snapshot(1, &json(r#"{"v":1}"#))),
            ("b", with_validators),
        ];
        let json_bytes = {
            let db = sled::open(dir.path().join("db")).unwrap();
            set_schema(&db, 3);
            let tree = db.open_tree("snapshots").unwrap();
            for (endpoint, snapshot) in &snapshots {
                tree.insert(endpoint, json_snapshot(snapshot)).unwrap();
            }
            db.flush().unwrap();
            write_pid(dir.path());
            json_snapshot(&snapshots[1].1).len()
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(schema(&store), SCHEMA_VERSION);
        for (endpoint, snapshot) in &snapshots {
            assert_eq!(store.snapshot(endpoint).unwrap().as_ref(), Some(snapshot));
        }
        let stored = store
            .trees()
            .unwrap()
            .snapshots
            .get("b")
            .unwrap()
            .unwrap()
            .len();
        assert!(
            stored * 2 < json_bytes,
            "{stored} bytes, {json_bytes} as JSON"
        );

        // A migration that stopped after converting, before storing the
        // schema, is run again over snapshots already converted.
        set_schema(&store.trees().unwrap().db, 3);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(schema(&store), SCHEMA_VERSION);
        for (endpoint, snapshot) in &snapshots {
            assert_eq!(store.snapshot(endpoint).unwrap().as_ref(), Some(snapshot));
        }
    }

    #[tokio::test]
    async fn a_schema_4_store_indexes_its_outbox_by_due_time() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let rows = [
                ("sink", queued_row("a", 300)),
                ("sink", queued_row("b", 200)),
            ];
            store.commit_health("api", None, &rows).await.unwrap();
            // What schema 4 had: the rows, no index.
            store.trees().unwrap().db.drop_tree("due").unwrap();
            set_schema(&store.trees().unwrap().db, 4);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(schema(&store), SCHEMA_VERSION);
        assert_eq!(due_ids(&store, 250, 10), (vec!["b".into()], Some(300)));
        assert_eq!(
            due_ids(&store, 300, 10),
            (vec!["b".into(), "a".into()], None)
        );
    }

    #[tokio::test]
    async fn a_schema_5_store_moves_its_document_files_into_shards() {
        let dir = tempfile::tempdir().unwrap();
        let document = json(r#"{"v":1}"#);
        let flat = {
            let store = Store::open(dir.path()).unwrap();
            commit(&store, 1, &document, 5).await;
            commit(&store, 2, &document, 5).await;
            // Where schema 5 kept them: all in `documents/`.
            let mut flat = Vec::new();
            for version in [1, 2] {
                let sharded = store.document_path("api.v1", version);
                let root = dir
                    .path()
                    .join("documents")
                    .join(sharded.file_name().unwrap());
                std::fs::rename(&sharded, &root).unwrap();
                flat.push(root);
            }
            set_schema(&store.trees().unwrap().db, 5);
            flat
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(schema(&store), SCHEMA_VERSION);
        assert!(flat.iter().all(|path| !path.exists()));
        assert_eq!(store.history("api.v1").unwrap().len(), 2);
        assert_eq!(store.document("api.v1", 1).unwrap(), Some(document));
    }
}
