//! Schema migrations of the Objects tables, recorded in their own table
//! (`objects_migrations`) so that services sharing a database do not collide.

use sea_orm::DatabaseBackend;
use sea_orm_migration::{async_trait, prelude::*};

/// The Objects migrator.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Init)]
    }

    fn migration_table_name() -> DynIden {
        "objects_migrations".into_iden()
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    ParentId,
    Path,
    Depth,
    State,
    CreatedMs,
    UpdatedMs,
}

#[derive(DeriveIden)]
enum Things {
    Table,
    Id,
    OwnerId,
    Name,
    State,
    CreatedMs,
    UpdatedMs,
}

#[derive(DeriveIden)]
enum ThingLabels {
    Table,
    ThingId,
    Key,
    Value,
}

#[derive(DeriveIden)]
enum Channels {
    Table,
    Id,
    OwnerId,
    Name,
    CreatedMs,
}

#[derive(DeriveIden)]
enum ChannelThings {
    Table,
    ChannelId,
    ThingId,
}

#[derive(DeriveIden)]
enum ChannelGrants {
    Table,
    ChannelId,
    GranteeId,
    ReadTelemetry,
    SendCommands,
    ExpiresMs,
    CreatedMs,
}

#[derive(DeriveIden)]
enum ObjectEvents {
    Table,
    Seq,
    Kind,
    Subject,
    Users,
    Things,
    Actor,
    CreatedMs,
}

struct Init;

impl MigrationName for Init {
    fn name(&self) -> &str {
        "m20261125_000001_objects_init"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Init {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Subtree queries are ranges over `path`; they need bytewise ordering. SQLite compares
        // bytewise by default; PostgreSQL needs the C collation.
        let path_collation = match manager.get_database_backend() {
            DatabaseBackend::Postgres => "COLLATE \"C\"",
            _ => "",
        };
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(ColumnDef::new(Users::Id).uuid().not_null().primary_key())
                    .col(
                        ColumnDef::new(Users::Username)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Users::ParentId).uuid().null())
                    .col(
                        ColumnDef::new(Users::Path)
                            .text()
                            .not_null()
                            .extra(path_collation),
                    )
                    .col(ColumnDef::new(Users::Depth).integer().not_null())
                    .col(ColumnDef::new(Users::State).small_integer().not_null())
                    .col(ColumnDef::new(Users::CreatedMs).big_integer().not_null())
                    .col(ColumnDef::new(Users::UpdatedMs).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(Users::Table, Users::ParentId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "users_path",
            Users::Table,
            &[Users::Path.into_iden()],
            true,
        )
        .await?;
        index(
            manager,
            "users_parent",
            Users::Table,
            &[Users::ParentId.into_iden()],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(Things::Table)
                    .col(ColumnDef::new(Things::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Things::OwnerId).uuid().not_null())
                    .col(ColumnDef::new(Things::Name).string_len(128).not_null())
                    .col(ColumnDef::new(Things::State).small_integer().not_null())
                    .col(ColumnDef::new(Things::CreatedMs).big_integer().not_null())
                    .col(ColumnDef::new(Things::UpdatedMs).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(Things::Table, Things::OwnerId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "things_owner_name",
            Things::Table,
            &[Things::OwnerId.into_iden(), Things::Name.into_iden()],
            true,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ThingLabels::Table)
                    .col(ColumnDef::new(ThingLabels::ThingId).uuid().not_null())
                    .col(ColumnDef::new(ThingLabels::Key).string_len(63).not_null())
                    .col(
                        ColumnDef::new(ThingLabels::Value)
                            .string_len(256)
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ThingLabels::ThingId)
                            .col(ThingLabels::Key),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ThingLabels::Table, ThingLabels::ThingId)
                            .to(Things::Table, Things::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "thing_labels_key_value",
            ThingLabels::Table,
            &[ThingLabels::Key.into_iden(), ThingLabels::Value.into_iden()],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(Channels::Table)
                    .col(ColumnDef::new(Channels::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Channels::OwnerId).uuid().not_null())
                    .col(ColumnDef::new(Channels::Name).string_len(128).not_null())
                    .col(ColumnDef::new(Channels::CreatedMs).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(Channels::Table, Channels::OwnerId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "channels_owner_name",
            Channels::Table,
            &[Channels::OwnerId.into_iden(), Channels::Name.into_iden()],
            true,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ChannelThings::Table)
                    .col(ColumnDef::new(ChannelThings::ChannelId).uuid().not_null())
                    .col(ColumnDef::new(ChannelThings::ThingId).uuid().not_null())
                    .primary_key(
                        Index::create()
                            .col(ChannelThings::ChannelId)
                            .col(ChannelThings::ThingId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChannelThings::Table, ChannelThings::ChannelId)
                            .to(Channels::Table, Channels::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChannelThings::Table, ChannelThings::ThingId)
                            .to(Things::Table, Things::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "channel_things_thing",
            ChannelThings::Table,
            &[ChannelThings::ThingId.into_iden()],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ChannelGrants::Table)
                    .col(ColumnDef::new(ChannelGrants::ChannelId).uuid().not_null())
                    .col(ColumnDef::new(ChannelGrants::GranteeId).uuid().not_null())
                    .col(
                        ColumnDef::new(ChannelGrants::ReadTelemetry)
                            .boolean()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ChannelGrants::SendCommands)
                            .boolean()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ChannelGrants::ExpiresMs)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ChannelGrants::CreatedMs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ChannelGrants::ChannelId)
                            .col(ChannelGrants::GranteeId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChannelGrants::Table, ChannelGrants::ChannelId)
                            .to(Channels::Table, Channels::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChannelGrants::Table, ChannelGrants::GranteeId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "channel_grants_grantee",
            ChannelGrants::Table,
            &[ChannelGrants::GranteeId.into_iden()],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ObjectEvents::Table)
                    .col(
                        ColumnDef::new(ObjectEvents::Seq)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ObjectEvents::Kind).integer().not_null())
                    .col(
                        ColumnDef::new(ObjectEvents::Subject)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(ObjectEvents::Users).text().not_null())
                    .col(ColumnDef::new(ObjectEvents::Things).text().not_null())
                    .col(
                        ColumnDef::new(ObjectEvents::Actor)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ObjectEvents::CreatedMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ObjectEvents::Table.into_iden(),
            ChannelGrants::Table.into_iden(),
            ChannelThings::Table.into_iden(),
            Channels::Table.into_iden(),
            ThingLabels::Table.into_iden(),
            Things::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

async fn index(
    manager: &SchemaManager<'_>,
    name: &str,
    table: impl IntoIden,
    cols: &[DynIden],
    unique: bool,
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for col in cols {
        stmt.col(col.clone());
    }
    if unique {
        stmt.unique();
    }
    manager.create_index(stmt.to_owned()).await
}
