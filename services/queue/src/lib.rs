//! The Kafka-protocol log, spoken with rskafka: idempotent topic creation, publishing that says
//! when a record is committed, and partition followers that start from an explicit offset.
//!
//! rskafka has no consumer groups: a follower keeps its own offset.

pub mod nodelay;
pub mod producer;
pub mod revocations;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rskafka::{
    chrono::{DateTime, Utc},
    client::{
        Client, ClientBuilder,
        error::{Error as KafkaError, ProtocolError},
        partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling},
    },
    record::Record,
};

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
}

/// A connection to the log.
#[derive(Clone)]
pub struct Queue {
    client: Arc<Client>,
    prefix: String,
    /// Broker addresses whose connections get `TCP_NODELAY` (see [`nodelay`]).
    nodelay_peers: Option<Arc<Vec<std::net::SocketAddr>>>,
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

    /// Creates a topic unless it exists.
    pub async fn ensure_topic(&self, name: &str, partitions: i32) -> Result<(), QueueError> {
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

    /// A client for one partition of a topic.
    pub async fn partition(
        &self,
        name: &str,
        partition: i32,
    ) -> Result<PartitionClient, QueueError> {
        Ok(self
            .client
            .partition_client(self.topic(name), partition, UnknownTopicHandling::Retry)
            .await?)
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

/// Reads a partition from `offset` on, handing each record's value and offset to `apply`;
/// `caught_up` is called once the follower has reached the end of the partition as it was when
/// it started. Retries with backoff while the broker is unreachable; returns when `stop` fires.
pub async fn follow<F, C>(
    partition: PartitionClient,
    mut offset: Option<i64>,
    mut apply: F,
    mut caught_up: C,
    stop: impl std::future::Future<Output = ()>,
) where
    F: FnMut(i64, &[u8]),
    C: FnMut(),
{
    tokio::pin!(stop);
    let mut pause = Duration::from_millis(100);
    let mut reached_end = false;
    loop {
        let step = async {
            let start = match offset {
                Some(o) => o,
                None => partition.get_offset(OffsetAt::Earliest).await?,
            };
            let (records, high_watermark) = partition
                .fetch_records(start, 1..4_000_000, FETCH_WAIT.as_millis() as i32)
                .await?;
            Ok::<_, KafkaError>((start, records, high_watermark))
        };
        let result = tokio::select! {
            r = step => r,
            () = &mut stop => return,
        };
        match result {
            Ok((start, records, high_watermark)) => {
                pause = Duration::from_millis(100);
                let mut next = start;
                for r in records {
                    if r.offset < next {
                        continue;
                    }
                    if let Some(value) = &r.record.value {
                        apply(r.offset, value);
                    }
                    next = r.offset + 1;
                }
                offset = Some(next);
                if !reached_end && next >= high_watermark {
                    reached_end = true;
                    caught_up();
                }
            }
            Err(e) => {
                tracing::warn!(topic = partition.topic(), error = %e, retry_in_ms = pause.as_millis() as u64, "cannot read the log");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = &mut stop => return,
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}
