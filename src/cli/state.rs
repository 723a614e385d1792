//! Commands that read or change the daemon's state: through the admin API
//! while the daemon runs (sled admits one process), from the store itself
//! when it does not.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::BodyExt as _;

use crate::admin::{AdminClient, AdminError};
use crate::clock;
use crate::config::Config;
use crate::extract::{Document, Kind};
use crate::store::{DeadFilter, Store, Stored};
use crate::views::{
    self, DAMAGED, DeliveryView, EndpointView, Replayed, Rows, TargetRow, VersionView,
};

/// Exit code of `status` when the daemon is not running (as `systemctl status`).
const EXIT_NOT_RUNNING: u8 = 3;

/// Where the state is read from.
enum Source {
    Daemon(AdminClient),
    Store(Box<Store>),
}

/// The running daemon's API, else the store, which must exist: a command
/// that only reads never makes a fresh store (a wrong `state_dir` would
/// then look like an empty one).
async fn source(config: &Config) -> anyhow::Result<Source> {
    match AdminClient::discover(config).await {
        Some(client) => Ok(Source::Daemon(client)),
        None => Ok(Source::Store(Box::new(existing_store(config)?))),
    }
}

/// Opens the store of `config`, which must be there already.
fn existing_store(config: &Config) -> anyhow::Result<Store> {
    let dir = &config.state_dir;
    if !Store::exists(dir) {
        anyhow::bail!(
            "pollhook is not running, and there is no store in `{}` (the config's `state_dir`{}); is it the config the daemon runs with?",
            dir.display(),
            if std::env::var_os("STATE_DIRECTORY").is_none() {
                ", here without systemd's `$STATE_DIRECTORY`"
            } else {
                ""
            }
        );
    }
    Ok(Store::open(dir)?)
}

/// Refuses a name the config does not have.
fn known_endpoint(config: &Config, name: &str) -> anyhow::Result<()> {
    match config.endpoint(name) {
        Some(_) => Ok(()),
        None => anyhow::bail!("no endpoint named `{name}` in the config"),
    }
}

/// For commands that only a running daemon can do.
async fn daemon(config: &Config, instead: &str) -> anyhow::Result<AdminClient> {
    AdminClient::discover(config)
        .await
        .with_context(|| format!("pollhook is not running{instead}"))
}

/// `?name=value&...`, encoded (a value as typed must not add a parameter of
/// its own), or nothing without pairs.
fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        query.append_pair(name, &value);
    }
    match query.finish() {
        query if query.is_empty() => query,
        query => format!("?{query}"),
    }
}

fn time(ms: Option<u64>) -> String {
    ms.map(clock::rfc3339).unwrap_or_else(|| "-".to_string())
}

pub async fn status(config: &Config) -> anyhow::Result<ExitCode> {
    let (views, running) = match AdminClient::discover(config).await {
        Some(client) => {
            let cluster = client
                .json::<crate::cluster::ClusterView>("GET", "/api/v1/cluster")
                .await?;
            if let Some(line) = cluster.line() {
                outln!("{line}")?;
            }
            (
                client
                    .json::<Vec<EndpointView>>("GET", "/api/v1/endpoints")
                    .await?,
                true,
            )
        }
        None => {
            // Without NATS the shard is the config's; with it, a running
            // daemon knows what it holds.
            let held = crate::cluster::Held::at_start(config);
            let shown = match &held {
                Some(held) => held.restrict(config.clone()),
                None => config.clone(),
            };
            if let Some(line) = crate::cluster::ClusterView::new(&shown, held.as_ref()).line() {
                outln!("{line}")?;
            }
            let config = &shown;
            // Not running: what the config and the store (if any) still say.
            let store = match Store::exists(&config.state_dir) {
                true => Some(Store::open(&config.state_dir)?),
                false => None,
            };
            let pending = match &store {
                Some(store) => store.pending_by_endpoint()?,
                None => Default::default(),
            };
            let paused = match &store {
                Some(store) => store.paused_endpoints()?,
                None => Default::default(),
            };
            let mut views = Vec::new();
            for endpoint in &config.endpoints {
                let (snapshot, cursor) = match &store {
                    Some(store) => EndpointView::stored(store, endpoint)?,
                    None => (None, None),
                };
                let mut view = EndpointView::new(
                    endpoint,
                    None,
                    (snapshot.as_ref(), cursor.as_ref()),
                    &pending,
                );
                view.paused_since_ms = paused.get(&*endpoint.name).copied();
                views.push(view);
            }
            (views, false)
        }
    };
    let mut table = vec![header([
        "ENDPOINT",
        "SCHEDULE",
        "LAST POLL",
        "NEXT POLL",
        "LAST CHANGE",
        "VERSION",
        "CURSOR",
        "FAILURES",
        "PENDING",
        "LAST ERROR",
        "NOTES",
    ])];
    for view in &views {
        table.push(vec![
            view.name.clone(),
            view.schedule.clone(),
            time(view.last_poll_ms),
            time(view.next_poll_ms),
            time(view.last_change_ms),
            view.version
                .map_or("-".to_string(), |version| version.to_string()),
            view.cursor.clone().unwrap_or_else(|| "-".to_string()),
            view.consecutive_failures.to_string(),
            view.pending_deliveries.to_string(),
            view.last_error.clone().unwrap_or_else(|| "-".to_string()),
            notes(view),
        ]);
    }
    print_table(&table)?;
    if running {
        return Ok(ExitCode::SUCCESS);
    }
    let dir = config.state_dir.display();
    match Store::exists(&config.state_dir) {
        true => errln!("pollhook is not running (shown: what the store in `{dir}` holds)"),
        false => errln!("pollhook is not running, and there is no store in `{dir}` yet"),
    }
    Ok(ExitCode::from(EXIT_NOT_RUNNING))
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
    outln!("polling `{name}` now")?;
    Ok(ExitCode::SUCCESS)
}

pub async fn history(
    config: &Config,
    name: &str,
    diff: Option<&[u64]>,
) -> anyhow::Result<ExitCode> {
    known_endpoint(config, name)?;
    let source = source(config).await?;
    let versions: Vec<VersionView> = match &source {
        Source::Daemon(client) => {
            client
                .json("GET", &format!("/api/v1/endpoints/{name}/history"))
                .await?
        }
        Source::Store(store) => store
            .history(name)?
            .into_iter()
            .map(VersionView::from)
            .collect(),
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
        print_table(&table)?;
        if versions.is_empty() {
            errln!("`{name}` has no stored versions");
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
        None => outln!("versions {from} and {to} are the same")?,
        Some(crate::diff::Change::Json { patch, .. }) => {
            outln!("{}", serde_json::to_string_pretty(&patch)?)?
        }
        Some(crate::diff::Change::Items(items)) => {
            let [added, removed, changed] = items.into_json();
            let report =
                serde_json::json!({ "added": added, "removed": removed, "changed": changed });
            outln!("{}", serde_json::to_string_pretty(&report)?)?
        }
        Some(crate::diff::Change::Text { diff }) => out!("{diff}")?,
        Some(crate::diff::Change::Bytes {
            previous_hash,
            current_hash,
        }) => outln!("binary: {previous_hash} -> {current_hash}")?,
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn tail(config: &Config, name: Option<&str>) -> anyhow::Result<ExitCode> {
    if let Some(name) = name {
        known_endpoint(config, name)?;
    }
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
                outln!("{}", data.join("\n"))?;
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
            outln!(
                "reloaded: {}",
                answer["reloaded"].as_str().unwrap_or_default()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(AdminError::Status {
            status: 422,
            message,
        }) => {
            errln!("{message}\nreload refused: the running config stays");
            Ok(ExitCode::from(super::EXIT_CONFIG))
        }
        Err(error) => Err(error.into()),
    }
}

/// Queued or dead rows, from whichever source holds them.
async fn rows(
    source: &Source,
    which: Rows,
    target: Option<&str>,
) -> anyhow::Result<Vec<TargetRow>> {
    Ok(match source {
        Source::Daemon(client) => {
            let route = match which {
                Rows::Queued => "/api/v1/deliveries",
                Rows::Dead => "/api/v1/dead",
            };
            client
                .json(
                    "GET",
                    &format!(
                        "{route}{}",
                        query(target.map(|target| ("target", target.to_string())))
                    ),
                )
                .await?
        }
        Source::Store(store) => views::target_rows(store, which, target)?,
    })
}

pub async fn deliveries(config: &Config, target: Option<&str>) -> anyhow::Result<ExitCode> {
    let rows = rows(&source(config).await?, Rows::Queued, target).await?;
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
    print_table(&table)?;
    errln!("{} queued", rows.len());
    Ok(ExitCode::SUCCESS)
}

pub async fn dead(
    config: &Config,
    target: Option<&str>,
    attempts: bool,
) -> anyhow::Result<ExitCode> {
    let rows = rows(&source(config).await?, Rows::Dead, target).await?;
    let mut table = vec![header([
        "TARGET", "EVENT", "ENDPOINT", "TYPE", "ATTEMPTS", "LAST", "DIED",
    ])];
    for TargetRow { target, row, .. } in &rows {
        table.push(row_cells(target, row, time(row.dead_at_ms)));
    }
    print_table(&table)?;
    if attempts {
        for TargetRow { target, row, .. } in &rows {
            outln!("\n{} to {target}:", row.event_id)?;
            for attempt in &row.attempt_log {
                let status = attempt
                    .status
                    .map_or("-".to_string(), |status| status.to_string());
                let error = attempt
                    .error
                    .as_ref()
                    .map(|error| format!(" ({error})"))
                    .unwrap_or_default();
                outln!(
                    "  #{} {} status {status} in {} ms{error}",
                    attempt.attempt,
                    clock::rfc3339(attempt.at_ms),
                    attempt.duration_ms
                )?;
                if !attempt.response.is_empty() {
                    outln!("    response: {}", attempt.response.replace('\n', " "))?;
                }
            }
        }
    }
    errln!("{} dead letter(s)", rows.len());
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(
    config: &Config,
    ids: &[String],
    target: Option<&str>,
    since_ms: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let replayed = match source(config).await? {
        Source::Daemon(client) => {
            let filters = [
                Some(("ids", ids.join(","))),
                target.map(|target| ("target", target.to_string())),
                since_ms.map(|since_ms| ("since_ms", since_ms.to_string())),
            ];
            let route = format!("/api/v1/replay{}", query(filters.into_iter().flatten()));
            match client.json::<Replayed>("POST", &route).await {
                Err(AdminError::Status { status: 404, .. }) => Replayed {
                    missing: ids.to_vec(),
                    ..Replayed::default()
                },
                answer => answer?,
            }
        }
        Source::Store(store) => {
            let filter = DeadFilter {
                event_ids: ids,
                target,
                since_ms,
            };
            let replayed = views::replay(&store, &filter)?;
            store.flush().await?;
            replayed
        }
    };
    outln!("re-queued {} webhook(s)", replayed.replayed)?;
    if !replayed.missing.is_empty() {
        errln!(
            "error: no dead letter with id {}",
            replayed.missing.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `pollhook pause`: the endpoint is not polled until resumed, across
/// restarts.
pub async fn pause(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    known_endpoint(config, name)?;
    let since_ms = match source(config).await? {
        Source::Daemon(client) => {
            let answer: serde_json::Value = client
                .json("POST", &format!("/api/v1/endpoints/{name}/pause"))
                .await?;
            answer["since_ms"].as_u64()
        }
        Source::Store(store) => Some(store.pause_endpoint(name, clock::now_ms()).await?),
    };
    outln!(
        "endpoint `{name}` paused since {}: it is not polled until `pollhook resume {name}`",
        time(since_ms)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `pollhook resume`: a paused endpoint is polled again, a target paused
/// after a 410 is delivered to again (both, when both have the name).
pub async fn resume(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let endpoint = config.endpoint(name).is_some();
    let target = config.targets.iter().any(|target| target.name == name);
    if !endpoint && !target {
        anyhow::bail!("no endpoint or target named `{name}` in the config");
    }
    let source = source(config).await?;
    if endpoint {
        let resumed = match &source {
            Source::Daemon(client) => {
                let answer: serde_json::Value = client
                    .json("POST", &format!("/api/v1/endpoints/{name}/resume"))
                    .await?;
                answer["resumed"].as_bool().unwrap_or(false)
            }
            Source::Store(store) => store.resume_endpoint(name).await?,
        };
        match resumed {
            true => outln!("endpoint `{name}` resumed: it is polled again")?,
            false => outln!("endpoint `{name}` was not paused")?,
        }
    }
    if target {
        let resumed = match &source {
            Source::Daemon(client) => {
                let answer: serde_json::Value = client
                    .json("POST", &format!("/api/v1/targets/{name}/resume"))
                    .await?;
                answer["resumed"].as_bool().unwrap_or(false)
            }
            Source::Store(store) => {
                let resumed = store.resume(name)?;
                store.flush().await?;
                resumed
            }
        };
        match resumed {
            true => outln!("target `{name}` resumed: its queued webhooks are delivered again")?,
            false => outln!("target `{name}` was not paused")?,
        }
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

fn row_cells(target: &str, row: &DeliveryView, last_column: String) -> Vec<String> {
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
fn print_table(rows: &[Vec<String>]) -> std::io::Result<()> {
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
        outln!("{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// The `NOTES` of `status`: an endpoint's marks and its last poll's warning.
fn notes(view: &EndpointView) -> String {
    let paused = view
        .paused_since_ms
        .map(|since| format!("paused since {}", clock::rfc3339(since)));
    let notes: Vec<&str> = paused
        .as_deref()
        .into_iter()
        .chain(view.marks.iter().map(String::as_str))
        .chain(view.last_warning.as_deref())
        .collect();
    match notes.is_empty() {
        true => "-".to_string(),
        false => notes.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded_and_cannot_add_parameters() {
        assert_eq!(query([]), "");
        assert_eq!(
            query([
                ("ids", "msg_a,msg_b".to_string()),
                ("target", "ha".to_string())
            ]),
            "?ids=msg_a%2Cmsg_b&target=ha"
        );
        assert_eq!(
            query([("ids", "x&target=other".to_string())]),
            "?ids=x%26target%3Dother"
        );
    }
}
