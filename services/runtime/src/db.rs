//! Database connections: PostgreSQL in clusters, SQLite embedded.

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// Connects to `url` with at most `max_connections` pooled connections. For a SQLite file the
/// file and its directory are created when missing.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let mut url = url.to_owned();
    let mut max = max_connections;
    let mut file = false;
    let mut memory = false;
    if let Some(rest) = url.strip_prefix("sqlite:") {
        if rest.contains(":memory:") || rest.contains("mode=memory") {
            // Every connection to an in-memory database is a different database.
            max = 1;
            memory = true;
        } else {
            let path = rest.trim_start_matches("//");
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    DbErr::Custom(format!("cannot create directory {}: {e}", dir.display()))
                })?;
            }
            file = true;
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
    }
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false)
        // The server starts (and reports NOT_SERVING) while the database is still down.
        .connect_lazy(true);
    if memory {
        // The database lives as long as its one connection: the pool must never close it for its
        // age (30 minutes by default) or for idling (10), which swapped in an empty database
        // (found by fuzzing `oauth_http` for an hour).
        options
            .max_lifetime(None::<Duration>)
            .idle_timeout(None::<Duration>);
    }
    if file {
        // Write-ahead logging: readers never block the writer nor the writer them (in the
        // default rollback journal a reader holding the file made a writer fail with "database is
        // locked"), and a commit is one fsync of the log instead of three of the journal and the
        // file. `synchronous = FULL` keeps every commit durable across a power cut.
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5))
        });
    }
    Database::connect(options).await
}

/// A write transaction: `BEGIN IMMEDIATE` on SQLite, which takes the write lock up front and
/// waits for it (busy timeout), so that a transaction that reads and then writes cannot fail with
/// "database is locked" when another connection wrote meanwhile (a deferred transaction cannot
/// wait there: SQLite refuses its upgrade at once). On PostgreSQL a plain `BEGIN`.
pub async fn begin_write(db: &DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, DbErr> {
    use sea_orm::TransactionTrait;
    db.begin_with_options(sea_orm::TransactionOptions {
        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// A write transaction that holds the advisory lock `lock` on PostgreSQL until it ends, so that
/// replicas doing the same read-then-write (such as "make the first key when there is none") do
/// it one after the other. On SQLite [`begin_write`] alone serialises writers.
pub async fn begin_locked(
    db: &DatabaseConnection,
    lock: i64,
) -> Result<sea_orm::DatabaseTransaction, DbErr> {
    let txn = begin_write(db).await?;
    advisory_lock(&txn, lock).await?;
    Ok(txn)
}

/// Waits for the advisory lock `lock` on PostgreSQL and holds it until `txn` ends
/// (`pg_advisory_xact_lock`); nothing on SQLite, where [`begin_write`] serialises writers.
///
/// Taken right before a table's last insert, it makes the rows of an outbox read by sequence
/// number (`seq > position`) commit in the order of their numbers: otherwise a writer that took
/// 11 can commit before the one holding 10, and a follower that read 11 never reads 10.
pub async fn advisory_lock(txn: &sea_orm::DatabaseTransaction, lock: i64) -> Result<(), DbErr> {
    use sea_orm::{ConnectionTrait, DatabaseBackend};
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({lock})"))
            .await?;
    }
    Ok(())
}

/// True when `db` answers a trivial query.
pub async fn is_reachable(db: &DatabaseConnection) -> bool {
    db.ping().await.is_ok()
}

/// Applies the migrations of `M`. On PostgreSQL they run in one transaction under the advisory
/// lock `lock`, so that replicas starting together migrate once.
pub async fn migrate<M: sea_orm_migration::MigratorTrait>(
    db: &DatabaseConnection,
    lock: i64,
) -> Result<(), DbErr> {
    use sea_orm::{DatabaseBackend, TransactionTrait};
    if db.get_database_backend() == DatabaseBackend::Postgres {
        let txn = db.begin().await?;
        advisory_lock(&txn, lock).await?;
        M::up(&txn, None).await?;
        txn.commit().await
    } else {
        M::up(db, None).await
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait;

    #[tokio::test]
    async fn an_in_memory_database_is_never_closed_for_its_age_or_idling() {
        let db = super::connect("sqlite::memory:", 8).await.unwrap();
        db.execute_unprepared("CREATE TABLE kept (id INTEGER)")
            .await
            .unwrap();
        let options = db.get_sqlite_connection_pool().options();
        assert_eq!(options.get_max_connections(), 1);
        // sqlx closes a connection after 30 minutes and an idle one after 10: here that would
        // swap the table above for an empty database.
        assert_eq!(options.get_max_lifetime(), None);
        assert_eq!(options.get_idle_timeout(), None);
        db.execute_unprepared("INSERT INTO kept VALUES (1)")
            .await
            .unwrap();

        // A file is another matter: its connections are renewed as sqlx does by default.
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/f.db", dir.path().display());
        let file = super::connect(&url, 2).await.unwrap();
        let options = file.get_sqlite_connection_pool().options();
        assert!(options.get_max_lifetime().is_some());
    }
}
