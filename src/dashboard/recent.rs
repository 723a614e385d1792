//! The last events of each endpoint, as they were announced (the live
//! stream), so that an endpoint's page can show them with their delivery
//! state. Bounded: [`PER_ENDPOINT`] each, ids and types only.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::locks::lock;
use crate::status::LiveEvent;

/// Events kept per endpoint.
pub const PER_ENDPOINT: usize = 20;

/// One announced event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    pub id: String,
    pub kind: String,
    pub at_ms: u64,
}

/// The last events by endpoint, newest first.
#[derive(Debug, Default)]
pub struct Recent(Mutex<HashMap<String, VecDeque<Announced>>>);

impl Recent {
    pub fn add(&self, endpoint: &str, event: Announced) {
        let mut by_endpoint = lock(&self.0);
        let events = by_endpoint.entry(endpoint.to_string()).or_default();
        events.push_front(event);
        events.truncate(PER_ENDPOINT);
    }

    pub fn of(&self, endpoint: &str) -> Vec<Announced> {
        lock(&self.0)
            .get(endpoint)
            .map(|events| events.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Keeps `recent` from the live stream until `shutdown`. A reader that
/// fell behind skips what it missed rather than slowing the daemon.
pub async fn keep(
    recent: Arc<Recent>,
    mut live: broadcast::Receiver<Arc<LiveEvent>>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = live.recv() => event,
        };
        match event {
            Ok(event) => recent.add(
                &event.endpoint,
                Announced {
                    id: event.id.clone(),
                    kind: event.kind.clone(),
                    at_ms: crate::clock::now_ms(),
                },
            ),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_keeps_its_newest_events() {
        let recent = Recent::default();
        for n in 0..PER_ENDPOINT + 5 {
            let event = Announced {
                id: format!("msg_{n}"),
                kind: "endpoint.changed".into(),
                at_ms: n as u64,
            };
            recent.add("a", event);
        }
        let kept = recent.of("a");
        assert_eq!(kept.len(), PER_ENDPOINT);
        assert_eq!(kept[0].id, format!("msg_{}", PER_ENDPOINT + 4));
        assert!(recent.of("b").is_empty());
    }
}
