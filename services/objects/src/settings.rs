//! `[objects]`: how long the change feed keeps its events.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sipmba_runtime::config::{ConfigError, within};

/// Objects' settings (`[objects]` of the configuration file). Every key has a default; unknown
/// keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The change feed's events (`EventService.WatchEvents`) are kept this many seconds; a
    /// follower whose position is older is told so and starts again from the oldest kept event.
    pub event_retention_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            event_retention_secs: 7 * 24 * 3600,
        }
    }
}

impl Settings {
    /// How long events are kept.
    pub fn event_retention(&self) -> Duration {
        Duration::from_secs(self.event_retention_secs)
    }

    /// Refuses what cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        within(
            "objects.event_retention_secs",
            self.event_retention_secs,
            60,
            10 * 365 * 24 * 3600,
        )
    }
}
