//! Prometheus metrics: one registry per process, served at `/metrics`, and a tower layer that
//! counts gRPC requests with bounded labels.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use http::{Request, Response};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use tower::{Layer, Service};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// The metrics of one server process.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    known: Arc<PathLabel>,
}

/// Maps a request path to its metric label; `None` for paths that are not served.
type PathLabel = dyn Fn(&str) -> Option<&'static str> + Send + Sync;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with the request metrics; `register` adds the services' own metrics, and
    /// `known` maps a request path to its label (unknown paths count as `other`).
    pub fn new(
        known: impl Fn(&str) -> Option<&'static str> + Send + Sync + 'static,
        register: impl FnOnce(&mut Registry),
    ) -> Self {
        let mut registry = Registry::with_prefix("sipmba");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC requests answered, by method and status code",
            requests.clone(),
        );
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        });
        registry.register(
            "grpc_request_duration_seconds",
            "Time to the response headers of gRPC requests, by method",
            latency.clone(),
        );
        register(&mut registry);
        Self {
            registry: Arc::new(registry),
            requests,
            latency,
            known: Arc::new(known),
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    fn label(&self, path: &str) -> &'static str {
        (self.known)(path).unwrap_or("other")
    }
}

/// Counts gRPC requests. The status code is read from the response headers, where tonic puts it
/// for every unary error (trailers-only responses); a successful or streaming response counts as
/// `0` here and its trailer status is not inspected.
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl MetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service produced by [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, RB> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let method = self.metrics.label(req.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            if is_grpc {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .map_or(0, |v| tonic::Code::from_bytes(v.as_bytes()) as i32);
                metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        method,
                        code: code_label(code),
                    })
                    .inc();
                metrics
                    .latency
                    .get_or_create(&MethodLabels { method })
                    .observe(started.elapsed().as_secs_f64());
            }
            Ok(response)
        })
    }
}

fn code_label(code: i32) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| CODES.get(i))
        .copied()
        .unwrap_or("2")
}
