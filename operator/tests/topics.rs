//! The platform's topics on a real broker: created with the spec's partitions and retention, an
//! existing topic is success, partitions grow on Kafka (CreatePartitions) and never shrink.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::time::Duration;

use sipmba_operator::{api::QueueSpec, topics};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_once_with_their_partitions_and_never_shrink() {
    let broker = sipmba_testkit::TestBroker::start().await.unwrap();
    let mut spec = QueueSpec {
        brokers: vec![broker.addr.clone()],
        topic_prefix: broker.prefix.clone(),
        telemetry_partitions: Some(6),
        command_partitions: Some(2),
        telemetry_retention_hours: Some(24),
        replication_factor: None,
        tls: None,
        sasl: None,
    };
    let states = topics::ensure(&spec, "", Default::default(), WAIT)
        .await
        .unwrap();
    let counts: Vec<(String, i32)> = states
        .iter()
        .map(|s| (s.name.clone(), s.partitions))
        .collect();
    let p = &broker.prefix;
    assert_eq!(
        counts,
        [
            (format!("{p}sipmba.telemetry"), 6),
            (format!("{p}sipmba.commands"), 2),
            (format!("{p}sipmba.command-events"), 2),
            (format!("{p}sipmba.revocations"), 1),
        ]
    );
    let configs =
        sipmba_queue::admin::describe_topic(&broker.addr, &format!("{p}sipmba.telemetry"))
            .await
            .unwrap();
    assert!(
        configs.contains(&("retention.ms".to_owned(), (24 * 3_600_000u64).to_string())),
        "{configs:?}"
    );
    assert!(
        states.iter().all(|s| s.before.is_none()),
        "each was created: {states:?}"
    );
    // Again: the topics exist, which is success, and they had what they have.
    let again = topics::ensure(&spec, "", Default::default(), WAIT)
        .await
        .unwrap();
    for (now, first) in again.iter().zip(&states) {
        assert_eq!((&now.name, now.partitions), (&first.name, first.partitions));
        assert_eq!(now.before, Some(first.partitions));
    }
    // Fewer partitions asked for: the topic keeps its six.
    spec.telemetry_partitions = Some(3);
    let again = topics::ensure(&spec, "", Default::default(), WAIT)
        .await
        .unwrap();
    assert_eq!((again[0].wanted, again[0].partitions), (3, 6));
    // More asked for: Kafka adds them (tansu cannot, and says so).
    spec.telemetry_partitions = Some(8);
    match topics::ensure(&spec, "", Default::default(), WAIT).await {
        Ok(grown) => assert_eq!(
            (grown[0].wanted, grown[0].before, grown[0].partitions),
            (8, Some(6), 8)
        ),
        Err(e) => {
            assert_eq!(broker.flavour, sipmba_testkit::Flavour::Tansu, "{e}");
            assert!(e.to_string().contains("cannot add any"), "{e}");
        }
    }
    // An unreachable log is an error that names the brokers.
    spec.brokers = vec!["127.0.0.1:1".into()];
    let err = topics::ensure(&spec, "", Default::default(), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}
