//! The server wiring, in the steps every start takes: the configuration validated for the
//! services a process runs ([`Plan::validate`]), what they share opened ([`Platform::open`]: the
//! database, the token verifier's revocation list), each service started
//! ([`Platform::start_objects`], [`start_sso`](Platform::start_sso),
//! [`start_collect`](Platform::start_collect), [`start_processing`](Platform::start_processing),
//! [`start_control`](Platform::start_control), after [`connect_log`](Platform::connect_log)), the
//! port bound ([`Platform::bind`]) and served ([`Bound::serve`]) until SIGTERM/SIGINT.
//!
//! `sipmba server` is [`run`]; `sipmba server --dev` ([`crate::dev`]) takes the same steps and adds
//! its broker, its admin token and its demo thing between them.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context;
use sipmba_auth::{JwksSource, Revocations, Verifier, VerifierConfig, peer_tls::PeerCa};
use sipmba_runtime::{Config, Defaults, Server, Shutdown, ShutdownTrigger};
use sipmba_sso::SsoConfig;

mod clients;
mod log;
mod plan;

use clients::{loopback, objects_access};
use log::connect_queue;
pub use plan::Plan;

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
    /// The target's name on the command line.
    pub fn name(self) -> &'static str {
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

/// Arguments of `sipmba server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Which micro-service to run.
    #[arg(long, value_enum, default_value = "all", env = "SIPMBA_TARGET")]
    pub target: Target,
    /// Run every service on embedded defaults: SQLite in --data-dir, plaintext on
    /// 127.0.0.1:7400, and an admin token written to <data-dir>/dev-admin.token.
    #[arg(long)]
    pub dev: bool,
    /// Where --dev keeps its database and key.
    #[arg(long, default_value = ".sipmba", env = "SIPMBA_DATA_DIR")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub config: crate::config::Args,
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

/// `sipmba server` without `--dev`: every step, then serving until SIGTERM/SIGINT.
pub async fn run(args: ServerArgs) -> Result<(), Failure> {
    let runs_sso = matches!(args.target, Target::Sso | Target::All);
    let defaults = Defaults {
        // sso verifies with its own keys; so does every service running beside it.
        own_keys: runs_sso,
        ..Defaults::default()
    };
    let plan = Plan::validate(args.target, &args.config, &defaults)?;
    let mut platform = Platform::open(plan, false).await?;
    platform.start().await?;
    platform.bind().await?.serve().await
}

/// The services of one process while they start: what they share, and the server they are
/// registered with.
pub struct Platform {
    plan: Plan,
    server: Server,
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
    db: sea_orm::DatabaseConnection,
    /// What the other services' certificates are checked against (`server.peer_ca_file`).
    peer_ca: PeerCa,
    revocations: Revocations,
    queue: Option<sipmba_queue::Queue>,
    /// Conditions besides the brokers' answering under which Collect and Control serve.
    log_up: Vec<Arc<AtomicBool>>,
    sso: Option<sipmba_sso::Sso>,
    verifier: Option<Verifier>,
    /// The rows the services run here prune (one pruner for them all, started at bind).
    prune: Vec<sipmba_runtime::prune::Rule>,
}

/// How often the pruner looks for rows past their time.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Platform {
    /// Logging (`dev`: to standard error, the demo agent quiet), the TLS provider, the peer CA,
    /// and the database.
    pub async fn open(plan: Plan, dev: bool) -> Result<Self, Failure> {
        let config = &plan.config;
        sipmba_runtime::init_tracing(config.log_format, dev);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let peer_ca = match &config.peer_ca {
            Some(path) => PeerCa::new(
                std::fs::read(path)
                    .with_context(|| format!("reading {} (server.peer_ca_file)", path.display()))?,
            ),
            None => PeerCa::none(),
        };
        let (trigger, shutdown) = Shutdown::new();
        let db = sipmba_runtime::db::connect(&config.database_url, config.database_max_connections)
            .await
            .context("opening the database (database.url)")?;
        Ok(Platform {
            plan,
            server: Server::new(),
            trigger,
            shutdown,
            db,
            peer_ca,
            revocations: Revocations::default(),
            queue: None,
            log_up: Vec::new(),
            sso: None,
            verifier: None,
            prune: Vec::new(),
        })
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.plan.config
    }

    /// Each service's validated settings.
    pub fn services(&self) -> &crate::config::Services {
        &self.plan.services
    }

    /// Triggered at SIGTERM/SIGINT, once serving has begun.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Notified when something readiness depends on changes (the health reports are made again).
    pub fn readiness_recheck(&self) -> Arc<tokio::sync::Notify> {
        self.server.readiness_recheck()
    }

    /// The log at `brokers` instead of `queue.brokers`; Collect and Control serve only while
    /// `up` too (a broker this process supervises is running).
    pub fn use_brokers(&mut self, brokers: Vec<String>, up: Arc<AtomicBool>) {
        self.plan.config.queue.brokers = brokers;
        self.log_up.push(up);
    }

    /// sso, once [`start_sso`](Self::start_sso) ran.
    pub fn sso(&self) -> Option<&sipmba_sso::Sso> {
        self.sso.as_ref()
    }

    /// Every step the plan asks for, in order: the log, Objects, sso, Collect, Processing,
    /// Control; and the web console when the process runs every service.
    pub async fn start(&mut self) -> Result<(), Failure> {
        self.connect_log().await?;
        if self.plan.runs(Target::Objects) {
            self.start_objects();
        }
        if self.plan.runs(Target::Sso) {
            self.start_sso().await?;
        }
        match self.queue.is_some() {
            true => {
                if self.plan.runs(Target::Collect) {
                    self.start_collect().await?;
                }
                if self.plan.runs(Target::Processing) {
                    self.start_processing().await?;
                }
                if self.plan.runs(Target::Control) {
                    self.start_control().await?;
                }
            }
            false if self.plan.target == Target::All => tracing::info!(
                "collect, control and processing need queue.brokers; running without them"
            ),
            false => {}
        }
        // The console calls every service on the origin it was loaded from.
        if self.plan.target == Target::All {
            self.server.http(crate::console::router());
        }
        Ok(())
    }

    /// Connects to the log (retrying while the brokers do not answer) and follows the
    /// revocation topic; the services report NOT_SERVING until the known revocations are
    /// applied. Without brokers, revocations stay inside this process.
    pub async fn connect_log(&mut self) -> Result<(), Failure> {
        if self.config().queue.brokers.is_empty() {
            tracing::warn!(
                "queue.brokers is not set: revocations stay inside this process and collect does not run"
            );
            return Ok(());
        }
        let queue = connect_queue(self.config(), &self.shutdown).await?;
        let ready = Arc::new(AtomicBool::new(false));
        let stop = self.shutdown.clone();
        let (follow, list, flag) = (queue.clone(), self.revocations.clone(), ready.clone());
        tokio::spawn(async move {
            if let Err(e) = sipmba_queue::revocations::follow(follow, list, flag, stop.wait()).await
            {
                tracing::error!(error = %e, "cannot follow the revocation topic");
            }
        });
        // Serving before the known revocations are applied would accept revoked tokens.
        self.server.requires(Arc::new(move || {
            let ready = ready.clone();
            Box::pin(async move { ready.load(Ordering::Relaxed) })
        }));
        let lag = queue.lag_metrics().clone();
        self.server.metrics(move |registry| lag.register(registry));
        self.queue = Some(queue);
        Ok(())
    }

    /// Objects: its schema migrated in the background (NOT_SERVING until it is), its service
    /// registered, its change feed pruned past `objects.event_retention_secs`.
    pub fn start_objects(&mut self) {
        let migrated = Arc::new(AtomicBool::new(false));
        tokio::spawn(migrate_objects(
            self.db.clone(),
            migrated.clone(),
            self.shutdown.clone(),
        ));
        self.server.requires(Arc::new(move || {
            let migrated = migrated.clone();
            Box::pin(async move { migrated.load(Ordering::Relaxed) })
        }));
        let store = sipmba_objects::Store::new(self.db.clone());
        sipmba_objects::ObjectsService::new(store, self.shutdown.clone())
            .register(&mut self.server);
        self.prune.extend(sipmba_objects::prune_rules(
            self.services().objects.event_retention(),
        ));
    }

    /// sso: its schema and keys (retrying while the database does not answer), its HTTP and
    /// gRPC endpoints, the service clients of `sso.service_clients`, and its revocations
    /// published on the log.
    pub async fn start_sso(&mut self) -> Result<(), Failure> {
        let sso = start_sso(
            &self.db,
            self.config(),
            &self.plan.services.sso,
            &self.peer_ca,
            self.revocations.clone(),
            &self.shutdown,
        )
        .await?;
        self.server.http(sipmba_sso::router(sso.clone()));
        sso.register_grpc(&mut self.server);
        sso.maintain_keys(self.shutdown.clone());
        for client in &self.services().sso.service_clients {
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
        if let Some(queue) = &self.queue {
            let publisher = sipmba_queue::revocations::RevocationPublisher::new(queue.clone())
                .await
                .context("creating the revocation topic")?;
            sso.publish_revocations(publisher, self.shutdown.clone());
        }
        if !self.plan.runs(Target::Objects) {
            self.server.requires_database(self.db.clone());
        }
        self.prune.extend(sipmba_sso::prune_rules());
        self.sso = Some(sso);
        Ok(())
    }

    /// Collect: its schema, the telemetry topic, the command topics it delivers from.
    pub async fn start_collect(&mut self) -> Result<(), Failure> {
        let queue = self.log("collect")?;
        let verifier = self.verifier()?;
        let config = self.config();
        let settings = self.services().collect;
        let producer = sipmba_queue::producer::Producer::new(
            &queue,
            sipmba_collect::TELEMETRY_TOPIC,
            settings.partitions(),
            sipmba_collect::telemetry_batch_limits(),
        )
        .await
        .context("creating the telemetry topic")?;
        let db = &self.db;
        retried("collect", "migrate its schema", &self.shutdown, || {
            sipmba_collect::migrate(db)
        })
        .await?;
        let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "collect".into());
        let inbox = sipmba_collect::inbox::Inbox::start(
            &queue,
            config.queue.command_partitions,
            &instance,
            self.shutdown.clone(),
        )
        .await
        .context("following the command topics")?;
        let collect = sipmba_collect::Collect::new(
            producer,
            sipmba_collect::store::AckStore::new(self.db.clone()),
            verifier,
            settings,
            &instance,
            self.shutdown.clone(),
        )
        .with_inbox(inbox);
        collect.register(&mut self.server);
        Ok(())
    }

    /// Processing: its schema, its rules, consuming telemetry and answering queries.
    pub async fn start_processing(&mut self) -> Result<(), Failure> {
        let queue = self.log("processing")?;
        let verifier = self.verifier()?;
        let config = self.config();
        let services = self.services();
        let settings = &services.processing;
        let (objects, token) = objects_access(
            &settings.identity(),
            config,
            &self.peer_ca,
            self.sso.as_ref(),
            &[sipmba_auth::scopes::COMMANDS_WRITE],
        )
        .await?;
        let db = &self.db;
        retried("processing", "migrate its schema", &self.shutdown, || {
            sipmba_processing::migrate(db)
        })
        .await?;
        // Created here too, so that processing can start before collect has produced anything.
        queue
            .ensure_topic(
                sipmba_queue::topics::TELEMETRY,
                services.collect.partitions(),
            )
            .await
            .context("creating the telemetry topic")?;
        let retention = settings.retention();
        let store = sipmba_processing::store::Store::new(self.db.clone()).with_retention(retention);
        let ownership = settings.ownership();
        let control_url = settings
            .control_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", loopback(config.listen)));
        let control =
            sipmba_processing::rules::ControlClient::new(&control_url, token, &self.peer_ca)
                .map_err(|e| {
                    Failure::Usage(format!("invalid setting `processing.control_url`: {e}"))
                })?;
        let rules = sipmba_processing::rules::Rules::start(
            self.db.clone(),
            objects.clone(),
            control,
            ownership,
            settings.selector_refresh(),
            self.shutdown.clone(),
        )
        .await
        .ok_or_else(|| {
            Failure::Runtime(anyhow::anyhow!("stopped before processing could start"))
        })?;
        let (live, _) = tokio::sync::broadcast::channel(1024);
        let consumer = sipmba_processing::Consumer::start(
            store.clone(),
            &queue,
            ownership,
            Some(rules.clone()),
            live.clone(),
            self.shutdown.clone(),
        )
        .await
        .context("following the telemetry topic")?;
        let queries = sipmba_processing::grpc::Queries::new(
            store,
            objects,
            verifier,
            live,
            settings.online_window(),
            self.shutdown.clone(),
        );
        let rules =
            sipmba_processing::rules_api::RulesApi::new(rules, settings.max_rules_per_owner);
        queries.register(&mut self.server);
        rules.register(&mut self.server);
        self.server
            .metrics(move |registry| consumer.register_metrics(registry));
        self.prune.extend(sipmba_processing::prune_rules(
            self.plan.config.queue.telemetry_retention,
            &retention,
        ));
        Ok(())
    }

    /// Control: its service credentials, its schema, following the command topics.
    pub async fn start_control(&mut self) -> Result<(), Failure> {
        let queue = self.log("control")?;
        let verifier = self.verifier()?;
        let config = self.config();
        let settings = &self.services().control;
        let (objects, _) = objects_access(
            &settings.identity(),
            config,
            &self.peer_ca,
            self.sso.as_ref(),
            &[],
        )
        .await?;
        let db = &self.db;
        retried("control", "migrate its schema", &self.shutdown, || {
            sipmba_control::migrate(db)
        })
        .await?;
        let control = sipmba_control::Control::start(
            sipmba_control::store::Store::new(self.db.clone()),
            &queue,
            config.queue.command_partitions,
            objects,
            verifier,
            settings.clone(),
            self.shutdown.clone(),
        )
        .await
        .context("creating the command topics")?;
        control.register(&mut self.server);
        self.prune.extend(sipmba_control::prune_rules(
            self.plan.config.queue.command_retention,
        ));
        Ok(())
    }

    /// The log, which `service` needs.
    fn log(&self, service: &str) -> Result<sipmba_queue::Queue, Failure> {
        self.queue.clone().ok_or_else(|| {
            Failure::Usage(format!(
                "invalid setting `queue.brokers` (flag --brokers, environment SIPMBA_BROKERS): \
                 is not set: {service} works on the Kafka-protocol log"
            ))
        })
    }

    /// The token verifier: sso's own keys when sso runs here, else the JWKS at `auth.jwks_url`.
    fn verifier(&mut self) -> Result<Verifier, Failure> {
        if let Some(sso) = &self.sso {
            return Ok(sso.verifier());
        }
        if let Some(verifier) = &self.verifier {
            return Ok(verifier.clone());
        }
        let config = self.config();
        let url = config
            .auth
            .jwks_url
            .clone()
            .ok_or_else(|| Failure::Usage("auth.jwks_url is not set".into()))?;
        let mut verifier_config = VerifierConfig::new(
            JwksSource::Url(url),
            &config.auth.issuer,
            &config.auth.audience,
        );
        verifier_config.leeway = config.auth.leeway;
        verifier_config.peer_ca = self.peer_ca.clone();
        let verifier = Verifier::new(verifier_config, self.revocations.clone())
            .context("building the token verifier")?;
        self.verifier = Some(verifier.clone());
        Ok(verifier)
    }

    /// Binds `server.listen`; sso, when it runs here, follows Objects' change feed from then on
    /// (Objects may be this very process).
    pub async fn bind(mut self) -> Result<Bound, Failure> {
        let verifier = self.verifier()?;
        // Collect and Control write to the log: they report NOT_SERVING while no broker
        // answers (and while a broker this process supervises is down).
        if let Some(queue) = self.queue.clone() {
            let up = std::mem::take(&mut self.log_up);
            self.server.requires_for(
                &[
                    sipmba_proto::v1::collect_service_server::SERVICE_NAME,
                    sipmba_proto::v1::control_service_server::SERVICE_NAME,
                ],
                Arc::new(move || {
                    let answering =
                        queue.answering() && up.iter().all(|up| up.load(Ordering::Relaxed));
                    Box::pin(async move { answering })
                }),
            );
        }
        let listen = self.config().listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen} (server.listen)"))?;
        let addr = listener.local_addr().context("local address")?;
        tracing::info!(%addr, target = self.plan.target.name(), "listening");
        if let Some(sso) = &self.sso {
            sso.follow_objects(self.shutdown.clone());
        }
        if !self.prune.is_empty() {
            let pruner = sipmba_runtime::prune::Pruner::new(
                self.db.clone(),
                std::mem::take(&mut self.prune),
            );
            let metrics = pruner.clone();
            self.server
                .metrics(move |registry| metrics.register_metrics(registry));
            pruner.spawn(PRUNE_EVERY, self.shutdown.clone());
        }
        Ok(Bound {
            platform: self,
            listener,
            verifier,
        })
    }
}

/// A platform whose port is bound.
pub struct Bound {
    platform: Platform,
    listener: tokio::net::TcpListener,
    verifier: Verifier,
}

impl Bound {
    /// `http://<address>` this process answers on, for calls to itself.
    pub fn own_url(&self) -> String {
        format!("http://{}", loopback(self.platform.config().listen))
    }

    /// Serves until SIGTERM/SIGINT, then lets in-flight calls finish for
    /// `server.shutdown_grace_secs`.
    pub async fn serve(self) -> Result<(), Failure> {
        let Bound {
            platform,
            listener,
            verifier,
        } = self;
        let trigger = platform.trigger;
        tokio::spawn(async move {
            sipmba_runtime::termination_signal().await;
            tracing::info!("shutting down");
            trigger.trigger();
        });
        let config = &platform.plan.config;
        platform
            .server
            .run(
                listener,
                config.tls.as_ref(),
                verifier,
                platform.shutdown,
                config.shutdown_grace,
            )
            .await
            .context("serving")?;
        platform.db.close().await.ok();
        tracing::info!("stopped");
        Ok(())
    }
}

/// Migrates the sso schema and loads its keys, retrying while the database is unreachable
/// (sso cannot verify or issue anything before).
async fn start_sso(
    db: &sea_orm::DatabaseConnection,
    config: &Config,
    settings: &sipmba_sso::settings::Settings,
    peer_ca: &PeerCa,
    revocations: Revocations,
    shutdown: &Shutdown,
) -> Result<sipmba_sso::Sso, Failure> {
    let objects_url = settings
        .objects_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", loopback(config.listen)));
    let mut sso_config = settings.configure(SsoConfig::new(
        &config.auth.issuer,
        &config.auth.audience,
        &objects_url,
    ));
    sso_config.peer_ca = peer_ca.clone();
    let start = || async {
        sipmba_sso::migrate(db).await.map_err(|e| e.to_string())?;
        sipmba_sso::Sso::start(db.clone(), sso_config.clone(), revocations.clone())
            .await
            .map_err(|e| e.to_string())
    };
    retried("sso", "start", shutdown, start).await
}

/// `attempt` until it succeeds (retrying while what it needs, the database, does not answer);
/// an error if the process is stopped first.
async fn retried<T, E, F, Fut>(
    service: &str,
    what: &str,
    shutdown: &Shutdown,
    attempt: F,
) -> Result<T, Failure>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    sipmba_runtime::retry::until_ok(&format!("{service} cannot {what} yet"), shutdown, attempt)
        .await
        .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("stopped before {service} could start")))
}

/// Applies the objects migrations, retrying while the database is unreachable; health stays
/// NOT_SERVING until they are in place.
async fn migrate_objects(
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
