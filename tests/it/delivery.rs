//! Delivery through the durable outbox: a receiver that is down keeps its
//! events until it is back, across restarts, with the same `webhook-id`.

use std::collections::BTreeSet;
use std::time::Duration;

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

/// One target, `events` endpoints each sending its first document.
fn many_endpoints(
    state: &std::path::Path,
    api: &Api,
    receiver: &Receiver,
    target_extra: &str,
    events: usize,
) -> pollhook::config::Config {
    let endpoints: String = (0..events)
        .map(|index| format!("[[endpoint]]\nname = \"e{index}\"\nurl = \"{}\"\nevery = \"100ms\"\nemit_initial = true\n", api.url()))
        .collect();
    crate::support::config(
        state,
        &format!(
            "shutdown_grace = \"5s\"\n[[target]]\nname = \"receiver\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry = {}\n{target_extra}\n{endpoints}",
            receiver.url(),
            crate::support::FAST_RETRY
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_failures_and_are_not_followed() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let elsewhere = Receiver::start().await;
    let receiver = Receiver::start().await;
    receiver.behave(|behaviour| {
        behaviour.status = 302;
        behaviour.location = Some(elsewhere.url());
    });
    let config = crate::support::config(
        state.path(),
        &format!(
            "[[target]]\nname = \"receiver\"\nurl = \"{}\"\nretry = [\"20ms\"]\n[[endpoint]]\nname = \"e\"\nurl = \"{}\"\nevery = \"100ms\"\nemit_initial = true\n",
            receiver.url(),
            api.url()
        ),
    );
    let daemon = Daemon::start(config);
    eventually("two attempts", || receiver.all().len() == 2).await;
    daemon.stop().await;
    assert!(elsewhere.all().is_empty(), "the redirect was followed");
    let store = Store::open(state.path()).unwrap();
    let dead = store.dead_rows(None).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.last_status, Some(302));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_lets_others_pass_a_failing_event_but_ordered_does_not() {
    for ordered in [false, true] {
        let state = tempfile::tempdir().unwrap();
        let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
        let receiver = Receiver::start().await;
        receiver.behave(|behaviour| behaviour.fail_versions = vec![2]);
        let extra = if ordered { "ordered = true" } else { "" };
        let config = crate::support::config(
            state.path(),
            &format!(
                "[[target]]\nname = \"receiver\"\nurl = \"{}\"\nretry = {}\n{extra}\n[[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"100ms\"\n",
                receiver.url(),
                crate::support::FAST_RETRY,
                api.url()
            ),
        );
        let daemon = Daemon::start(config);
        api.wait_for_requests(2).await;
        api.set(Reply::json(r#"{"a":2}"#));
        eventually("version 2 failed", || {
            receiver.all().iter().any(|hook| hook.version() == 2)
        })
        .await;
        api.set(Reply::json(r#"{"a":3}"#));
        api.wait_for_requests(10).await;
        eventually("version 2 failed again", || {
            receiver
                .all()
                .iter()
                .filter(|hook| hook.version() == 2)
                .count()
                >= 4
        })
        .await;
        let third_seen = receiver.all().iter().any(|hook| hook.version() == 3);
        if ordered {
            assert!(!third_seen, "ordered: version 3 waits behind version 2");
        } else {
            eventually("version 3 is delivered past version 2", || {
                receiver.accepted().iter().any(|hook| hook.version() == 3)
            })
            .await;
        }
        receiver.behave(|behaviour| behaviour.fail_versions.clear());
        eventually("both delivered", || receiver.accepted().len() == 2).await;
        daemon.stop().await;
        let order: Vec<u64> = receiver
            .accepted()
            .iter()
            .map(|hook| hook.version())
            .collect();
        if ordered {
            assert_eq!(order, vec![2, 3]);
        } else {
            assert_eq!(order, vec![3, 2]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_never_gets_the_same_event_twice_at_once() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    // Answers right around the timeout: some attempts time out, some do not.
    receiver.behave(|behaviour| behaviour.delay = Duration::from_millis(95));
    let config = many_endpoints(
        state.path(),
        &api,
        &receiver,
        "timeout = \"100ms\"\nparallel = 4",
        3,
    );
    let daemon = Daemon::start(config);
    eventually("twenty attempts", || {
        receiver.all().len() >= 20 || receiver.accepted().len() == 3
    })
    .await;
    daemon.stop().await;
    assert!(
        receiver.overlapping().is_empty(),
        "concurrent duplicates: {:?}",
        receiver.overlapping()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_caps_the_attempts_in_flight() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    receiver.behave(|behaviour| behaviour.delay = Duration::from_millis(40));
    let daemon = Daemon::start(many_endpoints(
        state.path(),
        &api,
        &receiver,
        "parallel = 2",
        8,
    ));
    eventually("eight delivered", || receiver.accepted().len() == 8).await;
    daemon.stop().await;
    assert_eq!(receiver.most_at_once(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_delivery_in_flight_finish() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    receiver.behave(|behaviour| behaviour.delay = Duration::from_millis(300));
    let daemon = Daemon::start(many_endpoints(state.path(), &api, &receiver, "", 1));
    eventually("a delivery is in flight", || receiver.handling() == 1).await;
    daemon.stop().await;
    assert_eq!(
        receiver.accepted().len(),
        1,
        "the POST in flight was finished"
    );
    assert_eq!(Store::open(state.path()).unwrap().outbox_len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_longer_than_the_grace_stays_queued_for_the_next_start() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    receiver.behave(|behaviour| behaviour.delay = Duration::from_millis(1500));
    let config = many_endpoints(state.path(), &api, &receiver, "", 1);
    let config = pollhook::config::Config {
        shutdown_grace: Duration::from_millis(50),
        ..config
    };
    let daemon = Daemon::start(config.clone());
    eventually("a delivery is in flight", || receiver.handling() == 1).await;
    daemon.stop().await;
    let queued = Store::open(state.path())
        .unwrap()
        .outbox_rows("receiver")
        .unwrap();
    assert_eq!(queued.len(), 1, "the unfinished row is still queued");

    receiver.behave(|behaviour| behaviour.delay = Duration::ZERO);
    let daemon = Daemon::start(config);
    eventually("delivered after the restart", || {
        receiver.accepted().len() == 1
    })
    .await;
    daemon.stop().await;
    assert_eq!(receiver.accepted()[0].id, queued[0].1.event_id);
}
