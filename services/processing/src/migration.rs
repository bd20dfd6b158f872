//! The Processing migrations: the telemetry tables, the rules', then the rollups (filled from the
//! values stored before them) and the indexes pruning by device time uses.

use sea_orm::DatabaseConnection;
use sea_orm_migration::{async_trait, prelude::*};

use crate::{
    entity::{definitions, firings, latest, metrics, offsets, presence, readings, rollups, states},
    rollup::{HOUR, MINUTE},
    store::bucket_sql,
};

/// The Processing migrator.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init), Box::new(Rules), Box::new(Rollups)]
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

/// The migration adding minute and hour rollups, filled from the stored values, and the indexes
/// that pruning by device time reads.
struct Rollups;

impl MigrationName for Rollups {
    fn name(&self) -> &str {
        "m20261207_000003_processing_rollups"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Rollups {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = sea_orm::Schema::new(manager.get_database_backend());
        manager
            .create_table(schema.create_table_from_entity(rollups::Entity))
            .await?;
        for (name, mut index) in [
            (
                "processing_rollups_due",
                Index::create()
                    .table(rollups::Entity)
                    .col(rollups::Column::WidthMs)
                    .col(rollups::Column::StartMs)
                    .to_owned(),
            ),
            (
                "processing_metrics_device_ms",
                Index::create()
                    .table(metrics::Entity)
                    .col(metrics::Column::DeviceMs)
                    .to_owned(),
            ),
            (
                "processing_readings_device_ms",
                Index::create()
                    .table(readings::Entity)
                    .col(readings::Column::DeviceMs)
                    .to_owned(),
            ),
        ] {
            manager.create_index(index.name(name).to_owned()).await?;
        }
        // The values stored before rollups existed are rolled up once, so that pruning them
        // loses nothing.
        let db = manager.get_connection();
        for width in [MINUTE, HOUR] {
            let bucket = bucket_sql("device_ms", width);
            db.execute_unprepared(&format!(
                "INSERT INTO processing_rollups \
                 (thing_id, name, width_ms, start_ms, \"count\", numbers, \"sum\", \"min\", \"max\") \
                 SELECT thing_id, name, {width}, {bucket}, COUNT(*), COUNT(number), SUM(number), \
                 MIN(number), MAX(number) FROM processing_metrics GROUP BY thing_id, name, {bucket}"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (index, table) in [
            ("processing_readings_device_ms", "processing_readings"),
            ("processing_metrics_device_ms", "processing_metrics"),
        ] {
            manager
                .drop_index(Index::drop().name(index).table(table).to_owned())
                .await?;
        }
        manager
            .drop_table(
                Table::drop()
                    .table("processing_rollups")
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
