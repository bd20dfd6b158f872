//! Configuration: a TOML file, overridden by environment variables, overridden by flags, with
//! validation that names the setting and says what is wrong with it.
//!
//! This module owns the sections every service shares (`[server]`, `[database]`, `[auth]`,
//! `[log]`, `[queue]`) and the helpers a service's own `Settings` validates with; each service
//! crate owns its section, and the `sipmba` binary composes them into one file.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

mod sections;
pub use sections::*;

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
    /// `setting` (`section.key`) cannot be used because of `problem`; a shared setting's flag and
    /// variable are named in the message.
    pub fn new(setting: &str, problem: impl Into<String>) -> Self {
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

    /// The same, naming the flag (without `--`) and the environment variable that set it too.
    pub fn flagged(setting: &str, (flag, env): (&str, &str), problem: impl Into<String>) -> Self {
        Self {
            setting: setting.to_owned(),
            problem: problem.into(),
            source_hint: format!(" (flag --{flag}, environment {env})"),
        }
    }
}

/// `value` of `setting` within `lo..=hi`.
pub fn within(setting: &str, value: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            setting,
            format!("{value} is outside {lo} to {hi}"),
        ))
    }
}

/// A retention (`shown` is its value as the file writes it) long enough to keep a record that
/// revokes a token until no verifier can accept the token any more: the longest access-token
/// lifetime plus the largest leeway a verifier allows past `exp`. `lost` says what a shorter one
/// would let through.
pub fn outlives_tokens(
    setting: &str,
    retention: Duration,
    shown: &str,
    longest_token: Duration,
    lost: &str,
) -> Result<(), ConfigError> {
    let leeway = sipmba_auth::MAX_LEEWAY;
    if retention < longest_token.saturating_add(leeway) {
        return Err(ConfigError::new(
            setting,
            format!(
                "{shown} is shorter than the longest access-token lifetime ({} s) plus the verifiers' leeway ({} s): {lost}",
                longest_token.as_secs(),
                leeway.as_secs()
            ),
        ));
    }
    Ok(())
}

/// `url` of `setting`, when set, an http:// or https:// URL.
pub fn http_url(setting: &str, url: Option<&str>) -> Result<(), ConfigError> {
    match url {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            Err(ConfigError::new(
                setting,
                format!("{url:?} is not an http:// or https:// URL"),
            ))
        }
        _ => Ok(()),
    }
}

/// Bootstrap brokers as `queue.brokers` takes them: each `host:port`.
pub fn check_brokers(brokers: &[String]) -> Result<(), ConfigError> {
    match brokers.iter().find(|b| {
        b.rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    }) {
        Some(bad) => Err(ConfigError::new(
            "queue.brokers",
            format!("{bad:?} is not host:port"),
        )),
        None => Ok(()),
    }
}

/// `queue.replication_factor`: 1 or more, at most what Kafka takes (an `i16`).
pub fn replication_factor(n: i64) -> Result<i16, ConfigError> {
    i16::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
        ConfigError::new(
            "queue.replication_factor",
            format!(
                "{n} is not a replication factor (1 or more; leave it out for the brokers' \
                 default.replication.factor)"
            ),
        )
    })
}

/// `path` of `setting` a readable file.
pub fn readable(setting: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ConfigError::new(
            setting,
            format!("{} is not a readable file", path.display()),
        ))
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
        "queue.brokers" => ("brokers", "SIPMBA_BROKERS"),
        _ => return None,
    })
}

/// Shared settings given on the command line or in the environment; each one overrides the
/// file. (A service's own flags are in its crate's `settings::Args`.)
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

/// The validated shared configuration of a server process.
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
    /// The log.
    pub queue: QueueSettings,
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
    /// Applies `args` over the shared sections of a file, fills `defaults`, and validates the
    /// result.
    pub fn resolve(
        file: Sections,
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
        let brokers: Vec<String> = match args.brokers.as_deref() {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(str::to_owned)
                .collect(),
            None => file.queue.brokers.unwrap_or_default(),
        };
        check_brokers(&brokers)?;
        let replication_factor = file
            .queue
            .replication_factor
            .map(replication_factor)
            .transpose()?;
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
                // Saturating: an absurd number of hours is refused below, not wrapped.
                file.queue
                    .telemetry_retention_hours
                    .unwrap_or(7 * 24)
                    .saturating_mul(3600),
            ),
            command_retention: Duration::from_secs(
                // Saturating: an absurd number of hours is refused below, not wrapped.
                file.queue
                    .command_retention_hours
                    .unwrap_or(8 * 24)
                    .saturating_mul(3600),
            ),
            revocation_retention: Duration::from_secs(
                // Saturating: an absurd number of hours is refused below, not wrapped.
                file.queue
                    .revocation_retention_hours
                    .unwrap_or(2 * 24)
                    .saturating_mul(3600),
            ),
        };

        within(
            "queue.command_partitions",
            u64::try_from(queue.command_partitions).unwrap_or(0),
            1,
            1024,
        )?;
        within(
            "queue.telemetry_retention_hours",
            queue.telemetry_retention.as_secs() / 3600,
            1,
            100 * 365 * 24,
        )?;
        if let Some(url) = &jwks_url
            && url.starts_with("https://")
            && peer_ca.is_none()
        {
            return Err(ConfigError::new(
                "auth.jwks_url",
                format!(
                    "{url:?} is https://: set server.peer_ca_file to the CA of the platform's certificates"
                ),
            ));
        }

        Ok(Self {
            queue,
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

#[cfg(test)]
mod tests;
