//! `channel_grants`: permissions on a channel's things, per grantee, with an optional expiry.
use sea_orm::entity::prelude::*;

/// A grant row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "channel_grants")]
pub struct Model {
    /// The channel.
    #[sea_orm(primary_key, auto_increment = false)]
    pub channel_id: Uuid,
    /// The user receiving the permissions.
    #[sea_orm(primary_key, auto_increment = false)]
    pub grantee_id: Uuid,
    /// May read telemetry.
    pub read_telemetry: bool,
    /// May send commands.
    pub send_commands: bool,
    /// Expiry (ms); `None` for none.
    pub expires_ms: Option<i64>,
    /// Creation time (ms).
    pub created_ms: i64,
}

/// No declared relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
