//! The dashboard's pages and the forms they post. Reads go through the
//! views the admin API and the CLI share ([`crate::views`]); actions
//! through the commands of [`crate::operate`].

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use axum::Form;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::value::Serde;
use minijinja::{Value, context};
use serde::{Deserialize, Serialize};

use super::render::{message, page, page_with};
use super::session::{self, Visitor};
use super::{Dashboard, changes};
use crate::event_type::TYPES;
use crate::operate::CommandError;
use crate::status::read;
use crate::store::DeadFilter;
use crate::views::{self, EndpointView, Rows, TargetRow, VersionView};

/// Endpoints per page of the list.
const PAGE_SIZE: usize = 50;
/// Rows of a target's queue or dead letters shown at most.
const ROWS_SHOWN: usize = 100;
/// Bytes of the current document shown at most.
const DOCUMENT_SHOWN: usize = 256 * 1024;

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: usize,
}

/// One row of the endpoint list.
#[derive(Debug, Serialize)]
struct ListRow {
    #[serde(flatten)]
    view: EndpointView,
    /// `ok`, `failing`, `paused` or `never polled`.
    state: &'static str,
    /// When its failure run began, once `endpoint.failing` was sent.
    failing_since_ms: Option<u64>,
}

/// The endpoints whose name or URL contains `q`, a page at a time.
pub async fn endpoints(
    State(dashboard): State<Dashboard>,
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<ListQuery>,
) -> Response {
    let context = &dashboard.context;
    let needle = query.q.trim().to_lowercase();
    let (matching, shown) = {
        let statuses = read(&context.statuses);
        let mut matching = 0;
        let mut shown = Vec::with_capacity(PAGE_SIZE);
        let first = query.page * PAGE_SIZE;
        for (name, status) in statuses.range::<str, _>((Bound::Unbounded, Bound::Unbounded)) {
            let hit = needle.is_empty()
                || name.to_lowercase().contains(&needle)
                || status
                    .endpoint
                    .display_url()
                    .to_string()
                    .to_lowercase()
                    .contains(&needle);
            if !hit {
                continue;
            }
            if matching >= first && shown.len() < PAGE_SIZE {
                shown.push(status.clone());
            }
            matching += 1;
        }
        (matching, shown)
    };
    let none = HashMap::new();
    let rows: Vec<ListRow> = shown
        .iter()
        .map(|status| {
            let view = context.view(status, &none);
            let (state, failing_since_ms) = match (view.last_poll_ms, view.consecutive_failures) {
                _ if view.paused_since_ms.is_some() => ("paused", None),
                (None, _) => ("never polled", None),
                (Some(_), 0) => ("ok", None),
                (Some(_), _) => (
                    "failing",
                    context
                        .store
                        .failing(&view.name)
                        .ok()
                        .flatten()
                        .map(|failing| failing.since_ms),
                ),
            };
            ListRow {
                view,
                state,
                failing_since_ms,
            }
        })
        .collect();
    let pages = matching.div_ceil(PAGE_SIZE).max(1);
    page(
        "endpoints.html",
        context! {
            title => "Endpoints",
            nav => "endpoints",
            csrf => visitor.csrf(),
            logout => dashboard.context.token.is_some(),
            q => query.q,
            rows => Value::from(Serde(&rows)),
            matching,
            page => query.page,
            pages,
            previous => query.page.checked_sub(1),
            next => (query.page + 1 < pages).then_some(query.page + 1),
        },
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct VersionsQuery {
    from: Option<u64>,
    to: Option<u64>,
    /// Set after "poll now", to say so.
    #[serde(default)]
    polled: bool,
}

/// An event of the endpoint and what became of it at each target.
#[derive(Debug, Serialize)]
struct EventRow {
    id: String,
    kind: String,
    at_ms: Option<u64>,
    /// `(target, state)`: `queued (attempt 2, next …)`, `dead`, `delivered`.
    deliveries: Vec<(String, String)>,
}

/// An endpoint: its state, metrics, versions and the difference between
/// two of them, the current document and its events.
pub async fn endpoint(
    State(dashboard): State<Dashboard>,
    Extension(visitor): Extension<Visitor>,
    Path(name): Path<String>,
    Query(query): Query<VersionsQuery>,
) -> Response {
    let context = &dashboard.context;
    let status = match context.status(&name) {
        Ok(status) => status,
        Err(error) => return command_error(error),
    };
    let store = &context.store;
    let view = context.view(&status, &HashMap::new());
    let mut versions: Vec<VersionView> = match store.history(&name) {
        Ok(versions) => versions.into_iter().map(VersionView::from).collect(),
        Err(error) => return command_error(error.into()),
    };
    // Newest first.
    versions.sort_by_key(|version| std::cmp::Reverse(version.version));
    let newest = versions.first().map(|version| version.version);
    let to = query.to.or(newest);
    let from = query
        .from
        .or_else(|| to.and_then(|to| versions.iter().map(|v| v.version).find(|v| *v < to)));
    let document = |version: Option<u64>| {
        version.and_then(|version| store.document(&name, version).ok().flatten())
    };
    let (old, new) = (document(from), document(to));
    let shown = match (&old, &new) {
        (Some(old), Some(new)) => Some(changes::show(old, new)),
        _ => None,
    };
    let current = document(newest).map(|document| {
        let mut text = views::show_document(&document);
        if text.len() > DOCUMENT_SHOWN {
            let cut = (0..=DOCUMENT_SHOWN)
                .rev()
                .find(|at| text.is_char_boundary(*at))
                .unwrap_or(0);
            text.truncate(cut);
            text.push_str("\n…");
        }
        text
    });
    let events = match events_of(&dashboard, &status.endpoint) {
        Ok(events) => events,
        Err(error) => return command_error(error),
    };
    let watched = status.counts.watched().cloned().unwrap_or_default();
    let values: Vec<(String, f64)> = watched
        .values
        .iter()
        .map(|(name, value)| (name.to_string(), *value))
        .collect();
    page(
        "endpoint.html",
        context! {
            title => format!("Endpoint {name}"),
            nav => "endpoints",
            csrf => visitor.csrf(),
            logout => dashboard.context.token.is_some(),
            view => Value::from(Serde(&view)),
            versions => Value::from(Serde(&versions)),
            from,
            to,
            shown => Value::from(Serde(&shown)),
            current,
            events => Value::from(Serde(&events)),
            values => Value::from(Serde(&values)),
            status_code => watched.status,
            certificate_expiry_ms => watched.certificate_expiry_s.map(|at_s| at_s.max(0) as u64 * 1000),
            polled => query.polled,
        },
    )
}

/// The endpoint's recent events, and its queued and dead rows, each with
/// its state at each of the endpoint's targets.
fn events_of(
    dashboard: &Dashboard,
    endpoint: &crate::config::Endpoint,
) -> Result<Vec<EventRow>, CommandError> {
    let store = &dashboard.context.store;
    let mut rows: Vec<EventRow> = dashboard
        .recent
        .of(&endpoint.name)
        .into_iter()
        .map(|announced| EventRow {
            id: announced.id,
            kind: announced.kind,
            at_ms: Some(announced.at_ms),
            deliveries: Vec::new(),
        })
        .collect();
    for subscription in endpoint.targets.iter() {
        let target = &subscription.target;
        let mut states: HashMap<String, (String, String)> = HashMap::new();
        for (which, label) in [(Rows::Queued, "queued"), (Rows::Dead, "dead")] {
            for row in views::target_rows(store, which, Some(target))? {
                if row.row.endpoint != *endpoint.name {
                    continue;
                }
                let state = match which {
                    Rows::Queued => format!(
                        "{label}: {} attempts, last {}",
                        row.row.attempts,
                        row.row
                            .last_status
                            .map_or_else(|| "none".to_string(), |status| status.to_string())
                    ),
                    Rows::Dead => label.to_string(),
                };
                states.insert(row.row.event_id.clone(), (row.row.event_type, state));
            }
        }
        for attempt in store.attempt_log(target)? {
            let delivered = attempt
                .status
                .is_some_and(|status| (200..300).contains(&status));
            if delivered && rows.iter().any(|row| row.id == attempt.event_id) {
                states
                    .entry(attempt.event_id.clone())
                    .or_insert_with(|| (String::new(), "delivered".to_string()));
            }
        }
        for (id, (kind, state)) in states {
            match rows.iter_mut().find(|row| row.id == id) {
                Some(row) => row.deliveries.push((target.clone(), state)),
                None => rows.push(EventRow {
                    id,
                    kind,
                    at_ms: None,
                    deliveries: vec![(target.clone(), state)],
                }),
            }
        }
    }
    for row in &mut rows {
        for subscription in endpoint.targets.iter() {
            let takes = subscription.events.contains(&row.kind) || row.kind.is_empty();
            if takes
                && !row
                    .deliveries
                    .iter()
                    .any(|(target, _)| *target == subscription.target)
            {
                row.deliveries.push((
                    subscription.target.clone(),
                    "sent or on its way".to_string(),
                ));
            }
        }
        row.deliveries.sort();
    }
    Ok(rows)
}

/// What every form posts: its session's CSRF token.
#[derive(Debug, Default, Deserialize)]
pub struct Posted {
    #[serde(default)]
    csrf: String,
    /// Replay: one dead letter's id.
    id: Option<String>,
    /// Replay all of a target's dead letters; resume a target.
    target: Option<String>,
    /// Replay only letters that died in the last this many hours (the
    /// form's "at any time" posts it empty).
    within_hours: Option<String>,
}

fn forged() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "Refused",
        "This form is not from your session (a missing or stale CSRF token). Reload the page and try again.",
    )
}

/// "Poll now", "Pause polling" and "Resume polling" on an endpoint's page.
pub async fn endpoint_action(
    State(dashboard): State<Dashboard>,
    Extension(visitor): Extension<Visitor>,
    Path((name, action)): Path<(String, String)>,
    Form(posted): Form<Posted>,
) -> Response {
    if !visitor.posted(&posted.csrf) {
        return forged();
    }
    let context = &dashboard.context;
    let done = match action.as_str() {
        "poll" => context.poll_now(&name).await.map(|()| "?polled=true"),
        "pause" => context.pause_endpoint(&name).await.map(|_| ""),
        "resume" => context.resume_endpoint(&name).await.map(|_| ""),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match done {
        Ok(query) => Redirect::to(&format!("/endpoints/{name}{query}")).into_response(),
        Err(error) => command_error(error),
    }
}

pub async fn preview(
    State(dashboard): State<Dashboard>,
    Extension(visitor): Extension<Visitor>,
    Path(name): Path<String>,
    Form(posted): Form<Posted>,
) -> Response {
    if !visitor.posted(&posted.csrf) {
        return forged();
    }
    match dashboard.context.preview(&name, &dashboard.shutdown).await {
        Ok(preview) => page(
            "preview.html",
            context! {
                title => format!("Preview of {name}"),
                nav => "endpoints",
                csrf => visitor.csrf(),
                logout => dashboard.context.token.is_some(),
            logout => dashboard.context.token.is_some(),
                preview => Value::from(Serde(&preview)),
            },
        ),
        Err(error) => command_error(error),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct TargetQuery {
    target: Option<String>,
}

/// One target's queue, dead letters and pause.
#[derive(Debug, Serialize)]
struct TargetSection {
    name: String,
    paused: Option<crate::store::Pause>,
    queued: Vec<TargetRow>,
    queued_total: usize,
    dead: Vec<TargetRow>,
    dead_total: usize,
}

/// Every target's queue (next attempt, attempts, last status and answer),
/// paused targets with "resume", dead letters with their attempt log and
/// "replay".
pub async fn deliveries(
    State(dashboard): State<Dashboard>,
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<TargetQuery>,
) -> Response {
    let store = &dashboard.context.store;
    let mut targets: BTreeSet<String> = read(&dashboard.context.statuses)
        .values()
        .flat_map(|status| {
            status
                .endpoint
                .targets
                .iter()
                .map(|subscription| subscription.target.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    if let Some(target) = &query.target {
        targets.retain(|name| name == target);
    }
    let mut sections = Vec::new();
    for name in targets {
        let section = (|| {
            let queued = views::target_rows(store, Rows::Queued, Some(&name))?;
            let dead = views::target_rows(store, Rows::Dead, Some(&name))?;
            Ok::<_, crate::store::StoreError>(TargetSection {
                paused: store.paused(&name)?,
                queued_total: queued.len(),
                queued: queued.into_iter().take(ROWS_SHOWN).collect(),
                dead_total: dead.len(),
                dead: dead.into_iter().take(ROWS_SHOWN).collect(),
                name,
            })
        })();
        match section {
            Ok(section) => sections.push(section),
            Err(error) => return command_error(error.into()),
        }
    }
    let dead_total: usize = sections.iter().map(|section| section.dead_total).sum();
    page(
        "deliveries.html",
        context! {
            dead_total,
            title => "Deliveries",
            nav => "deliveries",
            csrf => visitor.csrf(),
            logout => dashboard.context.token.is_some(),
            sections => Value::from(Serde(&sections)),
            target => query.target,
        },
    )
}

/// Replays one dead letter (`id`), or all that pass the filters given
/// (`target`, `within_hours`).
pub async fn replay(
    State(dashboard): State<Dashboard>,
    Extension(visitor): Extension<Visitor>,
    Form(posted): Form<Posted>,
) -> Response {
    if !visitor.posted(&posted.csrf) {
        return forged();
    }
    let ids: Vec<String> = posted.id.into_iter().filter(|id| !id.is_empty()).collect();
    let filter = DeadFilter {
        event_ids: &ids,
        target: posted.target.as_deref().filter(|target| !target.is_empty()),
        since_ms: posted
            .within_hours
            .and_then(|hours| hours.parse::<u64>().ok())
            .map(|hours| crate::clock::now_ms().saturating_sub(hours.saturating_mul(3_600_000))),
    };
    match dashboard.context.replay(&filter) {
        Ok(_) => Redirect::to("/deliveries").into_response(),
        Err(error) => command_error(error),
    }
}

pub async fn resume(
    State(dashboard): State<Dashboard>,
    Extension(visitor): Extension<Visitor>,
    Form(posted): Form<Posted>,
) -> Response {
    if !visitor.posted(&posted.csrf) {
        return forged();
    }
    let Some(target) = posted.target else {
        return message(
            StatusCode::BAD_REQUEST,
            "Resume",
            "Say which target to resume.",
        );
    };
    match dashboard.context.resume(&target) {
        Ok(_) => Redirect::to("/deliveries").into_response(),
        Err(error) => command_error(error),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct LiveQuery {
    endpoint: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Events as they happen, filtered by endpoint and type: the page asks the
/// admin API's stream (`/api/v1/events`), which takes the session cookie.
pub async fn live(
    State(dashboard): State<Dashboard>,
    Extension(visitor): Extension<Visitor>,
    Query(query): Query<LiveQuery>,
) -> Response {
    let endpoints: Vec<String> = read(&dashboard.context.statuses)
        .keys()
        .take(1000)
        .map(|name| name.to_string())
        .collect();
    page(
        "live.html",
        context! {
            title => "Live events",
            nav => "live",
            csrf => visitor.csrf(),
            logout => dashboard.context.token.is_some(),
            endpoint => query.endpoint.unwrap_or_default(),
            kind => query.kind.unwrap_or_default(),
            endpoints,
            types => Value::from(Serde(TYPES)),
        },
    )
}

pub async fn login_form(State(dashboard): State<Dashboard>) -> Response {
    match dashboard.context.token {
        None => Redirect::to("/").into_response(),
        Some(_) => page("login.html", context! { title => "Log in" }),
    }
}

#[derive(Debug, Deserialize)]
pub struct Login {
    #[serde(default)]
    token: String,
}

/// Checks the token and opens a session.
pub async fn login(State(dashboard): State<Dashboard>, Form(login): Form<Login>) -> Response {
    let Some(token) = &dashboard.context.token else {
        return Redirect::to("/").into_response();
    };
    if !session::constant_time_eq(login.token.as_bytes(), token.as_bytes()) {
        return page_with(
            StatusCode::UNAUTHORIZED,
            "login.html",
            context! { title => "Log in", wrong => true },
        );
    }
    let (id, _) = dashboard.sessions.open();
    (
        [(header::SET_COOKIE, session::set_cookie(&id))],
        Redirect::to("/"),
    )
        .into_response()
}

pub async fn logout(
    State(dashboard): State<Dashboard>,
    Extension(visitor): Extension<Visitor>,
    headers: HeaderMap,
    Form(posted): Form<Posted>,
) -> Response {
    if !visitor.posted(&posted.csrf) {
        return forged();
    }
    if let Some((id, _)) = dashboard.sessions.visitor(&headers) {
        dashboard.sessions.close(&id);
    }
    (
        [(header::SET_COOKIE, session::clear_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

fn command_error(error: CommandError) -> Response {
    let status = match &error {
        CommandError::NotFound(_) => StatusCode::NOT_FOUND,
        CommandError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
        CommandError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        CommandError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    message(status, "Cannot do that", &error.to_string())
}
