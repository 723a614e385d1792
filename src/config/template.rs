//! Request templates: `url`, `query`, `headers` and `body` may hold
//! minijinja expressions, rendered at every poll with `now`,
//! `last_success` and `state.cursor`.
//!
//! `${...}` is still expanded when the config is read, but its value never
//! becomes template source (a secret holding `{{` must not run): each
//! `${...}` is replaced by a variable only this module names, whose value
//! is the secret. A text without `{{`, `{%` or `{#` is not a template and
//! costs nothing at poll time.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use minijinja::value::Value as TemplateValue;
use serde_json::Value;

use super::values::{self, EnvString, HttpUrl};

/// The variables a request template may use (and their parts).
const VARIABLES: &[&str] = &["now", "last_success", "state", "state.cursor"];
/// The prefix of the variables that stand for `${...}` parts.
const SECRET: &str = "pollhook_secret_";
/// What a template's name is inside its environment.
const NAME: &str = "request";

/// What one poll's templates see.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub now_ms: u64,
    /// The time of the last successful poll, if there was one.
    pub last_success_ms: Option<u64>,
    /// An incremental endpoint's cursor, if it has one.
    pub cursor: Option<&'a Value>,
}

/// A config string that may be a template; see the module's comment.
#[derive(Clone)]
pub struct Text(Kind);

#[derive(Clone)]
enum Kind {
    Static(EnvString),
    Template(Box<Compiled>),
}

#[derive(Clone)]
struct Compiled {
    /// Holds the one template, its filters and its secrets (as globals).
    environment: minijinja::Environment<'static>,
    /// The source as written, each `${...}` as `***`: shown, and hashed
    /// into the endpoint's definition.
    shown: String,
}

/// Whether a rendered value is written as it is, or percent-encoded (in a
/// URL, so that a cursor such as `a&b=c` stays one value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    None,
    Url,
}

impl Text {
    /// Reads `written`: `${...}` expanded, minijinja syntax compiled. A
    /// syntax error or a variable other than `now`, `last_success` and
    /// `state.cursor` is an error.
    pub fn compile(written: &str, escape: Escape) -> Result<Text, String> {
        if !is_template(written) {
            return written.parse().map(|text| Text(Kind::Static(text)));
        }
        let parts = values::expand_parts(written)?;
        let mut source = String::with_capacity(written.len());
        let mut shown = String::with_capacity(written.len());
        let mut secrets = Vec::new();
        for part in parts {
            match part {
                values::Part::Literal(text) => {
                    source.push_str(&text);
                    shown.push_str(&text);
                }
                values::Part::Secret(value) => {
                    source.push_str(&format!("{{{{ {SECRET}{} }}}}", secrets.len()));
                    shown.push_str("***");
                    secrets.push(value);
                }
            }
        }
        let mut environment = environment(escape);
        for (index, secret) in secrets.into_iter().enumerate() {
            // Written as the user wrote it, never escaped: as before templates.
            environment.add_global(
                format!("{SECRET}{index}"),
                TemplateValue::from_safe_string(secret),
            );
        }
        environment
            .add_template_owned(NAME, source)
            .map_err(|error| format!("invalid template: {}", template_error(&error)))?;
        let template = environment.get_template(NAME).expect("added above");
        let mut unknown: Vec<String> = template
            .undeclared_variables(true)
            .into_iter()
            .filter(|name| {
                let root = name.split('.').next().unwrap_or_default();
                !VARIABLES.contains(&name.as_str())
                    && !root.starts_with(SECRET)
                    && environment.globals().all(|(global, _)| global != root)
            })
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(format!(
                "invalid template: unknown variable `{}`; a request template knows `now`, `last_success` and `state.cursor`",
                unknown.join("`, `")
            ));
        }
        Ok(Text(Kind::Template(Box::new(Compiled {
            environment,
            shown,
        }))))
    }

    pub fn is_template(&self) -> bool {
        matches!(self.0, Kind::Template(_))
    }

    /// The text for this poll. A static text is borrowed.
    pub fn render(&self, vars: &Vars<'_>) -> Result<Cow<'_, str>, String> {
        let compiled = match &self.0 {
            Kind::Static(text) => return Ok(Cow::Borrowed(&text.value)),
            Kind::Template(compiled) => compiled,
        };
        let context = minijinja::context! {
            now => crate::clock::rfc3339(vars.now_ms),
            last_success => vars.last_success_ms.map(crate::clock::rfc3339),
            state => minijinja::context! {
                cursor => vars.cursor.map(crate::deliver::format::template_value),
            },
        };
        compiled
            .environment
            .get_template(NAME)
            .and_then(|template| template.render(context))
            .map(Cow::Owned)
            .map_err(|error| format!("cannot render the template: {}", template_error(&error)))
    }

    /// What the definition hash takes: the value of a static text (as
    /// before templates, so that its hash stays), a template's source.
    pub fn definition(&self) -> &str {
        match &self.0 {
            Kind::Static(text) => &text.value,
            Kind::Template(compiled) => &compiled.shown,
        }
    }

    /// The source as it may be shown: each `${...}` as `***`.
    pub fn shown(&self) -> Option<&str> {
        match &self.0 {
            Kind::Static(_) => None,
            Kind::Template(compiled) => Some(&compiled.shown),
        }
    }
}

/// `url`: a URL as every other, or a template whose rendering for a first
/// poll must be one. That rendering is the endpoint's origin: its host's
/// gate, and where its headers may go (a rendering elsewhere fails the poll).
#[derive(Debug, Clone)]
pub struct UrlText {
    pub url: HttpUrl,
    pub template: Option<Text>,
}

impl FromStr for UrlText {
    type Err = String;

    fn from_str(written: &str) -> Result<UrlText, String> {
        if !is_template(written) {
            return written.parse().map(|url| UrlText {
                url,
                template: None,
            });
        }
        let template = Text::compile(written, Escape::Url)?;
        let first = Vars {
            now_ms: crate::clock::now_ms(),
            last_success_ms: None,
            cursor: None,
        };
        let rendered = template
            .render(&first)
            .map_err(|error| format!("{error}, as for a first poll"))?;
        let url = HttpUrl::rendered(&rendered, template.definition())?;
        Ok(UrlText {
            url,
            template: Some(template),
        })
    }
}

/// Whether `written` holds minijinja syntax.
pub(super) fn is_template(written: &str) -> bool {
    ["{{", "{%", "{#"].iter().any(|open| written.contains(open))
}

impl FromStr for Text {
    type Err = String;

    fn from_str(written: &str) -> Result<Text, String> {
        Text::compile(written, Escape::None)
    }
}

macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(Text, UrlText);

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Static(text) => write!(f, "Text({text:?})"),
            Kind::Template(compiled) => write!(f, "Template({:?})", compiled.shown),
        }
    }
}

/// minijinja with the `format` filter for times, undefined values as
/// errors, none written as nothing (`last_success` before the first
/// success), and in a URL every value percent-encoded unless marked `safe`.
fn environment(escape: Escape) -> minijinja::Environment<'static> {
    let mut environment = minijinja::Environment::new();
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    environment.add_filter("format", format_time);
    environment.set_formatter(move |out, state, value| {
        if value.is_none() {
            return Ok(());
        }
        if escape == Escape::None || value.is_safe() {
            return minijinja::escape_formatter(out, state, value);
        }
        let text = value.to_string();
        let encoded = url::form_urlencoded::byte_serialize(text.as_bytes())
            // `byte_serialize` writes a space as `+`, which only a query reads so.
            .map(|chunk| if chunk == "+" { "%20" } else { chunk })
            .collect::<String>();
        out.write_str(&encoded).map_err(minijinja::Error::from)
    });
    environment
}

/// `{{ now | format("%Y-%m-%d") }}`: an RFC 3339 time (or Unix seconds)
/// written with a strftime format, in UTC. None (`last_success` before the
/// first success) is written as nothing.
fn format_time(value: TemplateValue, format: &str) -> Result<String, minijinja::Error> {
    use chrono::format::{Item, StrftimeItems};
    let invalid =
        |detail: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, detail);
    if value.is_none() || value.is_undefined() {
        return Ok(String::new());
    }
    let time = match (value.as_str(), i64::try_from(value.clone())) {
        (Some(text), _) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|time| time.to_utc())
            .map_err(|_| invalid(format!("`format` takes a time, not `{text}`")))?,
        (None, Ok(seconds)) => chrono::DateTime::from_timestamp(seconds, 0)
            .ok_or_else(|| invalid(format!("`format`: {seconds} is out of range")))?,
        (None, Err(_)) => return Err(invalid(format!("`format` takes a time, not `{value}`"))),
    };
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.contains(&Item::Error) {
        return Err(invalid(format!("`format`: invalid time format `{format}`")));
    }
    let mut text = String::new();
    fmt::write(
        &mut text,
        format_args!("{}", time.format_with_items(items.into_iter())),
    )
    .map_err(|_| invalid(format!("`format`: cannot write `{format}`")))?;
    Ok(text)
}

/// `syntax error: unexpected end of input`, without minijinja's name for
/// the template.
fn template_error(error: &minijinja::Error) -> String {
    let mut text = error.kind().to_string();
    if let Some(detail) = error.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(cursor: Option<&Value>) -> Vars<'_> {
        Vars {
            // 2025-03-04T05:06:07Z
            now_ms: 1_741_064_767_000,
            last_success_ms: None,
            cursor,
        }
    }

    #[test]
    fn renders_the_variables() {
        let cursor = json!(42);
        let check = |written: &str, escape, expected: &str| {
            let text = Text::compile(written, escape).unwrap();
            assert_eq!(
                text.render(&vars(Some(&cursor))).unwrap(),
                expected,
                "{written}"
            );
        };
        check("plain", Escape::None, "plain");
        check(
            "{{ now | format(\"%Y-%m-%d\") }}",
            Escape::None,
            "2025-03-04",
        );
        check("{{ now }}", Escape::None, "2025-03-04T05:06:07.000Z");
        check("[{{ last_success | format(\"%F\") }}]", Escape::None, "[]");
        check("since={{ last_success }}", Escape::Url, "since=");
        check("{{ last_success or 'never' }}", Escape::None, "never");
        check("since={{ state.cursor }}", Escape::Url, "since=42");
        check("{{ state.cursor + 1 }}", Escape::None, "43");
        let odd = json!("a&b=c d/é");
        let url = Text::compile("q={{ state.cursor }}", Escape::Url).unwrap();
        assert_eq!(
            url.render(&vars(Some(&odd))).unwrap(),
            "q=a%26b%3Dc%20d%2F%C3%A9"
        );
        let safe = Text::compile("q={{ state.cursor | safe }}", Escape::Url).unwrap();
        assert_eq!(safe.render(&vars(Some(&odd))).unwrap(), "q=a&b=c d/é");
    }

    #[test]
    fn a_secret_is_a_value_never_template_source() {
        // SAFETY: tests that set this variable use a name of their own.
        unsafe { std::env::set_var("POLLHOOK_TEMPLATE_TEST_SECRET", "{{ now }}") };
        let text = Text::compile(
            "k=${POLLHOOK_TEMPLATE_TEST_SECRET}&d={{ now | format('%Y') }}",
            Escape::Url,
        )
        .unwrap();
        assert_eq!(text.render(&vars(None)).unwrap(), "k={{ now }}&d=2025");
        assert_eq!(text.shown(), Some("k=***&d={{ now | format('%Y') }}"));
        assert!(!format!("{text:?}").contains("{{ now }}&"));
    }

    #[test]
    fn mistakes_are_found_when_compiled() {
        let error = |written: &str| Text::compile(written, Escape::None).unwrap_err();
        assert!(error("{{ now ").starts_with("invalid template: syntax error"));
        assert!(error("{{ nwo }}").contains("unknown variable `nwo`"));
        assert!(error("{{ state.cursr }}").contains("unknown variable `state.cursr`"));
        assert!(Text::compile("{{ range(3) | join(',') }}", Escape::None).is_ok());
        let bad_format = Text::compile("{{ now | format('%Q') }}", Escape::None).unwrap();
        assert!(bad_format.render(&vars(None)).is_err());
        let not_a_time = Text::compile("{{ 'x' | format('%Y') }}", Escape::None).unwrap();
        assert!(not_a_time.render(&vars(None)).is_err());
    }
}
