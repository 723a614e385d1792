//! Who may use the dashboard: sessions made by the login form (or, when
//! no token is set, by the first visit), each with its own CSRF token that
//! every form posts back. A session lives in memory only: a restart logs
//! everyone out, and the cookie is HttpOnly and SameSite=Strict.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::http::{HeaderMap, header};
use rand::RngExt as _;

use crate::locks::lock;

/// The session cookie's name.
pub const COOKIE: &str = "pollhook_session";

/// Sessions kept at most; logging in once more drops the oldest.
const MAX_SESSIONS: usize = 1000;

/// How a request is allowed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visitor {
    /// `Authorization: Bearer <token>`: not a browser's cookie, so a form
    /// posted from another site cannot carry it; needs no CSRF token.
    Bearer,
    /// A session, with the CSRF token its forms carry.
    Session { csrf: String },
}

impl Visitor {
    /// The CSRF token a page's forms post (none for bearer clients).
    pub fn csrf(&self) -> &str {
        match self {
            Visitor::Bearer => "",
            Visitor::Session { csrf } => csrf,
        }
    }

    /// Whether a form posted with `csrf` is this visitor's own.
    pub fn posted(&self, csrf: &str) -> bool {
        match self {
            Visitor::Bearer => true,
            Visitor::Session { csrf: own } => constant_time_eq(own.as_bytes(), csrf.as_bytes()),
        }
    }
}

/// The live sessions: id → CSRF token, oldest first in `order`.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    by_id: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Sessions {
    /// A new session: its id (the cookie's value) and its visitor.
    pub fn open(&self) -> (String, Visitor) {
        let (id, csrf) = (random_hex(), random_hex());
        let mut kept = lock(&self.inner);
        if kept.order.len() >= MAX_SESSIONS
            && let Some(oldest) = kept.order.pop_front()
        {
            kept.by_id.remove(&oldest);
        }
        kept.by_id.insert(id.clone(), csrf.clone());
        kept.order.push_back(id.clone());
        (id, Visitor::Session { csrf })
    }

    pub fn close(&self, id: &str) {
        let mut kept = lock(&self.inner);
        kept.by_id.remove(id);
        kept.order.retain(|kept| kept != id);
    }

    /// The session of a request's cookie, if it is live.
    pub fn visitor(&self, headers: &HeaderMap) -> Option<(String, Visitor)> {
        let id = cookie(headers)?;
        let csrf = lock(&self.inner).by_id.get(id)?.clone();
        Some((id.to_string(), Visitor::Session { csrf }))
    }
}

/// The session id in a request's `Cookie` header.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// The `Set-Cookie` value of a session.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether a request carries `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

fn random_hex() -> String {
    hex::encode(rand::rng().random::<[u8; 24]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_closed() {
        let sessions = Sessions::default();
        let (id, _) = sessions.open();
        let headers = with_cookie(&format!("theme=dark; {COOKIE}={id}"));
        let (found, visitor) = sessions.visitor(&headers).unwrap();
        assert_eq!(found, id);
        let csrf = visitor.csrf().to_string();
        assert_eq!(csrf.len(), 48);
        assert!(visitor.posted(&csrf));
        assert!(!visitor.posted(""));
        assert!(!visitor.posted(&id));
        assert!(
            sessions
                .visitor(&with_cookie(&format!("{COOKIE}=x{id}")))
                .is_none()
        );
        sessions.close(&id);
        assert!(sessions.visitor(&headers).is_none());
    }

    #[test]
    fn the_oldest_session_goes_when_too_many_are_open() {
        let sessions = Sessions::default();
        let (first, _) = sessions.open();
        for _ in 0..MAX_SESSIONS {
            sessions.open();
        }
        let cookie = with_cookie(&format!("{COOKIE}={first}"));
        assert!(sessions.visitor(&cookie).is_none());
        assert_eq!(lock(&sessions.inner).by_id.len(), MAX_SESSIONS);
    }

    #[test]
    fn bearer_tokens_compare_whole() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        assert!(bearer(&headers, "secret"));
        assert!(!bearer(&headers, "secreT"));
        assert!(!bearer(&HeaderMap::new(), "secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(Visitor::Bearer.posted("anything"));
    }
}
