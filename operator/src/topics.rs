//! The platform's topics on its log, created through the Kafka admin API: with their retention,
//! grown when the spec asks for more partitions, never shrunk (keys would move partitions).

use std::time::Duration;

use sipmba_queue::{Queue, Security, topics};

use crate::api::QueueSpec;

/// One topic as the spec wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Name without the prefix.
    pub name: &'static str,
    /// Partitions wanted.
    pub partitions: i32,
    /// Retention.
    pub retention: Duration,
}

/// One topic as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    /// Name with the prefix.
    pub name: String,
    /// Partitions wanted.
    pub wanted: i32,
    /// Partitions it has (more than wanted when the spec asked for fewer later).
    pub partitions: i32,
}

const HOUR: u64 = 3600;

/// The topics of a platform (the services' own defaults where the spec says nothing).
pub fn wanted(spec: &QueueSpec) -> Vec<Topic> {
    let commands = spec.command_partitions.unwrap_or(4);
    let telemetry_hours =
        u64::try_from(spec.telemetry_retention_hours.unwrap_or(168)).unwrap_or(168);
    vec![
        Topic {
            name: topics::TELEMETRY,
            partitions: spec.telemetry_partitions.unwrap_or(4),
            retention: Duration::from_secs(telemetry_hours * HOUR),
        },
        Topic {
            name: topics::COMMANDS,
            partitions: commands,
            retention: Duration::from_secs(192 * HOUR),
        },
        Topic {
            name: topics::COMMAND_EVENTS,
            partitions: commands,
            retention: Duration::from_secs(192 * HOUR),
        },
        Topic {
            name: topics::REVOCATIONS,
            partitions: 1,
            retention: Duration::from_secs(48 * HOUR),
        },
    ]
}

/// Creates or grows every topic of `spec` (reaching the brokers with `security`), giving up
/// after `within`; an existing topic is success.
pub async fn ensure(
    spec: &QueueSpec,
    security: Security,
    within: Duration,
) -> Result<Vec<TopicState>, String> {
    let all = wanted(spec);
    let retention: Vec<(&str, Duration)> = all.iter().map(|t| (t.name, t.retention)).collect();
    let replicas = spec
        .replication_factor
        .map(|n| i16::try_from(n).map_err(|_| format!("replicationFactor {n} is too large")))
        .transpose()?;
    let work = async {
        let queue = Queue::connect_secure(&spec.brokers, &spec.topic_prefix, security)
            .await
            .map_err(|e| format!("cannot reach the brokers {:?}: {e}", spec.brokers))?
            .with_replicas(replicas)
            .with_retention(&retention);
        let mut states = Vec::with_capacity(all.len());
        for topic in &all {
            let partitions = queue
                .ensure_partitions(topic.name, topic.partitions)
                .await
                .map_err(|e| format!("topic {}: {e}", queue.topic(topic.name)))?;
            if partitions > topic.partitions {
                tracing::warn!(
                    topic = %queue.topic(topic.name),
                    partitions,
                    wanted = topic.partitions,
                    "the topic has more partitions than the spec asks for; partitions never shrink"
                );
            }
            states.push(TopicState {
                name: queue.topic(topic.name),
                wanted: topic.partitions,
                partitions,
            });
        }
        Ok(states)
    };
    tokio::time::timeout(within, work).await.map_err(|_| {
        format!(
            "the brokers {:?} did not answer within {} s",
            spec.brokers,
            within.as_secs()
        )
    })?
}
