//! One HTTP request to a watched endpoint.
//!
//! A single shared client (rustls, keep-alive pool, gzip and brotli) serves
//! every endpoint. The body is read while streaming and cut off at the
//! endpoint's `max_body`; stored validators make the request conditional, so
//! an unchanged resource costs a 304.
//!
//! Redirects are followed here, not by the client, so that the endpoint's
//! headers (API keys) and body go only to its own origin: a redirect to
//! another origin is refused, or with `follow_redirects = "any"` followed
//! without them. No `Referer` is ever sent (it would carry the query).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{
    ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RETRY_AFTER,
};

use crate::config::{Endpoint, EndpointAuth, FollowRedirects, Paginate, Transport};
use crate::jq::Jq;
use crate::oauth::{AuthError, Tokens};
use crate::request::{Request, same_origin};
use crate::watched::Answer;

/// Redirects followed in one poll before it fails.
const MAX_REDIRECTS: usize = 10;

/// The `ETag` and `Last-Modified` of the stored snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What a successful request returned.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the resource is as it was.
    NotModified { answer: Answer },
    Body {
        /// Its status and certificate, for the metrics.
        answer: Answer,
        bytes: Vec<u8>,
        content_type: Option<String>,
        validators: Validators,
        /// The `Link` header's `rel="next"`, resolved (boxed: most
        /// responses have none).
        next_link: Option<Box<url::Url>>,
        /// Something the operator should know of, though the poll worked
        /// (more pages than `max_pages`): logged, and shown in status.
        warning: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("HTTP status {status}")]
    Status {
        status: u16,
        /// From `Retry-After` on 429 and 503.
        retry_after: Option<Duration>,
    },
    #[error("the response body is larger than `max_body` ({limit} bytes)")]
    TooLarge { limit: u64 },
    /// A redirect that was not followed; `to` shows only the origin.
    #[error("not following the redirect to {to}: {why}")]
    Redirect { to: String, why: &'static str },
    #[error("a redirect whose `Location` is {0}")]
    BadRedirect(&'static str),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A page of a paged list could not be followed.
    #[error("page {page}: {why}")]
    Page { page: usize, why: String },
    /// The request's templates could not be rendered; nothing was sent.
    #[error("cannot make the request: {0}")]
    Template(String),
}

/// The clients requests share: one for those with no transport options of
/// their own (it honours `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY`, and
/// trusts the bundled and the system's CAs), one per distinct
/// [`Transport`], made when a request first needs it. Polls and deliveries
/// each have their own, from their own [`reqwest::ClientBuilder`].
pub struct Clients {
    builder: fn() -> reqwest::ClientBuilder,
    default: reqwest::Client,
    by_transport: std::sync::Mutex<std::collections::HashMap<Transport, reqwest::Client>>,
}

impl Clients {
    /// The clients of polls.
    pub fn for_polls() -> Result<Clients, reqwest::Error> {
        Clients::new(builder)
    }

    pub fn new(builder: fn() -> reqwest::ClientBuilder) -> Result<Clients, reqwest::Error> {
        Ok(Clients {
            builder,
            default: with_default_tls(builder())?,
            by_transport: Default::default(),
        })
    }

    /// The client for requests that travel by `transport`; an error says
    /// why it cannot be made (a `ca_file` gone since the config was read).
    pub fn get(&self, transport: Option<&Transport>) -> Result<reqwest::Client, String> {
        let Some(transport) = transport else {
            return Ok(self.default.clone());
        };
        let mut by_transport = crate::locks::lock(&self.by_transport);
        if let Some(client) = by_transport.get(transport) {
            return Ok(client.clone());
        }
        let made = with_transport((self.builder)(), transport)?;
        by_transport.insert(transport.clone(), made.clone());
        Ok(made)
    }
}

/// A client with `transport`'s proxy and TLS settings.
fn with_transport(
    mut builder: reqwest::ClientBuilder,
    transport: &Transport,
) -> Result<reqwest::Client, String> {
    if let Some(proxy) = &transport.proxy {
        let proxy = reqwest::Proxy::all(proxy.url().clone()).map_err(|error| {
            format!(
                "cannot use the proxy `{}`: {}",
                proxy.shown(),
                crate::error_chain(&error.without_url())
            )
        })?;
        builder = builder.proxy(proxy);
    }
    let tls = crate::tls::client_config(Some(transport))?;
    builder
        .use_preconfigured_tls(crate::tls::for_http(tls))
        .build()
        .map_err(|error| crate::error_chain(&error))
}

/// A client from `builder` with the TLS settings of no transport.
fn with_default_tls(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, reqwest::Error> {
    builder
        .use_preconfigured_tls(crate::tls::for_http(crate::tls::default_config()))
        .build()
}

/// The client of polls with no transport options of their own.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    with_default_tls(builder())
}

/// What every poll's client is built from. It follows no redirects itself:
/// see [`fetch`].
fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("pollhook/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .gzip(true)
        .brotli(true)
        .pool_idle_timeout(Duration::from_secs(90))
        // The peer certificate's expiry is a metric (`crate::watched`).
        .tls_info(true)
        .connect_timeout(Duration::from_secs(10))
}

/// Polls `endpoint` once with `request`. Non-2xx, timeouts and oversized
/// bodies are errors: the caller keeps its snapshot and tries again later.
/// `endpoint.timeout` covers the whole poll, redirects included.
pub async fn fetch(
    client: &reqwest::Client,
    tokens: &Tokens,
    endpoint: &Endpoint,
    request: &Request<'_>,
    validators: Option<&Validators>,
) -> Result<Fetched, FetchError> {
    let Some(paging) = &endpoint.paging else {
        return fetch_page(client, tokens, endpoint, request, &request.url, validators).await;
    };
    // Later pages may change while the first does not: never conditional.
    let mut page = fetch_page(client, tokens, endpoint, request, &request.url, None).await?;
    let mut pages = Vec::new();
    let mut warning = None;
    loop {
        let Fetched::Body {
            bytes, next_link, ..
        } = &page
        else {
            unreachable!("an unconditional request is never answered 304 here");
        };
        let number = pages.len() + 1;
        let failed = |why: String| FetchError::Page { page: number, why };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|error| failed(format!("not JSON: {error}")))?;
        let next =
            next_page(&request.url, &paging.next, &value, next_link.as_deref()).map_err(failed)?;
        pages.push(value);
        let Some(next) = next else { break };
        if pages.len() >= paging.max_pages {
            let cut = format!(
                "more pages than `max_pages` ({}): the rest are not compared",
                paging.max_pages
            );
            tracing::warn!("{cut}");
            warning = Some(cut);
            break;
        }
        if !same_origin(endpoint.url.url(), &next) {
            return Err(failed(format!(
                "the next page is on another origin (`{}`), which would get the endpoint's headers",
                next.origin().ascii_serialization()
            )));
        }
        page = fetch_page(client, tokens, endpoint, request, &next, None).await?;
    }
    let Fetched::Body {
        answer,
        content_type,
        validators,
        ..
    } = page
    else {
        unreachable!("the last page had a body");
    };
    // Lists are concatenated; other pages become a list of the pages.
    let merged = match pages.iter().all(serde_json::Value::is_array) {
        true => pages
            .into_iter()
            .flat_map(|page| match page {
                serde_json::Value::Array(items) => items,
                _ => Vec::new(),
            })
            .collect(),
        false => pages,
    };
    Ok(Fetched::Body {
        answer,
        bytes: serde_json::to_vec(&serde_json::Value::Array(merged)).unwrap_or_default(),
        content_type,
        validators,
        next_link: None,
        warning,
    })
}

/// The URL of the page after `page` of a list at `first`, or `None` at
/// the last one.
fn next_page(
    first: &url::Url,
    paginate: &Paginate,
    page: &serde_json::Value,
    next_link: Option<&url::Url>,
) -> Result<Option<url::Url>, String> {
    let found = |filter: &Jq| {
        filter
            .run(page)
            .map(|outputs| outputs.into_iter().find(|value| !value.is_null()))
    };
    match paginate {
        Paginate::Link => Ok(next_link.cloned()),
        Paginate::Next(filter) => match found(filter)? {
            None => Ok(None),
            Some(serde_json::Value::String(next)) => first
                .join(&next)
                .map(Some)
                .map_err(|error| format!("`next` gave `{next}`, not a URL: {error}")),
            Some(other) => Err(format!("`next` gave {other}, not a URL string")),
        },
        Paginate::Cursor { cursor, param } => {
            let cursor = match found(cursor)? {
                None => return Ok(None),
                Some(serde_json::Value::String(text)) if text.is_empty() => return Ok(None),
                Some(serde_json::Value::String(text)) => text,
                Some(other @ serde_json::Value::Number(_)) => other.to_string(),
                Some(other) => {
                    return Err(format!("`cursor` gave {other}, not a string or number"));
                }
            };
            let mut url = first.clone();
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(name, _)| name != param.as_str())
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair(param, &cursor);
            Ok(Some(url))
        }
    }
}

/// One request to `start` with the endpoint's `auth`; with OAuth2, a 401
/// renews the token and the request is made once more with the new one.
async fn fetch_page(
    client: &reqwest::Client,
    tokens: &Tokens,
    endpoint: &Endpoint,
    request: &Request<'_>,
    start: &url::Url,
    validators: Option<&Validators>,
) -> Result<Fetched, FetchError> {
    let Some(auth) = endpoint.auth.as_deref() else {
        return send(client, endpoint, request, start, validators, None).await;
    };
    let timeout = endpoint.timeout;
    let header = tokens.authorization(client, auth, timeout, None).await?;
    match send(client, endpoint, request, start, validators, Some(&header)).await {
        Err(FetchError::Status { status: 401, .. }) if matches!(auth, EndpointAuth::OAuth2(_)) => {
            let renewed = tokens
                .authorization(client, auth, timeout, Some(&header))
                .await?;
            send(client, endpoint, request, start, validators, Some(&renewed)).await
        }
        sent => sent,
    }
}

/// One request, redirects followed, to `start`, with `authorization` for
/// the endpoint's origin.
async fn send(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    sent: &Request<'_>,
    start: &url::Url,
    validators: Option<&Validators>,
    authorization: Option<&HeaderValue>,
) -> Result<Fetched, FetchError> {
    let deadline = tokio::time::Instant::now() + endpoint.timeout;
    let classify = |error: reqwest::Error| {
        if error.is_timeout() {
            FetchError::Timeout(endpoint.timeout)
        } else {
            FetchError::Request(crate::error_chain(&error.without_url()))
        }
    };
    let mut url = start.clone();
    let mut method = endpoint.method.clone();
    let mut with_body = sent.body.is_some();
    // The endpoint's headers, body and validators go only to its origin:
    // once a redirect has left it, none of them is sent again.
    let mut at_origin = true;
    let mut redirects = 0;
    let mut response = loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(FetchError::Timeout(endpoint.timeout));
        }
        let mut request = client
            .request(method.clone(), url.clone())
            .timeout(remaining);
        if at_origin {
            if let Some(headers) = &sent.headers {
                request = request.headers(HeaderMap::clone(headers));
            }
            if let Some(authorization) = authorization {
                request = request.header(reqwest::header::AUTHORIZATION, authorization);
            }
            if let Some(validators) = validators {
                if let Some(etag) = &validators.etag {
                    request = request.header(IF_NONE_MATCH, etag);
                }
                if let Some(last_modified) = &validators.last_modified {
                    request = request.header(IF_MODIFIED_SINCE, last_modified);
                }
            }
        }
        if let (true, Some(body)) = (with_body, &sent.body) {
            request = request.body(body.to_string());
        }
        let response = request.send().await.map_err(classify)?;
        let Some(next) = redirect(&url, &response) else {
            break response;
        };
        let next = next.map_err(FetchError::BadRedirect)?;
        let refuse = |why| FetchError::Redirect {
            to: format!("`{}`", next.origin().ascii_serialization()),
            why,
        };
        if endpoint.follow_redirects == FollowRedirects::None {
            return Err(refuse("`follow_redirects = \"none\"`"));
        }
        redirects += 1;
        if redirects > MAX_REDIRECTS {
            return Err(refuse("more than 10 redirects"));
        }
        // 301 and 302 turn a POST into a GET, as browsers do; 303 any method.
        let status = response.status();
        if status == StatusCode::SEE_OTHER
            || (method == reqwest::Method::POST
                && matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND))
        {
            if method != reqwest::Method::HEAD {
                method = reqwest::Method::GET;
            }
            with_body = false;
        }
        if at_origin && !same_origin(endpoint.url.url(), &next) {
            if endpoint.follow_redirects != FollowRedirects::Any {
                return Err(refuse(
                    "it is another origin, which would get the endpoint's headers (set `follow_redirects = \"any\"` to follow it without them)",
                ));
            }
            if with_body {
                return Err(refuse(
                    "it is another origin, and a 307 or 308 would send it the endpoint's body",
                ));
            }
            at_origin = false;
        }
        url = next;
    };
    let status = response.status();
    let answer = Answer {
        status: status.as_u16(),
        certificate_expiry_s: response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|tls| tls.peer_certificate())
            .and_then(crate::watched::certificate_expiry),
        values: None,
    };
    if status == StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified { answer });
    }
    if !status.is_success() {
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                retry_after(response.headers())
            }
            _ => None,
        };
        return Err(FetchError::Status {
            status: status.as_u16(),
            retry_after,
        });
    }
    let headers = response.headers();
    let header = |name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(reqwest::header::CONTENT_TYPE);
    let next_link = header(reqwest::header::LINK)
        .and_then(|link| parse_link_header::parse_with_rel(&link).ok())
        .and_then(|links| {
            links
                .get("next")
                .and_then(|next| url.join(&next.raw_uri).ok())
                .map(Box::new)
        });
    let validators = Validators {
        etag: header(ETAG),
        last_modified: header(LAST_MODIFIED),
    };
    if response
        .content_length()
        .is_some_and(|length| length > endpoint.max_body)
    {
        return Err(FetchError::TooLarge {
            limit: endpoint.max_body,
        });
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if (bytes.len() + chunk.len()) as u64 > endpoint.max_body {
            return Err(FetchError::TooLarge {
                limit: endpoint.max_body,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Fetched::Body {
        answer,
        bytes,
        content_type,
        validators,
        next_link,
        warning: None,
    })
}

/// Where a redirect response points, resolved against `url`; `None` when
/// the response is not a redirect (a 3xx without `Location` is a failure).
fn redirect(
    url: &url::Url,
    response: &reqwest::Response,
) -> Option<Result<url::Url, &'static str>> {
    if !matches!(
        response.status(),
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    ) {
        return None;
    }
    let location = response.headers().get(reqwest::header::LOCATION)?;
    let next = location
        .to_str()
        .ok()
        .and_then(|location| url.join(location).ok())
        .ok_or("not a URL");
    Some(next.and_then(|next| match next.scheme() {
        "http" | "https" => Ok(next),
        _ => Err("not an `http` or `https` URL"),
    }))
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate_parse(value)?;
    Some(
        at.duration_since(crate::clock::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate_parse(value: &str) -> Option<std::time::SystemTime> {
    chrono::DateTime::parse_from_rfc2822(value)
        .ok()
        .map(Into::into)
}
