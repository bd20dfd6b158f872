//! The operator's metrics (prometheus-client): reconciles by outcome, their durations, failures
//! by category, its requests to the Kubernetes API by verb, and whether it leads — every label a
//! bounded value.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of a reconcile.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// The controller: `sipmba` or `thing`.
    pub controller: &'static str,
    /// `ok`, or the error's category.
    pub result: &'static str,
}

/// Labels naming a controller.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// The controller.
    pub controller: &'static str,
}

/// Labels of a request to the Kubernetes API.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiVerb {
    /// `get` (one object or a list), `watch`, `post`, `patch`, `put`, `delete` or `other`.
    pub verb: &'static str,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Outcome, Counter>,
    durations: Family<ControllerLabel, Histogram>,
    api_requests: Family<ApiVerb, Counter>,
    leader: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sipmba_operator");
        let reconciles = Family::<Outcome, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by controller and result (ok, or the error's category)",
            reconciles.clone(),
        );
        let durations = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take",
            durations.clone(),
        );
        let api_requests = Family::<ApiVerb, Counter>::default();
        registry.register(
            "api_requests",
            "Requests the operator made to the Kubernetes API, by verb",
            api_requests.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and reconciles, 0 while it stands by",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            durations,
            api_requests,
            leader,
        }
    }
}

impl Metrics {
    /// Records one reconcile.
    pub fn record(&self, controller: &'static str, result: &'static str, took: Duration) {
        self.reconciles
            .get_or_create(&Outcome { controller, result })
            .inc();
        self.durations
            .get_or_create(&ControllerLabel { controller })
            .observe(took.as_secs_f64());
    }

    /// Counts one request to the Kubernetes API.
    pub fn api_request(&self, method: &http::Method, query: Option<&str>) {
        let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
        let verb = match *method {
            http::Method::GET if watch => "watch",
            http::Method::GET => "get",
            http::Method::POST => "post",
            http::Method::PATCH => "patch",
            http::Method::PUT => "put",
            http::Method::DELETE => "delete",
            _ => "other",
        };
        self.api_requests.get_or_create(&ApiVerb { verb }).inc();
    }

    /// Whether this replica holds the Lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// The chart's alert rules and dashboard use only operator metrics this registry exports.
    #[test]
    fn the_charts_monitoring_uses_only_exported_operator_metrics() {
        let metrics = super::Metrics::default();
        // Families appear once they have a series.
        metrics.record("thing", "ok", std::time::Duration::from_millis(1));
        let text = metrics.encode();
        let exported: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .collect();
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/sipmba/files/monitoring"
        );
        let mut used = Vec::new();
        for file in ["alerts.yaml", "dashboard.json"] {
            let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
            for (at, _) in text.match_indices("sipmba_operator_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let base = name.strip_suffix("_total").unwrap_or(&name).to_owned();
                used.push(base);
            }
        }
        assert!(used.len() >= 3, "{used:?}");
        for name in &used {
            assert!(
                exported.contains(&name.as_str()),
                "{name} is not exported:\n{text}"
            );
        }
    }
}
