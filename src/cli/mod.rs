//! The command line: parses arguments, sets up logging, runs one command,
//! and turns its result into an exit code (78 for a bad config).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, HumanDuration};
use crate::poller::{Mode, Poller};
use crate::store::Store;
use crate::views::PreviewView;

/// `println!` that returns the write's error instead of panicking, so that
/// a reader that went away (`pollhook status | head -2`) ends the command
/// quietly: [`main`] exits 0 on a broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` as [`outln!`] is `println!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `eprintln!` that never panics: when stderr is gone, there is nowhere
/// left to say anything. The line is written whole, in one system call:
/// stderr is unbuffered, and `writeln!` writes each piece on its own (4,000
/// calls for the 1,000 lines of a `once` over 1,000 endpoints).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }};
}

mod state;

/// EX_CONFIG from sysexits.h: the configuration is wrong.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "pollhook",
    version,
    about = "Turns pull-only HTTP APIs into push: polls, diffs, sends signed webhooks"
)]
struct Cli {
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`); `RUST_LOG` is used when this is not given.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The config file.
    #[arg(short, long, env = "POLLHOOK_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: poll every endpoint on its schedule and deliver changes.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// This instance's shard of the endpoints, `i/n` (instead of
        /// `[cluster] shard`).
        #[arg(long, env = "POLLHOOK_SHARD")]
        shard: Option<crate::config::Shard>,
    },
    /// Validate the config file and print every mistake in it.
    Check(ConfigArg),
    /// Poll now and print the events that would be sent, as JSON lines.
    Once {
        #[command(flatten)]
        config: ConfigArg,
        /// Endpoints to poll (default: all).
        names: Vec<String>,
        /// Store the result and deliver the events instead of only printing them.
        #[arg(long)]
        send: bool,
    },
    /// Show every endpoint: schedule, last poll, last change, failures, queue.
    Status {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Make the running daemon poll an endpoint now.
    Poll {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
    },
    /// List an endpoint's stored versions, or show what changed between two.
    History {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        /// Show the change from version V1 to version V2.
        #[arg(long, num_args = 2, value_names = ["V1", "V2"])]
        diff: Option<Vec<u64>>,
    },
    /// Print events as the running daemon produces them, one JSON line each.
    Tail {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this endpoint's.
        name: Option<String>,
    },
    /// Make the running daemon re-read its config (as SIGHUP does).
    Reload {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the webhooks waiting to be delivered, with their next attempt.
    Deliveries {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this target's.
        #[arg(long)]
        target: Option<String>,
    },
    /// List the dead letters: webhooks whose every attempt failed.
    Dead {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this target's.
        #[arg(long)]
        target: Option<String>,
        /// Also print every attempt: time, status, duration, response.
        #[arg(long)]
        attempts: bool,
    },
    /// Put dead letters back in the queue: same webhook-id, fresh signature.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// Event ids (`msg_...`) to replay.
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        ids: Vec<String>,
        /// Replay every dead letter (narrow with `--target` and `--since`).
        #[arg(long)]
        dead: bool,
        #[arg(long, requires = "dead")]
        target: Option<String>,
        /// Only letters that died since this time: RFC 3339, or a duration ago (`2h`).
        #[arg(long, requires = "dead")]
        since: Option<String>,
    },
    /// Send a `pollhook.test` event to a target, as a delivery is sent, and print its answer.
    Test {
        #[command(flatten)]
        config: ConfigArg,
        target: String,
    },
    /// Stop polling an endpoint until `resume` (kept across restarts).
    Pause {
        #[command(flatten)]
        config: ConfigArg,
        endpoint: String,
    },
    /// Poll a paused endpoint again, or deliver again to a target that was
    /// paused after answering 410 Gone.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        /// An endpoint's or a target's name.
        name: String,
    },
    /// Watch a local demo API and print the webhooks it causes; no internet needed.
    Demo {
        /// Stop after this long (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<String>,
        /// How often the demo API's data changes.
        #[arg(long, default_value = "2s")]
        tick: String,
    },
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        cli.log_level.as_deref(),
        cli.log_format,
        matches!(cli.command, Command::Demo { .. }),
    );
    // `once` runs on one thread: its polls mostly wait on the network, and
    // a worker pool's wake-ups between threads cost more than the threads
    // win (on 2 cores a pool took 4-12 % more CPU for a pass over 1,000
    // endpoints, and made it faster only while the machine was quiet; see
    // docs/performance.md). Blocking work (syncs, sled) has threads of its
    // own either way.
    let mut runtime = match cli.command {
        Command::Once { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            errln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        // The reader has all it wanted (`| head`): not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(config_error) = error.downcast_ref::<ConfigError>() {
                errln!("{}", crate::error_chain(config_error));
                if let ConfigError::Read { source, .. } = config_error
                    && source.kind() == std::io::ErrorKind::NotFound
                {
                    errln!(
                        "hint: name the config file with `-c FILE` or `$POLLHOOK_CONFIG` (the default is `{DEFAULT_CONFIG_PATH}`)"
                    );
                }
                return ExitCode::from(EXIT_CONFIG);
            }
            errln!("error: {}", crate::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, shard } => {
            let mut config = Config::load(&config.config)?;
            config.cluster.shard = shard.or(config.cluster.shard);
            if config.cluster.nats.is_some() && config.cluster.shard.is_none() {
                errln!(
                    "{}: `[cluster] nats` needs this instance's shard: set `shard = \"i/n\"` in `[cluster]` or run with `--shard i/n`",
                    config.path.display()
                );
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            crate::daemon::run(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(ConfigArg { config }) => {
            let config = Config::load(&config)?;
            for warning in &config.warnings {
                errln!("{warning}");
            }
            outln!(
                "config ok: {} endpoints, {} targets",
                config.endpoints.len(),
                config.targets.len()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Once {
            config,
            names,
            send,
        } => once(&config.config, &names, send).await,
        Command::Status { config } => {
            state::status(&Config::load_to_find_the_daemon(&config.config)?).await
        }
        Command::Poll { config, name } => {
            state::poll(&Config::load_to_find_the_daemon(&config.config)?, &name).await
        }
        Command::History { config, name, diff } => {
            state::history(
                &Config::load_to_find_the_daemon(&config.config)?,
                &name,
                diff.as_deref(),
            )
            .await
        }
        Command::Tail { config, name } => {
            state::tail(
                &Config::load_to_find_the_daemon(&config.config)?,
                name.as_deref(),
            )
            .await
        }
        Command::Reload { config } => {
            state::reload(&Config::load_to_find_the_daemon(&config.config)?).await
        }
        Command::Deliveries { config, target } => {
            state::deliveries(
                &Config::load_to_find_the_daemon(&config.config)?,
                target.as_deref(),
            )
            .await
        }
        Command::Dead {
            config,
            target,
            attempts,
        } => {
            state::dead(
                &Config::load_to_find_the_daemon(&config.config)?,
                target.as_deref(),
                attempts,
            )
            .await
        }
        Command::Replay {
            config,
            ids,
            dead: _,
            target,
            since,
        } => {
            let since_ms = since.as_deref().map(state::parse_since).transpose()?;
            state::replay(
                &Config::load_to_find_the_daemon(&config.config)?,
                &ids,
                target.as_deref(),
                since_ms,
            )
            .await
        }
        Command::Test { config, target } => {
            test_target(&Config::load(&config.config)?, &target).await
        }
        Command::Pause { config, endpoint } => {
            state::pause(&Config::load_to_find_the_daemon(&config.config)?, &endpoint).await
        }
        Command::Resume { config, name } => {
            state::resume(&Config::load_to_find_the_daemon(&config.config)?, &name).await
        }
        Command::Demo { duration, tick } => {
            let parse = |text: &str, what: &str| -> anyhow::Result<std::time::Duration> {
                Ok(text
                    .parse::<HumanDuration>()
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("bad `--{what}`"))?
                    .0)
            };
            let duration = duration
                .as_deref()
                .map(|text| parse(text, "duration"))
                .transpose()?;
            let tick = parse(&tick, "tick")?;
            crate::demo::run(duration, tick).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A document as people read it: indented JSON, the text, or a hash.
/// `pollhook once`: polls the chosen endpoints now, through the daemon's
/// poller (so with its caps and politeness), and prints their events; with
/// `--send` it stores what it found and delivers through the daemon's
/// dispatcher until nothing is due. A dry run while the daemon runs is the
/// daemon's: it previews with its config file and its live snapshots.
async fn once(path: &Path, names: &[String], send: bool) -> anyhow::Result<ExitCode> {
    // Before the config's large vectors come and go: see there.
    crate::daemon::keep_large_blocks_mapped();
    if !send {
        let found = Config::load_to_find_the_daemon(path)?;
        if let Some(admin) = crate::admin::AdminClient::discover(&found).await {
            return preview_by_the_daemon(&admin, &found, names).await;
        }
    }
    let config = Config::load(path)?;
    for warning in &config.warnings {
        errln!("{warning}");
    }
    let endpoints = if names.is_empty() {
        config.endpoints.clone()
    } else {
        names
            .iter()
            .map(|name| {
                config
                    .endpoint(name)
                    .cloned()
                    .with_context(|| format!("no endpoint named `{name}` in the config"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    // A dry run writes nothing, not even a fresh state dir: without a store
    // it compares with an empty one made aside.
    let scratch;
    let state_dir = match send || Store::exists(&config.state_dir) {
        true => config.state_dir.as_path(),
        false => {
            scratch = tempfile::tempdir()?;
            scratch.path()
        }
    };
    let store = Arc::new(Store::open(state_dir)?);
    let poller = Poller::new(store.clone(), &config)?;
    let mode = if send { Mode::Commit } else { Mode::DryRun };
    // With `--send`, the dispatchers deliver each change as soon as it is
    // durable, while the later polls still run.
    let wakes = crate::status::Wakes::default();
    let polls_done = CancellationToken::new();
    let polling = async {
        // However polling ends, the dispatchers learn that no more rows come.
        let _done = polls_done.clone().drop_guard();
        let mut polls = poller.poll_all(endpoints, mode, config.max_concurrent_polls);
        let mut failed = false;
        let named = !names.is_empty();
        let mut tally = Tally::default();
        while let Some((endpoint, report)) = polls.next().await {
            if report.queued > 0 {
                wakes.wake_targets_of(&endpoint);
            }
            // Named endpoints show what is compared, to help tune the filters.
            let view = PreviewView::new(&store, &endpoint, &report, named)?;
            failed |= show_preview(&view, named)?;
            tally.count(view.result);
        }
        tally.show();
        // What benches/once/breakdown.py splits a pass at.
        tracing::debug!("every endpoint polled");
        anyhow::Ok(failed)
    };
    let delivering = async {
        match send {
            true => deliver_until_drained(&store, &config, &wakes, polls_done.clone()).await,
            false => Ok(()),
        }
    };
    let (failed, delivered) = tokio::join!(polling, delivering);
    let failed = failed?;
    delivered?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `once` without `--send` while the daemon runs: each endpoint previewed
/// by the daemon, a few at a time.
async fn preview_by_the_daemon(
    admin: &crate::admin::AdminClient,
    config: &Config,
    names: &[String],
) -> anyhow::Result<ExitCode> {
    errln!(
        "pollhook runs: previewing through it, with its config file as it is now and its stored snapshots"
    );
    let named = !names.is_empty();
    let names: Vec<String> = match names.is_empty() {
        true => config
            .endpoints
            .iter()
            .map(|e| e.name.to_string())
            .collect(),
        false => names.to_vec(),
    };
    let mut previews = futures_util::stream::iter(&names)
        .map(|name| async move {
            let path = format!("/api/v1/endpoints/{name}/preview");
            admin.json::<PreviewView>("POST", &path).await
        })
        .buffered(8);
    let mut failed = false;
    let mut tally = Tally::default();
    while let Some(view) = previews.next().await {
        let mut view = view?;
        if names.len() > 1 {
            view.document = None;
        }
        failed |= show_preview(&view, named)?;
        tally.count(view.result);
    }
    tally.show();
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// How many polls of a `once` pass had each result, in the order the
/// results came: what stands for the lines of the unchanged endpoints.
#[derive(Default)]
struct Tally(Vec<(String, usize)>);

impl Tally {
    fn count(&mut self, result: String) {
        match self.0.iter_mut().find(|(seen, _)| *seen == result) {
            Some((_, count)) => *count += 1,
            None => self.0.push((result, 1)),
        }
    }

    /// E.g. `1000 endpoint(s) polled, 100 changed, 900 unchanged`.
    fn show(&self) {
        let polled: usize = self.0.iter().map(|(_, count)| count).sum();
        let mut line = format!("{polled} endpoint(s) polled");
        for (result, count) in &self.0 {
            line.push_str(&format!(", {count} {result}"));
        }
        errln!("{line}");
    }
}

/// Prints a preview as `once` does: a line on stderr (for an unchanged
/// endpoint only when `named`: from cron, a line per unchanged endpoint
/// would be mailed at every pass), the extracted document (when it has
/// one) on stderr, the events on stdout. True when the poll failed.
fn show_preview(view: &PreviewView, named: bool) -> std::io::Result<bool> {
    let name = &view.endpoint;
    match view.result.as_str() {
        "failed" => errln!(
            "{name}: poll failed: {}",
            view.error.as_deref().unwrap_or_default()
        ),
        "unchanged" if !named => {}
        "unchanged" | "cancelled" => errln!("{name}: {}", view.result),
        result => match view.version {
            Some(version) => errln!(
                "{name}: {result}, version {version}, {} event(s)",
                view.events.len()
            ),
            // An incremental endpoint keeps no versions.
            None => errln!("{name}: {result}, {} event(s)", view.events.len()),
        },
    }
    if let Some(warning) = &view.warning {
        errln!("{name}: warning: {warning}");
    }
    if let Some(cursor) = &view.cursor {
        errln!("{name}: cursor {cursor}");
    }
    if let Some((kind, text)) = &view.document {
        errln!("{name}: extracted document ({kind}):\n{text}");
    }
    for event in &view.events {
        outln!("{event}")?;
    }
    Ok(view.result == "failed")
}

/// Delivers through the daemon's dispatchers what is due and what the
/// polls queue (each woken through `wakes`), until `polls_done` and nothing
/// is due. Rows were made durable as they were committed; the baselines are
/// flushed with the deliveries' records at the end.
async fn deliver_until_drained(
    store: &Arc<Store>,
    config: &Config,
    wakes: &crate::status::Wakes,
    polls_done: CancellationToken,
) -> anyhow::Result<()> {
    let dispatch = crate::deliver::Dispatch {
        store: store.clone(),
        clients: crate::deliver::clients()?,
        metrics: Arc::new(crate::metrics::Metrics::default()),
        grace: config.shutdown_grace,
        // Each drains on its own: rows queued for another are sent by it
        // if it has not finished, else at the next start.
        wakes: Arc::default(),
    };
    let delivered = crate::deliver::drain(&dispatch, &config.targets, wakes, polls_done).await;
    for (target, delivered) in config.targets.iter().zip(delivered) {
        let queued = store.outbox_rows(&target.name)?.len();
        errln!(
            "target {}: {delivered} delivered, {queued} still queued",
            target.name
        );
    }
    store.flush().await?;
    Ok(())
}

/// Whether writing to stdout failed because its reader went away.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop pollhook with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

/// Logs go to stderr; plain text without colours unless stderr is a terminal.
fn init_logging(level: Option<&str>, format: LogFormat, demo: bool) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        // The demo is for reading: keep reqwest's and sled's chatter out.
        None if demo => EnvFilter::new("pollhook=info,warn"),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // Under systemd the journal stamps every line already.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match (format, journald) {
        (LogFormat::Plain, false) => builder.init(),
        (LogFormat::Plain, true) => builder.without_time().init(),
        (LogFormat::Json, _) => builder.json().init(),
    }
}

/// `pollhook test TARGET`: one attempt of a test event, written, signed and
/// sent as every delivery is; not queued, so nothing retries it.
async fn test_target(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let Some(target) = config.targets.iter().find(|target| target.name == name) else {
        let names: Vec<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
        anyhow::bail!(
            "no target `{name}` in `{}`; its targets: {}",
            config.path.display(),
            match names.is_empty() {
                true => "none".to_string(),
                false => names.join(", "),
            }
        );
    };
    let event = crate::event::test_event(&target.name, crate::clock::now_ms());
    let row = crate::store::OutboxRow {
        event_id: event.id.clone(),
        event_type: event.kind.to_string(),
        body: event.body(),
        created_ms: event.timestamp_ms,
        next_attempt_ms: event.timestamp_ms,
        ..Default::default()
    };
    let link = crate::deliver::Link::open(&crate::deliver::clients()?, target, None);
    let attempt = link.attempt(target, &row).await;
    link.close().await;
    outln!(
        "sent {} {} to `{}` ({}) in {} ms",
        event.kind,
        event.id,
        target.name,
        target.url.shown(),
        attempt.duration.as_millis()
    )?;
    if let Some(status) = attempt.status {
        outln!("answer: HTTP {status}")?;
    }
    if !attempt.response.is_empty() {
        outln!("{}", attempt.response.trim_end())?;
    }
    Ok(match attempt.error {
        None => ExitCode::SUCCESS,
        Some(error) => {
            errln!("error: the delivery failed: {error}");
            ExitCode::FAILURE
        }
    })
}
