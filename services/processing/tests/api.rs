#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

//! Processing over gRPC — telemetry queries, live subscriptions, presence, and rules that send
//! commands through a real Control — authorized by a real Objects, on readings that went through
//! the real broker, on PostgreSQL and SQLite. Processing can be stopped and started again on the
//! same database.

use std::time::Duration;

use prost::Message;
use sipmba_auth::{Kind, Verifier, peer_tls::PeerCa, scopes};
use sipmba_processing::{
    Consumer, Ownership,
    grpc::Queries,
    rules::{ControlClient, Rules},
    rules_api::RulesApi,
    store::Store,
};
use sipmba_proto::v1::{
    self as pb, presence_service_client::PresenceServiceClient,
    rule_service_client::RuleServiceClient, telemetry_service_client::TelemetryServiceClient,
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
use sipmba_testkit::{Backend, TestBroker, TestDb, TestIssuer, with_token as req};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

/// Device time of seq 1 (s): 40 s past a whole minute.
const T0: i64 = 1_700_000_080;

struct Harness {
    issuer: TestIssuer,
    admin: String,
    objects: Channel,
    objects_url: String,
    control: Channel,
    control_url: String,
    processing: Channel,
    producer: Producer,
    queue: Queue,
    verifier: Verifier,
    conn: sea_orm::DatabaseConnection,
    /// Stops processing alone.
    processing_trigger: Option<ShutdownTrigger>,
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
    async fn start(backend: Backend) -> Self {
        sipmba_testkit::init_logs();
        let db = TestDb::new(backend).await.unwrap();
        let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
        sipmba_objects::migrate(&conn).await.unwrap();
        sipmba_control::store::migrate(&conn).await.unwrap();
        sipmba_processing::migration::migrate(&conn).await.unwrap();
        let broker = TestBroker::start().await.unwrap();
        let queue = Queue::connect(&broker.brokers(), &broker.prefix)
            .await
            .unwrap();
        let producer = Producer::new(&queue, topics::TELEMETRY, 2, BatchLimits::default())
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
        let control = sipmba_control::Control::start(
            sipmba_control::store::Store::new(conn.clone()),
            &queue,
            2,
            ObjectsAccess::new(
                &objects_url,
                ServiceToken::Fixed(Self::service_token(&issuer)),
                &PeerCa::none(),
            )
            .unwrap(),
            verifier.clone(),
            sipmba_control::Settings::default(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let mut control_server = Server::new();
        control.register(&mut control_server);
        let (control, control_url) =
            serve(control_server, verifier.clone(), shutdown.clone()).await;
        let mut h = Self {
            admin: issuer.admin_token(),
            issuer,
            objects,
            objects_url,
            processing: control.clone(),
            control,
            control_url,
            producer,
            queue,
            verifier,
            conn,
            processing_trigger: None,
            _trigger: trigger,
            _broker: broker,
            _jwks: jwks,
            _db: db,
        };
        h.start_processing().await;
        h
    }

    /// Processing's own token: access decisions, and commands for its rules.
    fn service_token(issuer: &TestIssuer) -> String {
        issuer.sign(&issuer.claims(
            Kind::Service,
            Uuid::new_v4(),
            &[scopes::OBJECTS_AUTHORIZE, scopes::COMMANDS_WRITE],
        ))
    }

    /// Starts processing (consumer, rules, queries) on the harness's database.
    async fn start_processing(&mut self) {
        let (trigger, shutdown) = Shutdown::new();
        let token = ServiceToken::Fixed(Self::service_token(&self.issuer));
        let objects =
            ObjectsAccess::new(&self.objects_url, token.clone(), &PeerCa::none()).unwrap();
        let rules = Rules::start(
            self.conn.clone(),
            objects.clone(),
            ControlClient::new(&self.control_url, token, &PeerCa::none()).unwrap(),
            Ownership::default(),
            Duration::from_secs(1),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let store = Store::new(self.conn.clone());
        let (live, _) = tokio::sync::broadcast::channel(1024);
        Consumer::start(
            store.clone(),
            &self.queue,
            Ownership::default(),
            Some(rules.clone()),
            live.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let queries = Queries::new(
            store,
            objects,
            self.verifier.clone(),
            live,
            Duration::from_secs(300),
            shutdown.clone(),
        );
        let mut server = Server::new();
        queries.register(&mut server);
        RulesApi::new(rules, 5).register(&mut server);
        let (processing, _) = serve(server, self.verifier.clone(), shutdown).await;
        self.processing = processing;
        self.processing_trigger = Some(trigger);
    }

    /// Stops processing; the rest of the platform keeps running.
    async fn stop_processing(&mut self) {
        if let Some(trigger) = self.processing_trigger.take() {
            trigger.trigger();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    async fn root(&self, name: &str) -> (Uuid, String) {
        let id = sipmba_testkit::create_root(&self.objects, &self.admin, name)
            .await
            .unwrap();
        let token = self
            .issuer
            .sign(&self.issuer.claims(Kind::User, id, scopes::USER_SCOPES));
        (id, token)
    }

    async fn thing(&self, token: &str, name: &str) -> Uuid {
        sipmba_testkit::create_thing(&self.objects, token, name)
            .await
            .unwrap()
    }

    /// Readings `seqs` of `thing`: temperature = seq / 10 at T0 + seq - 1 seconds, a text
    /// `door` and a flag `on`.
    async fn produce(&self, thing: Uuid, seqs: impl Iterator<Item = u64>) {
        let readings = seqs.map(|seq| pb::Reading {
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
        });
        self.produce_readings(thing, readings).await;
    }

    /// Readings of `thing` as Collect would log them.
    async fn produce_readings(&self, thing: Uuid, readings: impl IntoIterator<Item = pb::Reading>) {
        let now = sipmba_runtime::ids::now_ms();
        let mut pending = Vec::new();
        for reading in readings {
            let value = pb::TelemetryRecord {
                thing: Some(thing_id(thing)),
                reading: Some(reading),
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
    while sipmba_processing::entity::readings::Entity::find()
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

// ----- rules ----------------------------------------------------------------------------------

/// A reading of `temperature` = `value` taken at T0 + `at` seconds.
fn temp(seq: u64, at: i64, value: f64) -> pb::Reading {
    pb::Reading {
        seq,
        device_time: Some(prost_types::Timestamp {
            seconds: T0 + at,
            nanos: 0,
        }),
        metrics: vec![pb::Metric {
            name: "temperature".into(),
            value: Some(pb::metric::Value::Number(value)),
            unit: "Cel".into(),
        }],
        payload: vec![],
    }
}

/// A rule on `temperature`, sending `fan.on`.
fn rule(
    name: &str,
    selector: pb::rule::Selector,
    comparison: pb::Comparison,
    threshold: f64,
    hold_s: i64,
    cooldown_s: i64,
) -> pb::Rule {
    let secs = |s: i64| {
        (s > 0).then_some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    pb::Rule {
        name: name.into(),
        selector: Some(selector),
        metric: "temperature".into(),
        comparison: comparison as i32,
        threshold,
        hold: secs(hold_s),
        cooldown: secs(cooldown_s),
        action: Some(pb::CommandTemplate {
            name: "fan.on".into(),
            payload: b"{\"speed\":3}".to_vec(),
            ttl: None,
        }),
        enabled: true,
        ..Default::default()
    }
}

fn on(thing: Uuid) -> pb::rule::Selector {
    pb::rule::Selector::Thing(thing_id(thing))
}

impl Harness {
    fn rules(&self) -> RuleServiceClient<Channel> {
        RuleServiceClient::new(self.processing.clone())
    }

    async fn create_rule(&self, token: &str, rule: pb::Rule) -> Result<pb::Rule, tonic::Status> {
        self.rules()
            .create_rule(req(token, pb::CreateRuleRequest { rule: Some(rule) }))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn firings(&self, token: &str, rule: &pb::Rule) -> Vec<pb::RuleFiring> {
        self.rules()
            .list_firings(req(
                token,
                pb::ListFiringsRequest {
                    rule: rule.id.clone(),
                    page: None,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .firings
    }

    /// The rule's firings, oldest first, once there are `n` and none is still being sent.
    async fn settled_firings(&self, token: &str, rule: &pb::Rule, n: usize) -> Vec<pb::RuleFiring> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut firings = self.firings(token, rule).await;
            if firings.len() >= n
                && firings
                    .iter()
                    .all(|f| f.detail != "the command is being sent")
            {
                firings.reverse();
                return firings;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "expected {n} settled firings, have {firings:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn commands(&self, token: &str, thing: Uuid) -> Vec<pb::Command> {
        pb::control_service_client::ControlServiceClient::new(self.control.clone())
            .list_commands(req(
                token,
                pb::ListCommandsRequest {
                    thing: Some(thing_id(thing)),
                    states: vec![],
                    page: None,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .commands
    }

    /// Waits until `n` readings of `thing` are stored.
    async fn stored_for(&self, thing: Uuid, n: u64) {
        let store = Store::new(self.conn.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while store.count(thing).await.unwrap() < n {
            assert!(std::time::Instant::now() < deadline, "readings not stored");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn seqs(firings: &[pb::RuleFiring]) -> Vec<u64> {
    firings.iter().map(|f| f.seq).collect()
}

async fn rules_fire_once_per_crossing_after_hold_and_cooldown_also_across_a_restart(
    backend: Backend,
) {
    use pb::Comparison::{Ge, Gt};
    let mut h = Harness::start(backend).await;
    let (alice_id, alice) = h.root("alice").await;
    let pump = h.thing(&alice, "pump").await;
    let oven = h.thing(&alice, "oven").await;
    let fridge = h.thing(&alice, "fridge").await;
    let boiler = h.thing(&alice, "boiler").await;
    let crossing = h
        .create_rule(&alice, rule("pump hot", on(pump), Gt, 30.0, 0, 0))
        .await
        .unwrap();
    assert_eq!(crossing.owner.as_ref().unwrap().value, alice_id.to_string());
    let hold = h
        .create_rule(&alice, rule("oven hot", on(oven), Gt, 100.0, 10, 0))
        .await
        .unwrap();
    let cooldown = h
        .create_rule(&alice, rule("fridge warm", on(fridge), Ge, 8.0, 0, 60))
        .await
        .unwrap();
    let restart = h
        .create_rule(&alice, rule("boiler hot", on(boiler), Gt, 90.0, 10, 0))
        .await
        .unwrap();

    // Crossing: fires when the value goes above, not again while it stays above, and again
    // after it went below and above once more.
    h.produce_readings(
        pump,
        [
            temp(1, 0, 20.0),
            temp(2, 1, 31.0),
            temp(3, 2, 35.0),
            temp(4, 3, 25.0),
            temp(5, 4, 32.0),
            temp(6, 5, 33.0),
        ],
    )
    .await;
    // Hold: a run broken after 5 s does not fire; the next fires once it has lasted 10 s.
    h.produce_readings(
        oven,
        [
            temp(1, 0, 101.0),
            temp(2, 5, 102.0),
            temp(3, 8, 99.0),
            temp(4, 9, 105.0),
            temp(5, 15, 106.0),
            temp(6, 19, 107.0),
            temp(7, 25, 108.0),
        ],
    )
    .await;
    // Cooldown: the second crossing (at 20 s) waits until 60 s have passed since the first
    // firing, then fires while the condition still holds.
    h.produce_readings(
        fridge,
        [
            temp(1, 0, 9.0),
            temp(2, 10, 5.0),
            temp(3, 20, 9.0),
            temp(4, 59, 9.0),
            temp(5, 60, 9.5),
            temp(6, 61, 9.5),
        ],
    )
    .await;
    // Restart in the middle of a hold: 5 s held, processing stops; the rest arrives while it is
    // down; after the restart it fires once, at 10 s, with the run starting before the stop.
    h.produce_readings(boiler, [temp(1, 0, 95.0), temp(2, 5, 96.0)])
        .await;
    h.stored_for(boiler, 2).await;
    h.stored_for(fridge, 6).await;
    h.stop_processing().await;
    h.produce_readings(
        boiler,
        [temp(3, 10, 97.0), temp(4, 15, 98.0), temp(2, 5, 96.0)],
    )
    .await;
    h.start_processing().await;
    h.stored_for(boiler, 4).await;
    // A reading sent again (seq 3, after a lost Ack) changes nothing.
    h.produce_readings(boiler, [temp(3, 10, 97.0)]).await;

    let fired = h.settled_firings(&alice, &crossing, 2).await;
    assert_eq!(seqs(&fired), [2, 5]);
    assert_eq!(
        fired.iter().map(|f| f.value).collect::<Vec<_>>(),
        [31.0, 32.0]
    );
    let fired = h.settled_firings(&alice, &hold, 1).await;
    assert_eq!(seqs(&fired), [6]);
    assert_eq!(fired[0].crossed_at, at(T0 + 9));
    let fired = h.settled_firings(&alice, &cooldown, 2).await;
    assert_eq!(seqs(&fired), [1, 5]);
    assert_eq!(fired[1].crossed_at, at(T0 + 20));
    h.stored_for(pump, 6).await;
    h.stored_for(oven, 7).await;
    let fired = h.settled_firings(&alice, &restart, 1).await;
    assert_eq!(seqs(&fired), [3]);
    assert_eq!(fired[0].crossed_at, at(T0));
    // Nothing more arrives late.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.firings(&alice, &restart).await.len(), 1);
    assert_eq!(h.firings(&alice, &crossing).await.len(), 2);

    // Each firing queued one command through Control, issued by the rule.
    let commands = h.commands(&alice, pump).await;
    assert_eq!(commands.len(), 2);
    for c in &commands {
        assert_eq!(c.name, "fan.on");
        assert_eq!(c.payload, b"{\"speed\":3}");
        assert_eq!(c.state, pb::CommandState::Queued as i32);
        assert_eq!(
            c.issuer.as_ref().unwrap().issuer,
            Some(pb::command_issuer::Issuer::Rule(
                crossing.id.clone().unwrap()
            ))
        );
    }
    let fired = h.firings(&alice, &crossing).await;
    let mut sent: Vec<_> = fired.iter().map(|f| f.command.clone().unwrap()).collect();
    let mut listed: Vec<_> = commands.iter().map(|c| c.id.clone().unwrap()).collect();
    sent.sort_by(|a, b| a.value.cmp(&b.value));
    listed.sort_by(|a, b| a.value.cmp(&b.value));
    assert_eq!(sent, listed);
    assert_eq!(h.commands(&alice, boiler).await.len(), 1);

    // A changed threshold starts the runs afresh: 33 was above 30 but the run is new, and it is
    // not above 40.
    let mut changed = crossing.clone();
    changed.threshold = 40.0;
    let updated = h
        .rules()
        .update_rule(req(
            &alice,
            pb::UpdateRuleRequest {
                rule: Some(changed),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["threshold".into()],
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.threshold, 40.0);
    h.produce_readings(pump, [temp(7, 6, 35.0), temp(8, 7, 41.0)])
        .await;
    let fired = h.settled_firings(&alice, &crossing, 3).await;
    assert_eq!(seqs(&fired), [2, 5, 8]);

    // A disabled rule never fires.
    let mut off = hold.clone();
    off.enabled = false;
    h.rules()
        .update_rule(req(
            &alice,
            pb::UpdateRuleRequest {
                rule: Some(off),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["enabled".into()],
                }),
            },
        ))
        .await
        .unwrap();
    h.produce_readings(
        oven,
        [temp(8, 30, 50.0), temp(9, 31, 150.0), temp(10, 45, 150.0)],
    )
    .await;
    h.stored_for(oven, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.firings(&alice, &hold).await.len(), 1);

    // Listing, by name; deleting takes the firings with it.
    let listed = h
        .rules()
        .list_rules(req(&alice, pb::ListRulesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .rules;
    let names: Vec<_> = listed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["boiler hot", "fridge warm", "oven hot", "pump hot"]);
    h.rules()
        .delete_rule(req(
            &alice,
            pb::DeleteRuleRequest {
                id: restart.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_status(
        h.rules()
            .get_rule(req(
                &alice,
                pb::GetRuleRequest {
                    id: restart.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        h.rules()
            .list_firings(req(
                &alice,
                pb::ListFiringsRequest {
                    rule: restart.id.clone(),
                    page: None,
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
}

async fn rules_act_only_as_far_as_their_owner_may(backend: Backend) {
    use pb::Comparison::Gt;
    let h = Harness::start(backend).await;
    let (_alice_id, alice) = h.root("alice").await;
    let (bob_id, bob) = h.root("bob").await;
    let valve = h.thing(&alice, "valve").await;
    let other = h.thing(&alice, "other").await;

    // Bob reaches nothing of Alice's.
    assert_status(
        h.create_rule(&bob, rule("steal", on(valve), Gt, 1.0, 0, 0))
            .await,
        Code::NotFound,
        "not found",
    );
    // A grant to read is not a grant to command.
    let channels = || pb::channel_service_client::ChannelServiceClient::new(h.objects.clone());
    let plant = channels()
        .create_channel(req(
            &alice,
            pb::CreateChannelRequest {
                name: "plant".into(),
                owner: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .id
        .unwrap();
    channels()
        .connect_thing(req(
            &alice,
            pb::ConnectThingRequest {
                channel: Some(plant.clone()),
                thing: Some(thing_id(valve)),
            },
        ))
        .await
        .unwrap();
    let grant = |permissions: Vec<pb::ChannelPermission>| pb::GrantAccessRequest {
        channel: Some(plant.clone()),
        grantee: Some(pb::UserId {
            value: bob_id.to_string(),
        }),
        permissions: permissions.into_iter().map(|p| p as i32).collect(),
        expires: None,
    };
    channels()
        .grant_access(req(
            &alice,
            grant(vec![pb::ChannelPermission::ReadTelemetry]),
        ))
        .await
        .unwrap();
    assert_status(
        h.create_rule(&bob, rule("read only", on(valve), Gt, 1.0, 0, 0))
            .await,
        Code::PermissionDenied,
        "CHANNEL_PERMISSION_SEND_COMMANDS",
    );
    channels()
        .grant_access(req(
            &alice,
            grant(vec![
                pb::ChannelPermission::ReadTelemetry,
                pb::ChannelPermission::SendCommands,
            ]),
        ))
        .await
        .unwrap();
    // Bob's rules: one on the valve, one on the channel; the channel's things only.
    let by_thing = h
        .create_rule(&bob, rule("valve", on(valve), Gt, 50.0, 0, 0))
        .await
        .unwrap();
    let by_channel = h
        .create_rule(
            &bob,
            rule(
                "plant",
                pb::rule::Selector::Channel(plant.clone()),
                Gt,
                50.0,
                0,
                0,
            ),
        )
        .await
        .unwrap();
    // Bob may also follow the channel live.
    let mut live = h
        .telemetry()
        .subscribe(req(
            &bob,
            pb::SubscribeRequest {
                things: vec![],
                channel: Some(plant.clone()),
                metrics: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    h.produce_readings(valve, [temp(1, 0, 60.0)]).await;
    h.produce_readings(other, [temp(1, 0, 60.0)]).await;
    let fired = h.settled_firings(&bob, &by_thing, 1).await;
    assert!(fired[0].command.is_some(), "{fired:?}");
    let fired = h.settled_firings(&bob, &by_channel, 1).await;
    assert_eq!(fired[0].thing, Some(thing_id(valve)));
    let event = tokio::time::timeout(Duration::from_secs(10), live.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.thing, Some(thing_id(valve)));
    h.stored_for(other, 1).await;
    assert_eq!(h.commands(&alice, valve).await.len(), 2);
    assert!(h.commands(&alice, other).await.is_empty());

    // Alice withdraws the grant: the channel rule stops watching the valve (at its next
    // refresh), and Control refuses the thing rule's command, recorded with the reason.
    channels()
        .revoke_grant(req(
            &alice,
            pb::RevokeGrantRequest {
                channel: Some(plant.clone()),
                grantee: Some(pb::UserId {
                    value: bob_id.to_string(),
                }),
            },
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    h.produce_readings(valve, [temp(2, 1, 10.0), temp(3, 2, 70.0)])
        .await;
    let fired = h.settled_firings(&bob, &by_thing, 2).await;
    assert_eq!(fired[1].command, None);
    assert!(
        fired[1].detail.contains("not found"),
        "{:?}",
        fired[1].detail
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.firings(&bob, &by_channel).await.len(), 1);
    assert_eq!(h.commands(&alice, valve).await.len(), 2);
    // The live subscription ends: Bob may no longer read the channel... at its next check; the
    // rule of another user is not Alice's to see.
    assert_status(
        h.rules()
            .get_rule(req(
                &alice,
                pb::GetRuleRequest {
                    id: by_thing.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );

    // Bad rules get a message naming the field.
    let bad = |f: fn(&mut pb::Rule)| {
        let mut r = rule("bad", on(valve), Gt, 1.0, 0, 0);
        f(&mut r);
        r
    };
    for (r, needle) in [
        (bad(|r| r.metric = "temp erature".into()), "`metric`"),
        (bad(|r| r.comparison = 0), "`comparison`"),
        (bad(|r| r.threshold = f64::NAN), "`threshold`"),
        (
            bad(|r| {
                r.hold = Some(prost_types::Duration {
                    seconds: 90_000,
                    nanos: 0,
                })
            }),
            "`hold`",
        ),
        (bad(|r| r.action = None), "`action`"),
        (bad(|r| r.selector = None), "selector"),
        (bad(|r| r.name = String::new()), "`name`"),
        (
            bad(|r| {
                r.id = Some(pb::RuleId {
                    value: Uuid::new_v4().to_string(),
                })
            }),
            "output only",
        ),
    ] {
        assert_status(
            h.create_rule(&alice, r).await,
            Code::InvalidArgument,
            needle,
        );
    }
    assert_status(
        h.create_rule(
            &alice,
            bad(|r| {
                r.owner = Some(pb::UserId {
                    value: Uuid::new_v4().to_string(),
                })
            }),
        )
        .await,
        Code::PermissionDenied,
        "owner",
    );
    // Names are unique per owner; an owner has at most 5 rules here.
    h.create_rule(&alice, rule("one", on(valve), Gt, 1.0, 0, 0))
        .await
        .unwrap();
    assert_status(
        h.create_rule(&alice, rule("one", on(valve), Gt, 1.0, 0, 0))
            .await,
        Code::AlreadyExists,
        "\"one\"",
    );
    for name in ["two", "three", "four", "five"] {
        h.create_rule(&alice, rule(name, on(valve), Gt, 1.0, 0, 0))
            .await
            .unwrap();
    }
    assert_status(
        h.create_rule(&alice, rule("six", on(valve), Gt, 1.0, 0, 0))
            .await,
        Code::ResourceExhausted,
        "delete some",
    );
    assert_status(
        h.rules()
            .update_rule(req(
                &alice,
                pb::UpdateRuleRequest {
                    rule: Some(by_thing.clone()),
                    update_mask: None,
                },
            ))
            .await,
        Code::InvalidArgument,
        "`update_mask`",
    );
}

sipmba_testkit::on_both_databases!(
    queries_answer_from_stored_telemetry_and_refuse_what_is_not_yours,
    rules_fire_once_per_crossing_after_hold_and_cooldown_also_across_a_restart,
    rules_act_only_as_far_as_their_owner_may,
);
