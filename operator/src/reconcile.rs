//! What both reconcilers (platforms and Things) share: their context ([`Shared`]: the client,
//! the metrics, the Events, the failures per object), one way to handle a failed reconcile
//! (a bounded category, a log line, a Warning Event, a backoff per object), and conditions that
//! keep their transition time while their status stays.

use std::{collections::HashMap, sync::Arc, sync::Mutex, time::Duration};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{Client, Resource, ResourceExt, runtime::controller::Action};

use crate::{events::Events, metrics::Metrics};

/// What both reconcilers need.
pub struct Shared {
    /// The Kubernetes client.
    pub client: Client,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// The Events published about the objects reconciled (none: nothing is published).
    pub events: Option<Events>,
    failures: Failures,
}

/// A reconcile failure: what it says, and its bounded label for metrics and logs.
pub trait Failure: std::fmt::Display {
    /// A bounded label for metrics.
    fn category(&self) -> &'static str;

    /// Whether to publish a Warning Event about it (not when the reconcile published a more
    /// specific one already).
    fn publish(&self) -> bool {
        true
    }
}

/// The bounded label of a Kubernetes API failure.
pub fn kube_category(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) if status.code == 409 => "conflict",
        kube::Error::Api(status) if status.code >= 500 => "api_server",
        kube::Error::Api(_) => "api_refused",
        _ => "api_unreachable",
    }
}

/// The key of an object in the failure counts: `namespace/name`.
fn key<K: ResourceExt>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

impl Shared {
    /// Around `client`, recording into `metrics`.
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            metrics,
            events: None,
            failures: Failures::default(),
        }
    }

    /// Publishing Events about the objects reconciled.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = Some(events);
        self
    }

    /// After `object`'s reconcile failed with `error`: logs it with its category, publishes a
    /// Warning Event (when the error asks for one), and requeues it after its backoff (2 s
    /// doubling per consecutive failure, at most 5 minutes).
    pub fn failed<K, E>(&self, object: Arc<K>, error: &E) -> Action
    where
        K: Resource<DynamicType = ()> + ResourceExt + Send + Sync + 'static,
        E: Failure,
    {
        let delay = self.failures.failed(key(&*object));
        tracing::warn!(
            kind = K::kind(&()).as_ref(),
            object = %key(&*object),
            error = %error,
            category = error.category(),
            retry_in_s = delay.as_secs(),
            "reconcile failed"
        );
        if let Some(events) = self.events.clone()
            && error.publish()
        {
            let note = format!("{error} (trying again in {} s)", delay.as_secs());
            tokio::spawn(async move {
                events
                    .warning(&*object, crate::events::reason::RECONCILE_FAILED, &note)
                    .await;
            });
        }
        Action::requeue(delay)
    }

    /// Forgets the failures of `object` after a reconcile that succeeded.
    pub fn succeeded<K: ResourceExt>(&self, object: &K) {
        self.failures.succeeded(&key(object));
    }
}

/// A condition of `kind` for `generation`; its transition time is the previous one's while the
/// status does not change.
pub fn condition(
    previous: &[Condition],
    generation: Option<i64>,
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = match previous.iter().find(|c| c.type_ == kind) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    Condition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The wait after `failures` consecutive failures: 2 s, doubling, at most 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 2u64.saturating_mul(1u64 << failures.saturating_sub(1).min(16));
    Duration::from_secs(secs.min(300))
}

/// Consecutive failures per object.
#[derive(Debug, Default)]
struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts a failure of `key`; returns how long to wait.
    fn failed(&self, key: String) -> Duration {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }

    /// Forgets the failures of `key`.
    fn succeeded(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}
