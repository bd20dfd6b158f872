//! Control's tables (sea-orm entities): the commands, their status changes, and the offsets of
//! the topics Control has read.

/// The `control_commands` table: one row per command, as queued.
pub mod commands {
    use sea_orm::entity::prelude::*;

    /// A queued command.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "control_commands")]
    pub struct Model {
        /// The command.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Its thing.
        pub thing_id: Uuid,
        /// `user`, `rule` or `service`.
        pub issuer_kind: String,
        /// The issuer's id.
        pub issuer: String,
        /// Command name.
        pub name: String,
        /// Payload.
        pub payload: Vec<u8>,
        /// Accepted (ms).
        pub created_ms: i64,
        /// Expiry (ms).
        pub expires_ms: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `control_statuses` table: the latest reported state of a command (none while QUEUED).
pub mod statuses {
    use sea_orm::entity::prelude::*;

    /// A command's reported state.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "control_statuses")]
    pub struct Model {
        /// The command.
        #[sea_orm(primary_key, auto_increment = false)]
        pub command_id: Uuid,
        /// A `CommandState` value: DELIVERED or a terminal state.
        pub state: i32,
        /// When it changed (ms).
        pub updated_ms: i64,
        /// The thing's message for ACKED and FAILED.
        pub detail: String,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The `control_offsets` table: the next offset to read, per topic partition.
pub mod offsets {
    use sea_orm::entity::prelude::*;

    /// A read position.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "control_offsets")]
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
