//! What a target takes (`events`) and `pollhook test TARGET`.

use crate::cli::{binary, text};
use crate::support::{Api, Daemon, FAST_RETRY, Receiver, Reply, SECRET, config, eventually};

/// An alerting channel that wants only health events gets only those,
/// while a target without `events` gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_takes_only_the_event_types_it_lists() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"[{"id":1}]"#)).await;
    let (everything, alerts, added) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let daemon = Daemon::start(config(
        state.path(),
        &format!(
            r#"
[[target]]
name = "everything"
url = "{}"
retry = {FAST_RETRY}

[[target]]
name = "alerts"
url = "{}"
events = ["endpoint.*"]
retry = {FAST_RETRY}

[[target]]
name = "added"
url = "{}"
events = ["item.added"]
retry = {FAST_RETRY}

[[endpoint]]
name = "releases"
url = "{}"
every = "100ms"
items = ".[]"
key = ".id"
fail_after = 1
fail_for = "0s"
"#,
            everything.url(),
            alerts.url(),
            added.url(),
            api.url()
        ),
    ));
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"[{"id":1,"v":2},{"id":2}]"#));
    eventually("the item events arrive", || {
        everything.accepted().len() == 2
    })
    .await;
    api.set(Reply {
        status: 500,
        ..Reply::json("{}")
    });
    eventually("the failing alert arrives", || alerts.accepted().len() == 1).await;
    api.set(Reply::json(r#"[{"id":1,"v":2},{"id":2}]"#));
    eventually("the recovery arrives", || alerts.accepted().len() == 2).await;
    eventually("everything has it too", || everything.accepted().len() == 4).await;
    daemon.stop().await;

    // The two item events of one poll go in parallel: either may be first.
    let mut everything = everything.types();
    everything[..2].sort();
    assert_eq!(
        everything,
        [
            "item.added",
            "item.changed",
            "endpoint.failing",
            "endpoint.recovered"
        ]
    );
    assert_eq!(alerts.types(), ["endpoint.failing", "endpoint.recovered"]);
    assert_eq!(added.types(), ["item.added"]);
}

#[tokio::test]
async fn events_that_name_no_type_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pollhook.toml");
    std::fs::write(
        &path,
        r#"[[target]]
name = "chat"
url = "http://127.0.0.1:9/hook"
events = ["item.add", "endpoint.failing"]

[[target]]
name = "quiet"
url = "http://127.0.0.1:9/hook"
events = []

[[endpoint]]
name = "a"
url = "http://127.0.0.1:9/"
every = "1m"
"#,
    )
    .unwrap();
    let output = binary()
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("pollhook.toml:4:11: target `chat`: `item.add` names no event type; the types are endpoint.changed, item.added"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pollhook.toml:9:10: target `quiet`: `events` is empty"),
        "{stderr}"
    );
}

fn write_config(dir: &std::path::Path, receiver_url: &str) -> std::path::PathBuf {
    let path = dir.join("pollhook.toml");
    std::fs::write(
        &path,
        format!(
            r#"state_dir = "{}"

[[target]]
name = "ha"
url = "{receiver_url}"
secret = "{SECRET}"
events = ["item.added"]

[[endpoint]]
name = "a"
url = "http://127.0.0.1:9/"
every = "1m"
"#,
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

/// `pollhook test ha`: one signed `pollhook.test` through the delivery
/// code, whatever the target's `events`, and the receiver's answer printed.
#[tokio::test]
async fn test_sends_a_marked_signed_event_and_prints_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let config = write_config(dir.path(), &receiver.url());
    let output = binary()
        .args(["test", "ha", "-c", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.starts_with("sent pollhook.test msg_"), "{stdout}");
    assert!(stdout.contains("answer: HTTP 204"), "{stdout}");
    let hooks = receiver.accepted();
    assert_eq!(hooks.len(), 1);
    assert!(hooks[0].signature_verifies(SECRET));
    let event = hooks[0].json();
    assert_eq!(event["type"], "pollhook.test");
    assert_eq!(event["data"]["test"], true);
    assert_eq!(event["data"]["target"], "ha");
    assert!(
        !dir.path().join("state").exists(),
        "a test delivery is not queued: no store"
    );

    receiver.answer(500);
    let output = binary()
        .args(["test", "ha", "-c", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("answer: HTTP 500"));
    assert!(
        text(&output.stderr).contains("error: the delivery failed: HTTP status 500"),
        "{}",
        text(&output.stderr)
    );

    let output = binary()
        .args(["test", "nosuch", "-c", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("no target `nosuch`")
            && text(&output.stderr).contains("its targets: ha"),
        "{}",
        text(&output.stderr)
    );
}
