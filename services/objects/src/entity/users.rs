//! `users`: the tree. `path` is the materialized path `/<root>/.../<self>/`, collated bytewise, so
//! that a subtree is one index range and the ancestors are read off the path.
use sea_orm::entity::prelude::*;

/// A user row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    /// UUIDv4.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Unique login name.
    pub username: String,
    /// Parent; `None` for a root user.
    pub parent_id: Option<Uuid>,
    /// `/<root>/.../<self>/`.
    pub path: String,
    /// 0 for a root user.
    pub depth: i32,
    /// [`super::ACTIVE`] or [`super::DISABLED`].
    pub state: i16,
    /// Creation time (ms).
    pub created_ms: i64,
    /// Last change (ms).
    pub updated_ms: i64,
}

/// No declared relations; joins are written as subqueries.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
