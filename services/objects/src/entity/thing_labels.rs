//! `thing_labels`: one row per label, indexed for selectors.
use sea_orm::entity::prelude::*;

/// A label row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "thing_labels")]
pub struct Model {
    /// The labelled thing.
    #[sea_orm(primary_key, auto_increment = false)]
    pub thing_id: Uuid,
    /// Label key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    /// Label value.
    pub value: String,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
