//! The `Thing` reconciler: registers the thing with its platform's Objects, keeps its credential
//! and access token in a Secret the Thing owns, delivers them to the agent, renews the token when
//! a fifth of its life is left, and on deletion revokes the token and deregisters the thing.
//!
//! The finalizer `sipmba.io/thing-cleanup` holds the deletion until that is done; a platform
//! that is gone counts as cleaned up, so the finalizer never wedges a namespace. Should a
//! platform stay unreachable, the escape is
//! `kubectl patch thing <name> --type=merge -p '{"metadata":{"finalizers":null}}'` (the thing then
//! stays registered until deleted by hand).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{Event, finalizer},
    },
};
use serde_json::json;
use sipmba_proto::v1 as pb;
use uuid::Uuid;

use crate::{
    api::{SipMba, Thing, ThingStatus},
    desired::{self, Component},
    platform::MANAGER,
    provisioning::{self, Operator, PlatformAccess, ProvisionError},
};

/// The finalizer of a registered thing.
pub const FINALIZER: &str = "sipmba.io/thing-cleanup";

/// How the operator reaches a platform's services (in-cluster: their Service URLs).
pub type Resolver = Arc<dyn Fn(&SipMba) -> PlatformAccess + Send + Sync>;

/// Where agents reach a platform's Collect and sso: `(collect, sso)`.
pub type AgentUrls = Arc<dyn Fn(&SipMba) -> (String, String) + Send + Sync>;

/// What the Thing reconciler needs.
pub struct ThingContext {
    /// The Kubernetes client.
    pub client: Client,
    /// How platforms are reached.
    pub resolve: Resolver,
    /// Where agents reach Collect and sso (default: the in-cluster URLs).
    pub agent_urls: AgentUrls,
    /// The operator's metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    failures: crate::status::Failures,
}

impl ThingContext {
    /// A context reaching platforms at their in-cluster addresses.
    pub fn new(client: Client, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            client,
            resolve: Arc::new(in_cluster),
            agent_urls: Arc::new(|p: &SipMba| {
                (
                    desired::url(p, Component::Collect),
                    desired::url(p, Component::Sso),
                )
            }),
            metrics,
            failures: crate::status::Failures::default(),
        }
    }

    /// Reaching platforms (and telling agents to reach them) at other addresses.
    pub fn with_resolver(mut self, resolve: Resolver, agent_urls: AgentUrls) -> Self {
        self.resolve = resolve;
        self.agent_urls = agent_urls;
        self
    }
}

/// The in-cluster addresses of a platform's sso and Objects.
pub fn in_cluster(platform: &SipMba) -> PlatformAccess {
    PlatformAccess {
        sso_url: desired::url(platform, Component::Sso),
        objects_url: desired::url(platform, Component::Objects),
        ca: None,
    }
}

/// Why a Thing reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ThingError {
    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A platform or agent call failed.
    #[error("{0}")]
    Provision(#[from] ProvisionError),
    /// The finalizer could not be added or removed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl ThingError {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ThingError::Kube(kube::Error::Api(status)) if status.code >= 500 => "api_server",
            ThingError::Kube(_) => "api_refused",
            ThingError::Provision(e) if e.is_transient() => "platform_unavailable",
            ThingError::Provision(_) => "platform_refused",
            ThingError::Finalizer(_) => "finalizer",
        }
    }
}

/// The Secret holding a thing's credential and token.
pub fn credentials_name(thing: &Thing) -> String {
    format!("{}-credentials", thing.name_any())
}

fn condition(thing: &Thing, kind: &str, ok: bool, reason: &str, message: &str) -> Condition {
    let previous = thing
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    crate::status::condition(
        previous,
        thing.metadata.generation,
        kind,
        ok,
        reason,
        message,
    )
}

async fn write_status(
    client: &Client,
    thing: &Thing,
    status: ThingStatus,
) -> Result<(), ThingError> {
    if thing.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Thing> = Api::namespaced(client.clone(), &thing.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": Thing::api_version(&()),
        "kind": Thing::kind(&()),
        "status": status,
    });
    api.patch_status(
        &thing.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The status so far, with `conditions` replaced.
fn status_with(thing: &Thing, conditions: Vec<Condition>) -> ThingStatus {
    let mut status = thing.status.clone().unwrap_or_default();
    status.observed_generation = thing.metadata.generation;
    status.conditions = conditions;
    status
}

/// Reconciles one thing, and counts it.
#[tracing::instrument(skip(thing, ctx), fields(thing = %thing.name_any()))]
pub async fn reconcile(thing: Arc<Thing>, ctx: Arc<ThingContext>) -> Result<Action, ThingError> {
    let started = std::time::Instant::now();
    let key = failure_key(&thing);
    let api: Api<Thing> =
        Api::namespaced(ctx.client.clone(), &thing.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, thing, |event| async {
        match event {
            Event::Apply(thing) => apply(&thing, &ctx).await,
            Event::Cleanup(thing) => cleanup(&thing, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ThingError::Finalizer(other.to_string()),
    });
    let outcome = match &result {
        Ok(_) => {
            ctx.failures.succeeded(&key);
            "ok"
        }
        Err(e) => e.category(),
    };
    ctx.metrics.record("thing", outcome, started.elapsed());
    result
}

/// What a thing's platform offers the operator, or why not.
enum Reach {
    Ready {
        platform: Box<SipMba>,
        operator: Operator,
        ca: Option<Vec<u8>>,
    },
    Missing(&'static str, String),
}

async fn reach(thing: &Thing, ctx: &ThingContext) -> Result<Reach, ThingError> {
    let ns = thing.namespace().unwrap_or_default();
    let platforms: Api<SipMba> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(platform) = platforms.get_opt(&thing.spec.platform_ref).await? else {
        return Ok(Reach::Missing(
            "PlatformNotFound",
            format!("no SipMba {:?} in namespace {ns}", thing.spec.platform_ref),
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let clients = desired::clients_secret_name(&platform);
    let Some(secret) = secrets
        .get_opt(&clients)
        .await?
        .and_then(|s| crate::certs::secret_value(&s, "operator"))
    else {
        return Ok(Reach::Missing(
            "PlatformStarting",
            format!("the platform's Secret {clients} has no operator credential yet"),
        ));
    };
    let ca = if platform.spec.tls.enabled.unwrap_or(true) {
        let name = format!("{}-ca", platform.name_any());
        match secrets
            .get_opt(&name)
            .await?
            .and_then(|s| crate::certs::secret_value(&s, "ca.crt"))
        {
            Some(ca) => Some(ca.into_bytes()),
            None => {
                return Ok(Reach::Missing(
                    "PlatformStarting",
                    format!("the platform's CA ({name}) is not issued yet"),
                ));
            }
        }
    } else {
        None
    };
    let mut access = (ctx.resolve)(&platform);
    access.ca = access.ca.or_else(|| ca.clone());
    let operator = Operator::new(&access, &secret)?;
    Ok(Reach::Ready {
        platform: Box::new(platform),
        operator,
        ca,
    })
}

/// When a token issued at `issued` and expiring at `expires` is replaced: once a fifth of its
/// life is left, its life counted as at most `cap` seconds (`spec.tokenSeconds`).
fn renew_at(issued: i64, expires: i64, cap: Option<i64>) -> i64 {
    let expires = cap.map_or(expires, |cap| expires.min(issued + cap));
    expires - (expires - issued) / 5
}

async fn apply(thing: &Thing, ctx: &ThingContext) -> Result<Action, ThingError> {
    let ns = thing.namespace().unwrap_or_default();
    let (platform, operator, ca) = match reach(thing, ctx).await? {
        Reach::Ready {
            platform,
            operator,
            ca,
        } => (platform, operator, ca),
        Reach::Missing(reason, message) => {
            let status = status_with(
                thing,
                vec![
                    condition(thing, "Registered", false, reason, &message),
                    condition(thing, "TokenIssued", false, reason, &message),
                    condition(thing, "Delivered", false, reason, &message),
                ],
            );
            write_status(&ctx.client, thing, status).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    };
    let Ok(owner) = Uuid::parse_str(&thing.spec.owner) else {
        let message = format!("spec.owner {:?} is not a user id", thing.spec.owner);
        let status = status_with(
            thing,
            vec![condition(
                thing,
                "Registered",
                false,
                "InvalidSpec",
                &message,
            )],
        );
        write_status(&ctx.client, thing, status).await?;
        return Ok(Action::await_change());
    };
    let current = thing.status.clone().unwrap_or_default();
    // Registered once per generation (a changed spec brings the labels up to date).
    let registered = current
        .thing_id
        .as_deref()
        .and_then(|id| Uuid::parse_str(id).ok())
        .filter(|_| current.observed_generation == thing.metadata.generation);
    let id = match registered {
        Some(id) => id,
        None => {
            let name = thing
                .spec
                .display_name
                .clone()
                .unwrap_or_else(|| thing.name_any());
            operator.register(owner, &name, &thing.spec.labels).await?
        }
    };

    // The credential, and a token renewed when due.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = credentials_name(thing);
    let live = secrets.get_opt(&name).await?;
    let stored = |key: &str| {
        live.as_ref()
            .and_then(|s| crate::certs::secret_value(s, key))
    };
    let now = Timestamp::now().as_second();
    let (client_id, client_secret) = match (stored("client_id"), stored("client_secret")) {
        (Some(id), Some(secret)) => (id, secret),
        _ => operator.credential(id).await?,
    };
    let issued = stored("issued").and_then(|v| v.parse::<i64>().ok());
    let expires = stored("expires").and_then(|v| v.parse::<i64>().ok());
    let token = match (stored("access_token"), issued, expires) {
        (Some(token), Some(issued), Some(expires))
            if now < renew_at(issued, expires, thing.spec.token_seconds) =>
        {
            (token, issued, expires)
        }
        _ => {
            let fresh = operator.thing_token(&client_id, &client_secret).await?;
            let token = (fresh.access_token, now, fresh.expires.seconds);
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    owner_references: Some(vec![owner_reference(thing)]),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "sipmba-operator".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                string_data: Some(BTreeMap::from([
                    ("thing".to_owned(), id.to_string()),
                    ("client_id".to_owned(), client_id.clone()),
                    ("client_secret".to_owned(), client_secret.clone()),
                    ("access_token".to_owned(), token.0.clone()),
                    ("issued".to_owned(), token.1.to_string()),
                    ("expires".to_owned(), token.2.to_string()),
                ])),
                ..Secret::default()
            };
            secrets
                .patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await?;
            token
        }
    };
    let expires_at = Timestamp::from_second(token.2).unwrap_or_else(|_| Timestamp::now());

    // Delivered when the agent does not have this token yet.
    let mut status = ThingStatus {
        observed_generation: thing.metadata.generation,
        conditions: Vec::new(),
        thing_id: Some(id.to_string()),
        token_expires: Some(Time(expires_at)),
        last_delivery: current.last_delivery.clone(),
        secret_name: Some(name.clone()),
    };
    let delivered_already = current.token_expires.as_ref().map(|t| t.0) == Some(expires_at)
        && current
            .conditions
            .iter()
            .any(|c| c.type_ == "Delivered" && c.status == "True");
    let mut delivery = Ok(());
    if !delivered_already {
        delivery = deliver(
            thing,
            ctx,
            &platform,
            ca.as_deref(),
            id,
            &client_id,
            &client_secret,
            &token,
        )
        .await;
        if delivery.is_ok() {
            status.last_delivery = Some(Time(Timestamp::now()));
        }
    }
    let until = output_until(token.2);
    status.conditions = vec![
        condition(
            thing,
            "Registered",
            true,
            "Registered",
            &format!("thing {id}"),
        ),
        condition(
            thing,
            "TokenIssued",
            true,
            "TokenIssued",
            &format!("valid until {until}"),
        ),
        match &delivery {
            Ok(()) => condition(
                thing,
                "Delivered",
                true,
                "Delivered",
                "the agent has the current token",
            ),
            Err(e) => condition(
                thing,
                "Delivered",
                false,
                "AgentUnreachable",
                &e.to_string(),
            ),
        },
    ];
    write_status(&ctx.client, thing, status).await?;
    delivery?;
    let renewal = renew_at(token.1, token.2, thing.spec.token_seconds);
    let wait = u64::try_from(renewal - now).unwrap_or(0).max(30);
    Ok(Action::requeue(Duration::from_secs(wait)))
}

fn output_until(expires: i64) -> String {
    Timestamp::from_second(expires).map_or_else(|_| expires.to_string(), |t| t.to_string())
}

#[allow(clippy::too_many_arguments)]
async fn deliver(
    thing: &Thing,
    ctx: &ThingContext,
    platform: &SipMba,
    ca: Option<&[u8]>,
    id: Uuid,
    client_id: &str,
    client_secret: &str,
    token: &(String, i64, i64),
) -> Result<(), ThingError> {
    let ns = thing.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let reference = &thing.spec.agent.enrollment_secret_ref;
    let enrollment = secrets
        .get_opt(&reference.name)
        .await?
        .and_then(|s| crate::certs::secret_value(&s, &reference.key))
        .ok_or_else(|| {
            ProvisionError::Config(format!(
                "the enrollment secret {}/{} is missing",
                reference.name, reference.key
            ))
        })?;
    let (collect, sso) = (ctx.agent_urls)(platform);
    let request = pb::ProvisionRequest {
        thing: Some(pb::ThingId {
            value: id.to_string(),
        }),
        access_token: token.0.clone(),
        token_expires: Some(prost_types::Timestamp {
            seconds: token.2,
            nanos: 0,
        }),
        collect_endpoint: collect,
        ca_certificate_pem: ca.map(|c| String::from_utf8_lossy(c).into_owned()),
        client_id: client_id.to_owned(),
        // The agent renews its own token between deliveries.
        client_secret: Some(client_secret.to_owned()),
        token_endpoint: Some(sso),
        ..Default::default()
    };
    let answer = provisioning::deliver(
        &thing.spec.agent.endpoint,
        enrollment.trim().as_bytes(),
        ca,
        request,
    )
    .await?;
    if !answer.accepted {
        return Err(ProvisionError::Call {
            what: "delivering to the agent",
            message: "the agent did not accept the credentials".into(),
            transient: true,
        }
        .into());
    }
    tracing::info!(thing = %id, at = ?SystemTime::now(), "delivered the thing's credentials");
    Ok(())
}

fn owner_reference(thing: &Thing) -> OwnerReference {
    OwnerReference {
        api_version: Thing::api_version(&()).into_owned(),
        kind: Thing::kind(&()).into_owned(),
        name: thing.name_any(),
        uid: thing.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Revokes the thing's tokens and deregisters it; a platform that is gone has nothing left to
/// clean.
async fn cleanup(thing: &Thing, ctx: &ThingContext) -> Result<Action, ThingError> {
    let Some(id) = thing
        .status
        .as_ref()
        .and_then(|s| s.thing_id.as_deref())
        .and_then(|id| Uuid::parse_str(id).ok())
    else {
        return Ok(Action::await_change());
    };
    match reach(thing, ctx).await? {
        Reach::Ready { operator, .. } => {
            operator.revoke(id).await?;
            operator.deregister(id).await?;
            tracing::info!(thing = %id, "revoked and deregistered");
        }
        Reach::Missing(reason, message) => {
            tracing::warn!(thing = %id, reason, %message, "the platform is gone: nothing to clean up");
        }
    }
    Ok(Action::await_change())
}

/// After a failure: back off exponentially per thing (2 s doubling, at most 5 minutes).
pub fn error_policy(thing: Arc<Thing>, error: &ThingError, ctx: Arc<ThingContext>) -> Action {
    let delay = ctx.failures.failed(failure_key(&thing));
    tracing::warn!(error = %error, category = error.category(), retry_in_s = delay.as_secs(), "thing reconcile failed");
    Action::requeue(delay)
}

fn failure_key(thing: &Thing) -> String {
    format!(
        "{}/{}",
        thing.namespace().unwrap_or_default(),
        thing.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::renew_at;

    #[test]
    fn a_token_is_renewed_when_a_fifth_of_its_life_is_left_capped_by_token_seconds() {
        assert_eq!(renew_at(1_000, 4_600, None), 3_880);
        assert_eq!(renew_at(1_000, 4_600, Some(600)), 1_480);
        assert_eq!(
            renew_at(1_000, 4_600, Some(86_400)),
            3_880,
            "a cap above the lifetime changes nothing"
        );
    }
}
