//! The tables of stored telemetry (sea-orm entities): readings, their metrics (by thing, metric and
//! device time, for history queries), the latest value of each metric, presence, and the consumer
//! offsets.

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
