//! Collect over gRPC on loopback, with a real broker (tansu) and PostgreSQL or SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prost::Message;
use sipmba_auth::{Kind, Verifier, scopes};
use sipmba_collect::{Collect, Settings, TELEMETRY_TOPIC, store::AckStore};
use sipmba_proto::v1::{
    self as pb, collect_service_client::CollectServiceClient, session_request, session_response,
};
use sipmba_queue::{
    Queue, follow,
    producer::{BatchLimits, Producer},
};
use sipmba_runtime::{Server, Shutdown, ShutdownTrigger};
use sipmba_testkit::{Backend, TestBroker, TestDb, TestIssuer, with_token};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming, transport::Channel};
use uuid::Uuid;

const PARTITIONS: i32 = 4;

struct Harness {
    addr: std::net::SocketAddr,
    channel: Channel,
    /// A second Collect replica.
    other: Channel,
    verifier: Verifier,
    issuer: TestIssuer,
    queue: Queue,
    _broker: TestBroker,
    _jwks: sipmba_testkit::JwksServer,
    _trigger: ShutdownTrigger,
    _db: TestDb,
}

async fn start(backend: Backend) -> Harness {
    start_with(backend, Settings::default()).await
}

async fn start_with(backend: Backend, limits: Settings) -> Harness {
    sipmba_testkit::init_logs();
    let db = TestDb::new(backend).await.unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    sipmba_collect::migrate(&conn).await.unwrap();
    let broker = TestBroker::start().await.unwrap();
    let queue = Queue::connect(&broker.brokers(), &broker.prefix)
        .await
        .unwrap();
    let producer = Producer::new(&queue, TELEMETRY_TOPIC, PARTITIONS, BatchLimits::default())
        .await
        .unwrap();
    let issuer = TestIssuer::new();
    let (verifier, jwks) = issuer.verifier().await.unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let collect_verifier = verifier.clone();
    // Two replicas over the same database and log; `channel` talks to the first.
    let mut replicas = Vec::new();
    for replica in 0..2 {
        let producer = if replica == 0 {
            producer.clone()
        } else {
            Producer::new(&queue, TELEMETRY_TOPIC, PARTITIONS, BatchLimits::default())
                .await
                .unwrap()
        };
        let collect = Collect::new(
            producer,
            AckStore::new(conn.clone()),
            verifier.clone(),
            limits,
            &format!("collect-{replica}"),
            shutdown.clone(),
        );
        let mut server = Server::new();
        collect.register(&mut server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server.run(
            listener,
            None,
            verifier.clone(),
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        replicas.push((addr, channel));
    }
    let (addr, channel) = replicas[0].clone();
    let other = replicas[1].1.clone();
    Harness {
        addr,
        channel,
        other,
        verifier: collect_verifier,
        issuer,
        queue,
        _broker: broker,
        _jwks: jwks,
        _trigger: trigger,
        _db: db,
    }
}

impl Harness {
    fn thing_token(&self, thing: Uuid) -> String {
        self.issuer.thing_token(thing, Uuid::new_v4())
    }

    /// Opens a session and sends Hello; returns the outbound sender, the inbound stream and
    /// the Welcome.
    async fn session(
        &self,
        token: &str,
    ) -> (
        mpsc::Sender<pb::SessionRequest>,
        Streaming<pb::SessionResponse>,
        session_response::Welcome,
    ) {
        self.session_on(&self.channel, token).await
    }

    async fn session_on(
        &self,
        channel: &Channel,
        token: &str,
    ) -> (
        mpsc::Sender<pb::SessionRequest>,
        Streaming<pb::SessionResponse>,
        session_response::Welcome,
    ) {
        let (tx, rx) = mpsc::channel(16);
        tx.send(frame(session_request::Frame::Hello(
            session_request::Hello {
                agent_version: "test".into(),
                last_acked_seq: None,
                max_commands: 0,
            },
        )))
        .await
        .unwrap();
        let mut inbound = CollectServiceClient::new(channel.clone())
            .session(with_token(token, ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        let welcome = match inbound.message().await.unwrap().unwrap().frame {
            Some(session_response::Frame::Welcome(w)) => w,
            other => panic!("expected Welcome, got {other:?}"),
        };
        (tx, inbound, welcome)
    }
}

fn frame(f: session_request::Frame) -> pb::SessionRequest {
    pb::SessionRequest { frame: Some(f) }
}

fn readings(seqs: std::ops::RangeInclusive<u64>) -> Vec<pb::Reading> {
    seqs.map(|seq| pb::Reading {
        seq,
        device_time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + seq as i64,
            nanos: 0,
        }),
        metrics: vec![pb::Metric {
            name: "temperature".into(),
            value: Some(pb::metric::Value::Number(20.0 + seq as f64 / 100.0)),
            unit: "Cel".into(),
        }],
        payload: vec![],
    })
    .collect()
}

fn batch(seqs: std::ops::RangeInclusive<u64>) -> pb::SessionRequest {
    frame(session_request::Frame::Telemetry(
        session_request::TelemetryBatch {
            readings: readings(seqs),
        },
    ))
}

async fn next_ack(inbound: &mut Streaming<pb::SessionResponse>) -> u64 {
    match inbound.message().await.unwrap().unwrap().frame {
        Some(session_response::Frame::Ack(a)) => a.acked_seq,
        other => panic!("expected Ack, got {other:?}"),
    }
}

async fn ends_with(inbound: &mut Streaming<pb::SessionResponse>, code: Code, needle: &str) {
    loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("expected {code:?}, the stream ended OK"),
            Err(status) => {
                assert_eq!(status.code(), code, "{status:?}");
                assert!(status.message().contains(needle), "{status:?}");
                return;
            }
        }
    }
}

/// Reads every partition of the telemetry topic from 0 until `expected` records.
async fn telemetry(queue: &Queue, expected: usize) -> Vec<(Uuid, u64)> {
    let seen: Arc<Mutex<Vec<(Uuid, u64)>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for partition in 0..PARTITIONS {
        let client = queue.partition(TELEMETRY_TOPIC, partition).await.unwrap();
        let seen = seen.clone();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(follow(
            client,
            Some(0),
            sipmba_queue::IDLE_FETCH_WAIT,
            move |_, value| {
                let record = pb::TelemetryRecord::decode(value).unwrap();
                let thing = Uuid::parse_str(&record.thing.unwrap().value).unwrap();
                seen.lock()
                    .unwrap()
                    .push((thing, record.reading.unwrap().seq));
            },
            || {},
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

async fn a_hundred_thousand_readings_from_fifty_things_arrive_exactly_once(backend: Backend) {
    let h = Arc::new(start(backend).await);
    let things: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let mut tasks = Vec::new();
    for thing in things.clone() {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let token = h.thing_token(thing);
            let (tx, mut inbound, welcome) = h.session(&token).await;
            assert_eq!(welcome.acked_seq, 0);
            assert_eq!(welcome.thing.unwrap().value, thing.to_string());
            for start in (1..=2000u64).step_by(200) {
                tx.send(batch(start..=start + 199)).await.unwrap();
                assert_eq!(next_ack(&mut inbound).await, start + 199);
            }
            tx.send(frame(session_request::Frame::Goodbye(
                session_request::Goodbye {},
            )))
            .await
            .unwrap();
            assert_eq!(next_ack(&mut inbound).await, 2000);
            assert!(
                inbound.message().await.unwrap().is_none(),
                "the stream ends after Goodbye"
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let records = telemetry(&h.queue, 100_000).await;
    let unique: HashSet<(Uuid, u64)> = records.iter().copied().collect();
    assert_eq!(
        unique.len(),
        100_000,
        "every (thing, seq) once after dedupe"
    );
    let mut per_thing: BTreeMap<Uuid, usize> = BTreeMap::new();
    for (thing, seq) in &unique {
        assert!((1..=2000).contains(seq));
        *per_thing.entry(*thing).or_default() += 1;
    }
    assert_eq!(per_thing.len(), 50);
    assert!(per_thing.values().all(|n| *n == 2000));
}

async fn bad_input_gets_a_clear_status_and_loses_nothing_acknowledged(backend: Backend) {
    let h = start(backend).await;
    let thing = Uuid::new_v4();
    let token = h.thing_token(thing);

    let (tx, mut inbound, _) = h.session(&token).await;
    tx.send(batch(1..=10)).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, 10);
    tx.send(batch(5..=6)).await.unwrap();
    ends_with(&mut inbound, Code::InvalidArgument, "went backwards").await;

    // Nothing acknowledged is lost: the next session starts from 10.
    let (tx, mut inbound, welcome) = h.session(&token).await;
    assert_eq!(welcome.acked_seq, 10);
    // Resent readings at or below the acknowledged seq are dropped as duplicates.
    tx.send(batch(8..=12)).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, 12);
    let mut big = readings(13..=13);
    big[0].payload = vec![0; 70 * 1024];
    tx.send(frame(session_request::Frame::Telemetry(
        session_request::TelemetryBatch { readings: big },
    )))
    .await
    .unwrap();
    ends_with(&mut inbound, Code::InvalidArgument, "bytes encoded").await;

    let (tx, mut inbound, _) = h.session(&token).await;
    let mut nan = readings(13..=13);
    nan[0].metrics[0].value = Some(pb::metric::Value::Number(f64::NAN));
    tx.send(frame(session_request::Frame::Telemetry(
        session_request::TelemetryBatch { readings: nan },
    )))
    .await
    .unwrap();
    ends_with(&mut inbound, Code::InvalidArgument, "finite").await;

    // The first frame must be Hello.
    let (tx, rx) = mpsc::channel(4);
    tx.send(batch(13..=13)).await.unwrap();
    let mut inbound = CollectServiceClient::new(h.channel.clone())
        .session(with_token(&token, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    ends_with(&mut inbound, Code::FailedPrecondition, "Hello").await;

    // Only things publish, and only with telemetry:write.
    let user = h.issuer.user_token(Uuid::new_v4());
    let (_tx, rx) = mpsc::channel::<pb::SessionRequest>(1);
    let err = CollectServiceClient::new(h.channel.clone())
        .session(with_token(&user, ReceiverStream::new(rx)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A newer session of the same thing replaces the older one.
    let (_old_tx, mut old, _) = h.session(&token).await;
    let (_new_tx, _new, welcome) = h.session(&token).await;
    assert_eq!(welcome.acked_seq, 12);
    match old.message().await.unwrap().unwrap().frame {
        Some(session_response::Frame::Closing(c)) => assert!(c.reason.contains("newer session")),
        other => panic!("expected Closing, got {other:?}"),
    }

    // Publish, for simple clients: acknowledged at the end, after commit.
    let stream = tokio_stream::iter(vec![
        pb::PublishRequest {
            readings: readings(11..=15),
        },
        pb::PublishRequest {
            readings: readings(16..=20),
        },
    ]);
    let published = CollectServiceClient::new(h.channel.clone())
        .publish(with_token(&token, stream))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(published.acked_seq, 20);
    assert_eq!(published.accepted, 8, "11 and 12 were already committed");
    let records = telemetry(&h.queue, 20).await;
    let unique: HashSet<u64> = records.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(unique, (1..=20).collect());
    assert_eq!(records.len(), 20, "no reading was written twice");
}

sipmba_testkit::on_both_databases!(
    a_hundred_thousand_readings_from_fifty_things_arrive_exactly_once,
    bad_input_gets_a_clear_status_and_loses_nothing_acknowledged,
    rate_limits_answer_retry_after_and_never_slow_other_things,
    a_token_revoked_mid_session_ends_it_unauthenticated,
    a_newer_session_on_another_replica_ends_the_older_one,
);

async fn a_newer_session_on_another_replica_ends_the_older_one(backend: Backend) {
    let h = start(backend).await;
    let thing = Uuid::new_v4();
    let token = h.thing_token(thing);
    let (old_tx, mut old_in, _) = h.session(&token).await;
    old_tx.send(batch(1..=10)).await.unwrap();
    assert_eq!(next_ack(&mut old_in).await, 10);
    // The thing wakes again and reaches the other replica.
    let (new_tx, mut new_in, welcome) = h.session_on(&h.other, &token).await;
    assert_eq!(
        welcome.acked_seq, 10,
        "the position is shared by the replicas"
    );
    new_tx.send(batch(11..=20)).await.unwrap();
    assert_eq!(next_ack(&mut new_in).await, 20);
    // The older session's next batch is answered with Closing, not an Ack: its position is not
    // recorded (whatever of it reached the log is a duplicate the new session resends).
    old_tx.send(batch(11..=30)).await.unwrap();
    match old_in.message().await.unwrap().unwrap().frame {
        Some(session_response::Frame::Closing(c)) => assert!(c.reason.contains("newer session")),
        other => panic!("expected Closing, got {other:?}"),
    }
    assert!(old_in.message().await.unwrap().is_none());
    new_tx.send(batch(21..=25)).await.unwrap();
    assert_eq!(next_ack(&mut new_in).await, 25);
}

async fn a_token_revoked_mid_session_ends_it_unauthenticated(backend: Backend) {
    let h = start(backend).await;
    let thing = Uuid::new_v4();
    let claims = h
        .issuer
        .claims(Kind::Thing, thing, &[scopes::TELEMETRY_WRITE])
        .with_owner(Uuid::new_v4());
    let token = h.issuer.sign(&claims);
    let (tx, mut inbound, _) = h.session(&token).await;
    tx.send(batch(1..=10)).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, 10);
    // The revocation feed reaches this process's list (here: directly).
    h.verifier
        .revocations()
        .revoke_token(claims.jti.clone(), claims.exp, 0);
    tx.send(batch(11..=20)).await.unwrap();
    ends_with(&mut inbound, Code::Unauthenticated, "revoked").await;
}

async fn rate_limits_answer_retry_after_and_never_slow_other_things(backend: Backend) {
    let limits = Settings {
        readings_per_second: 100,
        burst_readings: 200,
        max_sessions: 2,
        ..Settings::default()
    };
    let h = start_with(backend, limits).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (a_tx, mut a_in, _) = h.session(&h.thing_token(a)).await;
    let (b_tx, mut b_in, _) = h.session(&h.thing_token(b)).await;
    a_tx.send(batch(1..=200)).await.unwrap();
    assert_eq!(next_ack(&mut a_in).await, 200);
    // Over the rate: told when to retry, and nothing of that batch is acknowledged.
    a_tx.send(batch(201..=400)).await.unwrap();
    match a_in.message().await.unwrap().unwrap().frame {
        Some(session_response::Frame::RetryAfter(r)) => {
            let wait = r.retry_after.unwrap();
            assert!(wait.seconds >= 1 && wait.seconds <= 2, "{wait:?}");
            assert!(r.reason.contains("100 readings per second"));
        }
        other => panic!("expected RetryAfter, got {other:?}"),
    }
    // Another thing is not slowed by it.
    b_tx.send(batch(1..=200)).await.unwrap();
    assert_eq!(next_ack(&mut b_in).await, 200);
    // Ignoring the pause ends the session.
    a_tx.send(batch(201..=300)).await.unwrap();
    ends_with(&mut a_in, Code::ResourceExhausted, "RetryAfter pause").await;
    // One instance serves at most two sessions: b and c fit, d does not.
    let (_c_tx, _c_in, _) = h.session(&h.thing_token(Uuid::new_v4())).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(frame(session_request::Frame::Hello(
        session_request::Hello::default(),
    )))
    .await
    .unwrap();
    let mut d_in = CollectServiceClient::new(h.channel.clone())
        .session(with_token(
            &h.thing_token(Uuid::new_v4()),
            ReceiverStream::new(rx),
        ))
        .await
        .unwrap()
        .into_inner();
    ends_with(&mut d_in, Code::ResourceExhausted, "maximum of sessions").await;
    // Operators see it in the metrics (no per-thing labels).
    let metrics = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(
        metrics.contains("sipmba_collect_batches_rate_limited_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sipmba_collect_readings_committed_total 400"),
        "{metrics}"
    );
    // The acknowledged position of the limited thing is intact.
    drop((b_tx, b_in));
    let (_a_tx, _a_in, welcome) = h.session(&h.thing_token(a)).await;
    assert_eq!(welcome.acked_seq, 200);
}
