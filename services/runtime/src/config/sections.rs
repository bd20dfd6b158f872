//! The sections of the configuration file every service shares, as serde reads and writes them:
//! `[server]`, `[database]`, `[auth]`, `[log]`, `[queue]` (with its TLS and SASL tables). Every
//! key is optional; what is left out takes its default when the configuration is resolved.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[queue]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    /// Bootstrap brokers, host:port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<Vec<String>>,
    /// Put in front of every topic name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_prefix: Option<String>,
    /// Partitions of the command topics when they are created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_partitions: Option<i32>,
    /// Retention of the telemetry topic, in hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry_retention_hours: Option<u64>,
    /// Retention of the command topics, in hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_retention_hours: Option<u64>,
    /// Retention of the revocation topic, in hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_retention_hours: Option<u64>,
    /// Copies of each partition of the topics the platform creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i64>,
    /// `[queue.tls]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<QueueTlsSection>,
    /// `[queue.sasl]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<QueueSaslSection>,
}

/// `[queue.tls]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueTlsSection {
    /// PEM file of the brokers' CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[queue.sasl]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSaslSection {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    /// The SASL user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The file holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// The SASL mechanisms the platform speaks.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// `[server]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The gRPC and HTTP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// PEM certificate chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Serve without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<bool>,
    /// Seconds in-flight requests get at shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_secs: Option<u64>,
    /// PEM CA of the other services' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_ca_file: Option<PathBuf>,
}

/// `[database]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// postgres:// or sqlite: URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Pool size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// `[auth]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Where the verification keys are published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Expected `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Expected `aud`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway_secs: Option<u64>,
}

/// `[log]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// The shared sections of a configuration file, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sections {
    /// `[server]`.
    pub server: ServerSection,
    /// `[database]`.
    pub database: DatabaseSection,
    /// `[auth]`.
    pub auth: AuthSection,
    /// `[log]`.
    pub log: LogSection,
    /// `[queue]`.
    pub queue: QueueSection,
}
