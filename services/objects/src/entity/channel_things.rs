//! `channel_things`: which things a channel carries.
use sea_orm::entity::prelude::*;

/// A connection row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "channel_things")]
pub struct Model {
    /// The channel.
    #[sea_orm(primary_key, auto_increment = false)]
    pub channel_id: Uuid,
    /// The thing.
    #[sea_orm(primary_key, auto_increment = false)]
    pub thing_id: Uuid,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
