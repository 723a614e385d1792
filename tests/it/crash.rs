//! Crash safety: the real binary, killed with SIGKILL at several points in
//! a burst of changes, restarted each time. Every change it detected
//! reaches the receiver at least once, always under the same id, and no row
//! is lost or stuck.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pollhook::store::Store;

use crate::support::{Api, FAST_RETRY, Receiver, Reply, SECRET, eventually};

/// Starts `pollhook run`, its log appended to `daemon.log` beside the config.
fn run_daemon(config: &std::path::Path) -> tokio::process::Child {
    crate::support::run_binary(config, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_change_and_keeps_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut burst = Reply::json("");
    // Every poll sees a different document: a change per poll.
    burst.bodies = (1..=7).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    let api = Api::start(burst).await;
    let receiver = Receiver::start().await;
    // POSTs take a while, so some kills land while they are in flight.
    receiver.behave(|behaviour| behaviour.delay = Duration::from_millis(15));
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[target]]\nname = \"receiver\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry = {FAST_RETRY}\n\
             [[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"100ms\"\n",
            dir.path().join("state").display(),
            receiver.url(),
            api.url()
        ),
    )
    .unwrap();

    // Six kills at least, and more while the burst has not yet reached the
    // receiver (a busy machine polls later).
    let kill_points = [300, 650, 190, 480, 820, 100];
    for round in 0..24 {
        if round >= kill_points.len() && receiver.all().len() > 5 {
            break;
        }
        let kill_after = kill_points[round % kill_points.len()];
        let mut child = run_daemon(&config);
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    let crashed_deliveries = receiver.all().len();
    assert!(
        crashed_deliveries > 5,
        "the burst reached the receiver before the crashes: {crashed_deliveries}"
    );

    // Quiet now: restart and let it drain.
    api.set(Reply::json(r#"{"n":"done"}"#));
    let mut child = run_daemon(&config);
    let log = || std::fs::read_to_string(config.with_file_name("daemon.log")).unwrap_or_default();
    let polled = api.requests() + 10;
    for _ in 0..1000 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the restarted daemon exited ({status}); its log:\n{}",
                log()
            );
        }
        if api.requests() >= polled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        api.requests() >= polled,
        "the restarted daemon does not poll; its log:\n{}",
        log()
    );
    let mut seen = receiver.all().len();
    eventually("the receiver is quiet", || {
        let now = receiver.all().len();
        let quiet = now == seen && receiver.handling() == 0;
        seen = now;
        quiet
    })
    .await;
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );

    let store = Store::open(&dir.path().join("state")).unwrap();
    assert_eq!(
        store.outbox_len(),
        0,
        "no row stuck: {:#?}",
        store.queued_rows(None).unwrap()
    );
    assert!(store.dead_rows(None).unwrap().is_empty());
    let newest = store.snapshot("data").unwrap().unwrap().version;

    let mut ids_by_version: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for hook in receiver.all() {
        assert!(hook.signature_verifies(SECRET));
        ids_by_version
            .entry(hook.version())
            .or_default()
            .insert(hook.id.clone());
    }
    let accepted: BTreeSet<u64> = receiver
        .accepted()
        .iter()
        .map(|hook| hook.version())
        .collect();
    for version in 2..=newest {
        assert!(
            accepted.contains(&version),
            "version {version} of {newest} was never delivered"
        );
    }
    for (version, ids) in &ids_by_version {
        assert_eq!(
            ids.len(),
            1,
            "version {version} arrived under several ids: {ids:?}"
        );
    }
}
