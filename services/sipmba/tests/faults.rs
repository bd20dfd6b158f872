//! Faults of the log under a live platform: a three-node Apache Kafka cluster (replication factor
//! 3, `min.insync.replicas=2`) behind `sipmba server` processes, with brokers SIGKILLed,
//! SIGSTOPped and restarted while a thing streams. Nothing acknowledged is lost, and processing
//! stores every reading exactly once. Each test prints what the devices saw (time until acks
//! resumed, broken sessions).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::time::{Duration, Instant};

use sipmba_testkit::TestBroker;

mod common;
use common::*;

/// The telemetry partition holding the most records and the node (0-based) that leads it.
async fn busiest_telemetry_partition(p: &CollectProcess) -> (i32, usize) {
    let queue = p.queue().await;
    let topic = sipmba_collect::TELEMETRY_TOPIC;
    let mut busiest = (0, -1);
    for partition in 0..queue.partition_count(topic).await.unwrap() {
        let client = queue.partition(topic, partition).await.unwrap();
        let end = sipmba_queue::Queue::end_offset(&client).await.unwrap();
        if end > busiest.1 {
            busiest = (partition, end);
        }
    }
    let metadata = sipmba_queue::admin::metadata(&p.broker.addr, &[&queue.topic(topic)])
        .await
        .unwrap();
    let partition = metadata.topics[0]
        .partitions
        .iter()
        .find(|m| m.partition == busiest.0)
        .unwrap();
    assert_eq!(partition.replicas.len(), 3, "three replicas: {partition:?}");
    // Node ids are 1, 2, 3 in node order.
    (busiest.0, usize::try_from(partition.leader - 1).unwrap())
}

/// Collect and processing on a fresh three-node cluster, and a thing streaming `total` readings.
struct Stream {
    p: CollectProcess,
    collect: tokio::process::Child,
    processing: tokio::process::Child,
    thing: uuid::Uuid,
    sender: tokio::task::JoinHandle<Vec<u64>>,
    progress: std::sync::Arc<Progress>,
    total: u64,
}

impl Stream {
    async fn start(total: u64) -> Self {
        let p = CollectProcess::new(TestBroker::start_cluster(3).await.unwrap()).await;
        let args = p.processing_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let collect = p.spawn();
        let processing = spawn(&args, p.dir.path());
        let (thing, sender, progress) = p.stream(total);
        until_acked(&progress, total / 4).await;
        Self {
            p,
            collect,
            processing,
            thing,
            sender,
            progress,
            total,
        }
    }

    /// Waits for the end of the stream; checks that every reading is in the log and stored once.
    async fn finish(self) -> Vec<u64> {
        let breaks = self.sender.await.unwrap();
        let total = self.total;
        assert_eq!(
            self.p.logged(self.thing, total).await,
            (1..=total).collect(),
            "every reading is in the log"
        );
        assert_eq!(self.p.stored(self.thing, total).await, total);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            self.p.stored(self.thing, total).await,
            total,
            "no reading stored twice"
        );
        sigterm_and_wait(self.processing).await;
        sigterm_and_wait(self.collect).await;
        breaks
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_busiest_partitions_leader_killed_mid_stream_loses_nothing() {
    let mut s = Stream::start(40_000).await;
    let (partition, leader) = busiest_telemetry_partition(&s.p).await;
    let at = s.progress.acked();
    let killed = Instant::now();
    s.p.broker.cluster().unwrap().kill(leader);
    // The node stays down while the stream goes on, then comes back on its data.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let acked_while_down = s.progress.acked() - at;
    let silence = s.progress.longest_silence_after(killed);
    s.p.broker.cluster().unwrap().restart(leader).await.unwrap();
    let breaks = s.finish().await;
    eprintln!(
        "SIGKILL of node {} (leader of telemetry partition {partition}) at seq {at}: longest \
         wait for an ack {silence:?}; {acked_while_down} readings acknowledged in the 15 s it was \
         down; sessions broken: {}",
        leader + 1,
        breaks.len()
    );
    assert!(
        acked_while_down > 0,
        "the other replicas took over while the node was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_busiest_partitions_leader_hung_for_thirty_seconds_loses_nothing() {
    let mut s = Stream::start(40_000).await;
    let (partition, leader) = busiest_telemetry_partition(&s.p).await;
    let at = s.progress.acked();
    let paused = Instant::now();
    s.p.broker.cluster().unwrap().pause(leader);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let acked_while_hung = s.progress.acked() - at;
    let silence = s.progress.longest_silence_after(paused);
    s.p.broker.cluster().unwrap().resume(leader);
    let breaks = s.finish().await;
    eprintln!(
        "SIGSTOP of node {} (leader of telemetry partition {partition}) at seq {at} for 30 s: \
         longest wait for an ack {silence:?}; {acked_while_hung} readings acknowledged while it \
         hung; sessions broken: {}",
        leader + 1,
        breaks.len()
    );
    assert!(
        acked_while_hung > 0,
        "the other replicas took over while the node was hung"
    );
}

/// A thing's session that takes its pending commands: the ids delivered, in order, each
/// acknowledged ACKED.
async fn take_commands(listen: &str, token: &str, want: usize) -> Vec<String> {
    use sipmba_proto::v1::{
        self as pb, collect_service_client::CollectServiceClient, session_request, session_response,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let frame = |f| pb::SessionRequest { frame: Some(f) };
    tx.send(frame(session_request::Frame::Hello(
        session_request::Hello {
            agent_version: "faults".into(),
            last_acked_seq: None,
            max_commands: 8,
        },
    )))
    .await
    .unwrap();
    let mut inbound = CollectServiceClient::new(channel)
        .session(sipmba_testkit::with_token(
            token,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut delivered = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, inbound.message())
            .await
            .unwrap_or_else(|_| panic!("{} of {want} commands delivered", delivered.len()))
            .unwrap()
            .unwrap();
        if let Some(session_response::Frame::Command(c)) = message.frame {
            let id = c.id.clone().unwrap();
            delivered.push(id.value.clone());
            tx.send(frame(session_request::Frame::CommandAck(
                session_request::CommandAck {
                    command: Some(id),
                    outcome: pb::CommandOutcome::Acked.into(),
                    detail: String::new(),
                    executed_at: None,
                },
            )))
            .await
            .unwrap();
        }
    }
    // Nothing more: a command delivered twice would follow within the wait.
    if let Ok(Ok(Some(pb::SessionResponse {
        frame: Some(session_response::Frame::Command(c)),
    }))) = tokio::time::timeout(Duration::from_secs(2), inbound.message()).await
    {
        panic!("a command delivered again: {c:?}");
    }
    let _ = tx
        .send(frame(session_request::Frame::Goodbye(
            session_request::Goodbye {},
        )))
        .await;
    delivered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_waiting_for_a_sleeping_thing_survive_a_full_cluster_restart() {
    use sipmba_proto::v1::{self as pb, control_service_client::ControlServiceClient};
    let mut broker = TestBroker::start_cluster(3).await.unwrap();
    let brokers = broker.brokers().join(",");
    let deadline = Instant::now() + Duration::from_secs(120);
    let platform = sipmba_e2e::DevPlatform::start_with(
        std::path::Path::new(BIN),
        deadline,
        &["--brokers", &brokers],
    )
    .await
    .unwrap();
    // A second collect, in a process of its own: the revocations must reach it through the log.
    let issuer = format!("http://{}", platform.listen);
    let other = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let other_collect = spawn(
        &[
            "server",
            "--target",
            "collect",
            "--plaintext",
            "--listen",
            &other,
            "--database-url",
            "sqlite://collect.db?mode=rwc",
            "--jwks-url",
            &format!("{issuer}/.well-known/jwks.json"),
            "--issuer",
            &issuer,
            "--brokers",
            &brokers,
        ],
        dir.path(),
    );
    let other_channel =
        connect(tonic::transport::Endpoint::from_shared(format!("http://{other}")).unwrap()).await;
    wait_for_health(
        &other_channel,
        "sipmba.v1.CollectService",
        tonic_health::pb::health_check_response::ServingStatus::Serving,
    )
    .await;

    // Three commands for the thing, which sleeps (no session).
    let mut control = ControlServiceClient::new(platform.channel.clone());
    let mut sent = Vec::new();
    for name in ["fan.on", "valve.open", "fan.off"] {
        let command = control
            .send_command(sipmba_testkit::with_token(
                &platform.user,
                pb::SendCommandRequest {
                    thing: Some(platform.thing.clone()),
                    name: name.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(command.state(), pb::CommandState::Queued);
        sent.push(command.id.unwrap().value);
    }

    // The whole cluster goes down and comes back.
    let cluster = broker.cluster().unwrap();
    cluster.stop_all().await;
    cluster.start_all().await.unwrap();
    let back = Instant::now();

    // A revocation right after: the other process refuses the token within a second.
    let token = platform.thing_token.access_token.clone();
    pb::token_service_client::TokenServiceClient::new(platform.channel.clone())
        .revoke(pb::RevokeRequest {
            token: token.clone(),
            token_type_hint: 0,
        })
        .await
        .unwrap();
    let revoked = Instant::now();
    let refused_after = loop {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::SessionRequest {
            frame: Some(pb::session_request::Frame::Hello(
                pb::session_request::Hello::default(),
            )),
        })
        .await
        .unwrap();
        let answer = pb::collect_service_client::CollectServiceClient::new(other_channel.clone())
            .session(sipmba_testkit::with_token(
                &token,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .await;
        let refused = match answer {
            Err(status) => status.code() == tonic::Code::Unauthenticated,
            Ok(response) => matches!(
                response.into_inner().message().await,
                Err(status) if status.code() == tonic::Code::Unauthenticated
            ),
        };
        if refused {
            break revoked.elapsed();
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(10),
            "the other collect never refused the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        refused_after < Duration::from_secs(1),
        "the other collect accepted the token {refused_after:?} after its revocation, {:?} after \
         the cluster came back",
        back.elapsed()
    );

    // The thing wakes with a fresh token: its three commands, in order, once each.
    let fresh = sipmba_e2e::token(
        &platform.channel,
        pb::token_request::Grant::ClientCredentials(pb::ClientCredentialsGrant {
            client_id: platform.client_id.clone(),
            client_secret: platform.client_secret.clone(),
            scope: String::new(),
        }),
    )
    .await
    .unwrap()
    .access_token;
    let delivered = take_commands(&platform.listen, &fresh, sent.len()).await;
    assert_eq!(delivered, sent, "every command, in order, once");
    for id in &sent {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let command = control
                .get_command(sipmba_testkit::with_token(
                    &platform.user,
                    pb::GetCommandRequest {
                        id: Some(pb::CommandId { value: id.clone() }),
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            if command.state() == pb::CommandState::Acked {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} stays {:?}",
                command.state()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "full cluster restart: {} commands delivered after it; a revocation reached another \
         process {refused_after:?} after it was made",
        sent.len()
    );
    sigterm_and_wait(other_collect).await;
    platform.stop().await.unwrap();
}
