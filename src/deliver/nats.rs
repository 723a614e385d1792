//! NATS JetStream targets (async-nats, rustls): one connection per target,
//! made at the first attempt and kept (the client reconnects on its own).
//!
//! Each event is published on its `subject` with `Nats-Msg-Id` = its
//! `webhook-id`, so JetStream's duplicate window keeps one copy of an event
//! that a retry, a restart or a crash between the PubAck and the outbox
//! publishes again. The PubAck is the acknowledgement: a row leaves the
//! outbox only after it. Before the first publish of a connection the
//! target's stream is looked up: a missing one fails every attempt with an
//! error naming it (or is created with `create_stream = true`).

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Attempt, format, subject};
use crate::config::{Auth, NatsTarget, Target};
use crate::store::OutboxRow;

/// A target's connection; clones share it.
#[derive(Clone)]
pub struct Connection {
    nats: NatsTarget,
    /// Set once connected and the stream is found; cleared when the stream
    /// goes missing, so that the next attempt looks for it again.
    ready: std::sync::Arc<Mutex<Option<jetstream::Context>>>,
}

/// The options every connection of pollhook's makes: a name the server
/// shows, `auth` or a `.creds` file, TLS with `ca_file`.
pub async fn connect(
    url: &url::Url,
    name: String,
    auth: Option<&Auth>,
    creds: Option<&std::path::Path>,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .require_tls(url.scheme() == "tls");
    match auth {
        Some(Auth::Basic { username, password }) => {
            options = options.user_and_password(username.read()?, password.read()?);
        }
        Some(Auth::Bearer(token)) => options = options.token(token.read()?),
        None => {}
    }
    if let Some(creds) = creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|error| format!("cannot read `creds` `{}`: {error}", creds.display()))?;
    }
    if let Some(ca_file) = ca_file {
        options = options.add_root_certificates(ca_file.to_path_buf());
    }
    // The URL as given, for its user-info; errors never quote it.
    let connecting = options.connect(url.as_str());
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(format!("cannot connect to the NATS server: {error}")),
        Err(_) => Err(format!(
            "cannot connect to the NATS server: no answer after {}",
            humantime::format_duration(timeout)
        )),
    }
}

impl Connection {
    pub fn open(nats: &NatsTarget) -> Connection {
        Connection {
            nats: nats.clone(),
            ready: Default::default(),
        }
    }

    /// Publishes a row's event and waits for its PubAck, for at most the
    /// target's `timeout`.
    pub async fn attempt(&self, target: &Target, row: &OutboxRow) -> Attempt {
        let started = Instant::now();
        let mut attempt = Attempt::starting();
        let message =
            subject::subject(&self.nats.subject, &row.body, &row.event_id).and_then(|subject| {
                let payload = match &target.format {
                    format::TargetFormat::Standard => row.body.as_bytes().to_vec(),
                    other => format::render(other, &row.body)?.body,
                };
                Ok((subject, payload))
            });
        match message {
            Err(error) => {
                attempt.error = Some(format!("cannot publish the event: {error}"));
                attempt.unsendable = true;
            }
            Ok((subject, payload)) => {
                let published = tokio::time::timeout(
                    target.timeout,
                    self.publish(target, subject, row, payload.into()),
                )
                .await;
                match published {
                    Ok(Ok(ack)) => {
                        attempt.acknowledged = true;
                        attempt.response = format!(
                            "PubAck: stream {}, sequence {}{}",
                            ack.stream,
                            ack.sequence,
                            if ack.duplicate { ", a duplicate" } else { "" }
                        );
                    }
                    Ok(Err(error)) => attempt.error = Some(error),
                    Err(_) => {
                        attempt.error = Some(format!(
                            "no PubAck after {}",
                            humantime::format_duration(target.timeout)
                        ));
                    }
                }
            }
        }
        attempt.duration = started.elapsed();
        attempt
    }

    async fn publish(
        &self,
        target: &Target,
        subject: String,
        row: &OutboxRow,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, String> {
        let context = self.ready(target).await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, row.event_id.as_str());
        headers.insert("webhook-id", row.event_id.as_str());
        headers.insert("Content-Type", "application/json");
        let sent = context
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|error| format!("cannot publish on `{subject}`: {error}"))?;
        match sent.await {
            Ok(ack) => Ok(ack),
            Err(error) => {
                if matches!(
                    error.kind(),
                    jetstream::context::PublishErrorKind::StreamNotFound
                ) {
                    *self.ready.lock().await = None;
                    return Err(format!(
                        "no stream takes subject `{subject}`: stream `{}` is missing or does not take it",
                        self.nats.stream
                    ));
                }
                Err(format!("no PubAck for `{subject}`: {error}"))
            }
        }
    }

    /// The JetStream context, connected and with the stream found (or made).
    async fn ready(&self, target: &Target) -> Result<jetstream::Context, String> {
        let mut ready = self.ready.lock().await;
        if let Some(context) = &*ready {
            return Ok(context.clone());
        }
        let client = connect(
            target.url.url(),
            format!("pollhook-{}", target.name),
            target.auth.as_ref(),
            self.nats.creds.as_deref(),
            self.nats.ca_file.as_deref(),
            target.timeout,
        )
        .await?;
        let context = jetstream::new(client);
        let stream = &self.nats.stream;
        match context.get_stream(stream).await {
            Ok(_) => {}
            Err(_) if self.nats.create_stream => {
                let subjects = subject::stream_subjects(&self.nats.subject);
                context
                    .create_stream(jetstream::stream::Config {
                        name: stream.clone(),
                        subjects: vec![subjects.clone()],
                        ..Default::default()
                    })
                    .await
                    .map_err(|error| {
                        format!("cannot create stream `{stream}` on `{subjects}`: {error}")
                    })?;
                tracing::info!(stream = %stream, subjects = %subjects, "stream created");
            }
            Err(error) => {
                return Err(format!(
                    "stream `{stream}` is not on the NATS server ({error}): create it (`nats stream add {stream} --subjects '{}'`) or set `create_stream = true`",
                    subject::stream_subjects(&self.nats.subject)
                ));
            }
        }
        *ready = Some(context.clone());
        Ok(context)
    }
}
