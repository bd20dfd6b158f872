//! Processing's tables (sea-orm entities): readings, their metrics (by thing, metric and device
//! time, for history queries), their minute and hour rollups, the latest value of each metric, presence, the consumer offsets,
//! and the rules with their states per thing and their firings.

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

/// The `processing_rollups` table: per-minute and per-hour aggregates of each metric, kept after
/// the raw values are pruned (see `rollup`).
pub mod rollups {
    use sea_orm::entity::prelude::*;

    /// One metric's aggregates over one bucket.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "processing_rollups")]
    pub struct Model {
        /// The thing.
        #[sea_orm(primary_key, auto_increment = false)]
        pub thing_id: Uuid,
        /// The metric name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The bucket's width (ms): a minute or an hour.
        #[sea_orm(primary_key, auto_increment = false)]
        pub width_ms: i64,
        /// The bucket's start (device ms, a multiple of the width).
        #[sea_orm(primary_key, auto_increment = false)]
        pub start_ms: i64,
        /// Values.
        pub count: i64,
        /// Numeric values (flags as 0/1).
        pub numbers: i64,
        /// Their sum.
        pub sum: Option<f64>,
        /// The smallest.
        pub min: Option<f64>,
        /// The largest.
        pub max: Option<f64>,
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

/// The `processing_rules` table.
pub mod definitions {
    use sea_orm::entity::prelude::*;

    /// One rule.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "processing_rules")]
    pub struct Model {
        /// The rule's id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// The user it acts as.
        pub owner_id: Uuid,
        /// Unique per owner.
        pub name: String,
        /// The selector: a `Rule` message holding only its `selector`, encoded.
        pub selector: Vec<u8>,
        /// The metric compared.
        pub metric: String,
        /// A `Comparison` value.
        pub comparison: i32,
        /// The threshold.
        pub threshold: f64,
        /// Hold (ms of device time).
        pub hold_ms: i64,
        /// Cooldown (ms of device time).
        pub cooldown_ms: i64,
        /// The command's name.
        pub action_name: String,
        /// The command's payload.
        pub action_payload: Vec<u8>,
        /// The command's ttl (ms); none for Control's default.
        pub action_ttl_ms: Option<i64>,
        /// Evaluated or not.
        pub enabled: bool,
        /// Bumped whenever the condition changes: older per-thing runs no longer count.
        pub generation: i64,
        /// Created (ms).
        pub created_ms: i64,
        /// Last changed (ms).
        pub updated_ms: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `processing_rule_states` table: a rule's run for one thing.
pub mod states {
    use sea_orm::entity::prelude::*;

    /// The state of one (rule, thing).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "processing_rule_states")]
    pub struct Model {
        /// The rule.
        #[sea_orm(primary_key, auto_increment = false)]
        pub rule_id: Uuid,
        /// The thing.
        #[sea_orm(primary_key, auto_increment = false)]
        pub thing_id: Uuid,
        /// The rule generation the run belongs to.
        pub generation: i64,
        /// The highest seq evaluated (repeated readings are skipped).
        pub last_seq: i64,
        /// Device time of the first reading of the current run of true comparisons.
        pub since_ms: Option<i64>,
        /// The current run has fired.
        pub fired: bool,
        /// Device time of the last firing.
        pub last_fired_ms: Option<i64>,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `processing_firings` table: what fired, and what became of its command.
pub mod firings {
    use sea_orm::entity::prelude::*;

    /// One firing.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "processing_firings")]
    pub struct Model {
        /// The firing's id (the idempotency key of its command).
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// The rule.
        pub rule_id: Uuid,
        /// Its owner (the command is authorized as this user).
        pub owner_id: Uuid,
        /// The thing.
        pub thing_id: Uuid,
        /// The telemetry partition the reading came from (its replica sends the command).
        pub partition: i32,
        /// The seq of the reading that completed the condition.
        pub seq: i64,
        /// The value that completed it.
        pub value: f64,
        /// Device time of the first reading of the run.
        pub crossed_ms: i64,
        /// When it fired (server clock, ms).
        pub fired_ms: i64,
        /// The command's name, payload and ttl, as the rule said when it fired.
        pub action_name: String,
        /// See `action_name`.
        pub action_payload: Vec<u8>,
        /// See `action_name`.
        pub action_ttl_ms: Option<i64>,
        /// "pending" (not sent yet), "sent" or "refused".
        pub status: String,
        /// The command, once sent.
        pub command_id: Option<Uuid>,
        /// Why no command was sent.
        pub detail: String,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
