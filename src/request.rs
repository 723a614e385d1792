//! The request one poll sends: the endpoint's `url`, `query`, `headers`
//! and `body` with their templates rendered. Pure; an endpoint without
//! templates or `query` is borrowed as it is.

use std::borrow::Cow;

use reqwest::header::{HeaderMap, HeaderValue};

use crate::config::{Endpoint, Vars};

/// What [`render`] made for one poll.
#[derive(Debug)]
pub struct Request<'e> {
    pub url: Cow<'e, url::Url>,
    /// Every value is marked sensitive.
    pub headers: Option<Cow<'e, HeaderMap>>,
    pub body: Option<Cow<'e, str>>,
}

/// The request for a poll that sees `vars`. An error (a template that
/// fails, a rendering that is no URL of the endpoint's origin or no header
/// value) never names a rendered value: it may hold a secret.
pub fn render<'e>(endpoint: &'e Endpoint, vars: &Vars<'_>) -> Result<Request<'e>, String> {
    let body = endpoint
        .body
        .as_ref()
        .map(|body| {
            body.render(vars)
                .map_err(|error| format!("`body`: {error}"))
        })
        .transpose()?;
    let Some(templates) = &endpoint.request else {
        return Ok(Request {
            url: Cow::Borrowed(endpoint.url.url()),
            headers: endpoint.headers.as_deref().map(Cow::Borrowed),
            body,
        });
    };
    let mut url = match &templates.url {
        None => endpoint.url.url().clone(),
        Some(template) => {
            let text = template
                .render(vars)
                .map_err(|error| format!("`url`: {error}"))?;
            let url = url::Url::parse(&text)
                .map_err(|error| format!("`url` rendered is not a URL: {error}"))?;
            if !same_origin(endpoint.url.url(), &url) {
                return Err(format!(
                    "`url` rendered is not on the endpoint's origin `{}`",
                    endpoint.url.url().origin().ascii_serialization()
                ));
            }
            url
        }
    };
    if !templates.query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in &templates.query {
            let value = value
                .render(vars)
                .map_err(|error| format!("`query.{name}`: {error}"))?;
            pairs.append_pair(name, &value);
        }
    }
    let mut headers = endpoint.headers.as_deref().cloned().unwrap_or_default();
    for (name, value) in &templates.headers {
        let text = value
            .render(vars)
            .map_err(|error| format!("header `{name}`: {error}"))?;
        let mut value = HeaderValue::from_str(&text).map_err(|_| {
            format!("header `{name}` rendered holds a character headers cannot carry")
        })?;
        value.set_sensitive(true);
        headers.insert(name.clone(), value);
    }
    Ok(Request {
        url: Cow::Owned(url),
        headers: (!headers.is_empty()).then_some(Cow::Owned(headers)),
        body,
    })
}

/// Whether `to` may get what was meant for `from`: the same scheme, host
/// and port, or the step from `http` to `https` on a host's default ports.
pub(crate) fn same_origin(from: &url::Url, to: &url::Url) -> bool {
    let same_host = from.host_str() == to.host_str();
    let same_scheme_and_port =
        from.scheme() == to.scheme() && from.port_or_known_default() == to.port_or_known_default();
    let upgrade = from.scheme() == "http"
        && to.scheme() == "https"
        && from.port_or_known_default() == Some(80)
        && to.port_or_known_default() == Some(443);
    same_host && (same_scheme_and_port || upgrade)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let check = |from: &str, to: &str, expected: bool| {
            let (from, to) = (from.parse().unwrap(), to.parse().unwrap());
            assert_eq!(same_origin(&from, &to), expected, "{from} -> {to}");
        };
        check("https://api.example/a?k=1", "https://api.example/b", true);
        check("https://api.example/", "https://API.example:443/", true);
        check("http://api.example/", "https://api.example/", true);
        check("https://api.example/", "http://api.example/", false);
        check("http://api.example:8080/", "https://api.example/", false);
        check("https://api.example/", "https://api.example:8443/", false);
        check("https://api.example/", "https://other.example/", false);
        check("https://api.example/", "https://sub.api.example/", false);
        check("http://127.0.0.1:1/", "http://localhost:1/", false);
    }
}
