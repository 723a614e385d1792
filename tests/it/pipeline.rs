//! Poll → diff → webhook through the real daemon, a real API and a real
//! receiver on 127.0.0.1, with the store in a temp dir.

use std::time::Duration;

use pollhook::store::Store;
use serde_json::json;

use crate::support::{Api, Daemon, Receiver, Reply, SECRET, eventually, simple_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sends_exactly_one_signed_webhook_with_its_patch() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(
        r#"{"name":"kettle","price":3499,"tags":["a"]}"#,
    ))
    .await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));

    api.wait_for_requests(2).await;
    api.set(Reply::json(
        r#"{"name":"kettle","price":2999,"tags":["a","sale"]}"#,
    ));
    eventually("the change is delivered", || receiver.accepted().len() == 1).await;
    // More polls of the same document must not send anything more.
    api.wait_for_requests(5).await;
    daemon.stop().await;

    let hooks = receiver.accepted();
    assert_eq!(hooks.len(), 1, "{hooks:#?}");
    let hook = &hooks[0];
    assert!(hook.signature_verifies(SECRET), "{hook:?}");
    assert!(hook.id.starts_with("msg_"), "{}", hook.id);
    let event = hook.json();
    assert_eq!(event["type"], "endpoint.changed");
    assert_eq!(event["data"]["endpoint"], "data");
    assert_eq!(event["data"]["url"], api.url());
    assert_eq!(event["data"]["version"], 2);
    assert_eq!(event["data"]["previous_version"], 1);
    assert_eq!(
        event["data"]["patch"],
        json!([
            {"op": "replace", "path": "/price", "value": 2999},
            {"op": "add", "path": "/tags/1", "value": "sale"},
        ])
    );
    let timestamp = chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap());
    assert!(timestamp.is_ok(), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_document_sends_nothing() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));
    api.wait_for_requests(8).await;
    daemon.stop().await;
    assert!(receiver.all().is_empty(), "{:#?}", receiver.all());
    let store = Store::open(state.path()).unwrap();
    assert_eq!(store.snapshot("data").unwrap().unwrap().version, 1);
    assert_eq!(store.outbox_len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_costs_nothing_and_a_new_etag_is_a_change() {
    let state = tempfile::tempdir().unwrap();
    let mut reply = Reply::json(r#"{"v":1}"#);
    reply.etag = Some("\"v1\"".into());
    let api = Api::start(reply.clone()).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));

    eventually("the API answers 304s", || api.not_modified() >= 3).await;
    assert!(receiver.all().is_empty());
    reply.etag = Some("\"v2\"".into());
    reply.bodies = vec![r#"{"v":2}"#.into()];
    api.set(reply);
    eventually("the change is delivered", || receiver.accepted().len() == 1).await;
    api.wait_for_requests(3).await;
    daemon.stop().await;

    assert_eq!(receiver.accepted().len(), 1);
    assert_eq!(
        receiver.accepted()[0].json()["data"]["patch"],
        json!([{"op": "replace", "path": "/v", "value": 2}])
    );
    // Every poll after the first carried the stored validator.
    assert_eq!(api.conditional(), api.requests() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_fields_and_key_order_are_not_changes() {
    let state = tempfile::tempdir().unwrap();
    let mut reply = Reply::json("");
    reply.bodies = vec![
        r#"{"meta":{"generated_at":"10:00:01","page":1},"items":[{"id":1,"views":5}]}"#.into(),
        r#"{"items":[{"views":6,"id":1}],"meta":{"page":1,"generated_at":"10:00:02"}}"#.into(),
        r#"{ "meta" : { "page" : 1, "generated_at" : "10:00:03" }, "items" : [ { "id" : 1, "views" : 7 } ] }"#.into(),
    ];
    let api = Api::start(reply).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(simple_config(
        state.path(),
        &api,
        &receiver,
        r#"ignore = ["/meta/generated_at", "/items/0/views"]"#,
    ));
    api.wait_for_requests(9).await;
    daemon.stop().await;
    assert!(receiver.all().is_empty(), "{:#?}", receiver.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_responses_are_failed_polls_that_keep_the_snapshot() {
    let good = Reply::json(r#"{"a":1}"#);
    let not_json = Reply::json("<html>maintenance</html>");
    let server_error = Reply {
        status: 500,
        ..good.clone()
    };
    let slow = Reply {
        delay: Duration::from_millis(400),
        ..good.clone()
    };
    let huge = Reply::json(&format!(r#"{{"a":"{}"}}"#, "x".repeat(4096)));
    for (name, bad) in [
        ("not JSON", not_json),
        ("HTTP 500", server_error),
        ("timeout", slow),
        ("oversized", huge),
    ] {
        let state = tempfile::tempdir().unwrap();
        let api = Api::start(good.clone()).await;
        let receiver = Receiver::start().await;
        let config = simple_config(
            state.path(),
            &api,
            &receiver,
            "timeout = \"100ms\"\nmax_body = \"1KiB\"",
        );
        let daemon = Daemon::start(config);
        api.wait_for_requests(2).await;
        api.set(bad);
        api.wait_for_requests(3).await;
        api.set(good.clone());
        api.wait_for_requests(3).await;
        daemon.stop().await;

        // Three failures in a row may announce `endpoint.failing` (and its
        // recovery), but never a change.
        let changes: Vec<_> = receiver
            .all()
            .into_iter()
            .filter(|hook| hook.json()["type"] == "endpoint.changed")
            .collect();
        assert!(changes.is_empty(), "{name}: {changes:#?}");
        let store = Store::open(state.path()).unwrap();
        let snapshot = store.snapshot("data").unwrap().unwrap();
        assert_eq!(snapshot.version, 1, "{name}");
        let document = store.document("data", 1).unwrap().unwrap();
        assert_eq!(document.canonical, br#"{"a":1}"#, "{name}");
        assert_eq!(document.hash, snapshot.hash, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_changes_arrive_as_unified_diffs() {
    let state = tempfile::tempdir().unwrap();
    let text = |body: &str| Reply {
        content_type: "text/plain; charset=utf-8",
        ..Reply::json(body)
    };
    let api = Api::start(text("api: up\nsearch: up\n")).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));
    api.wait_for_requests(2).await;
    api.set(text("api: up\nsearch: down ☂\n"));
    eventually("the change is delivered", || receiver.accepted().len() == 1).await;
    daemon.stop().await;

    let hook = &receiver.accepted()[0];
    assert!(hook.signature_verifies(SECRET));
    let diff = hook.json()["data"]["diff"].as_str().unwrap().to_string();
    assert!(diff.contains("-search: up\n+search: down ☂\n"), "{diff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_initial_sends_the_first_document() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(simple_config(
        state.path(),
        &api,
        &receiver,
        "emit_initial = true",
    ));
    eventually("the initial document is delivered", || {
        receiver.accepted().len() == 1
    })
    .await;
    api.wait_for_requests(3).await;
    daemon.stop().await;
    let event = receiver.accepted()[0].json();
    assert_eq!(event["data"]["version"], 1);
    assert_eq!(event["data"]["previous_version"], serde_json::Value::Null);
    assert_eq!(
        event["data"]["patch"],
        json!([{"op": "replace", "path": "", "value": {"a": 1}}])
    );
    assert_eq!(receiver.accepted().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_definition_rebaselines_quietly() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1,"noise":1}"#)).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));
    api.wait_for_requests(2).await;
    daemon.stop().await;

    // Same URL, but now `noise` is ignored: a different question, not a change.
    api.set(Reply::json(r#"{"a":1,"noise":2}"#));
    let daemon = Daemon::start(simple_config(
        state.path(),
        &api,
        &receiver,
        r#"ignore = ["/noise"]"#,
    ));
    api.wait_for_requests(4).await;
    daemon.stop().await;
    assert!(receiver.all().is_empty(), "{:#?}", receiver.all());
    let store = Store::open(state.path()).unwrap();
    assert_eq!(store.snapshot("data").unwrap().unwrap().version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_its_previous_document_was_lost_is_reported_by_hash() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));
    api.wait_for_requests(2).await;
    daemon.stop().await;
    let baseline = Store::open(state.path())
        .unwrap()
        .snapshot("data")
        .unwrap()
        .unwrap();
    // What a power cut before a baseline's file reached the disk leaves.
    std::fs::remove_dir_all(state.path().join("documents")).unwrap();
    std::fs::create_dir(state.path().join("documents")).unwrap();

    api.set(Reply::json(r#"{"a":2}"#));
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));
    eventually("the change is delivered", || receiver.accepted().len() == 1).await;
    daemon.stop().await;
    let event = receiver.accepted()[0].json();
    assert_eq!(event["type"], "endpoint.changed");
    assert_eq!(event["data"]["previous_hash"], hex::encode(baseline.hash));
    let current = Store::open(state.path())
        .unwrap()
        .snapshot("data")
        .unwrap()
        .unwrap();
    assert_eq!(event["data"]["current_hash"], hex::encode(current.hash));
    assert_eq!(event["data"]["version"], 2);
}
