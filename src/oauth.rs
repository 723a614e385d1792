//! The `Authorization` header of a poll, and the OAuth2 access tokens
//! behind `auth = { oauth2 = ... }`.
//!
//! A token is asked for when a poll first needs one and kept in memory
//! until shortly before it expires (a tenth of its lifetime early, at most
//! a minute), or until the API answers 401 to it. Endpoints with the same
//! token request ([`OAuth2::key`]) share one token, and polls that need a
//! new one at once wait for one token request, not one each. A refresh
//! token that the server rotates is kept in the store before it is used:
//! the server has forgotten the old one, and a restart must not go back
//! to it.
//!
//! None of the secrets (client secret, refresh and access tokens) is ever
//! in an error: the token server's own error (`invalid_client: ...`) is.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenResponse};
use oauth2::{
    ClientId, ClientSecret, RefreshToken, RequestTokenError, Scope, TokenResponse as _, TokenUrl,
};
use reqwest::header::HeaderValue;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::config::{EndpointAuth, OAuth2};
use crate::store::{RotatedToken, Store};

/// The most of a token server's answer that is read: a token response is
/// a few KiB at most.
const MAX_ANSWER: usize = 64 << 10;
/// The longest a token is renewed before it expires.
const MOST_EARLY: Duration = Duration::from_secs(60);
/// The most of the token server's error text kept in a poll's error.
const MAX_ERROR_CHARS: usize = 300;

/// The access tokens every poll shares, by token source.
pub struct Tokens {
    store: Arc<Store>,
    sources: std::sync::Mutex<HashMap<[u8; 32], Arc<Source>>>,
}

/// One token source's current token; held while a new one is asked for,
/// so that the polls needing it wait for that one request.
type Source = tokio::sync::Mutex<Option<Token>>;

#[derive(Clone)]
struct Token {
    /// `Bearer <access token>`, marked sensitive.
    header: HeaderValue,
    /// When to ask for the next one; `None` when the server gave no
    /// lifetime: then only a 401 renews it.
    renew_at: Option<Instant>,
}

/// Why a request got no `Authorization` header; nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// `auth` could not be read (a missing token file).
    #[error("cannot send `auth`: {0}")]
    Unreadable(String),
    /// The OAuth2 token server gave no token; `url` as it may be shown.
    #[error("cannot get an OAuth2 token from {url}: {why}")]
    Token { url: String, why: String },
}

/// A token request's error that comes from the HTTP exchange itself.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ExchangeError(String);

impl Tokens {
    pub fn new(store: Arc<Store>) -> Tokens {
        Tokens {
            store,
            sources: Default::default(),
        }
    }

    /// The `Authorization` header for a request with `auth`. `stale` is one
    /// the API just refused (a 401): an OAuth2 token is then renewed,
    /// unless another poll has renewed it already. Token requests go
    /// through `client` and may take `timeout`.
    pub async fn authorization(
        &self,
        client: &reqwest::Client,
        auth: &EndpointAuth,
        timeout: Duration,
        stale: Option<&HeaderValue>,
    ) -> Result<HeaderValue, AuthError> {
        let oauth2 = match auth {
            EndpointAuth::Fixed(auth) => return auth.header().map_err(AuthError::Unreadable),
            EndpointAuth::OAuth2(oauth2) => oauth2,
        };
        let source = crate::locks::lock(&self.sources)
            .entry(oauth2.key())
            .or_default()
            .clone();
        let mut current = source.lock().await;
        if let Some(token) = &*current
            && stale != Some(&token.header)
            && token.renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(token.header.clone());
        }
        let token =
            self.request(client, oauth2, timeout)
                .await
                .map_err(|why| AuthError::Token {
                    url: oauth2.token_url.shown().to_string(),
                    why,
                })?;
        *current = Some(token.clone());
        Ok(token.header)
    }

    /// Asks the token server for a new access token, and keeps the refresh
    /// token it rotated to, if it did.
    async fn request(
        &self,
        client: &reqwest::Client,
        oauth2: &OAuth2,
        timeout: Duration,
    ) -> Result<Token, String> {
        let mut token_client = BasicClient::new(ClientId::new(oauth2.client_id.clone()))
            .set_token_uri(TokenUrl::from_url(oauth2.token_url.url().clone()));
        if let Some(secret) = &oauth2.client_secret {
            token_client = token_client.set_client_secret(ClientSecret::new(secret.read()?));
        }
        let http = Exchange {
            client,
            timeout,
            status: AtomicU16::new(0),
        };
        let scopes = oauth2.scopes.iter().cloned().map(Scope::new);
        let asked_at = Instant::now();
        let failed = |error| describe(error, http.status.load(Ordering::Relaxed));
        let response: BasicTokenResponse = match &oauth2.refresh_token {
            None => {
                let request = token_client
                    .exchange_client_credentials()
                    .add_scopes(scopes);
                let request = oauth2
                    .params
                    .iter()
                    .fold(request, |request, (name, value)| {
                        request.add_extra_param(name.clone(), value.clone())
                    });
                request.request_async(&http).await.map_err(failed)?
            }
            Some(configured) => {
                let configured = configured.read()?;
                let key = oauth2.key();
                let replaces: [u8; 32] = Sha256::digest(configured.as_bytes()).into();
                let current = match self.store.rotated_token(&key) {
                    Ok(Some(rotated)) if rotated.replaces == replaces => rotated.token,
                    // None yet, or one that replaced a token no longer configured.
                    Ok(_) => configured,
                    Err(error) => {
                        return Err(format!(
                            "cannot read the stored refresh token: {}",
                            crate::error_chain(&error)
                        ));
                    }
                };
                let refresh = RefreshToken::new(current.clone());
                let request = token_client
                    .exchange_refresh_token(&refresh)
                    .add_scopes(scopes);
                let request = oauth2
                    .params
                    .iter()
                    .fold(request, |request, (name, value)| {
                        request.add_extra_param(name.clone(), value.clone())
                    });
                let response = request.request_async(&http).await.map_err(failed)?;
                if let Some(rotated) = response.refresh_token()
                    && *rotated.secret() != current
                {
                    let rotated = RotatedToken {
                        replaces,
                        token: rotated.secret().clone(),
                    };
                    self.store
                        .keep_rotated_token(&key, &rotated)
                        .await
                        .map_err(|error| {
                            format!(
                                "cannot keep the rotated refresh token: {}",
                                crate::error_chain(&error)
                            )
                        })?;
                }
                response
            }
        };
        let mut header =
            HeaderValue::from_str(&format!("Bearer {}", response.access_token().secret()))
                .map_err(|_| {
                    "its access token holds a character headers cannot carry".to_string()
                })?;
        header.set_sensitive(true);
        let renew_at = response
            .expires_in()
            .map(|lifetime| asked_at + lifetime - early(lifetime));
        tracing::debug!(
            token_url = %oauth2.token_url,
            expires_in = ?response.expires_in(),
            "got an OAuth2 access token"
        );
        Ok(Token { header, renew_at })
    }
}

/// How long before it expires a token of `lifetime` is renewed.
fn early(lifetime: Duration) -> Duration {
    (lifetime / 10).min(MOST_EARLY)
}

/// Token requests over a poll's client, each answer read up to
/// [`MAX_ANSWER`]; the last status is noted for the error message.
struct Exchange<'a> {
    client: &'a reqwest::Client,
    timeout: Duration,
    status: AtomicU16,
}

impl<'c> oauth2::AsyncHttpClient<'c> for Exchange<'_> {
    type Error = ExchangeError;
    // Boxed: the future of a closure here is not `Send` for every lifetime,
    // which the poll tasks need.
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, ExchangeError>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.exchange(request))
    }
}

impl Exchange<'_> {
    async fn exchange(
        &self,
        request: oauth2::HttpRequest,
    ) -> Result<oauth2::HttpResponse, ExchangeError> {
        let failed = |error: reqwest::Error| {
            ExchangeError(match error.is_timeout() {
                true => format!(
                    "timed out after {}",
                    humantime::format_duration(self.timeout)
                ),
                false => crate::error_chain(&error.without_url()),
            })
        };
        let mut request = reqwest::Request::try_from(request).map_err(failed)?;
        *request.timeout_mut() = Some(self.timeout);
        let mut response = self.client.execute(request).await.map_err(failed)?;
        self.status
            .store(response.status().as_u16(), Ordering::Relaxed);
        let mut answer = oauth2::http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(ExchangeError("its answer is larger than 64 KiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        answer
            .body(body)
            .map_err(|error| ExchangeError(error.to_string()))
    }
}

/// A failed token request in words: the server's OAuth2 error as it gave
/// it, or what was wrong with its answer, never the answer itself (a
/// token in an answer that does not parse would be shown).
fn describe(error: RequestTokenError<ExchangeError, BasicErrorResponse>, status: u16) -> String {
    let text = match error {
        RequestTokenError::ServerResponse(response) => response.to_string(),
        RequestTokenError::Request(error) => error.0,
        RequestTokenError::Parse(error, _) => {
            let expected = match status {
                200 => "a token response",
                _ => "an OAuth2 error",
            };
            format!(
                "HTTP status {status}, and an answer that is not {expected} (at `{}`)",
                error.path()
            )
        }
        RequestTokenError::Other(message) => message,
    };
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_a_tenth_of_their_lifetime_early_at_most_a_minute() {
        let check = |lifetime: u64, early_ms: u64| {
            assert_eq!(
                early(Duration::from_secs(lifetime)),
                Duration::from_millis(early_ms),
                "{lifetime} s"
            );
        };
        check(2, 200);
        check(300, 30_000);
        check(3600, 60_000);
        check(0, 0);
    }
}
