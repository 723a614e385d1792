//! MQTT targets: one long-lived connection per target (rumqttc, rustls for
//! `mqtts://`), reconnecting while the dispatcher runs.
//!
//! An attempt publishes its row's event at QoS 1 and succeeds only when the
//! broker's PUBACK came back; a change also republishes the endpoint's
//! retained state, a health event its `failing` state, in the same attempt.
//! rumqttc reports the packet id of each publish as it writes it, in the
//! order the publishes were asked for, and each PUBACK by packet id: that is
//! how an acknowledgement finds its attempt. A broken connection fails every
//! attempt waiting on it (the dispatcher retries them, with the same event
//! ids), and what rumqttc would have resent itself is dropped, so that the
//! order of the packet ids stays the order of the attempts.
//!
//! With a store, the connection speaks for the daemon: its last will and
//! `pollhook/status` say whether pollhook is online, and each time it
//! connects it first publishes the discovery configs and every endpoint's
//! current state, before any event, so that a retained state is never older
//! than the newest change. Without one (`pollhook test`) it only publishes.

pub mod messages;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration,
};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};

use super::Attempt;
use crate::config::{Target, Transport};
use crate::event_type::{
    ENDPOINT_CHANGED, ENDPOINT_FAILING, ENDPOINT_RECOVERED, ITEM_ADDED, ITEM_CHANGED, ITEM_REMOVED,
    ITEMS_CHANGED,
};
use crate::locks::lock;
use crate::store::{OutboxRow, Store};
use messages::Message;
pub use messages::MqttTarget;

/// The largest packet MQTT can carry (its remaining length is 28 bits).
const MAX_PACKET_BYTES: usize = 268_435_455;
/// Reconnection waits: 1 s, doubling to this.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(30);
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Publishes of the announcement in flight at once.
const ANNOUNCE_BATCH: usize = 64;
/// How long `close` waits for `offline` to be acknowledged.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Where the connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    /// Not connected yet since the start: attempts wait for it.
    Connecting,
    /// Connected and announced: attempts publish.
    Up,
    /// The last connection failed or broke: attempts fail at once with why,
    /// while the connection is tried again.
    Down(String),
}

type Ack = oneshot::Sender<Result<(), String>>;

/// The publishes waiting on the broker.
#[derive(Default)]
struct Waiting {
    /// Connected (announced or not): publishes may be queued.
    connected: bool,
    /// Counts connections, so an announcement of an earlier one does not
    /// open a later one.
    generation: u64,
    /// Queued, not yet written: answered in order by rumqttc's packet ids.
    unsent: VecDeque<Ack>,
    /// Written, waiting for their PUBACK.
    unacked: HashMap<u16, Ack>,
}

impl Waiting {
    fn fail_all(&mut self, why: &str) {
        for ack in self
            .unsent
            .drain(..)
            .chain(self.unacked.drain().map(|(_, ack)| ack))
        {
            let _ = ack.send(Err(why.to_string()));
        }
    }
}

struct Shared {
    target: Arc<Target>,
    mqtt: MqttTarget,
    client: AsyncClient,
    waiting: Mutex<Waiting>,
    link: watch::Sender<Link>,
    /// Held from reading a state to queueing it: the broker keeps the
    /// order of one connection's publishes, so the newest state is retained.
    state_order: tokio::sync::Mutex<()>,
    /// `Some` when the connection speaks for the daemon (see the module).
    store: Option<Arc<Store>>,
}

/// A target's connection; clones share it. The connection ends when the
/// last clone is dropped, or with [`Connection::close`].
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    stop: CancellationToken,
    _stop_when_dropped: Arc<DropGuard>,
}

impl Connection {
    /// Starts connecting to the target's broker, in a task of its own.
    /// With a store the connection speaks for the daemon (see the module).
    pub fn open(target: Arc<Target>, mqtt: &MqttTarget, store: Option<Arc<Store>>) -> Connection {
        let options = options(mqtt, target.transport.as_deref(), store.is_some());
        let capacity = target.parallel.saturating_mul(3).max(ANNOUNCE_BATCH * 2);
        let (client, eventloop) = AsyncClient::new(options, capacity);
        let (link, _) = watch::channel(Link::Connecting);
        let shared = Arc::new(Shared {
            target,
            mqtt: mqtt.clone(),
            client,
            waiting: Mutex::new(Waiting::default()),
            link,
            state_order: tokio::sync::Mutex::new(()),
            store,
        });
        let stop = CancellationToken::new();
        tokio::spawn(run(eventloop, shared.clone(), stop.clone()));
        Connection {
            shared,
            stop: stop.clone(),
            _stop_when_dropped: Arc::new(stop.drop_guard()),
        }
    }

    /// Says `offline` (when speaking for the daemon) and disconnects; the
    /// broker then keeps the last will to itself. A connection not up yet
    /// is dropped instead: a DISCONNECT after an `online` could leave
    /// `online` standing, where the broker now sends the last will.
    pub async fn close(&self) {
        if *self.shared.link.borrow() != Link::Up {
            self.stop.cancel();
            return;
        }
        if self.shared.store.is_some()
            && let Ok(ack) = self.shared.queue(&messages::status_message(false))
        {
            let _ = tokio::time::timeout(CLOSE_WAIT, ack).await;
        }
        let _ = self.shared.client.try_disconnect();
    }

    /// Publishes a row's event (and the state it changes), waiting for the
    /// PUBACKs for at most the target's `timeout`.
    pub async fn attempt(&self, row: &OutboxRow) -> Attempt {
        let started = Instant::now();
        let mut attempt = Attempt::starting();
        let target = &self.shared.target;
        match messages::event_message(&self.shared.mqtt, &target.format, &row.event_id, &row.body) {
            Err(error) => {
                attempt.error = Some(format!("cannot publish the event: {error}"));
                attempt.unsendable = true;
            }
            Ok(event) => {
                let published =
                    tokio::time::timeout(target.timeout, self.publish(event, row)).await;
                match published {
                    Ok(Ok(())) => {
                        attempt.acknowledged = true;
                        attempt.response = "PUBACK".to_string();
                    }
                    Ok(Err(error)) => attempt.error = Some(error),
                    Err(_) => {
                        attempt.error = Some(format!(
                            "no PUBACK after {}",
                            humantime::format_duration(target.timeout)
                        ));
                    }
                }
            }
        }
        attempt.duration = started.elapsed();
        attempt
    }

    /// Queues the event, then what it changes, and waits for every PUBACK.
    async fn publish(&self, event: Message, row: &OutboxRow) -> Result<(), String> {
        self.up().await?;
        let mut acks = vec![self.shared.queue(&event)?];
        if let Some(store) = &self.shared.store
            && !row.endpoint.is_empty()
        {
            if messages::changes_state(&row.event_type) {
                let _order = self.shared.state_order.lock().await;
                if let Some(state) = read_state(store, &row.endpoint).await? {
                    acks.push(self.shared.queue(&state)?);
                }
            } else if let Some(failing) = messages::failing_after(&row.event_type) {
                let message = messages::failing_message(&row.endpoint, failing);
                acks.push(self.shared.queue(&message)?);
            }
        }
        for ack in acks {
            ack.await
                .unwrap_or_else(|_| Err("the connection closed".to_string()))?;
        }
        Ok(())
    }

    /// Waits until the connection is up; fails at once while it is down.
    async fn up(&self) -> Result<(), String> {
        let mut link = self.shared.link.subscribe();
        loop {
            match &*link.borrow_and_update() {
                Link::Up => return Ok(()),
                Link::Down(why) => return Err(why.clone()),
                Link::Connecting => {}
            }
            if link.changed().await.is_err() {
                return Err("the connection closed".to_string());
            }
        }
    }
}

impl Shared {
    /// Queues one publish at QoS 1; the receiver answers with its PUBACK.
    fn queue(&self, message: &Message) -> Result<oneshot::Receiver<Result<(), String>>, String> {
        // Checked here: rumqttc would drop the whole connection over it.
        if message.payload.len() + message.topic.len() + 8 > MAX_PACKET_BYTES {
            return Err(format!(
                "the message for `{}` is larger than MQTT allows (256 MiB)",
                message.topic
            ));
        }
        let mut waiting = lock(&self.waiting);
        if !waiting.connected {
            return Err(match &*self.link.borrow() {
                Link::Down(why) => why.clone(),
                _ => "not connected to the broker".to_string(),
            });
        }
        // Under the lock: the order of `unsent` is the order of the queue.
        self.client
            .try_publish(
                message.topic.clone(),
                QoS::AtLeastOnce,
                message.retain,
                message.payload.clone(),
            )
            .map_err(|error| format!("cannot queue the message: {error}"))?;
        let (ack, answer) = oneshot::channel();
        waiting.unsent.push_back(ack);
        Ok(answer)
    }

    /// What a new connection publishes before any event: `online`, then
    /// per endpoint its discovery configs and the states this target keeps
    /// up to date. Opens the connection to attempts when all are
    /// acknowledged; a failure is logged and waits for the next connection.
    async fn announce(self: Arc<Self>, generation: u64) {
        let mut messages = Vec::new();
        if let Some(store) = &self.store {
            let events = &self.target.events;
            let mqtt = &self.mqtt;
            let keeps_state = [
                ENDPOINT_CHANGED,
                ITEM_ADDED,
                ITEM_CHANGED,
                ITEM_REMOVED,
                ITEMS_CHANGED,
            ]
            .iter()
            .any(|kind| events.contains(kind));
            let keeps_failing =
                events.contains(ENDPOINT_FAILING) && events.contains(ENDPOINT_RECOVERED);
            messages.push(messages::status_message(true));
            for endpoint in &mqtt.endpoints {
                if mqtt.homeassistant {
                    messages.extend(messages::discovery_messages(endpoint));
                }
                // An endpoint whose state cannot be read keeps its old one.
                if keeps_failing {
                    match store.failing(endpoint) {
                        Ok(health) => {
                            messages.push(messages::failing_message(endpoint, health.is_some()))
                        }
                        Err(error) => self.state_unread(endpoint, &crate::error_chain(&error)),
                    }
                }
                if keeps_state {
                    match read_state(store, endpoint).await {
                        Ok(state) => messages.extend(state),
                        Err(error) => self.state_unread(endpoint, &error),
                    }
                }
            }
        }
        for batch in messages.chunks(ANNOUNCE_BATCH) {
            let mut acks = Vec::new();
            for message in batch {
                match self.queue(message) {
                    Ok(ack) => acks.push(ack),
                    Err(error) => return self.announce_failed(generation, &error),
                }
            }
            for ack in acks {
                let answer = tokio::time::timeout(self.target.timeout, ack)
                    .await
                    .unwrap_or_else(|_| Ok(Err("no PUBACK in time".to_string())))
                    .unwrap_or_else(|_| Err("the connection closed".to_string()));
                if let Err(error) = answer {
                    return self.announce_failed(generation, &error);
                }
            }
        }
        let waiting = lock(&self.waiting);
        if waiting.connected && waiting.generation == generation {
            info!(target = %self.target.name, "connected to the MQTT broker");
            self.link.send_replace(Link::Up);
        }
    }

    fn state_unread(&self, endpoint: &str, error: &str) {
        warn!(target = %self.target.name, endpoint, error, "cannot publish the endpoint's state");
    }

    /// Attempts fail with why until the next connection announces again.
    fn announce_failed(&self, generation: u64, error: &str) {
        warn!(target = %self.target.name, error, "cannot publish the state and discovery configs; trying again at the next connection");
        let waiting = lock(&self.waiting);
        if waiting.generation == generation {
            self.link.send_replace(Link::Down(format!(
                "cannot announce pollhook on the broker: {error}"
            )));
        }
    }
}

/// An endpoint's current state message, read off the loop's threads; none
/// before its first poll, or when its document is missing or damaged.
async fn read_state(store: &Arc<Store>, endpoint: &str) -> Result<Option<Message>, String> {
    let store = store.clone();
    let endpoint = endpoint.to_string();
    let read = tokio::task::spawn_blocking(move || {
        let Some(snapshot) = store.snapshot(&endpoint)? else {
            return Ok::<_, crate::store::StoreError>(None);
        };
        let document = store.document(&endpoint, snapshot.version)?;
        Ok(document.map(|document| messages::state_message(&endpoint, &document)))
    });
    match read.await {
        Ok(Ok(state)) => Ok(state),
        Ok(Err(error)) => Err(format!(
            "cannot read the endpoint's state: {}",
            crate::error_chain(&error)
        )),
        Err(_) => Err("cannot read the endpoint's state".to_string()),
    }
}

fn options(mqtt: &MqttTarget, transport: Option<&Transport>, for_daemon: bool) -> MqttOptions {
    // `pollhook test` must not take the daemon's session over: a broker
    // drops the older of two connections with one client id.
    let client_id = match for_daemon {
        true => mqtt.client_id.clone(),
        false => format!("{}-test", mqtt.client_id),
    };
    let mut options = MqttOptions::new(client_id, mqtt.host.clone(), mqtt.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(10 * 1024, MAX_PACKET_BYTES)
        .set_inflight(100);
    if let (Some(username), password) = (&mqtt.username, &mqtt.password) {
        options.set_credentials(username.clone(), password.clone().unwrap_or_default());
    }
    if for_daemon {
        options.set_last_will(LastWill::new(
            messages::STATUS_TOPIC,
            messages::OFFLINE,
            QoS::AtLeastOnce,
            true,
        ));
    }
    if mqtt.tls {
        // The files were read at load; one gone since fails the handshake
        // its certificates were for, and says why here.
        let tls = crate::tls::client_config(transport).unwrap_or_else(|error| {
            warn!(broker = %mqtt.host, "{error}");
            crate::tls::default_config()
        });
        options.set_transport(rumqttc::Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            tls,
        ))));
    }
    options
}

/// The connection's task: drives rumqttc's event loop, matches PUBACKs to
/// their publishes, reconnects after a failure (1 s, doubling to 30 s).
async fn run(mut eventloop: EventLoop, shared: Arc<Shared>, stop: CancellationToken) {
    let mut wait = Duration::from_secs(1);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                wait = Duration::from_secs(1);
                let generation = {
                    let mut waiting = lock(&shared.waiting);
                    waiting.connected = true;
                    waiting.generation += 1;
                    waiting.generation
                };
                // Attempts wait while the announcement goes first.
                shared.link.send_replace(Link::Connecting);
                tokio::spawn(shared.clone().announce(generation));
            }
            Ok(Event::Outgoing(Outgoing::Publish(packet_id))) => {
                let mut waiting = lock(&shared.waiting);
                if let Some(ack) = waiting.unsent.pop_front() {
                    waiting.unacked.insert(packet_id, ack);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(puback))) => {
                if let Some(ack) = lock(&shared.waiting).unacked.remove(&puback.pkid) {
                    let _ = ack.send(Ok(()));
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                let why = describe(&error);
                let was_up = {
                    let mut waiting = lock(&shared.waiting);
                    waiting.connected = false;
                    // Whatever rumqttc kept to resend (and what was queued
                    // since) goes: the dispatcher retries those attempts.
                    // So do its buffered events: a stale packet id would
                    // hand a later publish's PUBACK to the wrong attempt.
                    eventloop.clean();
                    eventloop.pending.clear();
                    eventloop.state.events.clear();
                    waiting.fail_all(&why);
                    let was_up = *shared.link.borrow() == Link::Up;
                    shared.link.send_replace(Link::Down(why.clone()));
                    was_up
                };
                if was_up {
                    warn!(target = %shared.target.name, error = %why, "lost the connection to the MQTT broker; reconnecting");
                } else {
                    tracing::debug!(target = %shared.target.name, error = %why, retry_in = ?wait, "cannot connect to the MQTT broker");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(MAX_RECONNECT_WAIT);
            }
        }
    }
    let mut waiting = lock(&shared.waiting);
    waiting.connected = false;
    waiting.fail_all("the connection closed");
}

/// A connection error as one line, naming the broker.
fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection: {code:?}")
        }
        ConnectionError::NetworkTimeout => "connecting to the broker timed out".to_string(),
        other => format!("MQTT connection failed: {}", crate::error_chain(other)),
    }
}
