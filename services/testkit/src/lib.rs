//! Test support: throwaway databases (a PostgreSQL schema or a SQLite file per test, removed
//! afterwards), Kafka-protocol brokers (Apache Kafka or tansu, [`TestBroker`]), minted signing
//! keys and tokens, and a JWKS served over loopback HTTP.

// Test support panics on setup failures: a test that cannot set up must fail loudly.
#![allow(clippy::expect_used)]

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sea_orm::{ConnectionTrait, Database};
use sipmba_auth::{
    Kind,
    signing::{AccessClaims, SigningKey},
};
use uuid::Uuid;

mod broker;
pub mod browser;
mod dev;
mod wait;
pub use broker::{Flavour, KafkaCluster, TestBroker, tied_command};
pub use dev::{DevOptions, DevServer};
pub use wait::{Outcome, Signal, eventually, eventually_blocking, signal, sigterm};

/// PostgreSQL used by the tests; override with `SIPMBA_TEST_POSTGRES_URL`.
pub fn postgres_base_url() -> String {
    std::env::var("SIPMBA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// The database engines every storage test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (a fresh schema in the `test` database).
    Postgres,
    /// SQLite (a fresh file in a temporary directory).
    Sqlite,
}

/// Runs each named scenario, an `async fn(Backend)`, as two tests: `postgres::<name>` and
/// `sqlite::<name>`.
///
/// ```ignore
/// sipmba_testkit::on_both_databases!(a_scenario, another);
/// async fn a_scenario(backend: sipmba_testkit::Backend) { /* ... */ }
/// ```
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await;
                }
            )*
        }
    };
}

/// Writes a placeholder for every file a configuration rendered by the operator names — the TLS
/// files, the service clients' secrets, the log's credentials — under `dir`, which stands for the
/// operator's mount root (`/etc/sipmba`), so that the `sipmba` binary's loader can read it.
pub fn operator_mounted_files(dir: &std::path::Path) -> std::io::Result<()> {
    for file in [
        "tls/tls.crt",
        "tls/tls.key",
        "tls/ca.crt",
        "clients/control",
        "clients/processing",
        "clients/operator",
        "log/ca.crt",
        "log/tls.crt",
        "log/tls.key",
        "log/password",
    ] {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, "0123456789abcdef0123456789abcdef0123456789")?;
    }
    Ok(())
}

/// A database that exists for one test and is removed when dropped (also when the test panics).
#[derive(Debug)]
pub struct TestDb {
    /// URL to connect with; for PostgreSQL it selects the schema through `search_path`.
    pub url: String,
    /// Which engine.
    pub backend: Backend,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

const SCHEMA_PREFIX: &str = "sipmba_t_";

/// Waits until some PostgreSQL connection waits for the advisory lock `lock`
/// (`pg_advisory_xact_lock` with a key below 2³²), or `done()` says that the work being watched
/// finished without waiting. For the tests of writers that must wait for one another.
pub async fn waiting_for_lock_or(
    conn: &sea_orm::DatabaseConnection,
    lock: i64,
    done: impl Fn() -> bool,
) {
    eventually(
        &format!("a wait for advisory lock {lock}"),
        Duration::from_secs(10),
        async || {
            let row = conn
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DatabaseBackend::Postgres,
                    format!(
                        "SELECT count(*) AS n FROM pg_locks \
                         WHERE locktype = 'advisory' AND objid = {lock} AND NOT granted"
                    ),
                ))
                .await
                .expect("pg_locks")
                .expect("a count");
            done() || row.try_get::<i64>("", "n").expect("a count") > 0
        },
    )
    .await;
}

impl TestDb {
    /// A fresh database on `backend`.
    pub async fn new(backend: Backend) -> anyhow::Result<Self> {
        match backend {
            Backend::Postgres => Self::postgres().await,
            Backend::Sqlite => Self::sqlite(),
        }
    }

    /// A fresh SQLite file.
    pub fn sqlite() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path: PathBuf = dir.path().join("test.db");
        Ok(Self {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            backend: Backend::Sqlite,
            schema: None,
            _dir: Some(dir),
        })
    }

    /// A fresh PostgreSQL schema. Schemas left behind by killed test runs more than an hour ago
    /// are dropped on the way.
    pub async fn postgres() -> anyhow::Result<Self> {
        let base = postgres_base_url();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let schema = format!("{SCHEMA_PREFIX}{now}_{}", Uuid::new_v4().simple());
        let admin = Database::connect(&base).await?;
        let stale = admin
            .query_all_raw(sea_orm::Statement::from_string(
                admin.get_database_backend(),
                format!("SELECT nspname FROM pg_namespace WHERE nspname LIKE '{SCHEMA_PREFIX}%'"),
            ))
            .await?;
        for row in stale {
            let name: String = row.try_get("", "nspname")?;
            let born = name
                .strip_prefix(SCHEMA_PREFIX)
                .and_then(|rest| rest.split('_').next())
                .and_then(|t| t.parse::<u64>().ok());
            if born.is_some_and(|t| t + 3600 < now) {
                let _ = admin
                    .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await;
            }
        }
        admin
            .execute_unprepared(&format!("CREATE SCHEMA \"{schema}\""))
            .await?;
        admin.close().await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        Ok(Self {
            url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
            backend: Backend::Postgres,
            schema: Some(schema),
            _dir: None,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        let base = postgres_base_url();
        // Drop may run inside a runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(db) = Database::connect(&base).await {
                    let _ = db
                        .execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await;
                    let _ = db.close().await;
                }
            });
        })
        .join();
    }
}

/// Default issuer of test tokens.
pub const ISSUER: &str = "https://sso.test.sipmba";
/// Default audience of test tokens.
pub const AUDIENCE: &str = "sipmba";

/// A signing key and the means to mint tokens with it.
#[derive(Debug)]
pub struct TestIssuer {
    /// The key.
    pub key: SigningKey,
    /// `iss` of minted tokens.
    pub issuer: String,
    /// `aud` of minted tokens.
    pub audience: String,
}

impl TestIssuer {
    /// A fresh key with the default issuer and audience.
    pub fn new() -> Self {
        Self::with_kid(&format!("test-{}", Uuid::new_v4().simple()))
    }

    /// A fresh key with the given key id.
    pub fn with_kid(kid: &str) -> Self {
        Self {
            key: SigningKey::generate(kid).expect("generate key"),
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
        }
    }

    /// Claims for `subject` valid for an hour; adjust and pass to [`TestIssuer::sign`].
    pub fn claims(&self, kind: Kind, subject: Uuid, scopes: &[&str]) -> AccessClaims {
        AccessClaims::new(
            &self.issuer,
            &self.audience,
            kind,
            subject,
            scopes,
            Duration::from_secs(3600),
        )
    }

    /// Signs claims.
    pub fn sign(&self, claims: &AccessClaims) -> String {
        self.key.sign(claims).expect("sign token")
    }

    /// A thing's token with the scopes provisioning gives (`telemetry:write commands:read`),
    /// owned by `owner`.
    pub fn thing_token(&self, thing: Uuid, owner: Uuid) -> String {
        use sipmba_auth::scopes::{COMMANDS_READ, TELEMETRY_WRITE};
        self.sign(
            &self
                .claims(Kind::Thing, thing, &[TELEMETRY_WRITE, COMMANDS_READ])
                .with_owner(owner),
        )
    }

    /// A user token with every user scope.
    pub fn user_token(&self, user: Uuid) -> String {
        self.sign(&self.claims(Kind::User, user, sipmba_auth::scopes::USER_SCOPES))
    }

    /// A service token with `objects:admin`, `objects:authorize` and `objects:events`.
    pub fn admin_token(&self) -> String {
        use sipmba_auth::scopes::*;
        let mut scopes = USER_SCOPES.to_vec();
        scopes.extend([OBJECTS_ADMIN, OBJECTS_AUTHORIZE, OBJECTS_EVENTS]);
        self.sign(&self.claims(Kind::Service, Uuid::new_v4(), &scopes))
    }
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIssuer {
    /// Serves this issuer's key set and returns a verifier of its tokens (as every service has),
    /// with the key server's handle.
    pub async fn verifier(&self) -> anyhow::Result<(sipmba_auth::Verifier, JwksServer)> {
        let (url, jwks) = serve_jwks(serde_json::to_value(self.key.jwks())?).await?;
        let verifier = sipmba_auth::Verifier::new(
            sipmba_auth::VerifierConfig::new(
                sipmba_auth::JwksSource::Url(url),
                &self.issuer,
                &self.audience,
            ),
            sipmba_auth::Revocations::default(),
        )?;
        Ok((verifier, jwks))
    }
}

/// Serves `jwks` (a JSON value) at `http://127.0.0.1:<port>/.well-known/jwks.json` until the
/// returned handle is dropped; returns the URL.
pub async fn serve_jwks(jwks: serde_json::Value) -> anyhow::Result<(String, JwksServer)> {
    let (tx, rx) = tokio::sync::watch::channel(jwks);
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (counter, is_down) = (hits.clone(), down.clone());
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let rx = rx.clone();
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let unavailable = is_down.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                use axum::response::IntoResponse;
                if unavailable {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response()
                } else {
                    axum::Json(rx.borrow().clone()).into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((
        format!("http://{addr}/.well-known/jwks.json"),
        JwksServer {
            task,
            keys: tx,
            hits,
            down,
        },
    ))
}

/// A running JWKS server; aborted on drop.
#[derive(Debug)]
pub struct JwksServer {
    task: tokio::task::JoinHandle<()>,
    keys: tokio::sync::watch::Sender<serde_json::Value>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl JwksServer {
    /// Replaces the served key set (key rotation).
    pub fn set_keys(&self, jwks: serde_json::Value) {
        let _ = self.keys.send(jwks);
    }

    /// Answers 503 from now on (sso unreachable).
    pub fn go_down(&self) {
        self.down.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times the key set was fetched.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends logs to the test's captured output (`RUST_LOG` filters; default `warn`).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A fresh CA and a certificate it signed for 127.0.0.1 and localhost: `(ca.pem, cert.pem,
/// key.pem)` (the key in PKCS #8).
pub fn test_ca() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("a CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("sipmba test CA {}", Uuid::new_v4().simple()),
    );
    let ca = ca_params.self_signed(&ca_key).expect("a CA certificate");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate parameters")
        .signed_by(&key, &issuer)
        .expect("a certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A gRPC request carrying `authorization: Bearer <token>`.
pub use sipmba_auth::client::bearer as with_token;

/// Runs `server` on a loopback port until `shutdown`; returns a connected channel and its URL.
pub async fn serve(
    server: sipmba_runtime::Server,
    verifier: sipmba_auth::Verifier,
    shutdown: sipmba_runtime::Shutdown,
) -> anyhow::Result<(tonic::transport::Channel, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    serve_on(listener, server, verifier, shutdown).await
}

/// Runs `server` on `listener` until `shutdown`; returns a connected channel and its URL.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    server: sipmba_runtime::Server,
    verifier: sipmba_auth::Verifier,
    shutdown: sipmba_runtime::Shutdown,
) -> anyhow::Result<(tonic::transport::Channel, String)> {
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(server.run(
        listener,
        None,
        verifier,
        shutdown,
        std::time::Duration::from_secs(1),
    ));
    let channel = tonic::transport::Channel::from_shared(url.clone())?
        .connect()
        .await?;
    Ok((channel, url))
}

/// Creates a root user through Objects at `objects`, as the `objects:admin` holder of `admin`;
/// returns its id.
pub async fn create_root(
    objects: &tonic::transport::Channel,
    admin: &str,
    name: &str,
) -> anyhow::Result<Uuid> {
    let user = sipmba_proto::v1::user_service_client::UserServiceClient::new(objects.clone())
        .create_user(with_token(
            admin,
            sipmba_proto::v1::CreateUserRequest {
                username: name.into(),
                parent: None,
            },
        ))
        .await?
        .into_inner();
    Ok(Uuid::parse_str(
        &user.id.ok_or_else(|| anyhow::anyhow!("no user id"))?.value,
    )?)
}

/// Creates a thing owned by the user of `token` through Objects at `objects`; returns its id.
pub async fn create_thing(
    objects: &tonic::transport::Channel,
    token: &str,
    name: &str,
) -> anyhow::Result<Uuid> {
    let thing = sipmba_proto::v1::thing_service_client::ThingServiceClient::new(objects.clone())
        .create_thing(with_token(
            token,
            sipmba_proto::v1::CreateThingRequest {
                name: name.into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await?
        .into_inner();
    Ok(Uuid::parse_str(
        &thing
            .id
            .ok_or_else(|| anyhow::anyhow!("no thing id"))?
            .value,
    )?)
}

/// A loopback port for a server process to bind, whose successor is free too (`--dev` starts
/// its broker there). Drawn at random below the kernel's ephemeral range (32768 and up), where
/// the sockets other tests bind to port 0 and outgoing connections never land, so that two
/// tests starting servers at once do not pick each other's ports.
pub fn free_port_pair() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(u64::from(std::process::id()));
        let port = 20_000 + u16::try_from(hasher.finish() % 10_000).unwrap_or(0);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 1) {
            return port;
        }
    }
}

/// Asserts the call failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    match result {
        Ok(v) => panic!("expected {code:?} ({needle}), got Ok({v:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "status: {status:?}");
            assert!(
                status.message().contains(needle),
                "message {:?} should contain {needle:?}",
                status.message()
            );
        }
    }
}
