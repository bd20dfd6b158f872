//! The highest acknowledged `seq` of each thing, shared by every Collect replica: what Welcome
//! tells a waking thing, and below which a resent reading is a duplicate.
//!
//! Sessions record their positions through one recorder per store: every position waiting while
//! the previous write runs goes into the next single statement, so a fleet sending small batches
//! costs a few writes per second, not one per batch.

use std::collections::HashSet;

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, EntityTrait, QueryFilter,
    Statement, Value,
    sea_query::{Expr, OnConflict},
};
use sipmba_runtime::{ServiceError, ServiceResult, ids::now_ms};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::entity::acked;

/// Most positions one statement records (three parameters each).
const RECORD_ROWS: usize = 1000;

/// Reads and advances acknowledged positions.
#[derive(Debug, Clone)]
pub struct AckStore {
    db: DatabaseConnection,
    recorder: mpsc::Sender<Position>,
}

/// A session's position waiting to be recorded, and who waits for the outcome.
#[derive(Debug)]
struct Position {
    thing: Uuid,
    session: String,
    seq: i64,
    done: oneshot::Sender<ServiceResult<Recorded>>,
}

/// What became of a session's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored: Welcome shows it from now on.
    Stored,
    /// Not stored: a newer session of the thing (on any replica) has taken over.
    Superseded,
}

impl AckStore {
    /// A store on a migrated database, with its recorder (a task of the current runtime, ending
    /// with the last clone of the store).
    pub fn new(db: DatabaseConnection) -> Self {
        let (recorder, positions) = mpsc::channel(4 * RECORD_ROWS);
        tokio::spawn(record(db.clone(), positions));
        Self { db, recorder }
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

    /// Moves `thing`'s position up to `seq` while `session` is its live session, in the
    /// recorder's next statement.
    pub async fn record(&self, thing: Uuid, session: &str, seq: u64) -> ServiceResult<Recorded> {
        let (done, outcome) = oneshot::channel();
        let position = Position {
            thing,
            session: session.to_owned(),
            seq: seq.try_into().unwrap_or(i64::MAX),
            done,
        };
        let stopped = || ServiceError::Unavailable("the position recorder stopped".into());
        self.recorder.send(position).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
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

/// Records the positions sessions send, all that wait in one statement.
async fn record(db: DatabaseConnection, mut positions: mpsc::Receiver<Position>) {
    let mut batch = Vec::with_capacity(RECORD_ROWS);
    while positions.recv_many(&mut batch, RECORD_ROWS).await > 0 {
        match store(&db, &batch).await {
            Ok(moved) => {
                for position in batch.drain(..) {
                    let outcome = if moved.contains(&(position.thing, position.seq)) {
                        Ok(Recorded::Stored)
                    } else {
                        // Not moved: superseded, or (never from a live session) already there.
                        settle(&db, &position).await
                    };
                    let _ = position.done.send(outcome);
                }
            }
            Err(e) => {
                for position in batch.drain(..) {
                    let _ = position.done.send(Err(ServiceError::Unavailable(format!(
                        "the acknowledged position was not recorded: {e}"
                    ))));
                }
            }
        }
    }
}

/// Moves each position of `batch` up while its session is still the thing's live one; returns
/// the (thing, seq) pairs that moved. PostgreSQL: one statement of one shape whatever the batch
/// (the rows as one JSON parameter), so it is prepared once per connection. SQLite: one update
/// per row in one transaction (one commit), the file being local.
async fn store(
    db: &DatabaseConnection,
    batch: &[Position],
) -> Result<HashSet<(Uuid, i64)>, sea_orm::DbErr> {
    let now = now_ms();
    if db.get_database_backend() == DatabaseBackend::Postgres {
        let rows: Vec<serde_json::Value> = batch
            .iter()
            .map(|p| serde_json::json!({"thing_id": p.thing, "session": p.session, "seq": p.seq}))
            .collect();
        let sql = "UPDATE collect_acked AS a SET seq = v.seq, updated_ms = $2 \
                   FROM jsonb_to_recordset($1::text::jsonb) AS v (thing_id uuid, session text, seq bigint) \
                   WHERE a.thing_id = v.thing_id AND a.session = v.session AND a.seq < v.seq \
                   RETURNING a.thing_id, a.seq";
        let values: Vec<Value> = vec![
            serde_json::Value::Array(rows).to_string().into(),
            now.into(),
        ];
        let moved = db
            .query_all_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                sql,
                values,
            ))
            .await?;
        return moved
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<Uuid>("", "thing_id")?,
                    row.try_get::<i64>("", "seq")?,
                ))
            })
            .collect();
    }
    let txn = sipmba_runtime::db::begin_write(db).await?;
    let mut moved = HashSet::new();
    for position in batch {
        let result = acked::Entity::update_many()
            .col_expr(acked::Column::Seq, Expr::value(position.seq))
            .col_expr(acked::Column::UpdatedMs, Expr::value(now))
            .filter(acked::Column::ThingId.eq(position.thing))
            .filter(acked::Column::Session.eq(position.session.as_str()))
            .filter(acked::Column::Seq.lt(position.seq))
            .exec(&txn)
            .await?;
        if result.rows_affected > 0 {
            moved.insert((position.thing, position.seq));
        }
    }
    txn.commit().await?;
    Ok(moved)
}

/// The outcome of a position the batch did not move: stored already when the session is live
/// and the row is at or past it, superseded otherwise.
async fn settle(db: &DatabaseConnection, position: &Position) -> ServiceResult<Recorded> {
    let row = acked::Entity::find_by_id(position.thing).one(db).await?;
    Ok(match row {
        Some(row) if row.session == position.session && row.seq >= position.seq => Recorded::Stored,
        _ => Recorded::Superseded,
    })
}
