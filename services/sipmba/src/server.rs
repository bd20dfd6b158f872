//! `sipmba server`.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context;
use sipmba_auth::{JwksSource, Revocations, Verifier, VerifierConfig};
use sipmba_runtime::{Config, ConfigArgs, Defaults, Server, Shutdown};
use sipmba_sso::SsoConfig;

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
const AVAILABLE: &[Target] = &[
    Target::Sso,
    Target::Objects,
    Target::Collect,
    Target::Control,
    Target::Processing,
];

/// Arguments of `sipmba server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Which micro-service to run.
    #[arg(long, value_enum, default_value = "all", env = "SIPMBA_TARGET")]
    target: Target,
    /// Run every service on embedded defaults: SQLite in --data-dir, plaintext on
    /// 127.0.0.1:7400, and an admin token written to <data-dir>/dev-admin.token.
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
    let runs = |t: Target| args.target == t || args.target == Target::All;
    let defaults = Defaults {
        listen: args.dev.then(|| "127.0.0.1:7400".into()),
        plaintext: args.dev,
        database_url: args.dev.then(|| {
            format!(
                "sqlite://{}?mode=rwc",
                args.data_dir.join("sipmba.db").display()
            )
        }),
        // sso verifies with its own keys; so does every service running beside it.
        own_keys: runs(Target::Sso),
        partitions: args.dev.then_some(1),
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
    if matches!(
        args.target,
        Target::Collect | Target::Control | Target::Processing
    ) && config.queue.brokers.is_empty()
    {
        return Err(Failure::Usage(format!(
            "invalid setting `queue.brokers` (flag --brokers, environment SIPMBA_BROKERS): \
             is not set: {} works on the Kafka-protocol log",
            args.target.name()
        )));
    }
    for (target, identity) in [
        (Target::Control, &config.control.identity),
        (Target::Processing, &config.processing.identity),
    ] {
        if runs(target) {
            check_identity(
                identity,
                runs(Target::Sso),
                runs(Target::Objects),
                config.tls.is_some(),
            )?;
        }
    }
    if runs(Target::Processing)
        && config.processing.control_url.is_none()
        && (!runs(Target::Control) || config.tls.is_some())
    {
        return Err(Failure::Usage(
            "invalid setting `processing.control_url`: is not set: processing's rules send \
             their commands through Control; give its http:// address unless it runs in this \
             process without TLS"
                .into(),
        ));
    }
    if runs(Target::Sso) && !runs(Target::Objects) && config.sso.objects_url.is_none() {
        return Err(Failure::Usage(
            "invalid setting `sso.objects_url` (flag --objects-url, environment SIPMBA_OBJECTS_URL): \
             is not set: sso needs Objects; give its http:// address"
                .into(),
        ));
    }
    if runs(Target::Sso)
        && runs(Target::Objects)
        && config.tls.is_some()
        && config.sso.objects_url.is_none()
    {
        return Err(Failure::Usage(
            "invalid setting `sso.objects_url` (flag --objects-url, environment SIPMBA_OBJECTS_URL): \
             with TLS on, sso reaches Objects over a separate plaintext address only; run them as separate targets"
                .into(),
        ));
    }
    sipmba_runtime::init_tracing(config.log_format, args.dev);
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(path) = &config.peer_ca {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading {} (server.peer_ca_file)", path.display()))?;
        sipmba_auth::peer_tls::trust(pem);
    }

    let (trigger, shutdown) = Shutdown::new();
    let mut server = Server::new();
    let db = sipmba_runtime::db::connect(&config.database_url, config.database_max_connections)
        .await
        .context("opening the database (database.url)")?;
    let revocations = Revocations::default();

    if runs(Target::Objects) {
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
    }

    // --dev brings its own broker (tansu, which `.ci/dev` installs), or refuses to start.
    let mut config = config;
    let dev_broker = if args.dev && config.queue.brokers.is_empty() {
        let broker = crate::dev_broker::start(
            &args.data_dir,
            config.listen,
            shutdown.clone(),
            server.readiness_recheck(),
        )
        .await
        .map_err(Failure::Usage)?;
        config.queue.brokers = vec![broker.addr.clone()];
        Some(broker)
    } else {
        None
    };
    let queue = if config.queue.brokers.is_empty() {
        tracing::warn!(
            "queue.brokers is not set: revocations stay inside this process and collect does not run"
        );
        None
    } else {
        Some(connect_queue(&config, &shutdown).await?)
    };
    if let Some(queue) = &queue {
        let ready = Arc::new(AtomicBool::new(false));
        let stop = shutdown.clone();
        let (queue, list, flag) = (queue.clone(), revocations.clone(), ready.clone());
        tokio::spawn(async move {
            if let Err(e) = sipmba_queue::revocations::follow(queue, list, flag, stop.wait()).await
            {
                tracing::error!(error = %e, "cannot follow the revocation topic");
            }
        });
        // Serving before the known revocations are applied would accept revoked tokens.
        server.requires(Arc::new(move || {
            let ready = ready.clone();
            Box::pin(async move { ready.load(Ordering::Relaxed) })
        }));
    }

    let mut sso_handle = None;
    let mut dev_token = None;
    let verifier = if runs(Target::Sso) {
        let sso = start_sso(&db, &config, revocations.clone(), &shutdown).await?;
        server.http(sipmba_sso::router(sso.clone()));
        sso.register_grpc(&mut server);
        sso.maintain_keys(shutdown.clone());
        for client in &config.sso.service_clients {
            let secret = std::fs::read_to_string(&client.secret_file)
                .with_context(|| format!("reading {}", client.secret_file.display()))?;
            let secret = secret.trim();
            if secret.len() < 32 {
                return Err(Failure::Usage(format!(
                    "invalid setting `sso.service_clients`: the secret of client {:?} in {} is shorter than 32 characters",
                    client.id,
                    client.secret_file.display()
                )));
            }
            let scopes: Vec<&str> = client.scopes.iter().map(String::as_str).collect();
            let subject = sso
                .ensure_service_client(&client.id, secret, uuid::Uuid::new_v4(), &scopes)
                .await
                .map_err(|e| {
                    Failure::Runtime(anyhow::anyhow!("service client {:?}: {e}", client.id))
                })?;
            tracing::info!(client = %client.id, %subject, "service client ready");
        }
        if let Some(queue) = &queue {
            let publisher = sipmba_queue::revocations::RevocationPublisher::new(queue.clone())
                .await
                .context("creating the revocation topic")?;
            sso.publish_revocations(publisher, shutdown.clone());
        }
        if !runs(Target::Objects) {
            server.requires_database(db.clone());
        }
        if args.dev {
            dev_token = Some(crate::dev::write_dev_token(&args.data_dir, &sso).await?);
        }
        let verifier = sso.verifier();
        sso_handle = Some(sso);
        verifier
    } else {
        let url = config
            .auth
            .jwks_url
            .clone()
            .ok_or_else(|| Failure::Usage("auth.jwks_url is not set".into()))?;
        Verifier::new(verifier_config(JwksSource::Url(url), &config), revocations)
            .context("building the token verifier")?
    };
    match &queue {
        Some(queue) if runs(Target::Collect) => {
            let producer = sipmba_queue::producer::Producer::new(
                queue,
                sipmba_collect::TELEMETRY_TOPIC,
                config.collect.telemetry_partitions,
                sipmba_collect::telemetry_batch_limits(),
            )
            .await
            .context("creating the telemetry topic")?;
            let start = || async { sipmba_collect::store::migrate(&db).await };
            sipmba_runtime::retry::until_ok(
                "cannot migrate the collect schema yet",
                &shutdown,
                start,
            )
            .await
            .ok_or_else(|| {
                Failure::Runtime(anyhow::anyhow!("stopped before collect could start"))
            })?;
            let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "collect".into());
            let inbox = sipmba_collect::inbox::Inbox::start(
                queue,
                config.queue.command_partitions,
                &instance,
                shutdown.clone(),
            )
            .await
            .context("following the command topics")?;
            sipmba_collect::Collect::new(
                producer,
                sipmba_collect::store::AckStore::new(db.clone()),
                verifier.clone(),
                sipmba_collect::validate::Limits {
                    max_batch_readings: config.collect.max_batch_readings,
                    max_reading_bytes: config.collect.max_reading_bytes,
                    readings_per_second: config.collect.readings_per_second,
                    burst_readings: config.collect.burst_readings,
                    max_sessions: config.collect.max_sessions,
                    max_commands: config.collect.max_commands,
                },
                &instance,
                shutdown.clone(),
            )
            .with_inbox(inbox)
            .register(&mut server);
        }
        _ if args.target == Target::All => tracing::info!(
            "collect, control and processing need queue.brokers; running without them"
        ),
        _ => {}
    }
    if let Some(queue) = queue.as_ref().filter(|_| runs(Target::Processing)) {
        let (queries, rules) = start_processing(
            &db,
            queue,
            &config,
            sso_handle.as_ref(),
            &verifier,
            &shutdown,
        )
        .await?;
        queries.register(&mut server);
        rules.register(&mut server);
    }
    if let Some(queue) = queue.as_ref().filter(|_| runs(Target::Control)) {
        start_control(
            &db,
            queue,
            &config,
            sso_handle.as_ref(),
            &verifier,
            &shutdown,
        )
        .await?
        .register(&mut server);
    }

    // Collect and Control write to the log: they report NOT_SERVING while no broker answers
    // (and, under --dev, while its broker is being restarted).
    if let Some(queue) = &queue {
        let queue = queue.clone();
        let dev_up = dev_broker.as_ref().map(crate::dev_broker::DevBroker::up);
        server.requires_for(
            &[
                sipmba_proto::v1::collect_service_server::SERVICE_NAME,
                sipmba_proto::v1::control_service_server::SERVICE_NAME,
            ],
            Arc::new(move || {
                let up =
                    queue.answering() && dev_up.as_ref().is_none_or(|u| u.load(Ordering::Relaxed));
                Box::pin(async move { up })
            }),
        );
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {} (server.listen)", config.listen))?;
    tracing::info!(addr = %listener.local_addr().context("local address")?, target = args.target.name(), "listening");
    // Objects may be this very process: follow its change feed once the port is open.
    if let Some(sso) = &sso_handle {
        sso.follow_objects(shutdown.clone());
    }
    if let (Some(sso), Some(token)) = (&sso_handle, dev_token) {
        let dev = crate::dev::Dev {
            data_dir: args.data_dir.clone(),
            url: format!("http://{}", loopback(config.listen)),
            broker: queue
                .as_ref()
                .and_then(|_| config.queue.brokers.first().cloned()),
            embedded_broker: dev_broker.is_some(),
        };
        tokio::spawn(dev.bootstrap(sso.clone(), token, shutdown.clone()));
    }
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

/// Refuses a configuration in which a service could not reach Objects and sso.
fn check_identity(
    identity: &sipmba_runtime::ServiceIdentity,
    with_sso: bool,
    with_objects: bool,
    tls: bool,
) -> Result<(), Failure> {
    let section = identity.section;
    if !with_sso && identity.client_secret_file.is_none() {
        return Err(Failure::Usage(format!(
            "invalid setting `{section}.client_secret_file`: is not set: {section} authenticates to \
             sso with client_credentials (client `{section}.client_id`) to ask Objects for access decisions"
        )));
    }
    if (!with_objects || tls) && identity.objects_url.is_none()
        || (!with_sso || tls) && identity.token_url.is_none()
    {
        return Err(Failure::Usage(format!(
            "invalid setting `{section}.objects_url` / `{section}.token_url`: {section} needs the \
             http:// addresses of Objects and of sso's /oauth2/token unless they run in this \
             process without TLS"
        )));
    }
    Ok(())
}

/// The Objects access client of a service, with its own client_credentials token carrying
/// `objects:authorize` and `extra` scopes (a client created in sso at start when sso is this
/// process); the token source is returned too, for the service's other calls.
async fn objects_access(
    identity: &sipmba_runtime::ServiceIdentity,
    config: &Config,
    sso: Option<&sipmba_sso::Sso>,
    extra: &[&str],
) -> Result<
    (
        sipmba_runtime::objects::ObjectsAccess,
        sipmba_runtime::objects::ServiceToken,
    ),
    Failure,
> {
    let mut scopes = vec![sipmba_auth::scopes::OBJECTS_AUTHORIZE];
    scopes.extend_from_slice(extra);
    let section = identity.section;
    let own = format!("http://{}", loopback(config.listen));
    let secret = match (&identity.client_secret_file, sso) {
        (Some(file), _) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {} ({section}.client_secret_file)", file.display()))?
            .trim()
            .to_owned(),
        // sso is this process: the service gets a client of its own, with a fresh secret each start.
        (None, Some(sso)) => {
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            sso.ensure_service_client(&identity.client_id, &secret, uuid::Uuid::new_v4(), &scopes)
                .await
                .map_err(|e| {
                    Failure::Runtime(anyhow::anyhow!("{section}'s service client: {e}"))
                })?;
            secret
        }
        (None, None) => {
            return Err(Failure::Usage(format!(
                "invalid setting `{section}.client_secret_file`: is not set"
            )));
        }
    };
    let token_url = identity
        .token_url
        .clone()
        .unwrap_or_else(|| format!("{own}/oauth2/token"));
    let credentials = sipmba_auth::client::ServiceCredentials::new(
        &token_url,
        &identity.client_id,
        &secret,
        &scopes.join(" "),
    )
    .map_err(|e| Failure::Runtime(anyhow::anyhow!("{section}'s credentials: {e}")))?;
    let objects_url = identity.objects_url.clone().unwrap_or(own);
    let token = sipmba_runtime::objects::ServiceToken::Credentials(Arc::new(credentials));
    let objects = sipmba_runtime::objects::ObjectsAccess::new(&objects_url, token.clone())
        .map_err(|e| Failure::Usage(format!("invalid setting `{section}.objects_url`: {e}")))?;
    Ok((objects, token))
}

/// Migrates the processing schema and starts consuming telemetry and answering queries.
async fn start_processing(
    db: &sea_orm::DatabaseConnection,
    queue: &sipmba_queue::Queue,
    config: &Config,
    sso: Option<&sipmba_sso::Sso>,
    verifier: &Verifier,
    shutdown: &Shutdown,
) -> Result<
    (
        sipmba_processing::grpc::Queries,
        sipmba_processing::rules_api::RulesApi,
    ),
    Failure,
> {
    let settings = &config.processing;
    let (objects, token) = objects_access(
        &settings.identity,
        config,
        sso,
        &[sipmba_auth::scopes::COMMANDS_WRITE],
    )
    .await?;
    let migrate = || async { sipmba_processing::migration::migrate(db).await };
    sipmba_runtime::retry::until_ok(
        "cannot migrate the processing schema yet",
        shutdown,
        migrate,
    )
    .await
    .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("stopped before processing could start")))?;
    // Created here too, so that processing can start before collect has produced anything.
    queue
        .ensure_topic(
            sipmba_queue::topics::TELEMETRY,
            config.collect.telemetry_partitions,
        )
        .await
        .context("creating the telemetry topic")?;
    let store = sipmba_processing::store::Store::new(db.clone());
    let ownership = sipmba_processing::Ownership {
        replica: settings.replica,
        replicas: settings.replicas,
    };
    let control_url = settings
        .control_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", loopback(config.listen)));
    let control = sipmba_processing::rules::ControlClient::new(&control_url, token)
        .map_err(|e| Failure::Usage(format!("invalid setting `processing.control_url`: {e}")))?;
    let rules = sipmba_processing::rules::Rules::start(
        db.clone(),
        objects.clone(),
        control,
        ownership,
        settings.selector_refresh,
        shutdown.clone(),
    )
    .await
    .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("stopped before processing could start")))?;
    let (live, _) = tokio::sync::broadcast::channel(1024);
    sipmba_processing::Consumer::start(
        store.clone(),
        queue,
        ownership,
        Some(rules.clone()),
        live.clone(),
        shutdown.clone(),
    )
    .await
    .context("following the telemetry topic")?;
    Ok((
        sipmba_processing::grpc::Queries::new(
            store,
            objects,
            verifier.clone(),
            live,
            settings.online_window,
            shutdown.clone(),
        ),
        sipmba_processing::rules_api::RulesApi::new(rules, settings.max_rules_per_owner),
    ))
}

/// Migrates the control schema, gets control its service credentials, and starts following the
/// command topics.
async fn start_control(
    db: &sea_orm::DatabaseConnection,
    queue: &sipmba_queue::Queue,
    config: &Config,
    sso: Option<&sipmba_sso::Sso>,
    verifier: &Verifier,
    shutdown: &Shutdown,
) -> Result<sipmba_control::Control, Failure> {
    let settings = &config.control;
    let (objects, _) = objects_access(&settings.identity, config, sso, &[]).await?;
    let migrate = || async { sipmba_control::store::migrate(db).await };
    sipmba_runtime::retry::until_ok("cannot migrate the control schema yet", shutdown, migrate)
        .await
        .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("stopped before control could start")))?;
    sipmba_control::Control::start(
        sipmba_control::store::Store::new(db.clone()),
        queue,
        config.queue.command_partitions,
        objects,
        verifier.clone(),
        sipmba_control::ControlLimits {
            commands_per_second: settings.commands_per_second,
            burst_commands: settings.burst_commands,
            max_pending_per_thing: settings.max_pending_per_thing,
            default_ttl: settings.default_ttl,
            max_ttl: settings.max_ttl,
        },
        shutdown.clone(),
    )
    .await
    .context("creating the command topics")
    .map_err(Failure::from)
}

/// Migrates the sso schema and loads its keys, retrying while the database is unreachable
/// (sso cannot verify or issue anything before).
async fn start_sso(
    db: &sea_orm::DatabaseConnection,
    config: &Config,
    revocations: Revocations,
    shutdown: &Shutdown,
) -> Result<sipmba_sso::Sso, Failure> {
    let objects_url = config
        .sso
        .objects_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", loopback(config.listen)));
    let mut sso_config = SsoConfig::new(&config.auth.issuer, &config.auth.audience, &objects_url);
    sso_config.open_registration = config.sso.open_registration;
    sso_config.user_token_lifetime = config.sso.user_token_lifetime;
    sso_config.thing_token_lifetime = config.sso.thing_token_lifetime;
    sso_config.service_token_lifetime = config.sso.service_token_lifetime;
    sso_config.refresh_token_lifetime = config.sso.refresh_token_lifetime;
    sso_config.key_rotation = config.sso.key_rotation;
    let start = || async {
        sipmba_sso::migrate(db).await.map_err(|e| e.to_string())?;
        sipmba_sso::Sso::start(db.clone(), sso_config.clone(), revocations.clone())
            .await
            .map_err(|e| e.to_string())
    };
    sipmba_runtime::retry::until_ok("cannot start sso yet", shutdown, start)
        .await
        .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("stopped before sso could start")))
}

/// Connects to the log, retrying while the brokers are unreachable.
async fn connect_queue(
    config: &Config,
    shutdown: &Shutdown,
) -> Result<sipmba_queue::Queue, Failure> {
    let security = queue_security(&config.queue)?;
    let connect = || {
        sipmba_queue::Queue::connect_secure(
            &config.queue.brokers,
            &config.queue.topic_prefix,
            security.clone(),
        )
    };
    // Unreachable brokers are waited for; refused credentials stop the start.
    let refused = |e: &sipmba_queue::QueueError| matches!(e, sipmba_queue::QueueError::Refused(_));
    let queue = sipmba_runtime::retry::until_ok_unless(
        "cannot reach the brokers yet",
        shutdown,
        connect,
        refused,
    )
    .await
    .map_err(|e| Failure::Usage(format!("queue: {e}")))?
    .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("stopped before the brokers answered")))?;
    use sipmba_queue::topics;
    let q = &config.queue;
    Ok(queue.with_replicas(q.replication_factor).with_retention(&[
        (topics::TELEMETRY, q.telemetry_retention),
        (topics::COMMANDS, q.command_retention),
        (topics::COMMAND_EVENTS, q.command_retention),
        (topics::REVOCATIONS, q.revocation_retention),
    ]))
}

/// TLS and SASL towards the brokers, from the files `[queue.tls]` and `[queue.sasl]` name; a
/// file that does not hold what it should stops the start, naming the setting.
fn queue_security(
    q: &sipmba_runtime::config::QueueSettings,
) -> Result<sipmba_queue::Security, Failure> {
    let read = |setting: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|e| Failure::Usage(format!("{setting}: cannot read {}: {e}", path.display())))
    };
    let tls = match &q.tls {
        None => None,
        Some(tls) => {
            let ca = read("queue.tls.ca_file", &tls.ca_file)?;
            let client = match &tls.client {
                None => None,
                Some((cert, key)) => Some((
                    read("queue.tls.cert_file", cert)?,
                    read("queue.tls.key_file", key)?,
                )),
            };
            let client = client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
            Some(
                sipmba_queue::Security::tls_config(&ca, client)
                    .map_err(|e| Failure::Usage(format!("queue.tls: {e}")))?,
            )
        }
    };
    let sasl = match &q.sasl {
        None => None,
        Some(sasl) => {
            let password =
                String::from_utf8(read("queue.sasl.password_file", &sasl.password_file)?).map_err(
                    |_| {
                        Failure::Usage("queue.sasl.password_file: the password is not UTF-8".into())
                    },
                )?;
            let password = password.trim_end_matches(['\n', '\r']).to_owned();
            if password.is_empty() {
                return Err(Failure::Usage(format!(
                    "queue.sasl.password_file: {} is empty",
                    sasl.password_file.display()
                )));
            }
            Some(sipmba_queue::Sasl {
                mechanism: sasl
                    .mechanism
                    .parse()
                    .map_err(|e| Failure::Usage(format!("queue.sasl.mechanism: {e}")))?,
                username: sasl.username.clone(),
                password,
            })
        }
    };
    Ok(sipmba_queue::Security { tls, sasl })
}

/// The address this process answers on, for calls to itself.
fn loopback(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    if listen.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    }
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
    let migrate = || sipmba_objects::migrate(&db);
    if sipmba_runtime::retry::until_ok("cannot migrate the objects schema yet", &shutdown, migrate)
        .await
        .is_some()
    {
        tracing::info!("objects schema is up to date");
        done.store(true, Ordering::Relaxed);
    }
}
