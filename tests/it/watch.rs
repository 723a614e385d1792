//! Watching exactly what matters: jq `select`, item events, `when`, health
//! events and per-host politeness, through the real daemon.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use pollhook::store::Store;
use serde_json::{Value, json};

use crate::cli::{data, run, text};
use crate::support::{Api, Daemon, Receiver, Reply, config, eventually, serve, simple_config};

fn items(list: Value) -> Reply {
    Reply::json(&json!({ "generated_at": "now", "data": list }).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_are_compared_by_key_whatever_their_order() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(items(json!([
        {"id": 1, "price": 10}, {"id": 2, "price": 20}, {"id": 3, "price": 30}
    ])))
    .await;
    let receiver = Receiver::start().await;
    let extra = "items = \".data[]\"\nkey = \".id\"\nignore = [\"/generated_at\"]";
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, extra));
    api.wait_for_requests(2).await;

    // The same items in another order: not a change.
    api.set(items(json!([
        {"price": 30, "id": 3}, {"id": 1, "price": 10}, {"id": 2, "price": 20}
    ])));
    api.wait_for_requests(3).await;
    assert!(receiver.all().is_empty(), "{:#?}", receiver.all());

    // 2 changed, 3 removed, 4 added, in yet another order.
    api.set(items(json!([
        {"id": 4, "price": 40}, {"id": 2, "price": 25}, {"id": 1, "price": 10}
    ])));
    eventually("three item events", || receiver.accepted().len() == 3).await;
    api.wait_for_requests(3).await;
    daemon.stop().await;

    let hooks = receiver.accepted();
    assert_eq!(hooks.len(), 3, "{hooks:#?}");
    let by_type = |kind: &str| {
        hooks
            .iter()
            .map(|hook| hook.json())
            .find(|body| body["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {hooks:#?}"))
    };
    let added = by_type("item.added");
    assert_eq!(added["data"]["key"], 4);
    assert_eq!(added["data"]["item"], json!({"id": 4, "price": 40}));
    let removed = by_type("item.removed");
    assert_eq!(removed["data"]["key"], 3);
    assert_eq!(removed["data"]["item"], json!({"id": 3, "price": 30}));
    let changed = by_type("item.changed");
    assert_eq!(changed["data"]["key"], 2);
    assert_eq!(
        changed["data"]["patch"],
        json!([{"op": "replace", "path": "/price", "value": 25}])
    );
    assert_eq!(changed["data"]["version"], 2);
    // One event each, each with its own id.
    let mut ids: Vec<_> = hooks.iter().map(|hook| hook.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_limits_item_events_and_batch_sends_one() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(items(json!([{"id": "a", "v": 1}, {"id": "b", "v": 1}]))).await;
    let receiver = Receiver::start().await;
    let extra = "items = \".data[]\"\nkey = \".id\"\non = [\"added\", \"removed\"]\nbatch = true";
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, extra));
    api.wait_for_requests(2).await;

    // Only a change: filtered out by `on`, so nothing is sent.
    api.set(items(json!([{"id": "a", "v": 2}, {"id": "b", "v": 1}])));
    api.wait_for_requests(3).await;
    assert!(receiver.all().is_empty(), "{:#?}", receiver.all());

    api.set(items(
        json!([{"id": "a", "v": 3}, {"id": "c", "v": 1}, {"id": "d", "v": 1}]),
    ));
    eventually("the batch arrives", || !receiver.accepted().is_empty()).await;
    api.wait_for_requests(3).await;
    daemon.stop().await;

    assert_eq!(receiver.types(), ["items.changed"]);
    let data = &receiver.accepted()[0].json()["data"];
    let keys = |list: &str| -> Vec<Value> {
        data[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["key"].clone())
            .collect()
    };
    assert_eq!(keys("added"), [json!("c"), json!("d")]);
    assert_eq!(keys("removed"), [json!("b")]);
    assert_eq!(keys("changed"), Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_narrows_the_document_and_a_failing_filter_keeps_the_snapshot() {
    let state = tempfile::tempdir().unwrap();
    let body = |tag: &str, views: u32| {
        Reply::json(
            &json!({"releases": [{"tag_name": tag, "views": views}], "rate": views}).to_string(),
        )
    };
    let api = Api::start(body("1.90.0", 1)).await;
    let receiver = Receiver::start().await;
    let extra = r#"select = ".releases | map({tag_name})""#;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, extra));
    api.wait_for_requests(2).await;

    // Outside the selection: not a change.
    api.set(body("1.90.0", 2));
    api.wait_for_requests(3).await;
    assert!(receiver.all().is_empty(), "{:#?}", receiver.all());

    // The filter fails on this response: a failed poll, no event.
    api.set(Reply::json(r#"{"releases": 5}"#));
    api.wait_for_requests(2).await;

    api.set(body("1.91.0", 3));
    eventually("the release arrives", || receiver.accepted().len() == 1).await;
    daemon.stop().await;

    let hook = receiver.accepted()[0].json();
    assert_eq!(hook["type"], "endpoint.changed");
    assert_eq!(
        hook["data"]["version"], 2,
        "the failed polls stored nothing"
    );
    assert_eq!(
        hook["data"]["patch"],
        json!([{"op": "replace", "path": "/0/tag_name", "value": "1.91.0"}])
    );
    let store = Store::open(state.path()).unwrap();
    let document = store.document("data", 2).unwrap().unwrap();
    assert_eq!(document.canonical, br#"[{"tag_name":"1.91.0"}]"#);
}

/// `select` answers as jq: a filter with no output makes the document
/// `[]` (as two outputs make `[a, b]`), and a computed integral number is
/// written as jq writes it, `3`, not `3.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_with_no_output_is_an_empty_array_and_numbers_read_as_jq() {
    let state = tempfile::tempdir().unwrap();
    let body = |open: &[u32]| {
        let items: Vec<Value> = (1..=3)
            .map(|id| json!({"id": id, "open": open.contains(&id), "price": 1.5}))
            .collect();
        Reply::json(&json!({ "items": items }).to_string())
    };
    let api = Api::start(body(&[])).await;
    let receiver = Receiver::start().await;
    let extra = r#"select = ".items[] | select(.open) | {id, total: (.price * 2)}""#;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, extra));
    api.wait_for_requests(2).await;

    api.set(body(&[2]));
    eventually("one open item", || receiver.accepted().len() == 1).await;
    api.set(body(&[1, 3]));
    eventually("two open items", || receiver.accepted().len() == 2).await;
    api.set(body(&[]));
    eventually("none open again", || receiver.accepted().len() == 3).await;
    daemon.stop().await;

    let store = Store::open(state.path()).unwrap();
    let document = |version| store.document("data", version).unwrap().unwrap().canonical;
    assert_eq!(document(1), b"[]");
    assert_eq!(document(2), br#"{"id":2,"total":3}"#);
    assert_eq!(document(3), br#"[{"id":1,"total":3},{"id":3,"total":3}]"#);
    assert_eq!(document(4), b"[]");
    let patch = receiver.accepted()[0].json()["data"]["patch"].clone();
    assert_eq!(
        patch,
        json!([{"op": "replace", "path": "", "value": {"id": 2, "total": 3}}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_sends_only_the_changes_it_holds_for() {
    let state = tempfile::tempdir().unwrap();
    let price = |cents: u32| Reply::json(&json!({ "price": cents }).to_string());
    let api = Api::start(price(100)).await;
    let receiver = Receiver::start().await;
    let extra = r#"when = ".current.price < .previous.price""#;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, extra));
    api.wait_for_requests(2).await;

    api.set(price(120));
    api.wait_for_requests(3).await;
    assert!(receiver.all().is_empty(), "a rise is not sent");

    api.set(price(90));
    eventually("the drop arrives", || receiver.accepted().len() == 1).await;
    api.wait_for_requests(3).await;
    daemon.stop().await;

    let hooks = receiver.accepted();
    assert_eq!(hooks.len(), 1, "{hooks:#?}");
    let body = hooks[0].json();
    assert_eq!(body["data"]["version"], 3, "the rise was stored, unsent");
    assert_eq!(
        body["data"]["patch"],
        json!([{"op": "replace", "path": "/price", "value": 90}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_recovered_are_sent_once_each_even_across_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let good = Reply::json(r#"{"a":1}"#);
    let api = Api::start(good.clone()).await;
    let receiver = Receiver::start().await;
    let make_config = || simple_config(state.path(), &api, &receiver, "fail_after = 3");
    let daemon = Daemon::start(make_config());
    api.wait_for_requests(2).await;

    api.set(Reply {
        status: 503,
        ..good.clone()
    });
    eventually("endpoint.failing arrives", || {
        receiver.types() == ["endpoint.failing"]
    })
    .await;
    api.wait_for_requests(3).await;
    daemon.stop().await;

    // Still failing after a restart: no second alert.
    let daemon = Daemon::start(make_config());
    api.wait_for_requests(5).await;
    assert_eq!(receiver.types(), ["endpoint.failing"]);

    api.set(good);
    eventually("endpoint.recovered arrives", || {
        receiver.accepted().len() == 2
    })
    .await;
    api.wait_for_requests(3).await;
    daemon.stop().await;

    assert_eq!(receiver.types(), ["endpoint.failing", "endpoint.recovered"]);
    let failing = receiver.accepted()[0].json();
    assert_eq!(failing["data"]["endpoint"], "data");
    assert_eq!(failing["data"]["failures"], 3);
    assert_eq!(failing["data"]["status"], 503);
    assert!(
        failing["data"]["error"].as_str().unwrap().contains("503"),
        "{failing}"
    );
    let recovered = receiver.accepted()[1].json();
    assert_eq!(recovered["data"]["since"], failing["data"]["since"]);
    assert!(recovered["data"]["failures"].as_u64().unwrap() >= 8);
}

/// Under tokio's paused clock: minutes pass in milliseconds.
#[tokio::test(start_paused = true)]
async fn retry_after_on_a_poll_delays_that_endpoints_next_poll() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(Reply {
        status: 429,
        retry_after: Some("120"),
        ..Reply::json("{}")
    })
    .await;
    let endpoint = format!(
        "[[endpoint]]\nname = \"busy\"\nurl = \"{}\"\nevery = \"1s\"\nfail_after = 0\n",
        api.url()
    );
    let daemon = Daemon::start(config(state.path(), &endpoint));
    api.wait_for_requests(1).await;
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(api.requests(), 1, "asked to wait 120 s, polled early");
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(api.requests(), 2, "polled again after 120 s");
    daemon.stop().await;
}

/// `Retry-After: 18446744073709551615` (or a date in 9999) once stopped
/// the endpoint for good, with no `next_poll_ms` and no `endpoint.failing`.
#[tokio::test(start_paused = true)]
async fn an_absurd_retry_after_holds_an_endpoint_back_an_hour_at_most() {
    for retry_after in ["18446744073709551615", "Fri, 31 Dec 9999 23:59:59 GMT"] {
        let state = tempfile::tempdir().unwrap();
        let api = Api::start(Reply {
            status: 503,
            retry_after: Some(retry_after),
            ..Reply::json("{}")
        })
        .await;
        let endpoint = format!(
            "[[endpoint]]\nname = \"busy\"\nurl = \"{}\"\nevery = \"1s\"\nfail_after = 0\n",
            api.url()
        );
        let daemon = Daemon::start(config(state.path(), &endpoint));
        api.wait_for_requests(1).await;
        tokio::time::sleep(Duration::from_secs(3500)).await;
        assert_eq!(api.requests(), 1, "{retry_after}: polled before the hour");
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert_eq!(
            api.requests(),
            2,
            "{retry_after}: polled again after an hour"
        );
        daemon.stop().await;
    }
}

/// A host that counts the requests it is handling at once.
#[derive(Clone, Default)]
struct Counting {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

async fn counting_handler(
    axum::extract::State(counting): axum::extract::State<Counting>,
) -> String {
    let now = counting.now.fetch_add(1, Ordering::SeqCst) + 1;
    counting.most.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    counting.now.fetch_sub(1, Ordering::SeqCst);
    counting.total.fetch_add(1, Ordering::SeqCst);
    r#"{"ok":true}"#.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_caps_the_polls_in_flight_to_one_host() {
    let counting = Counting::default();
    let router = Router::new()
        .route("/{name}", axum::routing::get(counting_handler))
        .with_state(counting.clone());
    let address = serve(router).await;
    let state = tempfile::tempdir().unwrap();
    let endpoints: String = (0..8)
        .map(|n| {
            format!(
                "[[endpoint]]\nname = \"e{n}\"\nurl = \"http://{address}/e{n}\"\nevery = \"100ms\"\n"
            )
        })
        .collect();
    let daemon = Daemon::start(config(state.path(), &format!("per_host = 2\n{endpoints}")));
    eventually("40 polls", || counting.total.load(Ordering::SeqCst) >= 40).await;
    daemon.stop().await;
    assert_eq!(counting.most.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn once_shows_the_extracted_document() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(items(json!([{"id": 2, "n": "b"}, {"id": 1, "n": "a"}]))).await;
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[[endpoint]]\nname = \"list\"\nurl = \"{}\"\nevery = \"1m\"\nitems = \".data[]\"\nkey = \".id\"\nemit_initial = true\n",
            dir.path().join("state").display(),
            api.url()
        ),
    )
    .unwrap();
    let output = run(&["once", "-c", path.to_str().unwrap(), "list"]).await;
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("list: extracted document (items):"),
        "{stderr}"
    );
    // The document, then the pass's tally.
    let shown = &stderr[stderr.find('[').unwrap()..];
    let shown = shown
        .strip_suffix("1 endpoint(s) polled, 1 baseline\n")
        .unwrap_or_else(|| panic!("{stderr}"));
    let shown: Value = serde_json::from_str(shown.trim()).unwrap();
    assert_eq!(
        shown,
        json!([{"key": 1, "item": {"id": 1, "n": "a"}}, {"key": 2, "item": {"id": 2, "n": "b"}}])
    );
    // Every item of the first poll is an `item.added` on stdout.
    let stdout = text(&output.stdout);
    let events: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{stdout}");
    assert!(events.iter().all(|event| event["type"] == "item.added"));
}

#[tokio::test]
async fn filter_and_pattern_mistakes_are_config_errors() {
    let cases = [
        (
            "bad-jq.toml",
            vec![
                "bad-jq.toml:5:10: endpoint `releases`: invalid jq filter `.releases | map({tag_name)`: expected closing brace at character 26",
            ],
        ),
        (
            "bad-item-rules.toml",
            vec![
                "bad-item-rules.toml:6:7: endpoint `releases`: invalid jq filter `.id | nosuchfilter`: undefined filter `nosuchfilter`",
                "bad-item-rules.toml:13:7: endpoint `status`: `key` is for item mode: set `items` too",
                "bad-item-rules.toml:14:10: endpoint `status`: `select` works on JSON, but `format = \"text\"`",
                "bad-item-rules.toml:20:9: endpoint `page`: invalid regular expression `(unclosed`: unclosed group",
                "bad-item-rules.toml:26:8: endpoint `prices`: `seen` is for item mode: set `items` too",
                "bad-item-rules.toml:27:17: endpoint `prices`: `when_previous` says what `when` compares with: set `when` too",
                "bad-item-rules.toml:34:8: endpoint `feed`: `seen` must be at most 1000000",
                "bad-item-rules.toml:41:8: endpoint `feed2`: invalid duration `soon`",
            ],
        ),
    ];
    for (file, expected) in cases {
        let output = run(&["check", "-c", data(file).to_str().unwrap()]).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{file}: {stderr}");
        for line in expected {
            assert!(
                stderr.contains(line),
                "{file}: expected `{line}` in:\n{stderr}"
            );
        }
    }
}

/// A window of items with these ids.
fn window(ids: &[u32]) -> Reply {
    items(json!(
        ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>()
    ))
}

/// The keys of the `item.added` events received, in order.
fn added_keys(receiver: &Receiver) -> Vec<Value> {
    receiver
        .accepted()
        .iter()
        .map(|hook| hook.json())
        .filter(|body| body["type"] == "item.added")
        .map(|body| body["data"]["key"].clone())
        .collect()
}

/// "Notify me of a NEW release" over a window of the three newest: a
/// deleted release, an empty answer and a restart bring old ones back into
/// the window, and none is announced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_is_added_once_ever_even_when_it_comes_back_into_the_window() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(window(&[3, 2, 1])).await;
    let receiver = Receiver::start().await;
    let extra = "items = \".data[]\"\nkey = \".id\"\non = [\"added\"]";
    let config = || simple_config(state.path(), &api, &receiver, extra);
    let daemon = Daemon::start(config());
    api.wait_for_requests(2).await;
    let step = |ids: &'static [u32]| {
        let api = api.clone();
        async move {
            api.set(window(ids));
            api.wait_for_requests(3).await;
        }
    };
    step(&[4, 3, 2]).await;
    eventually("4 is announced", || added_keys(&receiver).len() == 1).await;
    // 4 deleted: 1 is back in the window.
    step(&[3, 2, 1]).await;
    // A short, then an empty answer, then the full window again.
    step(&[3]).await;
    step(&[]).await;
    step(&[3, 2, 1]).await;
    daemon.stop().await;
    // After a restart the seen keys are still there.
    let daemon = Daemon::start(config());
    api.wait_for_requests(2).await;
    step(&[2, 1]).await;
    step(&[5, 3, 2]).await;
    eventually("5 is announced", || added_keys(&receiver).len() == 2).await;
    daemon.stop().await;
    assert_eq!(added_keys(&receiver), [json!(4), json!(5)]);
}

/// `seen = 0` is the old behaviour: only the last document counts; a
/// changed definition forgets the keys seen under the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_0_compares_with_the_last_document_only_and_a_new_definition_starts_afresh() {
    let state = tempfile::tempdir().unwrap();
    let api = Api::start(window(&[2, 1])).await;
    let receiver = Receiver::start().await;
    let forgetful = "items = \".data[]\"\nkey = \".id\"\non = [\"added\"]\nseen = 0";
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, forgetful));
    api.wait_for_requests(2).await;
    api.set(window(&[2]));
    api.wait_for_requests(3).await;
    api.set(window(&[2, 1]));
    eventually("1 is announced again", || added_keys(&receiver).len() == 1).await;
    daemon.stop().await;

    // Remembering again, under a new definition (`ignore` added): the keys
    // seen before it are forgotten, the new baseline's are seen.
    let remembering = "items = \".data[]\"\nkey = \".id\"\non = [\"added\"]\nignore = [\"/other\"]";
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, remembering));
    api.wait_for_requests(2).await;
    api.set(window(&[2]));
    api.wait_for_requests(3).await;
    api.set(window(&[2, 1]));
    api.wait_for_requests(3).await;
    daemon.stop().await;
    assert_eq!(
        added_keys(&receiver),
        [json!(1)],
        "seen in the new baseline"
    );
}

/// The README's price-drop recipe: 3 % below the price last reported.
/// With `when_previous = "polled"` a drop of 2 % a poll never fires; with
/// `"notified"` it fires at 960 (−4 % from 1000) and at 922 (−4 % from
/// 960), even with `keep_history = 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_previous_notified_catches_a_gradual_drop() {
    for (when_previous, expected) in [
        ("polled", vec![]),
        ("notified", vec![(960, 1, 3), (922, 3, 5)]),
    ] {
        let state = tempfile::tempdir().unwrap();
        let price = |price: u32| Reply::json(&json!({ "price": price }).to_string());
        let api = Api::start(price(1000)).await;
        let receiver = Receiver::start().await;
        let extra = format!(
            "when = \".current.price < .previous.price * 0.97\"\nwhen_previous = \"{when_previous}\"\nkeep_history = 1"
        );
        let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, &extra));
        api.wait_for_requests(2).await;
        for step in [980, 960, 941, 922] {
            api.set(price(step));
            api.wait_for_requests(3).await;
        }
        eventually("every drop is delivered", || {
            receiver.accepted().len() == expected.len()
        })
        .await;
        daemon.stop().await;
        let sent: Vec<(u64, u64, u64)> = receiver
            .accepted()
            .iter()
            .map(|hook| {
                let data = hook.json()["data"].clone();
                (
                    data["patch"][0]["value"].as_u64().unwrap(),
                    data["previous_version"].as_u64().unwrap(),
                    data["version"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(sent, expected, "when_previous = {when_previous}");
    }
}

/// A transition needs the last polled version: a second outage is sent
/// too, and the recovery in between is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_previous_polled_sends_every_transition() {
    let state = tempfile::tempdir().unwrap();
    let status = |status: &str| Reply::json(&json!({ "status": status }).to_string());
    let api = Api::start(status("up")).await;
    let receiver = Receiver::start().await;
    let extra = r#"when = '.previous.status == "up" and .current.status == "down"'"#;
    let daemon = Daemon::start(simple_config(state.path(), &api, &receiver, extra));
    api.wait_for_requests(2).await;
    for step in ["down", "up", "down"] {
        api.set(status(step));
        api.wait_for_requests(3).await;
    }
    eventually("both outages arrive", || receiver.accepted().len() == 2).await;
    daemon.stop().await;
    let versions: Vec<u64> = receiver
        .accepted()
        .iter()
        .map(|hook| hook.version())
        .collect();
    assert_eq!(versions, [2, 4]);
}
