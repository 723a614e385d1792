//! A full disk: the real daemon with its state on a small tmpfs that a
//! filler file fills up. Deliveries whose result cannot be written back off
//! instead of being re-sent at once, `/readyz` says why the daemon is not
//! ready, and once there is space again it recovers by itself.
//!
//! Mounting a tmpfs needs root (or CAP_SYS_ADMIN); without it the test fails
//! and says so.

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pollhook::store::Store;

use crate::support::{Api, Daemon, Receiver, Reply, SECRET, config};

/// A tmpfs mounted on a directory, unmounted when dropped (also when the
/// test fails).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let target = CString::new(path.as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={bytes}")).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if mounted != 0 {
            panic!(
                "this test needs root (or CAP_SYS_ADMIN) to mount a tmpfs on `{}`: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.path.as_os_str().as_bytes()).unwrap();
        // Lazily: a daemon left running by a failed test may still hold files.
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Fills the file system of `dir` with one file until it has no space left.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let bytes = vec![0u8; chunk];
        loop {
            match file.write_all(&bytes) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(error) => panic!("cannot fill `{}`: {error}", dir.display()),
            }
        }
    }
    let _ = file.sync_all();
    path
}

async fn readyz(admin: &str) -> (u16, String) {
    let response = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Waits, for at most 10 s, until `/readyz` answers `status`.
async fn readyz_until(admin: &str, status: u16) -> String {
    for _ in 0..1000 {
        let (answered, body) = readyz(admin).await;
        if answered == status {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until /readyz answers {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_backs_deliveries_off_fails_readiness_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("state"), 16 << 20);
    let state = tmpfs.path.clone();
    let api = Api::start(Reply::json(r#"{"n":1}"#)).await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    // Retried every 50 ms, 99 times (the most `retry` lists): for longer
    // than the test runs, so the row never runs out.
    let retry = vec!["\"50ms\""; 99].join(", ");
    let daemon = Daemon::start(config(
        &state,
        &format!(
            "[[target]]\nname = \"receiver\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry = [{retry}]\n\
             [[endpoint]]\nname = \"data\"\nurl = \"{}\"\nevery = \"100ms\"\nfail_after = 0\n",
            receiver.url(),
            api.url()
        ),
    ));
    let address = state.join("admin.addr");
    crate::support::eventually("the admin API listens", || address.exists()).await;
    let admin = format!(
        "http://{}",
        std::fs::read_to_string(&address).unwrap().trim()
    );
    assert_eq!(readyz(&admin).await.0, 200);

    // A change is queued and its attempts fail, each one written down.
    api.wait_for_requests(2).await;
    api.set(Reply::json(r#"{"n":2}"#));
    receiver
        .wait_until(
            Duration::from_secs(10),
            "the change is attempted",
            |hooks| hooks.len() >= 2,
        )
        .await;
    let event_id = receiver.all()[0].id.clone();

    // The disk fills up: the attempts' results cannot be written, nor
    // can the next change.
    let filler = fill(&state);
    let reason = readyz_until(&admin, 503).await;
    assert!(reason.contains("cannot write"), "{reason}");
    api.set(Reply::json(r#"{"n":3}"#));
    let before = receiver.all().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = receiver.all()[before..].to_vec();
    assert!(
        during.len() <= 3,
        "{} attempts in a second while nothing could be recorded",
        during.len()
    );
    assert!(during.iter().all(|hook| hook.id == event_id), "{during:#?}");
    assert_eq!(readyz(&admin).await.0, 503, "still full, still not ready");

    // Space comes back: the daemon recovers without a restart.
    std::fs::remove_file(&filler).unwrap();
    readyz_until(&admin, 200).await;
    receiver.answer(204);
    receiver
        .wait_until(
            Duration::from_secs(10),
            "the change is delivered",
            |hooks| {
                hooks
                    .iter()
                    .any(|hook| hook.id == event_id && hook.answered == 204)
            },
        )
        .await;
    // The change that came while the disk was full is committed now, and
    // so is the next one.
    let delivered = |version: u64| {
        move |hooks: &[crate::support::Webhook]| {
            hooks
                .iter()
                .any(|hook| hook.version() == version && hook.answered == 204)
        }
    };
    receiver
        .wait_until(
            Duration::from_secs(10),
            "the change made while full",
            delivered(3),
        )
        .await;
    api.set(Reply::json(r#"{"n":4}"#));
    receiver
        .wait_until(Duration::from_secs(10), "the next change", delivered(4))
        .await;
    daemon.stop().await;

    // Best-effort order: the retried row and the new one may cross.
    let mut accepted: Vec<u64> = receiver
        .accepted()
        .iter()
        .map(|hook| hook.version())
        .collect();
    accepted.sort();
    assert_eq!(accepted, [2, 3, 4], "each change delivered once");
    let store = Store::open(&state).unwrap();
    assert_eq!(store.snapshot("data").unwrap().unwrap().version, 4);
    assert_eq!(
        store.outbox_len(),
        0,
        "{:#?}",
        store.queued_rows(None).unwrap()
    );
    assert!(store.dead_rows(None).unwrap().is_empty());
}
