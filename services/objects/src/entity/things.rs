//! `things`.
use sea_orm::entity::prelude::*;

/// A thing row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "things")]
pub struct Model {
    /// UUIDv4.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Owning user.
    pub owner_id: Uuid,
    /// Unique per owner.
    pub name: String,
    /// [`super::ACTIVE`] or [`super::DISABLED`].
    pub state: i16,
    /// Creation time (ms).
    pub created_ms: i64,
    /// Last change (ms).
    pub updated_ms: i64,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
