//! Delivery through the durable outbox: a receiver that is down keeps its
//! events until it is back, across restarts, with the same `webhook-id`.

use std::collections::BTreeSet;

use pollhook::store::Store;
use tokio::net::TcpListener;

use crate::support::{Api, Daemon, Receiver, Reply, SECRET, config_to, eventually, simple_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_event_when_it_recovers() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    receiver.answer(503);
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"a":2}"#));
    eventually("three attempts failed", || receiver.all().len() >= 3).await;
    receiver.answer(200);
    eventually("the event is accepted", || receiver.accepted().len() == 1).await;
    daemon.stop().await;

    let attempts = receiver.all();
    let ids: BTreeSet<&str> = attempts.iter().map(|hook| hook.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        1,
        "every attempt carries the same webhook-id: {attempts:#?}"
    );
    assert!(attempts.iter().all(|hook| hook.signature_verifies(SECRET)));
    assert!(
        attempts.iter().all(|hook| hook.body == attempts[0].body),
        "the body never changes"
    );
    assert_eq!(Store::open(state.path()).unwrap().outbox_len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_not_listening_yet_gets_the_event_once_it_listens() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    // Reserve a port, then close it: connections are refused until it is bound again.
    let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = reserved.local_addr().unwrap();
    drop(reserved);
    let daemon = Daemon::start(config_to(
        state.path(),
        &api,
        &format!("http://{address}/hook"),
        "",
    ));
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"a":2}"#));
    // Enough polls for the change to be queued and refused a few times (retry: 50 ms).
    api.wait_for_requests(15).await;
    let receiver = Receiver::start_on(TcpListener::bind(address).await.unwrap());
    eventually("the event is accepted", || receiver.accepted().len() == 1).await;
    daemon.stop().await;
    assert_eq!(receiver.accepted()[0].json()["data"]["version"], 2);
    assert_eq!(receiver.all().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_snapshots_and_undelivered_rows() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"a":2}"#));
    eventually("an attempt failed", || !receiver.all().is_empty()).await;
    daemon.stop().await;

    let failed_id = receiver.all()[0].id.clone();
    {
        let store = Store::open(state.path()).unwrap();
        let rows = store.outbox_rows("receiver").unwrap();
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert_eq!(rows[0].1.event_id, failed_id);
        assert!(rows[0].1.attempts >= 1);
        assert_eq!(rows[0].1.last_status, Some(500));
        assert_eq!(store.snapshot("data").unwrap().unwrap().version, 2);
    }

    receiver.answer(204);
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, ""));
    eventually("the queued event is accepted", || {
        receiver.accepted().len() == 1
    })
    .await;
    api.wait_for_requests(5).await;
    daemon.stop().await;

    let accepted = receiver.accepted();
    assert_eq!(
        accepted.len(),
        1,
        "no spurious event after the restart: {accepted:#?}"
    );
    assert_eq!(
        accepted[0].id, failed_id,
        "the same webhook-id after a restart"
    );
    assert!(accepted[0].signature_verifies(SECRET));
    assert_eq!(Store::open(state.path()).unwrap().outbox_len(), 0);
}
