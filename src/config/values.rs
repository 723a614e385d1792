//! Values that validate themselves while the TOML is deserialised.
//!
//! Each newtype's `FromStr` error goes through `serde::de::Error::custom`, so
//! the toml crate attaches the span of the offending value and the user sees
//! the line and column of the mistake, not just its description.

use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, de};
use sha2::{Digest, Sha256};

/// Deserialises any `FromStr` value from a TOML string, keeping its error text.
fn from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(de::Error::custom)
}

macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                from_str(deserializer)
            }
        }
    )*};
}

deserialize_from_str!(
    HumanDuration,
    SpanOfTime,
    HttpUrl,
    ProxyUrl,
    TargetUrl,
    ByteSize,
    EnvString,
    WebhookSecret
);

/// The longest duration a config may hold.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The largest size a config may hold (`max_body`): a poll holds the body
/// in memory.
const MAX_SIZE: u64 = 1 << 30;

/// A duration written as people write it: `30s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let duration = humantime::parse_duration(text.trim()).map_err(|err| {
            format!("invalid duration `{text}`: {err} (write e.g. `30s`, `5m`, `1h`)")
        })?;
        if duration.is_zero() {
            return Err(format!("invalid duration `{text}`: must be more than zero"));
        }
        // Far enough for any schedule or timeout; far past it, adding the
        // duration to a time overflows.
        if duration > MAX_DURATION {
            return Err(format!(
                "invalid duration `{text}`: must be at most 365 days"
            ));
        }
        Ok(HumanDuration(duration))
    }
}

/// A [`HumanDuration`] that may be zero (`"0s"`): a length of time that
/// can be none, such as `fail_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanOfTime(pub Duration);

impl FromStr for SpanOfTime {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match humantime::parse_duration(text.trim()) {
            Ok(duration) if duration.is_zero() => Ok(SpanOfTime(duration)),
            _ => text
                .parse()
                .map(|HumanDuration(duration)| SpanOfTime(duration)),
        }
    }
}

/// An absolute `http` or `https` URL after `${...}` expansion
/// (environment, file, credential), and the form it may be shown in.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HttpUrl {
    url: url::Url,
    /// What logs, events, the admin API and `Debug` show: each part that
    /// came from `${...}` as `***`, and no user name or password.
    shown: String,
}

impl HttpUrl {
    /// The URL requests go to, secrets included: never show it.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The URL as it may be shown.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl FromStr for HttpUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_url(text, &["http", "https"])
    }
}

impl HttpUrl {
    /// A URL rendered from a template (see `config::template`): checked as
    /// every URL, and shown as the template is, without its user-info
    /// password.
    pub fn rendered(url: &str, template: &str) -> Result<HttpUrl, String> {
        let shown = redact_written_url(template);
        let url = parse_scheme(url, &shown, &["http", "https"])?;
        Ok(HttpUrl { url, shown })
    }
}

/// A target's `url`: `http(s)://` for a webhook, `smtp://` (STARTTLS) or
/// `smtps://` (TLS) for email, `mqtt(s)://` for an MQTT broker (whose user
/// name and password have keys of their own), `nats://` or `tls://` for a
/// NATS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl(pub HttpUrl);

impl FromStr for TargetUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parsed = parse_url(
            text,
            &[
                "http", "https", "smtp", "smtps", "mqtt", "mqtts", "nats", "tls",
            ],
        )?;
        let url = parsed.url();
        if matches!(url.scheme(), "nats" | "tls") {
            let written = redact_written_url(text);
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("invalid URL `{written}`: it names no NATS server"));
            }
            if !matches!(url.path(), "" | "/") || url.query().is_some() {
                return Err(format!(
                    "invalid URL `{written}`: a NATS server's URL has no path or query; the subject goes in `subject`"
                ));
            }
        }
        if matches!(url.scheme(), "mqtt" | "mqtts") {
            let written = redact_written_url(text);
            let problem = if url.host_str().is_none_or(str::is_empty) {
                Some("it names no broker host")
            } else if !url.username().is_empty() || url.password().is_some() {
                Some("put the user name in `username` and the password in `password`")
            } else if !matches!(url.path(), "" | "/") || url.query().is_some() {
                Some("a broker URL has no path or query; the topic goes in `topic`")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(format!("invalid URL `{written}`: {problem}"));
            }
        }
        Ok(TargetUrl(parsed))
    }
}

/// Parses an absolute URL with one of `schemes` after `${...}` expansion.
fn parse_url(text: &str, schemes: &[&str]) -> Result<HttpUrl, String> {
    let expanded = expand(text)?;
    // The expanded text may hold a token: quote only what the user
    // wrote, and not even its password.
    let written = redact_written_url(text);
    let value = match expanded.unresolved {
        // Never requested: only commands that poll nothing allow it.
        true => format!("http://{UNRESOLVED}.invalid/"),
        false => expanded.value,
    };
    let url = parse_scheme(&value, &written, schemes)?;
    let shown = if expanded.secret {
        match url::Url::parse(&expanded.masked) {
            Ok(masked) => redact_url(&masked),
            Err(_) => redact_written_url(&expanded.masked),
        }
    } else {
        redact_url(&url)
    };
    Ok(HttpUrl { url, shown })
}

/// `value` as a URL with one of `schemes`; errors quote `written`.
fn parse_scheme(value: &str, written: &str, schemes: &[&str]) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|err| format!("invalid URL `{written}`: {err}"))?;
    if !schemes.contains(&url.scheme()) {
        let names: Vec<String> = schemes.iter().map(|scheme| format!("`{scheme}`")).collect();
        let (last, rest) = names.split_last().expect("at least one scheme");
        return Err(format!(
            "invalid URL `{written}`: scheme `{}` is not {}{last}",
            url.scheme(),
            match rest.len() {
                0 => String::new(),
                1 => format!("{} or ", rest[0]),
                _ => format!("{}, or ", rest.join(", ")),
            }
        ));
    }
    Ok(url)
}

/// A proxy's URL: an [`HttpUrl`] that may also be `socks5://` (names
/// resolved here) or `socks5h://` (names resolved by the proxy).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyUrl(HttpUrl);

impl ProxyUrl {
    /// The URL, credentials included: never show it.
    pub fn url(&self) -> &url::Url {
        self.0.url()
    }

    pub fn shown(&self) -> &str {
        self.0.shown()
    }
}

impl FromStr for ProxyUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_url(text, &["http", "https", "socks5", "socks5h"]).map(ProxyUrl)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The URL without user name and password, for logs and event bodies.
pub fn redact_url(url: &url::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Both setters only fail on URLs that cannot have credentials at all.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// A URL as written, perhaps not even valid, with the password of its
/// user-info (`scheme://user:password@host`) replaced by `***`: for
/// messages about a URL that did not parse.
pub fn redact_written_url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let authority_start = scheme_end + 3;
    let authority_end = text[authority_start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |end| authority_start + end);
    let authority = &text[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return text.to_string();
    };
    let Some(colon) = authority[..at].find(':') else {
        return text.to_string();
    };
    let password_start = authority_start + colon + 1;
    let password_end = authority_start + at;
    format!("{}***{}", &text[..password_start], &text[password_end..])
}

/// A size such as `10MiB`, `512KiB`, `1MB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: u64 = number.parse().map_err(|_| {
            format!("invalid size `{text}`: write e.g. `10MiB`, `512KiB` or a number of bytes")
        })?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "kib" | "k" => 1 << 10,
            "mb" => 1_000_000,
            "mib" | "m" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" | "g" => 1 << 30,
            other => return Err(format!("invalid size `{text}`: unknown unit `{other}`")),
        };
        let bytes = number
            .checked_mul(multiplier)
            .ok_or_else(|| format!("invalid size `{text}`: too large"))?;
        if bytes == 0 {
            return Err(format!("invalid size `{text}`: must be more than zero"));
        }
        if bytes > MAX_SIZE {
            return Err(format!("invalid size `{text}`: must be at most 1GiB"));
        }
        Ok(ByteSize(bytes))
    }
}

/// A string with `${NAME}`, `${file:...}` and `${credential:...}` expanded
/// (see [`expand_env`]). It may carry a secret (a token in a header), so
/// its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvString {
    pub value: String,
    /// True when the value came (partly) from the environment or a file.
    pub expanded: bool,
}

impl FromStr for EnvString {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expanded = expand(text)?;
        Ok(EnvString {
            expanded: expanded.secret,
            value: expanded.value,
        })
    }
}

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.expanded {
            f.write_str("EnvString(<redacted>)")
        } else {
            write!(f, "EnvString({:?})", self.value)
        }
    }
}

/// Expands, in config values:
///
/// - `${NAME}`: the environment variable `NAME`;
/// - `${file:/path}`: the contents of a file (one trailing newline dropped);
/// - `${credential:NAME}`: the systemd credential `NAME`, the file
///   `$CREDENTIALS_DIRECTORY/NAME` that `LoadCredential=` provides.
///
/// `$${` stands for a literal `${`. Errors name the variable, file or
/// credential, never the value.
pub fn expand_env(text: &str) -> Result<String, String> {
    expand(text).map(|expanded| expanded.value)
}

/// A config string with its `${...}` parts expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub value: String,
    /// The same text with each `${...}` part as `***`, to be shown.
    pub masked: String,
    /// Whether any part came from `${...}`.
    pub secret: bool,
    /// Whether a part could not be read (see [`unresolved_allowed`]).
    pub unresolved: bool,
}

thread_local! {
    /// While set ([`unresolved_allowed`]), a `${...}` that cannot be read
    /// expands to [`UNRESOLVED`] and its error is kept here instead of
    /// failing: for CLI commands that read the config only to find the
    /// daemon or the store, and need none of its secrets.
    static LENIENT: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// What an unreadable `${...}` expands to in [`unresolved_allowed`].
pub const UNRESOLVED: &str = "pollhook-unresolved";

/// Runs `compile` with unreadable `${...}` allowed; returns its result and
/// the errors of those it could not read.
pub fn unresolved_allowed<T>(compile: impl FnOnce() -> T) -> (T, Vec<String>) {
    LENIENT.with(|lenient| *lenient.borrow_mut() = Some(Vec::new()));
    let result = compile();
    let unresolved = LENIENT.with(|lenient| lenient.borrow_mut().take().unwrap_or_default());
    (result, unresolved)
}

/// `expand_one`, or in [`unresolved_allowed`] a placeholder for what it
/// cannot read.
fn expand_or_note(name: &str, unresolved: &mut bool) -> Result<String, String> {
    expand_one(name).or_else(|error| {
        LENIENT.with(|lenient| match lenient.borrow_mut().as_mut() {
            Some(errors) => {
                errors.push(error);
                *unresolved = true;
                Ok(UNRESOLVED.to_string())
            }
            None => Err(error),
        })
    })
}

/// See [`expand_env`].
pub fn expand(text: &str) -> Result<Expanded, String> {
    let mut expanded = Expanded {
        value: String::with_capacity(text.len()),
        masked: String::with_capacity(text.len()),
        secret: false,
        unresolved: false,
    };
    for part in scan(text, &mut expanded.unresolved)? {
        match part {
            Part::Literal(literal) => {
                expanded.value.push_str(&literal);
                expanded.masked.push_str(&literal);
            }
            Part::Secret(value) => {
                expanded.value.push_str(&value);
                expanded.masked.push_str("***");
                expanded.secret = true;
            }
        }
    }
    Ok(expanded)
}

/// A config string's text as written, or what one `${...}` in it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Secret(String),
}

/// [`expand`] part by part, for a template, where a secret's value must
/// stay a value and never become template source.
pub fn expand_parts(text: &str) -> Result<Vec<Part>, String> {
    scan(text, &mut false)
}

fn scan(text: &str, unresolved: &mut bool) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        literal.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            literal.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            // Not quoted: the text around it may be a secret written inline.
            let end = tail
                .find('}')
                .ok_or("unclosed `${` (write `$${` for a literal `${`)")?;
            let value = expand_or_note(&tail[..end], unresolved)?;
            parts.push(Part::Literal(std::mem::take(&mut literal)));
            parts.push(Part::Secret(value));
            rest = &tail[end + 1..];
        } else {
            literal.push('$');
            rest = &after[1..];
        }
    }
    literal.push_str(rest);
    parts.push(Part::Literal(literal));
    Ok(parts)
}

/// The value of what one `${...}` holds.
fn expand_one(name: &str) -> Result<String, String> {
    if let Some(path) = name.strip_prefix("file:") {
        if !path.starts_with('/') {
            return Err(format!(
                "`${{file:{path}}}` needs an absolute path, e.g. `${{file:/etc/pollhook/token}}`"
            ));
        }
        return read_secret_file(Path::new(path), &format!("secret file `{path}`"));
    }
    if let Some(credential) = name.strip_prefix("credential:") {
        let plain = !credential.is_empty()
            && credential != "."
            && credential != ".."
            && !credential.contains('/');
        if !plain {
            return Err(format!("invalid credential name `{credential}`"));
        }
        let directory = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|directory| !directory.is_empty())
            .ok_or_else(|| {
                format!(
                    "`${{credential:{credential}}}` needs `$CREDENTIALS_DIRECTORY`, which systemd sets for `LoadCredential=`; it is not set"
                )
            })?;
        let path = Path::new(&directory).join(credential);
        return read_secret_file(
            &path,
            &format!("credential `{credential}` (`{}`)", path.display()),
        );
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("invalid variable name `{name}` in `${{...}}`"));
    }
    std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))
}

/// Secrets are short: a bigger file is a mistake (a wrong path, a device),
/// and reading stops there.
const SECRET_FILE_MAX: u64 = 64 << 10;

/// The contents of a secret file without one trailing newline (`echo` and
/// editors add one). `what` names it in errors; the contents never appear.
fn read_secret_file(path: &Path, what: &str) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|error| format!("cannot read {what}: {error}"))?;
    let mut bytes = Vec::new();
    file.take(SECRET_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read {what}: {error}"))?;
    if bytes.len() as u64 > SECRET_FILE_MAX {
        return Err(format!("{what} is larger than 64 KiB"));
    }
    let mut text = String::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8 text"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// A Standard Webhooks signing secret: `whsec_` followed by base64 (the
/// prefix is optional). Holds the decoded key; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    pub key: Vec<u8>,
    /// Whether it was written with the `whsec_` prefix; one without is
    /// accepted, with a warning: it may be another service's token.
    pub prefixed: bool,
}

impl FromStr for WebhookSecret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expanded = expand(text)?;
        if expanded.unresolved {
            // Never used: only commands that sign nothing allow it.
            return Ok(WebhookSecret {
                key: UNRESOLVED.as_bytes().to_vec(),
                prefixed: true,
            });
        }
        let expanded = expanded.value;
        let (encoded, prefixed) = match expanded.strip_prefix("whsec_") {
            Some(encoded) => (encoded, true),
            None => (expanded.as_str(), false),
        };
        // Never echo the value: it is the secret itself.
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| {
                "invalid webhook secret: expected `whsec_` followed by base64".to_string()
            })?;
        if key.is_empty() {
            return Err("invalid webhook secret: it is empty".to_string());
        }
        Ok(WebhookSecret { key, prefixed })
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!("10MiB".parse::<ByteSize>().unwrap().0, 10 << 20);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert!("10 parsecs".parse::<ByteSize>().is_err());
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert!("5 fortnights and a bit".parse::<HumanDuration>().is_err());
        assert!("0s".parse::<HumanDuration>().is_err());
        assert_eq!(
            "500000000000y".parse::<HumanDuration>().unwrap_err(),
            "invalid duration `500000000000y`: must be at most 365 days"
        );
        assert!("365d".parse::<HumanDuration>().is_ok());
        assert!("2GiB".parse::<ByteSize>().is_err());
        assert!("1GiB".parse::<ByteSize>().is_ok());
    }

    #[test]
    fn env_expansion() {
        // SAFETY: the variable name is unique to this test.
        unsafe { std::env::set_var("POLLHOOK_TEST_EXPAND", "abc") };
        assert_eq!(expand_env("x${POLLHOOK_TEST_EXPAND}y").unwrap(), "xabcy");
        assert_eq!(
            expand_env("cost $5 $${literal}").unwrap(),
            "cost $5 ${literal}"
        );
        let unclosed = expand_env("Bearer PHSECRET ${TOKEN").unwrap_err();
        assert!(!unclosed.contains("PHSECRET"), "{unclosed}");
        let missing = expand_env("${POLLHOOK_TEST_SURELY_MISSING}").unwrap_err();
        assert!(
            missing.contains("POLLHOOK_TEST_SURELY_MISSING"),
            "{missing}"
        );
    }

    #[test]
    fn file_expansion_drops_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let check = |contents: &[u8], expected: &str| {
            let path = dir.path().join("secret");
            std::fs::write(&path, contents).unwrap();
            let text = format!("Bearer ${{file:{}}}!", path.display());
            assert_eq!(expand_env(&text).unwrap(), expected, "{contents:?}");
        };
        check(b"s3cret\n", "Bearer s3cret!");
        check(b"s3cret\r\n", "Bearer s3cret!");
        check(b"s3cret\n\n", "Bearer s3cret\n!");
        check(b"s3cret", "Bearer s3cret!");
        check("é".as_bytes(), "Bearer é!");

        let path = dir.path().join("secret");
        std::fs::write(&path, b"\xff s3cret").unwrap();
        let error = expand_env(&format!("${{file:{}}}", path.display())).unwrap_err();
        assert!(error.ends_with("is not UTF-8 text"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        std::fs::write(&path, vec![b'x'; 70_000]).unwrap();
        let error = expand_env(&format!("${{file:{}}}", path.display())).unwrap_err();
        assert!(error.ends_with("is larger than 64 KiB"), "{error}");

        let missing = expand_env("${file:/nonexistent/pollhook-token}").unwrap_err();
        assert!(
            missing.starts_with("cannot read secret file `/nonexistent/pollhook-token`: "),
            "{missing}"
        );
        let relative = expand_env("${file:token.txt}").unwrap_err();
        assert!(relative.contains("needs an absolute path"), "{relative}");
        for bad in ["${credential:}", "${credential:../x}", "${credential:a/b}"] {
            let error = expand_env(bad).unwrap_err();
            assert!(error.starts_with("invalid credential name"), "{error}");
        }
    }

    #[test]
    fn secrets_and_credentials_never_show() {
        let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        assert!(!format!("{secret:?}").contains("MfKQ"));
        let bad = "whsec_not base64!".parse::<WebhookSecret>().unwrap_err();
        assert!(!bad.contains("not base64"), "{bad}");
        let url: HttpUrl = "https://user:hunter2@example.com/x".parse().unwrap();
        assert_eq!(format!("{url:?}"), "https://example.com/x");
        assert_eq!(url.url().password(), Some("hunter2"));
    }

    #[test]
    fn url_parts_from_secrets_are_shown_masked() {
        // SAFETY: the variable names are unique to this test.
        unsafe {
            std::env::set_var("POLLHOOK_TEST_APPID", "SUPERSECRETKEY");
            std::env::set_var("POLLHOOK_TEST_HOST", "api.example");
        }
        let check = |written: &str, sent: &str, shown: &str| {
            let url: HttpUrl = written.parse().unwrap();
            assert_eq!(url.url().as_str(), sent, "{written}");
            assert_eq!(url.shown(), shown, "{written}");
            assert_eq!(format!("{url:?}"), shown, "{written}");
            assert_eq!(url.to_string(), shown, "{written}");
        };
        check(
            "https://api.example/v1?appid=${POLLHOOK_TEST_APPID}&units=metric",
            "https://api.example/v1?appid=SUPERSECRETKEY&units=metric",
            "https://api.example/v1?appid=***&units=metric",
        );
        check(
            "https://api.example/${POLLHOOK_TEST_APPID}/feed",
            "https://api.example/SUPERSECRETKEY/feed",
            "https://api.example/***/feed",
        );
        check(
            "https://${POLLHOOK_TEST_HOST}/x",
            "https://api.example/x",
            "https://***/x",
        );
        check(
            "https://me:${POLLHOOK_TEST_APPID}@api.example/x",
            "https://me:SUPERSECRETKEY@api.example/x",
            "https://api.example/x",
        );
        check(
            "http://api.example",
            "http://api.example/",
            "http://api.example/",
        );
    }

    #[test]
    fn url_errors_never_show_a_password() {
        let cases = [
            (
                "ftp://user:PASSWORD@host/x",
                "invalid URL `ftp://user:***@host/x`: scheme `ftp` is not `http` or `https`",
            ),
            (
                "http://user:PASSWORD@ho st/x",
                "invalid URL `http://user:***@ho st/x`: invalid international domain name",
            ),
            (
                "https://user@host:99999/",
                "invalid URL `https://user@host:99999/`: invalid port number",
            ),
            (
                "https://a:b:c@[::1/",
                "invalid URL `https://a:***@[::1/`: invalid IPv6 address",
            ),
        ];
        for (written, expected) in cases {
            let error = written.parse::<HttpUrl>().unwrap_err();
            assert_eq!(error, expected);
        }
        assert_eq!(redact_written_url("no scheme"), "no scheme");
        assert_eq!(
            redact_written_url("http://h/p?x=a:b@c"),
            "http://h/p?x=a:b@c"
        );
    }
}

/// `auth` as written: the kinds an endpoint may have.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum AuthConfig {
    Basic {
        username: RereadSecret,
        password: RereadSecret,
    },
    Bearer(RereadSecret),
    OAuth2(OAuth2Config),
}

/// `auth` on a target, or an endpoint's `basic` or `bearer`: how requests
/// prove who sends them. Its secrets are read again at every request, so a
/// token file that is rotated just works; they are checked once at load.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AuthConfig")]
pub enum Auth {
    /// `auth = { basic = { username = "me", password = "${file:/etc/pollhook/pw}" } }`
    Basic {
        username: RereadSecret,
        password: RereadSecret,
    },
    /// `auth = { bearer = "${file:/run/secrets/token}" }`
    Bearer(RereadSecret),
}

impl TryFrom<AuthConfig> for Auth {
    type Error = &'static str;

    fn try_from(raw: AuthConfig) -> Result<Auth, &'static str> {
        match raw {
            AuthConfig::Basic { username, password } => Ok(Auth::Basic { username, password }),
            AuthConfig::Bearer(token) => Ok(Auth::Bearer(token)),
            // Deliveries would need the token cache and its retry on 401.
            AuthConfig::OAuth2(_) => {
                Err("`oauth2` is for endpoints: a target takes `basic` or `bearer`")
            }
        }
    }
}

/// `auth` on an endpoint or in `[defaults]`: a fixed secret, or OAuth2.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AuthConfig")]
pub enum EndpointAuth {
    Fixed(Auth),
    OAuth2(Box<OAuth2>),
}

impl TryFrom<AuthConfig> for EndpointAuth {
    type Error = String;

    fn try_from(raw: AuthConfig) -> Result<EndpointAuth, String> {
        match raw {
            AuthConfig::OAuth2(oauth2) => {
                OAuth2::try_from(oauth2).map(|oauth2| EndpointAuth::OAuth2(Box::new(oauth2)))
            }
            fixed => Auth::try_from(fixed)
                .map(EndpointAuth::Fixed)
                .map_err(str::to_string),
        }
    }
}

/// `auth = { oauth2 = { ... } }` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuth2Config {
    token_url: HttpUrl,
    client_id: EnvString,
    client_secret: Option<RereadSecret>,
    refresh_token: Option<RereadSecret>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    params: std::collections::BTreeMap<String, EnvString>,
}

/// The form fields the grants set themselves: `params` may not.
const OAUTH2_FIELDS: [&str; 5] = [
    "grant_type",
    "client_id",
    "client_secret",
    "scope",
    "refresh_token",
];

/// OAuth2 access tokens: the client-credentials grant, or with
/// `refresh_token` the refresh-token grant. Endpoints whose token requests
/// are the same ([`OAuth2::key`]) share their tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuth2 {
    pub token_url: HttpUrl,
    pub client_id: String,
    /// Read again at each token request, as other secrets.
    pub client_secret: Option<RereadSecret>,
    /// The configured one; the token server may rotate it (see the store).
    pub refresh_token: Option<RereadSecret>,
    pub scopes: Vec<String>,
    /// More form fields (`audience`), in name order.
    pub params: Vec<(String, String)>,
}

impl TryFrom<OAuth2Config> for OAuth2 {
    type Error = String;

    fn try_from(raw: OAuth2Config) -> Result<OAuth2, String> {
        if raw.client_secret.is_none() && raw.refresh_token.is_none() {
            return Err("`oauth2` needs `client_secret` (the client-credentials grant) or `refresh_token` (the refresh-token grant)".into());
        }
        if raw.client_id.value.trim().is_empty() {
            return Err("`oauth2.client_id` is empty".into());
        }
        if let Some(name) = raw
            .params
            .keys()
            .find(|name| OAUTH2_FIELDS.contains(&name.as_str()))
        {
            return Err(format!(
                "`oauth2.params` may not set `{name}`: the grant sets it (scopes go in `scopes`)"
            ));
        }
        Ok(OAuth2 {
            token_url: raw.token_url,
            client_id: raw.client_id.value,
            client_secret: raw.client_secret,
            refresh_token: raw.refresh_token,
            scopes: raw.scopes,
            params: raw
                .params
                .into_iter()
                .map(|(name, value)| (name, value.value))
                .collect(),
        })
    }
}

impl OAuth2 {
    /// What makes two endpoints' token requests the same, hashed: they
    /// share a token, and a rotated refresh token is stored under it.
    pub fn key(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        field(self.token_url.url().as_str().as_bytes());
        field(self.client_id.as_bytes());
        field(match self.refresh_token {
            Some(_) => b"refresh_token",
            None => b"client_credentials",
        });
        for scope in &self.scopes {
            field(b"scope");
            field(scope.as_bytes());
        }
        for (name, value) in &self.params {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        hasher.finalize().into()
    }
}

impl fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2")
            .field("token_url", &self.token_url)
            .field("client_id", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auth::Basic { .. } => "Auth::Basic(<redacted>)",
            Auth::Bearer(_) => "Auth::Bearer(<redacted>)",
        })
    }
}

impl Auth {
    /// The `Authorization` header, marked sensitive; an error names the
    /// secret that cannot be read, never its value.
    pub fn header(&self) -> Result<reqwest::header::HeaderValue, String> {
        let value = match self {
            Auth::Basic { username, password } => {
                let pair = format!("{}:{}", username.read()?, password.read()?);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            Auth::Bearer(token) => format!("Bearer {}", token.read()?.trim()),
        };
        let mut header = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
            "the `auth` secret holds a character headers cannot carry (a newline or another control character)".to_string()
        })?;
        header.set_sensitive(true);
        Ok(header)
    }
}

/// A config string with `${...}` that is expanded at each use, not once:
/// it was expanded at load only to report a mistake there.
#[derive(Clone, PartialEq, Eq)]
pub struct RereadSecret {
    written: String,
}

impl RereadSecret {
    pub fn read(&self) -> Result<String, String> {
        expand_env(&self.written)
    }
}

impl FromStr for RereadSecret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        expand(text)?;
        Ok(RereadSecret {
            written: text.to_string(),
        })
    }
}

deserialize_from_str!(RereadSecret);
