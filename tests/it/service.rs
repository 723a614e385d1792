//! The real binary as systemd runs it: notify messages on a real
//! `NOTIFY_SOCKET`, SIGHUP reloads, and the CLI against a running daemon
//! (through the admin API) and a stopped one (through the store).

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::Command;

use crate::support::{Api, Receiver, Reply, SECRET};

fn pollhook() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pollhook"));
    command
        .env_remove("POLLHOOK_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    command
}

async fn cli(config: &Path, args: &[&str]) -> Output {
    let output = pollhook().args(args).arg("-c").arg(config).output();
    tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .unwrap()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kill(signal: &str, pid: u32) {
    assert!(
        std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// The next notify message that is not only a watchdog ping or a status.
async fn next_state(socket: &UnixDatagram, seen: &mut Vec<String>) -> String {
    let mut buffer = vec![0u8; 4096];
    loop {
        let length = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no notify message; so far: {seen:?}"))
            .unwrap();
        let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
        seen.push(message.clone());
        if message
            .lines()
            .any(|line| !line.starts_with("WATCHDOG=") && !line.starts_with("STATUS="))
        {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_watchdog_and_stopping_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = dir.path().join("config.toml");
    let write = |every: &str| {
        let text = format!(
            "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[target]]\nname = \"receiver\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\
             [[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"{every}\"\n",
            dir.path().join("state").display(),
            receiver.url(),
            api.url()
        );
        std::fs::write(&config, text).unwrap();
    };
    write("100ms");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut daemon = pollhook()
        .args(["run", "-c"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .env("JOURNAL_STREAM", "8:1234")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = daemon.id().unwrap();
    let mut seen = Vec::new();

    let ready = next_state(&socket, &mut seen).await;
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        ready.contains("STATUS=polling 1 endpoints, 0 failing, 0 queued"),
        "{ready}"
    );

    // The CLI talks to the running daemon through its API.
    api.wait_for_requests(2).await;
    let status = cli(&config, &["status"]).await;
    assert!(status.status.success(), "{}", text(&status.stderr));
    let table = text(&status.stdout);
    assert!(
        table.starts_with("ENDPOINT") && table.contains("data") && table.contains("every 100ms"),
        "{table}"
    );
    let mut tail = pollhook()
        .args(["tail", "data", "-c"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tail_lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    // A change made before `tail` has connected is not streamed to it: on
    // a busy machine it may take a while, so change until one arrives.
    let mut line = None;
    for a in 2..=20 {
        api.set(Reply::json(&format!(r#"{{"a":{a}}}"#)));
        let next = tokio::time::timeout(Duration::from_millis(500), tail_lines.next_line());
        if let Ok(next) = next.await {
            line = next.unwrap();
            break;
        }
    }
    let line = line.expect("tail prints a change");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(event["data"]["version"].as_u64().unwrap() >= 2, "{line}");
    tail.start_kill().unwrap();
    let history = cli(&config, &["history", "data"]).await;
    assert!(
        text(&history.stdout).contains("json"),
        "{}",
        text(&history.stdout)
    );
    let diff = cli(&config, &["history", "data", "--diff", "1", "2"]).await;
    assert!(
        text(&diff.stdout).contains(r#""path": "/a""#),
        "{}",
        text(&diff.stdout)
    );
    let poll = cli(&config, &["poll", "data"]).await;
    assert!(
        text(&poll.stdout).contains("polling `data` now"),
        "{}",
        text(&poll.stderr)
    );

    // SIGHUP with a broken config: refused, READY again, the old config runs on.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("100ms", "whenever"),
    )
    .unwrap();
    kill("-HUP", pid);
    let reloading = next_state(&socket, &mut seen).await;
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next_state(&socket, &mut seen).await.contains("READY=1"));
    let refused = cli(&config, &["check"]).await;
    assert_eq!(refused.status.code(), Some(78));

    // `pollhook reload` with a good one.
    write("200ms");
    let reload = cli(&config, &["reload"]).await;
    assert!(
        text(&reload.stdout).contains("reloaded: 0 started, 0 stopped, 1 restarted"),
        "{}",
        text(&reload.stderr)
    );
    assert!(next_state(&socket, &mut seen).await.contains("RELOADING=1"));
    assert!(next_state(&socket, &mut seen).await.contains("READY=1"));
    assert!(
        seen.iter().any(|message| message.trim() == "WATCHDOG=1"),
        "watchdog pings: {seen:?}"
    );

    kill("-TERM", pid);
    assert!(next_state(&socket, &mut seen).await.contains("STOPPING=1"));
    let exit = tokio::time::timeout(Duration::from_secs(20), daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    let mut log = String::new();
    let mut lines = BufReader::new(daemon.stderr.take().unwrap()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(
        log.contains("reload failed; the running config stays"),
        "{log}"
    );
    let first = log.lines().next().unwrap_or_default();
    assert!(
        !first.starts_with("20"),
        "no timestamps for the journal: {first}"
    );

    // Stopped: the CLI says so, and reads the store itself where it can.
    let status = cli(&config, &["status"]).await;
    assert_eq!(status.status.code(), Some(3));
    assert!(text(&status.stderr).contains("pollhook is not running"));
    assert!(
        text(&status.stdout).contains("data"),
        "{}",
        text(&status.stdout)
    );
    let poll = cli(&config, &["poll", "data"]).await;
    assert_eq!(poll.status.code(), Some(1));
    assert!(
        text(&poll.stderr)
            .contains("pollhook is not running; `pollhook once data` polls without it")
    );
    let history = cli(&config, &["history", "data"]).await;
    assert!(history.status.success() && text(&history.stdout).contains("json"));
}

/// The README's install steps, run as written into a scratch root: the
/// installed config must be readable by the unit's unprivileged
/// `DynamicUser` (`install -m 0640` made it readable by root only).
#[tokio::test]
async fn the_readme_install_steps_leave_a_config_the_service_user_can_read() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let install = readme
        .lines()
        .find(|line| line.starts_with("sudo install") && line.contains("config.example.toml"))
        .expect("the README installs config.example.toml");
    let scratch = tempfile::tempdir().unwrap();
    // A temp dir is 0700: open it to the user the check runs as.
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let installed = scratch.path().join("etc/pollhook/config.toml");
    let command = install
        .trim_start_matches("sudo ")
        .replace("/etc/pollhook/config.toml", installed.to_str().unwrap());
    let status = std::process::Command::new("sh")
        .args(["-c", &command])
        .current_dir(root)
        .status()
        .unwrap();
    assert!(status.success(), "{command}");

    // As systemd's DynamicUser would: no user of ours, no groups.
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_pollhook"))
        .args(["check", "-c"])
        .arg(&installed)
        .env_remove("POLLHOOK_CONFIG")
        .output()
        .await
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(
        !stderr.contains("setpriv:"),
        "this test runs `pollhook check` as user 65534 and needs root to do so (CI runs as root): {stderr}"
    );
    assert!(output.status.success(), "as an unprivileged user: {stderr}");
    assert!(text(&output.stdout).starts_with("config ok:"));
}

/// The README's advice puts the admin token and a target's secret in the
/// daemon's environment and credentials. From a shell with neither,
/// `status` and `history` still work as far as they can (they need no
/// target secret), and a refused token says what this shell lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_need_only_the_secrets_they_use() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("ha-secret"), format!("{SECRET}\n")).unwrap();
    let api = Api::start(Reply::json(r#"{"a":1}"#)).await;
    let receiver = Receiver::start().await;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{}"
[admin]
listen = "127.0.0.1:0"
token = "${{POLLHOOK_TEST_ADMIN_TOKEN}}"

[[target]]
name = "ha"
url = "{}"
secret = "${{credential:ha-secret}}"

[[endpoint]]
name = "prices"
url = "{}"
headers = {{ Authorization = "Bearer ${{POLLHOOK_TEST_API_TOKEN}}" }}
every = "100ms"
"#,
            dir.path().join("state").display(),
            receiver.url(),
            api.url()
        ),
    )
    .unwrap();
    let shell = |args: &[&str]| {
        let mut command = pollhook();
        command
            .args(args)
            .arg("-c")
            .arg(&config)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("POLLHOOK_TEST_ADMIN_TOKEN")
            .env_remove("POLLHOOK_TEST_API_TOKEN");
        command
    };
    // Nothing runs: status says so, history finds no store; neither is a
    // config error. `check` and `run` need every secret.
    let status = shell(&["status"]).output().await.unwrap();
    assert_eq!(status.status.code(), Some(3), "{}", text(&status.stderr));
    let history = shell(&["history", "prices"]).output().await.unwrap();
    assert_ne!(history.status.code(), Some(78), "{}", text(&history.stderr));
    let check = shell(&["check"]).output().await.unwrap();
    assert_eq!(check.status.code(), Some(78));
    let errors = text(&check.stderr);
    for missing in [
        "POLLHOOK_TEST_ADMIN_TOKEN",
        "credential:ha-secret",
        "POLLHOOK_TEST_API_TOKEN",
    ] {
        assert!(errors.contains(missing), "{missing}: {errors}");
    }

    let mut daemon = pollhook()
        .args(["run", "-c"])
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("POLLHOOK_TEST_ADMIN_TOKEN", "admin-token")
        .env("POLLHOOK_TEST_API_TOKEN", "api-token")
        .spawn()
        .unwrap();
    api.wait_for_requests(2).await;
    // Without the token: refused, and told why.
    let refused = shell(&["status"]).output().await.unwrap();
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(
        said.contains("401") && said.contains("POLLHOOK_TEST_ADMIN_TOKEN"),
        "{said}"
    );
    // With the token but without the credentials: works.
    let status = shell(&["status"])
        .env("POLLHOOK_TEST_ADMIN_TOKEN", "admin-token")
        .output()
        .await
        .unwrap();
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains("prices"));
    kill("-TERM", daemon.id().unwrap());
    assert!(daemon.wait().await.unwrap().success());
}
