//! Ingest throughput: 50 things send 2,000 readings each over Collect `Session` streams, every
//! reading acknowledged only once the log (tansu, SQLite storage) has committed it — side by
//! side with the paper's baseline, MQTT QoS 1 to Mosquitto (127.0.0.1:1883), where the PUBACK
//! says the broker received the message, not that it is stored.
//!
//! Run: `cargo bench -p sipmba-collect --bench ingest` (tansu on the PATH, Mosquitto running).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::time::{Duration, Instant};

use prost::Message;
use sipmba_auth::{JwksSource, Kind, Revocations, Verifier, VerifierConfig, scopes};
use sipmba_collect::{Collect, Settings, TELEMETRY_TOPIC, store::AckStore};
use sipmba_proto::v1::{
    self as pb, collect_service_client::CollectServiceClient, session_request, session_response,
};
use sipmba_queue::{
    Queue,
    producer::{BatchLimits, Producer},
};
use sipmba_runtime::{Server, Shutdown};
use sipmba_testkit::{TestBroker, TestDb, TestIssuer, serve_jwks, with_token};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

const THINGS: usize = 50;
const PER_THING: u64 = 2000;
const BATCH: u64 = 200;

fn reading(seq: u64) -> pb::Reading {
    pb::Reading {
        seq,
        device_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + seq as i64,
            nanos: 0,
        }),
        metrics: vec![pb::Metric {
            name: "temperature".into(),
            value: Some(pb::metric::Value::Number(21.5)),
            unit: "Cel".into(),
        }],
        payload: vec![],
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = THINGS as u64 * PER_THING;
    let size = reading(1).encoded_len();
    println!(
        "{THINGS} things x {PER_THING} readings ({size} bytes each encoded), batches of {BATCH}"
    );

    // SIP-MBA: Collect over gRPC, acknowledged after commit to the log.
    let broker = TestBroker::start().await?;
    let db = TestDb::sqlite()?;
    let conn = sipmba_runtime::db::connect(&db.url, 5).await?;
    sipmba_collect::migrate(&conn).await?;
    let queue = Queue::connect(&broker.brokers(), &broker.prefix).await?;
    let producer = Producer::new(&queue, TELEMETRY_TOPIC, 4, BatchLimits::default()).await?;
    let issuer = TestIssuer::new();
    let (url, _jwks) = serve_jwks(serde_json::to_value(issuer.key.jwks())?).await?;
    let verifier = Verifier::new(
        VerifierConfig::new(JwksSource::Url(url), &issuer.issuer, &issuer.audience),
        Revocations::default(),
    )?;
    let (_trigger, shutdown) = Shutdown::new();
    let limits = Settings {
        readings_per_second: 1_000_000,
        burst_readings: 1_000_000,
        ..Settings::default()
    };
    let collect = Collect::new(
        producer,
        AckStore::new(conn),
        verifier.clone(),
        limits,
        "bench",
        shutdown.clone(),
    );
    let mut server = Server::new();
    collect.register(&mut server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(server.run(listener, None, verifier, shutdown, Duration::from_secs(1)));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..THINGS {
        let thing = Uuid::new_v4();
        let token = issuer.sign(
            &issuer
                .claims(Kind::Thing, thing, &[scopes::TELEMETRY_WRITE])
                .with_owner(Uuid::new_v4()),
        );
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let hello = session_request::Frame::Hello(session_request::Hello::default());
            tx.send(pb::SessionRequest { frame: Some(hello) })
                .await
                .unwrap();
            let mut inbound = CollectServiceClient::new(channel)
                .session(with_token(&token, ReceiverStream::new(rx)))
                .await
                .unwrap()
                .into_inner();
            inbound.message().await.unwrap().unwrap(); // Welcome
            for start in (1..=PER_THING).step_by(BATCH as usize) {
                let readings = (start..start + BATCH).map(reading).collect();
                let batch =
                    session_request::Frame::Telemetry(session_request::TelemetryBatch { readings });
                tx.send(pb::SessionRequest { frame: Some(batch) })
                    .await
                    .unwrap();
                match inbound.message().await.unwrap().unwrap().frame {
                    Some(session_response::Frame::Ack(a)) => {
                        assert_eq!(a.acked_seq, start + BATCH - 1)
                    }
                    other => panic!("expected Ack, got {other:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    println!(
        "SIP-MBA Collect (gRPC, acked after commit to tansu): {total} readings in {:.2} s = {:.0} readings/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );

    // Baseline: MQTT QoS 1 to Mosquitto, the same readings as payloads.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..THINGS {
        tasks.push(tokio::spawn(async move {
            let mut options = rumqttc::MqttOptions::new(
                format!("bench-{i}-{}", Uuid::new_v4().simple()),
                "127.0.0.1",
                1883,
            );
            options.set_keep_alive(Duration::from_secs(30));
            options.set_inflight(BATCH as u16);
            let (client, mut events) = rumqttc::AsyncClient::new(options, BATCH as usize);
            let topic = format!("sipmba-bench/{i}");
            let publisher = tokio::spawn(async move {
                for seq in 1..=PER_THING {
                    client
                        .publish(
                            &topic,
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            reading(seq).encode_to_vec(),
                        )
                        .await
                        .unwrap();
                }
                client
            });
            let mut acked = 0;
            while acked < PER_THING {
                if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                    events.poll().await.unwrap()
                {
                    acked += 1;
                }
            }
            let client = publisher.await.unwrap();
            let _ = client.disconnect().await;
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    println!(
        "baseline MQTT QoS 1 to Mosquitto (PUBACK = received, not stored): {total} messages in {:.2} s = {:.0} messages/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
