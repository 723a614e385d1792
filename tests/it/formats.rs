//! Target formats as a real receiver gets them, and secrets read from files
//! and systemd credentials, through the real binary.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use pollhook::store::Store;

use crate::cli::{binary, text};
use crate::support::{Api, Daemon, FAST_RETRY, Receiver, Reply, SECRET, Webhook, eventually};

fn header<'a>(hook: &'a Webhook, name: &str) -> Option<&'a str> {
    hook.headers.get(name).map(|value| value.to_str().unwrap())
}

fn target(name: &str, receiver: &Receiver, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry = {FAST_RETRY}\n{extra}\n",
        receiver.url()
    )
}

/// One change, five targets, five formats: each receiver gets exactly the
/// body and headers its service expects, signed over those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_format_reaches_its_receiver_as_that_service_expects() {
    let state = tempfile::tempdir().unwrap();
    let template_file = state.path().join("hook.j2");
    std::fs::write(
        &template_file,
        "{{ type }} v{{ data.version }} of {{ data.endpoint }}\n{% for op in data.patch %}{{ op.op }} {{ op.path }} = {{ op.value }}\n{% endfor %}",
    )
    .unwrap();
    let api = Api::start(Reply::json(r#"{"a":1,"name":"rust_releases"}"#)).await;
    let slack = Receiver::start().await;
    let discord = Receiver::start().await;
    let ntfy = Receiver::start().await;
    let inline = Receiver::start().await;
    let from_file = Receiver::start().await;
    let config = crate::support::config(
        state.path(),
        &format!(
            "{}{}{}{}{}[[endpoint]]\nname = \"prices\"\nurl = \"{}\"\nevery = \"100ms\"\n",
            target("slack", &slack, "format = \"slack\""),
            target("discord", &discord, "format = \"discord\""),
            target("ntfy", &ntfy, "format = \"ntfy\""),
            target(
                "inline",
                &inline,
                r#"format = "template"
template = '{"text": {{ summary | tojson }}, "kind": "{{ type }}", "id": {{ event.data.version }}}'"#
            ),
            target(
                "from-file",
                &from_file,
                &format!(
                    "format = \"template\"\ntemplate_file = \"{}\"",
                    template_file.display()
                )
            ),
            api.url()
        ),
    );
    let daemon = Daemon::start(config);
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"a":2,"name":"rust_releases"}"#));
    let receivers = [&slack, &discord, &ntfy, &inline, &from_file];
    eventually("every receiver has the change", || {
        receivers
            .iter()
            .all(|receiver| !receiver.accepted().is_empty())
    })
    .await;
    api.wait_for_requests(3).await;
    daemon.stop().await;

    for receiver in receivers {
        let hooks = receiver.accepted();
        assert_eq!(hooks.len(), 1, "{hooks:#?}");
        assert!(
            hooks[0].signature_verifies(SECRET),
            "the signature covers the bytes sent: {hooks:#?}"
        );
        assert!(hooks[0].id.starts_with("msg_"));
    }
    // The same event, under the same id, for every target.
    assert!(
        receivers
            .iter()
            .all(|r| r.accepted()[0].id == slack.accepted()[0].id)
    );

    let hook = &slack.accepted()[0];
    assert_eq!(text(&hook.body), r#"{"text":"prices: /a 1 → 2"}"#);
    assert_eq!(header(hook, "content-type"), Some("application/json"));

    let hook = &discord.accepted()[0];
    assert_eq!(
        text(&hook.body),
        r#"{"allowed_mentions":{"parse":[]},"content":"prices: /a 1 → 2"}"#
    );
    assert_eq!(header(hook, "content-type"), Some("application/json"));

    let hook = &ntfy.accepted()[0];
    assert_eq!(text(&hook.body), "prices: /a 1 → 2");
    assert_eq!(
        header(hook, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(header(hook, "title"), Some("prices changed"));
    assert_eq!(
        header(hook, "tags"),
        Some("arrows_counterclockwise,endpoint.changed")
    );
    assert_eq!(header(hook, "priority"), None);

    let hook = &inline.accepted()[0];
    assert_eq!(
        text(&hook.body),
        r#"{"text": "prices: /a 1 → 2", "kind": "endpoint.changed", "id": 2}"#
    );
    assert_eq!(header(hook, "content-type"), Some("application/json"));

    let hook = &from_file.accepted()[0];
    assert_eq!(
        text(&hook.body),
        "endpoint.changed v2 of prices\nreplace /a = 2\n"
    );
    assert_eq!(
        header(hook, "content-type"),
        Some("text/plain; charset=utf-8")
    );
}

/// A template that fails on an event cannot be fixed by retrying: the row
/// becomes a dead letter at once, with the reason, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_fails_at_send_time_dead_letters_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n{}[[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"1h\"\nemit_initial = true\n",
            dir.path().join("state").display(),
            target(
                "broken",
                &receiver,
                "format = \"template\"\ntemplate = \"{{ data.version / 0 }}\""
            ),
            api.url()
        ),
    )
    .unwrap();
    // `once --send` polls, queues and attempts every due row once.
    let output = crate::cli::run(&["once", "-c", config.to_str().unwrap(), "--send"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));

    assert!(receiver.all().is_empty(), "{:#?}", receiver.all());
    let store = Store::open(&dir.path().join("state")).unwrap();
    assert_eq!(store.outbox_len(), 0);
    let rows = store.dead_rows(Some("broken")).unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[0].1;
    assert_eq!(row.attempts, 1, "not retried: {row:#?}");
    let error = row.last_error.as_deref().unwrap();
    assert!(
        error.starts_with(
            "cannot write the event as `format = \"template\"`: cannot render the template: "
        ),
        "{error}"
    );
    // The envelope is kept as it was, for a replay once the template is fixed.
    let envelope: serde_json::Value = serde_json::from_str(&row.body).unwrap();
    assert_eq!(envelope["type"], "endpoint.changed");
}

async fn check(config: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = binary();
    command
        .env_remove("CREDENTIALS_DIRECTORY")
        .args(["check", "-c", config.to_str().unwrap()]);
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the command finished")
        .unwrap()
}

#[tokio::test]
async fn check_locates_template_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.j2"), "{{ summary }}\n").unwrap();
    std::fs::write(dir.path().join("bad.j2"), "line one\n{% for x in %}\n").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        r#"[[target]]
name = "inline"
url = "http://127.0.0.1:1/hook"
format = "template"
template = "Hello {{ summary"

[[target]]
name = "relative-file"
url = "http://127.0.0.1:1/hook"
format = "template"
template_file = "good.j2"

[[target]]
name = "bad-file"
url = "http://127.0.0.1:1/hook"
format = "template"
template_file = "bad.j2"

[[target]]
name = "missing-file"
url = "http://127.0.0.1:1/hook"
format = "template"
template_file = "missing.j2"

[[target]]
name = "stray"
url = "http://127.0.0.1:1/hook"
format = "slack"
template = "{{ summary }}"

[[target]]
name = "empty"
url = "http://127.0.0.1:1/hook"
format = "template"

[[endpoint]]
name = "e"
url = "http://127.0.0.1:1/"
every = "1m"
"#,
    )
    .unwrap();
    let output = check(&config, &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    let path = config.display().to_string();
    let dir = dir.path().display().to_string();
    let expected = [
        format!(
            "{path}:5:12: target `inline`: invalid `template`: syntax error: unexpected end of input, expected end of variable block (template line 1)"
        ),
        format!(
            "{path}:17:17: target `bad-file`: invalid template in `{dir}/bad.j2`: syntax error: "
        ),
        format!(
            "{path}:23:17: target `missing-file`: cannot read template file `{dir}/missing.j2`: "
        ),
        format!(
            "{path}:29:12: target `stray`: `template` is only used with `format = \"template\"`"
        ),
        format!(
            "{path}:34:10: target `empty`: `format = \"template\"` needs `template` or `template_file`"
        ),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, expected) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
    assert!(lines[1].ends_with("(template line 2)"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// Secrets from a file and a systemd credential are read; a missing one is
/// a config error at its place; no error ever shows a secret.
#[tokio::test]
async fn check_reads_secrets_from_files_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "hunter2-token\n").unwrap();
    std::fs::write(credentials.join("signing"), format!("{SECRET}\n")).unwrap();
    std::fs::write(
        credentials.join("discord-url"),
        "https://discord.example/api/webhooks/1/hunter2-path\n",
    )
    .unwrap();
    let config = dir.path().join("config.toml");
    let write = |text: String| std::fs::write(&config, text).unwrap();
    write(format!(
        r#"[[target]]
name = "discord"
url = "${{credential:discord-url}}"
secret = "${{credential:signing}}"
format = "discord"

[[endpoint]]
name = "api"
url = "https://api.example/v1"
every = "5m"
headers = {{ Authorization = "Bearer ${{file:{}}}" }}
"#,
        token.display()
    ));
    let credentials_env = ("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap());
    let output = check(&config, &[credentials_env]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "config ok: 1 endpoints, 1 targets\n");

    // Without $CREDENTIALS_DIRECTORY: both credentials are reported.
    let output = check(&config, &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    let path = config.display();
    let needs =
        "needs `$CREDENTIALS_DIRECTORY`, which systemd sets for `LoadCredential=`; it is not set";
    assert_eq!(
        stderr,
        format!(
            "{path}:3:7: target `discord`: `${{credential:discord-url}}` {needs}\n\
             {path}:4:10: target `discord`: `${{credential:signing}}` {needs}\n"
        )
    );

    // Missing files, and files whose contents are not valid where they go.
    std::fs::write(credentials.join("bad-secret"), "not base64 hunter2-bad\n").unwrap();
    std::fs::write(credentials.join("bad-url"), "htp//hunter2-url\n").unwrap();
    write(format!(
        r#"[[target]]
name = "bad-url"
url = "${{credential:bad-url}}"

[[target]]
name = "bad-secret"
url = "https://example.com/hook"
secret = "${{credential:bad-secret}}"

[[target]]
name = "other"
url = "https://example.com/${{credential:nope}}"

[[endpoint]]
name = "api"
url = "https://api.example/v1"
every = "5m"
headers = {{ Authorization = "Bearer ${{file:{}/missing-token}}" }}
body = "${{file:{}}}"
"#,
        dir.path().display(),
        token.display()
    ));
    let output = check(&config, &[credentials_env]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    let credentials = credentials.display();
    let dir = dir.path().display();
    let expected = [
        format!("{path}:3:7: target `bad-url`: invalid URL `${{credential:bad-url}}`: "),
        format!(
            "{path}:8:10: target `bad-secret`: invalid webhook secret: expected `whsec_` followed by base64"
        ),
        format!(
            "{path}:12:7: target `other`: cannot read credential `nope` (`{credentials}/nope`): "
        ),
        format!("{path}:18:29: endpoint `api`: cannot read secret file `{dir}/missing-token`: "),
    ];
    for (line, expected) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("hunter2"), "a secret leaked: {stderr}");
}
