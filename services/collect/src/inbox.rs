//! The command inbox: every Collect replica rebuilds the pending commands of every thing from the
//! log (`sipmba.commands`, minus what `sipmba.command-events` says is finished), so a command is
//! delivered at the thing's next session through whichever replica it reaches. State changes are
//! published as `CommandEvent` records; a command is pending until one of them is terminal.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prost::Message;
use sipmba_proto::v1 as pb;
use sipmba_queue::{
    PartitionClient, Queue, QueueError,
    producer::{BatchLimits, Producer, partition_for},
    topics,
};
use sipmba_runtime::{
    Shutdown,
    ids::{now_ms, timestamp_from_ms, timestamp_to_ms},
};
use tokio::sync::Notify;
use uuid::Uuid;

/// A command waiting for its thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCommand {
    /// The command's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// When it was accepted (ms since the epoch).
    pub created_ms: i64,
    /// When it stops being deliverable (ms since the epoch).
    pub expires_ms: i64,
}

impl PendingCommand {
    /// The frame that carries it to the thing.
    pub fn delivery(&self) -> pb::session_response::CommandDelivery {
        pb::session_response::CommandDelivery {
            id: Some(pb::CommandId {
                value: self.id.to_string(),
            }),
            name: self.name.clone(),
            payload: self.payload.clone(),
            created: Some(timestamp_from_ms(self.created_ms)),
            expires: Some(timestamp_from_ms(self.expires_ms)),
        }
    }
}

/// What the inbox knows of a command a thing acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Pending and deliverable.
    Pending,
    /// Pending, but past its expiry.
    Expired,
    /// Not a pending command of this thing (unknown, finished, or another thing's).
    Unknown,
}

#[derive(Default)]
struct State {
    /// Pending commands of each thing, in log order.
    things: HashMap<Uuid, BTreeMap<i64, PendingCommand>>,
    /// Command id → (thing, offset).
    index: HashMap<Uuid, (Uuid, i64)>,
    /// Commands whose terminal event arrived before the command itself, with when it arrived.
    finished_early: HashMap<Uuid, Instant>,
    /// Commands this replica has reported EXPIRED (not to report them twice).
    expiring: HashSet<Uuid>,
    /// The live sessions of this replica that take commands: thing → (session, wake-up).
    sessions: HashMap<Uuid, (u64, Arc<Notify>)>,
}

struct Inner {
    state: Mutex<State>,
    events: Producer,
    /// One client per partition of the command topic, to learn its end.
    partitions: Vec<PartitionClient>,
    /// The next offset to read in each partition of the command topic.
    positions: Vec<AtomicI64>,
    /// Followers that have not yet reached the end of their partition as it was at start.
    behind: AtomicUsize,
    instance: String,
    /// Added to a command's expiry before this replica reports it EXPIRED, so that the replicas
    /// rarely report the same command.
    expiry_jitter_ms: i64,
    ready: AtomicBool,
    undecodable: prometheus_client::metrics::counter::Counter,
    pending: prometheus_client::metrics::gauge::Gauge,
    outcomes: prometheus_client::metrics::family::Family<
        OutcomeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

/// The command inbox of one Collect replica. Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

fn uuid_of(value: Option<&str>) -> Option<Uuid> {
    value.and_then(|v| Uuid::parse_str(v).ok())
}

fn is_terminal(state: i32) -> bool {
    matches!(
        pb::CommandState::try_from(state),
        Ok(pb::CommandState::Acked | pb::CommandState::Failed | pb::CommandState::Expired)
    )
}

impl Inbox {
    /// Creates the command topics if missing (`partitions` each), follows them from their start,
    /// and reports expired commands, until `shutdown`. [`Inbox::ready`] turns true once
    /// everything on the log at start has been read.
    pub async fn start(
        queue: &Queue,
        partitions: i32,
        instance: &str,
        shutdown: Shutdown,
    ) -> Result<Self, QueueError> {
        queue.ensure_topic(topics::COMMANDS, partitions).await?;
        let events = Producer::new(
            queue,
            topics::COMMAND_EVENTS,
            partitions,
            BatchLimits {
                linger: Duration::from_millis(1),
                ..BatchLimits::default()
            },
        )
        .await?;
        let command_partitions = queue.partition_count(topics::COMMANDS).await?;
        let event_partitions = queue.partition_count(topics::COMMAND_EVENTS).await?;
        let mut clients = Vec::new();
        for p in 0..command_partitions {
            clients.push(queue.partition(topics::COMMANDS, p).await?);
        }
        let inbox = Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                events,
                positions: clients.iter().map(|_| AtomicI64::new(0)).collect(),
                partitions: clients,
                behind: AtomicUsize::new(
                    usize::try_from(command_partitions + event_partitions).unwrap_or(0),
                ),
                instance: instance.to_owned(),
                expiry_jitter_ms: i64::from(Uuid::new_v4().as_bytes()[0]) * 8,
                ready: AtomicBool::new(false),
                undecodable: Default::default(),
                pending: Default::default(),
                outcomes: Default::default(),
            }),
        };
        for p in 0..command_partitions {
            let (me, stop) = (inbox.clone(), shutdown.clone());
            let client = queue.partition(topics::COMMANDS, p).await?;
            tokio::spawn(async move {
                let index = usize::try_from(p).unwrap_or(0);
                sipmba_queue::follow(
                    client,
                    None,
                    sipmba_queue::IDLE_FETCH_WAIT,
                    |offset, value| me.apply_command(index, offset, value),
                    || me.caught_up(),
                    stop.wait(),
                )
                .await;
            });
        }
        for p in 0..event_partitions {
            let (me, stop) = (inbox.clone(), shutdown.clone());
            let client = queue.partition(topics::COMMAND_EVENTS, p).await?;
            tokio::spawn(async move {
                sipmba_queue::follow(
                    client,
                    None,
                    sipmba_queue::IDLE_FETCH_WAIT,
                    |_, value| me.apply_event(value),
                    || me.caught_up(),
                    stop.wait(),
                )
                .await;
            });
        }
        tokio::spawn(inbox.clone().sweep(shutdown));
        Ok(inbox)
    }

    /// True once the commands and events on the log at start have been read.
    pub fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Registers the inbox's metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        // Every outcome from zero, so that the first of each counts in `rate()`.
        for state in [
            pb::CommandState::Acked,
            pb::CommandState::Failed,
            pb::CommandState::Expired,
        ] {
            let _ = self.inner.outcomes.get_or_create(&OutcomeLabels {
                state: outcome_label(state),
            });
        }
        registry.register(
            "collect_commands_pending",
            "Commands waiting for their thing, as this replica knows them",
            self.inner.pending.clone(),
        );
        registry.register(
            "collect_command_records_undecodable",
            "Records of the command topics skipped because they could not be decoded",
            self.inner.undecodable.clone(),
        );
        registry.register(
            "collect_command_outcomes",
            "Commands that reached a final state here, committed to the log, by state (acked, failed, expired)",
            self.inner.outcomes.clone(),
        );
    }

    fn caught_up(&self) {
        if self.inner.behind.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.ready.store(true, Ordering::Relaxed);
            tracing::info!("command inbox caught up with the log");
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply_command(&self, partition: usize, offset: i64, value: &[u8]) {
        if let Some(position) = self.inner.positions.get(partition) {
            position.fetch_max(offset + 1, Ordering::AcqRel);
        }
        let record = match pb::CommandRecord::decode(value) {
            Ok(r) => r,
            Err(e) => {
                self.inner.undecodable.inc();
                tracing::warn!(partition, offset, error = %e, "skipping an undecodable command record");
                return;
            }
        };
        let (Some(id), Some(thing)) = (
            uuid_of(record.id.as_ref().map(|i| i.value.as_str())),
            uuid_of(record.thing.as_ref().map(|t| t.value.as_str())),
        ) else {
            self.inner.undecodable.inc();
            tracing::warn!(
                partition,
                offset,
                "skipping a command record without valid ids"
            );
            return;
        };
        let ms = |t: Option<&prost_types::Timestamp>| {
            t.and_then(|t| timestamp_to_ms("time", t).ok()).unwrap_or(0)
        };
        let command = PendingCommand {
            id,
            name: record.name,
            payload: record.payload,
            created_ms: ms(record.created.as_ref()),
            expires_ms: ms(record.expires.as_ref()),
        };
        let wake = {
            let mut state = self.state();
            if state.finished_early.remove(&id).is_some() || state.index.contains_key(&id) {
                return;
            }
            state.index.insert(id, (thing, offset));
            state
                .things
                .entry(thing)
                .or_default()
                .insert(offset, command);
            self.inner.pending.set(state.index.len() as i64);
            state.sessions.get(&thing).map(|(_, n)| n.clone())
        };
        if let Some(wake) = wake {
            wake.notify_one();
        }
    }

    fn apply_event(&self, value: &[u8]) {
        let Ok(event) = pb::CommandEvent::decode(value) else {
            self.inner.undecodable.inc();
            tracing::warn!("skipping an undecodable command event");
            return;
        };
        if !is_terminal(event.state) {
            return;
        }
        let Some(id) = uuid_of(event.command.as_ref().map(|c| c.value.as_str())) else {
            self.inner.undecodable.inc();
            return;
        };
        let mut state = self.state();
        if !self.remove(&mut state, id) {
            let now = Instant::now();
            if state.finished_early.len() > 10_000 {
                // Terminal events of commands no longer on the log are never matched.
                state
                    .finished_early
                    .retain(|_, at| now.duration_since(*at) < Duration::from_secs(600));
            }
            state.finished_early.insert(id, now);
        }
    }

    fn remove(&self, state: &mut State, id: Uuid) -> bool {
        let Some((thing, offset)) = state.index.remove(&id) else {
            return false;
        };
        state.expiring.remove(&id);
        if let Some(commands) = state.things.get_mut(&thing) {
            commands.remove(&offset);
            if commands.is_empty() {
                state.things.remove(&thing);
            }
        }
        self.inner.pending.set(state.index.len() as i64);
        true
    }

    /// Waits (at most `limit`) until this replica has read every command queued for `thing`
    /// before now, so that a session never misses one that Control has already confirmed.
    pub async fn sync(&self, thing: Uuid, limit: Duration) {
        let count = i32::try_from(self.inner.partitions.len()).unwrap_or(1);
        let index =
            usize::try_from(partition_for(thing.to_string().as_bytes(), count)).unwrap_or(0);
        let (Some(client), Some(position)) = (
            self.inner.partitions.get(index),
            self.inner.positions.get(index),
        ) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + limit;
        let Ok(Ok(end)) = tokio::time::timeout_at(deadline, Queue::end_offset(client)).await else {
            tracing::warn!(%thing, "cannot learn the end of the command log; delivering what is known");
            return;
        };
        while position.load(Ordering::Acquire) < end {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(%thing, "the command inbox lags the log; delivering what is known");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Registers a live session of `thing`; the returned notifier wakes it when a command arrives.
    pub fn subscribe(&self, thing: Uuid, session: u64) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.state()
            .sessions
            .insert(thing, (session, notify.clone()));
        notify
    }

    /// Forgets the session registered by [`Inbox::subscribe`] (unless a newer one replaced it).
    pub fn unsubscribe(&self, thing: Uuid, session: u64) {
        let mut state = self.state();
        if state
            .sessions
            .get(&thing)
            .is_some_and(|(s, _)| *s == session)
        {
            state.sessions.remove(&thing);
        }
    }

    /// Up to `n` deliverable commands of `thing` not in `skip`, oldest first; the expired ones met
    /// on the way are reported EXPIRED.
    pub fn next_for(&self, thing: Uuid, skip: &HashSet<Uuid>, n: usize) -> Vec<PendingCommand> {
        let now = now_ms();
        let (ready, expired) = {
            let state = self.state();
            let mut ready = Vec::new();
            let mut expired = Vec::new();
            for command in state
                .things
                .get(&thing)
                .into_iter()
                .flat_map(|c| c.values())
            {
                if command.expires_ms <= now {
                    if !state.expiring.contains(&command.id) {
                        expired.push(command.id);
                    }
                } else if ready.len() < n && !skip.contains(&command.id) {
                    ready.push(command.clone());
                }
            }
            (ready, expired)
        };
        for id in expired {
            self.report_expired(thing, id);
        }
        ready
    }

    /// Whether `command` is a pending command of `thing`.
    pub fn lookup(&self, thing: Uuid, command: Uuid) -> Lookup {
        let state = self.state();
        match state.index.get(&command) {
            Some((owner, offset)) if *owner == thing => {
                let expired = state
                    .things
                    .get(&thing)
                    .and_then(|c| c.get(offset))
                    .is_none_or(|c| c.expires_ms <= now_ms());
                if expired {
                    Lookup::Expired
                } else {
                    Lookup::Pending
                }
            }
            _ => Lookup::Unknown,
        }
    }

    fn event(&self, thing: Uuid, command: Uuid, state: pb::CommandState, detail: &str) -> Vec<u8> {
        pb::CommandEvent {
            command: Some(pb::CommandId {
                value: command.to_string(),
            }),
            thing: Some(pb::ThingId {
                value: thing.to_string(),
            }),
            state: state as i32,
            time: Some(timestamp_from_ms(now_ms())),
            detail: detail.to_owned(),
            collect_instance: self.inner.instance.clone(),
        }
        .encode_to_vec()
    }

    /// Records that `command` went down a session (not waited for: a lost DELIVERED event only
    /// leaves the status at QUEUED until the acknowledgement).
    pub async fn delivered(&self, thing: Uuid, command: Uuid) {
        let value = self.event(thing, command, pb::CommandState::Delivered, "");
        let commit = self
            .inner
            .events
            .send(thing.to_string().as_bytes(), value)
            .await;
        tokio::spawn(async move {
            if !matches!(commit.await, Ok(Ok(_))) {
                tracing::warn!(%command, "a DELIVERED event was not committed");
            }
        });
    }

    /// Records the thing's outcome for `command` and waits until the log has committed it; the
    /// command is then no longer pending.
    pub async fn finish(
        &self,
        thing: Uuid,
        command: Uuid,
        state: pb::CommandState,
        detail: &str,
    ) -> Result<(), String> {
        let value = self.event(thing, command, state, detail);
        let commit = self
            .inner
            .events
            .send(thing.to_string().as_bytes(), value)
            .await;
        match commit.await {
            Ok(Ok(_)) => {
                self.inner
                    .outcomes
                    .get_or_create(&OutcomeLabels {
                        state: outcome_label(state),
                    })
                    .inc();
                let mut s = self.state();
                self.remove(&mut s, command);
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the event producer stopped".into()),
        }
    }

    fn report_expired(&self, thing: Uuid, command: Uuid) {
        if !self.state().expiring.insert(command) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me
                .finish(thing, command, pb::CommandState::Expired, "")
                .await
            {
                tracing::warn!(%command, error = %e, "cannot report a command EXPIRED yet");
                me.state().expiring.remove(&command);
            }
        });
    }

    /// Reports the commands that expired without anybody asking for them.
    async fn sweep(self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.clone().wait() => return,
            }
            if !self.ready() {
                continue;
            }
            let cutoff = now_ms() - self.inner.expiry_jitter_ms;
            let expired: Vec<(Uuid, Uuid)> = {
                let state = self.state();
                state
                    .things
                    .iter()
                    .flat_map(|(thing, commands)| {
                        commands
                            .values()
                            .filter(|c| c.expires_ms <= cutoff && !state.expiring.contains(&c.id))
                            .map(|c| (*thing, c.id))
                    })
                    .take(1000)
                    .collect()
            };
            for (thing, command) in expired {
                self.report_expired(thing, command);
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabels {
    state: &'static str,
}

/// The bounded label of a final state.
fn outcome_label(state: pb::CommandState) -> &'static str {
    match state {
        pb::CommandState::Acked => "acked",
        pb::CommandState::Failed => "failed",
        pb::CommandState::Expired => "expired",
        _ => "other",
    }
}
