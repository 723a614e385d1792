//! Snapshots and the document files of the kept versions: one file per
//! version, in 256 directories, each starting with its kind, time and hash,
//! checked against that hash when it is read.

use super::*;

impl Store {
    pub fn snapshot(&self, endpoint: &str) -> Result<Option<Snapshot>, StoreError> {
        self.watched(|trees| {
            trees
                .snapshots
                .get(endpoint)?
                .map(|bytes| decode_snapshot(&bytes))
                .transpose()
        })
    }

    /// Records when endpoints last polled: a checkpoint, so that after a
    /// restart each resumes its schedule where it was. One insert each,
    /// not one batch: each stands alone, and sled holds a whole batch (and
    /// its log reservation) in memory, 37 MiB at 10,000 endpoints, which
    /// was the daemon's peak RSS.
    pub fn record_polls<'a>(
        &self,
        polls: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Result<(), StoreError> {
        self.watched(|trees| {
            for (endpoint, at_ms) in polls {
                trees.polled.insert(endpoint, &at_ms.to_be_bytes())?;
            }
            Ok(())
        })
    }

    /// When `endpoint` last polled, as of the last checkpoint.
    pub fn last_poll_ms(&self, endpoint: &str) -> Result<Option<u64>, StoreError> {
        self.watched(|trees| {
            trees
                .polled
                .get(endpoint)?
                .map(|bytes| decode_u64(&bytes, "last poll"))
                .transpose()
        })
    }

    /// An item-mode endpoint's seen keys; none yet for one never committed.
    pub fn seen(&self, endpoint: &str) -> Result<crate::seen::SeenKeys, StoreError> {
        self.watched(|trees| {
            Ok(trees
                .seen
                .get(endpoint)?
                .map(|bytes| crate::seen::SeenKeys::decode(&bytes))
                .unwrap_or_default())
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
    pub(super) fn check_document(
        &self,
        endpoint: &str,
        version: u64,
    ) -> Result<Checked, StoreError> {
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
    pub(super) fn document_path(&self, endpoint: &str, version: u64) -> PathBuf {
        let stem = file_stem(endpoint);
        self.documents
            .join(&stem[..2])
            .join(format!("{stem}.{version}"))
    }

    /// A document file's header (or why it is garbage), and the file
    /// positioned after it. Missing when there is no such file, or only
    /// the start of one (written but never synced when the power went).
    pub(super) fn open_document(&self, endpoint: &str, version: u64) -> Result<Opened, StoreError> {
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

    /// Writes a document file, not yet durable.
    pub(super) fn write_document(
        &self,
        endpoint: &str,
        version: u64,
        document: &Document,
        at_ms: u64,
    ) -> Result<DocumentFile, StoreError> {
        self.unwritten_document(endpoint, version, document, at_ms)
            .write()
    }

    /// A document file to write: see [`UnwrittenDocument::write`] and
    /// [`Store::write_durably`].
    pub(super) fn unwritten_document<'a>(
        &self,
        endpoint: &str,
        version: u64,
        document: &'a Document,
        at_ms: u64,
    ) -> UnwrittenDocument<'a> {
        let path = self.document_path(endpoint, version);
        let header = Header {
            kind: document.kind,
            at_ms,
            hash: document.hash,
        };
        UnwrittenDocument {
            dir: path.parent().unwrap_or(&self.documents).to_path_buf(),
            documents: self.documents.clone(),
            path,
            header: header.encode(),
            canonical: std::borrow::Cow::Borrowed(&document.canonical),
        }
    }

    /// Removes the document files older than the newest `keep`: usually
    /// the one version that just fell out, more after `keep_history` was
    /// lowered. A file that cannot be removed is logged and left.
    pub(super) fn trim_history(
        &self,
        endpoint: &str,
        snapshot: &Snapshot,
        released: Option<u64>,
        keep: usize,
    ) {
        let oldest_kept = snapshot.version.saturating_sub(keep.max(1) as u64) + 1;
        let remove = |version: u64| {
            let path = self.document_path(endpoint, version);
            let result = std::fs::remove_file(&path);
            if let Err(error) = &result
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %path.display(), error = %error, "cannot remove an old document");
            }
            result
        };
        for version in (1..oldest_kept).rev() {
            // Kept while `when_previous = "notified"` compares with it.
            if version == snapshot.notified {
                continue;
            }
            match remove(version) {
                // The versions before it went at earlier commits.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
                _ => {}
            }
        }
        // The version notified before, kept past the others until now.
        if let Some(released) = released.filter(|v| *v < oldest_kept && *v != snapshot.notified) {
            let _ = remove(released);
        }
    }

    /// Updates only the conditional-request validators of a snapshot (a
    /// server may send a new ETag for identical content).
    pub fn update_snapshot(&self, endpoint: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.watched(|trees| {
            trees
                .snapshots
                .insert(endpoint, encode_snapshot(snapshot))?;
            self.note_commit(endpoint);
            Ok(())
        })
    }
}

/// Document files are named by a hash of the endpoint's name, so that names
/// differing only in case stay apart on case-insensitive file systems.
pub(super) fn file_stem(endpoint: &str) -> String {
    hex::encode(&Sha256::digest(endpoint.as_bytes())[..16])
}

/// Creates the documents directory and its 256 shards, durably. Made all
/// at once: created as their first documents came, each cost a sync of the
/// documents directory on a runtime thread, and a fresh store's first
/// polls stalled behind them, then ran in bursts (at 10,000 endpoints, up
/// to 73 connections opened in the first 250 ms).
pub(super) fn create_shards(documents: &Path) -> std::io::Result<()> {
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

impl Store {
    /// Writes `document` and makes it durable together with the other
    /// document files waiting for it (group sync): one sync runs at a time,
    /// and it takes every file queued while the one before ran. Each
    /// change's `fdatasync` and directory `fsync` was a journal commit of
    /// its own: 100 changes in one pass cost 200 of them, where a group of
    /// any size costs about one. The group runs on a blocking thread, which
    /// also creates and writes the files, from its own copy of each
    /// document (the poll's report still shows it): on the runtime's
    /// thread, where `once` polls, that was a twentieth of its time in a
    /// pass over 1,000 endpoints that finds 100 changes.
    pub(super) async fn write_durably(
        &self,
        document: UnwrittenDocument<'_>,
    ) -> Result<(), StoreError> {
        let path = document.path.clone();
        let (done, synced) = tokio::sync::oneshot::channel();
        lock(&self.unsynced).push((document.into_owned(), done));
        {
            let _syncing = self.syncing.lock().await;
            // Empty when the sync before took this file too.
            let group = std::mem::take(&mut *lock(&self.unsynced));
            if !group.is_empty() {
                // The files answer from the blocking thread, so that a
                // caller dropped meanwhile leaves no other waiting.
                let _ = tokio::task::spawn_blocking(move || sync_group(group)).await;
            }
        }
        synced.await.unwrap_or_else(|_| {
            Err(StoreError::DocumentFile {
                action: "sync",
                path,
                source: std::io::Error::other("the sync did not finish"),
            })
        })
    }
}

/// A document file waiting to be written and synced, and who waits for it.
pub(super) type Unsynced = (
    UnwrittenDocument<'static>,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// Writes a group of document files, syncs them and their directories,
/// each directory once, and tells each file's waiter how it went.
fn sync_group(group: Vec<Unsynced>) {
    let mut written = Vec::with_capacity(group.len());
    for (document, done) in group {
        match document.write() {
            Ok(file) => written.push((file, done)),
            Err(error) => {
                let _ = done.send(Err(error));
            }
        }
    }
    // Writing every file back first lets the file system put them all in
    // one journal commit, which the first `fdatasync` then waits for; the
    // others find their data already on disk. Only a hint: an error shows
    // in the `fdatasync` after it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (document, _) in &written {
        use std::os::fd::AsRawFd as _;
        // SAFETY: the descriptor is open (the file is owned by `document`).
        unsafe {
            libc::sync_file_range(document.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    let mut by_dir: Vec<(PathBuf, Vec<(DocumentFile, _)>)> = Vec::new();
    for (document, done) in written {
        if let Err(source) = document.file.sync_data() {
            let _ = done.send(Err(StoreError::DocumentFile {
                action: "sync",
                path: document.path,
                source,
            }));
            continue;
        }
        match by_dir.iter_mut().find(|(dir, _)| *dir == document.dir) {
            Some((_, files)) => files.push((document, done)),
            None => by_dir.push((document.dir.clone(), vec![(document, done)])),
        }
    }
    for (dir, files) in by_dir {
        let synced = std::fs::File::open(&dir).and_then(|dir| dir.sync_all());
        for (document, done) in files {
            let _ =
                done.send(
                    synced
                        .as_ref()
                        .map(|_| ())
                        .map_err(|error| StoreError::DocumentFile {
                            action: "sync",
                            path: document.path,
                            source: same_error(error),
                        }),
                );
        }
    }
}

/// An IO error as another copy, for each of the files it failed.
fn same_error(error: &std::io::Error) -> std::io::Error {
    match error.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(error.kind(), error.to_string()),
    }
}

/// A document file to write: its header and contents, and where.
pub(super) struct UnwrittenDocument<'a> {
    path: PathBuf,
    dir: PathBuf,
    /// The documents directory, whose shard `dir` is.
    documents: PathBuf,
    header: [u8; Header::LEN],
    canonical: std::borrow::Cow<'a, [u8]>,
}

impl UnwrittenDocument<'_> {
    fn into_owned(self) -> UnwrittenDocument<'static> {
        UnwrittenDocument {
            canonical: std::borrow::Cow::Owned(self.canonical.into_owned()),
            path: self.path,
            dir: self.dir,
            documents: self.documents,
            header: self.header,
        }
    }

    /// Creates (or replaces) the file and writes it, not yet durable.
    pub(super) fn write(self) -> Result<DocumentFile, StoreError> {
        let created = match std::fs::File::create(&self.path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // Its shard was removed since the store was opened.
                std::fs::create_dir_all(&self.dir)
                    .and_then(|()| std::fs::File::open(&self.documents)?.sync_all())
                    .and_then(|()| std::fs::File::create(&self.path))
            }
            created => created,
        };
        let written = created.and_then(|mut file| {
            file.write_all(&self.header)?;
            file.write_all(&self.canonical)?;
            Ok(file)
        });
        match written {
            Ok(file) => Ok(DocumentFile {
                file,
                path: self.path,
                dir: self.dir,
            }),
            Err(source) => Err(StoreError::DocumentFile {
                action: "write",
                path: self.path,
                source,
            }),
        }
    }
}

/// A document file just written.
pub(super) struct DocumentFile {
    file: std::fs::File,
    pub(super) path: PathBuf,
    dir: PathBuf,
}

impl DocumentFile {
    /// Makes the file, and its name in the directory, survive a power cut.
    pub(super) fn sync(self) -> Result<(), StoreError> {
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
pub(super) const LATEST_TIME_MS: u64 = 253_402_300_799_999;

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
pub(super) enum Opened {
    Missing,
    File {
        header: Result<Header, String>,
        file: std::fs::File,
        path: PathBuf,
    },
}

/// A document file read whole and checked against its header.
pub(super) enum Checked {
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
pub(super) struct Header {
    kind: Kind,
    at_ms: u64,
    hash: [u8; 32],
}

impl Header {
    pub(super) const LEN: usize = 1 + 8 + 32;

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
