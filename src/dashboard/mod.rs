//! The web dashboard the admin API serves at `/`: endpoints, one
//! endpoint's versions and changes, deliveries, live events. Pages are
//! rendered on the server (minijinja, templates and assets embedded in the
//! binary: no CDN, readable without JavaScript); the live page's small
//! script reads the admin API's event stream.
//!
//! With a token, a visitor logs in with it (a session cookie, HttpOnly and
//! SameSite=Strict) or sends it as the bearer header; every form posts its
//! session's CSRF token. Without a token, a first visit opens a session, so
//! that forms still carry one.
//!
//! - `session.rs`: sessions and CSRF tokens.
//! - `pages.rs`: the pages and their forms.
//! - `render.rs`: the templates and assets.
//! - `changes.rs`: pure: two versions of a document shown for people.
//! - `recent.rs`: the last events of each endpoint, for its page.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::operate::Context;

pub mod changes;
mod pages;
mod recent;
mod render;
pub mod session;

pub use session::Sessions;
use session::Visitor;

/// What the dashboard's pages share.
#[derive(Clone)]
struct Dashboard {
    context: Arc<Context>,
    sessions: Arc<Sessions>,
    recent: Arc<recent::Recent>,
    shutdown: CancellationToken,
}

/// The dashboard's routes, ready to merge into the admin API's router;
/// keeps the recent events of each endpoint on `tracker` until `shutdown`.
pub fn router(
    context: Arc<Context>,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Router {
    let recent = Arc::new(recent::Recent::default());
    tracker.spawn(recent::keep(
        recent.clone(),
        context.live.subscribe(),
        shutdown.clone(),
    ));
    let dashboard = Dashboard {
        context,
        sessions,
        recent,
        shutdown,
    };
    let pages = Router::new()
        .route("/", get(pages::endpoints))
        .route("/endpoints/{name}", get(pages::endpoint))
        .route("/endpoints/{name}/{action}", post(pages::endpoint_action))
        .route("/endpoints/{name}/preview", post(pages::preview))
        .route("/deliveries", get(pages::deliveries))
        .route("/deliveries/replay", post(pages::replay))
        .route("/deliveries/resume", post(pages::resume))
        .route("/live", get(pages::live))
        .route("/logout", post(pages::logout))
        .route_layer(middleware::from_fn_with_state(dashboard.clone(), admit));
    Router::new()
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/assets/{file}", get(render::asset))
        .merge(pages)
        .with_state(dashboard)
}

/// Lets in a bearer client or a live session, and else sends a browser to
/// the login form (or, with no token set, opens a session for it).
async fn admit(State(dashboard): State<Dashboard>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let token = dashboard.context.token.as_deref();
    let admitted = match token {
        Some(token) if session::bearer(headers, token) => Some(Visitor::Bearer),
        _ => dashboard
            .sessions
            .visitor(headers)
            .map(|(_, visitor)| visitor),
    };
    let (visitor, opened) = match (admitted, token) {
        (Some(visitor), _) => (visitor, None),
        (None, None) => {
            let (id, visitor) = dashboard.sessions.open();
            (visitor, Some(id))
        }
        (None, Some(_)) if request.method() == Method::GET => {
            return Redirect::to("/login").into_response();
        }
        (None, Some(_)) => {
            return (
                StatusCode::UNAUTHORIZED,
                "log in first, or send the bearer token\n",
            )
                .into_response();
        }
    };
    request.extensions_mut().insert(visitor);
    let mut response = next.run(request).await;
    if let Some(id) = opened
        && let Ok(cookie) = session::set_cookie(&id).parse()
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}
