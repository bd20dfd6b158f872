//! The Objects service: users in a tree of any depth, things, channels with expiring grants, and
//! the authorization decisions the other services ask for.

pub mod entity;
mod grpc;
pub mod migration;
pub mod store;
pub mod validate;

pub use grpc::{ObjectsService, access_policy};
pub use store::{Caller, Store, ThingScope};
pub use validate::MAX_DEPTH;

/// Applies the Objects migrations. On PostgreSQL they run in one transaction under an advisory
/// lock, so that replicas starting together migrate once.
pub async fn migrate(db: &sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    sipmba_runtime::db::migrate::<migration::Migrator>(db, 74000002).await
}
