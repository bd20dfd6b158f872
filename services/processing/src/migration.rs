//! The Processing migrations: the telemetry tables, then the rules'.

use sea_orm::DatabaseConnection;
use sea_orm_migration::{async_trait, prelude::*};

use crate::entity::{latest, metrics, offsets, presence, readings};

/// The Processing migrator.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init), Box::new(crate::rules::Migration)]
    }

    fn migration_table_name() -> DynIden {
        "processing_migrations".into_iden()
    }
}

struct Init;

impl MigrationName for Init {
    fn name(&self) -> &str {
        "m20261125_000001_processing_init"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Init {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = sea_orm::Schema::new(manager.get_database_backend());
        manager
            .create_table(schema.create_table_from_entity(readings::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(metrics::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(latest::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(presence::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(offsets::Entity))
            .await?;
        // History queries: one metric of one thing over a device-time range.
        manager
            .create_index(
                Index::create()
                    .name("processing_metrics_history")
                    .table(metrics::Entity)
                    .col(metrics::Column::ThingId)
                    .col(metrics::Column::Name)
                    .col(metrics::Column::DeviceMs)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "processing_offsets",
            "processing_presence",
            "processing_latest",
            "processing_metrics",
            "processing_readings",
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// Applies the Processing migrations.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    sipmba_runtime::db::migrate::<Migrator>(db, 74000006).await
}
