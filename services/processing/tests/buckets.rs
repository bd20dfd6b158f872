#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

//! History buckets against a model, on both databases: for times (before the epoch too) and
//! widths proptest chooses, the database groups every value into the bucket `bucket_start` names,
//! with the same count, min, max and sum.

use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use sea_orm::{EntityTrait, Set};
use sipmba_processing::{entity::metrics, store::Store};
use sipmba_testkit::{Backend, TestDb};
use uuid::Uuid;

#[path = "common/model.rs"]
mod model;

async fn buckets_agree_with_the_floor_model(backend: Backend) {
    let db = TestDb::new(backend).await.unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    sipmba_processing::migrate(&conn).await.unwrap();
    let store = Store::new(conn.clone());
    let handle = tokio::runtime::Handle::current();
    let strategy = (
        proptest::collection::vec((-50_000i64..50_000, -1000i32..1000), 1..40),
        1_000i64..20_000,
    );
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let outcome = runner.run(&strategy, |(points, width)| {
        let points: Vec<(i64, f64)> = points
            .into_iter()
            .map(|(ms, v)| (ms, f64::from(v) / 4.0))
            .collect();
        let thing = Uuid::new_v4();
        let rows = points
            .iter()
            .enumerate()
            .map(|(i, &(ms, value))| metrics::ActiveModel {
                thing_id: Set(thing),
                name: Set("m".into()),
                seq: Set(i as i64 + 1),
                device_ms: Set(ms),
                received_ms: Set(0),
                number: Set(Some(value)),
                is_flag: Set(false),
                text: Set(None),
                unit: Set(String::new()),
            });
        let got = tokio::task::block_in_place(|| {
            handle.block_on(async {
                metrics::Entity::insert_many(rows)
                    .exec_without_returning(&conn)
                    .await
                    .unwrap();
                store
                    .buckets(thing, "m", (-60_000, 60_000), width, None, 1000, 0)
                    .await
                    .unwrap()
            })
        });
        let want = model::buckets(&points, width);
        prop_assert_eq!(
            got.iter().map(|b| b.start_ms).collect::<Vec<_>>(),
            want.keys().copied().collect::<Vec<_>>(),
            "bucket starts for width {}",
            width
        );
        for b in &got {
            let (count, min, max, sum) = want[&b.start_ms];
            prop_assert_eq!(b.count, count);
            prop_assert_eq!(b.min, Some(min));
            prop_assert_eq!(b.max, Some(max));
            // Quarters sum exactly in f64.
            prop_assert_eq!(b.sum, Some(sum));
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

sipmba_testkit::on_both_databases!(buckets_agree_with_the_floor_model);
