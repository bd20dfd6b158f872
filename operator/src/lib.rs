//! `sipmba-operator`: reconciles `SipMba` resources into the platform's services and topics, and
//! `Thing` resources into provisioned devices.

pub mod api;
pub mod certs;
pub mod crdgen;
pub mod desired;
pub mod events;
pub mod exposure;
pub mod leader;
pub mod metrics;
pub mod platform;
pub mod provisioning;
pub mod reconcile;
pub mod thing;
pub mod topics;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Secret, Service},
    networking::v1::Ingress,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::{Controller, WatchStreamExt, controller, reflector, watcher},
};

/// Serves `/metrics` and `/healthz` on `listen`, waits to hold the `election`'s Lease, then runs
/// the SipMba and Thing controllers (at most `thing_concurrency` Things reconciled at once) until
/// SIGTERM (releasing the Lease) or until the Lease is lost (an error: the process exits, and
/// restarts as a standby).
pub async fn run(
    listen: std::net::SocketAddr,
    mut election: leader::Election,
    thing_concurrency: u16,
) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let counted = metrics.clone();
    let count =
        tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            counted.api_request(request.method(), request.uri().query());
            request
        });
    let config = kube::Config::infer().await?;
    election
        .namespace
        .get_or_insert_with(|| config.default_namespace.clone());
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build();
    let events = events::Events::new(client.clone());
    let ctx = Arc::new(platform::Context::new(client.clone(), metrics).with_events(events.clone()));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let served = ctx.clone();
    let http = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let ctx = served.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        ctx.metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, http).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    tracing::info!(%listen, "serving /metrics and /healthz");
    let Some(mut leadership) = leader::acquire(client.clone(), &election).await? else {
        tracing::info!("stopped while standing by");
        return Ok(());
    };
    ctx.metrics.set_leader(true);
    let lost = tokio::select! {
        () = controllers(client, ctx, events, thing_concurrency) => false,
        () = leadership.lost() => true,
    };
    if lost {
        anyhow::bail!(
            "lost the lease {}/{}: another replica reconciles now",
            election.namespace(),
            election.lease
        );
    }
    leadership.release().await;
    Ok(())
}

/// The SipMba and Thing controllers, until SIGTERM.
async fn controllers(
    client: kube::Client,
    ctx: Arc<platform::Context>,
    events: events::Events,
    thing_concurrency: u16,
) {
    let platforms: Api<api::SipMba> = Api::all(client.clone());
    // Children are selected by the labels each controller's children carry, so that neither
    // caches the other's (a fleet's credentials Secrets are most of them).
    let owned = || {
        watcher::Config::default()
            .labels("app.kubernetes.io/managed-by=sipmba-operator,app.kubernetes.io/name=sipmba")
    };
    let credentials = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by=sipmba-operator,app.kubernetes.io/component={}",
        thing::CREDENTIALS_COMPONENT
    ));
    // A fleet's Things are held without their managed fields (nothing here reads them), and
    // their credentials Secrets are watched by metadata only (their data is read when needed).
    let (things_store, things_writer) = reflector::store();
    let things_stream = watcher(
        Api::<api::Thing>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|thing| thing.managed_fields_mut().clear())
    .reflect(things_writer)
    .applied_objects();
    let credentials_stream = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        credentials,
    )
    .default_backoff()
    .touched_objects();
    let things = Controller::for_stream(things_stream, things_store)
        .with_config(controller::Config::default().concurrency(thing_concurrency))
        .owns_stream(credentials_stream)
        .shutdown_on_signal()
        .run(
            thing::reconcile,
            thing::error_policy,
            Arc::new(
                thing::ThingContext::new(client.clone(), ctx.metrics.clone()).with_events(events),
            ),
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "thing reconcile ended with an error");
            }
        });
    let platforms = Controller::new(platforms, watcher::Config::default())
        .owns(Api::<Deployment>::all(client.clone()), owned())
        .owns(Api::<StatefulSet>::all(client.clone()), owned())
        .owns(Api::<Service>::all(client.clone()), owned())
        .owns(Api::<Ingress>::all(client.clone()), owned())
        .owns(Api::<ConfigMap>::all(client.clone()), owned())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned())
        .owns(Api::<Secret>::all(client.clone()), owned())
        .shutdown_on_signal()
        .run(platform::reconcile, platform::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile ended with an error");
            }
        });
    futures::join!(platforms, things);
}
