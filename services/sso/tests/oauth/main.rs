//! sso over real HTTP, driven by the `oauth2` crate as a standard client, with Objects running
//! beside it, on PostgreSQL and SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::time::Duration;

use oauth2::{
    ClientId, ClientSecret, RefreshToken, RequestTokenError, ResourceOwnerPassword,
    ResourceOwnerUsername, Scope, TokenResponse, TokenUrl,
    basic::{BasicClient, BasicErrorResponseType},
};
use sipmba_auth::{AuthError, JwksSource, Kind, Revocations, Verifier, VerifierConfig, scopes};
use sipmba_proto::v1 as pb;
use sipmba_runtime::{Server, Shutdown, ShutdownTrigger};
use sipmba_sso::{Sso, SsoConfig};
use sipmba_testkit::{Backend, TestDb, with_token};
use tonic::transport::Channel;
use uuid::Uuid;

mod accounts;
mod code;
mod keys;
mod logs;
mod revocation;
mod tokens;

struct Platform {
    sso: Sso,
    shutdown: Shutdown,
    base: String,
    channel: Channel,
    _trigger: ShutdownTrigger,
    _db: TestDb,
}

const AUDIENCE: &str = "sipmba";

async fn start(backend: Backend) -> Platform {
    start_with(backend, |_| {}).await
}

async fn start_with(backend: Backend, adjust: impl FnOnce(&mut SsoConfig)) -> Platform {
    sipmba_testkit::init_logs();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new(backend).await.unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    sipmba_objects::migrate(&conn).await.unwrap();
    sipmba_sso::migrate(&conn).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let mut config = SsoConfig::new(&base, AUDIENCE, &base);
    config.password_cost = sipmba_sso::secrets::PasswordCost {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };
    adjust(&mut config);
    let revocations = Revocations::default();
    let sso = Sso::start(conn.clone(), config, revocations).await.unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let shutdown_handle = shutdown.clone();
    let mut server = Server::new();
    sipmba_objects::ObjectsService::new(sipmba_objects::Store::new(conn), shutdown.clone())
        .register(&mut server);
    server.http(sipmba_sso::router(sso.clone()));
    sso.register_grpc(&mut server);
    sso.follow_objects(shutdown.clone());
    tokio::spawn(server.run(
        listener,
        None,
        sso.verifier(),
        shutdown,
        Duration::from_secs(1),
    ));
    let channel = Channel::from_shared(base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    Platform {
        sso,
        shutdown: shutdown_handle,
        base,
        channel,
        _trigger: trigger,
        _db: db,
    }
}

async fn http(request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, reqwest::Error> {
    let (parts, body) = request.into_parts();
    let response = reqwest::Client::new()
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    Ok(builder.body(response.bytes().await?.to_vec()).unwrap())
}

impl Platform {
    fn client(
        &self,
        id: &str,
        secret: Option<&str>,
    ) -> oauth2::basic::BasicClient<
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointSet,
    > {
        let mut client = BasicClient::new(ClientId::new(id.into()))
            .set_token_uri(TokenUrl::new(format!("{}/oauth2/token", self.base)).unwrap());
        if let Some(secret) = secret {
            client = client.set_client_secret(ClientSecret::new(secret.into()));
        }
        client
    }

    /// A service client with objects:admin, as the operator would hold.
    async fn admin_token(&self) -> String {
        let secret = sipmba_sso::secrets::random_secret();
        let mut all = scopes::USER_SCOPES.to_vec();
        all.extend([
            scopes::OBJECTS_ADMIN,
            scopes::OBJECTS_AUTHORIZE,
            scopes::TOKENS_INTROSPECT,
        ]);
        self.sso
            .ensure_service_client("operator", &secret, Uuid::new_v4(), &all)
            .await
            .unwrap();
        let token = self
            .client("operator", Some(&secret))
            .exchange_client_credentials()
            .request_async(&http)
            .await
            .expect("service client_credentials");
        token.access_token().secret().clone()
    }

    async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<oauth2::basic::BasicTokenResponse, BasicErrorResponseType> {
        self.client("sipmba-cli", None)
            .exchange_password(
                &ResourceOwnerUsername::new(username.into()),
                &ResourceOwnerPassword::new(password.into()),
            )
            .request_async(&http)
            .await
            .map_err(oauth_error)
    }

    fn verifier(&self) -> Verifier {
        let config = VerifierConfig::new(
            JwksSource::Url(format!("{}/.well-known/jwks.json", self.base)),
            &self.base,
            AUDIENCE,
        );
        Verifier::new(config, Revocations::default()).unwrap()
    }
}

fn oauth_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> BasicErrorResponseType {
    match e {
        RequestTokenError::ServerResponse(r) => r.error().clone(),
        other => panic!("expected an OAuth error response, got {other:?}"),
    }
}
