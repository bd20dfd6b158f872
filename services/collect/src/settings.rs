//! `[collect]`: what one Collect instance accepts, per batch, per thing and in all.

use serde::{Deserialize, Serialize};
use sipmba_runtime::config::{ConfigError, within};

/// Collect's settings (`[collect]` of the configuration file, `spec.services.collect.settings`
/// of a `SipMba`). Every key has a default; unknown keys are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Readings per batch.
    pub max_batch_readings: u32,
    /// Encoded bytes per reading.
    pub max_reading_bytes: u32,
    /// Sustained readings per second one thing may publish.
    pub readings_per_second: u32,
    /// Readings one thing may publish at once above the sustained rate (the bucket size).
    pub burst_readings: u32,
    /// Sessions one Collect instance serves at a time.
    pub max_sessions: usize,
    /// Commands delivered and not yet acknowledged on one session (caps `Hello.max_commands`).
    pub max_commands: u32,
    /// Partitions of the telemetry topic when Collect creates it (default 4; `--dev` 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry_partitions: Option<i32>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_batch_readings: 500,
            max_reading_bytes: 64 * 1024,
            readings_per_second: 1000,
            burst_readings: 20_000,
            max_sessions: 10_000,
            max_commands: 16,
            telemetry_partitions: None,
        }
    }
}

/// Partitions of the telemetry topic when none are configured.
pub const DEFAULT_TELEMETRY_PARTITIONS: i32 = 4;

impl Settings {
    /// Partitions of the telemetry topic when Collect creates it.
    pub fn partitions(&self) -> i32 {
        self.telemetry_partitions
            .unwrap_or(DEFAULT_TELEMETRY_PARTITIONS)
    }

    /// Refuses what cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        within("collect.max_commands", self.max_commands.into(), 1, 1000)?;
        within(
            "collect.readings_per_second",
            self.readings_per_second.into(),
            1,
            1_000_000,
        )?;
        within(
            "collect.burst_readings",
            self.burst_readings.into(),
            1,
            10_000_000,
        )?;
        within(
            "collect.max_sessions",
            self.max_sessions as u64,
            1,
            1_000_000,
        )?;
        within(
            "collect.max_batch_readings",
            self.max_batch_readings.into(),
            1,
            10_000,
        )?;
        within(
            "collect.max_reading_bytes",
            self.max_reading_bytes.into(),
            64,
            4 * 1024 * 1024,
        )?;
        if let Some(partitions) = self.telemetry_partitions {
            within(
                "collect.telemetry_partitions",
                u64::try_from(partitions).unwrap_or(0),
                1,
                1024,
            )?;
        }
        if self.burst_readings < self.max_batch_readings {
            return Err(ConfigError::new(
                "collect.burst_readings",
                format!(
                    "{} is below collect.max_batch_readings ({}): a full batch could never pass",
                    self.burst_readings, self.max_batch_readings
                ),
            ));
        }
        Ok(())
    }
}
