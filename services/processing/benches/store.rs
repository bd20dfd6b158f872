//! Processing's store: readings stored per second (batches as the consumer writes them, with the
//! offset in the same transaction) next to one transaction per reading, and the latency of a
//! downsampled history query over 1,000,000 stored readings next to fetching the raw points and
//! aggregating them in the client, and the same query answered from the minute and from the hour
//! rollups (raw values past their retention) — on PostgreSQL and on SQLite.
//!
//! Run: `cargo bench -p sipmba-processing --bench store` (PostgreSQL at 127.0.0.1:5432).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::time::{Duration, Instant};

use sipmba_processing::{Incoming, rollup::Retention, store::Store};
use sipmba_proto::v1 as pb;
use sipmba_testkit::{Backend, TestDb};
use uuid::Uuid;

const TOTAL: u64 = 1_000_000;
const BATCH: u64 = 1_000;
const NAIVE: u64 = 2_000;
/// Device time of seq 1 (ms); one reading a second.
const T0: i64 = 1_700_000_000_000;

fn incoming(thing: Uuid, seq: u64) -> Incoming {
    let ms = T0 + i64::try_from(seq).unwrap() * 1000;
    Incoming {
        thing,
        reading: pb::Reading {
            seq,
            device_time: Some(sipmba_runtime::ids::timestamp_from_ms(ms)),
            metrics: vec![pb::Metric {
                name: "temperature".into(),
                value: Some(pb::metric::Value::Number((seq % 400) as f64 / 10.0)),
                unit: "Cel".into(),
            }],
            payload: vec![],
        },
        received_ms: ms,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn run(backend: Backend) -> anyhow::Result<()> {
    let db = TestDb::new(backend).await?;
    let conn = sipmba_runtime::db::connect(&db.url, 5).await?;
    sipmba_processing::migrate(&conn).await?;
    let store = Store::new(conn);
    let retained = |raw: u64, minutes: u64| {
        store.clone().with_retention(Retention {
            raw: Duration::from_secs(raw),
            minutes: Duration::from_secs(minutes),
            hours: Duration::from_secs(100 * 365 * 24 * 3600),
        })
    };
    let name = format!("{backend:?}");
    // No rules: the store alone.
    let none = sipmba_processing::rules::Snapshot::default();

    // Baseline: one transaction per reading.
    let naive = Uuid::new_v4();
    let started = Instant::now();
    for seq in 1..=NAIVE {
        store
            .apply(
                "bench",
                1,
                &[incoming(naive, seq)],
                i64::try_from(seq)?,
                &none,
            )
            .await?;
    }
    let naive_rate = NAIVE as f64 / started.elapsed().as_secs_f64();

    // Batches of 1,000, as the consumer stores what one fetch returns.
    let thing = Uuid::new_v4();
    let started = Instant::now();
    let mut offset = 0;
    for start in (1..=TOTAL).step_by(BATCH as usize) {
        let batch: Vec<Incoming> = (start..start + BATCH).map(|s| incoming(thing, s)).collect();
        offset += i64::try_from(BATCH)?;
        store.apply("bench", 0, &batch, offset, &none).await?;
    }
    let elapsed = started.elapsed();
    println!(
        "{name}: stored {TOTAL} readings in {:.1} s = {:.0} readings/s in batches of {BATCH} (baseline, one transaction per reading: {naive_rate:.0} readings/s)",
        elapsed.as_secs_f64(),
        TOTAL as f64 / elapsed.as_secs_f64()
    );

    // Downsampled query over the whole million: hourly buckets.
    let range = (T0, T0 + i64::try_from(TOTAL + 1)? * 1000);
    let mut database = Vec::new();
    let mut client = Vec::new();
    let mut from_minutes = Vec::new();
    let mut from_hours = Vec::new();
    let mut hours = 0;
    for _ in 0..7 {
        let started = Instant::now();
        let buckets = store
            .buckets(thing, "temperature", range, 3_600_000, None, 1_000, range.1)
            .await?;
        database.push(started.elapsed());
        hours = buckets.len();
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), TOTAL);
        // The same from rollups: raw values kept a minute, read two minutes past the end, the
        // minutes answer; minutes kept a minute too, read two hours past it, the hours do.
        for (rolled, at, times) in [
            (
                retained(60, 100 * 365 * 24 * 3600),
                range.1 + 120_000,
                &mut from_minutes,
            ),
            (retained(60, 60), range.1 + 7_200_000, &mut from_hours),
        ] {
            let started = Instant::now();
            let same = rolled
                .buckets(thing, "temperature", range, 3_600_000, None, 1_000, at)
                .await?;
            times.push(started.elapsed());
            assert_eq!(same.len(), hours);
            assert_eq!(same.iter().map(|b| b.count).sum::<u64>(), TOTAL);
        }

        // Baseline: fetch the raw points in pages and aggregate here.
        let started = Instant::now();
        let mut after = None;
        let mut sums = std::collections::BTreeMap::<i64, (f64, u64)>::new();
        loop {
            let points = store
                .points(thing, "temperature", range, after, 10_000)
                .await?;
            let Some(last) = points.last() else { break };
            after = Some((last.device_ms, last.seq));
            for p in &points {
                let e = sums.entry(p.device_ms / 3_600_000).or_default();
                e.0 += p.number.unwrap_or(0.0);
                e.1 += 1;
            }
        }
        client.push(started.elapsed());
        assert_eq!(sums.len(), hours);
    }
    println!(
        "{name}: {hours} hourly buckets (avg/min/max/sum/count) over {TOTAL} readings: median {:.0} ms in the database from raw values, {:.1} ms from minute rollups, {:.1} ms from hour rollups (baseline, raw points aggregated by the client: {:.0} ms)",
        median(database).as_secs_f64() * 1000.0,
        median(from_minutes).as_secs_f64() * 1000.0,
        median(from_hours).as_secs_f64() * 1000.0,
        median(client).as_secs_f64() * 1000.0
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        run(backend).await?;
    }
    Ok(())
}
