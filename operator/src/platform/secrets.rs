//! The Secrets a platform's reconcile keeps: the CA (generated once), each service's
//! certificate (renewed when due), the generated client secrets, and the TLS and SASL material
//! the log's settings name, read for the operator's own connection to the brokers.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};

use super::{Error, MANAGER};
use crate::{
    api::SipMba,
    certs,
    desired::{self, Component},
    topics::TopicsError,
};

/// The Secret `name`, created from `build` (called only then) when it does not exist; never
/// replaced (a generated secret stays as it was).
pub(super) async fn create_once(
    api: &Api<Secret>,
    name: &str,
    build: impl FnOnce() -> Result<Secret, Error>,
) -> Result<Secret, Error> {
    if let Some(existing) = api.get_opt(name).await? {
        return Ok(existing);
    }
    match api.create(&PostParams::default(), &build()?).await {
        Ok(created) => Ok(created),
        // Created meanwhile (another replica of the operator): that one stays.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(api.get(name).await?),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn secret(platform: &SipMba, name: String, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: platform.namespace(),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".into(), "sipmba".into()),
                ("app.kubernetes.io/instance".into(), platform.name_any()),
                (
                    "app.kubernetes.io/managed-by".into(),
                    "sipmba-operator".into(),
                ),
            ])),
            owner_references: Some(vec![desired::owner(platform)]),
            ..ObjectMeta::default()
        },
        string_data: Some(data),
        ..Secret::default()
    }
}

/// TLS and SASL towards the log, from the Secrets the spec names (read only when it names some):
/// the operator creates the topics over the same listener as the services.
pub(super) async fn log_security(
    queue: &crate::api::QueueSpec,
    secrets: &Api<Secret>,
) -> Result<sipmba_queue::Security, Error> {
    let value = async |name: &str, key: &str| -> Result<String, Error> {
        let secret = secrets
            .get_opt(name)
            .await?
            .ok_or_else(|| TopicsError::NoSecret(name.to_owned()))?;
        Ok(
            crate::certs::secret_value(&secret, key).ok_or_else(|| TopicsError::NoKey {
                secret: name.to_owned(),
                key: key.to_owned(),
            })?,
        )
    };
    let tls = match &queue.tls {
        None => None,
        Some(tls) => {
            let ca = value(&tls.ca_secret_ref.name, &tls.ca_secret_ref.key).await?;
            let client = match &tls.client_secret_name {
                None => None,
                Some(name) => Some((value(name, "tls.crt").await?, value(name, "tls.key").await?)),
            };
            let client = client.as_ref().map(|(c, k)| (c.as_bytes(), k.as_bytes()));
            Some(
                sipmba_queue::Security::tls_config(ca.as_bytes(), client)
                    .map_err(TopicsError::Tls)?,
            )
        }
    };
    let sasl = match &queue.sasl {
        None => None,
        Some(sasl) => {
            let password = &sasl.password_secret_ref;
            Some(sipmba_queue::Sasl {
                mechanism: sasl.mechanism.parse().map_err(TopicsError::Mechanism)?,
                username: sasl.username.clone(),
                password: value(&password.name, &password.key)
                    .await?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            })
        }
    };
    Ok(sipmba_queue::Security { tls, sasl })
}

/// A random secret for a service client: 256 bits, URL-safe.
pub(super) fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The platform CA (created once) and each service's certificate (renewed when due, when the
/// CA changed, or when the names it must carry changed: `external` adds a service's host
/// outside the cluster).
/// Returns the certificates it issued: `(Secret, renewed, names)`.
pub(super) async fn certificates(
    platform: &SipMba,
    secrets: &Api<Secret>,
    external: &[(Component, String)],
) -> Result<Vec<(String, bool, Vec<String>)>, Error> {
    let mut issued_now = Vec::new();
    let ca_name = format!("{}-ca", platform.name_any());
    let ca = create_once(secrets, &ca_name, || {
        let common_name = format!(
            "{}/{} platform CA",
            platform.namespace().unwrap_or_default(),
            platform.name_any()
        );
        let fresh = certs::new_ca(&common_name)?;
        let mut ca = secret(
            platform,
            ca_name.clone(),
            BTreeMap::from([
                ("ca.crt".to_owned(), fresh.cert_pem),
                ("ca.key".to_owned(), fresh.key_pem),
            ]),
        );
        ca.metadata.annotations = Some(BTreeMap::from([(certs::CA_NAME.to_owned(), common_name)]));
        Ok(ca)
    })
    .await?;
    let ca = certs::Ca::from_secret(&ca)?;
    let days = platform.spec.tls.certificate_days.unwrap_or(90);
    let now = Timestamp::now();
    for component in Component::ALL {
        let name = desired::tls_secret_name(platform, component);
        let host = desired::name(platform, component);
        let ns = platform.namespace().unwrap_or_default();
        // The Service's names, `localhost` for a client through `kubectl port-forward` (the CLI
        // on an operator's machine) that trusts the platform CA, and the address outside the
        // cluster where the service is exposed.
        let mut names = vec![
            host.clone(),
            format!("{host}.{ns}"),
            format!("{host}.{ns}.svc"),
            format!("{host}.{ns}.svc.cluster.local"),
            "localhost".to_owned(),
        ];
        names.extend(
            external
                .iter()
                .filter(|(c, _)| *c == component)
                .map(|(_, h)| h.clone()),
        );
        let live = secrets.get_opt(&name).await?;
        if let Some(live) = &live
            && !certs::renewal_due(live, &ca, &names, now)
        {
            continue;
        }
        let issued = ca.issue(&names, days)?;
        let mut tls = secret(
            platform,
            name.clone(),
            BTreeMap::from([
                ("tls.crt".to_owned(), issued.cert_pem),
                ("tls.key".to_owned(), issued.key_pem),
                ("ca.crt".to_owned(), ca.cert_pem.clone()),
            ]),
        );
        tls.type_ = Some("kubernetes.io/tls".into());
        tls.metadata.annotations = Some(certs::annotations(&ca, issued.not_after, days, &names));
        let params = PatchParams::apply(MANAGER).force();
        secrets.patch(&name, &params, &Patch::Apply(&tls)).await?;
        tracing::info!(secret = %name, "issued a service certificate");
        issued_now.push((name, live.is_some(), names));
    }
    Ok(issued_now)
}
