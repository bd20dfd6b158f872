//! Control's view of the commands: a projection of `sipmba.commands` and
//! `sipmba.command-events`, kept in the database with the offsets it has read (so a restart goes
//! on where it stopped, and replicas sharing the database agree). Applying a record twice is
//! harmless: commands are inserted once by id, and a terminal state is never replaced.

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, OnConflict, Query},
};
use sipmba_proto::v1 as pb;
use sipmba_runtime::ServiceResult;
use uuid::Uuid;

use crate::entity::{commands, offsets, statuses};

/// A command with its reported status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRow {
    /// The command as queued.
    pub command: commands::Model,
    /// Its latest reported state, if any.
    pub status: Option<statuses::Model>,
}

/// True for ACKED, FAILED and EXPIRED.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        pb::CommandState::try_from(state),
        Ok(pb::CommandState::Acked | pb::CommandState::Failed | pb::CommandState::Expired)
    )
}

impl CommandRow {
    /// The state a reader sees at `now_ms`: a command past its expiry that reached no terminal
    /// state is EXPIRED, whether or not Collect has reported it yet.
    pub fn state_at(&self, now_ms: i64) -> (pb::CommandState, i64, &str) {
        let (state, updated, detail) = match &self.status {
            Some(s) => (s.state, s.updated_ms, s.detail.as_str()),
            None => (pb::CommandState::Queued as i32, self.command.created_ms, ""),
        };
        if !is_terminal(state) && self.command.expires_ms <= now_ms {
            return (pb::CommandState::Expired, self.command.expires_ms, "");
        }
        (
            pb::CommandState::try_from(state).unwrap_or(pb::CommandState::Queued),
            updated,
            detail,
        )
    }
}

/// One change read from the log.
#[derive(Debug, Clone)]
pub enum Change {
    /// A command record.
    Command(commands::Model),
    /// A state change.
    Event {
        /// The command.
        command: Uuid,
        /// Its new state.
        state: i32,
        /// When (ms).
        time_ms: i64,
        /// The thing's message.
        detail: String,
    },
}

impl Change {
    /// The command it concerns.
    pub fn command_id(&self) -> Uuid {
        match self {
            Self::Command(c) => c.id,
            Self::Event { command, .. } => *command,
        }
    }
}

/// Reads and writes the projection.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// A store on a migrated database.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The connection.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Where to resume reading `topic`/`partition`.
    pub async fn offset(&self, topic: &str, partition: i32) -> ServiceResult<Option<i64>> {
        Ok(offsets::Entity::find_by_id((topic.to_owned(), partition))
            .one(&self.db)
            .await?
            .map(|o| o.next_offset))
    }

    /// Records `command` (nothing when it is known already).
    pub async fn insert_command(&self, command: &commands::Model) -> ServiceResult<()> {
        insert_command(&self.db, command).await
    }

    /// Applies `changes` read from `topic`/`partition` and moves its offset to `next`, in one
    /// transaction.
    pub async fn apply(
        &self,
        topic: &str,
        partition: i32,
        changes: &[Change],
        next: i64,
    ) -> ServiceResult<()> {
        let txn = sipmba_runtime::db::begin_write(&self.db).await?;
        for change in changes {
            match change {
                Change::Command(command) => insert_command(&txn, command).await?,
                Change::Event {
                    command,
                    state,
                    time_ms,
                    detail,
                } => apply_event(&txn, *command, *state, *time_ms, detail).await?,
            }
        }
        offsets::Entity::insert(offsets::ActiveModel {
            topic: Set(topic.to_owned()),
            partition: Set(partition),
            next_offset: Set(next),
        })
        .on_conflict(
            OnConflict::columns([offsets::Column::Topic, offsets::Column::Partition])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        offsets::Entity::update_many()
            .col_expr(offsets::Column::NextOffset, Expr::value(next))
            .filter(offsets::Column::Topic.eq(topic))
            .filter(offsets::Column::Partition.eq(partition))
            .filter(offsets::Column::NextOffset.lt(next))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// One command with its status.
    pub async fn get(&self, id: Uuid) -> ServiceResult<Option<CommandRow>> {
        let Some(command) = commands::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        let status = statuses::Entity::find_by_id(id).one(&self.db).await?;
        Ok(Some(CommandRow { command, status }))
    }

    /// Commands newest first, strictly after `after` (created ms, id) in that order, optionally
    /// of one thing; at most `limit`.
    pub async fn list(
        &self,
        thing: Option<Uuid>,
        after: Option<(i64, Uuid)>,
        limit: u64,
    ) -> ServiceResult<Vec<CommandRow>> {
        let mut query = commands::Entity::find();
        if let Some(thing) = thing {
            query = query.filter(commands::Column::ThingId.eq(thing));
        }
        if let Some((created, id)) = after {
            query = query.filter(
                sea_orm::Condition::any()
                    .add(commands::Column::CreatedMs.lt(created))
                    .add(
                        sea_orm::Condition::all()
                            .add(commands::Column::CreatedMs.eq(created))
                            .add(commands::Column::Id.lt(id)),
                    ),
            );
        }
        let rows = query
            .order_by_desc(commands::Column::CreatedMs)
            .order_by_desc(commands::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        self.with_statuses(rows).await
    }

    async fn with_statuses(&self, rows: Vec<commands::Model>) -> ServiceResult<Vec<CommandRow>> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut found: std::collections::HashMap<Uuid, statuses::Model> = statuses::Entity::find()
            .filter(statuses::Column::CommandId.is_in(ids))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|s| (s.command_id, s))
            .collect();
        Ok(rows
            .into_iter()
            .map(|command| CommandRow {
                status: found.remove(&command.id),
                command,
            })
            .collect())
    }

    /// Commands of `thing` neither expired nor finished at `now_ms`.
    pub async fn pending(&self, thing: Uuid, now_ms: i64) -> ServiceResult<u64> {
        use sea_orm::PaginatorTrait;
        let terminal = [
            pb::CommandState::Acked as i32,
            pb::CommandState::Failed as i32,
            pb::CommandState::Expired as i32,
        ];
        Ok(commands::Entity::find()
            .filter(commands::Column::ThingId.eq(thing))
            .filter(commands::Column::ExpiresMs.gt(now_ms))
            .filter(
                commands::Column::Id.not_in_subquery(
                    Query::select()
                        .column(statuses::Column::CommandId)
                        .from(statuses::Entity)
                        .and_where(statuses::Column::State.is_in(terminal))
                        .to_owned(),
                ),
            )
            .count(&self.db)
            .await?)
    }
}
async fn insert_command(db: &impl ConnectionTrait, command: &commands::Model) -> ServiceResult<()> {
    let model = command.clone();
    commands::Entity::insert(commands::ActiveModel {
        id: Set(model.id),
        thing_id: Set(model.thing_id),
        issuer_kind: Set(model.issuer_kind),
        issuer: Set(model.issuer),
        name: Set(model.name),
        payload: Set(model.payload),
        created_ms: Set(model.created_ms),
        expires_ms: Set(model.expires_ms),
    })
    .on_conflict(
        OnConflict::column(commands::Column::Id)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

async fn apply_event(
    db: &impl ConnectionTrait,
    command: Uuid,
    state: i32,
    time_ms: i64,
    detail: &str,
) -> ServiceResult<()> {
    let current = statuses::Entity::find_by_id(command).one(db).await?;
    match current {
        // A terminal state is final.
        Some(s) if is_terminal(s.state) => {}
        // DELIVERED again (a redelivery): only the time moves.
        Some(_) if !is_terminal(state) => {
            statuses::Entity::update_many()
                .col_expr(statuses::Column::UpdatedMs, Expr::value(time_ms))
                .filter(statuses::Column::CommandId.eq(command))
                .filter(statuses::Column::State.eq(state))
                .exec(db)
                .await?;
        }
        Some(_) => {
            statuses::Entity::update_many()
                .col_expr(statuses::Column::State, Expr::value(state))
                .col_expr(statuses::Column::UpdatedMs, Expr::value(time_ms))
                .col_expr(statuses::Column::Detail, Expr::value(detail))
                .filter(statuses::Column::CommandId.eq(command))
                .filter(statuses::Column::State.eq(pb::CommandState::Delivered as i32))
                .exec(db)
                .await?;
        }
        None => {
            statuses::Entity::insert(statuses::ActiveModel {
                command_id: Set(command),
                state: Set(state),
                updated_ms: Set(time_ms),
                detail: Set(detail.to_owned()),
            })
            .on_conflict(
                OnConflict::column(statuses::Column::CommandId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
    }
    Ok(())
}
