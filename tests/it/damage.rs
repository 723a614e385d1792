//! A damaged store: document files with flipped bytes or an overwritten
//! header, and a sled database cut short. The daemon re-baselines instead of
//! sending a diff against garbage, the CLI says what is damaged, and nothing
//! panics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pollhook::store::{Fate, OutboxRow, Store};
use serde_json::json;

use crate::cli::{binary, text};
use crate::support::{Api, Daemon, Receiver, Reply, SECRET, eventually, simple_config};

/// The length of a document file's header: kind, time, SHA-256.
const HEADER: usize = 1 + 8 + 32;

/// The file of `version` of the only endpoint of the store in `state`.
fn document_file(state: &Path, version: u64) -> Option<PathBuf> {
    let suffix = format!(".{version}");
    std::fs::read_dir(state.join("documents"))
        .ok()?
        .flat_map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().ends_with(&suffix))
}

/// Waits until `version` is stored, and returns its file.
async fn stored(state: &Path, version: u64) -> PathBuf {
    eventually(&format!("version {version} is stored"), || {
        document_file(state, version).is_some()
    })
    .await;
    document_file(state, version).unwrap()
}

/// Replaces the first `from` after the header with `to`, keeping the header.
fn flip(file: &Path, from: &str, to: &str) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = HEADER
        + bytes[HEADER..]
            .windows(from.len())
            .position(|window| window == from.as_bytes())
            .unwrap_or_else(|| panic!("`{from}` in {}", String::from_utf8_lossy(&bytes)));
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    std::fs::write(file, bytes).unwrap();
}

/// Overwrites the header: a kind no pollhook wrote, a time past any
/// calendar, and a hash of nothing.
fn overwrite_header(file: &Path, kind: u8) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[0] = kind;
    bytes[1..9].fill(0xff);
    bytes[9..HEADER].fill(0x5a);
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_document_is_re_baselined_quietly_not_diffed() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1,"b":"x"}"#)).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));

    // Bytes flipped in the stored baseline: `a` seems to have been 7.
    let baseline = stored(state.path(), 1).await;
    flip(&baseline, r#""a":1"#, r#""a":7"#);
    api.set(Reply::json(r#"{"a":1,"b":"y"}"#));
    let rebaselined = stored(state.path(), 2).await;
    // And the header of the new one overwritten.
    api.wait_for_requests(3).await;
    overwrite_header(&rebaselined, 156);
    api.set(Reply::json(r#"{"a":1,"b":"z"}"#));
    stored(state.path(), 3).await;

    // The endpoint goes on: the next change is diffed against a sound document.
    api.set(Reply::json(r#"{"a":1,"b":"w"}"#));
    receiver
        .wait_until(Duration::from_secs(10), "the next change", |hooks| {
            !hooks.is_empty()
        })
        .await;
    api.wait_for_requests(3).await;
    daemon.stop().await;

    let hooks = receiver.accepted();
    assert_eq!(
        hooks.len(),
        1,
        "no event from a diff against garbage: {hooks:#?}"
    );
    assert!(hooks[0].signature_verifies(SECRET));
    let event = hooks[0].json();
    assert_eq!(event["data"]["version"], 4, "{event}");
    assert_eq!(event["data"]["previous_version"], 3, "{event}");
    assert_eq!(
        event["data"]["patch"],
        json!([{"op": "replace", "path": "/b", "value": "w"}])
    );
    let store = Store::open(state.path()).unwrap();
    assert_eq!(store.snapshot("data").unwrap().unwrap().version, 4);
}

fn write_config(dir: &Path, api: &Api, receiver: &Receiver) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[target]]\nname = \"receiver\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
         [[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"1h\"\nkeep_history = 10\n",
        dir.join("state").display(),
        receiver.url(),
        api.url()
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn run(args: &[&str]) -> std::process::Output {
    let output = binary().args(args).output();
    tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the command finished")
        .unwrap()
}

/// Neither a panic nor a backtrace hint in what a command printed.
fn no_panic(output: &std::process::Output) {
    let stderr = text(&output.stderr);
    assert_ne!(output.status.code(), Some(101), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_which_versions_are_damaged_and_refuses_to_diff_them() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"n":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = write_config(dir.path(), &api, &receiver);
    let config = config.to_str().unwrap();
    for n in 1..=4 {
        api.set(Reply::json(&format!(r#"{{"n":{n}}}"#)));
        let output = run(&["once", "-c", config, "--send"]).await;
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
    let state = dir.path().join("state");
    // Version 1's header overwritten (a valid kind, a garbage time and
    // hash), a byte of version 2 flipped.
    overwrite_header(&document_file(&state, 1).unwrap(), 1);
    flip(&document_file(&state, 2).unwrap(), r#""n":2"#, r#""n":9"#);

    let output = run(&["history", "-c", config, "data"]).await;
    no_panic(&output);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listing = text(&output.stdout);
    let rows: Vec<Vec<&str>> = listing
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .collect();
    let kinds: Vec<(&str, &str)> = rows.iter().map(|row| (row[0], row[2])).collect();
    assert_eq!(
        kinds,
        [
            ("1", "damaged"),
            ("2", "damaged"),
            ("3", "json"),
            ("4", "json")
        ],
        "{listing}"
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("version 1") && stderr.contains("version 2"),
        "{stderr}"
    );

    let output = run(&["history", "-c", config, "data", "--diff", "2", "3"]).await;
    no_panic(&output);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("version 2 of `data` is damaged"),
        "{}",
        text(&output.stderr)
    );
    let output = run(&["history", "-c", config, "data", "--diff", "3", "4"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains(r#""path": "/n""#));
}

/// Writes a store whose sled log has been rewritten many times over, as a
/// long-running daemon's is: its snapshot then refers to segments far into
/// the file, and a cut in the file leaves them behind.
async fn churned_store(state: &Path) {
    for _ in 0..2 {
        let store = Store::open(state).unwrap();
        let row = OutboxRow {
            event_id: "msg_churn".into(),
            event_type: "endpoint.changed".into(),
            endpoint: "data".into(),
            body: "x".repeat(20_000),
            ..OutboxRow::default()
        };
        let keys = store
            .commit_health("data", None, &[("receiver", row.clone())])
            .await
            .unwrap();
        let mut due_ms = 0;
        for attempt in 1..=1500 {
            let row = OutboxRow {
                attempts: attempt,
                next_attempt_ms: u64::from(attempt),
                ..row.clone()
            };
            store
                .settle(&keys[0], due_ms, Fate::Rescheduled(&row), None)
                .unwrap();
            due_ms = row.next_attempt_ms;
            if attempt % 100 == 0 {
                store.flush().await.unwrap();
            }
        }
        store.flush().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_cut_short_is_reported_not_panicked_over() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"n":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = write_config(dir.path(), &api, &receiver);
    let config = config.to_str().unwrap();
    let state = dir.path().join("state");
    churned_store(&state).await;
    let db = state.join("db");
    let pristine = dir.path().join("db.pristine");
    copy_dir(&db, &pristine);
    let length = std::fs::metadata(db.join("db")).unwrap().len();
    let expected = format!("error: the database in `{}` is damaged", db.display());

    // Cut at several lengths (where sled's segments fall decides whether
    // it panics or finds the damage itself); each time a fresh copy, since
    // an open that fails may already have written a new sled snapshot.
    let (mut panicked, mut recovered) = (0, 0);
    for (command, cut) in [("status", 2), ("status", 3), ("status", 4), ("run", 2)] {
        std::fs::remove_dir_all(&db).unwrap();
        copy_dir(&pristine, &db);
        std::fs::OpenOptions::new()
            .write(true)
            .open(db.join("db"))
            .unwrap()
            .set_len(length / cut)
            .unwrap();
        let output = run(&[command, "-c", config]).await;
        no_panic(&output);
        let stderr = text(&output.stderr);
        // A cut sled recovers from (the end of its log) is no damage:
        // `status` shows the store (exit 3: not running).
        if command == "status" && output.status.code() == Some(3) {
            recovered += 1;
            continue;
        }
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        // The last line says it all (sled may have logged what it found).
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with(&expected), "{command}: {stderr}");
        assert!(
            last.contains("restore it from a backup"),
            "{command}: {stderr}"
        );
        panicked += usize::from(last.contains("sled gave up reading it"));
    }
    assert!(
        panicked > 0,
        "no cut made sled panic: the test proves nothing"
    );
    assert!(recovered < 3, "most cuts are damage");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
