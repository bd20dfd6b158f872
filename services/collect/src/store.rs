//! The highest acknowledged `seq` of each thing, shared by every Collect replica: what Welcome
//! tells a waking thing, and below which a resent reading is a duplicate.

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    sea_query::{Expr, OnConflict},
};
use sipmba_runtime::{ServiceResult, ids::now_ms};
use uuid::Uuid;

use crate::entity::acked;

/// Reads and advances acknowledged positions.
#[derive(Debug, Clone)]
pub struct AckStore {
    db: DatabaseConnection,
}

impl AckStore {
    /// A store on a migrated database.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The connection.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The highest acknowledged seq of `thing` (0 when none).
    pub async fn acked(&self, thing: Uuid) -> ServiceResult<u64> {
        Ok(acked::Entity::find_by_id(thing)
            .one(&self.db)
            .await?
            .map_or(0, |row| row.seq.try_into().unwrap_or(0)))
    }

    /// Makes `session` the thing's live session (a newer session replaces the older, on any
    /// replica); returns the acknowledged position.
    pub async fn claim(&self, thing: Uuid, session: &str) -> ServiceResult<u64> {
        let now = now_ms();
        acked::Entity::insert(acked::ActiveModel {
            thing_id: Set(thing),
            seq: Set(0),
            session: Set(session.to_owned()),
            updated_ms: Set(now),
        })
        .on_conflict(
            OnConflict::column(acked::Column::ThingId)
                .update_columns([acked::Column::Session, acked::Column::UpdatedMs])
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        self.acked(thing).await
    }

    /// True while `session` is the thing's live session.
    pub async fn is_live(&self, thing: Uuid, session: &str) -> ServiceResult<bool> {
        Ok(acked::Entity::find_by_id(thing)
            .one(&self.db)
            .await?
            .is_none_or(|row| row.session == session))
    }

    /// Moves `thing`'s position up to `seq` (never down).
    pub async fn advance(&self, thing: Uuid, seq: u64) -> ServiceResult<()> {
        let seq: i64 = seq.try_into().unwrap_or(i64::MAX);
        let now = now_ms();
        let moved = acked::Entity::update_many()
            .col_expr(acked::Column::Seq, Expr::value(seq))
            .col_expr(acked::Column::UpdatedMs, Expr::value(now))
            .filter(acked::Column::ThingId.eq(thing))
            .filter(acked::Column::Seq.lt(seq))
            .exec(&self.db)
            .await?;
        if moved.rows_affected == 0 {
            acked::Entity::insert(acked::ActiveModel {
                thing_id: Set(thing),
                seq: Set(seq),
                session: Set(String::new()),
                updated_ms: Set(now),
            })
            .on_conflict(
                OnConflict::column(acked::Column::ThingId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        }
        Ok(())
    }
}
