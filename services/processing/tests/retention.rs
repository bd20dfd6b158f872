#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

//! Telemetry retention on both databases, time moved by hand: raw values are pruned past their
//! retention, minute and hour rollups past theirs; a history query answers from the finest data
//! still kept, and its buckets equal a model of every value ever stored — after the raw values
//! are gone, for a reading delivered twice, and for a reading that arrives late. The rollups of
//! values stored before rollups existed are filled by the migration.

use std::time::Duration;

use sea_orm::{EntityTrait, PaginatorTrait, Set};
use sea_orm_migration::MigratorTrait;
use sipmba_processing::{
    Incoming,
    entity::{metrics, readings, rollups},
    rollup::{HOUR, MINUTE, Retention},
    rules::Snapshot,
    store::{Bucket, Store},
};
use sipmba_proto::v1 as pb;
use sipmba_runtime::{clock::Clock, prune::Pruner};
use sipmba_testkit::{Backend, TestDb};
use uuid::Uuid;

/// An hour on the epoch's grid, far from it.
const T0: i64 = 500_000 * HOUR;
const RETENTION: Retention = Retention {
    raw: Duration::from_secs(2 * 3600),
    minutes: Duration::from_secs(24 * 3600),
    hours: Duration::from_secs(30 * 24 * 3600),
};

fn reading(thing: Uuid, seq: u64, device_ms: i64, metrics: Vec<pb::Metric>) -> Incoming {
    Incoming {
        thing,
        reading: pb::Reading {
            seq,
            device_time: Some(sipmba_runtime::ids::timestamp_from_ms(device_ms)),
            metrics,
            payload: vec![],
        },
        received_ms: device_ms + 500,
    }
}

fn number(name: &str, n: f64) -> pb::Metric {
    pb::Metric {
        name: name.into(),
        value: Some(pb::metric::Value::Number(n)),
        unit: String::new(),
    }
}

fn text(name: &str, t: &str) -> pb::Metric {
    pb::Metric {
        name: name.into(),
        value: Some(pb::metric::Value::Text(t.into())),
        unit: String::new(),
    }
}

#[path = "common/model.rs"]
mod model;

/// Every value stored (device time in ms, value); quarters, so sums are exact in f64.
#[derive(Default)]
struct Model(Vec<(i64, f64)>);

impl Model {
    fn buckets(&self, width: i64, (start, end): (i64, i64)) -> model::Buckets {
        model::buckets(
            self.0.iter().filter(|(ms, _)| (start..end).contains(ms)),
            width,
        )
    }
}

fn assert_agrees(got: &[Bucket], want: &model::Buckets, what: &str) {
    assert_eq!(
        got.iter().map(|b| b.start_ms).collect::<Vec<_>>(),
        want.keys().copied().collect::<Vec<_>>(),
        "{what}: bucket starts"
    );
    for b in got {
        let (count, min, max, sum) = want[&b.start_ms];
        assert_eq!(
            (b.count, b.min, b.max, b.sum),
            (count, Some(min), Some(max), Some(sum)),
            "{what}: bucket {}",
            b.start_ms
        );
        let avg = b.avg.unwrap();
        assert!((avg - sum / count as f64).abs() < 1e-9, "{what}: avg {avg}");
    }
}

async fn counts(conn: &sea_orm::DatabaseConnection) -> (u64, u64, u64) {
    (
        readings::Entity::find().count(conn).await.unwrap(),
        metrics::Entity::find().count(conn).await.unwrap(),
        rollups::Entity::find().count(conn).await.unwrap(),
    )
}

async fn history_outlives_the_raw_values(backend: Backend) {
    let db = TestDb::new(backend).await.unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    sipmba_processing::migrate(&conn).await.unwrap();
    let store = Store::new(conn.clone()).with_retention(RETENTION);
    let rules = Snapshot::default();
    let thing = Uuid::new_v4();
    // Three hours, a reading every 10 s: a temperature and, every minute, a text note.
    let mut model = Model::default();
    let mut all = Vec::new();
    for i in 0..1080u64 {
        let ms = T0 + i as i64 * 10_000;
        let value = f64::from((i % 13) as u32) / 4.0 - 1.0;
        model.0.push((ms, value));
        let mut m = vec![number("temperature", value)];
        if i % 6 == 0 {
            m.push(text("note", "ok"));
        }
        all.push(reading(thing, i + 1, ms, m));
    }
    for (n, batch) in all.chunks(200).enumerate() {
        // A seq repeated within a batch, as a resend after a lost Ack can make it.
        let mut batch = batch.to_vec();
        batch.push(batch[0].clone());
        store
            .apply("telemetry", 0, &batch, n as i64 + 1, &rules)
            .await
            .unwrap();
    }
    // The first batch delivered again: nothing is stored or counted twice.
    store
        .apply("telemetry", 0, &all[..200], 99, &rules)
        .await
        .unwrap();
    let range = (T0, T0 + 3 * HOUR);
    let mut now = T0 + 3 * HOUR;
    let query = |width: i64, now: i64| {
        let store = store.clone();
        async move {
            store
                .buckets(thing, "temperature", range, width, None, 10_000, now)
                .await
                .unwrap()
        }
    };
    // Raw values for the last two hours, minutes before them: every width agrees with the model.
    for width in [MINUTE, 15 * MINUTE, HOUR, 90_000] {
        assert_agrees(
            &query(width, now).await,
            &model.buckets(width, range),
            &format!("width {width} before pruning"),
        );
    }
    // Text counts over rollups as over raw values.
    let notes = store
        .buckets(thing, "note", range, HOUR, None, 100, now)
        .await
        .unwrap();
    assert_eq!(
        notes.iter().map(|b| b.count).collect::<Vec<_>>(),
        [60, 60, 60]
    );
    assert!(notes.iter().all(|b| b.sum.is_none() && b.avg.is_none()));

    let clock = Clock::manual(now);
    let pruner = Pruner::new(
        conn.clone(),
        sipmba_processing::prune_rules(Duration::from_secs(24 * 3600), &RETENTION),
    )
    .with_clock(clock.clone())
    .with_batch(100);
    let (raw_readings, raw_metrics, minutes_and_hours) = counts(&conn).await;
    assert_eq!(raw_readings, 1080);
    assert_eq!(raw_metrics, 1080 + 180);
    // 180 minutes and 3 hours of two metrics.
    assert_eq!(minutes_and_hours, 2 * (180 + 3));
    pruner.run_once().await.unwrap();
    // The first hour's raw values are gone, in batches of 100; the rollups are all kept.
    let (r, m, rolled) = counts(&conn).await;
    assert_eq!((r, m, rolled), (720, 720 + 120, minutes_and_hours));
    let points = store
        .points(thing, "temperature", range, None, 10_000)
        .await
        .unwrap();
    assert_eq!(points.len(), 720);
    assert!(points.iter().all(|p| p.device_ms >= now - 2 * HOUR));
    for width in [MINUTE, 15 * MINUTE, HOUR] {
        assert_agrees(
            &query(width, now).await,
            &model.buckets(width, range),
            &format!("width {width} after the raw values were pruned"),
        );
    }
    // A width rollups cannot answer reads what raw values are left.
    assert_agrees(
        &query(90_000, now).await,
        &model.buckets(90_000, (T0 + HOUR, range.1)),
        "width 90 s after pruning",
    );

    // Two days on: raw values and minutes are gone, hours still answer.
    now = T0 + 48 * HOUR;
    clock.set(now);
    pruner.run_once().await.unwrap();
    assert_eq!(counts(&conn).await, (0, 0, 2 * 3));
    assert!(query(MINUTE, now).await.is_empty());
    assert_agrees(
        &query(HOUR, now).await,
        &model.buckets(HOUR, range),
        "hours after two days",
    );
    // A reading that arrives late, long after its raw values would be pruned, still counts.
    store
        .apply(
            "telemetry",
            0,
            &[reading(
                thing,
                5000,
                T0 + 5 * MINUTE,
                vec![number("temperature", 9.0)],
            )],
            100,
            &rules,
        )
        .await
        .unwrap();
    model.0.push((T0 + 5 * MINUTE, 9.0));
    pruner.run_once().await.unwrap();
    assert_agrees(
        &query(HOUR, now).await,
        &model.buckets(HOUR, range),
        "hours with a late reading",
    );
    // Past every retention nothing is left.
    clock.set(T0 + 31 * 24 * HOUR);
    pruner.run_once().await.unwrap();
    assert_eq!(counts(&conn).await, (0, 0, 0));
}

async fn values_stored_before_rollups_are_rolled_up_by_the_migration(backend: Backend) {
    let db = TestDb::new(backend).await.unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    // The schema as it was before rollups.
    sipmba_processing::migration::Migrator::up(&conn, Some(2))
        .await
        .unwrap();
    let thing = Uuid::new_v4();
    let mut model = Model::default();
    let rows = (0..500i64).map(|i| {
        let ms = T0 + i * 17_000;
        let value = f64::from((i % 9) as i32) / 4.0;
        model.0.push((ms, value));
        metrics::ActiveModel {
            thing_id: Set(thing),
            name: Set("temperature".into()),
            seq: Set(i + 1),
            device_ms: Set(ms),
            received_ms: Set(ms),
            number: Set(Some(value)),
            is_flag: Set(false),
            text: Set(None),
            unit: Set(String::new()),
        }
    });
    let rows: Vec<_> = rows.collect();
    for chunk in rows.chunks(100) {
        metrics::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&conn)
            .await
            .unwrap();
    }
    sipmba_processing::migrate(&conn).await.unwrap();
    // Far enough on that raw values would not be read: the rollups alone answer.
    let now = T0 + 10 * HOUR;
    let store = Store::new(conn.clone()).with_retention(Retention {
        raw: Duration::from_secs(60),
        ..RETENTION
    });
    let range = (T0, T0 + 3 * HOUR);
    for width in [MINUTE, HOUR] {
        let got = store
            .buckets(thing, "temperature", range, width, None, 10_000, now)
            .await
            .unwrap();
        assert_agrees(
            &got,
            &model.buckets(width, range),
            &format!("width {width}"),
        );
    }
}

sipmba_testkit::on_both_databases!(
    history_outlives_the_raw_values,
    values_stored_before_rollups_are_rolled_up_by_the_migration
);
