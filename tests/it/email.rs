//! Email targets against a real SMTP server: aiosmtpd (PyPI), started here
//! on 127.0.0.1 with `tests/support/smtp_sink.py`, which stores each
//! message it accepts as JSON.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{Api, Daemon, FAST_RETRY, Reply, config, eventually};

/// A running SMTP sink and where it stores what it accepts.
struct SmtpSink {
    port: u16,
    dir: PathBuf,
    _child: Child,
}

impl SmtpSink {
    /// Starts the sink on `port` (0: a free one), with a required login
    /// `user:password` when given. A machine without aiosmtpd fails here,
    /// saying what to install.
    async fn start(dir: &Path, port: u16, login: Option<&str>) -> SmtpSink {
        let login = login.map(|login| ("POLLHOOK_SMTP_LOGIN", login.to_string()));
        SmtpSink::start_with(dir, port, login.as_slice()).await
    }

    /// Starts the sink with `env` (see `smtp_sink.py` for what it reads).
    async fn start_with(dir: &Path, port: u16, env: &[(&str, String)]) -> SmtpSink {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
        let mut command = Command::new("python3");
        command
            .arg(script)
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command.envs(env.iter().map(|(name, value)| (name, value)));
        let missing = "the email tests need python3 and aiosmtpd: run `scripts/test`, or `pip install aiosmtpd`";
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{missing} (cannot run python3: {error})"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .await
            .unwrap();
        let Ok(port) = line.trim().parse() else {
            let mut stderr = String::new();
            let _ = child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .await;
            panic!("{missing}; the SMTP sink said:\n{stderr}");
        };
        SmtpSink {
            port,
            dir: dir.to_path_buf(),
            _child: child,
        }
    }

    /// Every message accepted so far, oldest first.
    fn messages(&self) -> Vec<serde_json::Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "json")
            })
            .collect();
        names.sort();
        names
            .iter()
            .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
            .collect()
    }

    /// The `Message-ID` of each message it refused.
    fn refused(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("refused.log"))
            .map(|log| log.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn refuse(&self, refuse: bool) {
        let flag = self.dir.join("refuse");
        match refuse {
            true => std::fs::write(flag, "").unwrap(),
            false => std::fs::remove_file(flag).unwrap(),
        }
    }
}

fn email_target(port: u16, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"ops\"\nurl = \"smtp://127.0.0.1:{port}\"\n\
         from = \"pollhook <pollhook@example.com>\"\n\
         to = [\"ops@example.com\", \"Oncall <oncall@example.com>\"]\n\
         retry = {FAST_RETRY}\n{extra}\n"
    )
}

/// The status page as text, polled every 100 ms.
fn text_endpoint(api: &Api) -> String {
    format!(
        "[[endpoint]]\nname = \"status\"\nurl = \"{}\"\nevery = \"100ms\"\nformat = \"text\"\n",
        api.url()
    )
}

fn text(body: &str) -> Reply {
    Reply {
        content_type: "text/plain",
        ..Reply::json(body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_arrives_as_an_email_with_the_summary_and_the_diff() {
    let dir = tempfile::tempdir().unwrap();
    let mail = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(mail.path(), 0, Some("pollhook:hunter2")).await;
    let api = Api::start(text("all good\n")).await;
    let target = email_target(
        sink.port,
        "auth = { basic = { username = \"pollhook\", password = \"hunter2\" } }",
    );
    let daemon = Daemon::start(config(
        dir.path(),
        &format!("{target}{}", text_endpoint(&api)),
    ));
    api.wait_for_requests(1).await;
    api.set(text("degraded\n"));
    eventually("the email arrives", || !sink.messages().is_empty()).await;
    daemon.stop().await;

    let message = &sink.messages()[0];
    assert_eq!(message["login"], "pollhook");
    assert_eq!(message["from"], "pollhook@example.com");
    assert_eq!(
        message["to"],
        serde_json::json!(["ops@example.com", "oncall@example.com"])
    );
    assert_eq!(message["from_header"], "pollhook <pollhook@example.com>");
    assert_eq!(
        message["subject"],
        "status: text changed (+1 \u{2212}1 lines)"
    );
    assert_eq!(message["content_type"], "text/plain");
    let body = message["body"].as_str().unwrap();
    assert!(
        body.starts_with("status: text changed (+1 \u{2212}1 lines)\n\n"),
        "{body}"
    );
    assert!(body.contains("-all good\n+degraded\n"), "{body}");
    let id = message["message_id"].as_str().unwrap();
    assert!(
        id.starts_with("<msg_") && id.ends_with("@pollhook>"),
        "{id}"
    );
}

/// A refusal is a failed attempt, retried; a server that is down and comes
/// back gets everything, with the ids it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_undelivered_mail_is_retried_until_the_server_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mail = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(mail.path(), 0, None).await;
    sink.refuse(true);
    let api = Api::start(text("v1\n")).await;
    let target = email_target(
        sink.port,
        "subject = \"[{{ data.endpoint }}] {{ summary }}\"\nformat = \"template\"\n\
         template = \"version {{ data.version }}\"",
    );
    let daemon = Daemon::start(config(
        dir.path(),
        &format!("{target}{}", text_endpoint(&api)),
    ));
    api.wait_for_requests(1).await;
    api.set(text("v2\n"));
    eventually("the server refuses twice", || sink.refused().len() >= 2).await;
    assert!(sink.messages().is_empty());
    sink.refuse(false);
    eventually("the refused message arrives", || sink.messages().len() == 1).await;
    let refused = sink.refused();
    // Every attempt is the same message.
    assert!(
        refused
            .iter()
            .all(|id| *id == sink.messages()[0]["message_id"]),
        "{refused:?}"
    );
    assert_eq!(
        sink.messages()[0]["subject"],
        "[status] status: text changed (+1 \u{2212}1 lines)"
    );

    // Down: the next changes wait in the outbox.
    let port = sink.port;
    drop(sink);
    api.set(text("v3\n"));
    api.wait_for_requests(2).await;
    api.set(text("v4\n"));
    api.wait_for_requests(2).await;
    let sink = SmtpSink::start(mail.path(), port, None).await;
    let bodies_by_id = || {
        sink.messages()
            .iter()
            .map(|m| (m["message_id"].to_string(), m["body"].to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    eventually("both waiting messages arrive", || bodies_by_id().len() == 3).await;
    daemon.stop().await;
    // In parallel: the two that waited may come in either order. A message
    // the first server stored as it went down, before its answer reached
    // pollhook, comes again with its id (at least once).
    let mut bodies: Vec<String> = bodies_by_id().into_values().collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [r#""version 2\n""#, r#""version 3\n""#, r#""version 4\n""#]
    );
}

/// STARTTLS (which the server requires) and smtps, to a server behind a
/// private CA: refused until the target trusts the CA through `ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_smtps_reach_a_server_behind_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let [_, cert, key] = crate::support::TestCa::new().write(certs.path(), "mail");
    for (mode, scheme) in [("starttls", "smtp"), ("implicit", "smtps")] {
        let mail = tempfile::tempdir().unwrap();
        let env = [
            (
                "POLLHOOK_SMTP_TLS",
                format!("{}:{}", cert.display(), key.display()),
            ),
            ("POLLHOOK_SMTP_TLS_MODE", mode.to_string()),
        ];
        let sink = SmtpSink::start_with(mail.path(), 0, &env).await;
        let test = |name: &str, extra: &str| {
            let target = email_target(sink.port, extra).replace("smtp://", &format!("{scheme}://"));
            let config = certs.path().join(format!("{mode}-{name}.toml"));
            let endpoint =
                "[[endpoint]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/\"\nevery = \"1m\"\n";
            std::fs::write(&config, format!("{target}{endpoint}")).unwrap();
            async move {
                let output =
                    crate::cli::run(&["test", "ops", "-c", config.to_str().unwrap()]).await;
                let printed = crate::cli::text(&output.stdout) + &crate::cli::text(&output.stderr);
                (output.status.success(), printed)
            }
        };
        let (ok, printed) = test("untrusted", "").await;
        assert!(!ok, "{mode}: an unknown CA is refused: {printed}");
        assert!(sink.messages().is_empty(), "{mode}");
        let (ok, printed) = test("trusted", "ca_file = \"ca.pem\"").await;
        assert!(ok, "{mode}: {printed}");
        let messages = sink.messages();
        assert_eq!(messages.len(), 1, "{mode}: {messages:?}");
        assert_eq!(messages[0]["tls"], true, "{mode}");
    }
}
