//! The real binary: `check`, `once`, `run` and `demo`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

use crate::support::{Api, Receiver, Reply, SECRET};

pub(crate) fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pollhook"));
    command
        .env_remove("POLLHOOK_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("STATE_DIRECTORY");
    command.kill_on_drop(true);
    command
}

pub(crate) fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

pub(crate) async fn run(args: &[&str]) -> Output {
    let output = binary().args(args).output();
    tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the command finished")
        .unwrap()
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `pollhook check` on `config`, which must refuse it (exit 78) with
/// each of `expected` in what it says; returns what it said.
pub(crate) async fn check_refuses(
    config: &Path,
    expected: impl IntoIterator<Item = impl AsRef<str>>,
) -> String {
    let output = run(&["check", "-c", config.to_str().unwrap()]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    for expected in expected {
        let expected = expected.as_ref();
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in:\n{stderr}"
        );
    }
    stderr
}

#[tokio::test]
async fn check_accepts_a_good_config() {
    let output = run(&["check", "-c", data("good.toml").to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "config ok: 2 endpoints, 1 targets\n");
}

#[tokio::test]
async fn the_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let output = run(&["check", "-c", example.to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
}

/// One config file per class of mistake: each exits 78 and names file,
/// line, column, endpoint and the mistake.
#[tokio::test]
async fn check_locates_every_class_of_mistake() {
    let cases = [
        (
            "bad-url.toml",
            "bad-url.toml:6:7: endpoint `releases`: invalid URL `htp//api.github.com`",
        ),
        (
            "bad-duration.toml",
            "bad-duration.toml:4:9: endpoint `releases`: invalid duration `10 minutes-ish`",
        ),
        (
            "bad-cron.toml",
            "bad-cron.toml:4:8: endpoint `releases`: invalid cron expression `*/61 * * * *`",
        ),
        (
            "duplicate-name.toml",
            "duplicate-name.toml:9:8: endpoint `releases`: duplicate endpoint name `releases`",
        ),
        (
            "unknown-target.toml",
            "unknown-target.toml:11:18: endpoint `releases`: unknown target `slack`",
        ),
        (
            "every-and-cron.toml",
            "every-and-cron.toml:5:8: endpoint `releases`: set `every` or `cron`, not both",
        ),
        (
            "no-schedule.toml",
            "no-schedule.toml:1:1: endpoint `releases`: no schedule",
        ),
        (
            "unknown-key.toml",
            "unknown-key.toml:7:1: endpoint `releases`: unknown field `ignroe`",
        ),
        (
            "missing-env.toml",
            "missing-env.toml:7:29: endpoint `releases`: environment variable `POLLHOOK_TEST_UNSET_TOKEN` is not set",
        ),
        ("syntax.toml", "syntax.toml:2:12: invalid basic string"),
    ];
    for (file, expected) in cases {
        let output = run(&["check", "-c", data(file).to_str().unwrap()]).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{file}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{file}: expected `{expected}` in:\n{stderr}"
        );
        assert!(output.stdout.is_empty(), "{file}");
    }
}

#[tokio::test]
async fn check_reports_all_mistakes_at_once_without_secrets() {
    let output = run(&["check", "-c", data("many-errors.toml").to_str().unwrap()]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines[0].contains("many-errors.toml:7:10: target `ha`: invalid webhook secret"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("many-errors.toml:11:7: endpoint `one`: invalid URL"),
        "{stderr}"
    );
    assert!(
        lines[2].contains("many-errors.toml:16:11: endpoint `two`: invalid duration `forever`"),
        "{stderr}"
    );
    assert!(
        lines[3].contains("many-errors.toml:21:12: endpoint `three`: unknown target `nowhere`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-base64"),
        "the secret leaked: {stderr}"
    );
}

/// Fifteen mistakes of every kind, in one run: a bad value no longer hides
/// the rest of its table, nor a broken table the checks across tables.
#[tokio::test]
async fn check_reports_fifteen_mistakes_in_one_run() {
    let output = run(&[
        "check",
        "-c",
        data("fifteen-mistakes.toml").to_str().unwrap(),
    ])
    .await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    let places: Vec<&str> = stderr
        .lines()
        .map(|line| {
            let place = line.split_once("fifteen-mistakes.toml:").unwrap().1;
            let mut parts = place.splitn(3, ':');
            let (line, column) = (parts.next().unwrap(), parts.next().unwrap());
            &place[..line.len() + 1 + column.len()]
        })
        .collect();
    assert_eq!(
        places,
        [
            "1:24", "2:18", "6:11", "11:10", "12:10", "18:8", "19:20", "20:10", "24:7", "25:11",
            "27:9", "28:8", "35:1", "36:7", "37:16"
        ],
        "{stderr}"
    );
    for expected in [
        "endpoint `releases`: set `every` or `cron`, not both",
        "endpoint `releases`: unknown target `nowhere`",
        "endpoint `prices`: `match` works on text and `select` on JSON",
        "endpoint `list`: unknown variant `add`",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

/// Nothing to poll is a mistake; a secret without `whsec_` may be one.
#[tokio::test]
async fn check_refuses_an_empty_config_and_warns_of_a_bare_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    for empty in ["", "[defaults]\nevery = \"1m\"\n"] {
        std::fs::write(&path, empty).unwrap();
        let output = run(&["check", "-c", path.to_str().unwrap()]).await;
        assert_eq!(output.status.code(), Some(78));
        assert!(
            text(&output.stderr).contains("c.toml:1:1: no endpoints: there is nothing to poll"),
            "{}",
            text(&output.stderr)
        );
    }
    let bare = SECRET.strip_prefix("whsec_").unwrap();
    std::fs::write(
        &path,
        format!(
            "[[target]]\nname = \"hook\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"{bare}\"\n\
             [[endpoint]]\nname = \"e\"\nurl = \"http://127.0.0.1:1/\"\nevery = \"1m\"\n"
        ),
    )
    .unwrap();
    let output = run(&["check", "-c", path.to_str().unwrap()]).await;
    assert!(output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(
            "c.toml:4:10: target `hook`: warning: the secret does not start with `whsec_`"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains(bare), "{stderr}");
}

#[tokio::test]
async fn a_missing_config_file_is_a_config_error() {
    let output = run(&["check", "-c", "/nonexistent/pollhook.toml"]).await;
    assert_eq!(output.status.code(), Some(78));
    assert!(
        text(&output.stderr).contains(
            "cannot read config file `/nonexistent/pollhook.toml`: No such file or directory"
        ) && text(&output.stderr)
            .contains("\nhint: name the config file with `-c FILE` or `$POLLHOOK_CONFIG`"),
        "{}",
        text(&output.stderr)
    );
}

/// Values `check` once accepted and `run` then crashed on or ran away with:
/// each is refused at its line and column.
#[tokio::test]
async fn check_refuses_numbers_and_durations_out_of_range() {
    const TARGET: &str = "[[target]]\nname = \"hook\"\nurl = \"http://127.0.0.1:1/hook\"\n";
    const ENDPOINT: &str = "[[endpoint]]\nname = \"fast\"\nurl = \"http://127.0.0.1:1/a\"\n";
    let cases = [
        (
            "max_concurrent_polls = 4611686018427387904\n",
            "1:24: `max_concurrent_polls` must be at most 100000",
        ),
        (
            "per_host = 4611686018427387904\n",
            "1:12: `per_host` must be at most 100000",
        ),
        ("per_host = 0\n", "1:12: `per_host` must be at least 1"),
        (
            "per_host_spacing = \"500000000000y\"\n",
            "1:20: invalid duration `500000000000y`: must be at most 365 days",
        ),
        (
            &format!("{TARGET}max_attempts = 4000000000\n"),
            "4:16: target `hook`: `max_attempts` must be at most 100",
        ),
        (
            &format!("{TARGET}parallel = 100000\n"),
            "4:12: target `hook`: `parallel` must be at most 10000",
        ),
        (
            &format!("{TARGET}rate = \"1e-300/s\"\n"),
            "4:8: target `hook`: invalid rate `1e-300/s`: it must allow at least one a day",
        ),
        (
            &format!("{ENDPOINT}every = \"1ns\"\n"),
            "4:9: endpoint `fast`: `every` must be at least 100ms",
        ),
        (
            "[defaults]\nevery = \"10ms\"\n",
            "2:9: defaults: `every` must be at least 100ms",
        ),
        (
            &format!("{ENDPOINT}every = \"1m\"\nkeep_history = 100000\n"),
            "5:16: endpoint `fast`: `keep_history` must be at most 10000",
        ),
        (
            &format!("{ENDPOINT}every = \"1m\"\nfail_after = 99999\n"),
            "5:14: endpoint `fast`: `fail_after` must be at most 10000",
        ),
        (
            &format!("{ENDPOINT}every = \"1m\"\nmax_body = \"100GiB\"\n"),
            "5:12: endpoint `fast`: invalid size `100GiB`: must be at most 1GiB",
        ),
        (
            &format!("{ENDPOINT}every = \"1m\"\ntimeout = \"20y\"\n"),
            "5:11: endpoint `fast`: invalid duration `20y`: must be at most 365 days",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    for (config, expected) in cases {
        std::fs::write(&path, config).unwrap();
        let output = run(&["check", "-c", path.to_str().unwrap()]).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{config}: {stderr}");
        assert!(
            stderr.contains(&format!("c.toml:{expected}")),
            "{config}: expected {expected:?} in:\n{stderr}"
        );
    }
}

/// `-c /dev/zero` read 20 GB in a minute.
#[tokio::test]
async fn check_reads_only_a_regular_config_file_of_sane_size() {
    let output = run(&["check", "-c", "/dev/zero"]).await;
    assert_eq!(output.status.code(), Some(78));
    assert!(
        text(&output.stderr)
            .contains("cannot read config file `/dev/zero`: it is not a regular file"),
        "{}",
        text(&output.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["check", "-c", dir.path().to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(78));
    let huge = dir.path().join("huge.toml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let output = run(&["check", "-c", huge.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(78));
    assert!(
        text(&output.stderr).contains("it is larger than 64 MiB"),
        "{}",
        text(&output.stderr)
    );
}

fn write_config(dir: &Path, api: &Api, receiver: &Receiver) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        r#"
state_dir = "{state}"
[admin]
listen = "127.0.0.1:0"

[[target]]
name = "receiver"
url = "{receiver}"
secret = "{SECRET}"

[[endpoint]]
name = "data"
url = "{api}"
every = "100ms"
emit_initial = true
"#,
        state = dir.join("state").display(),
        receiver = receiver.url(),
        api = api.url(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_prints_events_and_sends_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = write_config(dir.path(), &api, &receiver);
    let config = config.to_str().unwrap();

    // Without --send the store is not touched: the same initial event twice.
    for _ in 0..2 {
        let output = run(&["once", "-c", config, "data"]).await;
        assert!(output.status.success(), "{}", text(&output.stderr));
        let stdout = text(&output.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{stdout}");
        let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(event["type"], "endpoint.changed");
        assert_eq!(event["data"]["version"], 1);
    }
    assert!(receiver.all().is_empty());

    let output = run(&["once", "-c", config, "--send"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(receiver.accepted().len(), 1);
    assert!(receiver.accepted()[0].signature_verifies(SECRET));
    assert!(
        text(&output.stderr).contains("target receiver: 1 delivered, 0 still queued"),
        "{}",
        text(&output.stderr)
    );

    // Now the baseline is stored: nothing changed, nothing to print but
    // the tally (from cron, a line per unchanged endpoint would be mailed),
    // except for an endpoint asked for by name.
    let output = run(&["once", "-c", config]).await;
    assert!(output.status.success());
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    assert_eq!(text(&output.stderr), "1 endpoint(s) polled, 1 unchanged\n");
    let output = run(&["once", "-c", config, "data"]).await;
    assert!(
        text(&output.stderr).starts_with("data: unchanged\n"),
        "{}",
        text(&output.stderr)
    );

    let output = run(&["once", "-c", config, "nope"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("no endpoint named `nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_delivers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = write_config(dir.path(), &api, &receiver);
    let mut child = binary()
        .args(["run", "-c", config.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    crate::support::eventually("the initial event is delivered", || {
        receiver.accepted().len() == 1
    })
    .await;

    // While it runs, it holds the store: commands that write say so.
    let output = run(&["once", "--send", "-c", config.to_str().unwrap()]).await;
    let message = text(&output.stderr);
    assert!(
        message.contains(&format!(
            "pollhook is running (pid {})",
            child.id().unwrap()
        )),
        "{message}"
    );

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    while let Ok(Some(line)) = stderr.next_line().await {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(
        log.contains("SIGTERM received") && log.contains("stopped"),
        "{log}"
    );
    assert!(
        !log.contains('\x1b'),
        "no colours when stderr is not a terminal"
    );
}

#[tokio::test]
async fn demo_shows_signed_webhooks_within_seconds() {
    let output = run(&["demo", "--duration", "2500ms", "--tick", "400ms"]).await;
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("webhook received: endpoint.changed prices"),
        "{stdout}"
    );
    assert!(stdout.contains("signature ok"), "{stdout}");
    assert!(!stdout.contains("INVALID"), "{stdout}");
    assert!(stdout.contains("demo finished:"), "{stdout}");
}

/// A config file for the in-process daemon and the binary alike.
fn delivery_config(dir: &Path, api: &Api, receiver: &Receiver) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[target]]\nname = \"receiver\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry = [\"20ms\"]\n\
         [[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"100ms\"\nemit_initial = true\n",
        dir.join("state").display(),
        receiver.url(),
        api.url()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resends_a_dead_letter_once_with_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":"ü"}"#)).await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let path = delivery_config(dir.path(), &api, &receiver);
    let config_arg = path.to_str().unwrap();
    let daemon = crate::support::Daemon::start(pollhook::config::Config::load(&path).unwrap());
    crate::support::eventually("both attempts failed", || receiver.all().len() == 2).await;
    api.wait_for_requests(3).await;
    daemon.stop().await;
    let id = receiver.all()[0].id.clone();

    let dead = run(&["dead", "-c", config_arg]).await;
    assert!(dead.status.success(), "{}", text(&dead.stderr));
    let listing = text(&dead.stdout);
    assert!(
        listing.contains(&id) && listing.contains("500"),
        "{listing}"
    );
    let detailed = text(&run(&["dead", "-c", config_arg, "--attempts"]).await.stdout);
    assert!(
        detailed.contains("#1 ") && detailed.contains("#2 ") && detailed.contains("status 500"),
        "{detailed}"
    );
    assert!(text(&run(&["deliveries", "-c", config_arg]).await.stderr).contains("0 queued"));

    let unknown = run(&["replay", "-c", config_arg, "msg_nope"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("no dead letter with id msg_nope"));

    let replay = run(&["replay", "-c", config_arg, &id]).await;
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    assert!(text(&replay.stdout).contains("re-queued 1 webhook(s)"));
    let queued = text(&run(&["deliveries", "-c", config_arg]).await.stdout);
    assert!(queued.contains(&id) && queued.contains("now"), "{queued}");
    let again = run(&["replay", "-c", config_arg, "--dead", "--since", "1h"]).await;
    assert!(
        text(&again.stdout).contains("re-queued 0 webhook(s)"),
        "nothing is dead any more"
    );

    receiver.answer(204);
    let daemon = crate::support::Daemon::start(pollhook::config::Config::load(&path).unwrap());
    crate::support::eventually("the replay is delivered", || receiver.accepted().len() == 1).await;
    api.wait_for_requests(3).await;
    daemon.stop().await;
    let all = receiver.all();
    assert_eq!(all.len(), 3, "sent once more, not twice: {all:#?}");
    let replayed = &receiver.accepted()[0];
    assert_eq!(replayed.id, id, "the same webhook-id");
    assert!(
        replayed.signature_verifies(SECRET),
        "a signature that verifies"
    );
    assert!(replayed.timestamp >= all[0].timestamp, "a fresh timestamp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_unpauses_a_target_that_answered_410() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    receiver.answer(410);
    let path = delivery_config(dir.path(), &api, &receiver);
    let config_arg = path.to_str().unwrap();
    let daemon = crate::support::Daemon::start(pollhook::config::Config::load(&path).unwrap());
    crate::support::eventually("the 410", || receiver.all().len() == 1).await;
    api.wait_for_requests(5).await;
    daemon.stop().await;
    assert_eq!(receiver.all().len(), 1);
    let queued = text(&run(&["deliveries", "-c", config_arg]).await.stdout);
    assert!(queued.contains("paused"), "{queued}");

    let resume = run(&["resume", "-c", config_arg, "receiver"]).await;
    assert!(resume.status.success());
    assert!(text(&resume.stdout).contains("target `receiver` resumed"));
    receiver.answer(204);
    let daemon = crate::support::Daemon::start(pollhook::config::Config::load(&path).unwrap());
    crate::support::eventually("delivered after resume", || receiver.accepted().len() == 1).await;
    daemon.stop().await;
    assert_eq!(receiver.accepted()[0].id, receiver.all()[0].id);
}

/// Runs the binary with its stdout a pipe whose reader has already gone,
/// as `pollhook status | head -2` ends up.
async fn run_into_a_closed_pipe(args: &[&str]) -> Output {
    let mut child = binary()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the command finished")
        .unwrap()
}

/// `pollhook status | head -2` panicked with `failed printing to stdout`.
#[tokio::test]
async fn commands_end_quietly_when_their_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = write_config(dir.path(), &api, &receiver);
    let config = config.to_str().unwrap();
    let good = data("good.toml");
    for args in [
        vec!["check", "-c", good.to_str().unwrap()],
        vec!["status", "-c", config],
        vec!["once", "--send", "-c", config],
        vec!["deliveries", "-c", config],
        vec!["demo", "--duration", "20s"],
    ] {
        let output = run_into_a_closed_pipe(&args).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `once` polls through the daemon's poller: concurrently, within
/// `per_host`; `--send` delivers through the daemon's dispatcher, within
/// `parallel`, and sends health events as the daemon does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_polls_and_delivers_as_the_daemon_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut slow = Reply::json(r#"{"a":1}"#);
    slow.delay = Duration::from_millis(100);
    let api = Api::start(slow).await;
    let receiver = Receiver::start().await;
    receiver.behave(|behaviour| behaviour.delay = Duration::from_millis(50));
    let endpoints: String = (0..8)
        .map(|n| {
            format!(
                "[[endpoint]]\nname = \"e{n}\"\nurl = \"{}?n={n}\"\nemit_initial = true\n",
                api.url()
            )
        })
        .collect();
    // Polled every second, it gets no quick retries; `fail_for = "0s"`:
    // alerted at its first failed poll.
    let failing = "[[endpoint]]\nname = \"down\"\nurl = \"http://127.0.0.1:1/\"\nevery = \"1s\"\nfail_after = 1\nfail_for = \"0s\"\n";
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nper_host = 3\n[defaults]\nevery = \"1h\"\n\
             [[target]]\nname = \"receiver\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nparallel = 2\n\
             {endpoints}{failing}",
            dir.path().join("state").display(),
            receiver.url()
        ),
    )
    .unwrap();

    let output = run(&["once", "--send", "-c", config.to_str().unwrap()]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "`down` failed: {stderr}");
    assert_eq!(api.requests(), 8);
    assert_eq!(api.most_at_once(), 3, "per_host, and not one at a time");
    assert_eq!(receiver.most_at_once(), 2, "the target's parallel");
    let kinds: Vec<String> = receiver
        .accepted()
        .iter()
        .map(|hook| hook.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    assert_eq!(
        kinds
            .iter()
            .filter(|kind| *kind == "endpoint.failing")
            .count(),
        1,
        "{kinds:?}"
    );
    assert!(
        stderr.contains("target receiver: 9 delivered, 0 still queued"),
        "{stderr}"
    );
}

/// A command that only reads never makes a store, says which state dir it
/// looked in, and refuses names the config does not have.
#[tokio::test]
async fn read_commands_never_create_a_store_and_refuse_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = write_config(dir.path(), &api, &receiver);
    let config = config.to_str().unwrap();
    let state = dir.path().join("state");
    assert!(!state.exists());

    for args in [
        ["history", "data"],
        ["deliveries", "--target=receiver"],
        ["dead", "--attempts"],
    ] {
        let output = run(&[args[0], "-c", config, args[1]]).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("there is no store in `{}`", state.display())),
            "{args:?}: {stderr}"
        );
    }
    let status = run(&["status", "-c", config]).await;
    assert_eq!(status.status.code(), Some(3));
    assert!(text(&status.stdout).contains("data"));
    assert!(
        text(&status.stderr).contains("there is no store in"),
        "{}",
        text(&status.stderr)
    );
    let once = run(&["once", "-c", config, "data"]).await;
    assert!(once.status.success(), "{}", text(&once.stderr));
    assert!(!state.exists(), "a dry run made the state dir");

    for args in [["history", "nosuch"], ["tail", "nosuch"]] {
        let output = run(&[args[0], "-c", config, args[1]]).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            text(&output.stderr).contains("no endpoint named `nosuch` in the config"),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
}

/// `status` shows what the admin API knows: the next poll and the last
/// error in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_next_poll_and_the_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply {
        status: 503,
        ..Reply::json("{}")
    })
    .await;
    let receiver = Receiver::start().await;
    let path = write_config(dir.path(), &api, &receiver);
    let daemon = crate::support::Daemon::start(pollhook::config::Config::load(&path).unwrap());
    api.wait_for_requests(1).await;
    crate::support::eventually("the address is written", || {
        dir.path().join("state/admin.addr").exists()
    })
    .await;
    let output = run(&["status", "-c", path.to_str().unwrap()]).await;
    daemon.stop().await;
    let table = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("NEXT POLL") && header.contains("LAST ERROR"),
        "{table}"
    );
    let row = table.lines().nth(1).unwrap();
    assert!(row.contains("HTTP status 503"), "{table}");
    assert!(
        row.matches("T").count() >= 2,
        "a last and a next poll time: {table}"
    );
}

/// Tuning a filter without stopping production: while the daemon runs,
/// `once NAME` is previewed by it, with its config file as edited and its
/// live snapshot; nothing is stored or sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_previews_through_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1,"b":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = dir.path().join("config.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [[target]]\nname = \"receiver\"\nurl = \"{}\"\n\
                 [[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"1h\"\n{extra}\n",
                dir.path().join("state").display(),
                receiver.url(),
                api.url()
            ),
        )
        .unwrap();
    };
    write("");
    let config_arg = config.to_str().unwrap();
    let mut daemon = binary().args(["run", "-c", config_arg]).spawn().unwrap();
    let address = dir.path().join("state/admin.addr");
    crate::support::eventually("the daemon listens", || address.exists()).await;
    let poll = run(&["poll", "-c", config_arg, "data"]).await;
    assert!(poll.status.success(), "{}", text(&poll.stderr));
    let mut baseline = String::new();
    for _ in 0..200 {
        baseline = text(&run(&["history", "-c", config_arg, "data"]).await.stdout);
        if baseline.lines().count() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        baseline.lines().count(),
        2,
        "a header and version 1: {baseline}"
    );

    api.set(Reply::json(r#"{"a":2,"b":1}"#));
    let preview = run(&["once", "-c", config_arg, "data"]).await;
    let stderr = text(&preview.stderr);
    assert!(preview.status.success(), "{stderr}");
    assert!(stderr.contains("previewing through it"), "{stderr}");
    assert!(
        stderr.contains("data: changed, version 2, 1 event(s)"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("1 endpoint(s) polled, 1 changed\n"),
        "{stderr}"
    );
    let event: serde_json::Value = serde_json::from_str(text(&preview.stdout).trim()).unwrap();
    assert_eq!(
        event["data"]["patch"],
        serde_json::json!([{"op": "replace", "path": "/a", "value": 2}])
    );

    // An edited filter, not reloaded: previewed as written.
    write("select = \"{a}\"");
    let preview = run(&["once", "-c", config_arg, "data"]).await;
    let stderr = text(&preview.stderr);
    assert!(
        stderr.contains("data: rebaseline, version 2, 0 event(s)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("extracted document (json):\n{\n  \"a\": 2\n}"),
        "{stderr}"
    );

    let history = text(&run(&["history", "-c", config_arg, "data"]).await.stdout);
    assert_eq!(history, baseline, "nothing was stored");
    assert!(receiver.all().is_empty(), "nothing was sent");
    let pid = daemon.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(daemon.wait().await.unwrap().success());
}

/// `once --send` delivers each change as soon as it is durable, while later
/// polls still run: the slow endpoint answers only once the receiver has
/// the fast endpoints' webhooks (or, failing that, after 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_delivers_while_later_polls_still_run() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let released_by_delivery = Arc::new(AtomicBool::new(false));
    let slow = {
        let receiver = receiver.clone();
        let released = released_by_delivery.clone();
        axum::Router::new().route(
            "/",
            axum::routing::get(move || async move {
                for _ in 0..1000 {
                    if receiver.accepted().len() >= 3 {
                        released.store(true, Ordering::SeqCst);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ([("content-type", "application/json")], r#"{"b":1}"#)
            }),
        )
    };
    let slow = crate::support::serve(slow).await;
    let endpoints: String = (0..3)
        .map(|n| {
            format!(
                "[[endpoint]]\nname = \"fast{n}\"\nurl = \"{}?n={n}\"\nemit_initial = true\n",
                api.url()
            )
        })
        .collect();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[defaults]\nevery = \"1h\"\n\
             [[target]]\nname = \"receiver\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
             [[endpoint]]\nname = \"slow\"\nurl = \"http://{slow}/\"\nemit_initial = true\n\
             {endpoints}",
            dir.path().join("state").display(),
            receiver.url()
        ),
    )
    .unwrap();

    let output = run(&["once", "--send", "-c", config.to_str().unwrap()]).await;
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        released_by_delivery.load(Ordering::SeqCst),
        "the fast endpoints' webhooks came only after every poll: {stderr}"
    );
    let mut endpoints: Vec<String> = receiver
        .accepted()
        .iter()
        .map(|hook| {
            hook.json()["data"]["endpoint"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    endpoints.sort();
    assert_eq!(endpoints, ["fast0", "fast1", "fast2", "slow"]);
    assert!(
        stderr.contains("target receiver: 4 delivered, 0 still queued"),
        "{stderr}"
    );
}
