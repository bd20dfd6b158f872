//! What the pods use: each container's CPU and memory from the kubelet's summary
//! (`/api/v1/nodes/<node>/proxy/stats/summary`: CPU over the kubelet's last sampling window,
//! memory as the working set, which is what a memory limit is enforced against), printed beside
//! the requests and limits it runs with. The operator's and the platform's containers must have
//! CPU and memory requests and a memory limit, and use less memory than their limit.

use k8s_openapi::api::core::v1::Node;

use super::*;

impl Suite {
    pub(super) async fn usage(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut namespaces = vec![NS];
        if self.operator_ns != NS {
            namespaces.push(&self.operator_ns);
        }
        let mut problems = Vec::new();
        for node in nodes.list(&ListParams::default()).await?.items {
            let text = self
                .client
                .request_text(
                    http::Request::get(format!(
                        "/api/v1/nodes/{}/proxy/stats/summary",
                        node.name_any()
                    ))
                    .body(Vec::new())?,
                )
                .await?;
            let summary: serde_json::Value = serde_json::from_str(&text)?;
            for stats in summary["pods"].as_array().into_iter().flatten() {
                let ns = stats["podRef"]["namespace"].as_str().unwrap_or_default();
                let name = stats["podRef"]["name"].as_str().unwrap_or_default();
                if !namespaces.contains(&ns) {
                    continue;
                }
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                let Some(pod) = pods.get_opt(name).await? else {
                    continue;
                };
                let labels = pod.labels();
                let ours = labels
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str)
                    == Some("sipmba-operator")
                    || labels
                        .get("app.kubernetes.io/component")
                        .map(String::as_str)
                        == Some("operator");
                for used in stats["containers"].as_array().into_iter().flatten() {
                    let container = used["name"].as_str().unwrap_or_default();
                    let cpu = used["cpu"]["usageNanoCores"].as_f64().unwrap_or(0.0) / 1e6;
                    let memory = used["memory"]["workingSetBytes"].as_f64().unwrap_or(0.0);
                    let resources = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.iter().find(|c| c.name == container))
                        .and_then(|c| c.resources.clone())
                        .unwrap_or_default();
                    let get = |map: &Option<
                        BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                    >,
                               key: &str| {
                        map.as_ref().and_then(|m| m.get(key)).map(|q| q.0.clone())
                    };
                    let cpu_request = get(&resources.requests, "cpu");
                    let memory_request = get(&resources.requests, "memory");
                    let memory_limit = get(&resources.limits, "memory");
                    println!(
                        "  {ns}/{name} {container}: CPU {cpu:.1}m (request {}), memory {:.1} MiB \
                         (request {}, limit {})",
                        cpu_request.as_deref().unwrap_or("-"),
                        memory / 1_048_576.0,
                        memory_request.as_deref().unwrap_or("-"),
                        memory_limit.as_deref().unwrap_or("-"),
                    );
                    if !ours {
                        continue;
                    }
                    match (
                        cpu_request,
                        memory_request,
                        memory_limit.as_deref().map(bytes),
                    ) {
                        (Some(_), Some(_), Some(Some(limit))) if memory < limit => {}
                        (Some(_), Some(_), Some(Some(limit))) => problems.push(format!(
                            "{name} {container} uses {memory} bytes of its {limit}"
                        )),
                        _ => problems.push(format!(
                            "{name} {container} lacks a CPU or memory request or a memory limit"
                        )),
                    }
                }
            }
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(())
    }
}

/// A memory quantity in bytes (`64Mi`, `1Gi`, `500M`, `1048576`).
fn bytes(quantity: &str) -> Option<f64> {
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, unit) = quantity.split_at(split);
    let factor = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1_048_576.0,
        "Gi" => 1_073_741_824.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * factor)
}
