//! `[sso]`: where sso reaches Objects, who may register, how long tokens live, how often keys
//! rotate, and the service clients it creates at start.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use sipmba_runtime::config::{ConfigError, http_url, readable, within};

use crate::SsoConfig;

const DAY: u64 = 24 * 3600;

/// A service principal that authenticates with `client_credentials` (the operator, Control,
/// Processing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceClient {
    /// The client id.
    pub id: String,
    /// File holding the client secret (a Kubernetes Secret mounted as a file).
    pub secret_file: PathBuf,
    /// Scopes the client may hold.
    pub scopes: Vec<String>,
}

/// sso's settings (`[sso]` of the configuration file). Every key has a default; unknown keys
/// are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where Objects answers; none means this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects_url: Option<String>,
    /// Anyone may register a root user.
    pub open_registration: bool,
    /// Access-token lifetime of users, in seconds.
    pub user_token_lifetime_secs: u64,
    /// Access-token lifetime of things, in seconds.
    pub thing_token_lifetime_secs: u64,
    /// Access-token lifetime of services, in seconds.
    pub service_token_lifetime_secs: u64,
    /// Refresh-token lifetime, in seconds.
    pub refresh_token_lifetime_secs: u64,
    /// How many days a signing key signs before the next one takes over.
    pub key_rotation_days: u64,
    /// Failed logins one username or client id may have within five minutes before the token
    /// endpoint refuses it for the rest of them.
    pub failed_logins_per_account: u32,
    /// Service clients created (or updated) at start.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_clients: Vec<ServiceClient>,
    /// Where the web console may be sent back after a sign-in, matched exactly (none: the
    /// issuer's origin, `/`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub console_redirect_uris: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            objects_url: None,
            open_registration: false,
            user_token_lifetime_secs: 900,
            thing_token_lifetime_secs: 3600,
            service_token_lifetime_secs: 3600,
            refresh_token_lifetime_secs: 30 * DAY,
            key_rotation_days: 30,
            failed_logins_per_account: 5,
            service_clients: Vec::new(),
            console_redirect_uris: Vec::new(),
        }
    }
}

/// sso's flags, over its section of the file.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(skip)]
pub struct Args {
    /// sso: where Objects answers (default: this process, when it runs objects too).
    #[arg(long, env = "SIPMBA_OBJECTS_URL", value_name = "URL")]
    pub objects_url: Option<String>,
    /// sso: let anyone register a root user.
    #[arg(long, env = "SIPMBA_OPEN_REGISTRATION", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub open_registration: Option<bool>,
}

impl Settings {
    /// `args` over the file's values.
    pub fn apply(&mut self, args: &Args) {
        if let Some(url) = &args.objects_url {
            self.objects_url = Some(url.clone());
        }
        if let Some(open) = args.open_registration {
            self.open_registration = open;
        }
    }

    /// The longest access-token lifetime (what the revocation topic must keep).
    pub fn longest_access_lifetime(&self) -> Duration {
        Duration::from_secs(
            self.user_token_lifetime_secs
                .max(self.thing_token_lifetime_secs)
                .max(self.service_token_lifetime_secs),
        )
    }

    /// `config` with these settings.
    pub fn configure(&self, mut config: SsoConfig) -> SsoConfig {
        config.open_registration = self.open_registration;
        config.user_token_lifetime = Duration::from_secs(self.user_token_lifetime_secs);
        config.thing_token_lifetime = Duration::from_secs(self.thing_token_lifetime_secs);
        config.service_token_lifetime = Duration::from_secs(self.service_token_lifetime_secs);
        config.refresh_token_lifetime = Duration::from_secs(self.refresh_token_lifetime_secs);
        config.key_rotation = Duration::from_secs(self.key_rotation_days.saturating_mul(DAY));
        config.throttle.per_account = self.failed_logins_per_account;
        config.console_redirect_uris = self.console_redirect_uris.clone();
        config
    }

    /// Refuses what cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = http_url("sso.objects_url", self.objects_url.as_deref()) {
            return Err(ConfigError::flagged(
                "sso.objects_url",
                ("objects-url", "SIPMBA_OBJECTS_URL"),
                e.problem,
            ));
        }
        let lifetime = |setting: &str, secs: u64, max: u64| {
            if (60..=max).contains(&secs) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    setting,
                    format!("{secs} is outside 60 to {max} seconds"),
                ))
            }
        };
        lifetime(
            "sso.user_token_lifetime_secs",
            self.user_token_lifetime_secs,
            DAY,
        )?;
        lifetime(
            "sso.thing_token_lifetime_secs",
            self.thing_token_lifetime_secs,
            30 * DAY,
        )?;
        lifetime(
            "sso.service_token_lifetime_secs",
            self.service_token_lifetime_secs,
            DAY,
        )?;
        lifetime(
            "sso.refresh_token_lifetime_secs",
            self.refresh_token_lifetime_secs,
            365 * DAY,
        )?;
        if !(1..=3650).contains(&self.key_rotation_days) {
            return Err(ConfigError::new(
                "sso.key_rotation_days",
                format!("{} is outside 1 to 3650 days", self.key_rotation_days),
            ));
        }
        within(
            "sso.failed_logins_per_account",
            self.failed_logins_per_account.into(),
            1,
            1000,
        )?;
        for uri in &self.console_redirect_uris {
            match url::Url::parse(uri) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.fragment().is_none() => {}
                _ => {
                    return Err(ConfigError::new(
                        "sso.console_redirect_uris",
                        format!("{uri:?} is not an absolute http(s) URL without a fragment"),
                    ));
                }
            }
        }
        for client in &self.service_clients {
            if client.id.is_empty() || client.id.len() > 128 {
                return Err(ConfigError::new(
                    "sso.service_clients",
                    format!("client id {:?} must be 1 to 128 characters", client.id),
                ));
            }
            readable("sso.service_clients", &client.secret_file).map_err(|_| {
                ConfigError::new(
                    "sso.service_clients",
                    format!(
                        "the secret file {} of client {:?} is not a readable file",
                        client.secret_file.display(),
                        client.id
                    ),
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_configure_sso_and_bad_ones_are_named() {
        let settings: Settings =
            toml::from_str("failed_logins_per_account = 3\nthing_token_lifetime_secs = 600")
                .unwrap();
        settings.validate().unwrap();
        let config = settings.configure(SsoConfig::new("http://sso", "sipmba", "http://objects"));
        assert_eq!(config.throttle.per_account, 3);
        assert_eq!(config.thing_token_lifetime, Duration::from_secs(600));
        assert_eq!(config.user_token_lifetime, Duration::from_secs(900));

        let err = Settings {
            failed_logins_per_account: 0,
            ..Settings::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "sso.failed_logins_per_account");
        let err = toml::from_str::<Settings>("failed_logins = 3").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
