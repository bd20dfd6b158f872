//! SSO schema migrations, recorded in `sso_migrations`.

use sea_orm::{EntityTrait, Schema};
use sea_orm_migration::{async_trait, prelude::*};

use crate::entity::{
    authorization_codes, clients, credentials, cursors, issued, keys, refresh_tokens, revocations,
};

/// The SSO migrator.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init), Box::new(AuthorizationCodes)]
    }

    fn migration_table_name() -> DynIden {
        "sso_migrations".into_iden()
    }
}

struct Init;

impl MigrationName for Init {
    fn name(&self) -> &str {
        "m20261125_000001_sso_init"
    }
}

async fn create<E: EntityTrait>(manager: &SchemaManager<'_>, entity: E) -> Result<(), DbErr> {
    let schema = Schema::new(manager.get_database_backend());
    manager
        .create_table(schema.create_table_from_entity(entity))
        .await?;
    for index in schema.create_index_from_entity(entity) {
        manager.create_index(index).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Init {
    // The first schema is the entities' own; later changes are written out step by step.
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create(manager, credentials::Entity).await?;
        create(manager, clients::Entity).await?;
        create(manager, refresh_tokens::Entity).await?;
        create(manager, issued::Entity).await?;
        create(manager, keys::Entity).await?;
        create(manager, revocations::Entity).await?;
        create(manager, cursors::Entity).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "sso_cursors",
            "sso_revocations",
            "sso_keys",
            "sso_issued",
            "sso_refresh_tokens",
            "sso_clients",
            "sso_credentials",
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// The authorization code grant's codes.
struct AuthorizationCodes;

impl MigrationName for AuthorizationCodes {
    fn name(&self) -> &str {
        "m20261203_000002_sso_authorization_codes"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AuthorizationCodes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create(manager, authorization_codes::Entity).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table("sso_authorization_codes")
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
