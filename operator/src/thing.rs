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
    events::{EventType, reason as event},
    platform::MANAGER,
    provisioning::{self, Operator, PlatformAccess, ProvisionError},
    reconcile::{Failure, Shared},
};

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

/// The in-cluster addresses of a platform's sso and Objects.
pub fn in_cluster(platform: &SipMba) -> PlatformAccess {
    PlatformAccess {
        sso_url: desired::url(platform, Component::Sso),
        objects_url: desired::url(platform, Component::Objects),
        ca: None,
    }
}

/// Whether the thing's agent runs outside the cluster: `spec.agent.network`, or else its
/// endpoint's host is not a Service name (one without a dot, or one under `.svc`).
pub fn agent_outside(thing: &Thing) -> bool {
    match thing.spec.agent.network.as_deref() {
        Some(network) => network == "External",
        None => {
            let host = thing
                .spec
                .agent
                .endpoint
                .parse::<tonic::codegen::http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_owned))
                .unwrap_or_default();
            let service = !host.contains('.') || host.ends_with(".svc") || host.contains(".svc.");
            !service
        }
    }
}

/// Where the thing's agent reaches Collect and sso, `(collect, sso)`: the in-cluster URLs for
/// an agent in the cluster; for one outside, the platform's external URLs (`status.external`),
/// or why there are none.
pub fn agent_urls(thing: &Thing, platform: &SipMba) -> Result<(String, String), String> {
    if !agent_outside(thing) {
        return Ok((
            desired::url(platform, Component::Collect),
            desired::url(platform, Component::Sso),
        ));
    }
    let external = platform.status.as_ref().and_then(|s| s.external.as_ref());
    let known = |component: Component, url: Option<&String>| -> Result<String, String> {
        let name = component.name();
        let platform_name = platform.name_any();
        match (crate::exposure::exposed(platform, component).is_some(), url) {
            (_, Some(url)) => Ok(url.clone()),
            (false, None) => Err(format!(
                "the agent at {} is outside the cluster, and SipMba {platform_name} does not \
                 expose {name} (spec.exposure.{name}): it could not reach the in-cluster address",
                thing.spec.agent.endpoint
            )),
            (true, None) => Err(format!(
                "the agent is outside the cluster, and the address of SipMba {platform_name}'s \
                 {name} outside it is not known yet (see the SipMba's Exposed condition)"
            )),
        }
    };
    Ok((
        known(
            Component::Collect,
            external.and_then(|e| e.collect.as_ref()),
        )?,
        known(Component::Sso, external.and_then(|e| e.sso.as_ref()))?,
    ))
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

/// The text under `reference`, or a configuration error naming what is missing.
async fn secret_text(
    secrets: &Api<Secret>,
    reference: &crate::api::SecretKeyRef,
    what: &str,
) -> Result<String, ThingError> {
    Ok(secrets
        .get_opt(&reference.name)
        .await?
        .and_then(|s| crate::certs::secret_value(&s, &reference.key))
        .ok_or_else(|| {
            ProvisionError::Config(format!(
                "{what} {}/{} is missing",
                reference.name, reference.key
            ))
        })?)
}

#[allow(clippy::too_many_arguments)]
async fn deliver(
    thing: &Thing,
    ctx: &ThingContext,
    platform: &SipMba,
    ca: Option<&[u8]>,
    (collect, sso): (String, String),
    id: Uuid,
    (client_id, client_secret): (&str, &str),
    token: &(String, i64, i64),
) -> Result<(), ThingError> {
    let ns = thing.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let enrollment = secret_text(
        &secrets,
        &thing.spec.agent.enrollment_secret_ref,
        "the enrollment secret",
    )
    .await?;
    // The agent verifies the platform's certificates with the platform CA, and, outside the
    // cluster, with the CA of whatever ends TLS at the exposed address.
    let mut bundle = ca.map(|c| String::from_utf8_lossy(c).into_owned());
    if agent_outside(thing) {
        for component in crate::exposure::EXPOSABLE {
            if let Some(reference) =
                crate::exposure::exposed(platform, component).and_then(|e| e.ca_secret_ref.as_ref())
            {
                let pem = secret_text(&secrets, reference, "the exposure's CA").await?;
                let bundle = bundle.get_or_insert_with(String::new);
                if !bundle.contains(pem.trim()) {
                    if !bundle.is_empty() && !bundle.ends_with('\n') {
                        bundle.push('\n');
                    }
                    bundle.push_str(pem.trim());
                    bundle.push('\n');
                }
            }
        }
    }
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
        ca_certificate_pem: bundle,
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
    // Not accepted: the agent held exactly these already (a delivery whose status write was
    // lost); it has the current token all the same.
    tracing::info!(
        thing = %id,
        at = ?SystemTime::now(),
        new = answer.accepted,
        "delivered the thing's credentials"
    );
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
mod tests {
    use super::{agent_outside, agent_urls, renew_at};
    use crate::api::{ExposedService, ExposureSpec, ExternalUrls, SipMba, SipMbaStatus, Thing};

    fn thing(endpoint: &str, network: Option<&str>) -> Thing {
        let mut thing: Thing =
            serde_yaml::from_str(include_str!("../../charts/sipmba/examples/thing.yaml"))
                .expect("the example thing");
        thing.spec.agent.endpoint = endpoint.into();
        thing.spec.agent.network = network.map(Into::into);
        thing
    }

    fn platform() -> SipMba {
        let mut platform: SipMba =
            serde_yaml::from_str(include_str!("../../charts/sipmba/examples/sipmba.yaml"))
                .expect("the example platform");
        platform.metadata.namespace = Some("iot".into());
        platform.spec.exposure = None;
        platform
    }

    #[test]
    fn an_agent_is_outside_unless_its_endpoint_names_a_service() {
        for inside in [
            "http://e2e-agent:7443",
            "http://e2e-agent.iot.svc:7443",
            "https://e2e-agent.iot.svc.cluster.local:7443",
        ] {
            assert!(!agent_outside(&thing(inside, None)), "{inside}");
        }
        for outside in [
            "https://greenhouse-7.local:7443",
            "https://192.168.1.20:7443",
            "http://pi.example.com:7443",
        ] {
            assert!(agent_outside(&thing(outside, None)), "{outside}");
        }
        assert!(!agent_outside(&thing(
            "https://192.168.1.20:7443",
            Some("Cluster")
        )));
        assert!(agent_outside(&thing(
            "http://e2e-agent:7443",
            Some("External")
        )));
    }

    #[test]
    fn an_agent_outside_gets_the_external_urls_or_a_plain_reason() {
        let mut p = platform();
        let inside = thing("http://e2e-agent.iot.svc:7443", None);
        assert_eq!(
            agent_urls(&inside, &p),
            Ok((
                "https://demo-collect.iot.svc:7400".into(),
                "https://demo-sso.iot.svc:7400".into()
            ))
        );
        let pi = thing("https://192.168.1.20:7443", None);
        let why = agent_urls(&pi, &p).expect_err("no exposure");
        assert!(
            why.contains("outside the cluster") && why.contains("spec.exposure.collect"),
            "{why}"
        );

        let node_port = |host: &str| ExposedService {
            type_: "NodePort".into(),
            host: Some(host.into()),
            port: None,
            annotations: Default::default(),
            ingress_class_name: None,
            tls_secret_name: None,
            ca_secret_ref: None,
        };
        p.spec.exposure = Some(ExposureSpec {
            collect: Some(node_port("203.0.113.5")),
            sso: Some(node_port("203.0.113.5")),
        });
        let why = agent_urls(&pi, &p).expect_err("the node ports are not known yet");
        assert!(why.contains("not known yet"), "{why}");
        p.status = Some(SipMbaStatus {
            external: Some(ExternalUrls {
                collect: Some("https://203.0.113.5:31001".into()),
                sso: Some("https://203.0.113.5:31002".into()),
            }),
            ..SipMbaStatus::default()
        });
        assert_eq!(
            agent_urls(&pi, &p),
            Ok((
                "https://203.0.113.5:31001".into(),
                "https://203.0.113.5:31002".into()
            ))
        );
        assert_eq!(
            agent_urls(&inside, &p).map(|u| u.0),
            Ok("https://demo-collect.iot.svc:7400".into()),
            "an agent in the cluster keeps the in-cluster address"
        );
    }

    #[test]
    fn a_token_is_renewed_when_a_fifth_of_its_life_is_left_capped_by_token_seconds() {
        assert_eq!(renew_at(1_000, 4_600, None, 0), 3_880);
        assert_eq!(renew_at(1_000, 4_600, Some(600), 0), 1_480);
        assert_eq!(
            renew_at(1_000, 4_600, Some(86_400), 0),
            3_880,
            "a cap above the lifetime changes nothing"
        );
        // Spread over a tenth of the life before that: 3,600 s of life, up to 360 s earlier.
        assert_eq!(renew_at(1_000, 4_600, None, 500), 3_700);
        assert_eq!(renew_at(1_000, 4_600, None, 999), 3_521);
    }

    #[test]
    fn things_created_together_renew_spread_over_a_tenth_of_the_life() {
        let mut places = std::collections::BTreeSet::new();
        for n in 0..1000 {
            let mut t = thing("https://192.168.1.20:7443", None);
            t.metadata.uid = Some(format!("7d1f0a52-3b44-4c55-9d66-{n:012}"));
            let place = super::spread(&t);
            assert!(place < 1000);
            assert_eq!(place, super::spread(&t), "fixed per thing");
            places.insert(renew_at(0, 3_600, None, place));
        }
        // 1,000 things issued at once renew over 360 s, no second taking more than a few.
        assert!(
            places.len() > 250,
            "{} distinct renewal seconds",
            places.len()
        );
        assert!(*places.first().unwrap() >= 2_880 - 360 && *places.last().unwrap() <= 2_880);
    }
}
