//! The standby operator: the chart runs two replicas that elect a leader on a Lease. The step
//! stops the leader twice, as a cluster does: its pod deleted (SIGTERM: it releases the Lease),
//! then frozen with SIGSTOP (as when its node stops: no release, no renewal). Each time, while
//! no replica leads, a child of the platform is deleted and a Thing's token renewal falls due;
//! the step measures how long until the other replica has made the child again and renewed the
//! token, checks that it made nothing twice, and that a frozen leader that wakes up steps down.

use k8s_openapi::api::coordination::v1::Lease;

use super::*;

/// The Lease the chart's operator replicas elect their leader on.
const LEASE: &str = "sipmba-operator";
/// Longest from a leader's stop until its successor reconciles: the chart's `leaseSeconds` (15),
/// up to 1 s of jitter, and one reconcile.
const TAKEOVER: Duration = Duration::from_secs(25);

impl Suite {
    /// The pod that holds the operator's Lease, if one does.
    pub(super) async fn leader(&self) -> anyhow::Result<Option<String>> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.operator_ns);
        Ok(leases
            .get_opt(LEASE)
            .await?
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// The sum of a pod's samples whose line starts with `prefix` (its `/metrics`, through the
    /// API server's pod proxy).
    pub(super) async fn pod_metric(&self, pod: &str, prefix: &str) -> anyhow::Result<f64> {
        let text = self
            .client
            .request_text(
                http::Request::get(format!(
                    "/api/v1/namespaces/{}/pods/{pod}:8080/proxy/metrics",
                    self.operator_ns
                ))
                .body(Vec::new())?,
            )
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Both replicas Ready, one of them leading: `(leader, standby)`.
    async fn leader_and_standby(&self) -> anyhow::Result<(String, String)> {
        wait_for(
            "two operator pods Ready, one holding the lease",
            Duration::from_secs(120),
            || async {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_ns);
                let ready: Vec<String> = pods
                    .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
                    .await?
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
                    .map(ResourceExt::name_any)
                    .collect();
                let leader = self.leader().await?;
                Ok(match (leader, ready.as_slice()) {
                    (Some(leader), [a, b]) if *a == leader => Ok((leader, b.clone())),
                    (Some(leader), [a, b]) if *b == leader => Ok((leader, a.clone())),
                    (leader, _) => Err(format!("ready {ready:?}, lease held by {leader:?}")),
                })
            },
        )
        .await
    }

    pub(super) async fn standby(&self) -> anyhow::Result<()> {
        let (leader, standby) = self.leader_and_standby().await?;
        // A standby reconciles nothing.
        let standby_reconciles = self
            .pod_metric(&standby, "sipmba_operator_reconciles_total")
            .await?;
        let standby_leads = self.pod_metric(&standby, "sipmba_operator_leader").await?;
        let leader_leads = self.pod_metric(&leader, "sipmba_operator_leader").await?;
        if standby_reconciles != 0.0 || standby_leads != 0.0 || leader_leads != 1.0 {
            bail!(
                "the standby {standby} made {standby_reconciles} reconciles (leader gauge \
                 {standby_leads}); the leader {leader}'s gauge is {leader_leads}"
            );
        }
        println!("  {leader} leads; {standby} stands by, 0 reconciles");

        let sipmbas = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "SipMba").await?;
        let uid = sipmbas.get("demo").await?.uid().unwrap_or_default();
        let children = owned_by(&self.client, &uid).await?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let made_once = |s: Secret| (s.uid(), s.data);
        let ca = made_once(secrets.get("demo-ca").await?);
        let clients = made_once(secrets.get("demo-clients").await?);

        let took = self.take_over(Stop::Delete, &leader).await?;
        println!(
            "  the leader's pod deleted: its successor reconciled {:.1} s later",
            took.as_secs_f64()
        );
        let (leader, _) = self.leader_and_standby().await?;
        let took = self.take_over(Stop::Freeze, &leader).await?;
        println!(
            "  the leader frozen (SIGSTOP, as a stopped node): its successor reconciled {:.1} s \
             later; woken, the old leader stepped down (its container restarted)",
            took.as_secs_f64()
        );
        self.leader_and_standby().await?;

        let after = owned_by(&self.client, &uid).await?;
        if after != children {
            bail!("the platform's children changed: {children:?} -> {after:?}");
        }
        if made_once(secrets.get("demo-ca").await?) != ca
            || made_once(secrets.get("demo-clients").await?) != clients
        {
            bail!("the platform's CA or client secrets were made again");
        }
        println!(
            "  {} children, the same before and after; the CA and client secrets made once",
            after.len()
        );
        Ok(())
    }

    /// Stops `leader` as `stop` says; while no replica leads, deletes the platform's processing
    /// ConfigMap and makes the agent pod's token due for renewal; returns how long after the stop
    /// the next leader had done both.
    async fn take_over(&self, stop: Stop, leader: &str) -> anyhow::Result<Duration> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_ns);
        let restarts = |pod: &Pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |c| c.iter().map(|c| c.restart_count).sum::<i32>())
        };
        let restarts_before = restarts(&pods.get(leader).await?);
        let stopped = Instant::now();
        let frozen = match stop {
            Stop::Delete => {
                pods.delete(leader, &DeleteParams::default()).await?;
                // Gone, so that what follows is the successor's doing.
                wait_for("the leader's pod gone", Duration::from_secs(40), || async {
                    Ok(match pods.get_opt(leader).await? {
                        None => Ok(()),
                        Some(_) => Err("terminating".to_owned()),
                    })
                })
                .await?;
                None
            }
            Stop::Freeze => {
                let pid = operator_process(leader)?;
                run("kill", &["-STOP", &pid.to_string()], None).await?;
                Some(Frozen(Some(pid)))
            }
        };

        // What only a leader puts right: a deleted child, a renewal due.
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), NS);
        configmaps
            .delete("demo-processing", &DeleteParams::default())
            .await?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let due = now - 1;
        secrets
            .patch(
                "e2e-thing-credentials",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {
                    "issued": (now - 3_000).to_string(),
                    "expires": (now + 120).to_string(),
                }})),
            )
            .await?;

        let things = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "Thing").await?;
        let successor = wait_for(
            "the next leader: the ConfigMap made again, the token renewed and delivered",
            TAKEOVER + Duration::from_secs(20),
            || async {
                let leader_now = self.leader().await?;
                let remade = configmaps.get_opt("demo-processing").await?.is_some();
                let issued = secrets
                    .get("e2e-thing-credentials")
                    .await
                    .ok()
                    .and_then(|s| secret_value(&s, "issued"))
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or_default();
                // The renewed token delivered: the status names its expiry, an hour away.
                let thing = things.get("e2e-thing").await?;
                let expires = thing.data["status"]["tokenExpires"]
                    .as_str()
                    .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                    .map_or(0, |t| t.as_second());
                let delivered = condition(&thing, "Delivered").is_some_and(|(ok, _)| ok)
                    && expires > now + 1_800;
                Ok(match leader_now {
                    Some(next) if next != leader && remade && issued > due && delivered => {
                        Ok((next, stopped.elapsed()))
                    }
                    other => Err(format!(
                        "lease {other:?}, ConfigMap {remade}, issued {issued} (due at {due}), \
                         delivered {delivered} (expires {expires})"
                    )),
                })
            },
        )
        .await?;
        let (next, took) = successor;
        if took > TAKEOVER {
            bail!(
                "{next} took over {:.1} s after the leader stopped: more than {} s",
                took.as_secs_f64(),
                TAKEOVER.as_secs()
            );
        }
        if let Some(frozen) = frozen {
            frozen.resume().await?;
            wait_for(
                "the woken leader stepping down (its container restarting)",
                Duration::from_secs(60),
                || async {
                    let pod = pods.get(leader).await?;
                    let now = restarts(&pod);
                    let holder = self.leader().await?;
                    Ok(
                        if now > restarts_before && holder.as_deref() == Some(&next) {
                            Ok(())
                        } else {
                            Err(format!("restarts {now}, lease held by {holder:?}"))
                        },
                    )
                },
            )
            .await?;
        }
        Ok(took)
    }
}

/// How the leader is stopped.
enum Stop {
    /// Its pod deleted.
    Delete,
    /// Its process frozen, as when its node stops.
    Freeze,
}

/// A frozen process, thawed when dropped (the suite leaves nothing stopped).
struct Frozen(Option<u32>);

impl Frozen {
    async fn resume(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.0.take() {
            run("kill", &["-CONT", &pid.to_string()], None).await?;
        }
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// The process id of the operator in `pod`, on this host (the test cluster's node): the
/// `sipmba-operator` process whose environment names the pod.
fn operator_process(pod: &str) -> anyhow::Result<u32> {
    let wanted = format!("POD_NAME={pod}");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != "sipmba-operator" {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_bytes())
        {
            return Ok(pid);
        }
    }
    bail!(
        "no sipmba-operator process of pod {pod} on this host: freezing the leader needs the cluster's node to be this machine"
    )
}
