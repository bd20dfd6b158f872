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
    objects::{ObjectsClient, ServiceToken},
};
use sipmba_testkit::{Backend, TestBroker, TestDb, TestIssuer, assert_status, with_token as req};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

mod queries;
mod rules;

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
        sipmba_control::migrate(&conn).await.unwrap();
        sipmba_processing::migrate(&conn).await.unwrap();
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
            ObjectsClient::new(
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
            ObjectsClient::new(&self.objects_url, token.clone(), &PeerCa::none()).unwrap();
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

// ----- rules ----------------------------------------------------------------------------------

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

fn thing_id(id: Uuid) -> pb::ThingId {
    pb::ThingId {
        value: id.to_string(),
    }
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}
