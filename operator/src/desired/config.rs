//! Each service's `sipmba.toml`, rendered from the `SipMba` through the binary's own
//! [`ConfigFile`]: the shared sections from the spec, each service's section from its free-form
//! `settings` (checked by the service's own `Settings`), and only what differs from the
//! defaults, so that an older image reads the file of a newer operator.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use sipmba::config::ConfigFile;
use sipmba_runtime::config::{QueueSaslSection, QueueTlsSection};

use super::{CLIENTS, Component, PORT, ROOT, meta, name, replicas, service_spec, tls_enabled, url};
use crate::api::SipMba;

/// A service's own settings from `spec.services.<service>.settings`, over the defaults; what
/// the operator sets itself (addresses, client ids and secrets, replicas) is set afterwards.
fn section<T: serde::de::DeserializeOwned + Default>(
    platform: &SipMba,
    component: Component,
) -> Result<T, String> {
    let spec = service_spec(platform, component);
    match &spec.settings {
        None => Ok(T::default()),
        Some(settings) => serde_json::from_value(serde_json::Value::Object(settings.clone()))
            .map_err(|e| format!("services.{}.settings: {e}", component.name())),
    }
}

/// The service's configuration file, as the `sipmba` binary reads it; an error names the
/// setting of the spec that cannot be used.
pub fn config_file(platform: &SipMba, component: Component) -> Result<ConfigFile, String> {
    let spec = &platform.spec;
    let sso = url(platform, Component::Sso);
    let tls = tls_enabled(platform);
    let mut file = ConfigFile::default();
    file.server.listen = Some(format!("0.0.0.0:{PORT}"));
    if tls {
        file.server.tls_cert = Some(format!("{ROOT}/tls/tls.crt").into());
        file.server.tls_key = Some(format!("{ROOT}/tls/tls.key").into());
        file.server.peer_ca_file = Some(format!("{ROOT}/tls/ca.crt").into());
    } else {
        file.server.plaintext = Some(true);
    }
    file.database.max_connections = spec
        .database
        .max_connections
        .and_then(|n| u32::try_from(n).ok());
    file.auth.issuer = Some(sso.clone());
    if component != Component::Sso {
        file.auth.jwks_url = Some(format!("{sso}/.well-known/jwks.json"));
    }
    file.log.format = Some("json".into());
    let queue = &mut file.queue;
    queue.brokers = Some(spec.queue.brokers.clone());
    queue.topic_prefix = Some(spec.queue.topic_prefix.clone());
    queue.command_partitions = spec.queue.command_partitions;
    queue.telemetry_retention_hours = spec
        .queue
        .telemetry_retention_hours
        .and_then(|h| u64::try_from(h).ok());
    queue.replication_factor = spec.queue.replication_factor.map(i64::from);
    if let Some(tls) = &spec.queue.tls {
        queue.tls = Some(QueueTlsSection {
            ca_file: Some(format!("{ROOT}/log/ca.crt").into()),
            cert_file: tls
                .client_secret_name
                .as_ref()
                .map(|_| format!("{ROOT}/log/tls.crt").into()),
            key_file: tls
                .client_secret_name
                .as_ref()
                .map(|_| format!("{ROOT}/log/tls.key").into()),
        });
    }
    if let Some(sasl) = &spec.queue.sasl {
        queue.sasl = Some(QueueSaslSection {
            mechanism: Some(sasl.mechanism.clone()),
            username: Some(sasl.username.clone()),
            password_file: Some(format!("{ROOT}/log/password").into()),
        });
    }
    let objects = url(platform, Component::Objects);
    let secret = |key: &str| Some(format!("{ROOT}/clients/{key}").into());
    match component {
        Component::Sso => {
            let mut sso_settings = sso_settings(platform)?;
            sso_settings.objects_url = Some(objects);
            sso_settings.service_clients = CLIENTS
                .iter()
                .map(|(id, key, scopes)| sipmba_sso::settings::ServiceClient {
                    id: (*id).to_owned(),
                    secret_file: format!("{ROOT}/clients/{key}").into(),
                    scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                })
                .collect();
            file.sso = sso_settings;
        }
        Component::Collect => {
            file.collect = collect_settings(platform)?;
        }
        Component::Control => {
            let mut control: sipmba_control::Settings = section(platform, component)?;
            control.objects_url = Some(objects);
            control.token_url = Some(format!("{sso}/oauth2/token"));
            control.client_id = component.client().unwrap_or_default().to_owned();
            control.client_secret_file = secret("control");
            file.control = control;
        }
        Component::Processing => {
            let mut processing: sipmba_processing::settings::Settings =
                section(platform, component)?;
            processing.objects_url = Some(objects);
            processing.token_url = Some(format!("{sso}/oauth2/token"));
            processing.client_id = component.client().unwrap_or_default().to_owned();
            processing.client_secret_file = secret("processing");
            processing.control_url = Some(url(platform, Component::Control));
            processing.replicas = u32::try_from(replicas(platform, component).max(1)).unwrap_or(1);
            file.processing = processing;
        }
        Component::Objects => {
            file.objects = section(platform, component)?;
            // The access-token lifetimes, so that Objects checks its event retention against
            // them (they change nothing else in Objects).
            let sso = sso_settings(platform)?;
            file.sso.user_token_lifetime_secs = sso.user_token_lifetime_secs;
            file.sso.thing_token_lifetime_secs = sso.thing_token_lifetime_secs;
            file.sso.service_token_lifetime_secs = sso.service_token_lifetime_secs;
        }
    }
    Ok(file)
}

/// sso's settings from `services.sso.settings` with the token lifetimes of `tokens` applied.
fn sso_settings(platform: &SipMba) -> Result<sipmba_sso::settings::Settings, String> {
    let mut settings: sipmba_sso::settings::Settings = section(platform, Component::Sso)?;
    let tokens = &platform.spec.tokens;
    for (setting, value) in [
        (&mut settings.user_token_lifetime_secs, tokens.user_seconds),
        (
            &mut settings.thing_token_lifetime_secs,
            tokens.thing_seconds,
        ),
        (
            &mut settings.refresh_token_lifetime_secs,
            tokens.refresh_seconds,
        ),
    ] {
        if let Some(secs) = value.and_then(|v| u64::try_from(v).ok()) {
            *setting = secs;
        }
    }
    Ok(settings)
}

/// Collect's settings from `services.collect.settings` with `queue.telemetryPartitions` applied.
fn collect_settings(platform: &SipMba) -> Result<sipmba_collect::Settings, String> {
    let mut settings: sipmba_collect::Settings = section(platform, Component::Collect)?;
    if let Some(partitions) = platform.spec.queue.telemetry_partitions {
        settings.telemetry_partitions = Some(partitions);
    }
    Ok(settings)
}

/// Whether the spec's settings of `component` are ones the service accepts (its own
/// validation, with what the spec sets elsewhere applied: sso's token lifetimes of `tokens`,
/// Collect's partitions of `queue`); the problem, naming the setting, when not.
pub fn check_settings(platform: &SipMba, component: Component) -> Result<(), String> {
    let checked = match component {
        Component::Sso => {
            // A lifetime set under `tokens` is named there.
            let tokens = &platform.spec.tokens;
            return sso_settings(platform)?.validate().map_err(|e| {
                let field = match e.setting.as_str() {
                    "sso.user_token_lifetime_secs" if tokens.user_seconds.is_some() => {
                        "userSeconds"
                    }
                    "sso.thing_token_lifetime_secs" if tokens.thing_seconds.is_some() => {
                        "thingSeconds"
                    }
                    "sso.refresh_token_lifetime_secs" if tokens.refresh_seconds.is_some() => {
                        "refreshSeconds"
                    }
                    _ => return format!("services.sso.settings: {e}"),
                };
                format!("tokens.{field}: {}", e.problem)
            });
        }
        Component::Collect => collect_settings(platform)?.validate(),
        Component::Control => section::<sipmba_control::Settings>(platform, component)?.validate(),
        Component::Processing => {
            section::<sipmba_processing::settings::Settings>(platform, component)?.validate()
        }
        Component::Objects => {
            let objects = section::<sipmba_objects::Settings>(platform, component)?;
            // What the binary checks when one file holds both sections; here they are two.
            let longest = sso_settings(platform)?.longest_access_lifetime();
            objects.validate().and_then(|()| {
                sipmba_runtime::config::outlives_tokens(
                    "objects.event_retention_secs",
                    objects.event_retention(),
                    &format!("{} s", objects.event_retention_secs),
                    longest,
                    "a token of a principal disabled while sso was not following could outlive the event that revokes it",
                )
            })
        }
    };
    checked.map_err(|e| format!("services.{}.settings: {e}", component.name()))
}

/// The service's `sipmba.toml` (a spec [`config_file`] refuses is reported by the reconciler
/// and never applied; its text here is the defaults').
pub fn config(platform: &SipMba, component: Component) -> String {
    let file = config_file(platform, component).unwrap_or_default();
    let text = file.to_toml().unwrap_or_default();
    format!("# Written by sipmba-operator from the SipMba resource; edits are replaced.\n{text}")
}

/// A short digest of the configuration: a change rolls the pods.
pub(super) fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The service's ConfigMap.
pub fn config_map(platform: &SipMba, component: Component) -> ConfigMap {
    ConfigMap {
        metadata: meta(platform, name(platform, component), component),
        data: Some(BTreeMap::from([(
            "sipmba.toml".to_owned(),
            config(platform, component),
        )])),
        ..ConfigMap::default()
    }
}
