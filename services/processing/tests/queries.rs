#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

//! Telemetry queries, live subscriptions and presence over gRPC, authorized by a real Objects,
//! on readings that went through the real broker — on PostgreSQL and SQLite.

use std::time::Duration;

use prost::Message;
use sipmba_auth::{JwksSource, Kind, Revocations, Verifier, VerifierConfig, scopes};
use sipmba_processing::{Consumer, Ownership, grpc::Queries, store::Store};
use sipmba_proto::v1::{
    self as pb, presence_service_client::PresenceServiceClient,
    telemetry_service_client::TelemetryServiceClient,
};
use sipmba_queue::{
    Queue,
    producer::{BatchLimits, Producer},
    topics,
};
use sipmba_runtime::{
    Server, Shutdown, ShutdownTrigger,
    objects::{ObjectsAccess, ServiceToken},
};
use sipmba_testkit::{Backend, TestBroker, TestDb, TestIssuer, serve_jwks, with_token as req};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

/// Device time of seq 1 (s): 40 s past a whole minute.
const T0: i64 = 1_700_000_080;

struct Harness {
    issuer: TestIssuer,
    admin: String,
    objects: Channel,
    processing: Channel,
    producer: Producer,
    conn: sea_orm::DatabaseConnection,
    _trigger: ShutdownTrigger,
    _broker: TestBroker,
    _jwks: sipmba_testkit::JwksServer,
    _db: TestDb,
}

async fn serve(server: Server, verifier: Verifier, shutdown: Shutdown) -> (Channel, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server.run(listener, None, verifier, shutdown, Duration::from_secs(1)));
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, url)
}

impl Harness {
    async fn start(backend: Backend) -> Self {
        sipmba_testkit::init_logs();
        let db = TestDb::new(backend).await.unwrap();
        let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
        sipmba_objects::migrate(&conn).await.unwrap();
        sipmba_processing::store::migrate(&conn).await.unwrap();
        let broker = TestBroker::start().await.unwrap();
        let queue = Queue::connect(std::slice::from_ref(&broker.addr), &broker.prefix)
            .await
            .unwrap();
        let producer = Producer::new(&queue, topics::TELEMETRY, 2, BatchLimits::default())
            .await
            .unwrap();
        let issuer = TestIssuer::new();
        let (url, jwks) = serve_jwks(serde_json::to_value(issuer.key.jwks()).unwrap())
            .await
            .unwrap();
        let verifier = Verifier::new(
            VerifierConfig::new(JwksSource::Url(url), &issuer.issuer, &issuer.audience),
            Revocations::default(),
        )
        .unwrap();
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
        let store = Store::new(conn.clone());
        let (live, _) = tokio::sync::broadcast::channel(1024);
        Consumer::start(
            store.clone(),
            &queue,
            Ownership::default(),
            live.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let queries = Queries::new(
            store,
            ObjectsAccess::new(&objects_url, ServiceToken::Fixed(service_token)).unwrap(),
            verifier.clone(),
            live,
            Duration::from_secs(300),
            shutdown.clone(),
        );
        let mut server = Server::new();
        queries.register(&mut server);
        let (processing, _) = serve(server, verifier, shutdown).await;
        Self {
            admin: issuer.admin_token(),
            issuer,
            objects,
            processing,
            producer,
            conn,
            _trigger: trigger,
            _broker: broker,
            _jwks: jwks,
            _db: db,
        }
    }

    async fn root(&self, name: &str) -> (Uuid, String) {
        let user = pb::user_service_client::UserServiceClient::new(self.objects.clone())
            .create_user(req(
                &self.admin,
                pb::CreateUserRequest {
                    username: name.into(),
                    parent: None,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let id = Uuid::parse_str(&user.id.unwrap().value).unwrap();
        let token = self.issuer.sign(&self.issuer.claims(
            Kind::User,
            id,
            &[scopes::TELEMETRY_READ, scopes::THINGS_WRITE],
        ));
        (id, token)
    }

    async fn thing(&self, token: &str, name: &str) -> Uuid {
        let thing = pb::thing_service_client::ThingServiceClient::new(self.objects.clone())
            .create_thing(req(
                token,
                pb::CreateThingRequest {
                    name: name.into(),
                    owner: None,
                    labels: Default::default(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        Uuid::parse_str(&thing.id.unwrap().value).unwrap()
    }

    /// Readings `seqs` of `thing`: temperature = seq / 10 at T0 + seq - 1 seconds, a text
    /// `door` and a flag `on`.
    async fn produce(&self, thing: Uuid, seqs: impl Iterator<Item = u64>) {
        let now = sipmba_runtime::ids::now_ms();
        let mut pending = Vec::new();
        for seq in seqs {
            let value = pb::TelemetryRecord {
                thing: Some(thing_id(thing)),
                reading: Some(pb::Reading {
                    seq,
                    device_time: Some(prost_types::Timestamp {
                        seconds: T0 + i64::try_from(seq).unwrap() - 1,
                        nanos: 0,
                    }),
                    metrics: vec![
                        pb::Metric {
                            name: "temperature".into(),
                            value: Some(pb::metric::Value::Number(seq as f64 / 10.0)),
                            unit: "Cel".into(),
                        },
                        pb::Metric {
                            name: "door".into(),
                            value: Some(pb::metric::Value::Text(
                                if seq % 2 == 0 { "open" } else { "shut" }.into(),
                            )),
                            unit: String::new(),
                        },
                        pb::Metric {
                            name: "on".into(),
                            value: Some(pb::metric::Value::Flag(seq % 3 == 0)),
                            unit: String::new(),
                        },
                    ],
                    payload: vec![],
                }),
                received_time: Some(sipmba_runtime::ids::timestamp_from_ms(now)),
                collect_instance: "test".into(),
            }
            .encode_to_vec();
            pending.push(
                self.producer
                    .send(thing.to_string().as_bytes(), value)
                    .await,
            );
        }
        for p in pending {
            p.await.unwrap().unwrap();
        }
    }

    fn telemetry(&self) -> TelemetryServiceClient<Channel> {
        TelemetryServiceClient::new(self.processing.clone())
    }

    async fn history(
        &self,
        token: &str,
        r: pb::QueryHistoryRequest,
    ) -> Result<pb::QueryHistoryResponse, tonic::Status> {
        self.telemetry()
            .query_history(req(token, r))
            .await
            .map(tonic::Response::into_inner)
    }
}

fn thing_id(id: Uuid) -> pb::ThingId {
    pb::ThingId {
        value: id.to_string(),
    }
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} ({needle}), got Ok({v:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(needle),
                "{:?} does not mention {needle:?}",
                status.message()
            );
        }
    }
}

async fn stored(h: &Harness, n: u64) {
    use sea_orm::{EntityTrait, PaginatorTrait};
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sipmba_processing::store::readings::Entity::find()
        .count(&h.conn)
        .await
        .unwrap()
        < n
    {
        assert!(std::time::Instant::now() < deadline, "readings not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn queries_answer_from_stored_telemetry_and_refuse_what_is_not_yours(backend: Backend) {
    let h = Harness::start(backend).await;
    let (_alice, alice) = h.root("alice").await;
    let (_bob, bob) = h.root("bob").await;
    let pump = h.thing(&alice, "pump").await;
    let idle = h.thing(&alice, "idle").await;
    // 300 readings, and 20 of them again (resent after a lost Ack).
    h.produce(pump, (1..=300).chain(281..=300)).await;
    stored(&h, 300).await;

    // Latest values, ordered by metric name, with the highest seq's values.
    let latest = h
        .telemetry()
        .get_latest(req(
            &alice,
            pb::GetLatestRequest {
                things: vec![thing_id(pump), thing_id(idle)],
                metrics: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .values;
    let names: Vec<_> = latest
        .iter()
        .map(|l| l.metric.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["door", "on", "temperature"]);
    assert!(latest.iter().all(|l| l.seq == 300));
    assert_eq!(
        latest[2].metric.as_ref().unwrap().value,
        Some(pb::metric::Value::Number(30.0))
    );
    assert_eq!(
        latest[1].metric.as_ref().unwrap().value,
        Some(pb::metric::Value::Flag(true))
    );

    // Raw history, paged by 64: every point once, in order.
    let mut seqs = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .history(
                &alice,
                pb::QueryHistoryRequest {
                    thing: Some(thing_id(pump)),
                    metric: "temperature".into(),
                    start: at(T0 + 100),
                    end: at(T0 + 200),
                    bucket: None,
                    aggregations: vec![],
                    page: Some(pb::PageRequest {
                        page_size: 64,
                        page_token: token.clone(),
                    }),
                },
            )
            .await
            .unwrap();
        seqs.extend(page.points.iter().map(|p| p.seq));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seqs, (101..=200).collect::<Vec<_>>());

    // Buckets of a minute over the first five minutes.
    let buckets = h
        .history(
            &alice,
            pb::QueryHistoryRequest {
                thing: Some(thing_id(pump)),
                metric: "temperature".into(),
                start: at(T0 - 40),
                end: at(T0 + 260),
                bucket: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                aggregations: vec![],
                page: None,
            },
        )
        .await
        .unwrap()
        .buckets;
    // T0 is 40 s past a minute: buckets start at T0-40, T0+20, ...
    assert_eq!(buckets.len(), 5);
    assert_eq!(buckets[0].start, at(T0 - 40));
    assert_eq!(buckets[0].count, Some(20)); // seqs 1..=20
    assert_eq!(buckets[1].count, Some(60)); // seqs 21..=80
    assert_eq!(buckets[1].min, Some(2.1));
    assert_eq!(buckets[1].max, Some(8.0));
    assert!((buckets[1].avg.unwrap() - 5.05).abs() < 1e-9);
    // Text counts only.
    let door = h
        .history(
            &alice,
            pb::QueryHistoryRequest {
                thing: Some(thing_id(pump)),
                metric: "door".into(),
                start: at(T0 - 40),
                end: at(T0 + 260),
                bucket: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                aggregations: vec![pb::Aggregation::Count as i32],
                page: None,
            },
        )
        .await
        .unwrap()
        .buckets;
    assert_eq!(door[1].count, Some(60));
    assert_eq!(door[1].avg, None);

    // Bad queries.
    let bad = |start: i64, end: i64, bucket: i64, metric: &str, aggregation: pb::Aggregation| {
        pb::QueryHistoryRequest {
            thing: Some(thing_id(pump)),
            metric: metric.into(),
            start: at(start),
            end: at(end),
            bucket: Some(prost_types::Duration {
                seconds: bucket,
                nanos: 0,
            }),
            aggregations: vec![aggregation as i32],
            page: None,
        }
    };
    use pb::Aggregation::{Avg, Count};
    assert_status(
        h.history(&alice, bad(T0 + 10, T0, 60, "temperature", Count))
            .await,
        Code::InvalidArgument,
        "must be before",
    );
    assert_status(
        h.history(&alice, bad(0, T0, 1, "temperature", Count)).await,
        Code::InvalidArgument,
        "buckets",
    );
    assert_status(
        h.history(&alice, bad(T0, T0 + 60, -5, "temperature", Count))
            .await,
        Code::InvalidArgument,
        "negative",
    );
    assert_status(
        h.history(&alice, bad(T0, T0 + 60, 60, "pressure", Count))
            .await,
        Code::InvalidArgument,
        "never reported",
    );
    assert_status(
        h.history(&alice, bad(T0, T0 + 60, 60, "door", Avg)).await,
        Code::InvalidArgument,
        "only AGGREGATION_COUNT",
    );
    assert_status(
        h.history(&alice, bad(T0, T0 + 60, 60, "bad name!", Count))
            .await,
        Code::InvalidArgument,
        "`metric`",
    );
    // Someone else's thing does not exist for bob.
    assert_status(
        h.history(&bob, bad(T0, T0 + 60, 60, "temperature", Count))
            .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        h.telemetry()
            .get_latest(req(
                &bob,
                pb::GetLatestRequest {
                    things: vec![thing_id(pump)],
                    metrics: vec![],
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );

    // Presence: the pump was just heard from; the idle thing never.
    let presence = PresenceServiceClient::new(h.processing.clone())
        .get_presence(req(
            &alice,
            pb::GetPresenceRequest {
                things: vec![thing_id(pump), thing_id(idle)],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(presence.presences[0].online);
    assert_eq!(presence.presences[0].last_seq, 300);
    assert!(presence.presences[1].last_seen.is_none());
    assert!(!presence.presences[1].online);
    assert_eq!(presence.online_window.unwrap().seconds, 300);

    // A live subscription gets new readings once each, in order, with the metrics asked for.
    let mut events = h
        .telemetry()
        .subscribe(req(
            &alice,
            pb::SubscribeRequest {
                things: vec![thing_id(pump)],
                channel: None,
                metrics: vec!["temperature".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.produce(pump, (301..=310).chain(305..=310)).await;
    let mut got = Vec::new();
    while got.len() < 10 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("a live event")
            .unwrap()
            .unwrap();
        let reading = event.reading.unwrap();
        assert_eq!(reading.metrics.len(), 1);
        got.push(reading.seq);
    }
    assert_eq!(got, (301..=310).collect::<Vec<_>>());
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_answer_from_stored_telemetry_and_refuse_what_is_not_yours() {
        super::queries_answer_from_stored_telemetry_and_refuse_what_is_not_yours(
            sipmba_testkit::Backend::Postgres,
        )
        .await;
    }
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_answer_from_stored_telemetry_and_refuse_what_is_not_yours() {
        super::queries_answer_from_stored_telemetry_and_refuse_what_is_not_yours(
            sipmba_testkit::Backend::Sqlite,
        )
        .await;
    }
}
