//! Numbers of any size or precision, through the real daemon: a change in
//! their last digit is a change, and the webhook carries their exact digits.

use crate::support::{Api, Daemon, Receiver, Reply, eventually, simple_config};

/// One endpoint that serves `before`, then `same` (the same values written
/// another way), then `after`.
struct Case {
    name: &'static str,
    endpoint_extra: &'static str,
    before: &'static str,
    same: &'static str,
    after: &'static str,
    event_type: &'static str,
    /// What the raw webhook body must hold, byte for byte.
    expected: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "an integer beyond 64 bits",
        endpoint_extra: "",
        before: r#"{"wei": 1000000000000000000001}"#,
        same: r#"{"wei": 1.000000000000000000001e21}"#,
        after: r#"{"wei": 1000000000000000000002}"#,
        event_type: "endpoint.changed",
        expected: &[r#"{"op":"replace","path":"/wei","value":1000000000000000000002}"#],
    },
    Case {
        name: "a decimal beyond 17 digits",
        endpoint_extra: "",
        before: r#"{"x": 0.12345678901234567890}"#,
        same: r#"{"x": 1234567890123456789.0e-19}"#,
        after: r#"{"x": 0.12345678901234567891}"#,
        event_type: "endpoint.changed",
        expected: &[r#"{"op":"replace","path":"/x","value":0.12345678901234567891}"#],
    },
    Case {
        name: "a big integer picked out by `select`",
        endpoint_extra: r#"select = ".wei""#,
        before: r#"{"wei": 1000000000000000000001, "at": 1}"#,
        same: r#"{"wei": 1000000000000000000001, "at": 2}"#,
        after: r#"{"wei": 1000000000000000000002, "at": 3}"#,
        event_type: "endpoint.changed",
        expected: &[r#"{"op":"replace","path":"","value":1000000000000000000002}"#],
    },
    Case {
        // In f64 both keys were 1e21: one item, and the other's change lost.
        name: "items keyed by big integers",
        endpoint_extra: "items = \".accounts[]\"\nkey = \".id\"",
        before: r#"{"accounts": [{"id": 1000000000000000000001, "wei": 5}, {"id": 1000000000000000000002, "wei": 5}]}"#,
        same: r#"{"accounts": [{"wei": 5, "id": 1000000000000000000002}, {"wei": 5, "id": 1000000000000000000001}]}"#,
        after: r#"{"accounts": [{"id": 1000000000000000000001, "wei": 5}, {"id": 1000000000000000000002, "wei": 1000000000000000000000000000007}]}"#,
        event_type: "item.changed",
        expected: &[
            r#""key":1000000000000000000002"#,
            r#"{"op":"replace","path":"/wei","value":1000000000000000000000000000007}"#,
        ],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_numbers_are_compared_and_reported_exactly() {
    for case in CASES {
        let name = case.name;
        let state = tempfile::tempdir().unwrap();
        let api = Api::start(Reply::json(case.before)).await;
        let receiver = Receiver::start().await;
        let daemon = Daemon::start(simple_config(
            state.path(),
            &api,
            &receiver,
            case.endpoint_extra,
        ));
        api.wait_for_requests(2).await;
        api.set(Reply::json(case.same));
        api.wait_for_requests(3).await;
        assert!(receiver.all().is_empty(), "{name}: {:#?}", receiver.all());

        api.set(Reply::json(case.after));
        eventually(&format!("{name}: the change is delivered"), || {
            !receiver.accepted().is_empty()
        })
        .await;
        // More polls of the same document must not send anything more.
        api.wait_for_requests(3).await;
        daemon.stop().await;

        let hooks = receiver.accepted();
        assert_eq!(hooks.len(), 1, "{name}: {hooks:#?}");
        assert_eq!(hooks[0].json()["type"], case.event_type, "{name}");
        let body = String::from_utf8_lossy(&hooks[0].body);
        for expected in case.expected {
            assert!(body.contains(expected), "{name}: no {expected} in {body}");
        }
    }
}
