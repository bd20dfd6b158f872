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
    collections::{BTreeMap, HashMap},
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
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
use uuid::Uuid;

use crate::{
    api::{SipMba, Thing, ThingStatus},
    desired,
    events::{EventType, reason as event},
    platform::MANAGER,
    provisioning::{Operator, PlatformAccess, ProvisionError},
    reconcile::{Failure, Shared},
};

mod agent;
use agent::deliver;
pub use agent::{agent_outside, agent_urls, in_cluster};

/// The `app.kubernetes.io/component` label of a thing's credentials Secret (the Thing
/// controller watches these Secrets, and no others).
pub const CREDENTIALS_COMPONENT: &str = "thing-credentials";

/// The finalizer of a registered thing.
pub const FINALIZER: &str = "sipmba.io/thing-cleanup";

/// How the operator reaches a platform's services (in-cluster: their Service URLs).
pub type Resolver = Arc<dyn Fn(&SipMba) -> PlatformAccess + Send + Sync>;

/// Where agents reach a platform's Collect and sso: `(collect, sso)`.
pub type AgentUrls = Arc<dyn Fn(&SipMba) -> (String, String) + Send + Sync>;

/// What the Thing reconciler needs.
pub struct ThingContext {
    /// What every reconciler of the operator needs.
    pub shared: Shared,
    /// How platforms are reached.
    pub resolve: Resolver,
    /// Where every agent reaches Collect and sso, overriding the choice by the agent's
    /// network ([`agent_urls`]).
    pub agent_urls: Option<AgentUrls>,
    /// The operator's session on each platform (`namespace/name`), kept while the platform's
    /// addresses, CA and the operator's secret stay as they were: its channels and its one
    /// token from sso serve every Thing of the platform.
    operators: std::sync::Mutex<HashMap<String, (u64, Operator)>>,
}

impl ThingContext {
    /// A context reaching platforms at their in-cluster addresses.
    pub fn new(client: Client, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            shared: Shared::new(client, metrics),
            resolve: Arc::new(in_cluster),
            agent_urls: None,
            operators: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Publishing Events about Things.
    pub fn with_events(mut self, events: crate::events::Events) -> Self {
        self.shared = self.shared.with_events(events);
        self
    }

    /// The operator on `platform` (`key`), reused while `access` and `secret` are unchanged.
    fn operator(
        &self,
        key: String,
        access: &PlatformAccess,
        secret: &str,
    ) -> Result<Operator, ProvisionError> {
        let mut hasher = std::hash::DefaultHasher::new();
        (&access.sso_url, &access.objects_url, &access.ca, secret).hash(&mut hasher);
        let fingerprint = hasher.finish();
        let mut operators = self
            .operators
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((known, operator)) = operators.get(&key)
            && *known == fingerprint
        {
            return Ok(operator.clone());
        }
        let operator = Operator::new(access, secret)?;
        operators.insert(key, (fingerprint, operator.clone()));
        Ok(operator)
    }

    /// Reaching platforms (and telling agents to reach them) at other addresses.
    pub fn with_resolver(mut self, resolve: Resolver, agent_urls: AgentUrls) -> Self {
        self.resolve = resolve;
        self.agent_urls = Some(agent_urls);
        self
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
    /// The finalizer could not be added or removed (never `ApplyFailed` or `CleanupFailed`:
    /// those are the reconcile's own errors, returned as they are).
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<ThingError>>),
    /// The delivery to the agent failed (its Thing's status and an AgentUnreachable Event say
    /// so already).
    #[error("{0}")]
    Delivery(Box<ThingError>),
}

impl Failure for ThingError {
    fn category(&self) -> &'static str {
        match self {
            ThingError::Kube(e) => crate::reconcile::kube_category(e),
            ThingError::Provision(e) if e.is_transient() => "platform_unavailable",
            ThingError::Provision(_) => "platform_refused",
            ThingError::Finalizer(_) => "finalizer",
            ThingError::Delivery(inner) => inner.category(),
        }
    }

    fn publish(&self) -> bool {
        // A failed delivery has its AgentUnreachable Event already.
        !matches!(self, ThingError::Delivery(_))
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
    crate::reconcile::condition(
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
    let api: Api<Thing> = Api::namespaced(
        ctx.shared.client.clone(),
        &thing.namespace().unwrap_or_default(),
    );
    let result = finalizer(&api, FINALIZER, thing.clone(), |event| async {
        match event {
            Event::Apply(thing) => apply(&thing, &ctx).await,
            Event::Cleanup(thing) => cleanup(&thing, &ctx).await,
        }
    })
    .await
    .or_else(|e| match e {
        // The Thing is gone already: this reconcile ran on a stale copy (a retry queued before
        // the cleanup that released it), and its cleanup is done.
        kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(status))
            if status.code == 404 =>
        {
            Ok(Action::await_change())
        }
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => Err(e),
        other => Err(ThingError::Finalizer(Box::new(other))),
    });
    let outcome = match &result {
        Ok(_) => {
            ctx.shared.succeeded(&*thing);
            "ok"
        }
        Err(e) => e.category(),
    };
    ctx.shared
        .metrics
        .record("thing", outcome, started.elapsed());
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
    let platforms: Api<SipMba> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let Some(platform) = platforms.get_opt(&thing.spec.platform_ref).await? else {
        return Ok(Reach::Missing(
            event::PLATFORM_NOT_FOUND,
            format!("no SipMba {:?} in namespace {ns}", thing.spec.platform_ref),
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let clients = desired::clients_secret_name(&platform);
    let Some(secret) = secrets
        .get_opt(&clients)
        .await?
        .and_then(|s| crate::certs::secret_value(&s, "operator"))
    else {
        return Ok(Reach::Missing(
            event::PLATFORM_STARTING,
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
                    event::PLATFORM_STARTING,
                    format!("the platform's CA ({name}) is not issued yet"),
                ));
            }
        }
    } else {
        None
    };
    let mut access = (ctx.resolve)(&platform);
    access.ca = access.ca.or_else(|| ca.clone());
    let operator = ctx.operator(format!("{ns}/{}", platform.name_any()), &access, &secret)?;
    Ok(Reach::Ready {
        platform: Box::new(platform),
        operator,
        ca,
    })
}

/// When a token issued at `issued` and expiring at `expires` is replaced: once a fifth of its
/// life is left, and up to a tenth earlier by `spread` (0 to 999 per mille, fixed per thing),
/// so that Things created together do not all renew together; its life counted as at most
/// `cap` seconds (`spec.tokenSeconds`).
fn renew_at(issued: i64, expires: i64, cap: Option<i64>, spread: u16) -> i64 {
    let expires = cap.map_or(expires, |cap| expires.min(issued + cap));
    let life = expires - issued;
    expires - life / 5 - life * i64::from(spread.min(999)) / 10_000
}

/// The thing's fixed place in the renewal spread: a digest of its uid, 0 to 999.
fn spread(thing: &Thing) -> u16 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(thing.uid().unwrap_or_default().as_bytes());
    u16::from_be_bytes([digest[0], digest[1]]) % 1000
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
            write_status(&ctx.shared.client, thing, status).await?;
            let kind = if reason == event::PLATFORM_NOT_FOUND {
                EventType::Warning
            } else {
                EventType::Normal
            };
            crate::events::maybe(ctx.shared.events.as_ref(), kind, thing, reason, &message).await;
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
        write_status(&ctx.shared.client, thing, status).await?;
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
            let id = operator.register(owner, &name, &thing.spec.labels).await?;
            if current.thing_id.is_none() {
                let note = format!("thing {id} ({name:?}) in Objects");
                crate::events::maybe(
                    ctx.shared.events.as_ref(),
                    EventType::Normal,
                    thing,
                    event::REGISTERED,
                    &note,
                )
                .await;
            }
            id
        }
    };

    // The credential, and a token renewed when due.
    let secrets: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &ns);
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
            if now < renew_at(issued, expires, thing.spec.token_seconds, spread(thing)) =>
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
                    labels: Some(BTreeMap::from([
                        (
                            "app.kubernetes.io/managed-by".to_owned(),
                            "sipmba-operator".to_owned(),
                        ),
                        (
                            "app.kubernetes.io/component".to_owned(),
                            CREDENTIALS_COMPONENT.to_owned(),
                        ),
                    ])),
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
        let urls = match &ctx.agent_urls {
            Some(urls) => Ok(urls(&platform)),
            None => agent_urls(thing, &platform),
        };
        let collect_url = urls.as_ref().map(|u| u.0.clone()).unwrap_or_default();
        delivery = match urls {
            Err(why) => Err(Undelivered::NoExternalAddress(why)),
            Ok(urls) => deliver(
                thing,
                ctx,
                &platform,
                ca.as_deref(),
                urls,
                id,
                (&client_id, &client_secret),
                &token,
            )
            .await
            .map_err(Undelivered::Failed),
        };
        if delivery.is_ok() {
            status.last_delivery = Some(Time(Timestamp::now()));
        }
        let events = ctx.shared.events.as_ref();
        match &delivery {
            Ok(()) => {
                let (reason, what) = if current.last_delivery.is_some() {
                    (event::TOKEN_RENEWED, "a renewed token")
                } else {
                    (event::TOKEN_DELIVERED, "its token")
                };
                let note = format!(
                    "the agent at {} has {what}, valid until {}, and streams to {collect_url}",
                    thing.spec.agent.endpoint,
                    output_until(token.2)
                );
                crate::events::maybe(events, EventType::Normal, thing, reason, &note).await;
            }
            Err(Undelivered::NoExternalAddress(why)) => {
                crate::events::maybe(
                    events,
                    EventType::Warning,
                    thing,
                    event::NO_EXTERNAL_ADDRESS,
                    why,
                )
                .await;
            }
            Err(Undelivered::Failed(e)) => {
                let note = e.to_string();
                crate::events::maybe(
                    events,
                    EventType::Warning,
                    thing,
                    event::AGENT_UNREACHABLE,
                    &note,
                )
                .await;
            }
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
            Err(Undelivered::NoExternalAddress(why)) => {
                condition(thing, "Delivered", false, "NoExternalAddress", why)
            }
            Err(Undelivered::Failed(e)) => condition(
                thing,
                "Delivered",
                false,
                "AgentUnreachable",
                &e.to_string(),
            ),
        },
    ];
    write_status(&ctx.shared.client, thing, status).await?;
    match delivery {
        Ok(()) => {}
        // Looked at again when the platform may have its addresses (its status is not
        // watched from here).
        Err(Undelivered::NoExternalAddress(_)) => {
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        Err(Undelivered::Failed(e)) => return Err(ThingError::Delivery(Box::new(e))),
    }
    let renewal = renew_at(token.1, token.2, thing.spec.token_seconds, spread(thing));
    let wait = u64::try_from(renewal - now).unwrap_or(0).max(30);
    Ok(Action::requeue(Duration::from_secs(wait)))
}

fn output_until(expires: i64) -> String {
    Timestamp::from_second(expires).map_or_else(|_| expires.to_string(), |t| t.to_string())
}

/// Why the agent does not have the current token.
enum Undelivered {
    /// The agent is outside the cluster and the platform has no address there.
    NoExternalAddress(String),
    /// Reading what to deliver, or the delivery itself, failed.
    Failed(ThingError),
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
            let note = format!("thing {id}: its tokens revoked, deregistered from Objects");
            crate::events::maybe(
                ctx.shared.events.as_ref(),
                EventType::Normal,
                thing,
                event::CLEANED_UP,
                &note,
            )
            .await;
        }
        Reach::Missing(reason, message) => {
            tracing::warn!(thing = %id, reason, %message, "the platform is gone: nothing to clean up");
        }
    }
    Ok(Action::await_change())
}

/// After a failure: back off exponentially per thing (2 s doubling, at most 5 minutes).
pub fn error_policy(thing: Arc<Thing>, error: &ThingError, ctx: Arc<ThingContext>) -> Action {
    ctx.shared.failed(thing, error)
}

#[cfg(test)]
mod tests;
