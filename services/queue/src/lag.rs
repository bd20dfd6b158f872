//! Consumer lag: how far a follower of a partition is behind the partition's end, in records and
//! in time (the age of the oldest record it has not applied), beside the topic's retention — a
//! follower whose lag reaches the retention loses records: the log deletes them before they are
//! read. Labels are bounded: the consumer (a service name), the topic (one of the platform's) and
//! the partition (a configured count).
//!
//! Metrics (with the process's `sipmba_` prefix):
//! - `log_consumer_lag_records{consumer,topic,partition}`: records between the position the
//!   consumer has applied and the partition's end;
//! - `log_consumer_lag_seconds{…}`: the age of the oldest record not yet applied (0 when caught
//!   up);
//! - `log_consumer_retention_seconds{…}`: the topic's `retention.ms` as the broker reports it
//!   (absent when the topic keeps records for ever);
//! - `log_consumer_skipped_records{…}` (counter): records the log deleted before the consumer
//!   read them.
//!
//! A warning is logged once when the lag passes [`WARN_AT`] of the retention, and again when it
//! is back under half that.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use sipmba_runtime::Clock;

/// The share of the retention at which a lag is warned about.
pub const WARN_AT: f64 = 0.5;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    consumer: &'static str,
    topic: String,
    partition: i32,
}

/// The lag metrics of one process, shared by all its followers (clones share them).
#[derive(Clone, Default)]
pub struct LagMetrics {
    records: Family<Labels, Gauge>,
    seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    retention: Family<Labels, Gauge<f64, AtomicU64>>,
    skipped: Family<Labels, Counter>,
    clock: Clock,
}

impl std::fmt::Debug for LagMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagMetrics").finish_non_exhaustive()
    }
}

impl LagMetrics {
    /// Lag measured against `clock` (the system clock by default).
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            clock,
            ..Self::default()
        }
    }

    /// Registers the lag metrics (once per process).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "log_consumer_lag_records",
            "Records between the position a consumer has applied and its partition's end",
            self.records.clone(),
        );
        registry.register(
            "log_consumer_lag_seconds",
            "Age of the oldest record of the partition the consumer has not applied (0 when caught up)",
            self.seconds.clone(),
        );
        registry.register(
            "log_consumer_retention_seconds",
            "How long the log keeps the partition's records (its topic's retention.ms)",
            self.retention.clone(),
        );
        registry.register(
            "log_consumer_skipped_records",
            "Records the log deleted (past its retention) before the consumer read them",
            self.skipped.clone(),
        );
    }

    /// The lag of `consumer` on `partition` of `topic` (the name without the deployment's
    /// prefix), whose records are kept for `retention_ms` (`None`: for ever).
    pub fn partition(
        &self,
        consumer: &'static str,
        topic: &str,
        partition: i32,
        retention_ms: Option<i64>,
    ) -> PartitionLag {
        let labels = Labels {
            consumer,
            topic: topic.to_owned(),
            partition,
        };
        // From zero, so that the first records lost count in `increase()`.
        let _ = self.skipped.get_or_create(&labels);
        if let Some(ms) = retention_ms {
            self.retention
                .get_or_create(&labels)
                .set(ms as f64 / 1000.0);
        }
        PartitionLag {
            metrics: self.clone(),
            labels,
            retention_ms,
            state: Arc::default(),
        }
    }
}

#[derive(Default)]
struct State {
    warned: AtomicBool,
    /// Time (ms) of the oldest record of the batch being applied.
    oldest_ms: Mutex<Option<i64>>,
}

/// The lag of one consumer on one partition.
#[derive(Clone)]
pub struct PartitionLag {
    metrics: LagMetrics,
    labels: Labels,
    retention_ms: Option<i64>,
    state: Arc<State>,
}

impl std::fmt::Debug for PartitionLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLag")
            .field("labels", &self.labels)
            .field("retention_ms", &self.retention_ms)
            .finish()
    }
}

impl PartitionLag {
    /// A batch was fetched: records from `position` on are not applied yet, the partition ends at
    /// `end`, and the first of them was written at `oldest_ms` (`None`: nothing was fetched).
    pub fn fetched(&self, position: i64, end: i64, oldest_ms: Option<i64>) {
        *self
            .state
            .oldest_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = oldest_ms;
        self.set(position, end, oldest_ms);
    }

    /// The records before `position` are applied; the partition ended at `end` when fetched.
    pub fn applied(&self, position: i64, end: i64) {
        let oldest = *self
            .state
            .oldest_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Caught up: nothing waits. Otherwise the next fetch, at once, tells the age of what
        // waits; until then the applied batch's age stays an upper bound.
        self.set(position, end, if position >= end { None } else { oldest });
    }

    /// The log had deleted `count` records before this consumer read them.
    pub fn skipped(&self, count: u64) {
        self.metrics
            .skipped
            .get_or_create(&self.labels)
            .inc_by(count);
    }

    fn set(&self, position: i64, end: i64, oldest_ms: Option<i64>) {
        let records = (end - position).max(0);
        let seconds = match oldest_ms {
            Some(at) if records > 0 => (self.metrics.clock.now_ms() - at).max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        self.metrics
            .records
            .get_or_create(&self.labels)
            .set(records);
        self.metrics
            .seconds
            .get_or_create(&self.labels)
            .set(seconds);
        let Some(retention_ms) = self.retention_ms.filter(|ms| *ms > 0) else {
            return;
        };
        let share = seconds * 1000.0 / retention_ms as f64;
        let Labels {
            consumer,
            topic,
            partition,
        } = &self.labels;
        if share >= WARN_AT {
            if !self.state.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    consumer,
                    topic,
                    partition,
                    lag_seconds = seconds,
                    lag_records = records,
                    retention_seconds = retention_ms / 1000,
                    "a consumer is behind by more than half the log's retention: records it has \
                     not read will be deleted if it does not catch up"
                );
            }
        } else if share < WARN_AT / 2.0 && self.state.warned.swap(false, Ordering::Relaxed) {
            tracing::info!(
                consumer,
                topic,
                partition,
                lag_seconds = seconds,
                "the consumer's lag is back under a quarter of the log's retention"
            );
        }
    }

    /// Whether a warning about this lag stands.
    pub fn warned(&self) -> bool {
        self.state.warned.load(Ordering::Relaxed)
    }
}
