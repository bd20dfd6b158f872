//! The Processing migrations: the telemetry tables, then the rules'.

use sea_orm::DatabaseConnection;
use sea_orm_migration::{async_trait, prelude::*};

use crate::entity::{definitions, firings, latest, metrics, offsets, presence, readings, states};

/// The Processing migrator.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init), Box::new(Rules)]
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

/// The migration adding rules, their states and firings.
struct Rules;

impl MigrationName for Rules {
    fn name(&self) -> &str {
        "m20261125_000002_processing_rules"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Rules {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = sea_orm::Schema::new(manager.get_database_backend());
        manager
            .create_table(schema.create_table_from_entity(definitions::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(states::Entity))
            .await?;
        manager
            .create_table(schema.create_table_from_entity(firings::Entity))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("processing_rules_owner_name")
                    .table(definitions::Entity)
                    .col(definitions::Column::OwnerId)
                    .col(definitions::Column::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("processing_firings_rule")
                    .table(firings::Entity)
                    .col(firings::Column::RuleId)
                    .col(firings::Column::FiredMs)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("processing_firings_status")
                    .table(firings::Entity)
                    .col(firings::Column::Status)
                    .col(firings::Column::Partition)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "processing_firings",
            "processing_rule_states",
            "processing_rules",
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
