//! Collect's table (a sea-orm entity): the highest acknowledged `seq` of each thing.

/// The `collect_acked` table.
pub mod acked {
    use sea_orm::entity::prelude::*;

    /// A thing's acknowledged position.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "collect_acked")]
    pub struct Model {
        /// The thing.
        #[sea_orm(primary_key, auto_increment = false)]
        pub thing_id: Uuid,
        /// Highest acknowledged seq.
        pub seq: i64,
        /// The thing's live session (any replica): the newest Hello wins.
        pub session: String,
        /// Last change (ms).
        pub updated_ms: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
