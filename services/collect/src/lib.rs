//! Collect: things stream their readings over gRPC; a reading is acknowledged only once the
//! Kafka-protocol log has committed it, so an acknowledged reading is never lost, and the thing
//! resends everything else. Pending commands go down the same stream (see [`inbox`]), and the
//! thing's acknowledgements of them come back up.

pub mod entity;
mod grpc;
pub mod inbox;
pub mod migration;
mod session;
pub mod settings;
pub mod store;
pub mod validate;

pub use migration::migrate;

pub use settings::Settings;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt as _;
use prost::Message;
use session::{CommandSession, GROUP_BATCHES, Recording, recorded, wake};
use sipmba_auth::{Access, Kind, Principal, Verifier, scopes};
use sipmba_proto::v1::{self as pb, session_request, session_response};
use sipmba_queue::producer::Producer;
use sipmba_runtime::{ServiceError, ServiceResult, Shutdown, ids::timestamp_from_ms};
use store::AckStore;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use uuid::Uuid;

/// Default name of the telemetry topic.
pub const TELEMETRY_TOPIC: &str = sipmba_queue::topics::TELEMETRY;

/// How the telemetry producer gathers records: a session's readings arrive in groups already,
/// and what arrives while a partition's produce request is in flight makes its next request, so
/// nothing lingers — any linger only adds to every acknowledgement's latency (measured with
/// `table2` at 20,000 msg/s: a 1 ms linger made the produce 3.5 ms at p50 against 2.2 without).
pub fn telemetry_batch_limits() -> sipmba_queue::producer::BatchLimits {
    sipmba_queue::producer::BatchLimits {
        linger: std::time::Duration::ZERO,
        ..Default::default()
    }
}

/// What each Collect method needs.
pub fn access_policy() -> Vec<(&'static str, Access)> {
    vec![
        (
            "/sipmba.v1.CollectService/Session",
            Access::Scope(scopes::TELEMETRY_WRITE),
        ),
        (
            "/sipmba.v1.CollectService/Publish",
            Access::Scope(scopes::TELEMETRY_WRITE),
        ),
    ]
}

struct Inner {
    producer: Producer,
    acks: AckStore,
    verifier: Verifier,
    limits: Settings,
    instance: String,
    shutdown: Shutdown,
    /// The live session of each thing: a newer one closes the older.
    sessions: Mutex<HashMap<Uuid, (u64, watch::Sender<bool>)>>,
    next_session: std::sync::atomic::AtomicU64,
    /// Publish rate of each thing.
    rate: sipmba_runtime::ratelimit::RateLimiter,
    metrics: CollectMetrics,
    /// Distinguishes this process's session ids from those of its previous runs.
    boot: String,
    /// Pending commands; without it sessions deliver none.
    inbox: Option<inbox::Inbox>,
}

/// Collect's own metrics (no per-thing labels: the fleet is unbounded).
#[derive(Clone)]
struct CollectMetrics {
    /// Time for the log to commit a group of readings.
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Time to record a committed group's position.
    record_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Readings committed to the log.
    committed: prometheus_client::metrics::counter::Counter,
    /// Resent readings dropped as duplicates.
    duplicates: prometheus_client::metrics::counter::Counter,
    /// Batches refused by the rate limit.
    rate_limited: prometheus_client::metrics::counter::Counter,
    /// Live sessions.
    sessions: prometheus_client::metrics::gauge::Gauge,
}

impl Default for CollectMetrics {
    fn default() -> Self {
        let seconds = || {
            prometheus_client::metrics::histogram::Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        };
        Self {
            commit_seconds: seconds(),
            record_seconds: seconds(),
            committed: Default::default(),
            duplicates: Default::default(),
            rate_limited: Default::default(),
            sessions: Default::default(),
        }
    }
}

/// The Collect service. Cheap to clone.
#[derive(Clone)]
pub struct Collect {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Collect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collect")
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

fn thing_of(principal: &Principal) -> ServiceResult<Uuid> {
    if principal.kind != Kind::Thing {
        return Err(ServiceError::PermissionDenied(format!(
            "only things publish telemetry; this is a {} token",
            principal.kind
        )));
    }
    Ok(principal.subject)
}

impl Collect {
    /// Collect over `producer` (the telemetry topic), `acks` and the process's `verifier` (for
    /// revocations in the middle of a session).
    pub fn new(
        producer: Producer,
        acks: AckStore,
        verifier: Verifier,
        limits: Settings,
        instance: &str,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                producer,
                acks,
                verifier,
                limits,
                instance: instance.to_owned(),
                shutdown,
                sessions: Mutex::new(HashMap::new()),
                next_session: std::sync::atomic::AtomicU64::new(1),
                rate: sipmba_runtime::ratelimit::RateLimiter::new(
                    limits.readings_per_second,
                    limits.burst_readings,
                ),
                metrics: CollectMetrics::default(),
                boot: Uuid::new_v4().simple().to_string()[..8].to_owned(),
                inbox: None,
            }),
        }
    }

    /// Delivers the commands of `inbox` on sessions. Call before the service is cloned.
    pub fn with_inbox(mut self, inbox: inbox::Inbox) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.inbox = Some(inbox),
            None => tracing::error!("with_inbox called on a shared Collect; commands stay off"),
        }
        self
    }

    /// Registers the service, its access rules and its database with `server`.
    pub fn register(&self, server: &mut sipmba_runtime::Server) {
        let m = self.inner.metrics.clone();
        let inbox = self.inner.inbox.clone();
        if let Some(inbox) = &inbox {
            // A replica that has not read the command log yet would miss pending commands.
            let inbox = inbox.clone();
            server.requires(Arc::new(move || {
                let ready = inbox.ready();
                Box::pin(async move { ready })
            }));
        }
        server.metrics(move |registry| {
            if let Some(inbox) = &inbox {
                inbox.register_metrics(registry);
            }
            registry.register(
                "collect_readings_committed",
                "Readings committed to the log",
                m.committed,
            );
            registry.register(
                "collect_readings_duplicate",
                "Resent readings dropped as already committed",
                m.duplicates,
            );
            registry.register(
                "collect_batches_rate_limited",
                "Batches refused by the per-thing rate limit",
                m.rate_limited,
            );
            registry.register(
                "collect_commit_seconds",
                "Time for the log to commit a group of readings",
                m.commit_seconds,
            );
            registry.register(
                "collect_record_seconds",
                "Time to record a committed group's acknowledged position",
                m.record_seconds,
            );
            registry.register(
                "collect_sessions",
                "Live thing sessions on this instance",
                m.sessions,
            );
        });
        server
            .add_service(pb::collect_service_server::CollectServiceServer::new(
                self.clone(),
            ))
            .access(access_policy())
            .requires_database(self.inner.acks.db().clone());
    }

    /// Commits `readings` (already validated) for `thing`; returns the seq every reading up to
    /// which is now committed or was before. The caller records that position.
    async fn commit(
        &self,
        thing: Uuid,
        readings: Vec<pb::Reading>,
        acked: u64,
    ) -> ServiceResult<(u64, u64)> {
        let key = thing.to_string();
        let received = Some(timestamp_from_ms(sipmba_runtime::ids::now_ms()));
        let batch_len = readings.len() as u64;
        let (highest, fresh) = validate::unacked(readings, acked);
        let mut record = pb::TelemetryRecord {
            thing: Some(pb::ThingId { value: key.clone() }),
            reading: None,
            received_time: received,
            collect_instance: self.inner.instance.clone(),
        };
        let mut values = Vec::with_capacity(fresh.len());
        for reading in fresh {
            record.reading = Some(reading);
            values.push(record.encode_to_vec());
        }
        let accepted = values.len() as u64;
        self.inner.metrics.duplicates.inc_by(batch_len - accepted);
        if !values.is_empty() {
            // One produce for the whole group, in order, in the thing's partition.
            let started = std::time::Instant::now();
            let commit = self.inner.producer.send_many(key.as_bytes(), values).await;
            let committed = commit.await;
            self.inner
                .metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            match committed {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(ServiceError::Unavailable(format!(
                        "the log did not commit: {e}"
                    )));
                }
                Err(_) => return Err(ServiceError::Unavailable("the producer stopped".into())),
            }
        }
        self.inner.metrics.committed.inc_by(accepted);
        Ok((highest, accepted))
    }

    /// Takes `n` readings from `thing`'s rate budget, or says when to retry.
    fn take_budget(&self, thing: Uuid, n: usize) -> Result<(), Duration> {
        let result = self
            .inner
            .rate
            .take(thing, u32::try_from(n).unwrap_or(u32::MAX));
        if result.is_err() {
            self.inner.metrics.rate_limited.inc();
        }
        result
    }

    fn check_token(&self, principal: &Principal) -> Result<(), Status> {
        self.inner
            .verifier
            .still_valid(principal)
            .map_err(|lapsed| lapsed.status("during the session"))
    }

    async fn run_session(
        self,
        principal: Principal,
        thing: Uuid,
        mut inbound: Streaming<pb::SessionRequest>,
        tx: mpsc::Sender<Result<pb::SessionResponse, Status>>,
    ) {
        let frame = |f| Ok(pb::SessionResponse { frame: Some(f) });
        let hello = match inbound.message().await {
            Ok(Some(pb::SessionRequest {
                frame: Some(session_request::Frame::Hello(hello)),
            })) => hello,
            Ok(_) => {
                let _ = tx
                    .send(Err(Status::failed_precondition(
                        "the first frame of a session must be Hello",
                    )))
                    .await;
                return;
            }
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let id = self
            .inner
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (close_tx, mut closed) = watch::channel(false);
        let full = {
            let mut sessions = self
                .inner
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let full =
                !sessions.contains_key(&thing) && sessions.len() >= self.inner.limits.max_sessions;
            if !full && let Some((_, older)) = sessions.insert(thing, (id, close_tx)) {
                let _ = older.send(true);
            }
            self.inner.metrics.sessions.set(sessions.len() as i64);
            full
        };
        if full {
            let _ = tx
                .send(Err(sipmba_runtime::exhausted(
                    "this Collect instance serves its maximum of sessions; retry in 5 s, possibly on another replica",
                    Duration::from_secs(5),
                )))
                .await;
            return;
        }
        let session_id = format!("{}-{}-{id}", self.inner.instance, self.inner.boot);
        let mut acked = match self.inner.acks.claim(thing, &session_id).await {
            Ok(acked) => acked,
            Err(e) => {
                let _ = tx.send(Err(Status::from(e))).await;
                self.unregister(thing, id);
                return;
            }
        };
        let limits = self.inner.limits;
        let welcome = session_response::Frame::Welcome(session_response::Welcome {
            thing: Some(pb::ThingId {
                value: thing.to_string(),
            }),
            session_id: session_id.clone(),
            max_batch_readings: limits.max_batch_readings,
            max_reading_bytes: limits.max_reading_bytes,
            acked_seq: acked,
        });
        if tx.send(frame(welcome)).await.is_err() {
            self.unregister(thing, id);
            return;
        }
        let mut commands = self.command_session(&principal, thing, id, &hello).await;
        if let Some(c) = commands.as_mut()
            && !c.deliver(&tx).await
        {
            self.unregister(thing, id);
            return;
        }
        let until_expiry = Duration::from_secs(
            u64::try_from(principal.expires_at - sipmba_auth::signing::unix_now()).unwrap_or(0),
        );
        let expiry = tokio::time::sleep(until_expiry);
        tokio::pin!(expiry);
        // Order is checked within the session; resent readings below `acked` are duplicates.
        let mut previous = 0;
        let mut paused_until: Option<tokio::time::Instant> = None;
        let wake_on = commands.as_ref().map(|c| c.wake.clone());
        // A frame read while gathering a group commit, to be handled next.
        let mut deferred: Option<Result<Option<pb::SessionRequest>, Status>> = None;
        // The position of the last committed group, being recorded while the next group is
        // produced; its Ack goes out once it is recorded.
        let mut recording: Option<Recording> = None;
        let mut goodbye = false;
        let ack = |seq| {
            frame(session_response::Frame::Ack(session_response::Ack {
                acked_seq: seq,
            }))
        };
        let end: Result<(), Status> = loop {
            let message = if let Some(message) = deferred.take() {
                message
            } else {
                tokio::select! {
                m = inbound.message() => m,
                _ = closed.changed() => {
                    let _ = tx.send(Ok(session::replaced())).await;
                    break Ok(());
                }
                () = self.inner.shutdown.clone().wait() => {
                    let closing = session_response::Frame::Closing(session_response::Closing {
                        reason: "the server is shutting down; reconnect later".into(),
                    });
                    let _ = tx.send(frame(closing)).await;
                    break Ok(());
                }
                () = &mut expiry => break Err(Status::unauthenticated("the access token expired during the session")),
                recorded = recorded(recording.as_mut()), if recording.is_some() => {
                    recording = None;
                    match recorded {
                        Ok(settled) => {
                            if !session::answer(settled, &tx).await {
                                break Ok(());
                            }
                        }
                        Err(status) => break Err(status),
                    }
                    continue;
                }
                () = wake(wake_on.as_deref()) => {
                    if let Some(c) = commands.as_mut() && !c.deliver(&tx).await {
                        break Ok(());
                    }
                    continue;
                }
                }
            };
            let request = match message {
                Ok(Some(request)) => request,
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            };
            if let Err(status) = self.check_token(&principal) {
                break Err(status);
            }
            match request.frame {
                Some(session_request::Frame::Telemetry(batch)) => {
                    if let Some(until) = paused_until
                        && tokio::time::Instant::now() < until
                    {
                        let wait = until.saturating_duration_since(tokio::time::Instant::now());
                        break Err(sipmba_runtime::exhausted(
                            &format!(
                                "telemetry sent during a RetryAfter pause; wait {} ms before sending again",
                                wait.as_millis()
                            ),
                            wait,
                        ));
                    }
                    let last = match validate::batch(&batch.readings, previous, &limits) {
                        Ok(last) => last,
                        Err(e) => break Err(Status::from(e)),
                    };
                    if let Err(wait) = self.take_budget(thing, batch.readings.len()) {
                        // Not committed: the thing resends this batch after the pause.
                        paused_until = Some(tokio::time::Instant::now() + wait);
                        let retry =
                            session_response::Frame::RetryAfter(session_response::RetryAfter {
                                retry_after: Some(prost_types::Duration {
                                    seconds: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                                    nanos: i32::try_from(wait.subsec_nanos()).unwrap_or(0),
                                }),
                                reason: format!(
                                    "over the rate of {} readings per second for one thing",
                                    limits.readings_per_second
                                ),
                            });
                        if tx.send(frame(retry)).await.is_err() {
                            break Ok(());
                        }
                        continue;
                    }
                    // Group commit: batches that have already arrived join this one, so a thing
                    // sending many small batches costs one commit and one position update.
                    let mut last = last;
                    let mut readings = batch.readings;
                    let group_limit = limits.max_batch_readings as usize * GROUP_BATCHES;
                    while readings.len() < group_limit {
                        let Some(next) = inbound.message().now_or_never() else {
                            break;
                        };
                        let more = match next {
                            Ok(Some(pb::SessionRequest {
                                frame: Some(session_request::Frame::Telemetry(more)),
                            })) => more,
                            other => {
                                deferred = Some(other);
                                break;
                            }
                        };
                        let more_last = match validate::batch(&more.readings, last, &limits) {
                            Ok(l) => l,
                            Err(e) => {
                                // What came before is committed first; then the session ends.
                                deferred = Some(Err(Status::from(e)));
                                break;
                            }
                        };
                        if self.take_budget(thing, more.readings.len()).is_err() {
                            // Handled on its own next: it gets the RetryAfter.
                            deferred = Some(Ok(Some(pb::SessionRequest {
                                frame: Some(session_request::Frame::Telemetry(more)),
                            })));
                            break;
                        }
                        last = more_last;
                        readings.extend(more.readings);
                    }
                    previous = last;
                    match self.commit(thing, readings, acked).await {
                        Ok((highest, _)) => {
                            // Acks go out in order: the previous group's first.
                            if let Some(mut previous) = recording.take() {
                                match recorded(Some(&mut previous)).await {
                                    Ok(settled) => {
                                        if !session::answer(settled, &tx).await {
                                            break Ok(());
                                        }
                                    }
                                    Err(status) => break Err(status),
                                }
                            }
                            if highest > acked {
                                // Recorded before the Ack: Welcome never shows less than was
                                // acknowledged (a thing that lost its outbox numbers from it).
                                // Recorded only while this is the thing's live session: a newer
                                // one, on this replica or another, ends this one. The next group
                                // is produced meanwhile.
                                let acks = self.inner.acks.clone();
                                let session_id = session_id.clone();
                                let took = self.inner.metrics.record_seconds.clone();
                                recording = Some(tokio::spawn(async move {
                                    let started = std::time::Instant::now();
                                    let outcome = acks.record(thing, &session_id, highest).await;
                                    took.observe(started.elapsed().as_secs_f64());
                                    Ok((highest, outcome?))
                                }));
                                acked = highest;
                            } else if tx.send(ack(acked)).await.is_err() {
                                break Ok(());
                            }
                        }
                        Err(e) => break Err(Status::from(e)),
                    }
                }
                Some(session_request::Frame::CommandAck(ack)) => {
                    let Some(c) = commands.as_mut() else {
                        tracing::debug!(%thing, "command ack on a session without commands; ignored");
                        continue;
                    };
                    if let Err(status) = c.acknowledge(&ack).await {
                        break Err(status);
                    }
                    if !c.deliver(&tx).await {
                        break Ok(());
                    }
                }
                Some(session_request::Frame::Goodbye(_)) => {
                    // Answered after the last position is recorded (below).
                    goodbye = true;
                    break Ok(());
                }
                Some(session_request::Frame::Hello(_)) => {
                    break Err(Status::failed_precondition(
                        "Hello is sent once, as the first frame",
                    ));
                }
                None => break Err(Status::invalid_argument("a frame without content")),
            }
        };
        // Whatever ended the session, a committed group's position is recorded, and acknowledged
        // if the thing still listens (a Goodbye is answered with the final Ack).
        if let Some(mut last) = recording.take()
            && let Ok(settled) = recorded(Some(&mut last)).await
        {
            session::answer(settled, &tx).await;
        } else if goodbye {
            let _ = tx.send(ack(acked)).await;
        }
        if let Err(status) = end {
            tracing::debug!(%thing, code = ?status.code(), "session ended with an error");
            let _ = tx.send(Err(status)).await;
        }
        if let Some(c) = &commands {
            c.inbox.unsubscribe(thing, id);
        }
        self.unregister(thing, id);
    }

    /// The command side of a session, when the thing takes commands (scope `commands:read`,
    /// `Hello.max_commands` > 0) and this Collect has an inbox.
    async fn command_session(
        &self,
        principal: &Principal,
        thing: Uuid,
        session: u64,
        hello: &session_request::Hello,
    ) -> Option<CommandSession> {
        let inbox = self.inner.inbox.clone()?;
        if hello.max_commands == 0 || !principal.has_scope(scopes::COMMANDS_READ) {
            return None;
        }
        let wake = inbox.subscribe(thing, session);
        inbox.sync(thing, Duration::from_secs(3)).await;
        Some(CommandSession {
            inbox,
            thing,
            wake,
            window: usize::try_from(hello.max_commands.min(self.inner.limits.max_commands))
                .unwrap_or(1),
            sent: HashSet::new(),
            outstanding: HashSet::new(),
        })
    }

    fn unregister(&self, thing: Uuid, id: u64) {
        let mut sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if sessions.get(&thing).is_some_and(|(live, _)| *live == id) {
            sessions.remove(&thing);
        }
        self.inner.metrics.sessions.set(sessions.len() as i64);
    }
}
