//! The platform's topics on its log, created through the Kafka admin API: with their retention,
//! grown when the spec asks for more partitions, never shrunk (keys would move partitions).

use std::time::Duration;

use sipmba_queue::{Queue, QueueError, Security, topics};

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
    /// Partitions it had before (none: it was created now).
    pub before: Option<i32>,
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

/// The brokers as the operator reaches them from its own namespace: a host name without a dot
/// (`kafka:9092`, a Service of the platform's namespace, as the platform's pods resolve it) gets
/// the namespace's Service domain (`kafka.<namespace>.svc:9092`); addresses, `localhost` and
/// qualified names stay as they are.
pub fn qualified(brokers: &[String], namespace: &str) -> Vec<String> {
    brokers
        .iter()
        .map(|broker| match broker.rsplit_once(':') {
            Some((host, port))
                if !host.contains('.')
                    && !host.contains(':')
                    && !host.starts_with('[')
                    && host != "localhost"
                    && !namespace.is_empty() =>
            {
                format!("{host}.{namespace}.svc:{port}")
            }
            _ => broker.clone(),
        })
        .collect()
}

/// Why the topics could not be made or grown.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// `replicationFactor` beyond what Kafka takes.
    #[error("replicationFactor {0} is too large")]
    Replicas(i32),
    /// No broker answered.
    #[error("cannot reach the brokers {brokers:?}: {source}")]
    Unreachable {
        /// The brokers tried.
        brokers: Vec<String>,
        /// What the client said.
        source: Box<QueueError>,
    },
    /// A broker refused or failed an operation on a topic.
    #[error("topic {topic}: {source}")]
    Topic {
        /// The topic, with its prefix.
        topic: String,
        /// What the broker said.
        source: Box<QueueError>,
    },
    /// The brokers took too long.
    #[error("the brokers {brokers:?} did not answer within {seconds} s")]
    Timeout {
        /// The brokers tried.
        brokers: Vec<String>,
        /// The time given.
        seconds: u64,
    },
    /// A Secret the log's settings name does not exist.
    #[error("the Secret {0} the log's settings name does not exist")]
    NoSecret(String),
    /// A Secret the log's settings name lacks the key.
    #[error("the Secret {secret} has no key {key}")]
    NoKey {
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
    },
    /// `queue.tls` names a CA or client certificate that cannot be used.
    #[error("queue.tls: {0}")]
    Tls(String),
    /// `queue.sasl.mechanism` is none the client speaks.
    #[error("queue.sasl.mechanism: {0}")]
    Mechanism(String),
}

/// Creates or grows every topic of `spec` (reaching the brokers with `security`, the names of
/// the platform's `namespace` [`qualified`]), giving up after `within`; an existing topic is
/// success.
pub async fn ensure(
    spec: &QueueSpec,
    namespace: &str,
    security: Security,
    within: Duration,
) -> Result<Vec<TopicState>, TopicsError> {
    let brokers = qualified(&spec.brokers, namespace);
    let all = wanted(spec);
    let retention: Vec<(&str, Duration)> = all.iter().map(|t| (t.name, t.retention)).collect();
    let replicas = spec
        .replication_factor
        .map(|n| i16::try_from(n).map_err(|_| TopicsError::Replicas(n)))
        .transpose()?;
    let work = async {
        let queue = Queue::connect_secure(&brokers, &spec.topic_prefix, security)
            .await
            .map_err(|source| TopicsError::Unreachable {
                brokers: brokers.clone(),
                source: Box::new(source),
            })?
            .with_replicas(replicas)
            .with_retention(&retention);
        let mut states = Vec::with_capacity(all.len());
        for topic in &all {
            let before = match queue.partition_count(topic.name).await {
                Ok(n) => Some(n),
                Err(sipmba_queue::QueueError::MissingTopic(_)) => None,
                Err(source) => {
                    return Err(TopicsError::Topic {
                        topic: queue.topic(topic.name),
                        source: Box::new(source),
                    });
                }
            };
            let partitions = queue
                .ensure_partitions(topic.name, topic.partitions)
                .await
                .map_err(|source| TopicsError::Topic {
                    topic: queue.topic(topic.name),
                    source: Box::new(source),
                })?;
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
                before,
            });
        }
        Ok(states)
    };
    tokio::time::timeout(within, work)
        .await
        .map_err(|_| TopicsError::Timeout {
            brokers: brokers.clone(),
            seconds: within.as_secs(),
        })?
}

#[cfg(test)]
mod tests {
    use super::qualified;

    #[test]
    fn short_broker_names_resolve_in_the_platform_namespace() {
        let brokers = [
            "kafka:9092",
            "kafka.log:9092",
            "kafka-0.kafka.log.svc.cluster.local:9093",
            "10.0.0.7:9092",
            "[fd00::7]:9092",
            "localhost:9092",
        ]
        .map(String::from);
        assert_eq!(
            qualified(&brokers, "iot"),
            [
                "kafka.iot.svc:9092",
                "kafka.log:9092",
                "kafka-0.kafka.log.svc.cluster.local:9093",
                "10.0.0.7:9092",
                "[fd00::7]:9092",
                "localhost:9092",
            ]
        );
    }
}
