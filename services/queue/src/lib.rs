//! The Kafka-protocol log, spoken with rskafka: idempotent topic creation, publishing that says
//! when a record is committed, and partition followers that start from an explicit offset.
//!
//! rskafka has no consumer groups: a follower keeps its own offset.

pub mod admin;
pub mod lag;
pub mod producer;
pub mod revocations;
pub mod security;
pub mod sockets;

pub use security::{Mechanism, Sasl, Security};

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rskafka::{
    chrono::{DateTime, Utc},
    client::{
        Client, ClientBuilder,
        error::Error as KafkaError,
        partition::{Compression, OffsetAt, UnknownTopicHandling},
    },
    record::Record,
};

pub use rskafka::client::partition::PartitionClient;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker could not be reached or answered with an error.
    #[error("broker: {0}")]
    Broker(#[from] KafkaError),
    /// A record could not be decoded.
    #[error("undecodable record at {topic}/{partition}@{offset}: {reason}")]
    Decode {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// What is wrong.
        reason: String,
    },
    /// An admin request (topic creation with configs) failed.
    #[error("admin: {0}")]
    Admin(String),
    /// The topic does not exist (yet).
    #[error("topic {0} does not exist")]
    MissingTopic(String),
    /// A broker refused the platform's TLS or SASL credentials, or showed a certificate the
    /// configured CA did not sign: retrying will not help until the settings change.
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn now() -> DateTime<Utc> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Default topic names (ARCHITECTURE.md); a deployment may prefix them.
pub mod topics {
    /// Token revocations, key = subject.
    pub const REVOCATIONS: &str = "sipmba.revocations";
    /// Readings, key = thing.
    pub const TELEMETRY: &str = "sipmba.telemetry";
    /// Queued commands, key = thing.
    pub const COMMANDS: &str = "sipmba.commands";
    /// Changes of command states, key = thing.
    pub const COMMAND_EVENTS: &str = "sipmba.command-events";
}

/// A connection to the log.
#[derive(Clone)]
pub struct Queue {
    client: Arc<Client>,
    prefix: String,
    /// Broker addresses whose connections get `TCP_NODELAY` (see [`sockets`]).
    nodelay: Option<Arc<sockets::Nodelay>>,
    /// The bootstrap brokers (admin requests go to the first that answers).
    brokers: Arc<Vec<String>>,
    /// Retention of the topics this process creates, by name (without the prefix).
    retention: Arc<std::collections::HashMap<String, Duration>>,
    /// Copies of each partition of the topics this process creates (`None`: the broker's
    /// `default.replication.factor`).
    replicas: Option<i16>,
    /// TLS and SASL towards the brokers.
    security: Arc<Security>,
    /// Whether a broker answered the last check (every second).
    answering: Arc<std::sync::atomic::AtomicBool>,
    /// The lag of this process's consumers.
    lag: lag::LagMetrics,
    /// Each topic's retention (ms, `None`: for ever) as the broker reported it.
    retention_seen: Arc<std::sync::Mutex<std::collections::HashMap<String, Option<i64>>>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How long a fetch waits at the end of a partition. Short: some brokers (tansu) do not wake a
/// long poll when a record arrives.
pub const FETCH_WAIT: Duration = Duration::from_millis(50);

/// The longest a reader's fetch waits once its partition has stayed empty: each empty fetch
/// doubles the wait from [`FETCH_WAIT`] up to this, and a record brings it back. An idle platform
/// then asks its broker about each partition about once a second instead of twenty times (on
/// Kafka, which answers a waiting fetch as soon as a record arrives, the longer wait costs
/// nothing; tansu answers after half the wait, without the records that arrived meanwhile).
pub const IDLE_FETCH_WAIT: Duration = Duration::from_secs(1);

/// How rskafka retries a request that failed for a reason that may pass (a broker down, a
/// leader moving): at most a quarter of a second apart, so that a revocation published as the
/// log comes back reaches every service within a second (its publisher and each follower may
/// both be waiting out a retry; rskafka's own default grows the wait to minutes).
fn backoff() -> rskafka::BackoffConfig {
    rskafka::BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(250),
        base: 3.0,
        deadline: None,
    }
}

/// How often the brokers are checked for answers, and how long one may take to answer.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl Queue {
    /// Connects to `brokers` (`host:port`); topic names get `prefix` in front. Connections to
    /// the brokers get `TCP_NODELAY`, and those to a broker that stops answering are cut
    /// ([`sockets`]).
    pub async fn connect(brokers: &[String], prefix: &str) -> Result<Self, QueueError> {
        Self::connect_with(brokers, prefix, true, Security::default()).await
    }

    /// As [`Queue::connect`], with TLS and SASL as `security` says.
    pub async fn connect_secure(
        brokers: &[String],
        prefix: &str,
        security: Security,
    ) -> Result<Self, QueueError> {
        Self::connect_with(brokers, prefix, true, security).await
    }

    /// As [`Queue::connect_secure`], choosing whether to force `TCP_NODELAY` (the benchmark
    /// compares).
    pub async fn connect_with(
        brokers: &[String],
        prefix: &str,
        nodelay: bool,
        security: Security,
    ) -> Result<Self, QueueError> {
        // rskafka retries a refused login for ever: find out first, and say why.
        if security.tls.is_some() || security.sasl.is_some() {
            for broker in brokers {
                let target = admin::Target {
                    addr: broker,
                    security: &security,
                };
                match admin::probe_error(target).await {
                    Ok(()) => break,
                    Err(refused @ QueueError::Refused(_)) => return Err(refused),
                    Err(_) => {}
                }
            }
        }
        let mut builder = ClientBuilder::new(brokers.to_vec())
            .client_id("sipmba")
            .backoff_config(backoff());
        if let Some(tls) = &security.tls {
            builder = builder.tls_config(tls.clone());
        }
        if let Some(sasl) = security.rskafka_sasl() {
            builder = builder.sasl_config(sasl);
        }
        let client = builder.build().await?;
        let queue = Self {
            client: Arc::new(client),
            prefix: prefix.to_owned(),
            nodelay: nodelay.then(|| Arc::new(sockets::Nodelay::new(brokers.to_vec()))),
            brokers: Arc::new(brokers.to_vec()),
            retention: Arc::default(),
            replicas: None,
            security: Arc::new(security),
            answering: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            lag: lag::LagMetrics::default(),
            retention_seen: Arc::default(),
        };
        queue.apply_nodelay();
        tokio::spawn(watch_brokers(
            Arc::downgrade(&queue.client),
            queue.brokers.clone(),
            queue.security.clone(),
            queue.nodelay.clone(),
            queue.answering.clone(),
        ));
        Ok(queue)
    }

    /// `broker` with this queue's TLS and SASL, for [`admin`] requests.
    pub fn target<'a>(&'a self, broker: &'a str) -> admin::Target<'a> {
        admin::Target {
            addr: broker,
            security: &self.security,
        }
    }

    fn apply_nodelay(&self) {
        if let Some(nodelay) = &self.nodelay {
            nodelay.apply();
        }
    }

    /// The full name of a topic.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Topics created from now on by this queue (and its clones) get these retention times
    /// (`retention.ms`); topics not named keep the broker's default.
    pub fn with_retention(mut self, retention: &[(&str, Duration)]) -> Self {
        self.retention = Arc::new(
            retention
                .iter()
                .map(|(name, time)| ((*name).to_owned(), *time))
                .collect(),
        );
        self
    }

    /// Topics created from now on by this queue (and its clones) get `replicas` copies of each
    /// partition; without it, the broker's `default.replication.factor`.
    pub fn with_replicas(mut self, replicas: Option<i16>) -> Self {
        self.replicas = replicas;
        self
    }

    /// Consumer lag is measured against `clock` (tests move it instead of waiting).
    pub fn with_clock(mut self, clock: sipmba_runtime::Clock) -> Self {
        self.lag = lag::LagMetrics::with_clock(clock);
        self
    }

    /// The lag metrics of this queue's consumers, to register once per process.
    pub fn lag_metrics(&self) -> &lag::LagMetrics {
        &self.lag
    }

    /// The lag of `consumer` on `partition` of topic `name`, beside the topic's retention as the
    /// broker reports it (or as this queue creates topics, when no broker says).
    pub async fn lag(
        &self,
        consumer: &'static str,
        name: &str,
        partition: i32,
    ) -> lag::PartitionLag {
        let retention = self.retention_ms(name).await;
        self.lag.partition(consumer, name, partition, retention)
    }

    /// How long the log keeps the records of topic `name` (ms; `None`: for ever).
    pub async fn retention_ms(&self, name: &str) -> Option<i64> {
        if let Some(known) = self
            .retention_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return *known;
        }
        let mut reported = None;
        for broker in self.brokers.iter() {
            if let Ok(configs) = admin::describe_topic(self.target(broker), &self.topic(name)).await
            {
                reported = Some(
                    configs
                        .iter()
                        .find(|(key, _)| key == "retention.ms")
                        .and_then(|(_, value)| value.parse::<i64>().ok())
                        .filter(|ms| *ms >= 0),
                );
                break;
            }
        }
        let retention = match reported {
            Some(retention) => retention,
            // No broker said: what this process creates the topic with, if anything.
            None => self
                .retention
                .get(name)
                .map(|r| i64::try_from(r.as_millis()).unwrap_or(i64::MAX)),
        };
        self.retention_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), retention);
        retention
    }

    /// True while some broker of the cluster answers (as of the last check: every second, each
    /// broker given 3 s): what the health of the services that write to the log reports.
    pub fn answering(&self) -> bool {
        self.answering.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Creates a topic unless it exists (an existing topic keeps its settings).
    pub async fn ensure_topic(&self, name: &str, partitions: i32) -> Result<(), QueueError> {
        let retention = self
            .retention
            .get(name)
            .map(|r| ("retention.ms", r.as_millis().to_string()));
        let configs: Vec<(&str, String)> = retention.into_iter().collect();
        let mut last = QueueError::Admin("no broker configured".into());
        for broker in self.brokers.iter() {
            match admin::create_topic(
                self.target(broker),
                &self.topic(name),
                partitions,
                self.replicas,
                &configs,
            )
            .await
            {
                Ok(()) => return self.wait_visible(name).await,
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits (10 s at most) until the brokers' metadata shows `name`: a Kafka broker answers
    /// CreateTopics once the controller has the topic, a moment before every broker knows it.
    async fn wait_visible(&self, name: &str) -> Result<(), QueueError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(10);
        loop {
            match self.partition_count(name).await {
                Err(QueueError::MissingTopic(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// Creates `name` with `partitions` partitions, or grows it to that many; a topic with more
    /// keeps them (partitions never shrink: keys would move). Returns how many it has now.
    pub async fn ensure_partitions(&self, name: &str, partitions: i32) -> Result<i32, QueueError> {
        self.ensure_topic(name, partitions).await?;
        let now = self.partition_count(name).await?;
        if now >= partitions {
            return Ok(now);
        }
        let mut last = QueueError::Admin("no broker configured".into());
        for broker in self.brokers.iter() {
            match admin::supports(self.target(broker), admin::CREATE_PARTITIONS).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(QueueError::Admin(format!(
                        "{} has {now} partitions and the broker at {broker} cannot add any (no \
                         Kafka CreatePartitions request): grow it with the broker's own tools",
                        self.topic(name)
                    )));
                }
                Err(e) => {
                    last = e;
                    continue;
                }
            }
            match admin::create_partitions(self.target(broker), &self.topic(name), partitions).await
            {
                Ok(()) => {
                    // The new partitions reach every broker's metadata a moment later.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    loop {
                        let now = self.partition_count(name).await?;
                        if now >= partitions || tokio::time::Instant::now() >= deadline {
                            return Ok(now);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// How many partitions a topic has (from fresh metadata).
    pub async fn partition_count(&self, name: &str) -> Result<i32, QueueError> {
        let full = self.topic(name);
        let topics = self.client.list_topics().await?;
        let count = topics
            .iter()
            .find(|t| t.name == full)
            .map_or(0, |t| t.partitions.len());
        match i32::try_from(count) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(QueueError::MissingTopic(full)),
        }
    }

    /// The offset the next record of a partition will get (its high watermark).
    pub async fn end_offset(partition: &PartitionClient) -> Result<i64, QueueError> {
        Ok(partition.get_offset(OffsetAt::Latest).await?)
    }

    /// A client for one partition of a topic.
    pub async fn partition(
        &self,
        name: &str,
        partition: i32,
    ) -> Result<PartitionClient, QueueError> {
        let client = self
            .client
            .partition_client(self.topic(name), partition, UnknownTopicHandling::Retry)
            .await?;
        // The partition's leader may be a connection rskafka has just opened: no Nagle on it
        // from its first request (the periodic pass covers later reconnections).
        self.apply_nodelay();
        Ok(client)
    }

    /// Appends one record; returns its offset once the broker has committed it.
    pub async fn publish(
        &self,
        partition: &PartitionClient,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<i64, QueueError> {
        let record = Record {
            key: Some(key.to_vec()),
            value: Some(value),
            headers: BTreeMap::new(),
            timestamp: now(),
        };
        let offsets = partition
            .produce(vec![record], Compression::NoCompression)
            .await?;
        Ok(offsets.first().copied().unwrap_or(-1))
    }
}

/// While the queue's client lives: keeps `TCP_NODELAY` on the brokers' connections (rskafka
/// reconnects and learns other brokers on its own), and checks every broker of the cluster for an
/// answer (ApiVersions) each [`PROBE_EVERY`], on a connection kept to each ([`admin::Kept`]); the
/// connections to one that does not answer within [`PROBE_TIMEOUT`] are cut, so that rskafka's
/// requests to it fail and are retried where the cluster now leads the partitions.
async fn watch_brokers(
    client: std::sync::Weak<Client>,
    bootstrap: Arc<Vec<String>>,
    security: Arc<Security>,
    nodelay: Option<Arc<sockets::Nodelay>>,
    answering: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut known: Vec<admin::Kept> = bootstrap.iter().map(|b| admin::Kept::new(b)).collect();
    let mut hung: std::collections::HashSet<String> = std::collections::HashSet::new();
    while client.upgrade().is_some() {
        // The brokers of the cluster, as a broker that answers tells them.
        let mut learned = Vec::new();
        for broker in &mut known {
            if hung.contains(broker.addr()) {
                continue;
            }
            let metadata = broker.metadata_within(&security, &[], PROBE_TIMEOUT).await;
            if let Ok(m) = metadata {
                learned = m.brokers.into_iter().map(|(_, addr)| addr).collect();
                break;
            }
        }
        for addr in learned {
            if !known.iter().any(|k| k.addr() == addr) {
                known.push(admin::Kept::new(&addr));
            }
        }
        let security = &security;
        let probes = known.iter_mut().map(|broker| async move {
            let answered = broker.probe(security, PROBE_TIMEOUT).await;
            (broker.addr().to_owned(), answered)
        });
        let answers = futures::future::join_all(probes).await;
        let any = answers.iter().any(|(_, answered)| *answered);
        if answering.swap(any, std::sync::atomic::Ordering::Relaxed) != any {
            if any {
                tracing::info!("the log answers again");
            } else {
                let brokers: Vec<&str> = known.iter().map(admin::Kept::addr).collect();
                tracing::warn!(?brokers, "no broker of the log answers");
            }
        }
        for (broker, answered) in answers {
            if answered {
                if hung.remove(&broker) {
                    tracing::info!(broker, "the broker answers again");
                }
                continue;
            }
            let peers = sockets::resolve(std::slice::from_ref(&broker));
            let cut = sockets::cut(&peers);
            if hung.insert(broker.clone()) || cut > 0 {
                tracing::warn!(
                    broker,
                    connections_cut = cut,
                    "the broker does not answer; its connections are cut so that requests go \
                     where the cluster leads now"
                );
            }
        }
        if let Some(nodelay) = &nodelay {
            nodelay.learn(known.iter().map(|k| k.addr().to_owned()).collect());
            nodelay.apply();
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Reads one partition in order, from an explicit offset (or its earliest record).
pub struct Reader {
    partition: PartitionClient,
    offset: Option<i64>,
    /// The wait of a fetch while records come.
    wait: Duration,
    /// The longest wait once the partition stays empty.
    idle_wait: Duration,
    /// The wait of the next fetch.
    current: Duration,
    /// When the first record of the last fetch was written (ms since the epoch).
    oldest_ms: Option<i64>,
}

/// Where a reader whose position the log no longer holds goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// The log had deleted the records before `to` (past its retention): `skipped` of them were
    /// never read.
    Skipped {
        /// Records deleted unread.
        skipped: u64,
        /// The earliest record the log holds, read next.
        to: i64,
    },
    /// The position `from` was past the partition's end `end` (the topic was made again, or the
    /// log lost committed records): reading goes on from its earliest record `to`.
    Rewound {
        /// The position that was past the end.
        from: i64,
        /// The partition's end.
        end: i64,
        /// The earliest record the log holds, read next.
        to: i64,
    },
    /// The position is in range after all (it moved meanwhile): nothing changed.
    InRange,
}

/// Whether `error` says that the offset fetched is not on the log.
pub fn is_out_of_range(error: &QueueError) -> bool {
    matches!(
        error,
        QueueError::Broker(KafkaError::ServerError {
            protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
            ..
        })
    )
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("topic", &self.partition.topic())
            .field("partition", &self.partition.partition())
            .field("offset", &self.offset)
            .finish()
    }
}

impl Reader {
    /// Starts at `offset`; `None` means the earliest record still on the log.
    pub fn new(partition: PartitionClient, offset: Option<i64>) -> Self {
        Self {
            partition,
            offset,
            wait: FETCH_WAIT,
            idle_wait: IDLE_FETCH_WAIT,
            current: FETCH_WAIT,
            oldest_ms: None,
        }
    }

    /// When the first record of the last fetch was written (ms since the epoch; `None` when it
    /// brought none).
    pub fn oldest_ms(&self) -> Option<i64> {
        self.oldest_ms
    }

    /// The offset read next (`None`: the earliest record on the log).
    pub fn position(&self) -> Option<i64> {
        self.offset
    }

    /// After a fetch failed because its offset is not on the log ([`is_out_of_range`]): moves
    /// to the partition's earliest record, and says what was skipped.
    pub async fn resume_in_range(&mut self) -> Result<Resumed, QueueError> {
        let earliest = self.partition.get_offset(OffsetAt::Earliest).await?;
        let end = self.partition.get_offset(OffsetAt::Latest).await?;
        let at = self.offset.unwrap_or(earliest);
        let resumed = if at < earliest {
            Resumed::Skipped {
                skipped: u64::try_from(earliest - at).unwrap_or(0),
                to: earliest,
            }
        } else if at > end {
            Resumed::Rewound {
                from: at,
                end,
                to: earliest,
            }
        } else {
            return Ok(Resumed::InRange);
        };
        self.offset = Some(earliest);
        self.current = self.wait;
        Ok(resumed)
    }

    /// Waits at most `wait` at the end of the partition while records come (default
    /// [`FETCH_WAIT`]).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self.current = wait;
        self.idle_wait = self.idle_wait.max(wait);
        self
    }

    /// Waits at most `idle_wait` once the partition stays empty (default [`IDLE_FETCH_WAIT`];
    /// the fetch wait itself keeps the wait fixed).
    pub fn with_idle_wait(mut self, idle_wait: Duration) -> Self {
        self.idle_wait = idle_wait.max(self.wait);
        self
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        self.partition.topic()
    }

    /// The partition read.
    pub fn partition(&self) -> i32 {
        self.partition.partition()
    }

    /// The next records (offset and value; records without a value are skipped), waiting at most
    /// the fetch wait at the end of the partition, and the offset to read next and the partition's
    /// end (high watermark) after them.
    pub async fn next(&mut self) -> Result<(Vec<(i64, Vec<u8>)>, i64, i64), QueueError> {
        let start = match self.offset {
            Some(o) => o,
            None => self.partition.get_offset(OffsetAt::Earliest).await?,
        };
        let (records, high_watermark) = self
            .partition
            .fetch_records(
                start,
                1..4_000_000,
                i32::try_from(self.current.as_millis()).unwrap_or(i32::MAX),
            )
            .await?;
        let mut next = start;
        let mut out = Vec::with_capacity(records.len());
        self.oldest_ms = records
            .iter()
            .find(|r| r.offset >= start)
            .map(|r| r.record.timestamp.timestamp_millis());
        for r in records {
            if r.offset < next {
                continue;
            }
            next = r.offset + 1;
            if let Some(value) = r.record.value {
                out.push((r.offset, value));
            }
        }
        self.offset = Some(next);
        self.current = if next == start && next >= high_watermark {
            (self.current * 2).min(self.idle_wait)
        } else {
            self.wait
        };
        Ok((out, next, high_watermark))
    }
}

/// Reads a partition from `offset` on, handing each record's value and offset to `apply`;
/// `caught_up` is called once the follower has reached the end of the partition as it was when
/// it started. Fetches wait up to `idle_wait` once the partition stays empty (see
/// [`IDLE_FETCH_WAIT`]). Retries with backoff while the broker is unreachable; returns when
/// `stop` fires.
pub async fn follow<F, C>(
    partition: PartitionClient,
    offset: Option<i64>,
    idle_wait: Duration,
    mut apply: F,
    caught_up: C,
    stop: impl std::future::Future<Output = ()>,
) where
    F: FnMut(i64, &[u8]),
    C: FnMut(),
{
    follow_stored(
        partition,
        idle_wait,
        None,
        || std::future::ready(Ok::<_, std::convert::Infallible>(offset)),
        |records: Arc<[(i64, Vec<u8>)]>, _next| {
            for (offset, value) in records.iter() {
                apply(*offset, value);
            }
            std::future::ready(Ok(()))
        },
        caught_up,
        stop,
    )
    .await;
}

/// Follows a partition whose position the caller keeps with its work (in its database, in the
/// same transaction): `start` gives the offset to resume from (`None`: the earliest record);
/// `apply` does the work of a batch of records (offset, value) and records `next` as the offset
/// to resume from — it is retried with the same batch until it succeeds, so the position moves
/// only with the work. `caught_up` is called once the end the partition had at start is reached.
/// Fetches wait up to `idle_wait` once the partition stays empty (see [`IDLE_FETCH_WAIT`]).
/// `lag`, when given, follows how far behind the partition's end the work is. A position the log
/// no longer holds (its records deleted past the retention) moves to the earliest record the log
/// has, and the records lost are counted and logged as an error. Retries with backoff while the
/// broker or the store fails; returns when `stop` fires.
pub async fn follow_stored<E, S, A>(
    partition: PartitionClient,
    idle_wait: Duration,
    lag: Option<lag::PartitionLag>,
    mut start: impl FnMut() -> S,
    mut apply: impl FnMut(Arc<[(i64, Vec<u8>)]>, i64) -> A,
    mut caught_up: impl FnMut(),
    stop: impl std::future::Future<Output = ()>,
) where
    E: std::fmt::Display,
    S: std::future::Future<Output = Result<Option<i64>, E>>,
    A: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(stop);
    let topic = partition.topic().to_owned();
    let index = partition.partition();
    let mut pause = Duration::from_millis(100);
    macro_rules! back_off {
        ($what:literal, $error:expr) => {{
            tracing::warn!(topic, partition = index, error = %$error, retry_in_ms = pause.as_millis() as u64, $what);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut stop => return,
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }};
    }
    let offset = loop {
        match start().await {
            Ok(offset) => break offset,
            Err(e) => back_off!("cannot learn where to resume yet", e),
        }
    };
    pause = Duration::from_millis(100);
    let mut reader = Reader::new(partition, offset).with_idle_wait(idle_wait);
    let mut reached_end = false;
    loop {
        let result = tokio::select! {
            r = reader.next() => r,
            () = &mut stop => return,
        };
        let (records, next, high_watermark) = match result {
            Ok(step) => step,
            Err(e) if is_out_of_range(&e) => {
                match reader.resume_in_range().await {
                    Ok(Resumed::Skipped { skipped, to }) => {
                        tracing::error!(
                            topic,
                            partition = index,
                            skipped,
                            resume_at = to,
                            "the log deleted records (past its retention) before they were read: \
                             they are lost to this consumer; reading on from the earliest it holds"
                        );
                        if let Some(lag) = &lag {
                            lag.skipped(skipped);
                        }
                    }
                    Ok(Resumed::Rewound { from, end, to }) => tracing::warn!(
                        topic,
                        partition = index,
                        position = from,
                        end,
                        resume_at = to,
                        "the stored position is past the partition's end (was the topic made \
                         again?): reading from its earliest record"
                    ),
                    Ok(Resumed::InRange) => {}
                    Err(e) => back_off!("cannot read the log", e),
                }
                continue;
            }
            Err(e) => {
                back_off!("cannot read the log", e);
                continue;
            }
        };
        pause = Duration::from_millis(100);
        if let Some(lag) = &lag {
            let position = records.first().map_or(next, |(offset, _)| *offset);
            lag.fetched(position, high_watermark, reader.oldest_ms());
        }
        if !records.is_empty() {
            let records: Arc<[(i64, Vec<u8>)]> = records.into();
            while let Err(e) = apply(records.clone(), next).await {
                back_off!("cannot apply records yet", e);
            }
            pause = Duration::from_millis(100);
        }
        if let Some(lag) = &lag {
            lag.applied(next, high_watermark);
        }
        if !reached_end && next >= high_watermark {
            reached_end = true;
            caught_up();
        }
    }
}
