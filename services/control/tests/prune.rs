#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

//! Pruning Control's tables on both databases, time moved by hand: a command and its status go
//! once the command is older than the command topic's retention, in batches of the configured
//! size, and nothing younger is touched.

use std::time::Duration;

use sea_orm::{EntityTrait, PaginatorTrait, Set};
use sipmba_control::entity::{commands, statuses};
use sipmba_runtime::{clock::Clock, prune::Pruner};
use sipmba_testkit::{Backend, TestDb};
use uuid::Uuid;

const HOUR: i64 = 3_600_000;
const RETENTION: Duration = Duration::from_secs(24 * 3600);

async fn command(db: &sea_orm::DatabaseConnection, created_ms: i64, status: bool) -> Uuid {
    let id = Uuid::new_v4();
    commands::Entity::insert(commands::ActiveModel {
        id: Set(id),
        thing_id: Set(Uuid::new_v4()),
        issuer_kind: Set("user".into()),
        issuer: Set("someone".into()),
        name: Set("fan.on".into()),
        payload: Set(vec![]),
        created_ms: Set(created_ms),
        expires_ms: Set(created_ms + HOUR),
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    if status {
        statuses::Entity::insert(statuses::ActiveModel {
            command_id: Set(id),
            state: Set(3),
            updated_ms: Set(created_ms + 1000),
            detail: Set(String::new()),
        })
        .exec_without_returning(db)
        .await
        .unwrap();
    }
    id
}

async fn commands_older_than_the_retention_go_with_their_status(backend: Backend) {
    let db = TestDb::new(backend).await.unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    sipmba_control::migrate(&conn).await.unwrap();
    let start = 1_000 * HOUR;
    // Seven old commands (five with a status), three recent ones with a status.
    let mut old = Vec::new();
    for i in 0..7 {
        old.push(command(&conn, start + i, i < 5).await);
    }
    let mut recent = Vec::new();
    for i in 0..3 {
        recent.push(command(&conn, start + 20 * HOUR + i, true).await);
    }
    let clock = Clock::manual(start + 23 * HOUR);
    let pruner = Pruner::new(conn.clone(), sipmba_control::prune_rules(RETENTION))
        .with_clock(clock.clone())
        .with_batch(2);
    // Within the retention: nothing goes.
    assert_eq!(
        pruner.run_once().await.unwrap(),
        vec![("control_statuses", 0), ("control_commands", 0)]
    );
    assert_eq!(commands::Entity::find().count(&conn).await.unwrap(), 10);
    // A day after the old ones were accepted: they go, in batches of two, the recent stay.
    clock.set(start + 24 * HOUR + 10);
    assert_eq!(
        pruner.run_once().await.unwrap(),
        vec![("control_statuses", 5), ("control_commands", 7)]
    );
    let left: Vec<Uuid> = commands::Entity::find()
        .all(&conn)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left.len(), 3);
    assert!(recent.iter().all(|id| left.contains(id)));
    assert_eq!(statuses::Entity::find().count(&conn).await.unwrap(), 3);
    for id in old {
        assert!(
            commands::Entity::find_by_id(id)
                .one(&conn)
                .await
                .unwrap()
                .is_none()
        );
    }
    // Nothing due: a pass deletes nothing.
    assert_eq!(
        pruner.run_once().await.unwrap(),
        vec![("control_statuses", 0), ("control_commands", 0)]
    );
}

sipmba_testkit::on_both_databases!(commands_older_than_the_retention_go_with_their_status);
