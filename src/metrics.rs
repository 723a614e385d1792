//! Prometheus metrics, rendered by the admin API's `/metrics`.
//!
//! Counters are bumped where things happen (poll tasks, dispatchers);
//! the queue gauges are read from the store when scraped, so they can never
//! drift from what is really queued.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Store;

/// Endpoint names are shared with the schedule, not copied per label set:
/// at 10,000 endpoints there are tens of thousands of label sets.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    pub endpoint: Arc<str>,
    /// `changed`, `unchanged`, `baseline` or `failed`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub target: String,
    /// `delivered`, `failed`, `dead` or `paused`.
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub polls: Family<PollLabels, Counter>,
    pub poll_duration: Histogram,
    pub changes: Family<EndpointLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub last_success: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    outbox_depth: Gauge,
    dead_letters: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pollhook");
        let polls = Family::<PollLabels, Counter>::default();
        registry.register("polls", "Polls by endpoint and result", polls.clone());
        // 1 ms to about 33 s.
        let poll_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "poll_duration_seconds",
            "Time from request to decision",
            poll_duration.clone(),
        );
        let changes = Family::<EndpointLabels, Counter>::default();
        registry.register("changes", "Changes detected by endpoint", changes.clone());
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts by target and result",
            deliveries.clone(),
        );
        let last_success = Family::<EndpointLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "When each endpoint was last polled successfully, in Unix seconds",
            last_success.clone(),
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
            polls,
            poll_duration,
            changes,
            deliveries,
            last_success,
            outbox_depth,
            dead_letters,
        }
    }
}

impl Metrics {
    pub fn poll(&self, endpoint: &Arc<str>, result: &'static str) {
        self.polls
            .get_or_create(&PollLabels {
                endpoint: endpoint.clone(),
                result,
            })
            .inc();
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
