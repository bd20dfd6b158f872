//! The operator killed mid-reconcile: a second platform whose log does not answer yet has its
//! Secrets made and no workload; every operator pod is deleted, the log given its endpoints, and
//! the platform must come Ready under the new pods with its Secrets made once and exactly the
//! children it should have.

use super::*;

impl Suite {
    pub(super) async fn operator_killed(&self) -> anyhow::Result<()> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        // The second platform's log is a Service with no endpoints yet: its reconcile makes the
        // client secrets, the CA and the certificates, then waits on the log, before any
        // workload. The operator is killed there, and the log is given its endpoints.
        apply(
            &self.client,
            NS,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "log-late", "namespace": NS},
                "spec": {"ports": [{"name": "main", "port": 9092}]}
            }),
        )
        .await?;
        let mut spec = self.platform_spec("second-", 0);
        spec["queue"]["brokers"] = json!(["log-late:9092"]);
        self.apply_platform("second", spec).await?;
        let sipmbas = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "SipMba").await?;
        let uid = sipmbas.get("second").await?.uid().unwrap_or_default();
        let made_so_far = wait_for(
            "the reconcile to reach the log",
            Duration::from_secs(60),
            || async {
                let made = owned_by(&self.client, &uid).await?;
                Ok(if made.iter().any(|m| m.ends_with("-processing-tls")) {
                    Ok(made)
                } else {
                    Err(format!("{made:?}"))
                })
            },
        )
        .await?;
        if made_so_far.iter().any(|m| !m.starts_with("Secret/")) {
            bail!("workloads before the log answered: {made_so_far:?}");
        }
        let clients = secrets.get("second-clients").await?;
        let ca = secrets.get("second-ca").await?;
        let operator = self.operator_pods().await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_ns);
        for pod in &operator {
            pods.delete(
                pod,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await?;
        }
        // The log's endpoints: those of the platform's own log Service.
        let log_service = match &self.external {
            Some(_) => "kafka",
            None => "sipmba-trial-redpanda",
        };
        let slices = dynamic(&self.client, NS, "discovery.k8s.io", "v1", "EndpointSlice").await?;
        let slice = slices
            .list(
                &ListParams::default().labels(&format!("kubernetes.io/service-name={log_service}")),
            )
            .await?
            .items
            .into_iter()
            .next()
            .with_context(|| format!("no endpoints of {log_service}"))?;
        apply(
            &self.client,
            NS,
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "log-late-1", "namespace": NS,
                             "labels": {"kubernetes.io/service-name": "log-late"}},
                "addressType": "IPv4",
                "endpoints": slice.data["endpoints"].as_array().into_iter().flatten()
                    .map(|e| json!({"addresses": e["addresses"]})).collect::<Vec<_>>(),
                "ports": [{"name": "main", "port": slice.data["ports"][0]["port"], "protocol": "TCP"}]
            }),
        )
        .await?;
        println!(
            "  killed {operator:?} with {} children made: {made_so_far:?}",
            made_so_far.len()
        );
        wait_for(
            "the second platform Ready after the restart",
            Duration::from_secs(240),
            || async {
                let platform = sipmbas.get("second").await?;
                let ready = converged(&platform);
                let pods = self.operator_pods().await?;
                Ok(if ready && pods.iter().all(|p| !operator.contains(p)) {
                    Ok(())
                } else {
                    Err(format!(
                        "operator pods {pods:?}, Ready {:?}",
                        condition(&platform, "Ready")
                    ))
                })
            },
        )
        .await?;
        let children = owned_by(&self.client, &uid).await?;
        let mut expected = vec![
            "Secret/second-ca".to_owned(),
            "Secret/second-clients".to_owned(),
        ];
        for component in COMPONENTS {
            let name = format!("second-{component}");
            expected.push(format!("ConfigMap/{name}"));
            expected.push(format!("Service/{name}"));
            expected.push(format!("PodDisruptionBudget/{name}"));
            expected.push(format!("Secret/{name}-tls"));
            expected.push(if component == "processing" {
                format!("StatefulSet/{name}")
            } else {
                format!("Deployment/{name}")
            });
        }
        expected.sort();
        if children != expected {
            bail!("the second platform's children: {children:?}, expected {expected:?}");
        }
        for before in [clients, ca] {
            let after = secrets.get(&before.name_any()).await?;
            if after.uid() != before.uid() || after.data != before.data {
                bail!("{} was made again after the restart", before.name_any());
            }
        }
        println!(
            "  {} children, each once; the client secrets and the CA kept",
            children.len()
        );
        Ok(())
    }
}
