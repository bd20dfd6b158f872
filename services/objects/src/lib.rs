//! The Objects service: users in a tree of any depth, things, channels with expiring grants, and
//! the authorization decisions the other services ask for.

pub mod entity;
mod grpc;
pub mod migration;
pub mod store;
mod validate;

pub use grpc::{ObjectsService, access_policy};
pub use store::{Caller, Store, ThingScope};
pub use validate::MAX_DEPTH;

/// Applies the Objects migrations. On PostgreSQL they run in one transaction under an advisory
/// lock, so that replicas starting together migrate once.
pub async fn migrate(db: &sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    use sea_orm::{ConnectionTrait, DatabaseBackend, TransactionTrait};
    use sea_orm_migration::MigratorTrait;
    if db.get_database_backend() == DatabaseBackend::Postgres {
        let txn = db.begin().await?;
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(74000002)")
            .await?;
        migration::Migrator::up(&txn, None).await?;
        txn.commit().await
    } else {
        migration::Migrator::up(db, None).await
    }
}
