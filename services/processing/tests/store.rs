#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

//! The paper's broken-connection test (Fig. 8), against the real broker and both databases:
//! readings produced while processing is down are all stored once it is back, none twice, and a
//! consumer stopped in the middle of its work goes on where its last transaction ended.

use std::time::{Duration, Instant};

use prost::Message;
use sea_orm::{EntityTrait, PaginatorTrait};
use sipmba_processing::{
    Consumer, Ownership,
    entity::{latest, presence, readings},
    store::Store,
};
use sipmba_proto::v1 as pb;
use sipmba_queue::{
    Queue,
    producer::{BatchLimits, Producer},
    topics,
};
use sipmba_runtime::{Shutdown, ShutdownTrigger};
use sipmba_testkit::{Backend, TestBroker, TestDb};
use uuid::Uuid;

const THINGS: usize = 50;

/// A consumer of every partition, without rules or listeners, stopped by the returned trigger.
async fn consume(store: &Store, queue: &Queue) -> (Consumer, ShutdownTrigger) {
    let (trigger, shutdown) = Shutdown::new();
    let consumer = Consumer::start(
        store.clone(),
        queue,
        Ownership::default(),
        None,
        tokio::sync::broadcast::channel(16).0,
        shutdown,
    )
    .await
    .unwrap();
    (consumer, trigger)
}
const PER_THING: u64 = 2_000;
const PARTITIONS: i32 = 4;

fn record(thing: Uuid, seq: u64) -> Vec<u8> {
    pb::TelemetryRecord {
        thing: Some(pb::ThingId {
            value: thing.to_string(),
        }),
        reading: Some(pb::Reading {
            seq,
            device_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i64::try_from(seq).unwrap(),
                nanos: 0,
            }),
            metrics: vec![pb::Metric {
                name: "temperature".into(),
                value: Some(pb::metric::Value::Number(seq as f64 / 10.0)),
                unit: "Cel".into(),
            }],
            payload: vec![],
        }),
        received_time: Some(prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        }),
        collect_instance: "test".into(),
    }
    .encode_to_vec()
}

/// Produces seqs `from..=to` for every thing, and `resend` of them again (as Collect does when a
/// thing resends after a lost Ack); waits until all are committed.
async fn produce(producer: &Producer, things: &[Uuid], from: u64, to: u64, resend: u64) {
    let mut pending = Vec::new();
    for thing in things {
        for seq in (from..=to).chain(from..from + resend) {
            pending.push(
                producer
                    .send(thing.to_string().as_bytes(), record(*thing, seq))
                    .await,
            );
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

async fn wait_stored(conn: &sea_orm::DatabaseConnection, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stored = readings::Entity::find().count(conn).await.unwrap();
        if stored == want {
            return;
        }
        assert!(stored < want, "{stored} stored, more than the {want} sent");
        assert!(
            Instant::now() < deadline,
            "only {stored} of {want} readings stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readings_produced_while_processing_is_down_are_all_stored_once(backend: Backend) {
    sipmba_testkit::init_logs();
    let db = TestDb::new(backend).await.unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    sipmba_processing::migrate(&conn).await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let queue = Queue::connect(&broker.brokers(), &broker.prefix)
        .await
        .unwrap();
    let producer = Producer::new(
        &queue,
        topics::TELEMETRY,
        PARTITIONS,
        BatchLimits::default(),
    )
    .await
    .unwrap();
    let things: Vec<Uuid> = (0..THINGS).map(|_| Uuid::new_v4()).collect();

    // Processing is down while 100,000 readings (and 5,000 resent ones) are produced.
    produce(&producer, &things, 1, PER_THING, 100).await;
    let total = THINGS as u64 * PER_THING;

    // It comes back: everything is stored, nothing twice.
    let store = Store::new(conn.clone());
    let (consumer, trigger) = consume(&store, &queue).await;
    wait_stored(&conn, total).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !consumer.caught_up() {
        assert!(Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for thing in &things {
        assert_eq!(store.count(*thing).await.unwrap(), PER_THING);
    }

    // Stopped in the middle of a second wave, and started again: it goes on from its offsets.
    trigger.trigger();
    produce(&producer, &things, PER_THING + 1, PER_THING + 400, 50).await;
    let (_, trigger) = consume(&store, &queue).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    trigger.trigger();
    let (_consumer, _trigger) = consume(&store, &queue).await;
    let total = THINGS as u64 * (PER_THING + 400);
    wait_stored(&conn, total).await;
    for thing in &things {
        assert_eq!(store.count(*thing).await.unwrap(), PER_THING + 400);
    }

    // The latest value is the highest seq's, whatever order duplicates came in; every thing has
    // a presence.
    let latest = latest::Entity::find().all(&conn).await.unwrap();
    assert_eq!(latest.len(), THINGS);
    for l in latest {
        assert_eq!(l.seq, i64::try_from(PER_THING + 400).unwrap());
        assert_eq!(l.number, Some((PER_THING + 400) as f64 / 10.0));
    }
    assert_eq!(
        presence::Entity::find().count(&conn).await.unwrap(),
        THINGS as u64
    );
}

#[test]
fn partitions_are_shared_by_ordinal() {
    let owners = |replicas: u32| -> Vec<Vec<i32>> {
        (0..replicas)
            .map(|replica| {
                (0..8)
                    .filter(|p| Ownership { replica, replicas }.owns(*p))
                    .collect()
            })
            .collect()
    };
    assert_eq!(owners(1), vec![(0..8).collect::<Vec<_>>()]);
    assert_eq!(owners(3), vec![vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]);
}

sipmba_testkit::on_both_databases!(readings_produced_while_processing_is_down_are_all_stored_once,);
