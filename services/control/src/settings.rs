//! `[control]`: how Control reaches Objects, and what one issuer and one thing may queue.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use sipmba_runtime::{
    ServiceIdentity,
    config::{ConfigError, http_url, within},
};

/// Control's settings (`[control]` of the configuration file). Every key has a default; unknown
/// keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where Objects answers access checks; none means this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects_url: Option<String>,
    /// sso's token endpoint for Control's own token; none means this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// Control's client id at sso.
    pub client_id: String,
    /// The file holding Control's client secret; required unless sso runs in this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// Sustained commands per second one issuer may send.
    pub commands_per_second: u32,
    /// Commands one issuer may send at once above the rate.
    pub burst_commands: u32,
    /// Commands waiting for one thing (neither finished nor expired).
    pub max_pending_per_thing: u64,
    /// TTL, in seconds, when the request sets none.
    pub default_ttl_secs: u64,
    /// Longest TTL, in seconds.
    pub max_ttl_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            objects_url: None,
            token_url: None,
            client_id: "sipmba-control".into(),
            client_secret_file: None,
            commands_per_second: 10,
            burst_commands: 100,
            max_pending_per_thing: 1000,
            default_ttl_secs: 3600,
            max_ttl_secs: 7 * 24 * 3600,
        }
    }
}

impl Settings {
    /// TTL when the request sets none.
    pub fn default_ttl(&self) -> Duration {
        Duration::from_secs(self.default_ttl_secs)
    }

    /// Longest TTL.
    pub fn max_ttl(&self) -> Duration {
        Duration::from_secs(self.max_ttl_secs)
    }

    /// How Control reaches Objects.
    pub fn identity(&self) -> ServiceIdentity {
        ServiceIdentity {
            section: "control",
            objects_url: self.objects_url.clone(),
            token_url: self.token_url.clone(),
            client_id: self.client_id.clone(),
            client_secret_file: self.client_secret_file.clone(),
        }
    }

    /// Refuses what cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        http_url("control.objects_url", self.objects_url.as_deref())?;
        http_url("control.token_url", self.token_url.as_deref())?;
        within(
            "control.commands_per_second",
            self.commands_per_second.into(),
            1,
            1_000_000,
        )?;
        within(
            "control.burst_commands",
            self.burst_commands.into(),
            1,
            1_000_000,
        )?;
        within(
            "control.max_pending_per_thing",
            self.max_pending_per_thing,
            1,
            1_000_000,
        )?;
        within(
            "control.max_ttl_secs",
            self.max_ttl_secs,
            1,
            365 * 24 * 3600,
        )?;
        within(
            "control.default_ttl_secs",
            self.default_ttl_secs,
            1,
            self.max_ttl_secs,
        )
    }
}
