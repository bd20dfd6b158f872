//! One listener per process serving gRPC (the services, health, reflection), the same services as
//! gRPC-Web for browsers (translated by tonic-web), and HTTP (`/metrics`, `/healthz`, `/readyz`,
//! and whatever a service adds), over TLS unless plaintext was asked for.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use sea_orm::DatabaseConnection;
use sipmba_auth::{AccessPolicy, AuthLayer, Verifier};
use tokio::net::TcpListener;
use tonic::{
    body::Body,
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::server::TcpIncoming,
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::ServiceExt;

use crate::{
    TlsFiles,
    metrics::{Metrics, MetricsLayer},
    shutdown::Shutdown,
};

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(String),
}

/// What a server process serves, gathered from its services.
pub struct Server {
    routes: RoutesBuilder,
    grpc_names: Vec<&'static str>,
    policy: AccessPolicy,
    http: Router,
    probes: Vec<(Option<Vec<&'static str>>, Probe)>,
    recheck: Arc<tokio::sync::Notify>,
    descriptor_sets: Vec<&'static [u8]>,
    metric_registrations: Vec<MetricRegistration>,
}

/// Adds a service's own metrics to the process registry.
pub type MetricRegistration = Box<dyn FnOnce(&mut prometheus_client::registry::Registry) + Send>;

/// A readiness check: true while a dependency is usable.
pub type Probe = Arc<dyn Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("grpc", &self.grpc_names)
            .finish_non_exhaustive()
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// An empty server; reflection knows the `sipmba.v1` descriptors.
    pub fn new() -> Self {
        Self {
            routes: RoutesBuilder::default(),
            grpc_names: Vec::new(),
            policy: AccessPolicy::new(),
            http: Router::new(),
            probes: Vec::new(),
            recheck: Arc::new(tokio::sync::Notify::new()),
            metric_registrations: Vec::new(),
            descriptor_sets: vec![sipmba_proto::FILE_DESCRIPTOR_SET],
        }
    }

    /// Adds a gRPC service; it reports in health under its full name.
    pub fn add_service<S>(&mut self, svc: S) -> &mut Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: IntoResponse,
        S::Future: Send + 'static,
    {
        self.grpc_names.push(S::NAME);
        self.routes.add_service(svc);
        self
    }

    /// Declares what the added services' paths need.
    pub fn access(
        &mut self,
        routes: impl IntoIterator<Item = (&'static str, sipmba_auth::Access)>,
    ) -> &mut Self {
        self.policy = std::mem::take(&mut self.policy).routes(routes);
        self
    }

    /// Adds HTTP routes (served without the gRPC token check).
    pub fn http(&mut self, router: Router) -> &mut Self {
        self.http = std::mem::take(&mut self.http).merge(router);
        self
    }

    /// A database the services need: health says NOT_SERVING until it answers.
    pub fn requires_database(&mut self, db: DatabaseConnection) -> &mut Self {
        self.requires(Arc::new(move || {
            let db = db.clone();
            Box::pin(async move { crate::db::is_reachable(&db).await })
        }))
    }

    /// Registers a service's metrics (served at `/metrics` with the `sipmba_` prefix).
    pub fn metrics(
        &mut self,
        register: impl FnOnce(&mut prometheus_client::registry::Registry) + Send + 'static,
    ) -> &mut Self {
        self.metric_registrations.push(Box::new(register));
        self
    }

    /// Any other readiness condition (migrations applied, keys loaded).
    pub fn requires(&mut self, probe: Probe) -> &mut Self {
        self.probes.push((None, probe));
        self
    }

    /// A readiness condition of some services only (by full gRPC name, e.g. the log for
    /// `sipmba.v1.CollectService`): while it fails they report NOT_SERVING, and so do the
    /// process as a whole (`""`, `/readyz`), while the other services stay SERVING.
    pub fn requires_for(&mut self, services: &[&'static str], probe: Probe) -> &mut Self {
        self.probes.push((Some(services.to_vec()), probe));
        self
    }

    /// Wakes the readiness check at once when notified (it checks every few seconds otherwise):
    /// for a dependency that knows when it goes down or comes back.
    pub fn readiness_recheck(&self) -> Arc<tokio::sync::Notify> {
        self.recheck.clone()
    }

    /// Serves on `listener` until `shutdown`, then lets in-flight calls finish for `grace`.
    pub async fn run(
        self,
        listener: TcpListener,
        tls: Option<&TlsFiles>,
        verifier: Verifier,
        shutdown: Shutdown,
        grace: Duration,
    ) -> Result<(), ServeError> {
        let Server {
            mut routes,
            grpc_names,
            policy,
            http,
            probes,
            recheck,
            descriptor_sets,
            metric_registrations,
        } = self;

        let (reporter, health) = tonic_health::server::health_reporter();
        for name in grpc_names.iter().copied().chain([""]) {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        routes.add_service(health);
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for set in &descriptor_sets {
            reflection = reflection.register_encoded_file_descriptor_set(set);
        }
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let reflection_v1alpha = descriptor_sets.iter().fold(reflection_v1alpha, |b, set| {
            b.register_encoded_file_descriptor_set(set)
        });
        routes.add_service(
            reflection
                .build_v1()
                .map_err(|e| ServeError::Reflection(e.to_string()))?,
        );
        routes.add_service(
            reflection_v1alpha
                .build_v1alpha()
                .map_err(|e| ServeError::Reflection(e.to_string()))?,
        );

        let ready = Arc::new(AtomicBool::new(false));
        let ready_gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        tokio::spawn(watch_readiness(
            reporter,
            grpc_names,
            probes,
            recheck,
            (ready.clone(), ready_gauge.clone()),
            shutdown.clone(),
        ));

        let policy = Arc::new(policy);
        let known = policy.clone();
        let metrics = Metrics::new(
            move |path| known.known_path(path),
            |registry| {
                registry.register(
                    "ready",
                    "1 while every dependency of this process answers (what /readyz reports), 0 otherwise",
                    ready_gauge,
                );
                for register in metric_registrations {
                    register(registry);
                }
            },
        );
        let grpc = routes
            .routes()
            .into_axum_router()
            .layer(AuthLayer::new(verifier, (*policy).clone()));
        // gRPC-Web calls (the web console's) become gRPC calls before the token check: the same
        // check, the same handlers, their answers turned back into gRPC-Web. Every path the
        // HTTP routes do not take is the services' (a request that is no gRPC call gets a 404).
        let grpc = tower::ServiceBuilder::new()
            .layer(tonic_web::GrpcWebLayer::new())
            .map_response(|r: http::Response<axum::body::Body>| r.map(Body::new))
            .service(grpc);
        let services = tower::service_fn(move |request: http::Request<axum::body::Body>| {
            let grpc = grpc.clone();
            async move {
                let is_grpc = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|t| t.starts_with("application/grpc"));
                if !is_grpc {
                    return Ok::<_, Infallible>(
                        (StatusCode::NOT_FOUND, "not found").into_response(),
                    );
                }
                match grpc.oneshot(request).await {
                    Ok(response) => Ok(response.into_response()),
                    Err(never) => match never {},
                }
            }
        });
        let app = http
            .fallback_service(services)
            .merge(
                Router::new()
                    .route("/metrics", get(metrics_handler))
                    .with_state(metrics.clone()),
            )
            .merge(
                Router::new()
                    .route("/healthz", get(|| async { "ok" }))
                    .route("/readyz", get(readyz))
                    .with_state(ready),
            )
            .layer(MetricsLayer::new(metrics));

        let local = listener.local_addr().ok();
        let builder = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(Routes::from(app));
        let stop = shutdown.clone().wait();
        let reload_until = shutdown.clone();
        let serve = async move {
            match tls {
                Some(files) => {
                    let cert = Arc::new(crate::tls::ReloadingCert::load(files)?);
                    let acceptor = crate::tls::acceptor(cert.clone())?;
                    tokio::spawn(cert.watch(reload_until));
                    tracing::info!(addr = ?local, tls = true, "serving");
                    builder
                        .serve_with_incoming_shutdown(
                            crate::tls::incoming(listener, acceptor),
                            stop,
                        )
                        .await?;
                }
                None => {
                    tracing::info!(addr = ?local, tls = false, "serving (plaintext)");
                    let incoming = TcpIncoming::from(listener)
                        .with_nodelay(Some(true))
                        .with_keepalive(Some(KEEPALIVE_IDLE))
                        .with_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                        .with_keepalive_retries(Some(KEEPALIVE_PROBES));
                    builder.serve_with_incoming_shutdown(incoming, stop).await?;
                }
            }
            Ok::<_, ServeError>(())
        };
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => result,
            () = async { shutdown.wait().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "in-flight calls did not finish within the grace period; stopping");
                Ok(())
            }
        }
    }
}

/// A connection whose peer is gone without closing it (a device that lost power or its network)
/// is found by the kernel's TCP keep-alive: probes after [`KEEPALIVE_IDLE`] of silence, one every
/// [`KEEPALIVE_INTERVAL`], the connection dropped after [`KEEPALIVE_PROBES`] unanswered — within
/// a minute. The kernel answers them without waking the server; HTTP/2 pings every 30 s, used
/// before, woke it for every idle connection (over 1 % of a core with 10,000 device sessions
/// open, docs/fleet.md). The probes also keep a NAT's mapping of an idle connection alive.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_PROBES: u32 = 3;

/// Sets the keep-alive of [`KEEPALIVE_IDLE`] on an accepted connection (the TLS listener's; the
/// plaintext one is tonic's, set alike).
pub(crate) fn keep_alive(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(stream, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(stream, KEEPALIVE_PROBES)?;
    Ok(())
}

async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn readyz(State(ready): State<Arc<AtomicBool>>) -> impl IntoResponse {
    if ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: a dependency is not answering",
        )
    }
}

/// Reports SERVING for a service while every probe it depends on passes (the process-wide
/// ones and its own), NOT_SERVING otherwise; the process as a whole (`""`) is SERVING while every
/// probe passes. Checks quickly until everything passes, then every few seconds, and at once when
/// `recheck` is notified.
async fn watch_readiness(
    reporter: HealthReporter,
    names: Vec<&'static str>,
    probes: Vec<(Option<Vec<&'static str>>, Probe)>,
    recheck: Arc<tokio::sync::Notify>,
    (ready, ready_gauge): (Arc<AtomicBool>, prometheus_client::metrics::gauge::Gauge),
    shutdown: Shutdown,
) {
    let mut last: Option<Vec<bool>> = None;
    loop {
        if shutdown.is_triggered() {
            for name in names.iter().copied().chain([""]) {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            ready.store(false, Ordering::Relaxed);
            ready_gauge.set(0);
            return;
        }
        let mut passed = Vec::with_capacity(probes.len());
        for (_, probe) in &probes {
            passed.push(probe().await);
        }
        let serves = |name: &str| {
            probes.iter().zip(&passed).all(|((scope, _), ok)| {
                *ok || scope
                    .as_ref()
                    .is_some_and(|services| !name.is_empty() && !services.contains(&name))
            })
        };
        let states: Vec<bool> = names.iter().copied().chain([""]).map(serves).collect();
        let all = passed.iter().all(|ok| *ok);
        if last.as_ref() != Some(&states) {
            for (name, ok) in names.iter().copied().chain([""]).zip(&states) {
                let status = if *ok {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status(name, status).await;
            }
            ready.store(all, Ordering::Relaxed);
            ready_gauge.set(i64::from(all));
            if all {
                tracing::info!("dependencies reachable: serving");
            } else {
                let down: Vec<&str> = names
                    .iter()
                    .copied()
                    .zip(&states)
                    .filter(|(_, ok)| !**ok)
                    .map(|(name, _)| name)
                    .collect();
                tracing::warn!(services = ?down, "a dependency is not ready: NOT_SERVING");
            }
            last = Some(states);
        }
        let pause = if all {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = recheck.notified() => {}
            () = shutdown.clone().wait() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

    #[tokio::test]
    async fn an_accepted_connection_is_probed_by_the_kernel_when_silent() {
        use rustix::net::sockopt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!sockopt::socket_keepalive(&accepted).unwrap());
        super::keep_alive(&accepted).unwrap();
        assert!(sockopt::socket_keepalive(&accepted).unwrap());
        assert_eq!(
            sockopt::tcp_keepidle(&accepted).unwrap(),
            super::KEEPALIVE_IDLE
        );
        assert_eq!(
            sockopt::tcp_keepintvl(&accepted).unwrap(),
            super::KEEPALIVE_INTERVAL
        );
        assert_eq!(
            sockopt::tcp_keepcnt(&accepted).unwrap(),
            super::KEEPALIVE_PROBES
        );
    }
}
