//! The `SipMba` reconciler: applies what [`crate::desired`] builds, keeps the platform's secrets
//! (service-client secrets and the CA generated once, service certificates renewed before they
//! expire), and reports readiness in the status.
//!
//! Every child is read first and applied (server-side apply, one field manager) only when its
//! applied digest differs from the desired one, so that a second reconcile of an unchanged
//! platform writes nothing.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{ConfigMap, Secret, Service},
        networking::v1::Ingress,
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::controller::Action,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    api::{ComponentStatus, ExternalUrls, SipMba, SipMbaStatus},
    certs,
    desired::{self, Component},
    events::{EventType, reason},
    exposure::{self, Exposer},
    reconcile::Failure,
};

mod secrets;
use secrets::{certificates, create_once, log_security, random_secret, secret};

/// The field manager of every write.
pub const MANAGER: &str = "sipmba-operator";
/// The annotation holding the digest of what was applied.
pub const APPLIED: &str = "sipmba.io/applied-digest";

/// What the reconciler needs: what every reconciler of the operator needs.
pub type Context = crate::reconcile::Shared;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call (retried with backoff).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The resource has no namespace.
    #[error("the SipMba has no namespace")]
    NoNamespace,
    /// A certificate could not be issued.
    #[error("issuing certificates: {0}")]
    Certificates(#[from] certs::CertError),
    /// The log's topics could not be created or grown.
    #[error("topics: {0}")]
    Topics(#[from] crate::topics::TopicsError),
}

impl crate::reconcile::Failure for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(e) => crate::reconcile::kube_category(e),
            Error::NoNamespace => "invalid",
            Error::Certificates(_) => "certificates",
            Error::Topics(_) => "log",
        }
    }
}

/// A spec the operator cannot run, with what to change: what every service's own validation
/// would refuse at start (its pods would crash-loop) is refused here first.
pub fn invalid(platform: &SipMba) -> Option<String> {
    let spec = &platform.spec;
    if let Err(e) = queue_settings(&spec.queue) {
        return Some(e);
    }
    let partitions = spec.queue.telemetry_partitions.unwrap_or(4);
    let processing = desired::replicas(platform, Component::Processing);
    if processing > partitions {
        return Some(format!(
            "services.processing.replicas ({processing}) exceeds queue.telemetryPartitions \
             ({partitions}): a replica would have no partition to consume"
        ));
    }
    for component in Component::ALL {
        if let Err(problem) = desired::check_settings(platform, component) {
            return Some(problem);
        }
    }
    None
}

/// The log's settings the spec hands to every service, checked as the services check them.
fn queue_settings(queue: &crate::api::QueueSpec) -> Result<(), String> {
    use sipmba_runtime::config::{check_brokers, replication_factor, within};
    let named =
        |e: sipmba_runtime::ConfigError, field: &str| format!("queue.{field}: {}", e.problem);
    check_brokers(&queue.brokers).map_err(|e| named(e, "brokers"))?;
    if let Some(n) = queue.replication_factor {
        replication_factor(i64::from(n)).map_err(|e| named(e, "replicationFactor"))?;
    }
    for (partitions, setting, field) in [
        (
            queue.command_partitions,
            "queue.command_partitions",
            "commandPartitions",
        ),
        (
            queue.telemetry_partitions,
            "collect.telemetry_partitions",
            "telemetryPartitions",
        ),
    ] {
        if let Some(n) = partitions {
            within(setting, u64::try_from(n).unwrap_or(0), 1, 1024).map_err(|e| named(e, field))?;
        }
    }
    if let Some(h) = queue.telemetry_retention_hours {
        within(
            "queue.telemetry_retention_hours",
            u64::try_from(h).unwrap_or(0),
            1,
            100 * 365 * 24,
        )
        .map_err(|e| named(e, "telemetryRetentionHours"))?;
    }
    if let Some(sasl) = &queue.sasl {
        let mechanism = sasl.mechanism.to_ascii_uppercase();
        if !sipmba_runtime::config::SASL_MECHANISMS.contains(&mechanism.as_str()) {
            return Err(format!(
                "queue.sasl.mechanism: {:?} is not one of {}",
                sasl.mechanism,
                sipmba_runtime::config::SASL_MECHANISMS.join(", ")
            ));
        }
        if mechanism == "PLAIN" && queue.tls.is_none() {
            return Err(
                "queue.sasl.mechanism: PLAIN sends the password in the clear: add queue.tls, or use SCRAM-SHA-512"
                    .into(),
            );
        }
        if sasl.username.is_empty() {
            return Err("queue.sasl.username: is not set: the brokers' SASL user".into());
        }
    }
    Ok(())
}

/// Digest of what is applied: stored on the child, compared before the next apply.
fn digest<T: Serialize>(object: &T) -> String {
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn applied_digest(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED))
        .map(String::as_str)
}

/// `desired` as the operator applies it: annotated with its own digest.
pub fn as_applied<K: Resource + Serialize>(mut desired: K) -> K {
    let want = digest(&desired);
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED.into(), want);
    desired
}

/// What a reconcile created and changed (`Kind/name`), for its Events.
#[derive(Debug, Default)]
struct Changes {
    created: Vec<String>,
    updated: Vec<String>,
}

/// Applies `desired` unless the live object already carries its digest; returns the live
/// object (from the read, or from the apply), and notes in `changes` what it created or
/// changed.
async fn ensure<K>(api: &Api<K>, desired: K, changes: &mut Changes) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let desired = as_applied(desired);
    let live = api.get_opt(&name).await?;
    let what = format!("{}/{name}", K::kind(&()));
    match &live {
        Some(live) if applied_digest(live.meta()) == applied_digest(desired.meta()) => {
            return Ok(live.clone());
        }
        Some(_) => changes.updated.push(what),
        None => changes.created.push(what),
    }
    let params = PatchParams::apply(MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(&desired)).await?)
}

/// Reconciles one platform, and counts it.
#[tracing::instrument(skip(platform, ctx), fields(platform = %platform.name_any()))]
pub async fn reconcile(platform: Arc<SipMba>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_platform(platform, ctx.clone()).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.category(),
    };
    ctx.metrics.record("sipmba", outcome, started.elapsed());
    result
}

async fn reconcile_platform(platform: Arc<SipMba>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = platform.namespace().ok_or(Error::NoNamespace)?;
    let client = ctx.client.clone();
    if let Some(problem) = invalid(&platform) {
        tracing::warn!(%problem, "invalid spec: waiting for a change");
        let conditions = vec![
            condition(&platform, "Ready", false, "InvalidSpec", &problem),
            condition(&platform, "Progressing", false, "InvalidSpec", &problem),
            condition(&platform, "Degraded", true, "InvalidSpec", &problem),
        ];
        let status = SipMbaStatus {
            observed_generation: platform.metadata.generation,
            conditions,
            ..SipMbaStatus::default()
        };
        write_status(&client, &platform, status).await?;
        let events = ctx.events.as_ref();
        crate::events::maybe(
            events,
            EventType::Warning,
            &*platform,
            reason::INVALID_SPEC,
            &problem,
        )
        .await;
        return Ok(Action::await_change());
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let clients = desired::clients_secret_name(&platform);
    create_once(&secrets, &clients, || {
        let generated = desired::CLIENTS
            .iter()
            .map(|(_, key, _)| ((*key).to_owned(), random_secret()))
            .collect();
        Ok(secret(&platform, clients.clone(), generated))
    })
    .await?;
    let events = ctx.events.as_ref();
    let mut changes = Changes::default();
    let exposed = expose(&platform, &client, &ns, &mut changes).await?;
    if platform.spec.tls.enabled.unwrap_or(true) {
        for (secret, renewed, names) in certificates(&platform, &secrets, &exposed.hosts).await? {
            let (reason, verb) = if renewed {
                (reason::CERTIFICATE_RENEWED, "renewed")
            } else {
                (reason::CERTIFICATE_ISSUED, "issued")
            };
            let note = format!("{secret}: {verb}, naming {}", names.join(", "));
            crate::events::maybe(events, EventType::Normal, &*platform, reason, &note).await;
        }
    }
    let security = log_security(&platform.spec.queue, &secrets).await?;
    let topics =
        crate::topics::ensure(&platform.spec.queue, &ns, security, Duration::from_secs(20)).await?;
    for topic in &topics {
        match topic.before {
            None => {
                let note = format!("{} with {} partitions", topic.name, topic.partitions);
                crate::events::maybe(
                    events,
                    EventType::Normal,
                    &*platform,
                    reason::TOPIC_CREATED,
                    &note,
                )
                .await;
            }
            Some(before) if before < topic.partitions => {
                let note = format!(
                    "{}: {before} -> {} partitions",
                    topic.name, topic.partitions
                );
                crate::events::maybe(
                    events,
                    EventType::Normal,
                    &*platform,
                    reason::TOPIC_GROWN,
                    &note,
                )
                .await;
            }
            Some(_) => {}
        }
    }

    let mut components = Vec::new();
    for component in Component::ALL {
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        ensure(
            &config_maps,
            desired::config_map(&platform, component),
            &mut changes,
        )
        .await?;
        let (replicas, ready) = if component == Component::Processing {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
            let set = ensure(&api, desired::stateful_set(&platform), &mut changes).await?;
            let status = set.status.unwrap_or_default();
            (
                desired::replicas(&platform, component),
                status.ready_replicas.unwrap_or(0),
            )
        } else {
            let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            let deployment = ensure(
                &api,
                desired::deployment(&platform, component),
                &mut changes,
            )
            .await?;
            let status = deployment.status.unwrap_or_default();
            (
                desired::replicas(&platform, component),
                status.ready_replicas.unwrap_or(0),
            )
        };
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        ensure(
            &services,
            desired::service(&platform, component),
            &mut changes,
        )
        .await?;
        let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        ensure(
            &budgets,
            desired::disruption_budget(&platform, component),
            &mut changes,
        )
        .await?;
        components.push(ComponentStatus {
            name: component.name().into(),
            replicas,
            ready_replicas: ready,
        });
    }
    let waiting: Vec<String> = components
        .iter()
        .filter(|c| c.ready_replicas < c.replicas)
        .map(|c| format!("{} {}/{}", c.name, c.ready_replicas, c.replicas))
        .collect();
    let all_ready = waiting.is_empty();
    let conditions = if all_ready {
        vec![
            condition(
                &platform,
                "Ready",
                true,
                "AllReady",
                "every service is ready",
            ),
            condition(
                &platform,
                "Progressing",
                false,
                "AllReady",
                "every service is ready",
            ),
            condition(
                &platform,
                "Degraded",
                false,
                "AllReady",
                "nothing is degraded",
            ),
        ]
    } else {
        let message = format!("waiting for {}", waiting.join(", "));
        vec![
            condition(&platform, "Ready", false, "ServicesStarting", &message),
            condition(&platform, "Progressing", true, "ServicesStarting", &message),
            condition(
                &platform,
                "Degraded",
                false,
                "ServicesStarting",
                "nothing is degraded",
            ),
        ]
    };
    let mut conditions = conditions;
    if platform.spec.exposure.is_some() {
        conditions.push(match &exposed.pending {
            None => condition(
                &platform,
                "Exposed",
                true,
                "AddressesKnown",
                "agents outside the cluster are given status.external",
            ),
            Some(pending) => condition(&platform, "Exposed", false, "AddressPending", pending),
        });
    }
    let status = SipMbaStatus {
        observed_generation: platform.metadata.generation,
        conditions,
        components,
        external: exposed.urls,
    };
    publish_transitions(events, &platform, &status, &changes).await;
    write_status(&client, &platform, status).await?;
    ctx.succeeded(&*platform);
    // Certificates are renewed when a third of their life is left: look again well before.
    Ok(Action::requeue(if all_ready {
        Duration::from_secs(600)
    } else {
        Duration::from_secs(15)
    }))
}

/// The Events of a reconcile that ends with `status`: what it created and changed, services
/// scaled, external URLs learnt, and readiness reached.
async fn publish_transitions(
    events: Option<&crate::events::Events>,
    platform: &SipMba,
    status: &SipMbaStatus,
    changes: &Changes,
) {
    let Some(events) = events else {
        return;
    };
    if !changes.created.is_empty() {
        let note = format!("created {}", changes.created.join(", "));
        events.normal(platform, reason::CREATED, &note).await;
    }
    if !changes.updated.is_empty() {
        let note = format!("updated {}", changes.updated.join(", "));
        events.normal(platform, reason::UPDATED, &note).await;
    }
    let previous = platform.status.as_ref();
    for component in &status.components {
        let before = previous
            .and_then(|s| s.components.iter().find(|c| c.name == component.name))
            .map(|c| c.replicas);
        if let Some(before) = before
            && before != component.replicas
        {
            let note = format!(
                "{}: {before} -> {} replicas",
                component.name, component.replicas
            );
            events.normal(platform, reason::SCALED, &note).await;
        }
    }
    if let Some(external) = &status.external
        && previous.and_then(|s| s.external.as_ref()) != Some(external)
        && (external.collect.is_some() || external.sso.is_some())
    {
        let url = |u: &Option<String>| u.clone().unwrap_or_else(|| "not exposed".into());
        let note = format!(
            "agents outside the cluster are given collect {}, sso {}",
            url(&external.collect),
            url(&external.sso)
        );
        events.normal(platform, reason::EXPOSED, &note).await;
    }
    let ready = |conditions: &[Condition]| {
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    };
    if ready(&status.conditions) && !previous.is_some_and(|s| ready(&s.conditions)) {
        events
            .normal(platform, reason::READY, "every service is ready")
            .await;
    }
}

/// What exposing the platform outside the cluster found.
struct Exposed {
    /// The external URLs (none when nothing is exposed).
    urls: Option<ExternalUrls>,
    /// The external host of each exposed service, for its certificate.
    hosts: Vec<(Component, String)>,
    /// Why some address is not known yet.
    pending: Option<String>,
}

/// Applies what `spec.exposure` asks (a Service of type LoadBalancer or NodePort, or an
/// Ingress, per exposed service), removes what it no longer asks, and reads back the addresses.
/// A platform that is not exposed, and was not when its status was last written, costs no
/// request.
async fn expose(
    platform: &SipMba,
    client: &Client,
    ns: &str,
    changes: &mut Changes,
) -> Result<Exposed, Error> {
    let mut exposed = Exposed {
        urls: None,
        hosts: Vec::new(),
        pending: None,
    };
    let was_exposed = platform
        .status
        .as_ref()
        .is_some_and(|s| s.external.is_some());
    if platform.spec.exposure.is_none() && !was_exposed {
        return Ok(exposed);
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let mut urls = ExternalUrls::default();
    let mut pending = Vec::new();
    for component in exposure::EXPOSABLE {
        let service_name = exposure::service_name(platform, component);
        let ingress_name = exposure::ingress_name(platform, component);
        let live = match exposure::exposer(platform, component) {
            Exposer::Service(service) => {
                remove_managed(&ingresses, &ingress_name, platform).await?;
                Some(ensure(&services, *service, changes).await?)
            }
            Exposer::Ingress(ingress) => {
                remove_managed(&services, &service_name, platform).await?;
                ensure(&ingresses, *ingress, changes).await?;
                None
            }
            Exposer::Nothing => {
                remove_managed(&services, &service_name, platform).await?;
                remove_managed(&ingresses, &ingress_name, platform).await?;
                None
            }
        };
        if let Some(spec) = exposure::exposed(platform, component)
            && let Some(host) = exposure::host(spec, live.as_ref())
        {
            exposed.hosts.push((component, host));
        }
        let url = match exposure::url(platform, component, live.as_ref()) {
            None => None,
            Some(Ok(url)) => Some(url),
            Some(Err(why)) => {
                pending.push(why.to_string());
                None
            }
        };
        match component {
            Component::Collect => urls.collect = url,
            _ => urls.sso = url,
        }
    }
    if platform.spec.exposure.is_some() {
        exposed.urls = Some(urls);
    }
    exposed.pending = Some(pending.join("; ")).filter(|p| !p.is_empty());
    Ok(exposed)
}

/// Deletes `name` if it exists and this platform owns it.
async fn remove_managed<K>(api: &Api<K>, name: &str, platform: &SipMba) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(live) = api.get_opt(name).await? else {
        return Ok(());
    };
    let ours = live
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == platform.metadata.uid.as_ref());
    if !ours {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(object = %name, "removed what spec.exposure no longer asks for");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn condition(
    platform: &SipMba,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
) -> Condition {
    let previous = platform
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    crate::reconcile::condition(
        previous,
        platform.metadata.generation,
        kind,
        status,
        reason,
        message,
    )
}

/// Writes the status unless it says what it says already.
async fn write_status(
    client: &Client,
    platform: &SipMba,
    status: SipMbaStatus,
) -> Result<(), Error> {
    if platform.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<SipMba> =
        Api::namespaced(client.clone(), &platform.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": SipMba::api_version(&()),
        "kind": SipMba::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(MANAGER).force();
    api.patch_status(&platform.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// After a failure: back off exponentially per platform (2 s doubling, at most 5 minutes).
pub fn error_policy(platform: Arc<SipMba>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.failed(platform, error)
}

pub use crate::reconcile::backoff;
