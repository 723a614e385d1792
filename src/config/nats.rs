//! A NATS JetStream target's settings: `url = "nats://..."` (or `tls://`),
//! the `subject` template, the `stream` that must take it (or
//! `create_stream`), and how it logs in (`auth`, a `.creds` file). A plain
//! config type: the sender is `deliver::nats`.

use std::path::PathBuf;

use toml::Spanned;

use super::{Auth, Compiler, HttpUrl};

/// The subject of each event when `subject` is not set.
pub const DEFAULT_SUBJECT: &str = "pollhook.events.{{ endpoint }}";
/// The stream that must take the subject when `stream` is not set.
pub const DEFAULT_STREAM: &str = "POLLHOOK";

/// A target with a `nats://` or `tls://` URL, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTarget {
    /// `tls://`: TLS required (rustls, the system's CAs and `ca_file`).
    pub tls: bool,
    /// A minijinja template over the event, as an MQTT `topic`; the
    /// endpoint's name in it is made one subject token.
    pub subject: String,
    /// The JetStream stream that holds the events.
    pub stream: String,
    /// Create the stream (on the subjects the template can give) if it is
    /// missing, instead of failing every attempt naming it.
    pub create_stream: bool,
    /// A `.creds` file (a user JWT and its NKey seed), read at connect.
    pub creds: Option<PathBuf>,
    /// PEM certificates trusted besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// The keys only a NATS target has, as written.
pub(super) struct NatsKeys {
    pub subject: Option<Spanned<String>>,
    pub stream: Option<Spanned<String>>,
    pub create_stream: Option<Spanned<bool>>,
    pub creds: Option<Spanned<PathBuf>>,
}

/// Whether `url` reaches a NATS server.
pub fn is_nats(url: &HttpUrl) -> bool {
    matches!(url.url().scheme(), "nats" | "tls")
}

/// A stream name JetStream accepts: no spaces, dots, wildcards or slashes.
fn check_stream(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("invalid `stream`: use 1 to 255 characters".into());
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(format!(
            "invalid `stream` `{name}`: a stream name has no spaces, `.`, `*`, `>`, `/` or `\\`"
        ));
    }
    Ok(())
}

impl Compiler<'_> {
    /// A NATS target's own keys; `auth` may be `basic` (user and password)
    /// or `bearer` (a token), not with `creds`.
    pub(super) fn compile_nats(
        &mut self,
        url: &HttpUrl,
        keys: NatsKeys,
        auth: Option<&Spanned<Auth>>,
        ca_file: Option<PathBuf>,
        context: &Option<String>,
    ) -> NatsTarget {
        let subject = match keys.subject {
            Some(subject) => {
                if let Err(error) =
                    crate::deliver::subject::check_subject_template(subject.get_ref())
                {
                    self.problem(
                        subject.span().start,
                        context.clone(),
                        format!("invalid `subject`: {error}"),
                    );
                }
                subject.into_inner()
            }
            None => DEFAULT_SUBJECT.to_string(),
        };
        let stream = match keys.stream {
            Some(stream) => {
                if let Err(error) = check_stream(stream.get_ref()) {
                    self.problem(stream.span().start, context.clone(), error);
                }
                stream.into_inner()
            }
            None => DEFAULT_STREAM.to_string(),
        };
        if let (Some(creds), Some(auth)) = (&keys.creds, auth) {
            let start = creds.span().start.max(auth.span().start);
            self.problem(
                start,
                context.clone(),
                "set `creds` or `auth`, not both: a `.creds` file is the login",
            );
        }
        let creds = keys.creds.map(|creds| {
            let start = creds.span().start;
            let path = self.dir.join(creds.get_ref());
            if let Err(error) = std::fs::metadata(&path) {
                self.problem(
                    start,
                    context.clone(),
                    format!("cannot read `creds` `{}`: {error}", path.display()),
                );
            }
            path
        });
        NatsTarget {
            tls: url.url().scheme() == "tls",
            subject,
            stream,
            create_stream: keys.create_stream.is_some_and(|create| *create.get_ref()),
            creds,
            ca_file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_as_jetstream_takes_them() {
        assert!(check_stream("POLLHOOK").is_ok());
        assert!(check_stream("events-2").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b"] {
            assert!(check_stream(bad).is_err(), "{bad:?}");
        }
    }
}
