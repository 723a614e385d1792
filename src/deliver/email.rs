//! Delivering events by email over SMTP (lettre, on rustls and tokio).
//!
//! `smtps://` speaks TLS from the first byte (port 465 by default);
//! `smtp://` upgrades with STARTTLS (port 587 by default), and refuses a
//! server that does not offer it, except on a loopback address: a local
//! relay (postfix, nullmailer) is reached without leaving the machine.
//! The server accepting the message (a 2xx reply to its data) is the
//! acknowledgement; a refusal is a failed attempt, retried as any other.
//! Its reply code is the attempt's status (250; 550 for a refusal), so the
//! attempt log reads as it does for HTTP.
//!
//! Each message's `Message-ID` is `<event id@pollhook>`: a retry or a replay
//! sends the same one, so a mail client can tell a repeat.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::time::Instant;

use super::{Attempt, format};
use crate::config::{Auth, Email, Target};
use crate::store::{OutboxRow, RESPONSE_KEEP};

/// How a connection is secured, from the URL: see the module's docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtps://`: TLS from the start.
    Tls,
    /// `smtp://`: STARTTLS, or no message.
    StartTls,
    /// `smtp://` to a loopback address: STARTTLS when offered.
    StartTlsIfOffered,
}

/// How `url` is to be secured, and the port it names or its default.
pub fn security(url: &url::Url) -> (Security, u16) {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        // `smtp` is not a special scheme to the URL parser: its host is a
        // name even when it is an address.
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|address| address.is_loopback())
        }
        None => false,
    };
    match url.scheme() {
        "smtps" => (Security::Tls, url.port().unwrap_or(465)),
        _ if loopback => (Security::StartTlsIfOffered, url.port().unwrap_or(587)),
        _ => (Security::StartTls, url.port().unwrap_or(587)),
    }
}

/// Sends one row as an email to every recipient of `email`.
pub async fn attempt(target: &Target, email: &Email, row: &OutboxRow) -> Attempt {
    let started = Instant::now();
    let mut attempt = Attempt::starting();
    let message = match message(target, email, row) {
        Ok(message) => message,
        Err(error) => {
            attempt.error = Some(error);
            attempt.unsendable = true;
            attempt.duration = started.elapsed();
            return attempt;
        }
    };
    let sent = match transport(target) {
        Ok(transport) => transport.send(message).await,
        Err(error) => {
            // Retried: a credential file may be readable at the next attempt.
            attempt.error = Some(error);
            attempt.duration = started.elapsed();
            return attempt;
        }
    };
    match sent {
        Ok(response) => {
            attempt.status = Some(u16::from(response.code()));
            attempt.response = kept(response.message().collect::<Vec<_>>().join(" "));
        }
        Err(error) => {
            attempt.status = error.status().map(u16::from);
            attempt.error = Some(describe(&error, target.timeout));
        }
    }
    attempt.duration = started.elapsed();
    attempt
}

/// The message for a row; an error means it can never be sent as configured.
fn message(target: &Target, email: &Email, row: &OutboxRow) -> Result<Message, String> {
    let text = format::email(&target.format, email.subject.as_deref(), &row.body)
        .map_err(|error| format!("cannot write the event as an email: {error}"))?;
    let mut builder = Message::builder()
        .from(email.from.clone())
        .subject(text.subject)
        .message_id(Some(format!("<{}@pollhook>", row.event_id)))
        .header(ContentType::TEXT_PLAIN);
    for recipient in &email.to {
        builder = builder.to(recipient.clone());
    }
    builder
        .body(text.body)
        .map_err(|error| format!("cannot write the event as an email: {error}"))
}

/// A connection for one attempt: a target sends rarely, and a fresh one
/// reads a rotated password file.
fn transport(target: &Target) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let url = target.url.url();
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let (security, port) = security(url);
    let mut parameters = TlsParameters::builder(host.to_string());
    if let Some(transport) = target.transport.as_deref() {
        if let Some(path) = &transport.ca_file {
            let pem = std::fs::read(path)
                .map_err(|error| format!("cannot read `ca_file` `{}`: {error}", path.display()))?;
            let certificates = Certificate::from_pem(&pem)
                .map_err(|_| format!("`ca_file` `{}` holds no PEM certificate", path.display()))?;
            parameters = parameters.add_root_certificate(certificates);
        }
        parameters = parameters.dangerous_accept_invalid_certs(transport.insecure);
    }
    let parameters = parameters
        .build_rustls()
        .map_err(|error| format!("cannot set up TLS: {error}"))?;
    let tls = match security {
        Security::Tls => Tls::Wrapper(parameters),
        Security::StartTls => Tls::Required(parameters),
        Security::StartTlsIfOffered => Tls::Opportunistic(parameters),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(target.timeout));
    if let Some(credentials) = credentials(target)? {
        builder = builder.credentials(credentials);
    }
    Ok(builder.build())
}

/// The login: `auth = { basic = ... }`, or the URL's user-info.
fn credentials(target: &Target) -> Result<Option<Credentials>, String> {
    if let Some(Auth::Basic { username, password }) = &target.auth {
        return Ok(Some(Credentials::new(username.read()?, password.read()?)));
    }
    let url = target.url.url();
    if url.username().is_empty() {
        return Ok(None);
    }
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| "the URL's user-info is not UTF-8".to_string())
    };
    Ok(Some(Credentials::new(
        decode(url.username())?,
        decode(url.password().unwrap_or_default())?,
    )))
}

/// The start of a server's reply, as the attempt log keeps HTTP answers.
fn kept(mut reply: String) -> String {
    let mut end = reply.len().min(RESPONSE_KEEP);
    while !reply.is_char_boundary(end) {
        end -= 1;
    }
    reply.truncate(end);
    reply
}

/// What went wrong, for the attempt log: lettre's message names the reply
/// or the connection's failure, never the credentials.
fn describe(error: &lettre::transport::smtp::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {}", humantime::format_duration(timeout));
    }
    crate::error_chain(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_needs_starttls_except_on_loopback() {
        let check = |url: &str, expected: (Security, u16)| {
            assert_eq!(security(&url.parse().unwrap()), expected, "{url}");
        };
        check("smtps://mail.example.com", (Security::Tls, 465));
        check("smtps://mail.example.com:2465", (Security::Tls, 2465));
        check("smtp://mail.example.com", (Security::StartTls, 587));
        check("smtp://mail.example.com:25", (Security::StartTls, 25));
        check("smtp://127.0.0.1:25", (Security::StartTlsIfOffered, 25));
        check("smtp://127.8.0.1", (Security::StartTlsIfOffered, 587));
        check("smtp://[::1]:2525", (Security::StartTlsIfOffered, 2525));
        check("smtp://LocalHost", (Security::StartTlsIfOffered, 587));
        check("smtp://localhost.example.com", (Security::StartTls, 587));
        check("smtp://10.0.0.1", (Security::StartTls, 587));
    }

    #[test]
    fn a_long_reply_is_cut_between_characters() {
        assert_eq!(kept("250 ok".into()), "250 ok");
        let long = format!("a{}", "é".repeat(RESPONSE_KEEP));
        let cut = kept(long);
        assert!(cut.len() <= RESPONSE_KEEP && cut.len() >= RESPONSE_KEEP - 1);
    }
}
