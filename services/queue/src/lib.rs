//! The Kafka-protocol log, spoken with rskafka: idempotent topic creation, publishing that says
//! when a record is committed, and partition followers that start from an explicit offset.
//!
//! rskafka has no consumer groups: a follower keeps its own offset.

pub mod admin;
pub mod nodelay;
pub mod producer;
pub mod revocations;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rskafka::{
    chrono::{DateTime, Utc},
    client::{
        Client, ClientBuilder,
        error::{Error as KafkaError, ProtocolError},
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
    /// Broker addresses whose connections get `TCP_NODELAY` (see [`nodelay`]).
    nodelay_peers: Option<Arc<Vec<std::net::SocketAddr>>>,
    /// The bootstrap brokers (admin requests go to the first that answers).
    brokers: Arc<Vec<String>>,
    /// Retention of the topics this process creates, by name (without the prefix).
    retention: Arc<std::collections::HashMap<String, Duration>>,
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

impl Queue {
    /// Connects to `brokers` (`host:port`); topic names get `prefix` in front. Connections to
    /// the brokers get `TCP_NODELAY` ([`nodelay`]).
    pub async fn connect(brokers: &[String], prefix: &str) -> Result<Self, QueueError> {
        Self::connect_with(brokers, prefix, true).await
    }

    /// As [`Queue::connect`], choosing whether to force `TCP_NODELAY` (the benchmark compares).
    pub async fn connect_with(
        brokers: &[String],
        prefix: &str,
        nodelay: bool,
    ) -> Result<Self, QueueError> {
        let client = ClientBuilder::new(brokers.to_vec())
            .client_id("sipmba")
            .build()
            .await?;
        let queue = Self {
            client: Arc::new(client),
            prefix: prefix.to_owned(),
            nodelay_peers: nodelay.then(|| Arc::new(nodelay::resolve(brokers))),
            brokers: Arc::new(brokers.to_vec()),
            retention: Arc::default(),
        };
        queue.apply_nodelay();
        if let Some(peers) = &queue.nodelay_peers {
            // rskafka reconnects (and learns other brokers) on its own: keep up with it.
            let (client, peers) = (Arc::downgrade(&queue.client), peers.clone());
            tokio::spawn(async move {
                while client.upgrade().is_some() {
                    nodelay::force(&peers);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
        }
        Ok(queue)
    }

    fn apply_nodelay(&self) {
        if let Some(peers) = &self.nodelay_peers {
            nodelay::force(peers);
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

    /// Creates a topic unless it exists (an existing topic keeps its settings).
    pub async fn ensure_topic(&self, name: &str, partitions: i32) -> Result<(), QueueError> {
        if let Some(retention) = self.retention.get(name) {
            let ms = retention.as_millis().to_string();
            let mut last = QueueError::Admin("no broker configured".into());
            for broker in self.brokers.iter() {
                match admin::create_topic(
                    broker,
                    &self.topic(name),
                    partitions,
                    &[("retention.ms", ms.clone())],
                )
                .await
                {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            return Err(last);
        }
        let controller = self.client.controller_client()?;
        match controller
            .create_topic(self.topic(name), partitions, 1, 5_000)
            .await
        {
            Ok(()) => Ok(()),
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
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
            match admin::supports(broker, admin::CREATE_PARTITIONS).await {
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
            match admin::create_partitions(broker, &self.topic(name), partitions).await {
                Ok(()) => return self.partition_count(name).await,
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

/// Reads one partition in order, from an explicit offset (or its earliest record).
pub struct Reader {
    partition: PartitionClient,
    offset: Option<i64>,
    wait: Duration,
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
        }
    }

    /// Waits at most `wait` at the end of the partition (default [`FETCH_WAIT`]).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
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
                i32::try_from(self.wait.as_millis()).unwrap_or(i32::MAX),
            )
            .await?;
        let mut next = start;
        let mut out = Vec::with_capacity(records.len());
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
        Ok((out, next, high_watermark))
    }
}

/// Reads a partition from `offset` on, handing each record's value and offset to `apply`;
/// `caught_up` is called once the follower has reached the end of the partition as it was when
/// it started. Retries with backoff while the broker is unreachable; returns when `stop` fires.
pub async fn follow<F, C>(
    partition: PartitionClient,
    offset: Option<i64>,
    mut apply: F,
    caught_up: C,
    stop: impl std::future::Future<Output = ()>,
) where
    F: FnMut(i64, &[u8]),
    C: FnMut(),
{
    follow_stored(
        partition,
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
/// Retries with backoff while the broker or the store fails; returns when `stop` fires.
pub async fn follow_stored<E, S, A>(
    partition: PartitionClient,
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
    let mut reader = Reader::new(partition, offset);
    let mut reached_end = false;
    loop {
        let result = tokio::select! {
            r = reader.next() => r,
            () = &mut stop => return,
        };
        let (records, next, high_watermark) = match result {
            Ok(step) => step,
            Err(e) => {
                back_off!("cannot read the log", e);
                continue;
            }
        };
        pause = Duration::from_millis(100);
        if !records.is_empty() {
            let records: Arc<[(i64, Vec<u8>)]> = records.into();
            while let Err(e) = apply(records.clone(), next).await {
                back_off!("cannot apply records yet", e);
            }
            pause = Duration::from_millis(100);
        }
        if !reached_end && next >= high_watermark {
            reached_end = true;
            caught_up();
        }
    }
}
