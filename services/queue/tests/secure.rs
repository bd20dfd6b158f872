//! The log of an existing cluster that wants TLS and SASL: a Kafka broker that speaks SASL_SSL
//! only, reached with SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN over TLS — topics created with
//! their retention (admin requests), records produced and read back — and refused, with a
//! message that says why, with a wrong password, an unknown CA, or no TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::time::Duration;

use sipmba_queue::{
    Mechanism, Queue, Reader, Sasl, Security, admin,
    producer::{BatchLimits, Producer},
};
use sipmba_testkit::KafkaCluster;

fn security(ca: &str, mechanism: Mechanism, password: &str) -> Security {
    Security {
        tls: Some(Security::tls_config(ca.as_bytes(), None).unwrap()),
        sasl: Some(Sasl {
            mechanism,
            username: "sipmba".into(),
            password: password.into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sasl_ssl_cluster_is_used_with_scram_and_plain_and_refuses_what_it_should() {
    let password = "log password 1";
    let (cluster, ca) = KafkaCluster::start_sasl_ssl("sipmba", password)
        .await
        .unwrap();
    let broker = cluster.bootstrap[0].clone();

    for (i, mechanism) in Mechanism::ALL.into_iter().enumerate() {
        let security = security(&ca, mechanism, password);
        assert_eq!(security.protocol(), "SASL_SSL");
        let prefix = format!("secure{i}.");
        let queue = Queue::connect_secure(std::slice::from_ref(&broker), &prefix, security)
            .await
            .unwrap()
            .with_retention(&[("events", Duration::from_secs(3600))]);
        // Admin requests over the same TLS and SASL: the topic, its retention, its growth.
        queue.ensure_topic("events", 1).await.unwrap();
        let configs = admin::describe_topic(queue.target(&broker), &queue.topic("events"))
            .await
            .unwrap();
        assert!(
            configs.contains(&("retention.ms".to_owned(), "3600000".to_owned())),
            "{mechanism:?}: {configs:?}"
        );
        assert_eq!(queue.ensure_partitions("events", 2).await.unwrap(), 2);
        // Records through rskafka's own connections.
        let producer = Producer::new(&queue, "events", 2, BatchLimits::default())
            .await
            .unwrap();
        let committed = producer
            .send(b"thing", b"over SASL_SSL".to_vec())
            .await
            .await
            .unwrap()
            .unwrap();
        let partition = queue
            .partition("events", committed.partition)
            .await
            .unwrap();
        let (records, _, _) = Reader::new(partition, Some(committed.offset))
            .next()
            .await
            .unwrap();
        assert_eq!(records[0].1, b"over SASL_SSL", "{mechanism:?}");
    }

    // A wrong password: refused, saying so and naming the user (and never the password).
    let wrong = security(&ca, Mechanism::ScramSha512, "not the password");
    let err = admin::probe_error(admin::Target {
        addr: &broker,
        security: &wrong,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("refused SASL SCRAM-SHA-512 authentication as sipmba"),
        "{err}"
    );
    assert!(!err.contains("not the password"), "{err}");
    let connect = Queue::connect_secure(std::slice::from_ref(&broker), "x.", wrong);
    let refused = tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .expect("a wrong password is an error, not a wait");
    assert!(refused.is_err());

    // A CA that did not sign the broker's certificate: the TLS handshake fails.
    let (other_ca, _, _) = sipmba_testkit::test_ca();
    let untrusted = security(&other_ca, Mechanism::ScramSha512, password);
    let err = admin::probe_error(admin::Target {
        addr: &broker,
        security: &untrusted,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("TLS handshake failed"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(err.contains("queue.tls.ca_file"), "{err}");

    // No TLS towards a SASL_SSL listener: no answer that could be mistaken for one.
    assert!(!admin::probe(broker.as_str(), Duration::from_secs(3)).await);
}
