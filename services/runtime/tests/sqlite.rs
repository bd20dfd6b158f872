//! SQLite as `--dev` uses it: several connections, transactions that read and then write.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

async fn counter(db: &sea_orm::DatabaseConnection) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT n FROM counter WHERE id = 1",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

/// Eight writers at once, each transaction reading the counter and then writing it: with the
/// write lock taken up front they wait for each other; none fails with "database is locked" (as
/// a deferred transaction's read-then-write does when another connection wrote meanwhile) and no
/// increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_then_write_transactions_wait_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let db = sipmba_runtime::db::connect(&url, 8).await.unwrap();
    db.execute_unprepared("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        .await
        .unwrap();
    db.execute_unprepared("INSERT INTO counter VALUES (1, 0)")
        .await
        .unwrap();
    let mode = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA journal_mode",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<String>("", "journal_mode")
        .unwrap();
    assert_eq!(mode, "wal", "readers do not block the writer");

    let writers = (0..8).map(|_| {
        let db = db.clone();
        tokio::spawn(async move {
            for _ in 0..25 {
                let txn = sipmba_runtime::db::begin_write(&db).await?;
                let n = txn
                    .query_one_raw(Statement::from_string(
                        DbBackend::Sqlite,
                        "SELECT n FROM counter WHERE id = 1",
                    ))
                    .await?
                    .map(|row| row.try_get::<i64>("", "n"))
                    .transpose()?
                    .unwrap_or(0);
                tokio::task::yield_now().await;
                txn.execute_unprepared(&format!("UPDATE counter SET n = {} WHERE id = 1", n + 1))
                    .await?;
                txn.commit().await?;
            }
            Ok::<_, sea_orm::DbErr>(())
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap().expect("no writer fails");
    }
    assert_eq!(counter(&db).await, 200, "no increment lost");

    // What the deferred default does under the same load: some transactions fail.
    let deferred = (0..8).map(|_| {
        let db = db.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..25 {
                let attempt = async {
                    let txn = db.begin().await?;
                    txn.query_one_raw(Statement::from_string(
                        DbBackend::Sqlite,
                        "SELECT n FROM counter WHERE id = 1",
                    ))
                    .await?;
                    tokio::task::yield_now().await;
                    txn.execute_unprepared("UPDATE counter SET n = n + 1 WHERE id = 1")
                        .await?;
                    txn.commit().await
                };
                if let Err(e) = attempt.await {
                    assert!(e.to_string().contains("locked"), "{e}");
                    failed += 1;
                }
            }
            failed
        })
    });
    let mut failed = 0;
    for task in deferred.collect::<Vec<_>>() {
        failed += task.await.unwrap();
    }
    println!("deferred transactions that failed with \"database is locked\": {failed} of 200");
}
