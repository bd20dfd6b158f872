//! `sipmba server`.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use sipmba_auth::{
    JwksSource, Kind, Revocations, Verifier, VerifierConfig,
    signing::{AccessClaims, SigningKey},
};
use sipmba_runtime::{Config, ConfigArgs, Defaults, Server, Shutdown};

/// The micro-services of the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// OAuth 2.0 authorization server.
    Sso,
    /// Users, things, channels.
    Objects,
    /// Device streams into the log.
    Collect,
    /// User commands to things.
    Control,
    /// Storage, queries, rules.
    Processing,
    /// Every service in one process.
    All,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Sso => "sso",
            Target::Objects => "objects",
            Target::Collect => "collect",
            Target::Control => "control",
            Target::Processing => "processing",
            Target::All => "all",
        }
    }
}

/// Targets this build can serve.
const AVAILABLE: &[Target] = &[Target::Objects];

/// Arguments of `sipmba server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Which micro-service to run.
    #[arg(long, value_enum, default_value = "all", env = "SIPMBA_TARGET")]
    target: Target,
    /// Run every service on embedded defaults: SQLite in --data-dir, plaintext on
    /// 127.0.0.1:7400, and a development signing key with an admin token written to
    /// <data-dir>/dev-admin.token.
    #[arg(long)]
    dev: bool,
    /// Where --dev keeps its database and key.
    #[arg(long, default_value = ".sipmba", env = "SIPMBA_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
}

/// How `sipmba server` failed.
#[derive(Debug)]
pub enum Failure {
    /// Bad invocation or configuration (exit code 2).
    Usage(String),
    /// Failure while running (exit code 1).
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// Runs the server until SIGTERM/SIGINT.
pub async fn run(args: ServerArgs) -> Result<(), Failure> {
    let defaults = if args.dev {
        Defaults {
            listen: Some("127.0.0.1:7400".into()),
            plaintext: true,
            database_url: Some(format!(
                "sqlite://{}?mode=rwc",
                args.data_dir.join("sipmba.db").display()
            )),
            own_keys: true,
        }
    } else {
        Defaults::default()
    };
    if args.dev && args.target != Target::All {
        return Err(Failure::Usage(format!(
            "--dev runs every service; drop --target {}",
            args.target.name()
        )));
    }
    if args.target != Target::All && !AVAILABLE.contains(&args.target) {
        return Err(Failure::Usage(format!(
            "target `{}` is not available in this build yet; available targets: {}",
            args.target.name(),
            available_names()
        )));
    }
    let config =
        Config::load(&args.config, &defaults).map_err(|e| Failure::Usage(e.to_string()))?;
    sipmba_runtime::init_tracing(config.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let (trigger, shutdown) = Shutdown::new();
    let mut server = Server::new();

    let verifier = if args.dev {
        let key = dev_key(&args.data_dir)?;
        let jwks = serde_json::to_value(key.jwks()).context("encoding the JWKS")?;
        server.http(axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        ));
        write_dev_token(&args.data_dir, &key, &config)?;
        Verifier::new(
            verifier_config(JwksSource::Static(key.jwks()), &config),
            Revocations::default(),
        )
    } else {
        let url = config
            .auth
            .jwks_url
            .clone()
            .ok_or_else(|| Failure::Usage("auth.jwks_url is not set".into()))?;
        Verifier::new(
            verifier_config(JwksSource::Url(url), &config),
            Revocations::default(),
        )
    }
    .context("building the token verifier")?;

    let db = sipmba_runtime::db::connect(&config.database_url, config.database_max_connections)
        .await
        .with_context(|| "opening the database (database.url)".to_string())?;
    let migrated = Arc::new(AtomicBool::new(false));
    tokio::spawn(migrate_until_done(
        db.clone(),
        migrated.clone(),
        shutdown.clone(),
    ));
    server.requires(Arc::new(move || {
        let migrated = migrated.clone();
        Box::pin(async move { migrated.load(Ordering::Relaxed) })
    }));

    let store = sipmba_objects::Store::new(db.clone());
    sipmba_objects::ObjectsService::new(store, shutdown.clone()).register(&mut server);
    if args.target == Target::All {
        tracing::info!(
            "running objects; sso, collect, control and processing are not in this build yet"
        );
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {} (server.listen)", config.listen))?;
    tracing::info!(addr = %listener.local_addr().context("local address")?, target = args.target.name(), "listening");
    tokio::spawn(async move {
        sipmba_runtime::termination_signal().await;
        tracing::info!("shutting down");
        trigger.trigger();
    });
    server
        .run(
            listener,
            config.tls.as_ref(),
            verifier,
            shutdown,
            config.shutdown_grace,
        )
        .await
        .context("serving")?;
    db.close().await.ok();
    tracing::info!("stopped");
    Ok(())
}

fn available_names() -> String {
    AVAILABLE
        .iter()
        .map(|t| t.name())
        .chain(["all"])
        .collect::<Vec<_>>()
        .join(", ")
}

fn verifier_config(jwks: JwksSource, config: &Config) -> VerifierConfig {
    let mut vc = VerifierConfig::new(jwks, &config.auth.issuer, &config.auth.audience);
    vc.leeway = config.auth.leeway;
    vc
}

/// Applies migrations, retrying while the database is unreachable; health stays NOT_SERVING
/// until they are in place.
async fn migrate_until_done(
    db: sea_orm::DatabaseConnection,
    done: Arc<AtomicBool>,
    shutdown: Shutdown,
) {
    let mut pause = Duration::from_millis(250);
    loop {
        match sipmba_objects::migrate(&db).await {
            Ok(()) => {
                tracing::info!("objects schema is up to date");
                done.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot migrate the objects schema yet");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.clone().wait() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// The development signing key, created once in `data_dir`.
fn dev_key(data_dir: &Path) -> Result<SigningKey, Failure> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("dev-signing.key");
    let secret: [u8; 32] = match std::fs::read(&path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            Failure::Usage(format!(
                "{} is not a 32-byte key; delete it to get a new one",
                path.display()
            ))
        })?,
        Err(_) => {
            let key = SigningKey::generate("dev-1").context("generating a key")?;
            write_private(&path, &key.secret_bytes())?;
            key.secret_bytes()
        }
    };
    Ok(SigningKey::from_bytes("dev-1", &secret).context("loading the dev key")?)
}

/// Writes a 24-hour admin token for trying the platform (never logged).
fn write_dev_token(data_dir: &Path, key: &SigningKey, config: &Config) -> Result<(), Failure> {
    use sipmba_auth::scopes::*;
    let mut scopes = USER_SCOPES.to_vec();
    scopes.extend([OBJECTS_ADMIN, OBJECTS_AUTHORIZE, OBJECTS_EVENTS]);
    let claims = AccessClaims::new(
        &config.auth.issuer,
        &config.auth.audience,
        Kind::Service,
        uuid::Uuid::new_v4(),
        &scopes,
        Duration::from_secs(24 * 3600),
    );
    let token = key.sign(&claims).context("signing the dev token")?;
    let path = data_dir.join("dev-admin.token");
    write_private(&path, token.as_bytes())?;
    tracing::info!(path = %path.display(), "wrote a 24-hour admin token for development");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
