//! Watched values as metrics: `metrics` filters over the real daemon's
//! answers, the last status code and an https endpoint's certificate
//! expiry, on `/metrics` as Prometheus reads them (`promtool check
//! metrics`); and `metrics` mistakes as config errors at line and column.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::admin::start_daemon;
use crate::cli::{data, run, text};
use crate::support::TestCa as Ca;
use crate::support::{Api, Receiver, Reply};
use crate::tls::https_server;

const PROMTOOL: &str = "/usr/bin/promtool";

/// The samples of a scrape that have an `endpoint` label:
/// `metric{labels}` → value.
fn samples(scrape: &str) -> BTreeMap<String, f64> {
    let parsed =
        prometheus_parse::Scrape::parse(scrape.lines().map(|line| Ok(line.to_string()))).unwrap();
    parsed
        .samples
        .into_iter()
        .filter(|sample| sample.labels.get("endpoint").is_some())
        .map(|sample| {
            let value = match sample.value {
                prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Untyped(value) => value,
                _ => f64::NAN,
            };
            (format!("{}{{{}}}", sample.metric, sample.labels), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_status_codes_and_certificate_expiry_are_metrics_promtool_accepts() {
    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "`{PROMTOOL}` is missing: install the Debian package `prometheus` (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let shop = Api::start(Reply::json(
        r#"{"data":{"amount":12.5},"items":[1,2,3],"open":true,"name":"lamp"}"#,
    ))
    .await;
    let down = Api::start(Reply {
        status: 503,
        ..Reply::json("{}")
    })
    .await;
    let ca = Ca::new();
    let (secure, _) = https_server(&ca, None).await;
    let receiver = Receiver::start().await;
    let endpoints = format!(
        r#"
[[endpoint]]
name = "shop"
url = "{}"
every = "100ms"
metrics = {{ price = ".data.amount", stock = ".items | length", open = ".open", name = ".name" }}

[[endpoint]]
name = "down"
url = "{}"
every = "100ms"

[[endpoint]]
name = "secure"
url = "{secure}"
every = "100ms"
tls_insecure = true
metrics = {{ tls = ".tls" }}
"#,
        shop.url(),
        down.url()
    );
    let (daemon, admin) = start_daemon(dir.path(), &endpoints, &receiver).await;
    let wanted = [
        (r#"pollhook_value{endpoint="shop",name="price"}"#, 12.5),
        (r#"pollhook_value{endpoint="shop",name="stock"}"#, 3.0),
        (r#"pollhook_value{endpoint="shop",name="open"}"#, 1.0),
        (r#"pollhook_value{endpoint="secure",name="tls"}"#, 1.0),
        (r#"pollhook_last_status_code{endpoint="shop"}"#, 200.0),
        (r#"pollhook_last_status_code{endpoint="down"}"#, 503.0),
        (r#"pollhook_last_status_code{endpoint="secure"}"#, 200.0),
        // rcgen's certificates are valid until 4096-01-01.
        (
            r#"pollhook_tls_cert_expiry_timestamp_seconds{endpoint="secure"}"#,
            67_090_118_400.0,
        ),
    ];
    let mut scrape = String::new();
    for _ in 0..500 {
        scrape = reqwest::get(format!("{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let found = samples(&scrape);
        if wanted.iter().all(|(name, _)| found.contains_key(*name)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let found = samples(&scrape);
    for (name, value) in wanted {
        assert_eq!(found.get(name), Some(&value), "{name} in:\n{scrape}");
    }
    // A value that is not a number is not exported; no https, no expiry.
    assert!(!scrape.contains(r#"name="name""#), "{scrape}");
    assert!(!scrape.contains(r#"pollhook_tls_cert_expiry_timestamp_seconds{endpoint="shop"}"#));

    // promtool reads the Prometheus text format, whose counters are named
    // with their `_total` in `HELP` (OpenMetrics names them without): it
    // checks the families of this feature, gauges that read the same in both.
    let families = [
        "pollhook_value",
        "pollhook_last_status_code",
        "pollhook_tls_cert_expiry_timestamp_seconds",
    ];
    let ours: String = scrape
        .lines()
        .filter(|line| {
            let name = line
                .trim_start_matches("# HELP ")
                .trim_start_matches("# TYPE ")
                .split(['{', ' '])
                .next()
                .unwrap_or_default();
            families.contains(&name)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(ours.matches("# TYPE").count(), 3, "{ours}");
    let mut promtool = tokio::process::Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(ours.as_bytes()).await.unwrap();
    drop(stdin);
    let checked = promtool.wait_with_output().await.unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{ours}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn metrics_mistakes_are_config_errors_at_their_line_and_column() {
    let output = run(&["check", "-c", data("bad-metrics.toml").to_str().unwrap()]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    for expected in [
        "bad-metrics.toml:9:21: endpoint `shop`: invalid jq filter `.data.amount |`",
        "bad-metrics.toml:15:13: endpoint `stock`: invalid metric name `in stock`",
        "bad-metrics.toml:21:11: endpoint `list`:",
    ] {
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
}
