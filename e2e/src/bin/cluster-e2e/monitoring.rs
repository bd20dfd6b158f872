//! The chart's monitoring against the Prometheus Operator's own CRDs (the upstream files of the
//! release `.ci/cluster-e2e` names, installed as users install them): the API server admits the
//! chart's ServiceMonitor, PodMonitor and PrometheusRule under strict field validation, refuses
//! what their schemas refuse, and their selectors pick what Prometheus must scrape — every
//! component's Service once (not the Services `spec.exposure` adds) and both operator pods.

use super::*;

/// The Prometheus Operator's CRDs the chart's monitoring objects need.
const CRDS: [&str; 3] = ["servicemonitors", "podmonitors", "prometheusrules"];
/// The group of those CRDs.
const GROUP: &str = "monitoring.coreos.com";

impl Suite {
    /// Applies the Prometheus Operator's CRDs from `dir` (its `example/prometheus-operator-crd`)
    /// and waits until the API server serves them.
    pub(super) async fn prometheus_crds(&self, dir: &str) -> anyhow::Result<()> {
        for crd in CRDS {
            let file = format!("{dir}/{GROUP}_{crd}.yaml");
            // Server-side: the PrometheusRule CRD is too large for the last-applied annotation.
            self.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &file])
                .await?;
        }
        let names: Vec<String> = CRDS.iter().map(|c| format!("crd/{c}.{GROUP}")).collect();
        let mut args = vec!["wait", "--for", "condition=Established", "--timeout", "60s"];
        args.extend(names.iter().map(String::as_str));
        self.kubectl(&args).await?;
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in CRDS {
            let crd = crds.get(&format!("{crd}.{GROUP}")).await?;
            let version = crd
                .annotations()
                .get("operator.prometheus.io/version")
                .cloned()
                .unwrap_or_default();
            println!("  {} (Prometheus Operator {version})", crd.name_any());
        }
        Ok(())
    }

    /// The monitoring objects of the installed release: admitted, strictly valid, and selecting
    /// what they should. Runs while the platform `demo` is exposed.
    pub(super) async fn monitoring(&self) -> anyhow::Result<()> {
        let manifest = self
            .helm(&["get", "manifest", RELEASE, "-n", &self.operator_ns])
            .await?;
        let mut objects = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&manifest) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
            if value["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with(GROUP))
            {
                objects.push(value);
            }
        }
        let mut kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        kinds.sort();
        if kinds != ["PodMonitor", "PrometheusRule", "ServiceMonitor"] {
            bail!("the release's monitoring objects are {kinds:?}");
        }
        let rendered = |kind: &str| {
            objects
                .iter()
                .find(|o| o["kind"] == kind)
                .cloned()
                .with_context(|| format!("the release has no {kind}"))
        };
        let (service_monitor, pod_monitor, rule) = (
            rendered("ServiceMonitor")?,
            rendered("PodMonitor")?,
            rendered("PrometheusRule")?,
        );
        // Each as rendered, applied again with strict field validation: an unknown field (which
        // the API server would otherwise drop without a word) or a wrong type is an error.
        for object in &objects {
            let api = dynamic_for(&self.client, &self.operator_ns, object).await?;
            strict_dry_run(&api, object)
                .await
                .with_context(|| format!("the chart's {}", object["kind"]))?;
        }
        println!(
            "  the chart's ServiceMonitor, PodMonitor and PrometheusRule pass strict validation"
        );
        // The check can fail: what the schemas refuse is refused.
        let monitors = dynamic_for(&self.client, &self.operator_ns, &service_monitor).await?;
        for (field, value, expected) in [
            ("honorLabel", json!(true), "endpoints[0].honorLabel"),
            (
                "interval",
                json!("30 seconds"),
                "spec.endpoints[0].interval",
            ),
        ] {
            let mut broken = service_monitor.clone();
            broken["spec"]["endpoints"][0][field] = value;
            match strict_dry_run(&monitors, &broken).await {
                Ok(()) => bail!("a ServiceMonitor with endpoints[0].{field} was admitted"),
                Err(kube::Error::Api(e)) if e.message.contains(expected) => {
                    println!("  endpoints[0].{field} refused ({}): {}", e.code, e.message);
                }
                Err(e) => bail!("endpoints[0].{field}: {e}, not {expected:?}"),
            }
        }

        // What Prometheus will scrape: the stored ServiceMonitor's selector, evaluated by the API
        // server, in the namespaces it names.
        let stored = async |object: &serde_json::Value| {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let api = dynamic_for(&self.client, &self.operator_ns, object).await?;
            anyhow::Ok(api.get(name).await?.data)
        };
        let monitor = stored(&service_monitor).await?;
        let namespaces = &monitor["spec"]["namespaceSelector"]["matchNames"];
        if !namespaces
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n == NS))
        {
            bail!("the ServiceMonitor does not look in {NS}: {namespaces}");
        }
        let selector = label_selector(&monitor["spec"]["selector"])?;
        let port = monitor["spec"]["endpoints"][0]["port"]
            .as_str()
            .unwrap_or_default();
        let services: Api<Service> = Api::namespaced(self.client.clone(), NS);
        let all = services
            .list(&ListParams::default().labels("app.kubernetes.io/instance=demo"))
            .await?
            .items;
        let selected = services
            .list(
                &ListParams::default()
                    .labels(&format!("{selector},app.kubernetes.io/instance=demo")),
            )
            .await?
            .items;
        let mut components: Vec<String> = Vec::new();
        for service in &selected {
            let labels = service.labels();
            let has_port = service
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .is_some_and(|ports| ports.iter().any(|p| p.name.as_deref() == Some(port)));
            if !has_port {
                bail!("the Service {} has no port {port}", service.name_any());
            }
            components.push(
                labels
                    .get("app.kubernetes.io/component")
                    .cloned()
                    .with_context(|| format!("{} has no component label", service.name_any()))?,
            );
        }
        components.sort();
        let mut expected: Vec<String> = COMPONENTS.map(String::from).to_vec();
        expected.sort();
        if components != expected {
            bail!(
                "the ServiceMonitor selects the Services of {components:?} (of {:?}), not one of each component",
                all.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
            );
        }
        let left_out: Vec<String> = all
            .iter()
            .filter(|s| !selected.iter().any(|t| t.name_any() == s.name_any()))
            .map(ResourceExt::name_any)
            .collect();
        if left_out.is_empty() {
            bail!("the platform is not exposed: the step proves nothing about exposure Services");
        }
        println!(
            "  the ServiceMonitor ({selector}) selects one Service per component, port {port}; left out: {left_out:?}"
        );

        let pod_monitor = stored(&pod_monitor).await?;
        let selector = label_selector(&pod_monitor["spec"]["selector"])?;
        let port = pod_monitor["spec"]["podMetricsEndpoints"][0]["port"]
            .as_str()
            .unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_ns);
        let operator = pods
            .list(&ListParams::default().labels_from(&selector))
            .await?
            .items;
        let with_port = operator
            .iter()
            .filter(|pod| {
                pod.spec.iter().flat_map(|s| &s.containers).any(|c| {
                    c.ports
                        .iter()
                        .flatten()
                        .any(|p| p.name.as_deref() == Some(port))
                })
            })
            .count();
        if operator.len() != 2 || with_port != 2 {
            bail!(
                "the PodMonitor selects {} pods, {with_port} with a port {port}; the operator runs 2",
                operator.len()
            );
        }
        println!("  the PodMonitor selects both operator pods, port {port}");

        // The PrometheusRule holds every alert of the rule file promtool checks.
        let rule = stored(&rule).await?;
        let alerts = |groups: &serde_json::Value| -> Vec<String> {
            let mut names: Vec<String> = groups
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .filter_map(|r| r["alert"].as_str().map(String::from))
                .collect();
            names.sort();
            names
        };
        let file: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(format!(
            "{}/files/monitoring/alerts.yaml",
            self.chart
        ))?)?;
        let (stored_alerts, file_alerts) =
            (alerts(&rule["spec"]["groups"]), alerts(&file["groups"]));
        if stored_alerts.is_empty() || stored_alerts != file_alerts {
            bail!("the PrometheusRule holds {stored_alerts:?}, the rule file {file_alerts:?}");
        }
        println!(
            "  the PrometheusRule holds the rule file's {} alerts",
            stored_alerts.len()
        );
        Ok(())
    }
}

/// A server-side apply of `object` through `api` (its kind's) that stores nothing, with strict
/// field validation.
async fn strict_dry_run(
    api: &Api<DynamicObject>,
    object: &serde_json::Value,
) -> Result<(), kube::Error> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply(MANAGER)
            .force()
            .dry_run()
            .validation_strict(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

/// A `LabelSelector` (JSON) as the selector the API server evaluates.
fn label_selector(value: &serde_json::Value) -> anyhow::Result<kube::core::Selector> {
    let selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
        serde_json::from_value(value.clone())?;
    Ok(selector.try_into()?)
}
