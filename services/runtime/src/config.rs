//! Configuration: a TOML file, overridden by environment variables, overridden by flags, with
//! validation that names the setting and says what is wrong with it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// A setting that cannot be used: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}`{source_hint}: {problem}")]
pub struct ConfigError {
    /// The setting's name in the file (`server.listen`).
    pub setting: String,
    /// What is wrong and what to do.
    pub problem: String,
    source_hint: String,
}

impl ConfigError {
    fn new(setting: &str, problem: impl Into<String>) -> Self {
        let hint = match setting_sources(setting) {
            Some((flag, env)) => format!(" (flag --{flag}, environment {env})"),
            None => String::new(),
        };
        Self {
            setting: setting.to_owned(),
            problem: problem.into(),
            source_hint: hint,
        }
    }
}

fn setting_sources(setting: &str) -> Option<(&'static str, &'static str)> {
    Some(match setting {
        "server.listen" => ("listen", "SIPMBA_LISTEN"),
        "server.tls_cert" => ("tls-cert", "SIPMBA_TLS_CERT"),
        "server.tls_key" => ("tls-key", "SIPMBA_TLS_KEY"),
        "server.plaintext" => ("plaintext", "SIPMBA_PLAINTEXT"),
        "server.shutdown_grace_secs" => ("shutdown-grace-secs", "SIPMBA_SHUTDOWN_GRACE_SECS"),
        "database.url" => ("database-url", "SIPMBA_DATABASE_URL"),
        "database.max_connections" => (
            "database-max-connections",
            "SIPMBA_DATABASE_MAX_CONNECTIONS",
        ),
        "auth.jwks_url" => ("jwks-url", "SIPMBA_JWKS_URL"),
        "auth.issuer" => ("issuer", "SIPMBA_ISSUER"),
        "auth.audience" => ("audience", "SIPMBA_AUDIENCE"),
        "auth.leeway_secs" => ("leeway-secs", "SIPMBA_LEEWAY_SECS"),
        "log.format" => ("log-format", "SIPMBA_LOG_FORMAT"),
        "sso.objects_url" => ("objects-url", "SIPMBA_OBJECTS_URL"),
        "queue.brokers" => ("brokers", "SIPMBA_BROKERS"),
        "sso.open_registration" => ("open-registration", "SIPMBA_OPEN_REGISTRATION"),
        "processing.replica" => ("processing-replica", "SIPMBA_PROCESSING_REPLICA"),
        _ => return None,
    })
}

/// Settings given on the command line or in the environment; each one overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "SIPMBA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC and HTTP on.
    #[arg(long, env = "SIPMBA_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// PEM certificate chain; with --tls-key, every listener speaks TLS.
    #[arg(long, env = "SIPMBA_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SIPMBA_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve without TLS. Required to run without a certificate.
    #[arg(long, env = "SIPMBA_PLAINTEXT", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub plaintext: Option<bool>,
    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT.
    #[arg(long, env = "SIPMBA_SHUTDOWN_GRACE_SECS", value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Database URL: postgres://user@host/db or sqlite://path?mode=rwc.
    #[arg(long, env = "SIPMBA_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Largest number of pooled database connections.
    #[arg(long, env = "SIPMBA_DATABASE_MAX_CONNECTIONS", value_name = "N")]
    pub database_max_connections: Option<u32>,
    /// Where the token verification keys are published (sso's /.well-known/jwks.json).
    #[arg(long, env = "SIPMBA_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,
    /// Expected token issuer (`iss`).
    #[arg(long, env = "SIPMBA_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// Expected token audience (`aud`).
    #[arg(long, env = "SIPMBA_AUDIENCE", value_name = "AUD")]
    pub audience: Option<String>,
    /// Clock skew allowed when checking token times, in seconds (at most 300).
    #[arg(long, env = "SIPMBA_LEEWAY_SECS", value_name = "SECS")]
    pub leeway_secs: Option<u64>,
    /// Log format: text or json.
    #[arg(long, env = "SIPMBA_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Kafka-protocol brokers, comma-separated host:port (revocations, and later the data plane).
    #[arg(long, env = "SIPMBA_BROKERS", value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
    /// sso: where Objects answers (default: this process, when it runs objects too).
    #[arg(long, env = "SIPMBA_OBJECTS_URL", value_name = "URL")]
    pub objects_url: Option<String>,
    /// sso: let anyone register a root user.
    #[arg(long, env = "SIPMBA_OPEN_REGISTRATION", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub open_registration: Option<bool>,
    /// processing: this replica's ordinal (a StatefulSet gives each pod its index).
    #[arg(long, env = "SIPMBA_PROCESSING_REPLICA", value_name = "N")]
    pub processing_replica: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    database: FileDatabase,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    sso: FileSso,
    #[serde(default)]
    queue: FileQueue,
    #[serde(default)]
    collect: FileCollect,
    #[serde(default)]
    control: FileControl,
    #[serde(default)]
    processing: FileProcessing,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProcessing {
    objects_url: Option<String>,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    replica: Option<u32>,
    replicas: Option<u32>,
    online_window_secs: Option<u64>,
    control_url: Option<String>,
    selector_refresh_secs: Option<u64>,
    max_rules_per_owner: Option<u64>,
}

/// How a service reaches Objects for access decisions, with its own client_credentials token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdentity {
    /// The settings section (`control`, `processing`), for messages.
    pub section: &'static str,
    /// Where Objects answers access checks; `None` means this process.
    pub objects_url: Option<String>,
    /// sso's token endpoint; `None` means this process.
    pub token_url: Option<String>,
    /// The client id at sso.
    pub client_id: String,
    /// File holding the client secret; required unless sso runs in this process.
    pub client_secret_file: Option<PathBuf>,
}

/// Settings of the processing service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessingSettings {
    /// How it reaches Objects.
    pub identity: ServiceIdentity,
    /// This replica's ordinal: it consumes the telemetry partitions p with p % replicas == replica.
    pub replica: u32,
    /// How many processing replicas share the partitions.
    pub replicas: u32,
    /// A thing is online when heard from within this window.
    pub online_window: Duration,
    /// Where rules send their commands: Control's http(s):// address; none when Control runs in
    /// the same process.
    pub control_url: Option<String>,
    /// How often rules' channel and label selectors are resolved again.
    pub selector_refresh: Duration,
    /// Most rules one user may own.
    pub max_rules_per_owner: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileControl {
    objects_url: Option<String>,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    commands_per_second: Option<u32>,
    burst_commands: Option<u32>,
    max_pending_per_thing: Option<u64>,
    default_ttl_secs: Option<u64>,
    max_ttl_secs: Option<u64>,
}

/// Settings of the control service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSettings {
    /// How it reaches Objects.
    pub identity: ServiceIdentity,
    /// Sustained commands per second per issuer.
    pub commands_per_second: u32,
    /// Commands an issuer may send at once above the rate.
    pub burst_commands: u32,
    /// Commands waiting for one thing.
    pub max_pending_per_thing: u64,
    /// TTL of a command that sets none.
    pub default_ttl: Duration,
    /// Longest TTL.
    pub max_ttl: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCollect {
    readings_per_second: Option<u32>,
    burst_readings: Option<u32>,
    max_sessions: Option<usize>,
    max_batch_readings: Option<u32>,
    max_reading_bytes: Option<u32>,
    telemetry_partitions: Option<i32>,
    max_commands: Option<u32>,
}

/// Settings of the collect service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectSettings {
    /// Sustained readings per second per thing.
    pub readings_per_second: u32,
    /// Readings a thing may send at once above the rate.
    pub burst_readings: u32,
    /// Sessions per instance.
    pub max_sessions: usize,
    /// Readings per batch.
    pub max_batch_readings: u32,
    /// Encoded bytes per reading.
    pub max_reading_bytes: u32,
    /// Partitions of the telemetry topic when collect creates it.
    pub telemetry_partitions: i32,
    /// Commands delivered and not yet acknowledged on one session.
    pub max_commands: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQueue {
    brokers: Option<Vec<String>>,
    topic_prefix: Option<String>,
    command_partitions: Option<i32>,
    telemetry_retention_hours: Option<u64>,
    command_retention_hours: Option<u64>,
    revocation_retention_hours: Option<u64>,
    replication_factor: Option<i64>,
    tls: Option<FileQueueTls>,
    sasl: Option<FileQueueSasl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQueueTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQueueSasl {
    mechanism: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
}

/// TLS to the brokers (`[queue.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTls {
    /// PEM file of the CA certificates the brokers' certificates are checked against.
    pub ca_file: PathBuf,
    /// PEM files of a client certificate chain and its key, for brokers that ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// SASL towards the brokers (`[queue.sasl]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (upper case).
    pub mechanism: String,
    /// The user name.
    pub username: String,
    /// The file holding the password (its content, without a trailing newline).
    pub password_file: PathBuf,
}

/// The SASL mechanisms the platform speaks.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// The Kafka-protocol log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueSettings {
    /// Bootstrap brokers; empty when no log is configured.
    pub brokers: Vec<String>,
    /// Put in front of every topic name.
    pub topic_prefix: String,
    /// Partitions of the command topics when they are created.
    pub command_partitions: i32,
    /// Retention of `sipmba.telemetry` when it is created.
    pub telemetry_retention: Duration,
    /// Retention of `sipmba.commands` and `sipmba.command-events` (at least the longest TTL).
    pub command_retention: Duration,
    /// Retention of `sipmba.revocations` (at least the longest access-token lifetime).
    pub revocation_retention: Duration,
    /// Copies of each partition of the topics the platform creates; `None`: the brokers'
    /// `default.replication.factor`.
    pub replication_factor: Option<i16>,
    /// TLS to the brokers.
    pub tls: Option<QueueTls>,
    /// SASL towards the brokers.
    pub sasl: Option<QueueSasl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSso {
    objects_url: Option<String>,
    open_registration: Option<bool>,
    user_token_lifetime_secs: Option<u64>,
    thing_token_lifetime_secs: Option<u64>,
    service_token_lifetime_secs: Option<u64>,
    refresh_token_lifetime_secs: Option<u64>,
    key_rotation_days: Option<u64>,
    #[serde(default)]
    service_clients: Vec<ServiceClient>,
}

/// A service principal that authenticates with `client_credentials` (the operator, processing).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceClient {
    /// The client id.
    pub id: String,
    /// File holding the client secret (a Kubernetes Secret mounted as a file).
    pub secret_file: PathBuf,
    /// Scopes the client may hold.
    pub scopes: Vec<String>,
}

/// Settings of the sso service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoSettings {
    /// Where Objects answers; `None` means this process.
    pub objects_url: Option<String>,
    /// Anyone may register a root user.
    pub open_registration: bool,
    /// Access-token lifetime of users.
    pub user_token_lifetime: Duration,
    /// Access-token lifetime of things.
    pub thing_token_lifetime: Duration,
    /// Access-token lifetime of services.
    pub service_token_lifetime: Duration,
    /// Refresh-token lifetime.
    pub refresh_token_lifetime: Duration,
    /// How long a signing key signs before the next one takes over.
    pub key_rotation: Duration,
    /// Service clients created (or updated) at start.
    pub service_clients: Vec<ServiceClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    plaintext: Option<bool>,
    shutdown_grace_secs: Option<u64>,
    peer_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    url: Option<String>,
    max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    jwks_url: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    format: Option<String>,
}

/// Certificate and key files for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Token verification settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// JWKS location; `None` when the process publishes its own keys (`--dev`, sso).
    pub jwks_url: Option<String>,
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// Allowed clock skew.
    pub leeway: Duration,
}

/// The validated configuration of a server process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// gRPC + HTTP address.
    pub listen: SocketAddr,
    /// TLS files; `None` only when plaintext was asked for.
    pub tls: Option<TlsFiles>,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// The CA (PEM) of the other services' certificates, for calls to them over https://.
    pub peer_ca: Option<PathBuf>,
    /// Database URL.
    pub database_url: String,
    /// Pool size.
    pub database_max_connections: u32,
    /// Token verification.
    pub auth: AuthConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// sso settings.
    pub sso: SsoSettings,
    /// The log.
    pub queue: QueueSettings,
    /// collect settings.
    pub collect: CollectSettings,
    /// control settings.
    pub control: ControlSettings,
    /// processing settings.
    pub processing: ProcessingSettings,
}

/// Defaults that differ between a production start and `--dev`.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// Listen address when none is configured.
    pub listen: Option<String>,
    /// Plaintext when TLS is not configured (only `--dev`).
    pub plaintext: bool,
    /// Database URL when none is configured.
    pub database_url: Option<String>,
    /// Whether a missing JWKS URL is acceptable (the process serves its own keys).
    pub own_keys: bool,
    /// Partitions of the telemetry and command topics when not configured (4; `--dev` takes 1:
    /// one process needs no parallel partitions, and each partition is a follower polling the
    /// broker).
    pub partitions: Option<i32>,
}

/// Default issuer and audience of SIP-MBA tokens.
pub const DEFAULT_AUDIENCE: &str = "sipmba";

impl Config {
    /// Reads the file named by `args.config` (if any), applies `args` over it, fills `defaults`,
    /// and validates the result.
    pub fn load(args: &ConfigArgs, defaults: &Defaults) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(file, args, defaults)
    }

    /// Parses configuration text (the content of a file).
    pub fn from_toml(
        text: &str,
        args: &ConfigArgs,
        defaults: &Defaults,
    ) -> Result<Self, ConfigError> {
        let file = toml::from_str(text).map_err(|e| ConfigError::new("<file>", e.to_string()))?;
        Self::resolve(file, args, defaults)
    }

    fn resolve(
        file: FileConfig,
        args: &ConfigArgs,
        defaults: &Defaults,
    ) -> Result<Self, ConfigError> {
        let listen_text = args
            .listen
            .clone()
            .or(file.server.listen)
            .or_else(|| defaults.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:7400".to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::new(
                "server.listen",
                format!("{listen_text:?} is not a socket address; use a form like 127.0.0.1:7400 or [::]:7400"),
            )
        })?;

        let cert = args.tls_cert.clone().or(file.server.tls_cert);
        let key = args.tls_key.clone().or(file.server.tls_key);
        let plaintext = args.plaintext.or(file.server.plaintext);
        let tls = match (cert, key, plaintext) {
            (Some(_), Some(_), Some(true)) => {
                return Err(ConfigError::new(
                    "server.plaintext",
                    "is true while a TLS certificate and key are configured; remove one or the other",
                ));
            }
            (Some(cert), Some(key), _) => {
                for (setting, path) in [("server.tls_cert", &cert), ("server.tls_key", &key)] {
                    if !path.is_file() {
                        return Err(ConfigError::new(
                            setting,
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                }
                Some(TlsFiles { cert, key })
            }
            (Some(_), None, _) => {
                return Err(ConfigError::new(
                    "server.tls_key",
                    "is missing: a TLS certificate needs its private key",
                ));
            }
            (None, Some(_), _) => {
                return Err(ConfigError::new(
                    "server.tls_cert",
                    "is missing: a TLS private key needs its certificate",
                ));
            }
            (None, None, Some(true)) => None,
            (None, None, None) if defaults.plaintext => None,
            (None, None, _) => {
                return Err(ConfigError::new(
                    "server.tls_cert",
                    "is not set: configure server.tls_cert and server.tls_key, or set server.plaintext = true to serve without TLS",
                ));
            }
        };

        let grace = args
            .shutdown_grace_secs
            .or(file.server.shutdown_grace_secs)
            .unwrap_or(10);
        if grace > 3600 {
            return Err(ConfigError::new(
                "server.shutdown_grace_secs",
                format!("{grace} is more than an hour; use at most 3600"),
            ));
        }

        let database_url = args
            .database_url
            .clone()
            .or(file.database.url)
            .or_else(|| defaults.database_url.clone())
            .ok_or_else(|| {
                ConfigError::new(
                    "database.url",
                    "is not set: use postgres://user@host:5432/db or sqlite://path/to/file.db?mode=rwc",
                )
            })?;
        if !(database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
            || database_url.starts_with("sqlite:"))
        {
            return Err(ConfigError::new(
                "database.url",
                "must start with postgres://, postgresql:// or sqlite: (the supported databases)",
            ));
        }
        let max_conn = args
            .database_max_connections
            .or(file.database.max_connections)
            .unwrap_or(10);
        if !(1..=1000).contains(&max_conn) {
            return Err(ConfigError::new(
                "database.max_connections",
                format!("{max_conn} is outside 1 to 1000"),
            ));
        }

        let jwks_url = args.jwks_url.clone().or(file.auth.jwks_url);
        match &jwks_url {
            Some(url) if !(url.starts_with("https://") || url.starts_with("http://")) => {
                return Err(ConfigError::new(
                    "auth.jwks_url",
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            None if !defaults.own_keys => {
                return Err(ConfigError::new(
                    "auth.jwks_url",
                    "is not set: point it at sso's /.well-known/jwks.json",
                ));
            }
            _ => {}
        }
        let issuer = args
            .issuer
            .clone()
            .or(file.auth.issuer)
            .unwrap_or_else(|| format!("http://{listen}"));
        let audience = args
            .audience
            .clone()
            .or(file.auth.audience)
            .unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned());
        if audience.is_empty() {
            return Err(ConfigError::new("auth.audience", "must not be empty"));
        }
        let leeway = args.leeway_secs.or(file.auth.leeway_secs).unwrap_or(30);
        if Duration::from_secs(leeway) > sipmba_auth::MAX_LEEWAY {
            return Err(ConfigError::new(
                "auth.leeway_secs",
                format!(
                    "{leeway} is more than the maximum of {}; fix the clocks instead",
                    sipmba_auth::MAX_LEEWAY.as_secs()
                ),
            ));
        }

        let log_format = match args.log_format.clone().or(file.log.format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("{other:?} is not a log format; use text or json"),
                ));
            }
        };

        let peer_ca = file.server.peer_ca_file.clone();
        if let Some(path) = &peer_ca
            && !path.is_file()
        {
            return Err(ConfigError::new(
                "server.peer_ca_file",
                format!("{} is not a readable file", path.display()),
            ));
        }
        let objects_url = args.objects_url.clone().or(file.sso.objects_url);
        if let Some(url) = &objects_url
            && !url.starts_with("http://")
            && !url.starts_with("https://")
        {
            return Err(ConfigError::new(
                "sso.objects_url",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        let lifetime = |setting: &str, value: Option<u64>, default: u64, max: u64| {
            let secs = value.unwrap_or(default);
            if !(60..=max).contains(&secs) {
                return Err(ConfigError::new(
                    setting,
                    format!("{secs} is outside 60 to {max} seconds"),
                ));
            }
            Ok(Duration::from_secs(secs))
        };
        let day = 24 * 3600;
        let sso = SsoSettings {
            objects_url,
            open_registration: args
                .open_registration
                .or(file.sso.open_registration)
                .unwrap_or(false),
            user_token_lifetime: lifetime(
                "sso.user_token_lifetime_secs",
                file.sso.user_token_lifetime_secs,
                900,
                day,
            )?,
            thing_token_lifetime: lifetime(
                "sso.thing_token_lifetime_secs",
                file.sso.thing_token_lifetime_secs,
                3600,
                30 * day,
            )?,
            service_token_lifetime: lifetime(
                "sso.service_token_lifetime_secs",
                file.sso.service_token_lifetime_secs,
                3600,
                day,
            )?,
            refresh_token_lifetime: lifetime(
                "sso.refresh_token_lifetime_secs",
                file.sso.refresh_token_lifetime_secs,
                30 * day,
                365 * day,
            )?,
            key_rotation: Duration::from_secs(
                lifetime(
                    "sso.key_rotation_days",
                    file.sso.key_rotation_days.map(|d| d * day),
                    30 * day,
                    3650 * day,
                )?
                .as_secs(),
            ),
            service_clients: {
                for client in &file.sso.service_clients {
                    if client.id.is_empty() || client.id.len() > 128 {
                        return Err(ConfigError::new(
                            "sso.service_clients",
                            format!("client id {:?} must be 1 to 128 characters", client.id),
                        ));
                    }
                    if !client.secret_file.is_file() {
                        return Err(ConfigError::new(
                            "sso.service_clients",
                            format!(
                                "the secret file {} of client {:?} is not a readable file",
                                client.secret_file.display(),
                                client.id
                            ),
                        ));
                    }
                }
                file.sso.service_clients
            },
        };

        let brokers: Vec<String> = match args.brokers.as_deref() {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(str::to_owned)
                .collect(),
            None => file.queue.brokers.unwrap_or_default(),
        };
        if let Some(bad) = brokers.iter().find(|b| {
            b.rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        }) {
            return Err(ConfigError::new(
                "queue.brokers",
                format!("{bad:?} is not host:port"),
            ));
        }
        let replication_factor = match file.queue.replication_factor {
            None => None,
            Some(n) => Some(i16::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                ConfigError::new(
                    "queue.replication_factor",
                    format!(
                        "{n} is not a replication factor (1 or more; leave it out for the \
                                 brokers' default.replication.factor)"
                    ),
                )
            })?),
        };
        let readable = |setting: &str, path: &PathBuf| {
            if path.is_file() {
                Ok(())
            } else {
                Err(ConfigError::new(
                    setting,
                    format!("{} is not a readable file", path.display()),
                ))
            }
        };
        let queue_tls = match file.queue.tls {
            None => None,
            Some(tls) => {
                let ca_file = tls.ca_file.ok_or_else(|| {
                    ConfigError::new(
                        "queue.tls.ca_file",
                        "is not set: name the PEM file of the CA that signed the brokers' \
                         certificates (/etc/ssl/certs/ca-certificates.crt for public ones)",
                    )
                })?;
                readable("queue.tls.ca_file", &ca_file)?;
                let client = match (tls.cert_file, tls.key_file) {
                    (None, None) => None,
                    (Some(cert), Some(key)) => {
                        readable("queue.tls.cert_file", &cert)?;
                        readable("queue.tls.key_file", &key)?;
                        Some((cert, key))
                    }
                    (Some(_), None) => {
                        return Err(ConfigError::new(
                            "queue.tls.key_file",
                            "is not set while queue.tls.cert_file is: give both or neither",
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(ConfigError::new(
                            "queue.tls.cert_file",
                            "is not set while queue.tls.key_file is: give both or neither",
                        ));
                    }
                };
                Some(QueueTls { ca_file, client })
            }
        };
        let queue_sasl = match file.queue.sasl {
            None => None,
            Some(sasl) => {
                let mechanism = sasl.mechanism.unwrap_or_default().to_ascii_uppercase();
                if !SASL_MECHANISMS.contains(&mechanism.as_str()) {
                    return Err(ConfigError::new(
                        "queue.sasl.mechanism",
                        format!(
                            "{mechanism:?} is not one of {} (GSSAPI and OAUTHBEARER are not \
                             supported)",
                            SASL_MECHANISMS.join(", ")
                        ),
                    ));
                }
                if mechanism == "PLAIN" && queue_tls.is_none() {
                    return Err(ConfigError::new(
                        "queue.sasl.mechanism",
                        "PLAIN sends the password in the clear: add [queue.tls], or use \
                         SCRAM-SHA-512",
                    ));
                }
                let username = sasl.username.unwrap_or_default();
                if username.is_empty() {
                    return Err(ConfigError::new(
                        "queue.sasl.username",
                        "is not set: the brokers' SASL user",
                    ));
                }
                let password_file = sasl.password_file.ok_or_else(|| {
                    ConfigError::new(
                        "queue.sasl.password_file",
                        "is not set: name the file that holds the SASL password",
                    )
                })?;
                readable("queue.sasl.password_file", &password_file)?;
                Some(QueueSasl {
                    mechanism,
                    username,
                    password_file,
                })
            }
        };
        let queue = QueueSettings {
            brokers,
            replication_factor,
            tls: queue_tls,
            sasl: queue_sasl,
            topic_prefix: file.queue.topic_prefix.unwrap_or_default(),
            command_partitions: file
                .queue
                .command_partitions
                .unwrap_or(defaults.partitions.unwrap_or(4)),
            telemetry_retention: Duration::from_secs(
                3600 * file.queue.telemetry_retention_hours.unwrap_or(7 * 24),
            ),
            command_retention: Duration::from_secs(
                3600 * file.queue.command_retention_hours.unwrap_or(8 * 24),
            ),
            revocation_retention: Duration::from_secs(
                3600 * file.queue.revocation_retention_hours.unwrap_or(2 * 24),
            ),
        };

        let c = &file.collect;
        let within = |setting: &str, value: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    setting,
                    format!("{value} is outside {lo} to {hi}"),
                ))
            }
        };
        let collect = CollectSettings {
            readings_per_second: c.readings_per_second.unwrap_or(1000),
            burst_readings: c.burst_readings.unwrap_or(20_000),
            max_sessions: c.max_sessions.unwrap_or(10_000),
            max_batch_readings: c.max_batch_readings.unwrap_or(500),
            max_reading_bytes: c.max_reading_bytes.unwrap_or(64 * 1024),
            telemetry_partitions: c
                .telemetry_partitions
                .unwrap_or(defaults.partitions.unwrap_or(4)),
            max_commands: c.max_commands.unwrap_or(16),
        };
        within(
            "queue.command_partitions",
            u64::try_from(queue.command_partitions).unwrap_or(0),
            1,
            1024,
        )?;
        within("collect.max_commands", collect.max_commands.into(), 1, 1000)?;
        within(
            "collect.readings_per_second",
            collect.readings_per_second.into(),
            1,
            1_000_000,
        )?;
        within(
            "collect.burst_readings",
            collect.burst_readings.into(),
            1,
            10_000_000,
        )?;
        within(
            "collect.max_sessions",
            collect.max_sessions as u64,
            1,
            1_000_000,
        )?;
        within(
            "collect.max_batch_readings",
            collect.max_batch_readings.into(),
            1,
            10_000,
        )?;
        within(
            "collect.max_reading_bytes",
            collect.max_reading_bytes.into(),
            64,
            4 * 1024 * 1024,
        )?;
        within(
            "collect.telemetry_partitions",
            u64::try_from(collect.telemetry_partitions).unwrap_or(0),
            1,
            1024,
        )?;
        if collect.burst_readings < collect.max_batch_readings {
            return Err(ConfigError::new(
                "collect.burst_readings",
                format!(
                    "{} is below collect.max_batch_readings ({}): a full batch could never pass",
                    collect.burst_readings, collect.max_batch_readings
                ),
            ));
        }

        let k = file.control;
        let control = ControlSettings {
            identity: ServiceIdentity {
                section: "control",
                objects_url: k.objects_url,
                token_url: k.token_url,
                client_id: k.client_id.unwrap_or_else(|| "sipmba-control".into()),
                client_secret_file: k.client_secret_file,
            },
            commands_per_second: k.commands_per_second.unwrap_or(10),
            burst_commands: k.burst_commands.unwrap_or(100),
            max_pending_per_thing: k.max_pending_per_thing.unwrap_or(1000),
            default_ttl: Duration::from_secs(k.default_ttl_secs.unwrap_or(3600)),
            max_ttl: Duration::from_secs(k.max_ttl_secs.unwrap_or(7 * 24 * 3600)),
        };
        within(
            "control.commands_per_second",
            control.commands_per_second.into(),
            1,
            1_000_000,
        )?;
        within(
            "control.burst_commands",
            control.burst_commands.into(),
            1,
            1_000_000,
        )?;
        within(
            "control.max_pending_per_thing",
            control.max_pending_per_thing,
            1,
            1_000_000,
        )?;
        within(
            "control.max_ttl_secs",
            control.max_ttl.as_secs(),
            1,
            365 * 24 * 3600,
        )?;
        within(
            "control.default_ttl_secs",
            control.default_ttl.as_secs(),
            1,
            control.max_ttl.as_secs(),
        )?;
        within(
            "queue.telemetry_retention_hours",
            queue.telemetry_retention.as_secs() / 3600,
            1,
            100 * 365 * 24,
        )?;
        if queue.command_retention < control.max_ttl {
            return Err(ConfigError::new(
                "queue.command_retention_hours",
                format!(
                    "{} h is shorter than control.max_ttl_secs ({} s): a pending command could leave the log before it expires",
                    queue.command_retention.as_secs() / 3600,
                    control.max_ttl.as_secs()
                ),
            ));
        }
        let longest_token = sso
            .user_token_lifetime
            .max(sso.thing_token_lifetime)
            .max(sso.service_token_lifetime);
        if queue.revocation_retention < longest_token {
            return Err(ConfigError::new(
                "queue.revocation_retention_hours",
                format!(
                    "{} h is shorter than the longest access-token lifetime ({} s): a service starting later would accept a revoked token",
                    queue.revocation_retention.as_secs() / 3600,
                    longest_token.as_secs()
                ),
            ));
        }
        let p = file.processing;
        let processing = ProcessingSettings {
            identity: ServiceIdentity {
                section: "processing",
                objects_url: p.objects_url,
                token_url: p.token_url,
                client_id: p.client_id.unwrap_or_else(|| "sipmba-processing".into()),
                client_secret_file: p.client_secret_file,
            },
            replica: args.processing_replica.or(p.replica).unwrap_or(0),
            replicas: p.replicas.unwrap_or(1),
            online_window: Duration::from_secs(p.online_window_secs.unwrap_or(300)),
            control_url: p.control_url,
            selector_refresh: Duration::from_secs(p.selector_refresh_secs.unwrap_or(10)),
            max_rules_per_owner: p.max_rules_per_owner.unwrap_or(1000),
        };
        within(
            "processing.selector_refresh_secs",
            processing.selector_refresh.as_secs(),
            1,
            3600,
        )?;
        within(
            "processing.max_rules_per_owner",
            processing.max_rules_per_owner,
            1,
            1_000_000,
        )?;
        within("processing.replicas", processing.replicas.into(), 1, 1024)?;
        within(
            "processing.replica",
            processing.replica.into(),
            0,
            u64::from(processing.replicas) - 1,
        )?;
        within(
            "processing.online_window_secs",
            processing.online_window.as_secs(),
            1,
            30 * 24 * 3600,
        )?;
        for (setting, url) in [
            ("control.objects_url", &control.identity.objects_url),
            ("control.token_url", &control.identity.token_url),
            ("processing.objects_url", &processing.identity.objects_url),
            ("processing.token_url", &processing.identity.token_url),
            ("processing.control_url", &processing.control_url),
            ("sso.objects_url", &sso.objects_url),
            ("auth.jwks_url", &jwks_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(ConfigError::new(
                    setting,
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
            if let Some(url) = url
                && url.starts_with("https://")
                && peer_ca.is_none()
            {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "{url:?} is https://: set server.peer_ca_file to the CA of the platform's certificates"
                    ),
                ));
            }
        }

        Ok(Self {
            processing,
            control,
            collect,
            queue,
            sso,
            listen,
            tls,
            shutdown_grace: Duration::from_secs(grace),
            peer_ca,
            database_url,
            database_max_connections: max_conn,
            auth: AuthConfig {
                jwks_url,
                issuer,
                audience,
                leeway: Duration::from_secs(leeway),
            },
            log_format,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        ConfigError::new(
            "config",
            format!("{} is not valid configuration: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod() -> Defaults {
        Defaults::default()
    }

    const MINIMAL: &str = r#"
        [server]
        plaintext = true
        [database]
        url = "sqlite::memory:"
        [auth]
        jwks_url = "http://127.0.0.1:7400/.well-known/jwks.json"
    "#;

    #[test]
    fn flags_override_the_file() {
        let args = ConfigArgs {
            listen: Some("127.0.0.1:9999".into()),
            ..Default::default()
        };
        let config = Config::from_toml(MINIMAL, &args, &prod()).unwrap();
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.tls, None);
        assert_eq!(config.auth.audience, "sipmba");
    }

    #[test]
    fn tls_is_required_unless_plaintext_is_asked_for() {
        let text = MINIMAL.replace("plaintext = true", "");
        let err = Config::from_toml(&text, &ConfigArgs::default(), &prod()).unwrap_err();
        assert_eq!(err.setting, "server.tls_cert");
        assert!(err.to_string().contains("plaintext = true"), "{err}");
        let dev = Defaults {
            plaintext: true,
            ..Default::default()
        };
        assert!(Config::from_toml(&text, &ConfigArgs::default(), &dev).is_ok());
    }

    #[test]
    fn errors_name_the_setting_and_the_way_to_set_it() {
        let args = ConfigArgs {
            listen: Some("localhost".into()),
            ..Default::default()
        };
        let err = Config::from_toml(MINIMAL, &args, &prod()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("server.listen") && text.contains("SIPMBA_LISTEN"),
            "{text}"
        );

        let args = ConfigArgs {
            leeway_secs: Some(3600),
            ..Default::default()
        };
        let err = Config::from_toml(MINIMAL, &args, &prod()).unwrap_err();
        assert_eq!(err.setting, "auth.leeway_secs");

        let err = Config::from_toml("[server]\nlisten_on = 1", &ConfigArgs::default(), &prod())
            .unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");

        let text = format!("{MINIMAL}\n[collect]\nburst_readings = 10\n");
        let err = Config::from_toml(&text, &ConfigArgs::default(), &prod()).unwrap_err();
        assert_eq!(err.setting, "collect.burst_readings");
        assert!(err.to_string().contains("max_batch_readings"), "{err}");

        let text = format!("{MINIMAL}\n[queue]\ncommand_retention_hours = 24\n");
        let err = Config::from_toml(&text, &ConfigArgs::default(), &prod()).unwrap_err();
        assert_eq!(err.setting, "queue.command_retention_hours");
        assert!(err.to_string().contains("control.max_ttl_secs"), "{err}");
        let text = format!(
            "{MINIMAL}\n[queue]\ncommand_retention_hours = 24\n[control]\nmax_ttl_secs = 3600\ndefault_ttl_secs = 60\n"
        );
        let config = Config::from_toml(&text, &ConfigArgs::default(), &prod()).unwrap();
        assert_eq!(
            config.queue.command_retention,
            Duration::from_secs(24 * 3600)
        );

        let text = MINIMAL.replace("sqlite::memory:", "mysql://x");
        let err = Config::from_toml(&text, &ConfigArgs::default(), &prod()).unwrap_err();
        assert_eq!(err.setting, "database.url");

        let args = ConfigArgs {
            tls_cert: Some("/nonexistent.pem".into()),
            ..Default::default()
        };
        let err = Config::from_toml(MINIMAL, &args, &prod()).unwrap_err();
        assert_eq!(err.setting, "server.tls_key");
    }

    #[test]
    fn an_external_log_takes_tls_and_sasl_and_refuses_what_cannot_work() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, "x").unwrap();
            path.display().to_string()
        };
        let (ca, cert, key, password) = (
            file("ca.crt"),
            file("tls.crt"),
            file("tls.key"),
            file("password"),
        );
        let text = format!(
            "{MINIMAL}\n[queue]\nbrokers = [\"kafka-0:9093\"]\nreplication_factor = 3\n\
             [queue.tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
             [queue.sasl]\nmechanism = \"scram-sha-512\"\nusername = \"sipmba\"\n\
             password_file = \"{password}\"\n"
        );
        let config = Config::from_toml(&text, &ConfigArgs::default(), &prod()).unwrap();
        let queue = &config.queue;
        assert_eq!(queue.replication_factor, Some(3));
        assert_eq!(
            queue.tls,
            Some(QueueTls {
                ca_file: ca.clone().into(),
                client: Some((cert.into(), key.into())),
            })
        );
        let sasl = queue.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, "SCRAM-SHA-512");

        let refused =
            |text: String| Config::from_toml(&text, &ConfigArgs::default(), &prod()).unwrap_err();
        let sasl = |mechanism: &str| {
            format!(
                "[queue.sasl]\nmechanism = \"{mechanism}\"\nusername = \"sipmba\"\n\
                 password_file = \"{password}\"\n"
            )
        };
        let err = refused(format!("{MINIMAL}\n[queue]\n{}", sasl("PLAIN")));
        assert_eq!(err.setting, "queue.sasl.mechanism");
        assert!(err.to_string().contains("in the clear"), "{err}");
        let err = refused(format!("{MINIMAL}\n[queue]\n{}", sasl("GSSAPI")));
        assert_eq!(err.setting, "queue.sasl.mechanism");
        assert!(err.to_string().contains("SCRAM-SHA-512"), "{err}");
        let err = refused(format!(
            "{MINIMAL}\n[queue.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"sipmba\"\n\
             password_file = \"/nonexistent\"\n"
        ));
        assert_eq!(err.setting, "queue.sasl.password_file");
        let err = refused(format!("{MINIMAL}\n[queue.tls]\ncert_file = \"{ca}\"\n"));
        assert_eq!(err.setting, "queue.tls.ca_file");
        let err = refused(format!(
            "{MINIMAL}\n[queue.tls]\nca_file = \"{ca}\"\ncert_file = \"{ca}\"\n"
        ));
        assert_eq!(err.setting, "queue.tls.key_file");
        let err = refused(format!("{MINIMAL}\n[queue]\nreplication_factor = 0\n"));
        assert_eq!(err.setting, "queue.replication_factor");
        let err = refused(format!("{MINIMAL}\n[queue.tls]\nca = \"{ca}\"\n"));
        assert!(err.to_string().contains("ca"), "{err}");
    }
}
