//! Politeness: at most `per_host` polls in flight to one host, and at least
//! `per_host_spacing` between the starts of two of them, however many
//! endpoints point at it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::locks::lock;

/// The gates of every host polled so far.
#[derive(Debug)]
pub struct Hosts {
    per_host: usize,
    spacing: Option<Duration>,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

#[derive(Debug)]
struct Gate {
    permits: Arc<Semaphore>,
    /// The earliest time the next request may start.
    next_start: Mutex<Instant>,
}

impl Hosts {
    pub fn new(per_host: usize, spacing: Option<Duration>) -> Hosts {
        Hosts {
            per_host: per_host.max(1),
            spacing,
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until a request to `url`'s host may start; the request may run
    /// while the returned permit is held.
    pub async fn enter(&self, url: &url::Url) -> OwnedSemaphorePermit {
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        let gate = lock(&self.gates)
            .entry(host)
            .or_insert_with(|| {
                Arc::new(Gate {
                    permits: Arc::new(Semaphore::new(self.per_host)),
                    next_start: Mutex::new(Instant::now()),
                })
            })
            .clone();
        let permit = gate
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        if let Some(spacing) = self.spacing {
            // Each caller takes the next free slot, then waits for it.
            let start = {
                let mut next_start = lock(&gate.next_start);
                let start = (*next_start).max(Instant::now());
                *next_start = start + spacing;
                start
            };
            tokio::time::sleep_until(start).await;
        }
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> url::Url {
        text.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_host_is_limited_and_spaced_others_are_not() {
        let hosts = Arc::new(Hosts::new(2, Some(Duration::from_secs(1))));
        let started = Instant::now();
        let first = hosts.enter(&url("http://a.example/1")).await;
        let second = hosts.enter(&url("http://a.example:80/2")).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1), "spaced by 1 s");
        // Another host has its own gate.
        let other = hosts.enter(&url("http://b.example/")).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));

        // A third request to a.example waits for a permit.
        let waiting = tokio::spawn({
            let hosts = hosts.clone();
            async move {
                let _permit = hosts.enter(&url("http://a.example/3")).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "two are in flight already");
        drop(first);
        let entered = waiting.await.unwrap();
        // It got the permit when `first` was released, at 1 s + 5 s; its
        // spacing slot (2 s) had long passed.
        assert_eq!(entered - started, Duration::from_secs(6));
        drop((second, other));
    }
}
