//! Consumer lag against a real broker: the metrics follow a stalled consumer and come back to zero,
//! a lag past half the retention is warned about, and records the log deleted before they were
//! read are counted as lost while the consumer reads on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;
use sipmba_queue::{Queue, follow_stored};
use sipmba_runtime::Clock;
use sipmba_testkit::{Flavour, TestBroker};

/// The value of the sample `name{labels}` in the registry's text, if it is there.
fn sample(registry: &Registry, name: &str, labels: &str) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.parse().unwrap())
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Applied = Arc<Mutex<Vec<i64>>>;

/// Follows partition 0 of `topic` from `start`, recording the offsets applied; each batch waits
/// until `gate` is open.
fn follower(
    client: sipmba_queue::PartitionClient,
    lag: sipmba_queue::lag::PartitionLag,
    start: i64,
    gate: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Applied, tokio::task::JoinHandle<()>) {
    let applied: Applied = Arc::default();
    let seen = applied.clone();
    let task = tokio::spawn(async move {
        let mut stop = stop;
        follow_stored(
            client,
            Duration::from_millis(100),
            Some(lag),
            move || std::future::ready(Ok::<_, String>(Some(start))),
            move |records: Arc<[(i64, Vec<u8>)]>, _next| {
                let (seen, mut gate) = (seen.clone(), gate.clone());
                async move {
                    let _ = gate.wait_for(|open| *open).await;
                    seen.lock()
                        .unwrap()
                        .extend(records.iter().map(|(offset, _)| *offset));
                    Ok::<_, String>(())
                }
            },
            || {},
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
        .await;
    });
    (applied, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_follows_a_stalled_consumer_is_warned_near_the_retention_and_clears_once_caught_up() {
    sipmba_testkit::init_logs();
    let broker = TestBroker::start().await.unwrap();
    let clock = Clock::manual(sipmba_runtime::ids::now_ms());
    let queue = Queue::connect(&broker.brokers(), &broker.prefix)
        .await
        .unwrap()
        .with_retention(&[("lagging", Duration::from_secs(600))])
        .with_clock(clock.clone());
    queue.ensure_topic("lagging", 1).await.unwrap();
    let client = queue.partition("lagging", 0).await.unwrap();
    for i in 0..5 {
        queue
            .publish(&client, b"k", format!("r{i}").into_bytes())
            .await
            .unwrap();
    }
    let mut registry = Registry::default();
    queue.lag_metrics().register(&mut registry);
    let lag = queue.lag("test", "lagging", 0).await;
    let labels = r#"consumer="test",topic="lagging",partition="0""#;
    // The broker's retention.ms, as the topic was created.
    assert_eq!(
        sample(&registry, "log_consumer_retention_seconds", labels),
        Some(600.0)
    );

    // The records are 4 minutes old when the consumer first sees them (the clock moved), and it
    // cannot apply them yet.
    clock.advance(Duration::from_secs(240));
    let (gate_tx, gate) = tokio::sync::watch::channel(false);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (applied, task) = follower(client, lag.clone(), 0, gate, stop);
    wait_for("the lag of five records", || {
        sample(&registry, "log_consumer_lag_records", labels) == Some(5.0)
    })
    .await;
    let seconds = sample(&registry, "log_consumer_lag_seconds", labels).unwrap();
    assert!((230.0..=240.0).contains(&seconds), "lag seconds {seconds}");
    assert!(!lag.warned(), "4 of 10 minutes is no warning yet");

    gate_tx.send(true).unwrap();
    wait_for("all five applied", || applied.lock().unwrap().len() == 5).await;
    wait_for("no lag", || {
        sample(&registry, "log_consumer_lag_records", labels) == Some(0.0)
            && sample(&registry, "log_consumer_lag_seconds", labels) == Some(0.0)
    })
    .await;
    assert_eq!(*applied.lock().unwrap(), vec![0, 1, 2, 3, 4]);

    // A record seen six minutes after it was written, by a consumer that cannot apply it: past
    // half the retention, warned about.
    gate_tx.send(false).unwrap();
    clock.advance(Duration::from_secs(120));
    let client = queue.partition("lagging", 0).await.unwrap();
    queue.publish(&client, b"k", b"r5".to_vec()).await.unwrap();
    wait_for("the lag of one record", || {
        sample(&registry, "log_consumer_lag_records", labels) == Some(1.0)
    })
    .await;
    let seconds = sample(&registry, "log_consumer_lag_seconds", labels).unwrap();
    assert!((340.0..=360.0).contains(&seconds), "lag seconds {seconds}");
    assert!(lag.warned(), "6 of 10 minutes is warned about");

    // Applied: caught up, the warning clears.
    gate_tx.send(true).unwrap();
    wait_for("caught up again", || {
        sample(&registry, "log_consumer_lag_records", labels) == Some(0.0)
            && sample(&registry, "log_consumer_lag_seconds", labels) == Some(0.0)
    })
    .await;
    assert!(!lag.warned(), "the warning clears once caught up");
    assert_eq!(*applied.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_before_they_were_read_are_counted_lost_and_the_consumer_reads_on() {
    sipmba_testkit::init_logs();
    // DeleteRecords, how the test makes the log drop records as retention does, is Kafka's.
    let mut broker = TestBroker::start().await.unwrap();
    if broker.flavour != Flavour::Kafka {
        broker = TestBroker::start_own_of(Flavour::Kafka).await.unwrap();
    }
    let queue = Queue::connect(&broker.brokers(), &broker.prefix)
        .await
        .unwrap();
    queue.ensure_topic("pruned", 1).await.unwrap();
    let client = queue.partition("pruned", 0).await.unwrap();
    for i in 0..10 {
        queue
            .publish(&client, b"k", format!("r{i}").into_bytes())
            .await
            .unwrap();
    }
    client.delete_records(6, 10_000).await.unwrap();
    let mut registry = Registry::default();
    queue.lag_metrics().register(&mut registry);
    let labels = r#"consumer="test",topic="pruned",partition="0""#;

    // A consumer whose stored position is 0: six records were deleted unread.
    let (_gate_tx, gate) = tokio::sync::watch::channel(true);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let lag = queue.lag("test", "pruned", 0).await;
    let (applied, task) = follower(client, lag, 0, gate.clone(), stop.clone());
    wait_for("records 6 to 9 applied", || {
        applied.lock().unwrap().len() == 4
    })
    .await;
    assert_eq!(*applied.lock().unwrap(), vec![6, 7, 8, 9]);
    assert_eq!(
        sample(&registry, "log_consumer_skipped_records_total", labels),
        Some(6.0)
    );
    assert_eq!(
        sample(&registry, "log_consumer_lag_records", labels),
        Some(0.0)
    );
    stop_tx.send(true).unwrap();
    task.await.unwrap();

    // A position past the partition's end (the topic made again): read from its earliest
    // record, nothing counted lost.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let lag = queue.lag("rewound", "pruned", 0).await;
    let client = queue.partition("pruned", 0).await.unwrap();
    let (applied, task) = follower(client, lag, 100, gate, stop);
    wait_for("records 6 to 9 applied again", || {
        applied.lock().unwrap().len() == 4
    })
    .await;
    assert_eq!(*applied.lock().unwrap(), vec![6, 7, 8, 9]);
    assert_eq!(
        sample(
            &registry,
            "log_consumer_skipped_records_total",
            r#"consumer="rewound",topic="pruned",partition="0""#
        ),
        Some(0.0)
    );
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}
