//! Stored telemetry: readings, their metrics (by thing, metric and device time, for history
//! queries), the latest value of each metric, presence, and the consumer offsets — all written in
//! one transaction per batch read from the log, so a batch is stored exactly once whatever
//! crashes, and a repeated `(thing, seq)` is dropped by the primary key.

use std::collections::HashMap;

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    sea_query::{Expr, OnConflict},
};
use sea_orm_migration::{async_trait, prelude::*};
use sipmba_proto::v1 as pb;
use sipmba_runtime::ServiceResult;
use uuid::Uuid;

/// The `processing_readings` table.
pub mod readings {
    use sea_orm::entity::prelude::*;

    /// One reading.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "processing_readings")]
    pub struct Model {
        /// The thing.
        #[sea_orm(primary_key, auto_increment = false)]
        pub thing_id: Uuid,
        /// Its per-thing sequence number.
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        /// Device time (ms); the received time when the device sent none.
        pub device_ms: i64,
        /// When Collect received it (ms).
        pub received_ms: i64,
        /// The opaque payload.
        pub payload: Vec<u8>,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `processing_metrics` table: one row per metric of a reading.
pub mod metrics {
    use sea_orm::entity::prelude::*;

    /// One metric value.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "processing_metrics")]
    pub struct Model {
        /// The thing.
        #[sea_orm(primary_key, auto_increment = false)]
        pub thing_id: Uuid,
        /// The metric name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The reading's seq.
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        /// Device time (ms).
        pub device_ms: i64,
        /// When Collect received the reading (ms).
        pub received_ms: i64,
        /// A number, or a flag as 0/1.
        pub number: Option<f64>,
        /// True when the value was a flag.
        pub is_flag: bool,
        /// A text value.
        pub text: Option<String>,
        /// Unit.
        pub unit: String,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `processing_latest` table: the value of the highest seq per (thing, metric).
pub mod latest {
    use sea_orm::entity::prelude::*;

    /// The latest value of a metric.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "processing_latest")]
    pub struct Model {
        /// The thing.
        #[sea_orm(primary_key, auto_increment = false)]
        pub thing_id: Uuid,
        /// The metric name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The reading's seq.
        pub seq: i64,
        /// Device time (ms).
        pub device_ms: i64,
        /// A number, or a flag as 0/1.
        pub number: Option<f64>,
        /// True when the value was a flag.
        pub is_flag: bool,
        /// A text value.
        pub text: Option<String>,
        /// Unit.
        pub unit: String,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `processing_presence` table: when each thing was last heard from.
pub mod presence {
    use sea_orm::entity::prelude::*;

    /// A thing's presence.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "processing_presence")]
    pub struct Model {
        /// The thing.
        #[sea_orm(primary_key, auto_increment = false)]
        pub thing_id: Uuid,
        /// Last received (ms, server clock).
        pub last_seen_ms: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `processing_offsets` table: the next offset of each owned partition.
pub mod offsets {
    use sea_orm::entity::prelude::*;

    /// A read position.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "processing_offsets")]
    pub struct Model {
        /// Topic (without the deployment prefix).
        #[sea_orm(primary_key, auto_increment = false)]
        pub topic: String,
        /// Partition.
        #[sea_orm(primary_key, auto_increment = false)]
        pub partition: i32,
        /// Next offset to read.
        pub next_offset: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The Processing migrator.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init), Box::new(crate::rules::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "processing_migrations".into_iden()
    }
}

struct Init;

impl MigrationName for Init {
    fn name(&self) -> &str {
        "m20261125_000001_processing_init"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Init {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = sea_orm::Schema::new(manager.get_database_backend());
        manager
            .create_table(schema.create_table_from_entity(readings::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(metrics::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(latest::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(presence::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(offsets::Entity))
            .await?;
        // History queries: one metric of one thing over a device-time range.
        manager
            .create_index(
                Index::create()
                    .name("processing_metrics_history")
                    .table(metrics::Entity)
                    .col(metrics::Column::ThingId)
                    .col(metrics::Column::Name)
                    .col(metrics::Column::DeviceMs)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "processing_offsets",
            "processing_presence",
            "processing_latest",
            "processing_metrics",
            "processing_readings",
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// Applies the Processing migrations.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    sipmba_runtime::db::migrate::<Migrator>(db, 74000006).await
}

/// Aggregates of one history bucket (over numbers and flags; `count` over every value).
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Start of the bucket (ms).
    pub start_ms: i64,
    /// Mean.
    pub avg: Option<f64>,
    /// Smallest.
    pub min: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
    /// Sum.
    pub sum: Option<f64>,
    /// Values.
    pub count: u64,
}

/// A reading as read from the log, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The thing.
    pub thing: Uuid,
    /// The reading.
    pub reading: pb::Reading,
    /// When Collect received it (ms).
    pub received_ms: i64,
}

impl Incoming {
    /// Device time (ms); the received time when the device sent none.
    pub fn device_ms(&self) -> i64 {
        self.reading
            .device_time
            .as_ref()
            .and_then(|t| sipmba_runtime::ids::timestamp_to_ms("device_time", t).ok())
            .unwrap_or(self.received_ms)
    }
}

/// Rows per INSERT statement. PostgreSQL's cost per statement grows faster than its rows
/// (measured: 1,000 readings in chunks of 500 take 184 ms, in chunks of 100 15 ms); SQLite binds at
/// most 32,766 values.
const CHUNK: usize = 100;

fn metric_value(m: &pb::Metric) -> (Option<f64>, bool, Option<String>) {
    match &m.value {
        Some(pb::metric::Value::Number(n)) => (Some(*n), false, None),
        Some(pb::metric::Value::Flag(f)) => (Some(if *f { 1.0 } else { 0.0 }), true, None),
        Some(pb::metric::Value::Text(t)) => (None, false, Some(t.clone())),
        None => (None, false, None),
    }
}

/// Reads and writes stored telemetry.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// A store on a migrated database.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The connection.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Where to resume reading `topic`/`partition`.
    pub async fn offset(&self, topic: &str, partition: i32) -> ServiceResult<Option<i64>> {
        Ok(offsets::Entity::find_by_id((topic.to_owned(), partition))
            .one(&self.db)
            .await?
            .map(|o| o.next_offset))
    }

    /// Stores `batch` (read from `topic`/`partition`), evaluates `rules` against it and moves
    /// the partition's offset to `next`, in one transaction. Readings already stored are
    /// dropped. Returns how many rules fired.
    pub async fn apply(
        &self,
        topic: &str,
        partition: i32,
        batch: &[Incoming],
        next: i64,
        rules: &crate::rules::Snapshot,
    ) -> ServiceResult<usize> {
        let txn = sipmba_runtime::db::begin_write(&self.db).await?;
        store_batch(&txn, batch).await?;
        let fired = crate::rules::evaluate(&txn, rules, partition, batch).await?;
        offsets::Entity::insert(offsets::ActiveModel {
            topic: Set(topic.to_owned()),
            partition: Set(partition),
            next_offset: Set(next),
        })
        .on_conflict(
            OnConflict::columns([offsets::Column::Topic, offsets::Column::Partition])
                .update_column(offsets::Column::NextOffset)
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await?;
        Ok(fired)
    }

    /// The latest values of `things` (only `names`, unless empty).
    pub async fn latest(
        &self,
        things: &[Uuid],
        names: &[String],
    ) -> ServiceResult<Vec<latest::Model>> {
        let mut query =
            latest::Entity::find().filter(latest::Column::ThingId.is_in(things.to_vec()));
        if !names.is_empty() {
            query = query.filter(latest::Column::Name.is_in(names.to_vec()));
        }
        Ok(query.all(&self.db).await?)
    }

    /// Raw values of one metric in `[start, end)`, oldest first, after `after` (device ms, seq).
    pub async fn points(
        &self,
        thing: Uuid,
        name: &str,
        (start, end): (i64, i64),
        after: Option<(i64, i64)>,
        limit: u64,
    ) -> ServiceResult<Vec<metrics::Model>> {
        use sea_orm::{QueryOrder, QuerySelect};
        let mut query = metrics::Entity::find()
            .filter(metrics::Column::ThingId.eq(thing))
            .filter(metrics::Column::Name.eq(name))
            .filter(metrics::Column::DeviceMs.gte(start))
            .filter(metrics::Column::DeviceMs.lt(end));
        if let Some((ms, seq)) = after {
            query = query.filter(
                sea_orm::Condition::any()
                    .add(metrics::Column::DeviceMs.gt(ms))
                    .add(
                        sea_orm::Condition::all()
                            .add(metrics::Column::DeviceMs.eq(ms))
                            .add(metrics::Column::Seq.gt(seq)),
                    ),
            );
        }
        Ok(query
            .order_by_asc(metrics::Column::DeviceMs)
            .order_by_asc(metrics::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Aggregates of one metric per bucket of `width` ms in `[start, end)`, oldest first, for
    /// buckets starting after `after`.
    pub async fn buckets(
        &self,
        thing: Uuid,
        name: &str,
        (start, end): (i64, i64),
        width: i64,
        after: Option<i64>,
        limit: u64,
    ) -> ServiceResult<Vec<Bucket>> {
        use sea_orm::{FromQueryResult, QueryOrder, QuerySelect};
        // The width is an integer literal (not a bind parameter), so that PostgreSQL sees the
        // grouped expression and the selected one as the same.
        let bucket = Expr::cust(format!("(device_ms / {width}) * {width}"));
        let mut query = metrics::Entity::find()
            .select_only()
            .column_as(bucket.clone(), "start_ms")
            .column_as(Expr::col(metrics::Column::Number).avg(), "avg")
            .column_as(Expr::col(metrics::Column::Number).min(), "min")
            .column_as(Expr::col(metrics::Column::Number).max(), "max")
            .column_as(Expr::col(metrics::Column::Number).sum(), "sum")
            .column_as(Expr::col(metrics::Column::Seq).count(), "count")
            .filter(metrics::Column::ThingId.eq(thing))
            .filter(metrics::Column::Name.eq(name))
            .filter(metrics::Column::DeviceMs.gte(start))
            .filter(metrics::Column::DeviceMs.lt(end));
        if let Some(after) = after {
            // The bucket after `after` starts at `after + width`.
            query = query.filter(metrics::Column::DeviceMs.gte(after.saturating_add(width)));
        }
        #[derive(FromQueryResult)]
        struct Row {
            start_ms: i64,
            avg: Option<f64>,
            min: Option<f64>,
            max: Option<f64>,
            sum: Option<f64>,
            count: i64,
        }
        let rows = query
            .group_by(bucket.clone())
            .order_by(bucket, sea_orm::Order::Asc)
            .limit(limit)
            .into_model::<Row>()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Bucket {
                start_ms: r.start_ms,
                avg: r.avg,
                min: r.min,
                max: r.max,
                sum: r.sum,
                count: r.count.try_into().unwrap_or(0),
            })
            .collect())
    }

    /// When each of `things` was last heard from (ms), for those ever heard from.
    pub async fn presence(&self, things: &[Uuid]) -> ServiceResult<HashMap<Uuid, i64>> {
        Ok(presence::Entity::find()
            .filter(presence::Column::ThingId.is_in(things.to_vec()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|p| (p.thing_id, p.last_seen_ms))
            .collect())
    }

    /// The highest stored seq of `thing` (0 when none).
    pub async fn last_seq(&self, thing: Uuid) -> ServiceResult<u64> {
        use sea_orm::{QueryOrder, QuerySelect};
        let row = readings::Entity::find()
            .filter(readings::Column::ThingId.eq(thing))
            .order_by_desc(readings::Column::Seq)
            .limit(1)
            .one(&self.db)
            .await?;
        Ok(row.map_or(0, |r| r.seq.try_into().unwrap_or(0)))
    }

    /// How many readings of `thing` are stored.
    pub async fn count(&self, thing: Uuid) -> ServiceResult<u64> {
        use sea_orm::PaginatorTrait;
        Ok(readings::Entity::find()
            .filter(readings::Column::ThingId.eq(thing))
            .count(&self.db)
            .await?)
    }
}

async fn store_batch(db: &impl ConnectionTrait, batch: &[Incoming]) -> ServiceResult<()> {
    let mut latest: HashMap<(Uuid, &str), (&Incoming, &pb::Metric)> = HashMap::new();
    let mut seen: HashMap<Uuid, i64> = HashMap::new();
    let mut reading_rows = Vec::with_capacity(batch.len());
    let mut metric_rows = Vec::new();
    for incoming in batch {
        let r = &incoming.reading;
        let seq: i64 = r.seq.try_into().unwrap_or(i64::MAX);
        let device_ms = incoming.device_ms();
        reading_rows.push(readings::ActiveModel {
            thing_id: Set(incoming.thing),
            seq: Set(seq),
            device_ms: Set(device_ms),
            received_ms: Set(incoming.received_ms),
            payload: Set(r.payload.clone()),
        });
        for m in &r.metrics {
            let (number, is_flag, text) = metric_value(m);
            metric_rows.push(metrics::ActiveModel {
                thing_id: Set(incoming.thing),
                name: Set(m.name.clone()),
                seq: Set(seq),
                device_ms: Set(device_ms),
                received_ms: Set(incoming.received_ms),
                number: Set(number),
                is_flag: Set(is_flag),
                text: Set(text),
                unit: Set(m.unit.clone()),
            });
            let entry = latest
                .entry((incoming.thing, m.name.as_str()))
                .or_insert((incoming, m));
            if entry.0.reading.seq < r.seq {
                *entry = (incoming, m);
            }
        }
        let last = seen.entry(incoming.thing).or_insert(incoming.received_ms);
        *last = Ord::max(*last, incoming.received_ms);
    }
    while !reading_rows.is_empty() {
        let chunk: Vec<_> = reading_rows
            .drain(..reading_rows.len().min(CHUNK))
            .collect();
        readings::Entity::insert_many(chunk)
            .on_conflict(
                OnConflict::columns([readings::Column::ThingId, readings::Column::Seq])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    while !metric_rows.is_empty() {
        let chunk: Vec<_> = metric_rows.drain(..metric_rows.len().min(CHUNK)).collect();
        metrics::Entity::insert_many(chunk)
            .on_conflict(
                OnConflict::columns([
                    metrics::Column::ThingId,
                    metrics::Column::Name,
                    metrics::Column::Seq,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    for ((thing, name), (incoming, m)) in latest {
        let (number, is_flag, text) = metric_value(m);
        let seq: i64 = incoming.reading.seq.try_into().unwrap_or(i64::MAX);
        let device_ms = incoming.device_ms();
        latest::Entity::insert(latest::ActiveModel {
            thing_id: Set(thing),
            name: Set(name.to_owned()),
            seq: Set(seq),
            device_ms: Set(device_ms),
            number: Set(number),
            is_flag: Set(is_flag),
            text: Set(text),
            unit: Set(m.unit.clone()),
        })
        .on_conflict(
            OnConflict::columns([latest::Column::ThingId, latest::Column::Name])
                .update_columns([
                    latest::Column::Seq,
                    latest::Column::DeviceMs,
                    latest::Column::Number,
                    latest::Column::IsFlag,
                    latest::Column::Text,
                    latest::Column::Unit,
                ])
                // Only a newer reading replaces the latest value.
                .action_and_where(Expr::cust("excluded.seq > processing_latest.seq"))
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    }
    for (thing, last_seen_ms) in seen {
        presence::Entity::insert(presence::ActiveModel {
            thing_id: Set(thing),
            last_seen_ms: Set(last_seen_ms),
        })
        .on_conflict(
            OnConflict::column(presence::Column::ThingId)
                .update_column(presence::Column::LastSeenMs)
                .action_and_where(Expr::cust(
                    "excluded.last_seen_ms > processing_presence.last_seen_ms",
                ))
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    }
    Ok(())
}
