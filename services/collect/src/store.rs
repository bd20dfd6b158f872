//! The highest acknowledged `seq` of each thing, shared by every Collect replica: what Welcome
//! tells a waking thing, and below which a resent reading is a duplicate.

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    sea_query::{Expr, OnConflict},
};
use sea_orm_migration::{async_trait, prelude::*};
use sipmba_runtime::{ServiceResult, ids::now_ms};
use uuid::Uuid;

/// The `collect_acked` table.
pub mod acked {
    use sea_orm::entity::prelude::*;

    /// A thing's acknowledged position.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "collect_acked")]
    pub struct Model {
        /// The thing.
        #[sea_orm(primary_key, auto_increment = false)]
        pub thing_id: Uuid,
        /// Highest acknowledged seq.
        pub seq: i64,
        /// The thing's live session (any replica): the newest Hello wins.
        pub session: String,
        /// Last change (ms).
        pub updated_ms: i64,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The Collect migrator.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init)]
    }

    fn migration_table_name() -> DynIden {
        "collect_migrations".into_iden()
    }
}

struct Init;

impl MigrationName for Init {
    fn name(&self) -> &str {
        "m20261125_000001_collect_init"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Init {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = sea_orm::Schema::new(manager.get_database_backend());
        manager
            .create_table(schema.create_table_from_entity(acked::Entity))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("collect_acked").if_exists().to_owned())
            .await
    }
}

/// Applies the Collect migrations.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    sipmba_runtime::db::migrate::<Migrator>(db, 74000004).await
}

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
