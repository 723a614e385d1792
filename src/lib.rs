//! pollhook turns pull-only HTTP APIs into push.
//!
//! The pipeline, one module per step:
//!
//! - [`config`]: TOML → validated [`config::Config`], every mistake located.
//! - [`schedule`]: when each endpoint is polled next (pure).
//! - [`request`]: the request one poll sends, its templates rendered (pure).
//! - [`fetch`]: one HTTP request, streamed and capped, conditional.
//! - [`oauth`]: the `Authorization` of a poll; OAuth2 tokens, cached and
//!   shared.
//! - [`extract`]: response body → canonical document (pure).
//! - [`formats`]: feeds, XML and HTML pages → JSON for `extract` (pure).
//! - [`number`]: the canonical text of a JSON number, exact whatever its
//!   size (pure).
//! - [`diff`]: two documents → JSON Patch or unified diff (pure).
//! - [`event`]: the Standard Webhooks envelope.
//! - [`poll`]: fetch → extract → diff → the writes one poll makes.
//! - [`poller`]: the one poller (host gate, permit, poll, commit, health)
//!   that the daemon, `once` and the benchmarks share.
//! - [`scheduler`]: the schedule's rules as a pure state machine.
//! - [`store`]: the only module that opens sled: snapshots, history, outbox.
//! - [`deliver`]: writes outbox rows in each target's format (envelope, Slack,
//!   Discord, ntfy, Apprise, template), signs and sends them (or emails
//!   them, or publishes them to an MQTT broker or a JetStream stream), retrying until the
//!   receiver acknowledges; a target's own health becomes events for the
//!   others.
//! - [`daemon`]: the schedule (a timer wheel, a task per running poll), one
//!   dispatcher per target, and the supervisor that starts, reloads and
//!   stops them.
//! - [`cluster`]: which endpoints this instance polls (shards by a fixed
//!   hash of the name), and with NATS, shard leases, take-over and the
//!   mirrored snapshots.
//! - [`status`]: what the daemon, the admin API and the metrics share.
//! - [`views`]: the admin API's wire types, and the views and commands the
//!   API and the offline CLI share.
//! - [`admin`]: the HTTP API (and its client) the CLI and monitoring use;
//!   [`operate`]: what it and the dashboard read and ask of the daemon.
//! - [`metrics`]: Prometheus counters and gauges; [`watched`]: the values,
//!   status codes and certificate expiries of endpoints' answers as metrics.
//! - [`dashboard`]: the web pages the admin API serves at `/`.
//! - [`cli`] and [`demo`]: the command line and the self-contained demo.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod deliver;
pub mod demo;
pub mod diff;
pub mod event;
pub mod event_type;
pub mod extract;
pub mod fetch;
pub mod formats;
pub mod hosts;
pub mod jq;
pub mod locks;
pub mod metrics;
pub mod number;
pub mod oauth;
pub mod operate;
pub mod poll;
pub mod poller;
pub mod request;
pub mod schedule;
pub mod scheduler;
pub mod seen;
pub mod status;
pub mod store;
pub mod tls;
pub mod views;
pub mod watched;

/// An error and its causes on one line: `outer: inner: root`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
