//! A damaged store: a sled database cut short is reported, not panicked
//! over.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pollhook::store::{OutboxRow, Store};

use crate::cli::{binary, text};
use crate::support::{Api, Receiver, Reply, SECRET};

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
            store.reschedule(&keys[0], due_ms, &row).unwrap();
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
    let log = state.join("db").join("db");
    let length = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(length / 2)
        .unwrap();

    for command in ["status", "run"] {
        let output = run(&[command, "-c", config]).await;
        no_panic(&output);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the database in `{}` is damaged",
                state.join("db").display()
            )),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("restore it from a backup"),
            "{command}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{command}: one line: {stderr}");
    }
}
