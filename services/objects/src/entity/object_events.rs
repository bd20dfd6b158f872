//! `object_events`: the transactional outbox behind `EventService.WatchEvents`.
use sea_orm::entity::prelude::*;

/// An event row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "object_events")]
pub struct Model {
    /// Feed position.
    #[sea_orm(primary_key)]
    pub seq: i64,
    /// `ObjectEventKind` number.
    pub kind: i32,
    /// The user or thing the change was asked for.
    pub subject: String,
    /// JSON array of affected user ids.
    pub users: String,
    /// JSON array of affected thing ids.
    pub things: String,
    /// `kind:uuid` of the caller.
    pub actor: String,
    /// Commit time (ms).
    pub created_ms: i64,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
