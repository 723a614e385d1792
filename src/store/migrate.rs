//! Migrations: each step takes an older store one schema further, and can
//! be run again if a crash interrupts it.

use super::*;

impl Store {
    /// Schema 4 → 5: every outbox row gets its entry in the `due` index.
    pub(super) fn index_outbox(&self) -> Result<(), StoreError> {
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
    pub(super) fn documents_into_shards(&self) -> Result<(), StoreError> {
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
    pub(super) fn documents_from_history(&self) -> Result<(), StoreError> {
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
    pub(super) fn snapshots_to_postcard(&self) -> Result<(), StoreError> {
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
                    continue;
                };
                let snapshot = Snapshot {
                    version: json.version,
                    hash: sha256(&json.hash)?,
                    definition: sha256(&json.definition)?,
                    etag: json.etag,
                    last_modified: json.last_modified,
                    changed_at_ms: json.changed_at_ms,
                    notified: json.version,
                };
                batch.insert(key, encode_snapshot(&snapshot));
            }
            trees.snapshots.apply_batch(batch)?;
            Ok(())
        })
    }

    /// Schema 6 → 7: each snapshot gains `notified`, its own version (the
    /// meaning every endpoint had). A snapshot that has it already (a run
    /// that stopped before storing the schema) reads the same: postcard
    /// leaves trailing bytes unread.
    pub(super) fn snapshots_gain_notified(&self) -> Result<(), StoreError> {
        self.watched(|trees| {
            #[derive(Deserialize)]
            struct SnapshotV6 {
                version: u64,
                hash: [u8; 32],
                definition: [u8; 32],
                etag: Option<String>,
                last_modified: Option<String>,
                changed_at_ms: u64,
            }
            let mut batch = sled::Batch::default();
            for entry in trees.snapshots.iter() {
                let (key, value) = entry?;
                let old: SnapshotV6 =
                    postcard::from_bytes(&value).map_err(|error| StoreError::Corrupt {
                        what: "snapshot",
                        detail: error.to_string(),
                    })?;
                let snapshot = Snapshot {
                    version: old.version,
                    hash: old.hash,
                    definition: old.definition,
                    etag: old.etag,
                    last_modified: old.last_modified,
                    changed_at_ms: old.changed_at_ms,
                    notified: old.version,
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
    pub(super) fn documents_from_versions(&self) -> Result<(), StoreError> {
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
}

/// The endpoint name and version number of a schema 1 `history` or schema
/// 2 `versions` key: the name, 0, the version (big-endian).
pub(super) fn split_version_key(key: &[u8]) -> Result<(&str, u64), StoreError> {
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
