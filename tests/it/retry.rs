//! The retry schedule, dead letters, Retry-After, 410 and the rate cap,
//! under tokio's paused clock: the real dispatcher against a real receiver,
//! with hours of schedule passing in milliseconds.

use std::sync::Arc;
use std::time::Duration;

use pollhook::config::{Config, Target};
use pollhook::deliver::{self, retry::DEFAULT_SCHEDULE};
use pollhook::poll;
use pollhook::store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::{Api, Receiver, Reply, SECRET, config};

const HOUR: Duration = Duration::from_secs(3600);

/// A store with `events` queued rows for one target configured by `target_extra`.
struct Setup {
    _state: tempfile::TempDir,
    store: Arc<Store>,
    config: Config,
    receiver: Receiver,
}

impl Setup {
    async fn new(target_extra: &str, events: usize) -> Setup {
        let state = tempfile::tempdir().unwrap();
        let api = Api::start(Reply::json(r#"{"a":"é"}"#)).await;
        let receiver = Receiver::start().await;
        let endpoints: String = (0..events)
            .map(|index| format!("[[endpoint]]\nname = \"e{index}\"\nurl = \"{}\"\nevery = \"1000h\"\nemit_initial = true\n", api.url()))
            .collect();
        let text = format!(
            "[[target]]\nname = \"receiver\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n{target_extra}\n{endpoints}",
            receiver.url()
        );
        let config = config(state.path(), &text);
        let store = Arc::new(Store::open(state.path()).unwrap());
        let client = pollhook::fetch::client().unwrap();
        let tokens = pollhook::oauth::Tokens::new(store.clone());
        for endpoint in &config.endpoints {
            let (observation, _) = poll::observe(&client, &tokens, &store, endpoint, None)
                .await
                .unwrap();
            assert_eq!(
                poll::apply(&store, endpoint, &observation).await.unwrap(),
                1
            );
        }
        Setup {
            _state: state,
            store,
            config,
            receiver,
        }
    }

    fn target(&self) -> Arc<Target> {
        self.config.targets[0].clone()
    }

    /// Runs the real dispatcher of the target until the token is cancelled.
    fn dispatch(&self) -> (CancellationToken, tokio::task::JoinHandle<usize>) {
        let shutdown = CancellationToken::new();
        let dispatch = deliver::Dispatch {
            store: self.store.clone(),
            clients: deliver::clients().unwrap(),
            metrics: Arc::new(pollhook::metrics::Metrics::default()),
            grace: Duration::from_secs(10),
            wakes: Arc::default(),
        };
        let task = tokio::spawn(deliver::run_target(
            dispatch,
            self.target(),
            Arc::new(Notify::new()),
            shutdown.clone(),
            deliver::Until::Shutdown,
        ));
        (shutdown, task)
    }
}

/// The gaps between consecutive arrivals.
fn gaps(hooks: &[crate::support::Webhook]) -> Vec<Duration> {
    hooks
        .windows(2)
        .map(|pair| pair[1].arrived - pair[0].arrived)
        .collect()
}

fn assert_within_jitter(gap: Duration, scheduled: Duration, what: &str) {
    let low = scheduled.mul_f64(0.8);
    let high = scheduled.mul_f64(1.2) + Duration::from_millis(100);
    assert!(
        gap >= low && gap <= high,
        "{what}: waited {gap:?}, scheduled {scheduled:?} ±20 %"
    );
}

#[tokio::test(start_paused = true)]
async fn an_always_failing_receiver_gets_the_whole_schedule_then_a_dead_letter() {
    let setup = Setup::new("", 1).await;
    setup.receiver.answer(500);
    let (shutdown, task) = setup.dispatch();
    setup
        .receiver
        .wait_until(48 * HOUR, "eight attempts", |hooks| hooks.len() == 8)
        .await;
    // Long after the schedule ran out, nothing more is sent.
    tokio::time::sleep(48 * HOUR).await;
    shutdown.cancel();
    task.await.unwrap();

    let hooks = setup.receiver.all();
    assert_eq!(hooks.len(), 8, "exactly the schedule's eight attempts");
    for (index, gap) in gaps(&hooks).into_iter().enumerate() {
        assert_within_jitter(gap, DEFAULT_SCHEDULE[index], &format!("wait {}", index + 1));
    }
    assert!(
        hooks
            .iter()
            .all(|hook| hook.id == hooks[0].id && hook.signature_verifies(SECRET))
    );
    let timestamps: Vec<u64> = hooks
        .iter()
        .map(|hook| hook.timestamp.parse().unwrap())
        .collect();
    assert!(
        timestamps.windows(2).all(|pair| pair[1] > pair[0]),
        "a fresh timestamp per attempt: {timestamps:?}"
    );

    assert_eq!(setup.store.outbox_len(), 0);
    let dead = setup.store.dead_rows(None).unwrap();
    assert_eq!(dead.len(), 1);
    let (target, row) = &dead[0];
    assert_eq!(target, "receiver");
    assert_eq!(row.event_id, hooks[0].id);
    assert_eq!(row.attempt_log.len(), 8);
    assert!(
        row.attempt_log
            .iter()
            .all(|attempt| attempt.status == Some(500))
    );
    assert_eq!(row.attempt_log.last().unwrap().next_attempt_ms, None);
    assert_eq!(setup.store.attempt_log("receiver").unwrap().len(), 8);
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_survives_a_restart_and_is_not_retried() {
    let setup = Setup::new("retry = [\"1s\"]", 1).await;
    setup.receiver.answer(503);
    let (shutdown, task) = setup.dispatch();
    setup
        .receiver
        .wait_until(HOUR, "two attempts", |hooks| hooks.len() == 2)
        .await;
    tokio::time::sleep(HOUR).await;
    shutdown.cancel();
    task.await.unwrap();
    let Setup {
        _state: state,
        store,
        config,
        receiver,
    } = setup;
    drop(store);

    let store = Arc::new(Store::open(state.path()).unwrap());
    assert_eq!(store.dead_rows(Some("receiver")).unwrap().len(), 1);
    let setup = Setup {
        _state: state,
        store,
        config,
        receiver,
    };
    setup.receiver.answer(204);
    let (shutdown, task) = setup.dispatch();
    tokio::time::sleep(24 * HOUR).await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(
        setup.receiver.all().len(),
        2,
        "a dead letter waits for a replay"
    );
    assert_eq!(setup.store.dead_rows(None).unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_403_is_tried_exactly_max_attempts_times() {
    let setup = Setup::new("max_attempts = 3", 1).await;
    setup.receiver.answer(403);
    let (shutdown, task) = setup.dispatch();
    setup
        .receiver
        .wait_until(HOUR, "three attempts", |hooks| hooks.len() == 3)
        .await;
    tokio::time::sleep(24 * HOUR).await;
    shutdown.cancel();
    task.await.unwrap();
    let hooks = setup.receiver.all();
    assert_eq!(hooks.len(), 3);
    let waits = gaps(&hooks);
    assert_within_jitter(waits[0], Duration::from_secs(5), "first wait");
    assert_within_jitter(waits[1], Duration::from_secs(10), "second wait");
    assert_eq!(setup.store.dead_rows(None).unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_within_twice_the_schedule() {
    for (asked, low, high) in [("15", 15.0, 15.2), ("3600", 16.0, 24.2), ("1", 8.0, 12.2)] {
        let setup = Setup::new(r#"retry = ["10s", "10s"]"#, 1).await;
        setup.receiver.behave(|behaviour| {
            behaviour.status = 429;
            behaviour.retry_after = Some(asked.to_string());
        });
        let (shutdown, task) = setup.dispatch();
        setup
            .receiver
            .wait_until(HOUR, "three attempts", |hooks| hooks.len() == 3)
            .await;
        shutdown.cancel();
        task.await.unwrap();
        for gap in gaps(&setup.receiver.all()) {
            let seconds = gap.as_secs_f64();
            assert!(
                seconds >= low && seconds <= high,
                "Retry-After {asked}: waited {seconds} s"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_410_pauses_the_target_and_keeps_its_events() {
    let setup = Setup::new("parallel = 1", 2).await;
    setup.receiver.answer(410);
    let (shutdown, task) = setup.dispatch();
    setup
        .receiver
        .wait_until(HOUR, "one attempt", |hooks| hooks.len() == 1)
        .await;
    tokio::time::sleep(48 * HOUR).await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(
        setup.receiver.all().len(),
        1,
        "a paused target gets nothing more"
    );
    assert!(setup.store.paused("receiver").unwrap().is_some());
    assert_eq!(
        setup.store.outbox_rows("receiver").unwrap().len(),
        2,
        "both events stay queued"
    );

    // A restart does not un-pause it; `resume` does.
    setup.receiver.answer(204);
    let (shutdown, task) = setup.dispatch();
    tokio::time::sleep(HOUR).await;
    assert_eq!(setup.receiver.all().len(), 1);
    shutdown.cancel();
    task.await.unwrap();
    assert!(setup.store.resume("receiver").unwrap());
    let (shutdown, task) = setup.dispatch();
    setup
        .receiver
        .wait_until(HOUR, "both delivered", |hooks| {
            hooks.iter().filter(|h| h.answered == 204).count() == 2
        })
        .await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(setup.store.outbox_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn rate_spaces_the_deliveries_of_a_target() {
    let setup = Setup::new(r#"rate = "2/s""#, 4).await;
    let (shutdown, task) = setup.dispatch();
    setup
        .receiver
        .wait_until(HOUR, "four deliveries", |hooks| hooks.len() == 4)
        .await;
    shutdown.cancel();
    task.await.unwrap();
    for gap in gaps(&setup.receiver.all()) {
        assert!(
            gap >= Duration::from_millis(500),
            "deliveries {gap:?} apart at 2/s"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn every_secret_signs_the_exact_bytes_sent() {
    let second = "whsec_c2Vjb25kIHNlY3JldCBmb3Igcm90YXRpb24=";
    let setup = Setup::new(&format!("secrets = [\"{second}\"]"), 1).await;
    let (shutdown, task) = setup.dispatch();
    setup
        .receiver
        .wait_until(HOUR, "a delivery", |hooks| hooks.len() == 1)
        .await;
    shutdown.cancel();
    task.await.unwrap();
    let hook = &setup.receiver.all()[0];
    assert_eq!(hook.signature.as_deref().unwrap().split(' ').count(), 2);
    assert!(hook.signature_verifies(SECRET), "signed with `secret`");
    assert!(
        hook.signature_verifies(second),
        "and with each of `secrets`"
    );
    assert!(
        String::from_utf8(hook.body.to_vec()).unwrap().contains('é'),
        "a multibyte body"
    );
}

/// The README once said "immediately, then after 5 s, ..." while the code
/// made the first attempt at once and its first retry after 5 s ± 20 %.
/// The delivery guarantees now live in docs/events.md.
#[test]
fn the_docs_state_the_schedule_the_code_keeps() {
    let events = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/events.md"),
    )
    .unwrap();
    let waits: Vec<String> = DEFAULT_SCHEDULE
        .iter()
        .map(|wait| match wait.as_secs() {
            seconds if seconds < 60 => format!("{seconds} s"),
            seconds if seconds < 3600 => format!("{} min", seconds / 60),
            seconds => format!("{} h", seconds / 3600),
        })
        .collect();
    let (last, rest) = waits.split_last().unwrap();
    let phrase = format!(
        "the first attempt is made at once; after a failure it is retried after {} and {last} (each wait ±20 %",
        rest.join(", ")
    );
    assert!(
        events.contains(&phrase),
        "docs/events.md should say: {phrase}"
    );
}
