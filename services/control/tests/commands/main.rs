#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

//! Commands end to end, against the real broker (tansu), PostgreSQL and SQLite, over gRPC on
//! loopback: Objects decides who may command what, Control queues on the log, and Collect
//! replicas deliver from inboxes they rebuild from the log.

use std::time::Duration;

use sea_orm::EntityTrait;
use sipmba_auth::{Kind, Verifier, scopes};
use sipmba_collect::{Collect, inbox::Inbox, store::AckStore};
use sipmba_control::{Control, Settings, entity::statuses, store::Store};
use sipmba_proto::v1::{
    self as pb, collect_service_client::CollectServiceClient,
    control_service_client::ControlServiceClient, session_request, session_response,
};
use sipmba_queue::{Queue, producer::BatchLimits};
use sipmba_runtime::objects::{ObjectsClient, ServiceToken};
use sipmba_runtime::{Server, Shutdown, ShutdownTrigger};
use sipmba_testkit::{Backend, TestBroker, TestDb, TestIssuer, assert_status, with_token as req};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming, transport::Channel};
use uuid::Uuid;

mod reach;

const PARTITIONS: i32 = 2;

struct Harness {
    issuer: TestIssuer,
    admin: String,
    objects: Channel,
    control: Channel,
    collects: Vec<Channel>,
    conn: sea_orm::DatabaseConnection,
    queue: Queue,
    verifier: Verifier,
    shutdown: Shutdown,
    _trigger: ShutdownTrigger,
    _broker: TestBroker,
    _jwks: sipmba_testkit::JwksServer,
    _db: TestDb,
}

async fn serve(server: Server, verifier: Verifier, shutdown: Shutdown) -> (Channel, String) {
    sipmba_testkit::serve(server, verifier, shutdown)
        .await
        .unwrap()
}

impl Harness {
    async fn start(backend: Backend, limits: Settings) -> Self {
        sipmba_testkit::init_logs();
        let db = TestDb::new(backend).await.unwrap();
        let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
        sipmba_objects::migrate(&conn).await.unwrap();
        sipmba_control::migrate(&conn).await.unwrap();
        sipmba_collect::migrate(&conn).await.unwrap();
        let broker = TestBroker::start().await.unwrap();
        let queue = Queue::connect(&broker.brokers(), &broker.prefix)
            .await
            .unwrap();
        let issuer = TestIssuer::new();
        let (verifier, jwks) = issuer.verifier().await.unwrap();
        let (trigger, shutdown) = Shutdown::new();

        let mut objects_server = Server::new();
        sipmba_objects::ObjectsService::new(
            sipmba_objects::Store::new(conn.clone()),
            shutdown.clone(),
        )
        .register(&mut objects_server);
        let (objects, objects_url) =
            serve(objects_server, verifier.clone(), shutdown.clone()).await;

        let service_token = issuer.sign(&issuer.claims(
            Kind::Service,
            Uuid::new_v4(),
            &[scopes::OBJECTS_AUTHORIZE],
        ));
        let control = Control::start(
            Store::new(conn.clone()),
            &queue,
            PARTITIONS,
            ObjectsClient::new(
                &objects_url,
                ServiceToken::Fixed(service_token),
                &sipmba_auth::peer_tls::PeerCa::none(),
            )
            .unwrap(),
            verifier.clone(),
            limits,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let mut control_server = Server::new();
        control.register(&mut control_server);
        let (control, _) = serve(control_server, verifier.clone(), shutdown.clone()).await;

        let admin = issuer.admin_token();
        let mut h = Self {
            issuer,
            admin,
            objects,
            control,
            collects: Vec::new(),
            conn,
            queue,
            verifier,
            shutdown,
            _trigger: trigger,
            _broker: broker,
            _jwks: jwks,
            _db: db,
        };
        for _ in 0..2 {
            h.add_collect().await;
        }
        h
    }

    /// Another Collect replica over the same database and log, with an inbox rebuilt from the
    /// log; returns its index.
    async fn add_collect(&mut self) -> usize {
        let index = self.collects.len();
        let instance = format!("collect-{index}");
        let producer = sipmba_queue::producer::Producer::new(
            &self.queue,
            sipmba_collect::TELEMETRY_TOPIC,
            PARTITIONS,
            BatchLimits::default(),
        )
        .await
        .unwrap();
        let inbox = Inbox::start(&self.queue, PARTITIONS, &instance, self.shutdown.clone())
            .await
            .unwrap();
        let started = std::time::Instant::now();
        while !inbox.ready() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "inbox never caught up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let collect = Collect::new(
            producer,
            AckStore::new(self.conn.clone()),
            self.verifier.clone(),
            sipmba_collect::Settings::default(),
            &instance,
            self.shutdown.clone(),
        )
        .with_inbox(inbox);
        let mut server = Server::new();
        collect.register(&mut server);
        let (channel, _) = serve(server, self.verifier.clone(), self.shutdown.clone()).await;
        self.collects.push(channel);
        index
    }

    fn control(&self) -> ControlServiceClient<Channel> {
        ControlServiceClient::new(self.control.clone())
    }

    async fn root(&self, name: &str) -> (Uuid, String) {
        let id = sipmba_testkit::create_root(&self.objects, &self.admin, name)
            .await
            .unwrap();
        (id, self.issuer.user_token(id))
    }

    async fn thing(&self, token: &str, name: &str) -> Uuid {
        sipmba_testkit::create_thing(&self.objects, token, name)
            .await
            .unwrap()
    }

    fn thing_token(&self, thing: Uuid) -> String {
        self.issuer.thing_token(thing, Uuid::new_v4())
    }

    async fn send(
        &self,
        token: &str,
        thing: Uuid,
        name: &str,
        ttl: Duration,
    ) -> Result<pb::Command, tonic::Status> {
        self.control()
            .send_command(req(
                token,
                pb::SendCommandRequest {
                    thing: Some(thing_id(thing)),
                    name: name.into(),
                    payload: name.as_bytes().to_vec(),
                    ttl: Some(prost_types::Duration {
                        seconds: i64::try_from(ttl.as_secs()).unwrap(),
                        nanos: 0,
                    }),
                    idempotency_key: String::new(),
                    on_behalf_of: None,
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get(&self, token: &str, id: &pb::CommandId) -> pb::Command {
        self.control()
            .get_command(req(
                token,
                pb::GetCommandRequest {
                    id: Some(id.clone()),
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Opens a session of `thing` on replica `replica`, taking up to `max_commands`.
    async fn session(&self, replica: usize, thing: Uuid, max_commands: u32) -> Session {
        let (tx, rx) = mpsc::channel(16);
        tx.send(frame(session_request::Frame::Hello(
            session_request::Hello {
                agent_version: "test".into(),
                last_acked_seq: None,
                max_commands,
            },
        )))
        .await
        .unwrap();
        let mut inbound = CollectServiceClient::new(self.collects[replica].clone())
            .session(req(&self.thing_token(thing), ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        match inbound.message().await.unwrap().unwrap().frame {
            Some(session_response::Frame::Welcome(_)) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        Session { tx, inbound }
    }

    async fn status_row(&self, id: &pb::CommandId) -> Option<statuses::Model> {
        statuses::Entity::find_by_id(Uuid::parse_str(&id.value).unwrap())
            .one(&self.conn)
            .await
            .unwrap()
    }
}

fn frame(f: session_request::Frame) -> pb::SessionRequest {
    pb::SessionRequest { frame: Some(f) }
}

fn thing_id(id: Uuid) -> pb::ThingId {
    pb::ThingId {
        value: id.to_string(),
    }
}

struct Session {
    tx: mpsc::Sender<pb::SessionRequest>,
    inbound: Streaming<pb::SessionResponse>,
}

impl Session {
    /// The next command within `wait`, skipping other frames; `None` when none comes.
    async fn command(&mut self, wait: Duration) -> Option<session_response::CommandDelivery> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.inbound.message()).await {
                Err(_) => return None,
                Ok(Ok(Some(pb::SessionResponse {
                    frame: Some(session_response::Frame::Command(c)),
                }))) => return Some(c),
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return None,
                Ok(Err(status)) => panic!("session failed: {status:?}"),
            }
        }
    }

    async fn ack(&self, id: &pb::CommandId, outcome: pb::CommandOutcome, detail: &str) {
        self.tx
            .send(frame(session_request::Frame::CommandAck(
                session_request::CommandAck {
                    command: Some(id.clone()),
                    outcome: outcome as i32,
                    detail: detail.into(),
                    executed_at: None,
                },
            )))
            .await
            .unwrap();
    }

    /// Goodbye, then the stream's end (OK).
    async fn close(mut self) {
        self.tx
            .send(frame(session_request::Frame::Goodbye(
                session_request::Goodbye {},
            )))
            .await
            .unwrap();
        while let Some(_frame) = self.inbound.message().await.unwrap() {}
    }
}

fn state(c: &pb::Command) -> pb::CommandState {
    pb::CommandState::try_from(c.state).unwrap()
}

sipmba_testkit::on_both_databases!(
    a_command_for_an_offline_thing_reaches_it_through_another_replica,
    live_sessions_get_commands_in_a_window_and_expired_ones_never,
);

async fn a_command_for_an_offline_thing_reaches_it_through_another_replica(backend: Backend) {
    let mut h = Harness::start(backend, Settings::default()).await;
    let (_alice, alice_token) = h.root("alice").await;
    let thing = h.thing(&alice_token, "pump").await;

    // The thing wakes on replica 0 with nothing pending, and sleeps again.
    let mut s = h.session(0, thing, 4).await;
    assert!(s.command(Duration::from_millis(300)).await.is_none());
    s.close().await;

    // Queued while it sleeps: durable once SendCommand answers.
    let sent = h
        .send(&alice_token, thing, "open-valve", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(state(&sent), pb::CommandState::Queued);
    let id = sent.id.clone().unwrap();
    let mut watch = h
        .control()
        .watch_command(req(
            &alice_token,
            pb::WatchCommandRequest {
                id: Some(id.clone()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state(&watch.message().await.unwrap().unwrap()),
        pb::CommandState::Queued
    );

    // A replica started after the command rebuilds its inbox from the log and delivers it.
    let fresh = h.add_collect().await;
    let mut s = h.session(fresh, thing, 4).await;
    let delivered = s.command(Duration::from_secs(5)).await.expect("delivered");
    assert_eq!(delivered.id.as_ref(), Some(&id));
    assert_eq!(delivered.name, "open-valve");
    assert_eq!(delivered.payload, b"open-valve");
    assert_eq!(
        state(&watch.message().await.unwrap().unwrap()),
        pb::CommandState::Delivered
    );
    // Not acknowledged: the thing sleeps before executing it.
    s.close().await;

    // The next session, on yet another replica, gets it again; the thing acknowledges.
    let mut s = h.session(1, thing, 4).await;
    let again = s
        .command(Duration::from_secs(5))
        .await
        .expect("redelivered");
    assert_eq!(again.id.as_ref(), Some(&id));
    s.ack(&id, pb::CommandOutcome::Acked, "valve open").await;
    let acked = loop {
        let c = watch.message().await.unwrap().expect("watch goes on");
        if state(&c) != pb::CommandState::Delivered {
            break c;
        }
    };
    assert_eq!(state(&acked), pb::CommandState::Acked);
    assert_eq!(acked.detail, "valve open");
    assert!(
        watch.message().await.unwrap().is_none(),
        "the watch ends after a terminal state"
    );
    s.close().await;

    let got = h.get(&alice_token, &id).await;
    assert_eq!(state(&got), pb::CommandState::Acked);
    let listed = h
        .control()
        .list_commands(req(
            &alice_token,
            pb::ListCommandsRequest {
                thing: Some(thing_id(thing)),
                states: vec![],
                page: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.commands.len(), 1);
    assert_eq!(state(&listed.commands[0]), pb::CommandState::Acked);

    // Every replica, the first one included, knows it is done: never delivered again.
    let mut s = h.session(0, thing, 4).await;
    assert!(s.command(Duration::from_millis(500)).await.is_none());
    s.close().await;
}

async fn live_sessions_get_commands_in_a_window_and_expired_ones_never(backend: Backend) {
    let h = Harness::start(backend, Settings::default()).await;
    let (_alice, alice_token) = h.root("alice").await;
    let thing = h.thing(&alice_token, "lamp").await;

    // Online, with room for two unacknowledged commands.
    let mut s = h.session(0, thing, 2).await;
    let mut sent = Vec::new();
    for name in ["one", "two", "three"] {
        sent.push(
            h.send(&alice_token, thing, name, Duration::from_secs(120))
                .await
                .unwrap()
                .id
                .unwrap(),
        );
    }
    let first = s.command(Duration::from_secs(5)).await.expect("first");
    let second = s.command(Duration::from_secs(5)).await.expect("second");
    assert_eq!((first.name.as_str(), second.name.as_str()), ("one", "two"));
    assert!(
        s.command(Duration::from_millis(300)).await.is_none(),
        "the window is full"
    );
    s.ack(&sent[0], pb::CommandOutcome::Failed, "bulb missing")
        .await;
    let third = s.command(Duration::from_secs(5)).await.expect("third");
    assert_eq!(third.name, "three");
    s.ack(&sent[1], pb::CommandOutcome::Acked, "").await;
    s.ack(&sent[2], pb::CommandOutcome::Acked, "").await;
    s.close().await;
    sipmba_testkit::eventually(
        "FAILED and ACKED recorded",
        Duration::from_secs(10),
        async || {
            state(&h.get(&alice_token, &sent[0]).await) == pb::CommandState::Failed
                && state(&h.get(&alice_token, &sent[2]).await) == pb::CommandState::Acked
        },
    )
    .await;
    assert_eq!(h.get(&alice_token, &sent[0]).await.detail, "bulb missing");

    // A command that expires while the thing sleeps is never delivered, and shows EXPIRED.
    let short = h
        .send(&alice_token, thing, "blink", Duration::from_secs(1))
        .await
        .unwrap()
        .id
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        state(&h.get(&alice_token, &short).await),
        pb::CommandState::Expired
    );
    let mut s = h.session(1, thing, 4).await;
    assert!(s.command(Duration::from_millis(500)).await.is_none());
    s.close().await;
    // Collect reports it on the log too (for processing and for the record).
    sipmba_testkit::eventually("an EXPIRED event", Duration::from_secs(10), async || {
        h.status_row(&short)
            .await
            .is_some_and(|s| s.state == pb::CommandState::Expired as i32)
    })
    .await;
    // The list filters by state.
    let expired = h
        .control()
        .list_commands(req(
            &alice_token,
            pb::ListCommandsRequest {
                thing: None,
                states: vec![pb::CommandState::Expired as i32],
                page: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.commands.len(), 1);
    assert_eq!(expired.commands[0].id.as_ref(), Some(&short));
}
