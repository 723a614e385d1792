//! The dashboard's templates and assets, embedded in the binary, and how a
//! page is rendered: minijinja with HTML escaping, times in UTC.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;

/// Every template, by name (the name's `.html` turns escaping on).
const TEMPLATES: [(&str, &str); 8] = [
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("endpoints.html", include_str!("templates/endpoints.html")),
    ("endpoint.html", include_str!("templates/endpoint.html")),
    ("preview.html", include_str!("templates/preview.html")),
    ("deliveries.html", include_str!("templates/deliveries.html")),
    ("live.html", include_str!("templates/live.html")),
    ("message.html", include_str!("templates/message.html")),
];

/// The assets, by file name, with their content types.
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "live.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/live.js"),
    ),
];

static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut environment = Environment::new();
    for (name, source) in TEMPLATES {
        // The templates are ours and tested: one that does not parse fails every page test.
        if let Err(error) = environment.add_template(name, source) {
            tracing::error!(template = name, error = %error, "a dashboard template does not parse");
        }
    }
    environment.add_filter("time", time);
    environment
});

/// Unix milliseconds as a person reads them, in UTC; `-` for none.
fn time(at_ms: Option<u64>) -> String {
    at_ms
        .and_then(|at_ms| chrono::DateTime::from_timestamp_millis(i64::try_from(at_ms).ok()?))
        .map_or_else(
            || "-".to_string(),
            |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// A page of `template` over `context`.
pub fn page(template: &str, context: minijinja::Value) -> Response {
    page_with(StatusCode::OK, template, context)
}

pub fn page_with(status: StatusCode, template: &str, context: minijinja::Value) -> Response {
    let rendered = ENVIRONMENT
        .get_template(template)
        .and_then(|template| template.render(context));
    match rendered {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render `{template}`: {error}\n"),
        )
            .into_response(),
    }
}

/// A short page that says what happened, with a link onwards.
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page_with(status, "message.html", minijinja::context! { title, text })
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_times_read_in_utc() {
        for (name, _) in TEMPLATES {
            assert!(ENVIRONMENT.get_template(name).is_ok(), "{name}");
        }
        assert_eq!(time(Some(1_764_691_200_000)), "2025-12-02 16:00:00 UTC");
        assert_eq!(time(None), "-");
    }
}
