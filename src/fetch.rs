//! One HTTP request to a watched endpoint.
//!
//! A single shared client (rustls, keep-alive pool, gzip and brotli) serves
//! every endpoint. The body is read while streaming and cut off at the
//! endpoint's `max_body`; stored validators make the request conditional, so
//! an unchanged resource costs a 304.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{
    ETAG, HeaderMap, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RETRY_AFTER,
};

use crate::config::Endpoint;

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
    NotModified,
    Body {
        bytes: Vec<u8>,
        content_type: Option<String>,
        validators: Validators,
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
}

/// The client every poll shares.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("pollhook/", env!("CARGO_PKG_VERSION")))
        .gzip(true)
        .brotli(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(10))
        .build()
}

/// Polls `endpoint` once. Non-2xx, timeouts and oversized bodies are errors:
/// the caller keeps its snapshot and tries again later.
pub async fn fetch(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    validators: Option<&Validators>,
) -> Result<Fetched, FetchError> {
    let mut request = client
        .request(endpoint.method.clone(), endpoint.url.clone())
        .timeout(endpoint.timeout);
    if let Some(headers) = &endpoint.headers {
        request = request.headers(reqwest::header::HeaderMap::clone(headers));
    }
    if let Some(body) = &endpoint.body {
        request = request.body(body.clone());
    }
    if let Some(validators) = validators {
        if let Some(etag) = &validators.etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        if let Some(last_modified) = &validators.last_modified {
            request = request.header(IF_MODIFIED_SINCE, last_modified);
        }
    }
    let classify = |error: reqwest::Error| {
        if error.is_timeout() {
            FetchError::Timeout(endpoint.timeout)
        } else {
            FetchError::Request(crate::error_chain(&error.without_url()))
        }
    };
    let mut response = request.send().await.map_err(classify)?;
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified);
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
            .and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(reqwest::header::CONTENT_TYPE);
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
        bytes,
        content_type,
        validators,
    })
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
