//! The signing key ring shared by replicas through one database: the first key is made once, a
//! rotation is published before it signs, and replicas due together rotate once.

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction};
use sipmba_runtime::Clock;
use sipmba_sso::keys::{KeyRing, KeyTiming};

use super::*;

sipmba_testkit::on_both_databases!(
    replicas_starting_together_on_an_empty_database_share_one_key,
    a_rotation_is_published_before_it_signs_and_happens_once,
);

const HOUR_MS: i64 = 3_600_000;
const AHEAD_MS: i64 = 2 * 60_000;
const TIMING: KeyTiming = KeyTiming {
    keep_retired_ms: HOUR_MS,
    publish_ahead_ms: AHEAD_MS,
};

fn ms(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap())
}

/// A migrated, empty database and four connections to it: three replicas and the test's own.
async fn empty_database(backend: Backend) -> (TestDb, Vec<DatabaseConnection>) {
    let db = TestDb::new(backend).await.unwrap();
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(sipmba_runtime::db::connect(&db.url, 2).await.unwrap());
    }
    sipmba_sso::migrate(&conns[0]).await.unwrap();
    (db, conns)
}

/// Holds back every write to the key table (readers go on) until the transaction ends.
async fn hold_writes(backend: Backend, conn: &DatabaseConnection) -> DatabaseTransaction {
    let txn = sipmba_runtime::db::begin_write(conn).await.unwrap();
    if backend == Backend::Postgres {
        txn.execute_unprepared("LOCK TABLE sso_keys IN EXCLUSIVE MODE")
            .await
            .unwrap();
    }
    txn
}

/// Runs `tasks` together while writes are held back for a moment, so that every one of them has
/// looked at the ring before any can change it.
async fn all_at_once<T, F>(backend: Backend, conn: &DatabaseConnection, tasks: Vec<F>) -> Vec<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let held = hold_writes(backend, conn).await;
    let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.commit().await.unwrap();
    let mut done = Vec::new();
    for handle in handles {
        done.push(handle.await.unwrap());
    }
    done
}

fn kids(ring: &KeyRing) -> Vec<String> {
    let mut kids: Vec<String> = ring
        .jwks()
        .keys
        .iter()
        .map(|k| k.common.key_id.clone().unwrap())
        .collect();
    kids.sort();
    kids
}

async fn replicas_starting_together_on_an_empty_database_share_one_key(backend: Backend) {
    let (_db, conns) = empty_database(backend).await;
    let clock = Clock::manual(1_700_000_000_000);
    let loads = conns[..3]
        .iter()
        .map(|conn| KeyRing::load(conn.clone(), TIMING, clock.clone()))
        .collect();
    let rings = all_at_once(backend, &conns[3], loads)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let first = rings[0].current().kid().to_owned();
    for ring in &rings {
        assert_eq!(
            ring.current().kid(),
            first,
            "every replica signs with one first key"
        );
        assert_eq!(kids(ring), vec![first.clone()], "and publishes only it");
    }
}

async fn a_rotation_is_published_before_it_signs_and_happens_once(backend: Backend) {
    let (_db, conns) = empty_database(backend).await;
    let clock = Clock::manual(1_700_000_000_000);
    let mut rings = Vec::new();
    for conn in &conns[..3] {
        let ring = KeyRing::load(conn.clone(), TIMING, clock.clone());
        rings.push(Arc::new(ring.await.unwrap()));
    }
    let old = rings[0].current().kid().to_owned();

    // Not due yet: nobody rotates.
    assert_eq!(rings[1].rotate_when_older(HOUR_MS).await.unwrap(), None);

    // Every replica due at once: one rotation.
    clock.advance(ms(HOUR_MS));
    let due = rings
        .iter()
        .map(|ring| {
            let ring = ring.clone();
            async move { ring.rotate_when_older(HOUR_MS).await.unwrap() }
        })
        .collect();
    let rotated: Vec<String> = all_at_once(backend, &conns[3], due)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        rotated.len(),
        1,
        "replicas due together rotate once: {rotated:?}"
    );
    let new = rotated[0].clone();

    // Each replica, once it has re-read the ring, publishes the new key and still signs with the
    // old one until the new one's start.
    let mut both = vec![old.clone(), new.clone()];
    both.sort();
    for ring in &rings {
        ring.reload().await.unwrap();
        assert_eq!(kids(ring), both);
        assert_eq!(
            ring.current().kid(),
            old,
            "a new key does not sign before its start"
        );
    }
    clock.advance(ms(AHEAD_MS));
    for ring in &rings {
        assert_eq!(
            ring.current().kid(),
            new,
            "at its start it signs, without a re-read"
        );
    }

    // A key that signs no more stays published for the longest token lifetime, then goes.
    clock.advance(ms(HOUR_MS - 1));
    rings[2].reload().await.unwrap();
    assert_eq!(kids(&rings[2]), both);
    clock.advance(ms(2));
    rings[2].reload().await.unwrap();
    assert_eq!(kids(&rings[2]), vec![new.clone()]);

    // An explicit rotation always rotates, also while another is pending; the last one published
    // takes over.
    let next = rings[2].rotate().await.unwrap();
    let last = rings[2].rotate().await.unwrap();
    assert_ne!(next, last);
    assert_eq!(rings[2].current().kid(), new);
    clock.advance(ms(AHEAD_MS));
    assert_eq!(rings[2].current().kid(), last);
    rings[0].reload().await.unwrap();
    assert_eq!(rings[0].current().kid(), last);
}
