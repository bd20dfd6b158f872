//! Upgrades that lose nothing: the previous release (the chart and images of the commit in
//! `e2e/upgrade/previous`, made by `.ci/previous`) with a platform written for its CRD and an
//! agent pod streaming, then `helm upgrade` to this chart and its images and the platform's image
//! moved on, as a user upgrades: every workload rolls one pod at a time, the agent reconnects,
//! and every reading Collect acknowledged is stored once.

use super::*;
use crate::rollout::Roll;

/// The Secret naming the upgrade platform's database (outside the cluster).
const UPGRADE_DATABASE: &str = "e2e-database-upgrade";
/// The upgrade platform's topic prefix.
const UPGRADE_PREFIX: &str = "upgrade-";

/// The previous release: its chart and the tag its images were imported under.
pub(super) struct Previous {
    pub(super) chart: String,
    pub(super) tag: String,
}

/// Replicas of each service of the upgraded platform: two, so that a roll has a pod to keep.
const REPLICAS: usize = 2;

/// The grant the previous release's ClusterRole lacked (see [`previous_grant`]).
const PREVIOUS_GRANT: &str = "sipmba-e2e-previous-finalizers";

/// The previous release sets `blockOwnerDeletion` on its children, but its ClusterRole grants no
/// `update` on `sipmbas/finalizers` and `things/finalizers`, which OwnerReferencesPermissionEnforcement
/// (on in this cluster) requires: unpatched, it can run only where that plugin is off. Its users on
/// such clusters granted it this; the suite does the same, and removes the grant once this
/// release's chart (whose ClusterRole has it) is installed.
fn previous_grant(operator_ns: &str) -> [serde_json::Value; 2] {
    [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": PREVIOUS_GRANT},
            "rules": [{
                "apiGroups": ["sipmba.io"],
                "resources": ["sipmbas/finalizers", "things/finalizers"],
                "verbs": ["update"],
            }],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": PREVIOUS_GRANT},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": PREVIOUS_GRANT,
            },
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": operator_ns}],
        }),
    ]
}

impl Suite {
    /// The previous release installed, a `SipMba` applied through its CRD, a Thing and its
    /// agent pod streaming.
    pub(super) async fn install_previous(
        &self,
        previous: &Previous,
    ) -> anyhow::Result<(things::ThingUnderTest, things::Cli)> {
        // The agent pod of the earlier steps served a Thing that is gone: a fresh one.
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        if deployments.get_opt("e2e-agent").await?.is_some() {
            deployments
                .delete("e2e-agent", &DeleteParams::default())
                .await?;
        }
        wait_for(
            "the earlier agent pod gone",
            Duration::from_secs(90),
            || async {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
                let left = pods
                    .list(&ListParams::default().labels("app=e2e-agent"))
                    .await?
                    .items
                    .len();
                Ok(if left == 0 {
                    Ok(())
                } else {
                    Err(format!("{left} pods"))
                })
            },
        )
        .await?;
        self.fresh_upgrade_data().await?;
        for resource in previous_grant(&self.operator_ns) {
            apply(&self.client, NS, resource).await?;
        }
        let tag = format!("operator.image.tag={}", previous.tag);
        let mut args = vec![
            "install",
            RELEASE,
            &previous.chart,
            "-n",
            &self.operator_ns,
            "--wait",
            "--timeout",
            "5m",
            "--set",
            &tag,
            "--set",
            "operator.image.pullPolicy=IfNotPresent",
        ];
        if self.external.is_none() {
            args.extend(["--set", "trial.enabled=true", "--set", "trial.storage=1Gi"]);
        }
        self.helm(&args).await?;
        println!(
            "  the previous release installed: {} with images :{}",
            previous.chart, previous.tag
        );
        // On an empty database sso has no signing key yet, and the previous release's sso
        // replicas starting together may each make one (and sign with a key the other does not
        // publish until it re-reads the keys, a minute later): one replica makes it, then the
        // platform grows to its size.
        let mut first = self.upgrade_spec(&previous.tag);
        first["services"]["sso"]["replicas"] = json!(1);
        self.apply_platform("demo", first).await?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        wait_for(
            "the first sso replica Ready on the empty database",
            Duration::from_secs(300),
            || async {
                let ready = deployments
                    .get_opt("demo-sso")
                    .await?
                    .and_then(|d| d.status)
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                Ok(if ready >= 1 {
                    Ok(())
                } else {
                    Err(format!("{ready} ready"))
                })
            },
        )
        .await?;
        self.apply_platform("demo", self.upgrade_spec(&previous.tag))
            .await?;
        self.platform_converged(&previous.tag, false).await?;
        println!("  platform demo Ready on the previous images, {REPLICAS} pods per service");
        let thing = self.thing().await?;
        let cli = self.cli_readings(&thing).await?;
        Ok((thing, cli))
    }

    /// `helm upgrade` to this chart and images, then the platform's image: every workload
    /// rolls one pod at a time and nothing acknowledged is lost or stored twice.
    pub(super) async fn upgrade_release(
        &self,
        previous: &Previous,
        thing: &things::ThingUnderTest,
        cli: things::Cli,
    ) -> anyhow::Result<()> {
        // The agent has been streaming on the previous release.
        let before = wait_for(
            "readings acknowledged on the previous release",
            Duration::from_secs(60),
            || async {
                let counts = self.counts(&cli, &thing.id).await?;
                Ok(if counts.acked >= 5 {
                    Ok(counts)
                } else {
                    Err(counts.to_string())
                })
            },
        )
        .await?;
        drop(cli); // its port-forwards are to pods the upgrade replaces
        let done = std::cell::Cell::new(false);
        let rolls = std::cell::RefCell::new(BTreeMap::new());
        // Every component's pods, watched while the upgrade runs.
        let watch = async {
            while !done.get() {
                for component in COMPONENTS {
                    let ready = self.component_pods(component, true).await?.len();
                    let existing = self.component_pods(component, false).await?.len();
                    rolls
                        .borrow_mut()
                        .entry(component)
                        .or_insert(Roll::new(REPLICAS))
                        .saw(ready, existing);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::Ok(())
        };
        let upgrade = async {
            let started = Instant::now();
            let values = self.chart_values();
            let mut args = vec![
                "upgrade",
                RELEASE,
                &self.chart,
                "-n",
                &self.operator_ns,
                "--wait",
                "--timeout",
                "5m",
            ];
            args.extend(values.iter().map(String::as_str));
            let result = async {
                self.helm(&args).await?;
                // This release's ClusterRole alone from here on.
                for resource in previous_grant(&self.operator_ns) {
                    let name = resource["metadata"]["name"].as_str().unwrap_or_default();
                    dynamic_for(&self.client, NS, &resource)
                        .await?
                        .delete(name, &DeleteParams::default())
                        .await?;
                }
                let leader = wait_for(
                    "a replica of this release holding the Lease",
                    Duration::from_secs(60),
                    || async {
                        let pods = self.operator_pods().await?;
                        Ok(match self.leader().await? {
                            Some(leader) if pods.contains(&leader) => Ok(leader),
                            other => Err(format!("{other:?} among {pods:?}")),
                        })
                    },
                )
                .await?;
                println!(
                    "  helm upgrade: this chart, operator :{} ({leader} leads), {:.1} s",
                    self.tag,
                    started.elapsed().as_secs_f64()
                );
                // The platform written for the previous CRD, reconciled by this operator.
                self.platform_converged(&previous.tag, true).await?;
                println!(
                    "  the SipMba written for the previous CRD reconciled by this operator, {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                self.apply_platform("demo", self.upgrade_spec(&self.tag))
                    .await?;
                self.platform_converged(&self.tag, true).await?;
                println!(
                    "  the platform on this release's image, every pod Ready, {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                anyhow::Ok(())
            }
            .await;
            done.set(true);
            result
        };
        let (watched, upgraded) = tokio::join!(watch, upgrade);
        upgraded?;
        watched?;
        for (component, roll) in rolls.borrow().iter() {
            // Deployments surge one pod and keep every replica Ready; processing's StatefulSet
            // replaces one pod at a time.
            let keeps = if *component == "processing" {
                REPLICAS - 1
            } else {
                REPLICAS
            };
            if roll.fewest_ready < keeps || roll.most > REPLICAS + 1 {
                bail!("{component} rolled more than one pod at a time: {roll:?}");
            }
            println!(
                "  {component}: at least {} of {REPLICAS} Ready, at most {} pods throughout",
                roll.fewest_ready, roll.most
            );
        }
        let cli = self.cli_readings(thing).await?;
        let after = self.nothing_lost(&cli, &thing.id).await?;
        println!("  readings: before the upgrade {before}; after it {after}");
        Ok(())
    }

    /// The previous release starts on data of its own, as its users' platforms did: a database
    /// this release migrated is not one an older release can open (sea-orm refuses migrations it
    /// does not know). Outside the cluster, an empty database of the same server; with the trial
    /// PostgreSQL and Redpanda, their volumes of the earlier steps deleted.
    async fn fresh_upgrade_data(&self) -> anyhow::Result<()> {
        match &self.external {
            Some(external) => {
                apply(
                    &self.client,
                    NS,
                    json!({
                        "apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": UPGRADE_DATABASE, "namespace": NS},
                        "stringData": {"url": external.upgrade_database_url}
                    }),
                )
                .await
            }
            None => {
                let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
                    Api::namespaced(self.client.clone(), &self.operator_ns);
                for name in [
                    "data-sipmba-trial-postgresql-0",
                    "data-sipmba-trial-redpanda-0",
                ] {
                    if claims.get_opt(name).await?.is_some() {
                        claims.delete(name, &DeleteParams::default()).await?;
                    }
                }
                wait_for(
                    "the trial volumes of the earlier steps gone",
                    Duration::from_secs(120),
                    || async {
                        let left = claims.list(&ListParams::default()).await?.items.len();
                        Ok(if left == 0 {
                            Ok(())
                        } else {
                            Err(format!("{left} claims"))
                        })
                    },
                )
                .await
            }
        }
    }

    fn upgrade_spec(&self, tag: &str) -> serde_json::Value {
        // Topics of its own (Processing keeps its position in each topic in the database, so a
        // database serves one platform's topics), and a database of its own when outside.
        let mut spec = self.platform_spec(UPGRADE_PREFIX, REPLICAS as i32);
        spec["image"] = json!(format!("ghcr.io/sipmba/sipmba:{tag}"));
        if self.external.is_some() {
            spec["database"] = json!({"urlSecretRef": {"name": UPGRADE_DATABASE, "key": "url"}});
        }
        spec
    }

    /// The platform Ready for its current generation, with every component's pods on `tag`,
    /// Ready, and no other; with `current`, pods as this operator makes them (a startup probe,
    /// which the previous release's operator did not set).
    async fn platform_converged(&self, tag: &str, current: bool) -> anyhow::Result<()> {
        let image = format!("ghcr.io/sipmba/sipmba:{tag}");
        let sipmbas = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "SipMba").await?;
        wait_for(
            &format!("the platform converged on {image}"),
            Duration::from_secs(400),
            || async {
                let platform = sipmbas.get("demo").await?;
                if !converged(&platform) {
                    return Ok(Err(format!("{:?}", condition(&platform, "Ready"))));
                }
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
                let listed = pods
                    .list(&ListParams::default().labels("app.kubernetes.io/instance=demo"))
                    .await?
                    .items;
                let mut wrong = Vec::new();
                for component in COMPONENTS {
                    let of: Vec<&Pod> = listed
                        .iter()
                        .filter(|p| {
                            p.labels()
                                .get("app.kubernetes.io/component")
                                .map(String::as_str)
                                == Some(component)
                        })
                        .collect();
                    let on = of
                        .iter()
                        .filter(|p| {
                            let container = p.spec.as_ref().map(|s| &s.containers[0]);
                            pod_ready(p)
                                && container.and_then(|c| c.image.as_deref())
                                    == Some(image.as_str())
                                && (!current
                                    || container.is_some_and(|c| c.startup_probe.is_some()))
                        })
                        .count();
                    if on != REPLICAS || of.len() != REPLICAS {
                        wrong.push(format!("{component}: {on} of {} on it and Ready", of.len()));
                    }
                }
                Ok(if wrong.is_empty() {
                    Ok(())
                } else {
                    Err(wrong.join("; "))
                })
            },
        )
        .await
    }
}
