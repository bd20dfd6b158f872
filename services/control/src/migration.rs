//! Control's schema, migrated at start.

use sea_orm::DatabaseConnection;
use sea_orm_migration::{async_trait, prelude::*};

use crate::entity::{commands, offsets, statuses};

/// The Control migrator.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init)]
    }

    fn migration_table_name() -> DynIden {
        "control_migrations".into_iden()
    }
}

struct Init;

impl MigrationName for Init {
    fn name(&self) -> &str {
        "m20261125_000001_control_init"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Init {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = sea_orm::Schema::new(manager.get_database_backend());
        manager
            .create_table(schema.create_table_from_entity(commands::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(statuses::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(offsets::Entity))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("control_commands_thing_created")
                    .table(commands::Entity)
                    .col(commands::Column::ThingId)
                    .col(commands::Column::CreatedMs)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("control_commands_created")
                    .table(commands::Entity)
                    .col(commands::Column::CreatedMs)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["control_offsets", "control_statuses", "control_commands"] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// Applies the Control migrations.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    sipmba_runtime::db::migrate::<Migrator>(db, 74000005).await
}
