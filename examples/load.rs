//! Load benchmark: the real daemon against N local endpoints.
//!
//! One process, two tokio runtimes:
//! - the *harness* (one worker thread, named `load-harness`) serves N JSON
//!   documents on 127.0.0.1 (~1.5 KiB each, a list of 10 items, with or
//!   without ETags) and a webhook receiver that verifies signatures and
//!   measures how long each change took to arrive;
//! - the *daemon* runtime (what `pollhook run` builds) runs
//!   [`pollhook::daemon::run`] on a config naming those N endpoints.
//!
//! Each request after an endpoint's first changes its document with
//! probability `--change-rate`, so that fraction of the documents changes per
//! round (one round = one `--every`). CPU is reported for the process and
//! for the daemon alone (process minus the harness threads, read from
//! `/proc/self/task/*/stat`).
//!
//! ```text
//! cargo run --release --example load -- --endpoints 10000 --every 10s --duration 60s
//! cargo run --release --example load -- --endpoints 10000 --once
//! ```

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;

use pollhook::config::{Config, WebhookSecret};
use pollhook::deliver::sign;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The harness threads' name, so their CPU can be told from the daemon's.
const HARNESS_THREAD: &str = "load-harness";

#[derive(Debug, Parser)]
#[command(about = "Runs the pollhook daemon against N local endpoints and reports what it took")]
struct Args {
    /// How many endpoints to serve and poll.
    #[arg(long, default_value_t = 1000)]
    endpoints: usize,
    /// How often each endpoint is polled.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// The fraction of documents that change per round.
    #[arg(long, default_value_t = 0.1)]
    change_rate: f64,
    /// How long the daemon runs (changes are made during this time only).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The steady-state window starts after this (default: one `--every`,
    /// when every endpoint has its baseline).
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Whether the API sends ETags and answers `If-None-Match` with 304.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    etag: OnOff,
    /// Poll every endpoint once as fast as possible, twice (baseline, then
    /// with changes), instead of running the daemon.
    #[arg(long)]
    once: bool,
    /// `max_concurrent_polls` in the generated config (pollhook's default
    /// when not given).
    #[arg(long)]
    max_concurrent_polls: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.endpoints > 0, "`--endpoints` must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.change_rate),
        "`--change-rate` is a fraction between 0 and 1"
    );
    let harness_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(HARNESS_THREAD)
        .enable_all()
        .build()?;
    let api = Arc::new(Api::new(&args));
    let (api_address, receiver_address) = harness_runtime.block_on(async {
        let api_address = serve(
            api_router(api.clone()),
            counter(&api, |api| &api.api_connections),
        )
        .await?;
        let receiver_address = serve(
            receiver_router(api.clone()),
            counter(&api, |api| &api.receiver_connections),
        )
        .await?;
        anyhow::Ok((api_address, receiver_address))
    })?;

    let state = tempfile::tempdir()?;
    let config_text = config(
        &args,
        api_address.port(),
        receiver_address.port(),
        state.path(),
    );
    let config = Config::compile(&config_text, Path::new("load.toml"))?;
    drop(config_text);
    let rss_configured = vm_status("VmRSS:");

    // What `pollhook run` builds.
    let daemon_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "load: {} endpoints, every {}, change rate {}, etag {:?}, {} mode",
        args.endpoints,
        humantime::format_duration(args.every),
        args.change_rate,
        args.etag,
        if args.once { "one-pass" } else { "daemon" },
    );
    if args.once {
        daemon_runtime.block_on(one_pass(&args, &api, config))?;
    } else {
        daemon_runtime.block_on(run_daemon(&args, &api, config))?;
    }
    drop(daemon_runtime);
    println!("store size on disk: {:.1} MiB", mib(dir_size(state.path())));
    println!(
        "RSS: {:.1} MiB with the config compiled, peak (VmHWM, whole process) {:.1} MiB; \
         at the end {:.1} MiB anonymous, {:.1} MiB of mapped files",
        mib(rss_configured),
        mib(vm_status("VmHWM:")),
        mib(vm_status("RssAnon:")),
        mib(vm_status("RssFile:")),
    );
    Ok(())
}

/// The generated config: one target, N endpoints, admin on a free port.
fn config(args: &Args, api_port: u16, receiver_port: u16, state_dir: &Path) -> String {
    let mut text = format!(
        r#"state_dir = "{}"
{}
# The endpoints stand for many APIs, all served from one loopback port here:
# the per-host cap of a real deployment does not apply.
per_host = 100000

[admin]
listen = "127.0.0.1:0"

[defaults]
every = "{}ms"
timeout = "5s"

[[target]]
name = "sink"
url = "http://127.0.0.1:{receiver_port}/hook"
secret = "{SECRET}"
"#,
        state_dir.display(),
        args.max_concurrent_polls
            .map(|max| format!("max_concurrent_polls = {max}\n"))
            .unwrap_or_default(),
        args.every.as_millis(),
    );
    for index in 0..args.endpoints {
        text.push_str(&format!(
            "\n[[endpoint]]\nname = \"e{index}\"\nurl = \"http://127.0.0.1:{api_port}/doc/{index}\"\n"
        ));
    }
    text
}

/// Runs the daemon for `--duration`, then lets every change made reach the
/// receiver (bounded), and reports.
async fn run_daemon(args: &Args, api: &Arc<Api>, config: Config) -> anyhow::Result<()> {
    let state_dir = config.state_dir.clone();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let daemon = tokio::spawn(pollhook::daemon::run(config, shutdown.clone()));

    let warmup = args.warmup.unwrap_or(args.every).min(args.duration);
    tokio::time::sleep(warmup).await;
    let window_start = (
        Instant::now(),
        Cpu::now(),
        api.requests.load(Ordering::Relaxed),
    );
    let rss_window_start = vm_status("VmRSS:");
    api.window_open.store(true, Ordering::Relaxed);
    tokio::time::sleep(args.duration - warmup).await;
    let window_end = (
        Instant::now(),
        Cpu::now(),
        api.requests.load(Ordering::Relaxed),
    );
    let rss_window_end = vm_status("VmRSS:");
    api.window_open.store(false, Ordering::Relaxed);
    api.changing.store(false, Ordering::Relaxed);

    // Every change served must arrive: wait for the last ones (bounded).
    let drain_until = Instant::now() + Duration::from_secs(30);
    while api.delivered.load(Ordering::Relaxed) < api.changes_served.load(Ordering::Relaxed)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let detected = scrape_metric_sum(&state_dir, "pollhook_changes_total")
        .await
        .unwrap_or_else(|error| {
            println!("(cannot read the daemon's metrics: {error})");
            f64::NAN
        });
    shutdown.cancel();
    daemon.await??;
    let total_cpu = Cpu::now();
    let elapsed = started.elapsed();

    let window = window_end.0 - window_start.0;
    let window_polls = window_end.2 - window_start.2;
    let scheduled = args.endpoints as f64 / args.every.as_secs_f64();
    println!(
        "window: {:.1} s after a {:.1} s warm-up",
        window.as_secs_f64(),
        warmup.as_secs_f64()
    );
    println!(
        "polls/s: {:.1} achieved vs {:.1} scheduled ({} requests in the window, {} in all)",
        window_polls as f64 / window.as_secs_f64(),
        scheduled,
        window_polls,
        api.requests.load(Ordering::Relaxed),
    );
    let mut gaps = std::mem::take(&mut *lock(&api.gaps_ms));
    let every_ms = args.every.as_secs_f64() * 1000.0;
    let late = gaps
        .iter()
        .filter(|gap| f64::from(**gap) > every_ms + 1000.0)
        .count();
    gaps.sort_by(f32::total_cmp);
    println!(
        "poll spacing (same endpoint, in the window): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {late} of {} later than `every` + 1 s",
        percentile(&gaps, 0.50),
        percentile(&gaps, 0.99),
        gaps.last().copied().unwrap_or(0.0),
        gaps.len(),
    );
    println!(
        "changes: {} made, {} served, {} detected (daemon metric), {} webhooks delivered ({} duplicates, {} bad signatures, {} unmatched)",
        api.changes_made.load(Ordering::Relaxed),
        api.changes_served.load(Ordering::Relaxed),
        detected,
        api.delivered.load(Ordering::Relaxed),
        api.duplicates.load(Ordering::Relaxed),
        api.bad_signatures.load(Ordering::Relaxed),
        api.unmatched.load(Ordering::Relaxed),
    );
    println!(
        "connections opened: {} to the API, {} to the receiver",
        api.api_connections.load(Ordering::Relaxed),
        api.receiver_connections.load(Ordering::Relaxed),
    );
    let mut latencies = std::mem::take(&mut *lock(&api.latencies_ms));
    latencies.sort_by(f32::total_cmp);
    println!(
        "change -> delivery latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        latencies.len(),
    );
    println!(
        "RSS: {:.1} MiB at the window's start, {:.1} MiB at its end",
        mib(rss_window_start),
        mib(rss_window_end)
    );
    let (window_total, window_daemon) = window_end.1.since(&window_start.1);
    println!(
        "CPU in the window: daemon {:.2} s = {:.1} % of one core (process {:.2} s = {:.1} %)",
        window_daemon,
        100.0 * window_daemon / window.as_secs_f64(),
        window_total,
        100.0 * window_total / window.as_secs_f64(),
    );
    println!(
        "CPU in all ({:.1} s, with start-up, baselines and drain): daemon {:.2} s, process {:.2} s",
        elapsed.as_secs_f64(),
        total_cpu.daemon(),
        total_cpu.total,
    );
    Ok(())
}

/// Polls every endpoint once as fast as the daemon's own limits allow
/// (`max_concurrent_polls`), as a cron-driven run would: first the
/// baselines, then a pass in which `--change-rate` of them changed, whose
/// webhooks are then delivered.
async fn one_pass(args: &Args, api: &Arc<Api>, config: Config) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    use pollhook::poller::{Mode, Outcome, Poller};

    let store = Arc::new(pollhook::store::Store::open(&config.state_dir)?);
    // The poller `pollhook once --send` uses: the daemon's caps and gates.
    let poller = Poller::new(store.clone(), &config)?;
    for pass in ["baseline", "changes"] {
        let cpu = Cpu::now();
        let started = Instant::now();
        let (mut queued, mut failed) = (0, 0);
        let mut polls = poller.poll_all(
            config.endpoints.clone(),
            Mode::Commit,
            config.max_concurrent_polls,
        );
        while let Some((_, report)) = polls.next().await {
            queued += report.queued;
            failed += usize::from(matches!(report.outcome, Outcome::Failed(_)));
        }
        let wall = started.elapsed();
        let (process, daemon) = Cpu::now().since(&cpu);
        println!(
            "one pass ({pass}): {} endpoints in {:.3} s ({:.0} polls/s), {queued} webhooks queued, {failed} failed; CPU daemon {daemon:.2} s, process {process:.2} s",
            args.endpoints,
            wall.as_secs_f64(),
            args.endpoints as f64 / wall.as_secs_f64(),
        );
    }
    let started = Instant::now();
    let dispatch = pollhook::deliver::Dispatch {
        store: store.clone(),
        clients: pollhook::deliver::clients()?,
        metrics: Arc::new(pollhook::metrics::Metrics::default()),
        grace: config.shutdown_grace,
        wakes: Arc::default(),
    };
    // The passes are over: no more rows come.
    let no_more = tokio_util::sync::CancellationToken::new();
    no_more.cancel();
    let wakes = pollhook::status::Wakes::default();
    let delivered: usize = pollhook::deliver::drain(&dispatch, &config.targets, &wakes, no_more)
        .await
        .into_iter()
        .sum();
    println!(
        "delivery of the pass's webhooks, through the dispatcher: {delivered} in {:.3} s; {} changes made, {} received",
        started.elapsed().as_secs_f64(),
        api.changes_made.load(Ordering::Relaxed),
        api.delivered.load(Ordering::Relaxed),
    );
    Ok(())
}

/// The served documents and what the receiver saw.
struct Api {
    docs: Vec<Mutex<Doc>>,
    etag: bool,
    change_rate: f64,
    /// False after `--duration`: documents stop changing.
    changing: AtomicBool,
    /// Poll spacing is only recorded in the steady-state window.
    window_open: AtomicBool,
    requests: AtomicU64,
    changes_made: AtomicU64,
    /// Changed documents sent at least once: each must become one webhook.
    changes_served: AtomicU64,
    /// Connections the daemon opened to the API and to the receiver: each
    /// costs buffers at both ends, so bursts of polls show in the RSS.
    api_connections: AtomicU64,
    receiver_connections: AtomicU64,
    /// When each (endpoint, revision) was first sent.
    served_at: Mutex<HashMap<(usize, u64), Instant>>,
    /// Single precision, like the latencies: the harness's own memory is
    /// counted in the process's peak RSS.
    gaps_ms: Mutex<Vec<f32>>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    bad_signatures: AtomicU64,
    unmatched: AtomicU64,
    /// Hashes of the webhook ids received (a duplicate has the same id).
    seen_ids: Mutex<std::collections::HashSet<u64>>,
    ids: std::hash::RandomState,
    latencies_ms: Mutex<Vec<f32>>,
    secret: WebhookSecret,
}

#[derive(Default)]
struct Doc {
    revision: u64,
    requests: u64,
    /// Whether the current revision was sent yet.
    served: bool,
    last_request: Option<Instant>,
}

impl Api {
    fn new(args: &Args) -> Api {
        Api {
            docs: (0..args.endpoints).map(|_| Mutex::default()).collect(),
            etag: args.etag == OnOff::On,
            change_rate: args.change_rate,
            changing: AtomicBool::new(true),
            window_open: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            changes_made: AtomicU64::new(0),
            changes_served: AtomicU64::new(0),
            api_connections: AtomicU64::new(0),
            receiver_connections: AtomicU64::new(0),
            served_at: Mutex::default(),
            gaps_ms: Mutex::default(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            seen_ids: Mutex::default(),
            ids: std::hash::RandomState::new(),
            latencies_ms: Mutex::default(),
            secret: SECRET.parse().expect("a valid secret"),
        }
    }
}

fn api_router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/doc/{index}", get(document))
        .with_state(api)
}

async fn document(
    State(api): State<Arc<Api>>,
    UrlPath(index): UrlPath<usize>,
    headers: HeaderMap,
) -> Response {
    let Some(doc) = api.docs.get(index) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let now = Instant::now();
    api.requests.fetch_add(1, Ordering::Relaxed);
    let mut doc = lock(doc);
    doc.requests += 1;
    if let Some(last) = doc.last_request.replace(now)
        && api.window_open.load(Ordering::Relaxed)
    {
        lock(&api.gaps_ms).push((now - last).as_secs_f32() * 1000.0);
    }
    // The first request is the baseline; later ones may find a change.
    if doc.requests > 1
        && api.changing.load(Ordering::Relaxed)
        && unit_random(index as u64, doc.requests) < api.change_rate
    {
        doc.revision += 1;
        doc.served = false;
        api.changes_made.fetch_add(1, Ordering::Relaxed);
    }
    let etag = format!("\"r{}\"", doc.revision);
    if api.etag
        && headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|value| value.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    if !doc.served {
        doc.served = true;
        if doc.revision > 0 {
            api.changes_served.fetch_add(1, Ordering::Relaxed);
            lock(&api.served_at).insert((index, doc.revision), now);
        }
    }
    let body = render(index, doc.revision);
    drop(doc);
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if api.etag {
        response.headers_mut().insert(
            header::ETAG,
            etag.parse().expect("an ETag is a valid header value"),
        );
    }
    response
}

/// ~1.5 KiB: a revision and ten items; a change bumps the revision and one
/// item's price and stock.
fn render(index: usize, revision: u64) -> String {
    let mut text = String::with_capacity(1600);
    text.push_str(&format!(
        r#"{{"endpoint":"e{index}","revision":{revision},"updated":"2026-11-23T10:00:00Z","items":["#
    ));
    for item in 0..10u64 {
        if item > 0 {
            text.push(',');
        }
        // Item `revision % 10` moved at the latest change.
        let bumps = revision / 10 + u64::from(revision % 10 > item && revision > 0);
        text.push_str(&format!(
            r#"{{"id":"item-{index}-{item}","name":"Product {item} of shop {index}","price_cents":{},"stock":{},"currency":"EUR","tags":["new","sale"],"available":true}}"#,
            1000 + item * 100 + bumps * 5,
            (item + bumps) % 50,
        ));
    }
    text.push_str("]}");
    text
}

fn receiver_router(api: Arc<Api>) -> Router {
    Router::new().route("/hook", post(receive)).with_state(api)
}

async fn receive(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    };
    let id = header("webhook-id");
    let verified = header("webhook-timestamp")
        .parse::<u64>()
        .is_ok_and(|timestamp| {
            let expected = sign::sign(&api.secret, id, timestamp, &body);
            header("webhook-signature")
                .split(' ')
                .any(|signature| signature == expected)
        });
    if !verified {
        api.bad_signatures.fetch_add(1, Ordering::Relaxed);
    }
    if !lock(&api.seen_ids).insert(api.ids.hash_one(id)) {
        api.duplicates.fetch_add(1, Ordering::Relaxed);
        return StatusCode::NO_CONTENT;
    }
    api.delivered.fetch_add(1, Ordering::Relaxed);
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let data = &event["data"];
    let index = data["endpoint"]
        .as_str()
        .and_then(|name| name.strip_prefix('e'))
        .and_then(|index| index.parse::<usize>().ok());
    let revision = data["patch"].as_array().and_then(|ops| {
        ops.iter()
            .find(|op| op["path"] == "/revision")
            .and_then(|op| op["value"].as_u64())
    });
    let served = index
        .zip(revision)
        .and_then(|key| lock(&api.served_at).remove(&key));
    match served {
        Some(served) => lock(&api.latencies_ms).push((now - served).as_secs_f32() * 1000.0),
        None => {
            api.unmatched.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::NO_CONTENT
}

/// Counts the connections a server accepts into one of `api`'s counters.
fn counter(
    api: &Arc<Api>,
    field: fn(&Api) -> &AtomicU64,
) -> impl FnMut(&mut tokio::net::TcpStream) + Send + 'static {
    let api = api.clone();
    move |_| {
        field(&api).fetch_add(1, Ordering::Relaxed);
    }
}

async fn serve(
    router: Router,
    accepted: impl FnMut(&mut tokio::net::TcpStream) + Send + 'static,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener.tap_io(accepted), router).await {
            eprintln!("load: a server stopped: {error}");
        }
    });
    Ok(address)
}

/// The sum of the daemon's `name` metric over all its label sets, read from
/// its `/metrics` (through the address it wrote in its state dir) line by
/// line: at 10,000 endpoints the page is megabytes, and a whole copy of it
/// would be the harness's memory counted in the process's peak.
async fn scrape_metric_sum(state_dir: &Path, name: &str) -> anyhow::Result<f64> {
    let address = std::fs::read_to_string(pollhook::daemon::admin_address_file(state_dir))?;
    let address = address.trim();
    let url = if address.starts_with("http") {
        format!("{address}/metrics")
    } else {
        format!("http://{address}/metrics")
    };
    let mut response = reqwest::get(url).await?.error_for_status()?;
    let (mut sum, mut line) = (0.0, Vec::new());
    while let Some(chunk) = response.chunk().await? {
        let mut rest = &chunk[..];
        while let Some(end) = rest.iter().position(|byte| *byte == b'\n') {
            line.extend_from_slice(&rest[..end]);
            sum += metric_value(&String::from_utf8_lossy(&line), name);
            line.clear();
            rest = &rest[end + 1..];
        }
        line.extend_from_slice(rest);
    }
    Ok(sum + metric_value(&String::from_utf8_lossy(&line), name))
}

/// The value on an exposition line of metric `name`, or 0 for other lines.
fn metric_value(line: &str, name: &str) -> f64 {
    line.strip_prefix(name)
        .filter(|rest| rest.starts_with('{') || rest.starts_with(' '))
        .and_then(|_| line.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// A deterministic number in [0, 1) from an endpoint and a request count.
fn unit_random(index: u64, request: u64) -> f64 {
    let mut x = index
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(request.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// CPU seconds: the whole process (threads that ended included) and the
/// harness threads alone.
struct Cpu {
    total: f64,
    harness: f64,
}

impl Cpu {
    fn now() -> Cpu {
        Cpu {
            total: process_cpu(),
            harness: harness_cpu(),
        }
    }

    fn daemon(&self) -> f64 {
        self.total - self.harness
    }

    /// (process, daemon) seconds since `earlier`.
    fn since(&self, earlier: &Cpu) -> (f64, f64) {
        (self.total - earlier.total, self.daemon() - earlier.daemon())
    }
}

fn process_cpu() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// utime + stime of the threads named [`HARNESS_THREAD`].
fn harness_cpu() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut total = 0.0;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != HARNESS_THREAD {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After comm: state is field 3; utime and stime are fields 14 and 15.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        total += (field(14).unwrap_or(0.0) + field(15).unwrap_or(0.0)) / ticks;
    }
    total
}

/// A `/proc/self/status` memory line (`VmRSS:`, `VmHWM:`) in bytes.
fn vm_status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .map_or(0, |kib: u64| kib * 1024)
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The value at `fraction` of a sorted sample (0 when empty).
fn percentile(sorted: &[f32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
