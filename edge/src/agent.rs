//! The agent's cycle: sample on schedule into the outbox; wake at the upload interval, open a
//! Session with Collect, upload what the outbox holds, take pending commands, run them (a command
//! seen before is acknowledged with its recorded outcome, not run again), acknowledge, say
//! goodbye, sleep. While the platform is unreachable, retries back off exponentially with jitter.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rand::Rng;
use sipmba_proto::v1::{self as pb, session_request, session_response};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::{
    config::Config,
    credentials::{CredentialStore, Credentials},
    hardware::{SensorSlot, Switch, open_switch},
    outbox::{Appended, Outbox},
};

/// The agent's version, reported to Collect and to the operator.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Commands this agent takes at once in a session.
const MAX_COMMANDS: u32 = 8;
/// Batches sent before their Ack.
const IN_FLIGHT: usize = 4;
/// An agent with its own client secret renews its token when less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(12 * 60);
/// A session ends once nothing has happened for this long after the outbox was drained.
const QUIET: Duration = Duration::from_millis(300);

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Collect could not be reached or the stream broke.
    #[error("collect unreachable: {0}")]
    Unreachable(String),
    /// Collect refused the session (the status says why).
    #[error("collect refused the session: {code:?}: {message}")]
    Refused {
        /// The gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The outbox failed.
    #[error("{0}")]
    Outbox(#[from] crate::outbox::OutboxError),
    /// The credentials are unusable.
    #[error("credentials: {0}")]
    Credentials(String),
}

/// What a session did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionReport {
    /// The highest seq Collect acknowledged.
    pub acked_seq: u64,
    /// Readings sent (resends included).
    pub sent: u64,
    /// Commands received.
    pub commands: u64,
    /// Of those, run now (the rest had run before).
    pub executed: u64,
}

/// What the operator may ask about.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// When the last session finished (Unix seconds).
    pub last_upload: Option<i64>,
    /// When the agent next wakes (Unix seconds); none while awake.
    pub next_wake: Option<i64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// The outputs commands switch, by name.
pub struct Outputs {
    switches: HashMap<String, Box<dyn Switch>>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs")
            .field("names", &self.switches.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Outputs {
    /// Opens the configured outputs; one that cannot be opened is left out, with a message.
    pub fn open(config: &Config) -> Self {
        let mut switches = HashMap::new();
        for (i, output) in config.outputs.iter().enumerate() {
            match open_switch(output) {
                Ok(switch) => {
                    switches.insert(output.name.clone(), switch);
                }
                Err(e) => {
                    tracing::error!(output = i, name = %output.name, error = %e, "output unavailable; its commands will fail");
                }
            }
        }
        Self { switches }
    }

    /// Outputs given directly (tests, other HALs).
    pub fn from_switches(switches: HashMap<String, Box<dyn Switch>>) -> Self {
        Self { switches }
    }

    /// Whether `name` is on.
    pub fn is_on(&self, name: &str) -> Option<bool> {
        self.switches.get(name).map(|s| s.is_on())
    }

    /// The commands this agent takes, for error messages.
    fn known(&self) -> String {
        let mut names: Vec<String> = self
            .switches
            .keys()
            .flat_map(|o| ["on", "off", "toggle"].map(|a| format!("{o}.{a}")))
            .collect();
        names.sort();
        names.push("agent.ping".into());
        names.join(", ")
    }

    /// Runs command `name`: `agent.ping`, or `<output>.on|off|toggle`. The outcome and detail.
    pub fn execute(&mut self, name: &str, _payload: &[u8]) -> (pb::CommandOutcome, String) {
        if name == "agent.ping" {
            return (
                pb::CommandOutcome::Acked,
                format!("pong from sipmba-edge {VERSION}"),
            );
        }
        // `Some(None)` toggles.
        let parsed = name.rsplit_once('.').and_then(|(output, action)| {
            let on = match action {
                "on" => Some(true),
                "off" => Some(false),
                "toggle" => None,
                _ => return None,
            };
            self.switches.contains_key(output).then_some((output, on))
        });
        let Some((output, on)) = parsed else {
            return (
                pb::CommandOutcome::Failed,
                format!(
                    "unknown command {name:?}; this agent takes {}",
                    self.known()
                ),
            );
        };
        let Some(switch) = self.switches.get_mut(output) else {
            return (pb::CommandOutcome::Failed, format!("no output {output:?}"));
        };
        let on = on.unwrap_or(!switch.is_on());
        match switch.set(on) {
            Ok(()) => (
                pb::CommandOutcome::Acked,
                format!("{output} is {}", if on { "on" } else { "off" }),
            ),
            Err(e) => (pb::CommandOutcome::Failed, e),
        }
    }
}

/// The running agent's parts. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    /// The outbox.
    pub outbox: Outbox,
    /// The credentials.
    pub credentials: CredentialStore,
    outputs: Arc<Mutex<Outputs>>,
    sensors: Arc<Mutex<Vec<SensorSlot>>>,
    status: Arc<Mutex<Status>>,
    config: Arc<Config>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").finish_non_exhaustive()
    }
}

impl Agent {
    /// Opens the outbox, the credentials, the sensors and the outputs of `config`.
    pub fn open(config: Config, outputs: Outputs) -> Result<Self, String> {
        let outbox = Outbox::open(
            &config.state_dir,
            config.outbox_max_readings,
            config.when_full,
        )
        .map_err(|e| e.to_string())?;
        let credentials = CredentialStore::open(&config.state_dir)?;
        let sensors = config
            .sensors
            .iter()
            .cloned()
            .map(SensorSlot::new)
            .collect();
        Ok(Self {
            outbox,
            credentials,
            outputs: Arc::new(Mutex::new(outputs)),
            sensors: Arc::new(Mutex::new(sensors)),
            status: Arc::new(Mutex::new(Status::default())),
            config: Arc::new(config),
        })
    }

    /// The status for the operator.
    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether output `name` is on.
    pub fn output_is_on(&self, name: &str) -> Option<bool> {
        self.outputs.lock().ok().and_then(|o| o.is_on(name))
    }

    /// Reads every sensor once and commits the reading to the outbox.
    pub async fn sample(&self) -> Result<Option<Appended>, String> {
        let sensors = self.sensors.clone();
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || {
            let device_time = now_timestamp();
            let metrics: Vec<pb::Metric> = match sensors.lock() {
                Ok(mut slots) => slots
                    .iter_mut()
                    .enumerate()
                    .flat_map(|(i, slot)| slot.read(i))
                    .collect(),
                Err(_) => Vec::new(),
            };
            if metrics.is_empty() {
                return Ok(None);
            }
            let appended = outbox
                .append(device_time, metrics, Vec::new())
                .map_err(|e| e.to_string())?;
            match appended {
                Appended::StoredDroppingOldest { dropped, .. } => {
                    tracing::warn!(dropped, "outbox full: dropped the oldest unsent readings (outbox.when_full = drop-oldest)");
                }
                Appended::Dropped => {
                    tracing::warn!("outbox full: dropped the new reading (outbox.when_full = drop-newest)");
                }
                Appended::Stored(_) => {}
            }
            Ok(Some(appended))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Samples every `sample_interval` until the task is dropped.
    pub async fn sampler(self) {
        let mut tick = tokio::time::interval(self.config.sample_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sample().await {
                tracing::error!(error = %e, "cannot store a reading");
            }
        }
    }

    /// Uploads at every wake, with backoff while the platform is unreachable, until the task is
    /// dropped. Waits for credentials first.
    pub async fn uploader(self) {
        let mut credentials = self.credentials.subscribe();
        let mut backoff = Duration::from_secs(1);
        loop {
            let Some(creds) = credentials.borrow_and_update().clone() else {
                tracing::info!("not provisioned yet: waiting for credentials");
                if credentials.changed().await.is_err() {
                    return;
                }
                continue;
            };
            // An agent holding its own client secret renews a token that is about to expire.
            let creds = match self.renew_if_due(&creds).await {
                Ok(Some(renewed)) => renewed,
                Ok(None) => creds,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the access token; trying with the current one");
                    creds
                }
            };
            let wait = match self.session(&creds).await {
                Ok(report) => {
                    backoff = Duration::from_secs(1);
                    tracing::info!(
                        acked_seq = report.acked_seq,
                        sent = report.sent,
                        commands = report.commands,
                        executed = report.executed,
                        outbox = self.outbox.depth().unwrap_or(0),
                        "session done; sleeping"
                    );
                    if let Ok(mut s) = self.status.lock() {
                        s.last_upload = Some(now_timestamp().seconds);
                    }
                    self.config.upload_interval
                }
                Err(e) => {
                    let wait = jittered(backoff);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, outbox = self.outbox.depth().unwrap_or(0), "upload failed; readings stay in the outbox");
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    wait
                }
            };
            if let Ok(mut s) = self.status.lock() {
                s.next_wake = Some(
                    now_timestamp().seconds + i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                );
            }
            // New credentials (a rotation, another thing) wake the agent at once.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = credentials.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            if let Ok(mut s) = self.status.lock() {
                s.next_wake = None;
            }
        }
    }

    /// With a client secret and token endpoint, gets a new token by `client_credentials` when
    /// the current one has less than a fifth of an hour left (or is past its expiry); stores and
    /// returns the renewed credentials.
    pub async fn renew_if_due(
        &self,
        creds: &Arc<Credentials>,
    ) -> Result<Option<Arc<Credentials>>, SessionError> {
        let (Some(secret), Some(endpoint)) = (&creds.client_secret, &creds.token_endpoint) else {
            return Ok(None);
        };
        let expires = creds.token_expires.as_ref().map_or(0, |t| t.seconds);
        if expires - now_timestamp().seconds > RENEW_BEFORE.as_secs() as i64 {
            return Ok(None);
        }
        let channel = connect_to(endpoint, creds.ca_certificate_pem.as_deref()).await?;
        let answer = pb::token_service_client::TokenServiceClient::new(channel)
            .token(pb::TokenRequest {
                grant: Some(pb::token_request::Grant::ClientCredentials(
                    pb::ClientCredentialsGrant {
                        client_id: creds.client_id.clone(),
                        client_secret: secret.clone(),
                        scope: String::new(),
                    },
                )),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let lifetime = answer
            .expires_in
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(3600));
        let mut renewed = (**creds).clone();
        renewed.access_token = answer.access_token;
        renewed.token_expires = Some(prost_types::Timestamp::from(SystemTime::now() + lifetime));
        self.credentials
            .replace(renewed)
            .map_err(SessionError::Credentials)?;
        tracing::info!(
            expires_in_s = lifetime.as_secs(),
            "renewed the access token"
        );
        Ok(self.credentials.get())
    }

    /// One session with Collect.
    pub async fn session(&self, creds: &Credentials) -> Result<SessionReport, SessionError> {
        let channel = connect(creds).await?;
        let (tx, rx) = mpsc::channel::<pb::SessionRequest>(IN_FLIGHT + MAX_COMMANDS as usize + 2);
        let send = |frame: session_request::Frame| pb::SessionRequest { frame: Some(frame) };
        tx.send(send(session_request::Frame::Hello(
            session_request::Hello {
                agent_version: VERSION.into(),
                last_acked_seq: Some(self.outbox.acked_seq()?),
                max_commands: MAX_COMMANDS,
            },
        )))
        .await
        .map_err(|_| SessionError::Unreachable("the session closed at once".into()))?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let bearer = format!("Bearer {}", creds.access_token)
            .parse()
            .map_err(|_| SessionError::Credentials("the access token is not ASCII".into()))?;
        request.metadata_mut().insert("authorization", bearer);
        let mut inbound = pb::collect_service_client::CollectServiceClient::new(channel)
            .session(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let welcome = match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
            Ok(Ok(Some(pb::SessionResponse {
                frame: Some(session_response::Frame::Welcome(w)),
            }))) => w,
            Ok(Ok(_)) => {
                return Err(SessionError::Unreachable(
                    "collect answered Hello without a Welcome".into(),
                ));
            }
            Ok(Err(status)) => return Err(status_error(status)),
            Err(_) => return Err(SessionError::Unreachable("no Welcome within 30 s".into())),
        };
        let outbox = self.outbox.clone();
        let acked = welcome.acked_seq;
        blocking(move || outbox.ack(acked)).await?;
        let mut report = SessionReport {
            acked_seq: welcome.acked_seq,
            ..Default::default()
        };
        let batch_size = usize::try_from(welcome.max_batch_readings.clamp(1, 500)).unwrap_or(100);
        let mut sent_up_to = welcome.acked_seq;
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut paused_until: Option<tokio::time::Instant> = None;
        let mut goodbye = false;
        loop {
            // Fill the window from the outbox.
            let paused = paused_until.is_some_and(|t| tokio::time::Instant::now() < t);
            if !paused && !goodbye {
                paused_until = None;
                while in_flight.len() < IN_FLIGHT {
                    let outbox = self.outbox.clone();
                    let after = sent_up_to;
                    let readings = blocking(move || outbox.pending(after, batch_size)).await?;
                    let Some(last) = readings.last().map(|r| r.seq) else {
                        break;
                    };
                    report.sent += readings.len() as u64;
                    let batch = session_request::TelemetryBatch { readings };
                    if tx
                        .send(send(session_request::Frame::Telemetry(batch)))
                        .await
                        .is_err()
                    {
                        return Err(SessionError::Unreachable("the session broke".into()));
                    }
                    sent_up_to = last;
                    in_flight.push_back(last);
                }
            }
            let wait = if goodbye {
                Duration::from_secs(30)
            } else if let Some(until) = paused_until {
                until.saturating_duration_since(tokio::time::Instant::now())
            } else if in_flight.is_empty() {
                QUIET
            } else {
                Duration::from_secs(30)
            };
            let message = match tokio::time::timeout(wait, inbound.message()).await {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => {
                    if goodbye {
                        return Ok(report);
                    }
                    return Err(SessionError::Unreachable(
                        "collect ended the session early".into(),
                    ));
                }
                Ok(Err(status)) => return Err(status_error(status)),
                Err(_) if paused_until.is_some() => continue,
                Err(_) if in_flight.is_empty() && !goodbye => {
                    // Drained and quiet: say goodbye, then read the final frames.
                    goodbye = true;
                    let _ = tx
                        .send(send(session_request::Frame::Goodbye(
                            session_request::Goodbye {},
                        )))
                        .await;
                    continue;
                }
                Err(_) => {
                    return Err(SessionError::Unreachable(
                        "collect stopped answering".into(),
                    ));
                }
            };
            match message.frame {
                Some(session_response::Frame::Ack(ack)) => {
                    let outbox = self.outbox.clone();
                    let seq = ack.acked_seq;
                    blocking(move || outbox.ack(seq)).await?;
                    report.acked_seq = report.acked_seq.max(ack.acked_seq);
                    while in_flight.front().is_some_and(|s| *s <= ack.acked_seq) {
                        in_flight.pop_front();
                    }
                }
                Some(session_response::Frame::Command(command)) => {
                    report.commands += 1;
                    let (ack, ran) = self.handle_command(command).await?;
                    report.executed += u64::from(ran);
                    let _ = tx.send(send(session_request::Frame::CommandAck(ack))).await;
                }
                Some(session_response::Frame::RetryAfter(r)) => {
                    let d = r
                        .retry_after
                        .and_then(|d| Duration::try_from(d).ok())
                        .unwrap_or(Duration::from_secs(1));
                    tracing::info!(retry_in_ms = d.as_millis() as u64, reason = %r.reason, "collect asks to slow down");
                    paused_until = Some(tokio::time::Instant::now() + d);
                    // The batch was not committed: resend from the last acknowledged reading.
                    sent_up_to = report.acked_seq;
                    in_flight.clear();
                }
                Some(session_response::Frame::Closing(c)) => {
                    tracing::info!(reason = %c.reason, "collect closes the session");
                    goodbye = true;
                }
                Some(session_response::Frame::Welcome(_)) | None => {}
            }
        }
    }

    /// Runs a delivered command once: one seen before (also before a restart) gets its recorded
    /// outcome again. Returns the acknowledgement to send and whether the command ran now.
    pub async fn handle_command(
        &self,
        command: session_response::CommandDelivery,
    ) -> Result<(session_request::CommandAck, bool), SessionError> {
        let id = command.id.clone().unwrap_or_default().value;
        let outbox = self.outbox.clone();
        let seen_id = id.clone();
        if let Some(ack) = blocking(move || outbox.executed(&seen_id)).await? {
            tracing::info!(command = %id, "command delivered again: not run twice");
            return Ok((ack, false));
        }
        let expired = command
            .expires
            .as_ref()
            .is_some_and(|e| e.seconds < now_timestamp().seconds);
        let (outcome, detail) = if expired {
            (
                pb::CommandOutcome::Failed,
                "expired before the thing woke".to_owned(),
            )
        } else {
            let outputs = self.outputs.clone();
            let name = command.name.clone();
            let payload = command.payload.clone();
            tokio::task::spawn_blocking(move || match outputs.lock() {
                Ok(mut o) => o.execute(&name, &payload),
                Err(_) => (pb::CommandOutcome::Failed, "outputs unavailable".into()),
            })
            .await
            .unwrap_or((pb::CommandOutcome::Failed, "the command crashed".into()))
        };
        tracing::info!(command = %id, name = %command.name, ?outcome, %detail, "command run");
        let ack = session_request::CommandAck {
            command: command.id,
            outcome: outcome as i32,
            detail,
            executed_at: Some(now_timestamp()),
        };
        let outbox = self.outbox.clone();
        let record = ack.clone();
        blocking(move || outbox.record_executed(&id, &record, now_ms())).await?;
        Ok((ack, true))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::outbox::OutboxError> + Send + 'static,
) -> Result<T, SessionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SessionError::Unreachable(format!("outbox task: {e}")))?
        .map_err(SessionError::from)
}

fn status_error(status: tonic::Status) -> SessionError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            SessionError::Unreachable(status.message().to_owned())
        }
        code => SessionError::Refused {
            code,
            message: status.message().to_owned(),
        },
    }
}

/// `base` ± 50 %, so that many agents do not retry in step.
pub fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

/// A channel to Collect: TLS verified against the provisioned CA for `https://`.
async fn connect(creds: &Credentials) -> Result<tonic::transport::Channel, SessionError> {
    connect_to(&creds.collect_endpoint, creds.ca_certificate_pem.as_deref()).await
}

/// A channel to a platform endpoint (Collect, sso): TLS verified against `ca` for `https://`.
async fn connect_to(
    url: &str,
    ca: Option<&str>,
) -> Result<tonic::transport::Channel, SessionError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| SessionError::Credentials(format!("endpoint {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let Some(ca) = ca else {
            return Err(SessionError::Credentials(format!(
                "the https endpoint {url} needs the platform CA (ca_certificate_pem) from provisioning"
            )));
        };
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .map_err(|e| SessionError::Credentials(format!("platform CA: {e}")))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| SessionError::Unreachable(format!("{url}: {e}")))
}
