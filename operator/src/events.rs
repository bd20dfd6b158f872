//! The Kubernetes Events both reconcilers publish (`events.k8s.io/v1`, through kube's
//! `Recorder`, which folds a repeat of the same reason and note within six minutes into one
//! Event with a count), so that `kubectl describe sipmba|thing` tells what the operator did and
//! what went wrong. Publishing is best effort: an Event the API server refuses is logged, and
//! never fails a reconcile.

pub use kube::runtime::events::EventType;
use kube::{
    Client, Resource,
    runtime::events::{Event, Recorder, Reporter},
};

/// The stable reasons (`kubectl describe`'s Reason column).
pub mod reason {
    /// A platform's children were created (the note lists them).
    pub const CREATED: &str = "Created";
    /// A platform's children were changed (the note lists them).
    pub const UPDATED: &str = "Updated";
    /// A service's replicas changed.
    pub const SCALED: &str = "Scaled";
    /// A topic was created on the log.
    pub const TOPIC_CREATED: &str = "TopicCreated";
    /// A topic got more partitions.
    pub const TOPIC_GROWN: &str = "TopicGrown";
    /// A service's first certificate.
    pub const CERTIFICATE_ISSUED: &str = "CertificateIssued";
    /// A service's certificate replaced (due, another CA, other names).
    pub const CERTIFICATE_RENEWED: &str = "CertificateRenewed";
    /// The platform's external URLs are known or changed.
    pub const EXPOSED: &str = "Exposed";
    /// Every service ready.
    pub const READY: &str = "Ready";
    /// A spec the operator cannot run.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A reconcile failed (the note says why; it is tried again with a backoff).
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
    /// A thing registered with Objects.
    pub const REGISTERED: &str = "Registered";
    /// A thing's first token delivered to its agent.
    pub const TOKEN_DELIVERED: &str = "TokenDelivered";
    /// A renewed token delivered to the agent.
    pub const TOKEN_RENEWED: &str = "TokenRenewed";
    /// The agent could not be reached or refused the delivery.
    pub const AGENT_UNREACHABLE: &str = "AgentUnreachable";
    /// The agent is outside the cluster and the platform has no address there.
    pub const NO_EXTERNAL_ADDRESS: &str = "NoExternalAddress";
    /// The Thing's platform does not exist (yet).
    pub const PLATFORM_NOT_FOUND: &str = "PlatformNotFound";
    /// The Thing's platform has not made its CA or the operator's credential yet.
    pub const PLATFORM_STARTING: &str = "PlatformStarting";
    /// A deleted thing's tokens revoked and the thing deregistered.
    pub const CLEANED_UP: &str = "CleanedUp";
}

/// Publishes Events about the operator's objects.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// Events reported by `sipmba-operator`, instance `POD_NAME` (the chart sets it).
    pub fn new(client: Client) -> Self {
        let reporter = Reporter {
            controller: "sipmba-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// A Normal Event about `object`.
    pub async fn normal<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: &str,
        note: &str,
    ) {
        self.publish(object, EventType::Normal, reason, note).await;
    }

    /// A Warning Event about `object`.
    pub async fn warning<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: &str,
        note: &str,
    ) {
        self.publish(object, EventType::Warning, reason, note).await;
    }

    async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        kind: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = Event {
            type_: kind,
            reason: reason.into(),
            note: Some(bounded(note)),
            // What the reconciler was doing: the reason says what came of it.
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an event");
        }
    }
}

/// At most 1 kB (the API server's limit on a note), cut at a character boundary.
fn bounded(note: &str) -> String {
    const MAX: usize = 1000;
    if note.len() <= MAX {
        return note.to_owned();
    }
    let mut end = MAX - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

/// Publishes through `events` if there are any (a context built without them, as the
/// reconcilers' mocked-API tests build theirs, publishes nothing).
pub async fn maybe<K: Resource<DynamicType = ()>>(
    events: Option<&Events>,
    kind: EventType,
    object: &K,
    reason: &str,
    note: &str,
) {
    if let Some(events) = events {
        events.publish(object, kind, reason, note).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_note_is_cut_within_the_limit_at_a_character_boundary() {
        let note = "é".repeat(800);
        let cut = super::bounded(&note);
        assert!(cut.len() <= 1000 && cut.ends_with("..."), "{}", cut.len());
        assert_eq!(super::bounded("short"), "short");
    }
}
