//! The revocation feed: sso publishes every revocation on `sipmba.revocations`; every service
//! follows the topic from its start into its in-memory [`Revocations`], so a revoked token is
//! refused everywhere within about a second, without a round trip per request.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use prost::Message;
use sipmba_auth::Revocations;
use sipmba_proto::v1 as pb;
use uuid::Uuid;

use crate::{Queue, QueueError, topics};

/// Revocations go to one partition: they are few, and order does not matter.
const PARTITION: i32 = 0;

/// Seconds of a protobuf timestamp.
fn secs(ts: &Option<prost_types::Timestamp>) -> i64 {
    ts.as_ref().map_or(0, |t| t.seconds)
}

/// A record's expiry in seconds; one without an expiry is kept for good rather than dropped.
fn expires(record: &pb::Revocation) -> i64 {
    record.expires.as_ref().map_or(i64::MAX, |t| t.seconds)
}

/// Applies one encoded [`pb::Revocation`] to `revocations`.
pub fn apply(revocations: &Revocations, value: &[u8], now_secs: i64) -> Result<(), String> {
    let record = pb::Revocation::decode(value).map_err(|e| e.to_string())?;
    let expires = expires(&record);
    match record.target {
        Some(pb::revocation::Target::Jti(jti)) => {
            revocations.revoke_token(jti, expires, now_secs);
        }
        Some(pb::revocation::Target::Subject(s)) => {
            let subject = Uuid::parse_str(&s.subject).map_err(|e| e.to_string())?;
            // The record says "iat at or before not_before"; the list says "iat before".
            revocations.revoke_subject(subject, secs(&s.not_before) + 1, expires, now_secs);
        }
        None => return Err("a revocation without a target".into()),
    }
    Ok(())
}

/// Publishes revocations.
#[derive(Debug, Clone)]
pub struct RevocationPublisher {
    queue: Queue,
    partition: Arc<rskafka::client::partition::PartitionClient>,
}

impl RevocationPublisher {
    /// Creates the topic if needed and prepares to publish.
    pub async fn new(queue: Queue) -> Result<Self, QueueError> {
        queue.ensure_topic(topics::REVOCATIONS, 1).await?;
        let partition = Arc::new(queue.partition(topics::REVOCATIONS, PARTITION).await?);
        Ok(Self { queue, partition })
    }

    /// Publishes one revocation; returns once the broker has committed it.
    pub async fn publish(&self, key: &str, revocation: &pb::Revocation) -> Result<i64, QueueError> {
        self.queue
            .publish(&self.partition, key.as_bytes(), revocation.encode_to_vec())
            .await
    }
}

/// Follows the revocation topic into `revocations` until `stop`. `ready` turns true once
/// everything published before the start has been applied.
pub async fn follow(
    queue: Queue,
    revocations: Revocations,
    ready: Arc<AtomicBool>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), QueueError> {
    queue.ensure_topic(topics::REVOCATIONS, 1).await?;
    let partition = queue.partition(topics::REVOCATIONS, PARTITION).await?;
    let topic = queue.topic(topics::REVOCATIONS);
    crate::follow(
        partition,
        None,
        // A revocation published while the topic was idle is still applied well within a second,
        // also on a broker that answers a waiting fetch only when its wait is over (tansu).
        std::time::Duration::from_millis(400),
        |offset, value| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            if let Err(reason) = apply(&revocations, value, now) {
                tracing::warn!(%topic, offset, %reason, "skipping an undecodable revocation");
            }
        },
        || {
            ready.store(true, Ordering::Relaxed);
            tracing::info!("revocations caught up");
        },
        stop,
    )
    .await;
    Ok(())
}
