//! A real Objects server on 127.0.0.1:0 over a fresh database, with minted tokens.
#![allow(dead_code)]

use std::time::Duration;

use sipmba_proto::v1::{
    self as pb, access_service_client::AccessServiceClient,
    channel_service_client::ChannelServiceClient, event_service_client::EventServiceClient,
    thing_service_client::ThingServiceClient, user_service_client::UserServiceClient,
};
use sipmba_runtime::{Server, Shutdown, ShutdownTrigger};
pub use sipmba_testkit::assert_status;
use sipmba_testkit::{Backend, TestDb, TestIssuer};
use tonic::transport::Channel;
use uuid::Uuid;

pub struct Harness {
    pub issuer: TestIssuer,
    pub admin: String,
    pub channel: Channel,
    pub store: sipmba_objects::Store,
    _trigger: ShutdownTrigger,
    _jwks: sipmba_testkit::JwksServer,
    _db: TestDb,
}

impl Harness {
    pub async fn start(backend: Backend) -> Self {
        sipmba_testkit::init_logs();
        let db = TestDb::new(backend).await.expect("test database");
        let conn = sipmba_runtime::db::connect(&db.url, 5)
            .await
            .expect("connect");
        sipmba_objects::migrate(&conn).await.expect("migrate");
        let issuer = TestIssuer::new();
        let (verifier, jwks) = issuer.verifier().await.unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let store = sipmba_objects::Store::new(conn);
        let mut server = Server::new();
        sipmba_objects::ObjectsService::new(store.clone(), shutdown.clone()).register(&mut server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server.run(listener, None, verifier, shutdown, Duration::from_secs(1)));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to the server");
        let admin = issuer.admin_token();
        Self {
            issuer,
            admin,
            channel,
            store,
            _trigger: trigger,
            _jwks: jwks,
            _db: db,
        }
    }

    pub fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel.clone())
    }
    pub fn things(&self) -> ThingServiceClient<Channel> {
        ThingServiceClient::new(self.channel.clone())
    }
    pub fn channels(&self) -> ChannelServiceClient<Channel> {
        ChannelServiceClient::new(self.channel.clone())
    }
    pub fn access(&self) -> AccessServiceClient<Channel> {
        AccessServiceClient::new(self.channel.clone())
    }
    pub fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel.clone())
    }

    /// A root user (created by the admin) and a token for it.
    pub async fn root(&self, name: &str) -> (Uuid, String) {
        let user = self
            .users()
            .create_user(req(
                &self.admin,
                pb::CreateUserRequest {
                    username: name.into(),
                    parent: None,
                },
            ))
            .await
            .expect("create root user")
            .into_inner();
        let id = uuid(&user.id);
        (id, self.issuer.user_token(id))
    }

    /// A child of the token's user (or of `parent`) and a token for it.
    pub async fn child(&self, token: &str, parent: Uuid, name: &str) -> (Uuid, String) {
        let user = self
            .users()
            .create_user(req(
                token,
                pb::CreateUserRequest {
                    username: name.into(),
                    parent: Some(user_id(parent)),
                },
            ))
            .await
            .expect("create child user")
            .into_inner();
        let id = uuid(&user.id);
        (id, self.issuer.user_token(id))
    }

    pub async fn thing(&self, token: &str, name: &str, labels: &[(&str, &str)]) -> Uuid {
        let thing = self
            .things()
            .create_thing(req(
                token,
                pb::CreateThingRequest {
                    name: name.into(),
                    owner: None,
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                },
            ))
            .await
            .expect("create thing")
            .into_inner();
        Uuid::parse_str(&thing.id.unwrap().value).unwrap()
    }

    pub async fn user(&self, id: Uuid) -> pb::User {
        self.users()
            .get_user(req(
                &self.admin,
                pb::GetUserRequest {
                    id: Some(user_id(id)),
                },
            ))
            .await
            .expect("get user")
            .into_inner()
    }
}

pub use sipmba_testkit::with_token as req;

pub fn user_id(id: Uuid) -> pb::UserId {
    pb::UserId {
        value: id.to_string(),
    }
}

pub fn thing_id(id: Uuid) -> pb::ThingId {
    pb::ThingId {
        value: id.to_string(),
    }
}

pub fn uuid<T: HasValue>(id: &Option<T>) -> Uuid {
    Uuid::parse_str(id.as_ref().expect("id present").value()).unwrap()
}

pub trait HasValue {
    fn value(&self) -> &str;
}
impl HasValue for pb::UserId {
    fn value(&self) -> &str {
        &self.value
    }
}
impl HasValue for pb::ThingId {
    fn value(&self) -> &str {
        &self.value
    }
}
impl HasValue for pb::ChannelId {
    fn value(&self) -> &str {
        &self.value
    }
}
