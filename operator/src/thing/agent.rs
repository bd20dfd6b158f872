//! The Thing's agent: whether it runs outside the cluster, the addresses it is given for
//! Collect and sso, and the delivery of its credentials, token and CA bundle.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use sipmba_proto::v1 as pb;
use uuid::Uuid;

use super::{ThingContext, ThingError};
use crate::{
    api::{SipMba, Thing},
    desired::{self, Component},
    provisioning::{self, PlatformAccess, ProvisionError},
};

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
pub(super) async fn deliver(
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
