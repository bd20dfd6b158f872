//! A batching producer: records are partitioned by key (Kafka's murmur2, so any Kafka client
//! agrees on the partition of a thing), gathered per partition until a batch is full by count or
//! bytes or its linger time is up, and produced with one request in flight per partition. Each
//! caller learns when its record is committed, and at which offset.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rskafka::{
    client::partition::{Compression, PartitionClient},
    record::Record,
};
use tokio::sync::{mpsc, oneshot};

use crate::{Queue, QueueError};

/// Bounds of a batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most records in one produce request.
    pub max_records: usize,
    /// Most bytes (keys and values) in one produce request.
    pub max_bytes: usize,
    /// How long the first record of a batch may wait for others.
    pub linger: Duration,
    /// Records waiting per partition before `send` waits (backpressure).
    pub queue_depth: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_records: 1000,
            max_bytes: 1 << 20,
            linger: Duration::from_millis(5),
            queue_depth: 10_000,
        }
    }
}

/// Where a record was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

/// Why a record was not committed. The record may or may not be in the log: resend it, and let
/// consumers drop the duplicate.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not committed: {0}")]
pub struct NotCommitted(pub Arc<str>);

type Reply = oneshot::Sender<Result<Committed, NotCommitted>>;

struct Pending {
    key: Vec<u8>,
    values: Vec<Vec<u8>>,
    reply: Reply,
}

/// A batching producer for one topic.
#[derive(Clone)]
pub struct Producer {
    partitions: Arc<Vec<mpsc::Sender<Pending>>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("partitions", &self.partitions.len())
            .finish()
    }
}

/// Kafka's murmur2 (the default partitioner's hash of a record key).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    // The length is folded in as Kafka does (an i32, wrapping).
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions`, as Kafka's default partitioner chooses it.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

impl Producer {
    /// A producer for `topic` (created with `partitions` partitions if missing). Records are
    /// spread over the partitions the topic has, which an existing topic decides: consumers read
    /// them all.
    pub async fn new(
        queue: &Queue,
        topic: &str,
        partitions: i32,
        limits: BatchLimits,
    ) -> Result<Self, QueueError> {
        queue.ensure_topic(topic, partitions).await?;
        let partitions = queue.partition_count(topic).await?;
        let mut senders = Vec::with_capacity(usize::try_from(partitions).unwrap_or(1));
        for partition in 0..partitions {
            let client = queue.partition(topic, partition).await?;
            let (tx, rx) = mpsc::channel(limits.queue_depth.max(1));
            tokio::spawn(run_partition(client, rx, limits));
            senders.push(tx);
        }
        Ok(Self {
            partitions: Arc::new(senders),
        })
    }

    /// Queues a record; the returned receiver completes once it is committed (or not). Waits
    /// while the partition's queue is full.
    pub async fn send(
        &self,
        key: &[u8],
        value: Vec<u8>,
    ) -> oneshot::Receiver<Result<Committed, NotCommitted>> {
        self.send_many(key, vec![value]).await
    }

    /// Queues records with one key, kept together and in order in one produce request; the
    /// receiver completes once all are committed (with the offset of the last) or not.
    pub async fn send_many(
        &self,
        key: &[u8],
        values: Vec<Vec<u8>>,
    ) -> oneshot::Receiver<Result<Committed, NotCommitted>> {
        let (reply, committed) = oneshot::channel();
        let count = i32::try_from(self.partitions.len()).unwrap_or(i32::MAX);
        let index = usize::try_from(partition_for(key, count)).unwrap_or(0);
        let pending = Pending {
            key: key.to_vec(),
            values,
            reply,
        };
        if let Err(mpsc::error::SendError(pending)) = self.partitions[index].send(pending).await {
            let _ = pending
                .reply
                .send(Err(NotCommitted("the producer has stopped".into())));
        }
        committed
    }
}

impl Pending {
    fn bytes(&self) -> usize {
        self.values.iter().map(|v| self.key.len() + v.len()).sum()
    }
}

/// Gathers and produces the batches of one partition until every `Producer` clone is dropped.
async fn run_partition(
    client: PartitionClient,
    mut rx: mpsc::Receiver<Pending>,
    limits: BatchLimits,
) {
    let partition = client.partition();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.bytes();
        let mut records = first.values.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + limits.linger;
        while records < limits.max_records && bytes < limits.max_bytes {
            // Take what is already queued without waiting, then wait out the linger time.
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            let Some(p) = next else { break };
            bytes += p.bytes();
            records += p.values.len();
            batch.push(p);
        }
        let timestamp = crate::now();
        let mut out = Vec::with_capacity(records);
        let mut replies = Vec::with_capacity(batch.len());
        for p in batch {
            let n = p.values.len();
            for value in p.values {
                out.push(Record {
                    key: Some(p.key.clone()),
                    value: Some(value),
                    headers: BTreeMap::new(),
                    timestamp,
                });
            }
            replies.push((p.reply, n));
        }
        match client.produce(out, Compression::NoCompression).await {
            Ok(offsets) => {
                let mut end = 0;
                for (reply, n) in replies {
                    end += n;
                    let offset = match end.checked_sub(1).and_then(|last| offsets.get(last)) {
                        Some(offset) => *offset,
                        None if n == 0 => -1,
                        None => {
                            let _ = reply.send(Err(NotCommitted(
                                "the broker confirmed fewer records than were sent".into(),
                            )));
                            continue;
                        }
                    };
                    let _ = reply.send(Ok(Committed { partition, offset }));
                }
            }
            Err(e) => {
                tracing::warn!(topic = client.topic(), partition, error = %e, "produce failed");
                let reason: Arc<str> = e.to_string().into();
                for (reply, _) in replies {
                    let _ = reply.send(Err(NotCommitted(reason.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's own UtilsTest.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    /// Kafka's `Utils.murmur2` as its Java source reads — signed ints, `>>>`, the tail's switch
    /// falling through — the oracle for the word-wise version above.
    fn java_murmur2(data: &[u8]) -> i32 {
        let length = data.len() as i32;
        let seed = 0x9747_b28c_u32 as i32;
        let m: i32 = 0x5bd1_e995;
        let r = 24;
        let byte = |i: usize| i32::from(data[i]) & 0xff;
        let mut h = seed ^ length;
        let length4 = length / 4;
        for i in 0..length4 {
            let i4 = (i * 4) as usize;
            let mut k = byte(i4)
                .wrapping_add(byte(i4 + 1) << 8)
                .wrapping_add(byte(i4 + 2) << 16)
                .wrapping_add(byte(i4 + 3) << 24);
            k = k.wrapping_mul(m);
            k ^= ((k as u32) >> r) as i32;
            k = k.wrapping_mul(m);
            h = h.wrapping_mul(m);
            h ^= k;
        }
        let tail = (length & !3) as usize;
        let rest = length % 4;
        if rest == 3 {
            h ^= byte(tail + 2) << 16;
        }
        if rest >= 2 {
            h ^= byte(tail + 1) << 8;
        }
        if rest >= 1 {
            h ^= byte(tail);
            h = h.wrapping_mul(m);
        }
        h ^= ((h as u32) >> 13) as i32;
        h = h.wrapping_mul(m);
        h ^= ((h as u32) >> 15) as i32;
        h
    }

    proptest::proptest! {
        #[test]
        fn murmur2_agrees_with_kafkas_java_for_any_key(
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            proptest::prop_assert_eq!(murmur2(&key), java_murmur2(&key));
        }

        /// The partition is Kafka's `toPositive(murmur2(key)) % partitions`, always in range, and
        /// a thing's key always lands on the same partition.
        #[test]
        fn a_key_lands_on_kafkas_partition(
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            partitions in 1i32..4096,
        ) {
            let p = partition_for(&key, partitions);
            proptest::prop_assert!((0..partitions).contains(&p));
            proptest::prop_assert_eq!(p, (java_murmur2(&key) & 0x7fff_ffff) % partitions);
            proptest::prop_assert_eq!(p, partition_for(&key.clone(), partitions));
        }

        /// A thing's id as Collect keys it spreads over the partitions.
        #[test]
        fn thing_ids_use_every_partition(seed in proptest::prelude::any::<u64>()) {
            let mut seen = [0u32; 8];
            for i in 0..800u64 {
                let id = uuid::Uuid::from_u64_pair(seed, i).to_string();
                seen[partition_for(id.as_bytes(), 8) as usize] += 1;
            }
            // 100 expected per partition; binomial spread stays far above 40.
            proptest::prop_assert!(seen.iter().all(|n| *n > 40), "{:?}", seen);
        }
    }
}
