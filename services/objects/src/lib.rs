//! The Objects service: users in a tree of any depth, things, channels with expiring grants, and
//! the authorization decisions the other services ask for.

pub mod entity;
mod grpc;
pub mod migration;
pub mod settings;
pub mod store;
pub mod validate;

pub use grpc::{ObjectsService, access_policy};
pub use settings::Settings;
pub use store::{Caller, Store, ThingScope};
pub use validate::MAX_DEPTH;

/// Applies the Objects migrations. On PostgreSQL they run in one transaction under an advisory
/// lock, so that replicas starting together migrate once.
pub async fn migrate(db: &sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    sipmba_runtime::db::migrate::<migration::Migrator>(db, 74000002).await
}

/// The rows Objects prunes: the change feed's events older than `event_retention`, oldest
/// first and never past a kept one (what is gone is always everything up to a sequence number,
/// so a follower whose position is still kept has missed nothing), and never the newest event
/// (the feed's position survives, and SQLite does not hand its number out again).
pub fn prune_rules(event_retention: std::time::Duration) -> Vec<sipmba_runtime::prune::Rule> {
    let keep = i64::try_from(event_retention.as_millis()).unwrap_or(i64::MAX);
    vec![
        sipmba_runtime::prune::Rule::new("object_events", "seq", move |now| {
            format!(
                "seq <= (SELECT MAX(seq) FROM object_events WHERE created_ms < {}) \
                 AND seq < (SELECT MAX(seq) FROM object_events)",
                now.saturating_sub(keep)
            )
        })
        .ordered_by("seq"),
    ]
}
