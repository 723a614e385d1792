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
        HttpUrl::parse_with_schemes(text, &["http", "https"])
    }
}

impl HttpUrl {
    /// Parses `text` after expansion, as a URL of one of `schemes`.
    fn parse_with_schemes(text: &str, schemes: &[&str]) -> Result<HttpUrl, String> {
        let expanded = expand(text)?;
        // The expanded text may hold a token: quote only what the user
        // wrote, and not even its password.
        let written = redact_written_url(text);
        let value = match expanded.unresolved {
            // Never requested: only commands that poll nothing allow it.
            true => format!("http://{UNRESOLVED}.invalid/"),
            false => expanded.value,
        };
        let url =
            url::Url::parse(&value).map_err(|err| format!("invalid URL `{written}`: {err}"))?;
        if !schemes.contains(&url.scheme()) {
            let names: Vec<String> = schemes.iter().map(|scheme| format!("`{scheme}`")).collect();
            let (last, others) = names.split_last().expect("at least one scheme");
            return Err(format!(
                "invalid URL `{written}`: scheme `{}` is not {} or {last}",
                url.scheme(),
                others.join(", ")
            ));
        }
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
}

/// Where a target's events go: an `http`/`https` URL for webhooks, or
/// `smtp` (STARTTLS) / `smtps` (TLS) for email; shown as [`HttpUrl`] is.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TargetUrl(HttpUrl);

/// The schemes a target's `url` may have.
const TARGET_SCHEMES: [&str; 4] = ["http", "https", "smtp", "smtps"];

impl TargetUrl {
    /// The URL events go to, secrets included: never show it.
    pub fn url(&self) -> &url::Url {
        self.0.url()
    }

    /// The URL as it may be shown.
    pub fn shown(&self) -> &str {
        self.0.shown()
    }

    /// Whether events go by email (`smtp://`, `smtps://`).
    pub fn is_email(&self) -> bool {
        matches!(self.url().scheme(), "smtp" | "smtps")
    }
}

impl FromStr for TargetUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        HttpUrl::parse_with_schemes(text, &TARGET_SCHEMES).map(TargetUrl)
    }
}

impl fmt::Debug for TargetUrl {
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
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        let before = &rest[..start];
        expanded.value.push_str(before);
        expanded.masked.push_str(before);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            expanded.value.push_str("${");
            expanded.masked.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            // Not quoted: the text around it may be a secret written inline.
            let end = tail
                .find('}')
                .ok_or("unclosed `${` (write `$${` for a literal `${`)")?;
            let value = expand_or_note(&tail[..end], &mut expanded.unresolved)?;
            expanded.value.push_str(&value);
            expanded.masked.push_str("***");
            expanded.secret = true;
            rest = &tail[end + 1..];
        } else {
            expanded.value.push('$');
            expanded.masked.push('$');
            rest = &after[1..];
        }
    }
    expanded.value.push_str(rest);
    expanded.masked.push_str(rest);
    Ok(expanded)
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

/// `auth` on an endpoint, in `[defaults]` or on a target: how requests
/// prove who sends them. Its secrets are read again at every request, so a
/// token file that is rotated just works; they are checked once at load.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    /// `auth = { basic = { username = "me", password = "${file:/etc/pollhook/pw}" } }`
    Basic {
        username: RereadSecret,
        password: RereadSecret,
    },
    /// `auth = { bearer = "${file:/run/secrets/token}" }`
    Bearer(RereadSecret),
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
