//! Producing to the Kafka-protocol log with rskafka, with and without `TCP_NODELAY` forced on
//! its broker connections: 100,000 records of 100 bytes in batches of 1,000, one request in
//! flight, against a local tansu (SQLite storage).
//!
//! Run: `cargo bench -p sipmba-queue --bench produce` (tansu on the PATH).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::{collections::BTreeMap, time::Instant};

use rskafka::{chrono::DateTime, client::partition::Compression, record::Record};
use sipmba_queue::{
    Queue,
    producer::{BatchLimits, Producer},
};

const RECORDS: usize = 100_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let broker = sipmba_testkit::TestBroker::start().await?;
    for batch in [1000, 250] {
        for nodelay in [false, true] {
            let queue = Queue::connect_with(
                &broker.brokers(),
                &broker.prefix,
                nodelay,
                Default::default(),
            )
            .await?;
            let topic = format!("produce-{batch}-{nodelay}");
            queue.ensure_topic(&topic, 1).await?;
            let partition = queue.partition(&topic, 0).await?;
            let started = Instant::now();
            let mut sent = 0;
            while sent < RECORDS {
                let records = (0..batch)
                    .map(|i| Record {
                        key: Some(format!("thing-{}", i % 50).into_bytes()),
                        value: Some(vec![b'x'; 100]),
                        headers: BTreeMap::new(),
                        timestamp: DateTime::from_timestamp_millis(0).unwrap_or_default(),
                    })
                    .collect();
                partition
                    .produce(records, Compression::NoCompression)
                    .await?;
                sent += batch;
            }
            let elapsed = started.elapsed();
            println!(
                "batches of {batch:>4}, TCP_NODELAY {}: {RECORDS} records in {:.2} s = {:.0} records/s",
                if nodelay { "forced " } else { "as is  " },
                elapsed.as_secs_f64(),
                RECORDS as f64 / elapsed.as_secs_f64()
            );
        }
    }
    // The batching producer: 50 things, 4 partitions, every record's commit awaited.
    let queue = Queue::connect(&broker.brokers(), &broker.prefix).await?;
    let producer = Producer::new(&queue, "producer", 4, BatchLimits::default()).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for thing in 0..50 {
        let producer = producer.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("thing-{thing}");
            let mut commits = Vec::with_capacity(RECORDS / 50);
            for _ in 0..RECORDS / 50 {
                commits.push(producer.send(key.as_bytes(), vec![b'x'; 100]).await);
            }
            for commit in commits {
                commit.await.expect("reply").expect("committed");
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    println!(
        "batching producer (50 keys, 4 partitions, linger 5 ms, TCP_NODELAY forced): {RECORDS} records committed in {:.2} s = {:.0} records/s",
        elapsed.as_secs_f64(),
        RECORDS as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
