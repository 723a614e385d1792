//! Commands that read or change the daemon's state: through the admin API
//! while the daemon runs (sled admits one process), from the store itself
//! when it does not.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::BodyExt as _;

use crate::admin::{AdminClient, AdminError, EndpointView, TargetRow, VersionView};
use crate::clock;
use crate::config::Config;
use crate::extract::{Document, Kind};
use crate::store::{DAMAGED, DeadFilter, OutboxRow, Store, Stored};

/// Exit code of `status` when the daemon is not running (as `systemctl status`).
const EXIT_NOT_RUNNING: u8 = 3;

/// Where the state is read from.
enum Source {
    Daemon(AdminClient),
    Store(Box<Store>),
}

async fn source(config: &Config) -> anyhow::Result<Source> {
    match AdminClient::discover(config).await {
        Some(client) => Ok(Source::Daemon(client)),
        None => Ok(Source::Store(Box::new(Store::open(&config.state_dir)?))),
    }
}

/// For commands that only a running daemon can do.
async fn daemon(config: &Config, instead: &str) -> anyhow::Result<AdminClient> {
    AdminClient::discover(config)
        .await
        .with_context(|| format!("pollhook is not running{instead}"))
}

fn query(target: Option<&str>) -> String {
    target
        .map(|target| format!("?target={target}"))
        .unwrap_or_default()
}

fn time(ms: Option<u64>) -> String {
    ms.map(clock::rfc3339).unwrap_or_else(|| "-".to_string())
}

pub async fn status(config: &Config) -> anyhow::Result<ExitCode> {
    let (views, running) = match AdminClient::discover(config).await {
        Some(client) => (
            client
                .json::<Vec<EndpointView>>("GET", "/api/v1/endpoints")
                .await?,
            true,
        ),
        None => {
            // Not running: what the config and the store still say.
            let store = Store::open(&config.state_dir)?;
            let pending = store.pending_by_endpoint()?;
            let mut views = Vec::new();
            for endpoint in &config.endpoints {
                let snapshot = store.snapshot(&endpoint.name)?;
                views.push(EndpointView {
                    name: endpoint.name.to_string(),
                    url: endpoint.display_url(),
                    schedule: endpoint.schedule.to_string(),
                    targets: endpoint.targets.to_vec(),
                    last_poll_ms: None,
                    last_error: None,
                    consecutive_failures: 0,
                    next_poll_ms: None,
                    version: snapshot.as_ref().map(|snapshot| snapshot.version),
                    last_change_ms: snapshot.map(|snapshot| snapshot.changed_at_ms),
                    pending_deliveries: pending.get(&*endpoint.name).copied().unwrap_or(0),
                });
            }
            (views, false)
        }
    };
    let mut table = vec![header([
        "ENDPOINT",
        "SCHEDULE",
        "LAST POLL",
        "LAST CHANGE",
        "VERSION",
        "FAILURES",
        "PENDING",
    ])];
    for view in &views {
        table.push(vec![
            view.name.clone(),
            view.schedule.clone(),
            time(view.last_poll_ms),
            time(view.last_change_ms),
            view.version
                .map_or("-".to_string(), |version| version.to_string()),
            view.consecutive_failures.to_string(),
            view.pending_deliveries.to_string(),
        ]);
    }
    print_table(&table);
    if running {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("pollhook is not running (shown: what the store holds)");
        Ok(ExitCode::from(EXIT_NOT_RUNNING))
    }
}

pub async fn poll(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let client = daemon(
        config,
        &format!("; `pollhook once {name}` polls without it"),
    )
    .await?;
    client
        .bytes("POST", &format!("/api/v1/endpoints/{name}/poll"))
        .await?;
    println!("polling `{name}` now");
    Ok(ExitCode::SUCCESS)
}

pub async fn history(
    config: &Config,
    name: &str,
    diff: Option<&[u64]>,
) -> anyhow::Result<ExitCode> {
    let source = source(config).await?;
    let versions: Vec<VersionView> = match &source {
        Source::Daemon(client) => {
            client
                .json("GET", &format!("/api/v1/endpoints/{name}/history"))
                .await?
        }
        Source::Store(store) => store.history(name)?,
    };
    let Some([from, to]) = diff.map(|versions| [versions[0], versions[1]]) else {
        let mut table = vec![header(["VERSION", "STORED", "KIND", "BYTES"])];
        for version in &versions {
            // A garbage header has no time to show.
            let stored = match (version.kind == DAMAGED, version.at_ms) {
                (true, 0) => "-".to_string(),
                (_, at_ms) => clock::rfc3339(at_ms),
            };
            table.push(vec![
                version.version.to_string(),
                stored,
                version.kind.clone(),
                version.bytes.to_string(),
            ]);
        }
        print_table(&table);
        if versions.is_empty() {
            eprintln!("`{name}` has no stored versions");
        }
        for version in versions.iter().filter(|version| version.kind == DAMAGED) {
            eprintln!(
                "warning: version {} of `{name}` is damaged: its file no longer holds what was stored, so it cannot be compared",
                version.version
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    let mut documents = Vec::new();
    for wanted in [from, to] {
        let kept = versions
            .iter()
            .find(|version| version.version == wanted)
            .with_context(|| {
                let kept: Vec<String> = versions
                    .iter()
                    .map(|version| version.version.to_string())
                    .collect();
                format!(
                    "`{name}` has no stored version {wanted} (kept: {})",
                    kept.join(", ")
                )
            })?;
        let damaged = || {
            anyhow::anyhow!(
                "version {wanted} of `{name}` is damaged: its file no longer holds what was stored, so it cannot be compared"
            )
        };
        if kept.kind == DAMAGED {
            return Err(damaged());
        }
        let document = match &source {
            Source::Daemon(client) => {
                let bytes = client
                    .bytes("GET", &format!("/api/v1/endpoints/{name}/history/{wanted}"))
                    .await?;
                let kind = Kind::from_name(&kept.kind).unwrap_or(Kind::Bytes);
                Document::from_canonical(kind, bytes.to_vec())
            }
            Source::Store(store) => match store.read_document(name, wanted)? {
                Stored::Kept(document) => document,
                Stored::Missing => anyhow::bail!("version {wanted} of `{name}` vanished"),
                Stored::Damaged { .. } => return Err(damaged()),
            },
        };
        documents.push(document);
    }
    match crate::diff::diff(Some(&documents[0]), &documents[1]) {
        None => println!("versions {from} and {to} are the same"),
        Some(crate::diff::Change::Json { patch }) => {
            println!("{}", serde_json::to_string_pretty(&patch)?)
        }
        Some(crate::diff::Change::Items(items)) => {
            let [added, removed, changed] = items.into_json();
            let report =
                serde_json::json!({ "added": added, "removed": removed, "changed": changed });
            println!("{}", serde_json::to_string_pretty(&report)?)
        }
        Some(crate::diff::Change::Text { diff }) => print!("{diff}"),
        Some(crate::diff::Change::Bytes {
            previous_hash,
            current_hash,
        }) => {
            println!("binary: {previous_hash} -> {current_hash}")
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tail(config: &Config, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let client = daemon(config, "").await?;
    let path = match name {
        Some(name) => format!("/api/v1/events?endpoint={name}"),
        None => "/api/v1/events".to_string(),
    };
    let response = client.send("GET", &path).await?;
    if !response.status().is_success() {
        anyhow::bail!("the admin API answered {}", response.status());
    }
    let mut body = response.into_body();
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        // Server-Sent Events: blocks separated by a blank line.
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let data: Vec<&str> = block
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect();
            if block.lines().any(|line| line == "event: dropped") {
                anyhow::bail!("dropped by the daemon: {}", data.join(" "));
            }
            if !data.is_empty() {
                println!("{}", data.join("\n"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn reload(config: &Config) -> anyhow::Result<ExitCode> {
    let client = daemon(config, "").await?;
    match client
        .json::<serde_json::Value>("POST", "/api/v1/reload")
        .await
    {
        Ok(answer) => {
            println!(
                "reloaded: {}",
                answer["reloaded"].as_str().unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(AdminError::Status {
            status: 422,
            message,
        }) => {
            eprintln!("{message}\nreload refused: the running config stays");
            Ok(ExitCode::from(super::EXIT_CONFIG))
        }
        Err(error) => Err(error.into()),
    }
}

/// Queued or dead rows, from whichever source holds them.
async fn rows(
    source: &Source,
    route: &str,
    target: Option<&str>,
) -> anyhow::Result<Vec<TargetRow>> {
    Ok(match source {
        Source::Daemon(client) => {
            client
                .json("GET", &format!("{route}{}", query(target)))
                .await?
        }
        Source::Store(store) => {
            let rows = if route.ends_with("dead") {
                store.dead_rows(target)?
            } else {
                store.queued_rows(target)?
            };
            let mut shown = Vec::new();
            for (target, row) in rows {
                let paused = store.paused(&target)?.is_some();
                shown.push(TargetRow {
                    target,
                    paused,
                    row,
                });
            }
            shown
        }
    })
}

pub async fn deliveries(config: &Config, target: Option<&str>) -> anyhow::Result<ExitCode> {
    let rows = rows(&source(config).await?, "/api/v1/deliveries", target).await?;
    let now = clock::now_ms();
    let mut table = vec![header([
        "TARGET",
        "EVENT",
        "ENDPOINT",
        "TYPE",
        "ATTEMPTS",
        "LAST",
        "NEXT ATTEMPT",
    ])];
    for TargetRow {
        target,
        paused,
        row,
    } in &rows
    {
        let next = if *paused {
            "paused".to_string()
        } else if row.next_attempt_ms <= now {
            "now".to_string()
        } else {
            let wait = Duration::from_secs((row.next_attempt_ms - now).div_ceil(1000));
            format!("in {}", humantime::format_duration(wait))
        };
        table.push(row_cells(target, row, next));
    }
    print_table(&table);
    eprintln!("{} queued", rows.len());
    Ok(ExitCode::SUCCESS)
}

pub async fn dead(
    config: &Config,
    target: Option<&str>,
    attempts: bool,
) -> anyhow::Result<ExitCode> {
    let rows = rows(&source(config).await?, "/api/v1/dead", target).await?;
    let mut table = vec![header([
        "TARGET", "EVENT", "ENDPOINT", "TYPE", "ATTEMPTS", "LAST", "DIED",
    ])];
    for TargetRow { target, row, .. } in &rows {
        table.push(row_cells(target, row, time(row.dead_at_ms)));
    }
    print_table(&table);
    if attempts {
        for TargetRow { target, row, .. } in &rows {
            println!("\n{} to {target}:", row.event_id);
            for attempt in &row.attempt_log {
                let status = attempt
                    .status
                    .map_or("-".to_string(), |status| status.to_string());
                let error = attempt
                    .error
                    .as_ref()
                    .map(|error| format!(" ({error})"))
                    .unwrap_or_default();
                println!(
                    "  #{} {} status {status} in {} ms{error}",
                    attempt.attempt,
                    clock::rfc3339(attempt.at_ms),
                    attempt.duration_ms
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

pub async fn replay(
    config: &Config,
    ids: &[String],
    target: Option<&str>,
    since_ms: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let source = source(config).await?;
    let dead = rows(&source, "/api/v1/dead", None).await?;
    let missing: Vec<&str> = ids
        .iter()
        .filter(|id| !dead.iter().any(|dead| dead.row.event_id == **id))
        .map(String::as_str)
        .collect();
    match &source {
        Source::Daemon(client) => {
            let mut replayed = 0;
            // Without ids: every dead letter that passes the filters.
            let chosen: Vec<&str> = if ids.is_empty() {
                dead.iter()
                    .filter(|dead| target.is_none_or(|target| dead.target == target))
                    .filter(|dead| {
                        since_ms.is_none_or(|since| dead.row.dead_at_ms.unwrap_or(0) >= since)
                    })
                    .map(|dead| dead.row.event_id.as_str())
                    .collect()
            } else {
                ids.iter()
                    .map(String::as_str)
                    .filter(|id| !missing.contains(id))
                    .collect()
            };
            for id in chosen
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
            {
                let answer: serde_json::Value = client
                    .json("POST", &format!("/api/v1/dead/{id}/replay"))
                    .await?;
                replayed += answer["replayed"].as_u64().unwrap_or(0) as usize;
            }
            println!("re-queued {replayed} webhook(s)");
        }
        Source::Store(store) => {
            let replayed = store.replay(&DeadFilter {
                event_ids: ids,
                target,
                since_ms,
            })?;
            store.flush().await?;
            println!("re-queued {replayed} webhook(s); the daemon delivers them at its next start");
        }
    }
    if !missing.is_empty() {
        eprintln!("error: no dead letter with id {}", missing.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(config: &Config, target: &str) -> anyhow::Result<ExitCode> {
    let resumed = match source(config).await? {
        Source::Daemon(client) => {
            let answer: serde_json::Value = client
                .json("POST", &format!("/api/v1/targets/{target}/resume"))
                .await?;
            answer["resumed"].as_bool().unwrap_or(false)
        }
        Source::Store(store) => {
            let resumed = store.resume(target)?;
            store.flush().await?;
            resumed
        }
    };
    if resumed {
        println!("target `{target}` resumed: its queued webhooks are delivered again");
    } else {
        println!("target `{target}` was not paused");
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`: an RFC 3339 time, or a duration before now.
pub fn parse_since(text: &str) -> anyhow::Result<u64> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(u64::try_from(time.timestamp_millis()).unwrap_or(0));
    }
    let ago = humantime::parse_duration(text).with_context(|| {
        format!("bad `--since {text}`: give an RFC 3339 time or a duration such as `2h`")
    })?;
    Ok(clock::now_ms().saturating_sub(ago.as_millis() as u64))
}

fn row_cells(target: &str, row: &OutboxRow, last_column: String) -> Vec<String> {
    let last = match (row.last_status, &row.last_error) {
        (Some(status), _) => status.to_string(),
        (None, Some(error)) => error.clone(),
        (None, None) => "-".to_string(),
    };
    vec![
        target.to_string(),
        row.event_id.clone(),
        row.endpoint.clone(),
        row.event_type.clone(),
        row.attempts.to_string(),
        last,
        last_column,
    ]
}

fn header<const N: usize>(cells: [&str; N]) -> Vec<String> {
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
