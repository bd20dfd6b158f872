//! The acknowledged positions on PostgreSQL and SQLite: many sessions recorded together, and a
//! position of a replaced session refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use sipmba_collect::store::{AckStore, Recorded};
use sipmba_testkit::{Backend, TestDb};
use uuid::Uuid;

sipmba_testkit::on_both_databases!(
    positions_of_many_sessions_are_recorded_together_and_only_while_live
);

async fn positions_of_many_sessions_are_recorded_together_and_only_while_live(backend: Backend) {
    let db = TestDb::new(backend).await.unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    sipmba_collect::migrate(&conn).await.unwrap();
    let store = AckStore::new(conn);
    let things: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
    for (i, thing) in things.iter().enumerate() {
        assert_eq!(store.claim(*thing, &format!("s-{i}")).await.unwrap(), 0);
    }

    // Three hundred sessions at once: each position stored, each thing's own.
    let mut recording = tokio::task::JoinSet::new();
    for (i, thing) in things.iter().enumerate() {
        let (store, thing) = (store.clone(), *thing);
        recording.spawn(async move {
            let seq = 1000 + i as u64;
            (
                thing,
                seq,
                store.record(thing, &format!("s-{i}"), seq).await.unwrap(),
            )
        });
    }
    while let Some(done) = recording.join_next().await {
        let (thing, seq, outcome) = done.unwrap();
        assert_eq!(outcome, Recorded::Stored);
        assert_eq!(store.acked(thing).await.unwrap(), seq);
    }

    // A newer session (on any replica) takes the thing over: the older one's position is refused.
    store.claim(things[0], "newer").await.unwrap();
    assert_eq!(
        store.record(things[0], "s-0", 5000).await.unwrap(),
        Recorded::Superseded
    );
    assert_eq!(store.acked(things[0]).await.unwrap(), 1000);
    assert_eq!(
        store.record(things[0], "newer", 1001).await.unwrap(),
        Recorded::Stored
    );
    assert_eq!(store.acked(things[0]).await.unwrap(), 1001);

    // A position never moves down; one at or below the stored one is already stored.
    assert_eq!(
        store.record(things[1], "s-1", 3).await.unwrap(),
        Recorded::Stored
    );
    assert_eq!(store.acked(things[1]).await.unwrap(), 1001);
}
