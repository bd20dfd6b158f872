//! The steps on the chart, the operator and the platforms.

use super::*;

impl Suite {
    /// Applies the `SipMba` `name` with `spec`.
    pub(super) async fn apply_platform(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> anyhow::Result<()> {
        apply(
            &self.client,
            NS,
            json!({
                "apiVersion": "sipmba.io/v1alpha1", "kind": "SipMba",
                "metadata": {"name": name, "namespace": NS}, "spec": spec
            }),
        )
        .await
    }

    /// The values the suite installs and upgrades the chart with: its images, the trial
    /// database and log when there are no external ones, and the NetworkPolicies for the
    /// platform's namespace with the egress to its database and log (the bridge CNI here does not
    /// enforce them: the API server checks them, and they are in place where a CNI plugin does);
    /// with the Prometheus Operator's CRDs, the chart's monitoring for the platform's namespace.
    pub(super) fn chart_values(&self) -> Vec<String> {
        let mut args = vec![
            "--set".to_owned(),
            format!("operator.image.tag={}", self.tag),
            "--set".into(),
            "operator.image.pullPolicy=IfNotPresent".into(),
        ];
        if self.external.is_none() {
            args.extend(
                ["--set", "trial.enabled=true", "--set", "trial.storage=1Gi"].map(String::from),
            );
        }
        let ports: Vec<u16> = match &self.external {
            Some(e) => [&e.database, &e.kafka]
                .iter()
                .filter_map(|a| a.rsplit_once(':')?.1.parse().ok())
                .collect(),
            None => vec![5432, 9092],
        };
        let egress = json!([{"ports": ports.iter()
            .map(|p| json!({"port": p, "protocol": "TCP"})).collect::<Vec<_>>()}]);
        if self.prometheus_crds.is_some() {
            args.extend(
                [
                    "--set",
                    "monitoring.serviceMonitor.enabled=true",
                    "--set",
                    &format!("monitoring.serviceMonitor.namespaces={{{NS}}}"),
                    "--set",
                    "monitoring.serviceMonitor.labels.release=prometheus",
                    "--set",
                    "monitoring.rules.enabled=true",
                    "--set",
                    "monitoring.dashboard.enabled=true",
                ]
                .map(String::from),
            );
        }
        args.extend([
            "--set".into(),
            "networkPolicy.enabled=true".into(),
            "--set".into(),
            format!("networkPolicy.namespaces={{{NS}}}"),
            "--set-json".into(),
            format!("networkPolicy.egress={egress}"),
        ]);
        args
    }

    pub(super) async fn install(&self) -> anyhow::Result<()> {
        let values = self.chart_values();
        let mut args = vec![
            "install",
            RELEASE,
            &self.chart,
            "-n",
            &self.operator_ns,
            "--wait",
            "--timeout",
            "5m",
        ];
        args.extend(values.iter().map(String::as_str));
        self.helm(&args).await?;
        let policies = dynamic(&self.client, NS, "networking.k8s.io", "v1", "NetworkPolicy")
            .await?
            .list(&ListParams::default())
            .await?
            .items
            .len();
        if policies < 3 {
            bail!("{policies} NetworkPolicies in {NS}, not the chart's 3");
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_ns);
        let operator = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
            .await?
            .items;
        // The chart's default: two replicas, one leading.
        if operator.len() != 2 {
            bail!("{} operator pods, not 2", operator.len());
        }
        for pod in &operator {
            let spec = pod.spec.clone().unwrap_or_default();
            if spec.service_account_name.as_deref() != Some(OPERATOR) {
                bail!(
                    "the operator runs as {:?}, not {OPERATOR}",
                    spec.service_account_name
                );
            }
            if !pod_ready(pod) {
                bail!("the operator pod {} is not Ready", pod.name_any());
            }
        }
        let leader = wait_for(
            "a replica holding the lease",
            Duration::from_secs(60),
            || async {
                Ok(match self.leader().await? {
                    Some(leader) => Ok(leader),
                    None => Err("no holder".to_owned()),
                })
            },
        )
        .await?;
        println!(
            "  operator pods {:?} Ready, ServiceAccount {OPERATOR}; {leader} holds the lease",
            operator
                .iter()
                .map(ResourceExt::name_any)
                .collect::<Vec<_>>()
        );
        // They were admitted under the restricted Pod Security Standard, which is enforced.
        let probe: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "e2e-privileged"},
            "spec": {"containers": [{"name": "probe", "image": "probe",
                                     "securityContext": {"privileged": true}}]}
        }))?;
        let dry_run = kube::api::PostParams {
            dry_run: true,
            ..kube::api::PostParams::default()
        };
        match pods.create(&dry_run, &probe).await {
            Err(kube::Error::Api(e)) if e.message.contains("violates PodSecurity") => {
                println!("  {}: {}", self.operator_ns, e.message);
            }
            other => bail!(
                "a privileged pod was not refused in {} (restricted Pod Security): {other:?}",
                self.operator_ns
            ),
        }
        Ok(())
    }

    pub(super) fn platform_spec(&self, topic_prefix: &str, replicas: i32) -> serde_json::Value {
        let (database, brokers) = match &self.external {
            Some(_) => (
                json!({"urlSecretRef": {"name": "e2e-database", "key": "url"}}),
                json!(["kafka:9092"]),
            ),
            None => (
                json!({"urlSecretRef": {"name": "sipmba-trial-postgresql", "key": "url"}}),
                json!(["sipmba-trial-redpanda:9092"]),
            ),
        };
        let one = json!({"replicas": replicas});
        json!({
            "image": format!("ghcr.io/sipmba/sipmba:{}", self.tag),
            "imagePullPolicy": "IfNotPresent",
            "database": database,
            "queue": {"brokers": brokers, "topicPrefix": topic_prefix,
                      "telemetryPartitions": 2, "commandPartitions": 2},
            "services": {"sso": one, "objects": one, "collect": one, "control": one,
                         "processing": one}
        })
    }

    /// The external database and log as Services without selectors, and the database's URL.
    pub(super) async fn externals(&self, external: &External) -> anyhow::Result<()> {
        for (name, addr, port) in [
            ("postgresql", external.database.as_str(), 5432),
            ("kafka", external.kafka.as_str(), 9092),
        ] {
            let (ip, target) = addr
                .rsplit_once(':')
                .with_context(|| format!("{addr} is not ip:port"))?;
            let target: i32 = target.parse()?;
            apply(
                &self.client,
                NS,
                json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {"ports": [{"name": "main", "port": port, "targetPort": target}]}
                }),
            )
            .await?;
            apply(
                &self.client,
                NS,
                json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-external"), "namespace": NS,
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": [ip]}],
                    "ports": [{"name": "main", "port": target, "protocol": "TCP"}]
                }),
            )
            .await?;
        }
        apply(
            &self.client,
            NS,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "e2e-database", "namespace": NS},
                "stringData": {"url": external.database_url}
            }),
        )
        .await
    }

    pub(super) async fn platform(&self) -> anyhow::Result<()> {
        if let Some(external) = &self.external {
            self.externals(external).await?;
        }
        self.apply_platform("demo", self.platform_spec("", 1))
            .await?;
        let sipmbas = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "SipMba").await?;
        let said = std::cell::RefCell::new(String::new());
        wait_for("the platform to be Ready", Duration::from_secs(590), || {
            let sipmbas = sipmbas.clone();
            let said = &said;
            async move {
                let platform = sipmbas.get("demo").await?;
                let (ready, message) = condition(&platform, "Ready").unwrap_or_default();
                if message != *said.borrow() {
                    println!("  platform: {message}");
                    *said.borrow_mut() = message.clone();
                }
                Ok(if ready { Ok(()) } else { Err(message) })
            }
        })
        .await?;
        for component in COMPONENTS {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
            let list = pods
                .list(&ListParams::default().labels(&format!(
                    "app.kubernetes.io/instance=demo,app.kubernetes.io/component={component}"
                )))
                .await?;
            let ready = list.items.iter().filter(|p| pod_ready(p)).count();
            if ready != 1 {
                bail!("{component}: {ready} pods Ready, not 1");
            }
        }
        println!("  every component has its pod Ready");
        match &self.external {
            Some(external) => {
                let client = rskafka::client::ClientBuilder::new(vec![external.kafka.clone()])
                    .build()
                    .await?;
                let topics: BTreeMap<String, usize> = client
                    .list_topics()
                    .await?
                    .into_iter()
                    .map(|t| (t.name, t.partitions.len()))
                    .collect();
                for topic in [
                    "sipmba.telemetry",
                    "sipmba.commands",
                    "sipmba.command-events",
                ] {
                    match topics.get(topic) {
                        Some(2) => println!("  topic {topic}: 2 partitions"),
                        other => bail!("topic {topic}: {other:?} partitions (all: {topics:?})"),
                    }
                }
            }
            None => println!(
                "  topics: the log is not reachable from here; Ready says the operator made them"
            ),
        }
        Ok(())
    }

    pub(super) async fn refusals(&self) -> anyhow::Result<()> {
        let sipmbas = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "SipMba").await?;
        let refused = |resource: serde_json::Value, expected: &'static str| {
            let sipmbas = sipmbas.clone();
            async move {
                let name = resource["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                match sipmbas
                    .patch(
                        &name,
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(&resource),
                    )
                    .await
                {
                    Ok(_) => bail!("{name}: accepted, expected a refusal with {expected:?}"),
                    Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains(expected) => {
                        println!("  refused (422): {}", e.message);
                        Ok(())
                    }
                    Err(e) => bail!("{name}: {e}, expected a 422 with {expected:?}"),
                }
            }
        };
        let mut spec = self.platform_spec("", 1);
        spec["services"]["collect"]["replicas"] = json!(99);
        refused(
            json!({"apiVersion": "sipmba.io/v1alpha1", "kind": "SipMba",
                   "metadata": {"name": "invalid", "namespace": NS}, "spec": spec}),
            "replicas must be 0 to 50",
        )
        .await?;
        let mut spec = self.platform_spec("", 1);
        spec["queue"]["sasl"] = json!({"mechanism": "PLAIN", "username": "u",
            "passwordSecretRef": {"name": "p", "key": "k"}});
        refused(
            json!({"apiVersion": "sipmba.io/v1alpha1", "kind": "SipMba",
                   "metadata": {"name": "invalid", "namespace": NS}, "spec": spec}),
            "sasl.mechanism PLAIN sends the password in the clear",
        )
        .await?;
        refused(
            json!({"apiVersion": "sipmba.io/v1alpha1", "kind": "SipMba",
                   "metadata": {"name": "demo", "namespace": NS},
                   "spec": self.platform_spec("renamed-", 1)}),
            "topicPrefix is immutable",
        )
        .await?;
        if sipmbas.get_opt("invalid").await?.is_some() {
            bail!("the invalid SipMba exists");
        }
        Ok(())
    }

    pub(super) async fn platform_workloads(
        &self,
    ) -> anyhow::Result<BTreeMap<&'static str, (i64, Vec<String>)>> {
        let mut out = BTreeMap::new();
        for component in COMPONENTS {
            out.insert(component, workload(&self.client, "demo", component).await?);
        }
        Ok(out)
    }

    pub(super) async fn operator_pods(&self) -> anyhow::Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_ns);
        Ok(pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
            .await?
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(ResourceExt::name_any)
            .collect())
    }

    pub(super) async fn upgrade(&self) -> anyhow::Result<()> {
        let before = self.platform_workloads().await?;
        let operator_before = self.operator_pods().await?;
        self.helm(&[
            "upgrade",
            RELEASE,
            &self.chart,
            "-n",
            &self.operator_ns,
            "--reuse-values",
            "--set",
            "operator.logLevel=debug",
            "--wait",
            "--timeout",
            "4m",
        ])
        .await?;
        let operator_after = wait_for(
            "the old operator pods to go",
            Duration::from_secs(120),
            || async {
                let pods = self.operator_pods().await?;
                Ok(
                    if pods.len() == 2 && pods.iter().all(|p| !operator_before.contains(p)) {
                        Ok(pods)
                    } else {
                        Err(format!("{pods:?}"))
                    },
                )
            },
        )
        .await?;
        println!("  operator pod {operator_before:?} -> {operator_after:?}");
        // The new operator has reconciled every platform before it is trusted to have left
        // them alone: give it the time of a few reconciles.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let after = self.platform_workloads().await?;
        if before != after {
            bail!("the platform's workloads changed: {before:?} -> {after:?}");
        }
        println!("  the platform's five workloads: same generations, same pods");
        Ok(())
    }

    pub(super) async fn roll_collect(&self) -> anyhow::Result<()> {
        let before = self.platform_workloads().await?;
        let mut spec = self.platform_spec("", 1);
        spec["services"]["collect"]["resources"] =
            json!({"requests": {"cpu": "20m", "memory": "40Mi"}, "limits": {"memory": "200Mi"}});
        self.apply_platform("demo", spec).await?;
        let after = wait_for(
            "collect rolled and Ready",
            Duration::from_secs(280),
            || async {
                let now = self.platform_workloads().await?;
                let (generation, pods) = &now["collect"];
                let rolled = *generation > before["collect"].0
                    && pods.len() == 1
                    && !before["collect"].1.contains(&pods[0]);
                let sipmbas = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "SipMba").await?;
                let platform = sipmbas.get("demo").await?;
                let ready = converged(&platform);
                Ok(if rolled && ready {
                    Ok(now)
                } else {
                    Err(format!("{now:?}"))
                })
            },
        )
        .await?;
        for component in COMPONENTS.into_iter().filter(|c| *c != "collect") {
            if before[component] != after[component] {
                bail!(
                    "{component} changed too: {:?} -> {:?}",
                    before[component],
                    after[component]
                );
            }
        }
        println!(
            "  collect: generation {} -> {}, new pod; the other four unchanged",
            before["collect"].0, after["collect"].0
        );
        Ok(())
    }

    pub(super) async fn delete_platforms(&self, names: &[&'static str]) -> anyhow::Result<()> {
        let sipmbas = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "SipMba").await?;
        let mut uids = Vec::new();
        for &name in names {
            uids.push((name, sipmbas.get(name).await?.uid().unwrap_or_default()));
            sipmbas.delete(name, &DeleteParams::default()).await?;
        }
        for (name, uid) in uids {
            wait_for(
                &format!("{name}'s children collected"),
                Duration::from_secs(200),
                || async {
                    let left = owned_by(&self.client, &uid).await?;
                    let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
                    let pods = pods
                        .list(
                            &ListParams::default()
                                .labels(&format!("app.kubernetes.io/instance={name}")),
                        )
                        .await?
                        .items
                        .len();
                    Ok(if left.is_empty() && pods == 0 {
                        Ok(())
                    } else {
                        Err(format!("{left:?} and {pods} pods"))
                    })
                },
            )
            .await?;
            println!("  {name}: every child and pod collected");
        }
        Ok(())
    }

    pub(super) async fn uninstall(&self) -> anyhow::Result<()> {
        self.helm(&[
            "uninstall",
            RELEASE,
            "-n",
            &self.operator_ns,
            "--wait",
            "--timeout",
            "2m",
        ])
        .await?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.operator_ns);
        if deployments.get_opt(OPERATOR).await?.is_some() {
            bail!("the operator's Deployment is still there");
        }
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in ["sipmbas.sipmba.io", "things.sipmba.io"] {
            if crds.get_opt(crd).await?.is_none() {
                bail!("the CRD {crd} went with the release");
            }
        }
        println!("  operator gone; CRDs sipmbas.sipmba.io and things.sipmba.io kept");
        Ok(())
    }
}
