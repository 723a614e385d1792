//! Prometheus metrics, rendered by the admin API's `/metrics`.
//!
//! Counters are bumped where things happen: dispatchers bump theirs here,
//! poll tasks count in their endpoint's status (see [`EndpointCounts`]).
//! The queue gauges are read from the store when scraped, so they can never
//! drift from what is really queued.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::daemon::{Statuses, read};
use crate::store::Store;

/// What a poll came to, as the `result` label of `pollhook_polls_total`
/// says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollResult {
    Baseline,
    Changed,
    Unchanged,
    Failed,
}

impl PollResult {
    const ALL: [PollResult; 4] = [
        PollResult::Baseline,
        PollResult::Changed,
        PollResult::Unchanged,
        PollResult::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            PollResult::Baseline => "baseline",
            PollResult::Changed => "changed",
            PollResult::Unchanged => "unchanged",
            PollResult::Failed => "failed",
        }
    }
}

/// An endpoint's own metrics, kept with its status: one small record per
/// endpoint instead of a label set (and its map entry) per metric and result.
/// They are written when `/metrics` is scraped.
#[derive(Debug, Clone, Default)]
pub struct EndpointCounts {
    polls: [u64; PollResult::ALL.len()],
    last_success_ms: Option<u64>,
}

impl EndpointCounts {
    pub fn polled(&mut self, result: PollResult, at_ms: u64) {
        self.polls[result as usize] += 1;
        if result != PollResult::Failed {
            self.last_success_ms = Some(at_ms);
        }
    }
}

/// The per-endpoint families, written from the daemon's endpoint statuses.
#[derive(Debug)]
struct EndpointFamilies(Statuses);

impl Collector for EndpointFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let statuses = read(&self.0);
        let counts = || {
            statuses
                .iter()
                .map(|(name, status)| (name.as_str(), &status.counts))
        };
        let mut polls = encoder.encode_descriptor(
            "polls",
            "Polls by endpoint and result.",
            None,
            MetricType::Counter,
        )?;
        for (endpoint, counts) in counts() {
            for result in PollResult::ALL {
                let polled = counts.polls[result as usize];
                if polled > 0 {
                    let labels = [("endpoint", endpoint), ("result", result.label())];
                    ConstCounter::new(polled).encode(polls.encode_family(&labels)?)?;
                }
            }
        }
        let mut changes = encoder.encode_descriptor(
            "changes",
            "Changes detected by endpoint.",
            None,
            MetricType::Counter,
        )?;
        for (endpoint, counts) in counts() {
            let changed = counts.polls[PollResult::Changed as usize];
            ConstCounter::new(changed).encode(changes.encode_family(&[("endpoint", endpoint)])?)?;
        }
        let mut last_success = encoder.encode_descriptor(
            "last_success_timestamp_seconds",
            "When each endpoint was last polled successfully, in Unix seconds.",
            None,
            MetricType::Gauge,
        )?;
        for (endpoint, counts) in counts() {
            if let Some(at_ms) = counts.last_success_ms {
                ConstGauge::new(at_ms as f64 / 1000.0)
                    .encode(last_success.encode_family(&[("endpoint", endpoint)])?)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub target: String,
    /// `delivered`, `failed`, `dead` or `paused`.
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub poll_duration: Histogram,
    pub deliveries: Family<DeliveryLabels, Counter>,
    outbox_depth: Gauge,
    dead_letters: Gauge,
}

impl Default for Metrics {
    /// Metrics with no endpoints, for work outside the daemon.
    fn default() -> Self {
        Metrics::new(Statuses::default())
    }
}

impl Metrics {
    /// The daemon's metrics; the per-endpoint ones are read from `statuses`.
    pub fn new(statuses: Statuses) -> Metrics {
        let mut registry = Registry::with_prefix("pollhook");
        registry.register_collector(Box::new(EndpointFamilies(statuses)));
        // 1 ms to about 33 s.
        let poll_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "poll_duration_seconds",
            "Time from request to decision",
            poll_duration.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts by target and result",
            deliveries.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register(
            "outbox_depth",
            "Webhooks waiting to be delivered",
            outbox_depth.clone(),
        );
        let dead_letters = Gauge::default();
        registry.register(
            "dead_letters",
            "Webhooks whose every attempt failed",
            dead_letters.clone(),
        );
        Metrics {
            registry,
            poll_duration,
            deliveries,
            outbox_depth,
            dead_letters,
        }
    }

    pub fn delivery(&self, target: &str, result: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                target: target.to_string(),
                result,
            })
            .inc();
    }

    /// The metrics in the OpenMetrics text format, which Prometheus reads.
    pub fn render(&self, store: &Store) -> String {
        self.outbox_depth.set(store.outbox_len() as i64);
        self.dead_letters.set(store.dead_len() as i64);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::daemon::{EndpointStatus, write};

    #[test]
    fn each_endpoint_is_written_from_its_status() {
        let config = Config::compile(
            r#"
            [defaults]
            every = "1m"
            [[target]]
            name = "t"
            url = "http://127.0.0.1:9/"
            [[endpoint]]
            name = "polled"
            url = "http://127.0.0.1:9/a"
            [[endpoint]]
            name = "new"
            url = "http://127.0.0.1:9/b"
            "#,
            Path::new("test.toml"),
        )
        .unwrap();
        let statuses = Statuses::default();
        for endpoint in &config.endpoints {
            let status = EndpointStatus::new(endpoint.clone());
            write(&statuses).insert(endpoint.name.clone(), status);
        }
        let results = [
            (PollResult::Baseline, 1_000),
            (PollResult::Changed, 2_000),
            (PollResult::Unchanged, 3_000),
            (PollResult::Unchanged, 4_000),
            (PollResult::Failed, 5_000),
        ];
        for (result, at_ms) in results {
            let mut statuses = write(&statuses);
            let status = statuses.get_mut("polled").unwrap();
            status.counts.polled(result, at_ms);
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();

        let text = Metrics::new(statuses).render(&store);
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap();
        let samples: Vec<(String, String, f64)> = scrape
            .samples
            .iter()
            .filter(|sample| sample.labels.get("endpoint").is_some())
            .map(|sample| {
                let labels = sample.labels.to_string();
                let value = match sample.value {
                    prometheus_parse::Value::Counter(value)
                    | prometheus_parse::Value::Gauge(value)
                    | prometheus_parse::Value::Untyped(value) => value,
                    _ => f64::NAN,
                };
                (sample.metric.clone(), labels, value)
            })
            .collect();
        let expected = [
            (
                "pollhook_polls_total",
                r#"endpoint="polled",result="baseline""#,
                1.0,
            ),
            (
                "pollhook_polls_total",
                r#"endpoint="polled",result="changed""#,
                1.0,
            ),
            (
                "pollhook_polls_total",
                r#"endpoint="polled",result="unchanged""#,
                2.0,
            ),
            (
                "pollhook_polls_total",
                r#"endpoint="polled",result="failed""#,
                1.0,
            ),
            ("pollhook_changes_total", r#"endpoint="new""#, 0.0),
            ("pollhook_changes_total", r#"endpoint="polled""#, 1.0),
            (
                "pollhook_last_success_timestamp_seconds",
                r#"endpoint="polled""#,
                4.0,
            ),
        ]
        .map(|(metric, labels, value)| (metric.to_string(), labels.to_string(), value));
        assert_eq!(samples, expected, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
