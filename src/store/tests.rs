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

/// The record of a first attempt at `at_ms` 100 that was answered `status`.
fn attempt_record(event_id: &str, status: u16) -> AttemptRecord {
    AttemptRecord {
        event_id: event_id.into(),
        attempt: 1,
        at_ms: 100,
        status: Some(status),
        duration_ms: 3,
        response: String::new(),
        error: None,
        next_attempt_ms: None,
    }
}

/// The event ids in `sink`'s attempt log, oldest first.
fn logged_ids(store: &Store) -> Vec<String> {
    store
        .attempt_log("sink")
        .unwrap()
        .into_iter()
        .map(|attempt| attempt.event_id)
        .collect()
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
    let record = |event_id: &str| attempt_record(event_id, 410);
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
    assert_eq!(logged_ids(&store), ["gone", "dead"]);
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

/// sled writes its snapshot to `snap.<lsn>.generating` while it opens and
/// renames it once complete; a kill before the rename leaves the file, and
/// sled 0.34 would take it for its newest snapshot and refuse the database.
#[tokio::test]
async fn a_snapshot_left_unfinished_by_a_kill_is_no_damage() {
    let dir = tempfile::tempdir().unwrap();
    let document = json(r#"{"v":1}"#);
    {
        let store = Store::open(dir.path()).unwrap();
        commit(&store, 1, &document, 5).await;
    }
    write_pid(dir.path());
    for (lsn, content) in [
        ("0000000000000000", &b""[..]),
        ("FFFFFFFFFFFFFFFF", b"half a snapshot"),
    ] {
        let unfinished = dir.path().join(format!("db/snap.{lsn}.generating"));
        std::fs::write(&unfinished, content).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.document("api.v1", 1).unwrap(), Some(document.clone()));
        assert!(!unfinished.exists());
    }
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
        notified: version,
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
        seen: None,
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
                        seen: None,
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

/// The document files of changes with events are created on the group
/// sync's thread: a file whose shard was removed since the store opened is
/// written in a shard made again, and one that cannot be written fails its
/// own commit, not the others committed with it.
#[tokio::test]
async fn a_group_of_document_files_is_written_each_on_its_own_merits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let names: Vec<String> = (0..8).map(|n| format!("e{n}")).collect();
    let shard = |name: &str| store.document_path(name, 2).parent().unwrap().to_path_buf();
    // The first loses its shard; in the second's, its file's name is taken
    // by a directory, which no file can replace.
    std::fs::remove_dir(shard(&names[0])).unwrap();
    std::fs::create_dir(store.document_path(&names[1], 2)).unwrap();
    let documents: Vec<Document> = (0..8).map(|n| json(&format!(r#"{{"n":{n}}}"#))).collect();
    let snapshots: Vec<Snapshot> = documents.iter().map(|d| snapshot(2, d)).collect();
    let commits: Vec<Commit<'_>> = (0..8)
        .map(|n| Commit {
            endpoint: &names[n],
            snapshot: &snapshots[n],
            document: &documents[n],
            keep_history: 2,
            deliveries: vec![("sink", queued_row(&format!("msg_{n}"), 0))],
            seen: None,
        })
        .collect();
    let results = futures_util::future::join_all(commits.iter().map(|c| store.commit(c))).await;
    for (n, result) in results.iter().enumerate() {
        match n {
            1 => assert!(
                matches!(
                    result,
                    Err(StoreError::DocumentFile {
                        action: "write",
                        ..
                    })
                ),
                "{result:?}"
            ),
            _ => assert_eq!(
                result.as_ref().map(Vec::len).ok(),
                Some(1),
                "{n}: {result:?}"
            ),
        }
    }
    for n in [0, 2, 7] {
        assert_eq!(
            store.document(&names[n], 2).unwrap(),
            Some(documents[n].clone())
        );
    }
    assert_eq!(store.snapshot(&names[1]).unwrap(), None);
    assert_eq!(store.outbox_rows("sink").unwrap().len(), 7);
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

#[tokio::test]
async fn a_schema_6_store_gives_each_snapshot_its_own_version_as_notified() {
    #[derive(serde::Serialize)]
    struct SnapshotV6<'a> {
        version: u64,
        hash: [u8; 32],
        definition: [u8; 32],
        etag: Option<&'a str>,
        last_modified: Option<&'a str>,
        changed_at_ms: u64,
    }
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let mut snapshot = snapshot(4, &json(r#"{"v":4}"#));
        snapshot.etag = Some("\"e\"".into());
        snapshot
    };
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        set_schema(&db, 6);
        let old = SnapshotV6 {
            version: 4,
            hash: expected.hash,
            definition: expected.definition,
            etag: Some("\"e\""),
            last_modified: None,
            changed_at_ms: expected.changed_at_ms,
        };
        db.open_tree("snapshots")
            .unwrap()
            .insert("a", postcard::to_allocvec(&old).unwrap())
            .unwrap();
        db.flush().unwrap();
        write_pid(dir.path());
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(schema(&store), SCHEMA_VERSION);
    assert_eq!(store.snapshot("a").unwrap(), Some(expected.clone()));
    // Run again over what it converted (a crash before the schema number).
    set_schema(&store.trees().unwrap().db, 6);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.snapshot("a").unwrap(), Some(expected));
}
