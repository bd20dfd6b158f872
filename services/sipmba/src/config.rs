//! The configuration file of `sipmba server`: the sections every service shares
//! (`sipmba-runtime`'s `[server]`, `[database]`, `[auth]`, `[log]`, `[queue]`) and each service's
//! own section (its crate's `Settings`), composed. The binary reads it; the operator writes it
//! from the same types.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sipmba_runtime::{
    Config, ConfigArgs, ConfigError, Defaults, Sections,
    config::{
        AuthSection, DatabaseSection, LogSection, QueueSection, ServerSection, outlives_tokens,
    },
};

/// The whole file, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[server]`.
    #[serde(default)]
    pub server: ServerSection,
    /// `[database]`.
    #[serde(default)]
    pub database: DatabaseSection,
    /// `[auth]`.
    #[serde(default)]
    pub auth: AuthSection,
    /// `[log]`.
    #[serde(default)]
    pub log: LogSection,
    /// `[queue]`.
    #[serde(default)]
    pub queue: QueueSection,
    /// `[objects]`.
    #[serde(default)]
    pub objects: sipmba_objects::Settings,
    /// `[sso]`.
    #[serde(default)]
    pub sso: sipmba_sso::settings::Settings,
    /// `[collect]`.
    #[serde(default)]
    pub collect: sipmba_collect::Settings,
    /// `[control]`.
    #[serde(default)]
    pub control: sipmba_control::Settings,
    /// `[processing]`.
    #[serde(default)]
    pub processing: sipmba_processing::settings::Settings,
}

/// Settings given on the command line or in the environment; each one overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(skip)]
pub struct Args {
    /// The shared ones.
    #[command(flatten)]
    pub shared: ConfigArgs,
    /// sso's.
    #[command(flatten)]
    pub sso: sipmba_sso::settings::Args,
    /// Processing's.
    #[command(flatten)]
    pub processing: sipmba_processing::settings::Args,
}

/// Each service's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Services {
    /// Objects'.
    pub objects: sipmba_objects::Settings,
    /// sso's.
    pub sso: sipmba_sso::settings::Settings,
    /// Collect's (its telemetry partitions filled in).
    pub collect: sipmba_collect::Settings,
    /// Control's.
    pub control: sipmba_control::Settings,
    /// Processing's.
    pub processing: sipmba_processing::settings::Settings,
}

/// A validated configuration: the shared settings and each service's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The shared settings.
    pub config: Config,
    /// Each service's.
    pub services: Services,
}

impl ConfigFile {
    /// The file's TOML text. A service's section holds only what differs from its defaults, and
    /// an empty section is left out: a binary of an earlier release (which refuses keys it does
    /// not know) reads a file written by a later one, unless that uses a setting new to it.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let mut table = toml::Table::new();
        for (name, section) in [
            ("server", toml::Value::try_from(&self.server)?),
            ("database", toml::Value::try_from(&self.database)?),
            ("auth", toml::Value::try_from(&self.auth)?),
            ("log", toml::Value::try_from(&self.log)?),
            ("queue", toml::Value::try_from(&self.queue)?),
            ("objects", changed(&self.objects)?),
            ("sso", changed(&self.sso)?),
            ("collect", changed(&self.collect)?),
            ("control", changed(&self.control)?),
            ("processing", changed(&self.processing)?),
        ] {
            if section.as_table().is_none_or(|t| !t.is_empty()) {
                table.insert(name.to_owned(), section);
            }
        }
        toml::to_string(&table)
    }
}

/// The keys of `value` whose values differ from `T::default()`'s.
fn changed<T: Serialize + Default>(value: &T) -> Result<toml::Value, toml::ser::Error> {
    let mut ours = toml::Value::try_from(value)?;
    let defaults = toml::Value::try_from(T::default())?;
    if let (Some(ours), Some(defaults)) = (ours.as_table_mut(), defaults.as_table()) {
        ours.retain(|key, value| defaults.get(key) != Some(value));
    }
    Ok(ours)
}

/// Reads the file named by `args` (if any), applies `args` over it, fills `defaults`, and
/// validates the result.
pub fn load(args: &Args, defaults: &Defaults) -> Result<Loaded, ConfigError> {
    let file = match &args.shared.config {
        Some(path) => read(path)?,
        None => ConfigFile::default(),
    };
    resolve(file, args, defaults)
}

/// The same for configuration text (the content of a file).
pub fn from_toml(text: &str, args: &Args, defaults: &Defaults) -> Result<Loaded, ConfigError> {
    resolve(parse(text, "<file>")?, args, defaults)
}

fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
    parse(&text, &path.display().to_string())
}

fn parse(text: &str, origin: &str) -> Result<ConfigFile, ConfigError> {
    toml::from_str(text).map_err(|e| {
        ConfigError::new(
            "config",
            format!("{origin} is not valid configuration: {e}"),
        )
    })
}

fn resolve(file: ConfigFile, args: &Args, defaults: &Defaults) -> Result<Loaded, ConfigError> {
    let config = Config::resolve(
        Sections {
            server: file.server,
            database: file.database,
            auth: file.auth,
            log: file.log,
            queue: file.queue,
        },
        &args.shared,
        defaults,
    )?;
    let objects = file.objects;
    let mut sso = file.sso;
    sso.apply(&args.sso);
    let mut collect = file.collect;
    if collect.telemetry_partitions.is_none() {
        collect.telemetry_partitions = defaults.partitions;
    }
    let control = file.control;
    let mut processing = file.processing;
    processing.apply(&args.processing);
    objects.validate()?;
    sso.validate()?;
    collect.validate()?;
    control.validate()?;
    processing.validate()?;

    // What one section asks of another.
    let queue = &config.queue;
    if queue.command_retention < control.max_ttl() {
        return Err(ConfigError::new(
            "queue.command_retention_hours",
            format!(
                "{} h is shorter than control.max_ttl_secs ({} s): a pending command could leave the log before it expires",
                queue.command_retention.as_secs() / 3600,
                control.max_ttl_secs
            ),
        ));
    }
    let longest_token = sso.longest_access_lifetime();
    outlives_tokens(
        "queue.revocation_retention_hours",
        queue.revocation_retention,
        &format!("{} h", queue.revocation_retention.as_secs() / 3600),
        longest_token,
        "a service starting later would accept a revoked token",
    )?;
    outlives_tokens(
        "objects.event_retention_secs",
        objects.event_retention(),
        &format!("{} s", objects.event_retention_secs),
        longest_token,
        "a token of a principal disabled while sso was not following could outlive the event that revokes it",
    )?;
    if config.peer_ca.is_none() {
        for (setting, url) in [
            ("control.objects_url", &control.objects_url),
            ("control.token_url", &control.token_url),
            ("processing.objects_url", &processing.objects_url),
            ("processing.token_url", &processing.token_url),
            ("processing.control_url", &processing.control_url),
            ("sso.objects_url", &sso.objects_url),
        ] {
            if let Some(url) = url
                && url.starts_with("https://")
            {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "{url:?} is https://: set server.peer_ca_file to the CA of the platform's certificates"
                    ),
                ));
            }
        }
    }
    Ok(Loaded {
        config,
        services: Services {
            objects,
            sso,
            collect,
            control,
            processing,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MINIMAL: &str = r#"
        [server]
        plaintext = true
        [database]
        url = "sqlite::memory:"
        [auth]
        jwks_url = "http://127.0.0.1:7400/.well-known/jwks.json"
    "#;

    fn load(text: &str) -> Result<Loaded, ConfigError> {
        from_toml(text, &Args::default(), &Defaults::default())
    }

    #[test]
    fn each_section_is_checked_by_its_service_and_against_the_others() {
        let loaded = load(MINIMAL).unwrap();
        assert_eq!(loaded.services.collect.partitions(), 4);
        assert_eq!(loaded.services.control.client_id, "sipmba-control");

        // Each refused file: the extra TOML, the setting the error names, and what it tells the person.
        let refused: &[(&str, &str, &[&str])] = &[
            (
                "[collect]\nburst_readings = 10",
                "collect.burst_readings",
                &["max_batch_readings"],
            ),
            ("[collect]\nburst = 10", "", &["unknown field `burst`"]),
            // Commands outlive their longest TTL in the log.
            (
                "[queue]\ncommand_retention_hours = 24",
                "queue.command_retention_hours",
                &["control.max_ttl_secs"],
            ),
            (
                "[processing]\nreplicas = 2\nreplica = 2",
                "processing.replica",
                &["SIPMBA_PROCESSING_REPLICA"],
            ),
            (
                "[control]\nobjects_url = \"https://objects:7400\"",
                "control.objects_url",
                &["peer_ca_file"],
            ),
            // So do the log's revocations: an hour is not enough for hour-long tokens.
            (
                "[queue]\nrevocation_retention_hours = 1",
                "queue.revocation_retention_hours",
                &["1 h is shorter", "leeway (300 s)"],
            ),
            // The change feed outlives every access token and the leeway (an hour and 5 minutes).
            (
                "[objects]\nevent_retention_secs = 3600",
                "objects.event_retention_secs",
                &["(3600 s)"],
            ),
        ];
        for (extra, setting, says) in refused {
            let err = load(&format!("{MINIMAL}\n{extra}\n")).unwrap_err();
            if !setting.is_empty() {
                assert_eq!(err.setting, *setting, "{extra}");
            }
            for part in *says {
                assert!(err.to_string().contains(part), "{extra}: {err}");
            }
        }

        // Their neighbours that are long enough are taken as written.
        let loaded = load(&format!(
            "{MINIMAL}\n[queue]\ncommand_retention_hours = 24\nrevocation_retention_hours = 2\n\
             [control]\nmax_ttl_secs = 3600\ndefault_ttl_secs = 60\n\
             [objects]\nevent_retention_secs = 3900\n"
        ))
        .unwrap();
        assert_eq!(
            loaded.config.queue.command_retention,
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(
            loaded.config.queue.revocation_retention,
            Duration::from_secs(2 * 3600)
        );
        assert_eq!(
            loaded.services.objects.event_retention(),
            Duration::from_secs(3900)
        );
    }

    #[test]
    fn the_flags_of_every_section_make_one_valid_command() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Server {
            #[command(flatten)]
            args: crate::server::ServerArgs,
        }
        Server::command().debug_assert();
    }

    #[test]
    fn flags_of_a_service_override_its_section() {
        let args = Args {
            processing: sipmba_processing::settings::Args {
                processing_replica: Some(1),
            },
            sso: sipmba_sso::settings::Args {
                objects_url: Some("ftp://objects".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let text = format!("{MINIMAL}\n[processing]\nreplicas = 2\n");
        let err = from_toml(&text, &args, &Defaults::default()).unwrap_err();
        assert_eq!(err.setting, "sso.objects_url");
        assert!(err.to_string().contains("--objects-url"), "{err}");
        let args = Args {
            sso: Default::default(),
            ..args
        };
        let loaded = from_toml(&text, &args, &Defaults::default()).unwrap();
        assert_eq!(loaded.services.processing.replica, 1);
    }

    #[test]
    fn the_file_written_from_the_types_reads_back_the_same() {
        let mut file = ConfigFile::default();
        file.server.plaintext = Some(true);
        file.database.url = Some("sqlite::memory:".into());
        file.auth.jwks_url = Some("http://sso/.well-known/jwks.json".into());
        file.collect.max_commands = 32;
        file.control.objects_url = Some("http://objects:7400".into());
        let text = file.to_toml().unwrap();
        assert_eq!(parse(&text, "<written>").unwrap(), file, "{text}");
        // Only what differs from a service's defaults: a binary that knows fewer keys reads it.
        assert!(text.contains("max_commands = 32"), "{text}");
        assert!(!text.contains("readings_per_second"), "{text}");
        assert!(
            !text.contains("[sso]") && !text.contains("[processing]"),
            "{text}"
        );
        let loaded = load(&text).unwrap();
        assert_eq!(loaded.services.collect.max_commands, 32);
    }
}
