//! Prometheus metrics, rendered by the admin API's `/metrics`.
//!
//! Counters are bumped where things happen: dispatchers bump theirs here,
//! poll tasks count in their endpoint's status (see
//! [`EndpointCounts`](crate::status::EndpointCounts)).
//! The queue gauges are read from the store when scraped, so they can never
//! drift from what is really queued.

use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::status::{EndpointCounts, PollResult, Statuses, read};

/// The families with an `endpoint` label. They are written by hand, a page
/// of endpoints at a time, so that a scrape never holds its whole text: at
/// 10,000 endpoints that is 3 MB. Endpoint names need no escaping (config
/// allows letters, digits, `-`, `_` and `.`).
#[derive(Debug, Clone, Copy)]
enum EndpointFamily {
    Polls,
    Changes,
    LastSuccess,
    /// `metrics` values, status codes and certificate expiries: see
    /// [`crate::watched`].
    Value,
    LastStatus,
    CertificateExpiry,
}

impl EndpointFamily {
    const ALL: [EndpointFamily; 6] = [
        EndpointFamily::Polls,
        EndpointFamily::Changes,
        EndpointFamily::LastSuccess,
        EndpointFamily::Value,
        EndpointFamily::LastStatus,
        EndpointFamily::CertificateExpiry,
    ];

    /// Its `HELP` and `TYPE` lines, as prometheus-client writes them.
    fn header(self) -> &'static str {
        match self {
            EndpointFamily::Polls => {
                "# HELP pollhook_polls Polls by endpoint and result.\n# TYPE pollhook_polls counter\n"
            }
            EndpointFamily::Changes => {
                "# HELP pollhook_changes Changes detected by endpoint.\n# TYPE pollhook_changes counter\n"
            }
            EndpointFamily::LastSuccess => concat!(
                "# HELP pollhook_last_success_timestamp_seconds When each endpoint was last polled successfully, in Unix seconds.\n",
                "# TYPE pollhook_last_success_timestamp_seconds gauge\n"
            ),
            EndpointFamily::Value => {
                "# HELP pollhook_value The values of each endpoint's `metrics`, by name.\n# TYPE pollhook_value gauge\n"
            }
            EndpointFamily::LastStatus => {
                "# HELP pollhook_last_status_code The HTTP status of each endpoint's last answer.\n# TYPE pollhook_last_status_code gauge\n"
            }
            EndpointFamily::CertificateExpiry => concat!(
                "# HELP pollhook_tls_cert_expiry_timestamp_seconds When the certificate of each https endpoint expires, in Unix seconds.\n",
                "# TYPE pollhook_tls_cert_expiry_timestamp_seconds gauge\n"
            ),
        }
    }

    /// One endpoint's samples: only the results it has had, its changes
    /// even when 0 (so that `increase()` sees the first), its last success
    /// once there was one.
    fn write(self, out: &mut String, endpoint: &str, counts: &EndpointCounts) {
        use fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = match self {
            EndpointFamily::Polls => PollResult::ALL
                .into_iter()
                .filter(|result| counts.polls[*result as usize] > 0)
                .try_for_each(|result| {
                    writeln!(
                        out,
                        "pollhook_polls_total{{endpoint=\"{endpoint}\",result=\"{}\"}} {}",
                        result.label(),
                        counts.polls[result as usize]
                    )
                }),
            EndpointFamily::Changes => writeln!(
                out,
                "pollhook_changes_total{{endpoint=\"{endpoint}\"}} {}",
                counts.polls[PollResult::Changed as usize]
            ),
            EndpointFamily::LastSuccess => counts.last_success_ms.map_or(Ok(()), |at_ms| {
                writeln!(
                    out,
                    "pollhook_last_success_timestamp_seconds{{endpoint=\"{endpoint}\"}} {}",
                    at_ms as f64 / 1000.0
                )
            }),
            EndpointFamily::Value => counts.watched().map_or(Ok(()), |watched| {
                watched.values.iter().try_for_each(|(name, value)| {
                    writeln!(
                        out,
                        "pollhook_value{{endpoint=\"{endpoint}\",name=\"{name}\"}} {value}"
                    )
                })
            }),
            EndpointFamily::LastStatus => {
                match counts.watched().and_then(|watched| watched.status) {
                    Some(status) => writeln!(
                        out,
                        "pollhook_last_status_code{{endpoint=\"{endpoint}\"}} {status}"
                    ),
                    None => Ok(()),
                }
            }
            EndpointFamily::CertificateExpiry => {
                match counts
                    .watched()
                    .and_then(|watched| watched.certificate_expiry_s)
                {
                    Some(at_s) => writeln!(
                        out,
                        "pollhook_tls_cert_expiry_timestamp_seconds{{endpoint=\"{endpoint}\"}} {at_s}"
                    ),
                    None => Ok(()),
                }
            }
        };
    }
}

/// Endpoints per page of a scrape.
const PAGE: usize = 500;

/// A scrape of `/metrics`, in the OpenMetrics text format that Prometheus
/// reads, page by page: the registry's families, then each per-endpoint
/// family [`PAGE`] endpoints at a time, then the end marker.
pub struct Scrape {
    registry: Option<String>,
    statuses: Statuses,
    /// Index into [`EndpointFamily::ALL`]; its length means the end marker.
    family: usize,
    /// The last endpoint written of the current family.
    after: Option<Arc<str>>,
}

impl Iterator for Scrape {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if let Some(registry) = self.registry.take() {
            return Some(registry);
        }
        let Some(&family) = EndpointFamily::ALL.get(self.family) else {
            let end = self.family == EndpointFamily::ALL.len();
            self.family += 1;
            return end.then(|| "# EOF\n".to_string());
        };
        let mut page = String::new();
        if self.after.is_none() {
            page.push_str(family.header());
        }
        let statuses = read(&self.statuses);
        let from = match &self.after {
            Some(name) => Bound::Excluded(&**name),
            None => Bound::Unbounded,
        };
        let mut last = None;
        for (name, status) in statuses
            .range::<str, _>((from, Bound::Unbounded))
            .take(PAGE)
        {
            family.write(&mut page, name, &status.counts);
            last = Some(name);
        }
        match last {
            Some(name) => self.after = Some(name.clone()),
            None => {
                self.family += 1;
                self.after = None;
            }
        }
        Some(page)
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
    statuses: Statuses,
    pub poll_duration: Histogram,
    pub deliveries: Family<DeliveryLabels, Counter>,
    outbox_depth: Gauge,
    dead_letters: Gauge,
    shard_endpoints: Family<ShardLabels, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    /// `2/5`: a shard polled here.
    pub shard: String,
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
        let shard_endpoints = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "shard_endpoints",
            "Endpoints polled here, by shard (in a cluster)",
            shard_endpoints.clone(),
        );
        Metrics {
            registry,
            statuses,
            poll_duration,
            deliveries,
            outbox_depth,
            dead_letters,
            shard_endpoints,
        }
    }

    /// The shards polled here, each with its endpoints.
    pub fn show_shards(&self, view: &crate::cluster::ClusterView) {
        self.shard_endpoints.clear();
        for (shard, endpoints) in &view.counts {
            self.shard_endpoints
                .get_or_create(&ShardLabels {
                    shard: shard.clone(),
                })
                .set(*endpoints as i64);
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

    /// The metrics as `/metrics` sends them, with the queue's and the dead
    /// letters' sizes as the store counts them.
    pub fn scrape(&self, queued: usize, dead: usize) -> Scrape {
        self.outbox_depth.set(queued as i64);
        self.dead_letters.set(dead as i64);
        let mut registry = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut registry, &self.registry);
        Scrape {
            registry: Some(registry),
            statuses: self.statuses.clone(),
            family: 0,
            after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::status::{EndpointStatus, write};

    /// A config with one endpoint per name, every minute.
    fn config_of(names: &[&str]) -> Config {
        let mut text = String::from(
            "[defaults]\nevery = \"1m\"\n[[target]]\nname = \"t\"\nurl = \"http://127.0.0.1:9/\"\n",
        );
        for name in names {
            text.push_str(&format!(
                "[[endpoint]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/{name}\"\n"
            ));
        }
        Config::compile(&text, Path::new("test.toml")).unwrap()
    }

    /// The pages of a scrape of `statuses`, with nothing queued.
    fn scrape_pages(statuses: Statuses) -> Vec<String> {
        Metrics::new(statuses).scrape(0, 0).collect()
    }

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap()
    }

    #[test]
    fn each_endpoint_is_written_from_its_status() {
        let config = config_of(&["polled", "new"]);
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
        let text = scrape_pages(statuses).concat();
        let scrape = parse(&text);
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

    #[test]
    fn a_scrape_of_many_endpoints_comes_in_pages_that_join_up() {
        let config = config_of(&["e"]);
        let statuses = Statuses::default();
        let endpoints = 2 * PAGE + 1;
        for index in 0..endpoints {
            let mut status = EndpointStatus::new(config.endpoints[0].clone());
            status.counts.polled(PollResult::Changed, index as u64);
            write(&statuses).insert(format!("e{index}").into(), status);
        }
        let pages = scrape_pages(statuses);
        let largest = pages.iter().map(String::len).max().unwrap();
        let text = pages.concat();
        assert!(largest < text.len() / 4, "{largest} of {}", text.len());
        let scrape = parse(&text);
        for metric in [
            "pollhook_polls_total",
            "pollhook_changes_total",
            "pollhook_last_success_timestamp_seconds",
        ] {
            let mut names: Vec<&str> = scrape
                .samples
                .iter()
                .filter(|sample| sample.metric == metric)
                .map(|sample| sample.labels.get("endpoint").unwrap())
                .collect();
            names.sort_unstable();
            let written = names.len();
            names.dedup();
            // Each endpoint exactly once.
            assert_eq!((written, names.len()), (endpoints, endpoints), "{metric}");
        }
        for family in EndpointFamily::ALL {
            assert_eq!(text.matches(family.header()).count(), 1);
        }
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
