//! `[processing]`: how Processing reaches Objects and Control, which partitions this replica
//! consumes, and what rules and presence may cost.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use sipmba_runtime::{
    ServiceIdentity,
    config::{ConfigError, http_url, within},
};

use crate::{Ownership, rollup::Retention};

/// The flag and variable of `processing.replica`.
const REPLICA_SOURCES: (&str, &str) = ("processing-replica", "SIPMBA_PROCESSING_REPLICA");

/// Processing's settings (`[processing]` of the configuration file). Every key has a default;
/// unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where Objects answers access checks; none means this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects_url: Option<String>,
    /// sso's token endpoint for Processing's own token; none means this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// Processing's client id at sso.
    pub client_id: String,
    /// The file holding Processing's client secret; required unless sso runs in this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// This replica's ordinal: it consumes the telemetry partitions p with p % replicas ==
    /// replica (a StatefulSet gives each pod its index through the flag).
    pub replica: u32,
    /// How many processing replicas share the partitions.
    pub replicas: u32,
    /// A thing is online when heard from within this many seconds.
    pub online_window_secs: u64,
    /// Where rules send their commands: Control's http(s):// address; none when Control runs in
    /// the same process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_url: Option<String>,
    /// How often, in seconds, rules' channel and label selectors are resolved again.
    pub selector_refresh_secs: u64,
    /// Most rules one user may own.
    pub max_rules_per_owner: u64,
    /// Raw readings and their values are kept this many seconds (by device time).
    pub raw_retention_secs: u64,
    /// Minute rollups are kept this many seconds (at least as long as raw values).
    pub minute_rollup_retention_secs: u64,
    /// Hour rollups are kept this many seconds (at least as long as minute rollups).
    pub hour_rollup_retention_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            objects_url: None,
            token_url: None,
            client_id: "sipmba-processing".into(),
            client_secret_file: None,
            replica: 0,
            replicas: 1,
            online_window_secs: 300,
            control_url: None,
            selector_refresh_secs: 10,
            max_rules_per_owner: 1000,
            raw_retention_secs: Retention::default().raw.as_secs(),
            minute_rollup_retention_secs: Retention::default().minutes.as_secs(),
            hour_rollup_retention_secs: Retention::default().hours.as_secs(),
        }
    }
}

/// Processing's flags, over its section of the file.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(skip)]
pub struct Args {
    /// processing: this replica's ordinal (a StatefulSet gives each pod its index).
    #[arg(long, env = "SIPMBA_PROCESSING_REPLICA", value_name = "N")]
    pub processing_replica: Option<u32>,
}

impl Settings {
    /// `args` over the file's values.
    pub fn apply(&mut self, args: &Args) {
        if let Some(replica) = args.processing_replica {
            self.replica = replica;
        }
    }

    /// The partitions this replica consumes.
    pub fn ownership(&self) -> Ownership {
        Ownership {
            replica: self.replica,
            replicas: self.replicas,
        }
    }

    /// A thing is online when heard from within this window.
    pub fn online_window(&self) -> Duration {
        Duration::from_secs(self.online_window_secs)
    }

    /// How often rules' selectors are resolved again.
    pub fn selector_refresh(&self) -> Duration {
        Duration::from_secs(self.selector_refresh_secs)
    }

    /// How long telemetry is kept.
    pub fn retention(&self) -> Retention {
        Retention {
            raw: Duration::from_secs(self.raw_retention_secs),
            minutes: Duration::from_secs(self.minute_rollup_retention_secs),
            hours: Duration::from_secs(self.hour_rollup_retention_secs),
        }
    }

    /// How Processing reaches Objects.
    pub fn identity(&self) -> ServiceIdentity {
        ServiceIdentity {
            section: "processing",
            objects_url: self.objects_url.clone(),
            token_url: self.token_url.clone(),
            client_id: self.client_id.clone(),
            client_secret_file: self.client_secret_file.clone(),
        }
    }

    /// Refuses what cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        http_url("processing.objects_url", self.objects_url.as_deref())?;
        http_url("processing.token_url", self.token_url.as_deref())?;
        http_url("processing.control_url", self.control_url.as_deref())?;
        within(
            "processing.selector_refresh_secs",
            self.selector_refresh_secs,
            1,
            3600,
        )?;
        within(
            "processing.max_rules_per_owner",
            self.max_rules_per_owner,
            1,
            1_000_000,
        )?;
        within("processing.replicas", self.replicas.into(), 1, 1024)?;
        const CENTURY: u64 = 100 * 365 * 24 * 3600;
        within(
            "processing.raw_retention_secs",
            self.raw_retention_secs,
            60,
            CENTURY,
        )?;
        for (setting, secs, finer, finer_secs) in [
            (
                "processing.minute_rollup_retention_secs",
                self.minute_rollup_retention_secs,
                "processing.raw_retention_secs",
                self.raw_retention_secs,
            ),
            (
                "processing.hour_rollup_retention_secs",
                self.hour_rollup_retention_secs,
                "processing.minute_rollup_retention_secs",
                self.minute_rollup_retention_secs,
            ),
        ] {
            within(setting, secs, 60, CENTURY)?;
            if secs < finer_secs {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "{secs} is shorter than {finer} ({finer_secs}): coarser data must be kept \
                         at least as long as finer"
                    ),
                ));
            }
        }
        if self.replica >= self.replicas {
            return Err(ConfigError::flagged(
                "processing.replica",
                REPLICA_SOURCES,
                format!(
                    "{} is outside 0 to {}: processing.replicas is {}",
                    self.replica,
                    self.replicas - 1,
                    self.replicas
                ),
            ));
        }
        within(
            "processing.online_window_secs",
            self.online_window_secs,
            1,
            30 * 24 * 3600,
        )
    }
}
