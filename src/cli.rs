//! The command line: parses arguments, sets up logging, runs one command,
//! and turns its result into an exit code (78 for a bad config).

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, HumanDuration};
use crate::poll::{self, Observation};
use crate::store::{DeadFilter, OutboxRow, Store};

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
    Run(ConfigArg),
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
    /// Deliver again to a target that was paused after answering 410 Gone.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        target: String,
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            if let Some(config_error) = error.downcast_ref::<ConfigError>() {
                eprintln!("{config_error}");
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("error: {}", crate::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(ConfigArg { config }) => {
            let config = Config::load(&config)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            crate::daemon::run(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(ConfigArg { config }) => {
            let config = Config::load(&config)?;
            println!(
                "config ok: {} endpoints, {} targets",
                config.endpoints.len(),
                config.targets.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Once {
            config,
            names,
            send,
        } => once(&config.config, &names, send).await,
        Command::Deliveries { config, target } => {
            let store = open_store(&config.config)?;
            let now = crate::clock::now_ms();
            let rows = store.queued_rows(target.as_deref())?;
            let mut table = vec![row_of([
                "TARGET",
                "EVENT",
                "ENDPOINT",
                "TYPE",
                "ATTEMPTS",
                "LAST",
                "NEXT ATTEMPT",
            ])];
            for (target, row) in &rows {
                let next = if store.paused(target)?.is_some() {
                    "paused".to_string()
                } else if row.next_attempt_ms <= now {
                    "now".to_string()
                } else {
                    let wait =
                        std::time::Duration::from_secs((row.next_attempt_ms - now).div_ceil(1000));
                    format!("in {}", humantime::format_duration(wait))
                };
                table.push(vec![
                    target.clone(),
                    row.event_id.clone(),
                    row.endpoint.clone(),
                    row.event_type.clone(),
                    row.attempts.to_string(),
                    last_result(row),
                    next,
                ]);
            }
            print_table(&table);
            eprintln!("{} queued", rows.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dead {
            config,
            target,
            attempts,
        } => {
            let store = open_store(&config.config)?;
            let rows = store.dead_rows(target.as_deref())?;
            let mut table = vec![row_of([
                "TARGET", "EVENT", "ENDPOINT", "TYPE", "ATTEMPTS", "LAST", "DIED",
            ])];
            for (target, row) in &rows {
                table.push(vec![
                    target.clone(),
                    row.event_id.clone(),
                    row.endpoint.clone(),
                    row.event_type.clone(),
                    row.attempts.to_string(),
                    last_result(row),
                    row.dead_at_ms
                        .map(crate::clock::rfc3339)
                        .unwrap_or_default(),
                ]);
            }
            print_table(&table);
            if attempts {
                for (target, row) in &rows {
                    println!("\n{} to {target}:", row.event_id);
                    for attempt in &row.attempt_log {
                        let status = attempt
                            .status
                            .map_or("-".to_string(), |status| status.to_string());
                        println!(
                            "  #{} {} status {status} in {} ms{}",
                            attempt.attempt,
                            crate::clock::rfc3339(attempt.at_ms),
                            attempt.duration_ms,
                            attempt
                                .error
                                .as_ref()
                                .map(|error| format!(" ({error})"))
                                .unwrap_or_default()
                        );
                        if !attempt.response.is_empty() {
                            println!("    response: {}", attempt.response.replace('\n', " "));
                        }
                    }
                }
            }
            eprintln!("{} dead letter(s)", rows.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            config,
            ids,
            dead: _,
            target,
            since,
        } => {
            let store = open_store(&config.config)?;
            let since_ms = since.as_deref().map(parse_since).transpose()?;
            let dead = store.dead_rows(None)?;
            let missing: Vec<&str> = ids
                .iter()
                .filter(|id| !dead.iter().any(|(_, row)| &row.event_id == *id))
                .map(String::as_str)
                .collect();
            let replayed = store.replay(&DeadFilter {
                event_ids: &ids,
                target: target.as_deref(),
                since_ms,
            })?;
            store.flush().await?;
            println!("re-queued {replayed} webhook(s); the daemon delivers them at its next start");
            if !missing.is_empty() {
                eprintln!("error: no dead letter with id {}", missing.join(", "));
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { config, target } => {
            let store = open_store(&config.config)?;
            let resumed = store.resume(&target)?;
            store.flush().await?;
            if resumed {
                println!(
                    "target `{target}` resumed: its queued webhooks are delivered at the daemon's next start"
                );
            } else {
                println!("target `{target}` was not paused");
            }
            Ok(ExitCode::SUCCESS)
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

/// `pollhook once`: polls the chosen endpoints now and prints their events.
async fn once(path: &Path, names: &[String], send: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
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
    let store = Store::open(&config.state_dir)?;
    let client = crate::fetch::client()?;
    let mut failed = false;
    let mut stdout = std::io::stdout().lock();
    for endpoint in &endpoints {
        let observation = match poll::observe(&client, &store, endpoint).await {
            Ok(observation) => observation,
            Err(error) => {
                eprintln!(
                    "{}: poll failed: {}",
                    endpoint.name,
                    crate::error_chain(&error)
                );
                failed = true;
                continue;
            }
        };
        match &observation {
            Observation::Unchanged { .. } => eprintln!("{}: unchanged", endpoint.name),
            Observation::New {
                reason,
                snapshot,
                events,
                ..
            } => {
                eprintln!(
                    "{}: {reason:?}, version {}, {} event(s)",
                    endpoint.name,
                    snapshot.version,
                    events.len()
                )
            }
        }
        for event in observation.events() {
            writeln!(stdout, "{}", event.body())?;
        }
        if send {
            poll::apply(&store, endpoint, &observation).await?;
        }
    }
    if send {
        let delivery_client = crate::deliver::client()?;
        for target in &config.targets {
            let delivered = crate::deliver::deliver_due(&store, &delivery_client, target).await?;
            let queued = store.outbox_rows(&target.name)?.len();
            eprintln!(
                "target {}: {delivered} delivered, {queued} still queued",
                target.name
            );
        }
        store.flush().await?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Opens the store of the config at `path`, for the commands that read it.
fn open_store(path: &Path) -> anyhow::Result<Store> {
    let config = Config::load(path)?;
    Ok(Store::open(&config.state_dir)?)
}

/// `500 (HTTP status 500)`, `- (timed out after 15s)`, or empty.
fn last_result(row: &OutboxRow) -> String {
    match (row.last_status, &row.last_error) {
        (Some(status), _) => status.to_string(),
        (None, Some(error)) => error.clone(),
        (None, None) => "-".to_string(),
    }
}

/// `--since`: an RFC 3339 time, or a duration before now.
fn parse_since(text: &str) -> anyhow::Result<u64> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(u64::try_from(time.timestamp_millis()).unwrap_or(0));
    }
    let ago = humantime::parse_duration(text).with_context(|| {
        format!("bad `--since {text}`: give an RFC 3339 time or a duration such as `2h`")
    })?;
    Ok(crate::clock::now_ms().saturating_sub(ago.as_millis() as u64))
}

fn row_of<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|cell| cell.to_string()).collect()
}

/// Prints rows as left-aligned columns.
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
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
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
