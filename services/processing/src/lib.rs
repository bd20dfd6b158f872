//! Processing: consumes `sipmba.telemetry` into the database, exactly once in effect (the offset
//! of each partition is committed in the same transaction as the readings read from it, and a
//! repeated `(thing, seq)` is dropped). Partitions are owned statically by replica ordinal.

pub mod consume;
pub mod entity;
pub mod grpc;
pub mod migration;
pub mod record;
pub mod rollup;
pub mod rules;
pub mod rules_api;
pub mod settings;
pub mod store;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

pub use migration::migrate;
pub use record::{Incoming, decode};
use sipmba_queue::{Queue, QueueError, topics};
use sipmba_runtime::Shutdown;
use store::Store;

/// The rows Processing prunes: rule firings older than `log_retention` (the telemetry topic's:
/// the readings that made them have left the log), and the telemetry past `telemetry`'s times
/// ([`rollup::prune_rules`]).
pub fn prune_rules(
    log_retention: std::time::Duration,
    telemetry: &rollup::Retention,
) -> Vec<sipmba_runtime::prune::Rule> {
    let mut rules = vec![sipmba_runtime::prune::Rule::older_than(
        "processing_firings",
        "id",
        "fired_ms",
        log_retention,
    )];
    rules.extend(rollup::prune_rules(telemetry));
    rules
}

/// Which partitions a replica consumes: those whose number modulo `replicas` is `replica`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// This replica's ordinal (a StatefulSet pod's index).
    pub replica: u32,
    /// How many replicas share the partitions.
    pub replicas: u32,
}

impl Default for Ownership {
    fn default() -> Self {
        Self {
            replica: 0,
            replicas: 1,
        }
    }
}

impl Ownership {
    /// True when this replica consumes `partition`.
    pub fn owns(&self, partition: i32) -> bool {
        u32::try_from(partition).is_ok_and(|p| p % self.replicas.max(1) == self.replica)
    }
}

/// The telemetry consumer of one replica.
#[derive(Debug, Clone)]
pub struct Consumer {
    behind: Arc<AtomicUsize>,
    /// Every stored batch, for live subscriptions.
    live: tokio::sync::broadcast::Sender<Arc<Vec<Incoming>>>,
    /// The rules evaluated against each batch; none evaluates nothing.
    rules: Option<rules::Rules>,
    stored: prometheus_client::metrics::counter::Counter,
    poison: prometheus_client::metrics::counter::Counter,
    fired: prometheus_client::metrics::counter::Counter,
}

impl Consumer {
    /// Consumes the owned partitions of the telemetry topic into `store` until `shutdown`,
    /// evaluating `rules` in the same transactions; every stored batch also goes to `live`.
    pub async fn start(
        store: Store,
        queue: &Queue,
        ownership: Ownership,
        rules: Option<rules::Rules>,
        live: tokio::sync::broadcast::Sender<Arc<Vec<Incoming>>>,
        shutdown: Shutdown,
    ) -> Result<Self, QueueError> {
        let partitions = queue.partition_count(topics::TELEMETRY).await?;
        let owned: Vec<i32> = (0..partitions).filter(|p| ownership.owns(*p)).collect();
        let consumer = Self {
            behind: Arc::new(AtomicUsize::new(owned.len())),
            live,
            rules,
            stored: Default::default(),
            poison: Default::default(),
            fired: Default::default(),
        };
        for partition in owned {
            let client = queue.partition(topics::TELEMETRY, partition).await?;
            let lag = queue.lag("processing", topics::TELEMETRY, partition).await;
            tokio::spawn(
                consumer
                    .clone()
                    .run(store.clone(), client, lag, shutdown.clone()),
            );
        }
        Ok(consumer)
    }

    /// True once every owned partition has been read to the end it had when consuming began.
    pub fn caught_up(&self) -> bool {
        self.behind.load(Ordering::Relaxed) == 0
    }

    /// Registers the consumer's metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "processing_readings_stored",
            "Readings read from the log and stored (duplicates included, dropped by the store)",
            self.stored.clone(),
        );
        registry.register(
            "processing_records_undecodable",
            "Telemetry records skipped because they could not be decoded",
            self.poison.clone(),
        );
        registry.register(
            "processing_rule_firings",
            "Rule firings recorded (each sends one command through Control)",
            self.fired.clone(),
        );
    }

    async fn run(
        self,
        store: Store,
        client: sipmba_queue::PartitionClient,
        lag: sipmba_queue::lag::PartitionLag,
        stop: Shutdown,
    ) {
        let partition = client.partition();
        let topic = topics::TELEMETRY;
        let offsets = store.clone();
        let behind = self.behind.clone();
        sipmba_queue::follow_stored(
            client,
            sipmba_queue::IDLE_FETCH_WAIT,
            Some(lag),
            move || {
                let store = offsets.clone();
                async move { store.offset(topic, partition).await }
            },
            move |records: Arc<[(i64, Vec<u8>)]>, next| {
                let (me, store) = (self.clone(), store.clone());
                async move {
                    let mut batch = Vec::with_capacity(records.len());
                    for (offset, value) in records.iter() {
                        match decode(value) {
                            Ok(incoming) => batch.push(incoming),
                            Err(reason) => {
                                me.poison.inc();
                                tracing::warn!(partition, offset, %reason, "skipping an undecodable telemetry record");
                            }
                        }
                    }
                    let snapshot = me.rules.as_ref().map(rules::Rules::snapshot).unwrap_or_default();
                    let fired = store.apply(topic, partition, &batch, next, &snapshot).await?;
                    if fired > 0 {
                        me.fired.inc_by(fired as u64);
                        if let Some(rules) = &me.rules {
                            rules.fired();
                        }
                    }
                    me.stored.inc_by(batch.len() as u64);
                    // Nobody listening is fine.
                    let _ = me.live.send(Arc::new(batch));
                    Ok::<_, sipmba_runtime::ServiceError>(())
                }
            },
            move || {
                behind.fetch_sub(1, Ordering::Relaxed);
            },
            stop.wait(),
        )
        .await;
    }
}
