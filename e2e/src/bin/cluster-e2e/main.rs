//! The cluster suite, for any Kubernetes cluster at `KUBECONFIG` (the one `.ci/cluster-e2e` builds
//! here, kind or k3s) where our three images are present. Each step has a deadline; when one
//! fails, the suite prints `kubectl describe` of what it made, the events and the logs, and exits
//! 1. Without a reachable cluster it says so and exits 77 ("not run"), never 0.
//!
//! 1. `helm install` (the real helm) with `--wait`: the operator runs as two pods, one holding
//!    its Lease, under the chart's ServiceAccount, which may do what the operator does and
//!    nothing broader; the namespace enforces the restricted Pod Security Standard.
//! 2. A `SipMba` applied: Ready, every component's pods Ready, its topics on the log.
//! 3. An invalid `SipMba` and a change to an immutable field are refused by the API server with
//!    the CEL rules' messages.
//! 4. A `Thing` whose agent runs as a pod (the `sipmba-edge` image, simulated sensor), named to
//!    the operator by its full cluster DNS name: Registered, TokenIssued, Delivered.
//! 5. The `sipmba` CLI, through port-forwards: logs in as the thing's owner, reads its readings,
//!    sends `agent.ping` and waits until it is ACKED.
//! 6. A collect rollout (`kubectl rollout restart`) while the agent pod streams: a new pod Ready
//!    before an old one goes, the agent reconnects, and every reading Collect acknowledged is
//!    stored once.
//! 7. A thing outside the cluster (its agent a process on this host, as a Raspberry Pi on a LAN
//!    is): while the platform is not exposed its Thing says so (NoExternalAddress); once
//!    `spec.exposure` names NodePorts on the node's address, the certificates are re-issued
//!    naming it and served by the running pods, the agent is delivered the external URLs and
//!    streams through them (TLS verified against the delivered CA), an `agent.ping` is ACKED,
//!    and deleting the Thing revokes it. A Thing whose agent accepts connections but never
//!    answers fails on its own, holding nothing up. The platform's and the Things' Events tell
//!    it all (`kubectl describe`).
//!    With the Prometheus Operator's CRDs installed first (upstream's files), the chart's
//!    ServiceMonitor, PodMonitor and PrometheusRule pass strict validation, a broken one is
//!    refused, and while the platform is exposed the ServiceMonitor selects each component's
//!    Service once and the PodMonitor both operator pods.
//! 8. `helm upgrade` with a changed setting rolls the operator alone; a change to collect's
//!    resources rolls collect alone.
//! 9. The operator pod killed in the middle of a new platform's first reconcile: after its
//!    restart the platform converges, and what is made once (its client secrets, its CA) was not
//!    made twice.
//! 10. A standby operator: the leader's pod deleted, then the leader frozen (SIGSTOP, as when
//!     its node stops); each time its successor takes the Lease, makes a deleted child again and
//!     renews a token that fell due meanwhile, within a bound; nothing is made twice, and a frozen
//!     leader that wakes steps down.
//! 11. What every pod uses (the kubelet's summary) beside its requests and limits: the
//!     operator's and the platform's containers have them, and stay under their memory limit.
//! 12. `kubectl delete thing`: the finalizer revokes and deregisters, collect refuses the agent's
//!     token. `kubectl delete sipmba`: the garbage collector removes every child.
//! 13. `helm uninstall` removes the operator and leaves the CRDs.
//!
//! The platform's PostgreSQL and log: with `SIPMBA_E2E_DATABASE` (`ip:port`),
//! `SIPMBA_E2E_DATABASE_URL` (naming the host `postgresql`), `SIPMBA_E2E_UPGRADE_DATABASE_URL`
//! (another database of that server, empty, for the previous release's platform) and
//! `SIPMBA_E2E_KAFKA` (`ip:port`), servers outside the cluster, named to the platform as Services without selectors; without
//! them, the chart's trial PostgreSQL and Redpanda (images pulled from their registries). Other
//! settings: `SIPMBA_E2E_HELM` (default `helm`), `SIPMBA_E2E_CLI` (default
//! `target/release/sipmba`), `SIPMBA_E2E_EDGE` (default `target/release/sipmba-edge`),
//! `SIPMBA_E2E_HOST_ADDRESS` (an address of this host that pods reach; default the node's),
//! `SIPMBA_E2E_IMAGE_TAG` (default `e2e`), `SIPMBA_E2E_CHART` (default `charts/sipmba`).
//!
//! `cluster-e2e --bench-things N` runs steps 1 and 2, then the Thing-scale benchmark
//! (`scale.rs`), then removes the platform and the chart.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{ConfigMap, Namespace, Pod, Secret, Service},
        policy::v1::PodDisruptionBudget,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
};
use serde_json::json;
use sipmba_proto::v1 as pb;
use tokio::io::AsyncWriteExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

mod killed;
mod monitoring;
mod outside;
mod platform;
mod rbac;
mod rollout;
mod scale;
mod standby;
mod support;
mod things;
mod upgrade;
mod usage;

use support::{
    apply, condition, converged, dynamic, dynamic_for, forward, forward_to, grpc, owned_by,
    pod_ready, run, secret_value, wait_for, workload,
};

/// Where the platform and its things live.
const NS: &str = "sipmba-e2e";
/// The helm release.
const RELEASE: &str = "sipmba";
const OPERATOR: &str = "sipmba-operator";
const MANAGER: &str = "sipmba-e2e";
/// Exit code of a suite that did not run.
const NOT_RUN: i32 = 77;
/// The services of a platform with their workload kinds.
const COMPONENTS: [&str; 5] = ["sso", "objects", "collect", "control", "processing"];

fn env(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// The platform's database and log outside the cluster.
struct External {
    database: String,
    database_url: String,
    /// An empty database for the previous release's platform (a database a newer release
    /// migrated is not one an older release can open).
    upgrade_database_url: String,
    kafka: String,
}

struct Suite {
    client: Client,
    helm: String,
    cli: String,
    /// The `sipmba-edge` agent run on this host, as on a device outside the cluster.
    edge: String,
    chart: String,
    tag: String,
    external: Option<External>,
    /// Where the chart is installed: its own namespace with external services, the platform's
    /// with the trial ones (their Secret must be in the platform's namespace).
    operator_ns: String,
    started: Instant,
    step: std::cell::Cell<usize>,
    /// `--bench-things N`: the Thing-scale benchmark instead of the functional steps.
    bench_things: Option<usize>,
    /// The release the upgrade steps start from.
    previous: Option<upgrade::Previous>,
    /// The Prometheus Operator's CRDs (`example/prometheus-operator-crd` of its source): the
    /// chart is installed with its monitoring, and the monitoring step runs.
    prometheus_crds: Option<String>,
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_things = match args.as_slice() {
        [] => None,
        [flag, n] if flag == "--bench-things" => match n.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("--bench-things takes a number of Things, not {n:?}");
                std::process::exit(2);
            }
        },
        _ => {
            eprintln!("usage: cluster-e2e [--bench-things N]");
            std::process::exit(2);
        }
    };
    let client = match Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            println!("NOT RUN: no Kubernetes cluster is reachable ({e}); set KUBECONFIG");
            std::process::exit(NOT_RUN);
        }
    };
    if let Err(e) = client.apiserver_version().await {
        println!("NOT RUN: the Kubernetes API server does not answer ({e})");
        std::process::exit(NOT_RUN);
    }
    let external = match (
        std::env::var("SIPMBA_E2E_DATABASE"),
        std::env::var("SIPMBA_E2E_DATABASE_URL"),
        std::env::var("SIPMBA_E2E_UPGRADE_DATABASE_URL"),
        std::env::var("SIPMBA_E2E_KAFKA"),
    ) {
        (Ok(database), Ok(database_url), Ok(upgrade_database_url), Ok(kafka)) => Some(External {
            database,
            database_url,
            upgrade_database_url,
            kafka,
        }),
        _ => None,
    };
    let suite = Suite {
        client,
        helm: env("SIPMBA_E2E_HELM", "helm"),
        cli: env("SIPMBA_E2E_CLI", "target/release/sipmba"),
        edge: env("SIPMBA_E2E_EDGE", "target/release/sipmba-edge"),
        chart: env("SIPMBA_E2E_CHART", "charts/sipmba"),
        tag: env("SIPMBA_E2E_IMAGE_TAG", "e2e"),
        operator_ns: if external.is_some() {
            "sipmba-system".into()
        } else {
            NS.into()
        },
        external,
        started: Instant::now(),
        step: std::cell::Cell::new(0),
        bench_things,
        previous: std::env::var("SIPMBA_E2E_PREVIOUS_CHART")
            .ok()
            .filter(|chart| !chart.is_empty())
            .map(|chart| upgrade::Previous {
                chart,
                tag: env("SIPMBA_E2E_PREVIOUS_TAG", "previous"),
            }),
        prometheus_crds: std::env::var("SIPMBA_E2E_PROMETHEUS_CRDS")
            .ok()
            .filter(|dir| !dir.is_empty()),
    };
    match suite.run().await {
        Ok(()) => println!(
            "PASSED: the cluster suite, {} steps in {} s",
            suite.step.get(),
            suite.started.elapsed().as_secs()
        ),
        Err(e) => {
            eprintln!("FAILED: {e:#}");
            suite.diagnose().await;
            std::process::exit(1);
        }
    }
}

impl Suite {
    /// Runs one step within `limit`, printing its outcome.
    async fn step<T>(
        &self,
        name: &str,
        limit: Duration,
        body: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let n = self.step.get() + 1;
        self.step.set(n);
        println!("STEP {n}: {name}");
        let started = Instant::now();
        let outcome = match tokio::time::timeout(limit, body).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow::anyhow!("not done within {} s", limit.as_secs())),
        };
        match outcome {
            Ok(value) => {
                println!("  ok ({:.1} s)", started.elapsed().as_secs_f64());
                Ok(value)
            }
            Err(e) => Err(e.context(format!("step {n} ({name})"))),
        }
    }

    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run("kubectl", args, None).await
    }

    async fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        run(&self.helm, args, None).await
    }

    /// What the cluster says about what the suite made: printed when a step fails.
    async fn diagnose(&self) {
        let ns = [NS, self.operator_ns.as_str()];
        let mut commands: Vec<Vec<String>> = vec![
            vec!["get".into(), "nodes".into(), "-o".into(), "wide".into()],
            vec![
                "get".into(),
                "pods".into(),
                "-A".into(),
                "-o".into(),
                "wide".into(),
            ],
        ];
        for ns in ns.iter().collect::<std::collections::BTreeSet<_>>() {
            commands.push(
                [
                    "get",
                    "sipmbas,things,deployments,statefulsets,services,secrets",
                    "-n",
                    ns,
                    "-o",
                    "wide",
                ]
                .map(String::from)
                .to_vec(),
            );
            commands.push(
                [
                    "describe",
                    "sipmbas,things,deployments,statefulsets,pods",
                    "-n",
                    ns,
                ]
                .map(String::from)
                .to_vec(),
            );
            commands.push(
                ["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]
                    .map(String::from)
                    .to_vec(),
            );
            if let Ok(pods) = self.kubectl(&["get", "pods", "-n", ns, "-o", "name"]).await {
                for pod in pods.lines() {
                    commands.push(
                        [
                            "logs",
                            "-n",
                            ns,
                            pod,
                            "--all-containers",
                            "--prefix",
                            "--tail=100",
                        ]
                        .map(String::from)
                        .to_vec(),
                    );
                }
            }
        }
        for args in commands {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            eprintln!("--- kubectl {}", args.join(" "));
            match self.kubectl(&args).await {
                Ok(out) => eprintln!("{out}"),
                Err(e) => eprintln!("{e:#}"),
            }
        }
    }

    async fn run(&self) -> anyhow::Result<()> {
        let client = self.client.clone();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in [NS, self.operator_ns.as_str()] {
            namespaces
                .patch(
                    ns,
                    &PatchParams::apply(MANAGER),
                    // Every pod in them meets the restricted Pod Security Standard.
                    &Patch::Apply(json!({
                        "apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "labels": {
                            "pod-security.kubernetes.io/enforce": "restricted",
                            "pod-security.kubernetes.io/enforce-version": "latest"
                        }}
                    })),
                )
                .await?;
        }
        let limit = Duration::from_secs;
        if let Some(dir) = &self.prometheus_crds {
            self.step(
                "the Prometheus Operator's CRDs, as users install them before the chart's monitoring",
                limit(90),
                self.prometheus_crds(dir),
            )
            .await?;
        }
        self.step(
            "helm install --wait: the operator runs as two pods, one leading",
            limit(360),
            self.install(),
        )
        .await?;
        self.step(
            "the operator's ServiceAccount may do what it does, nothing broader",
            limit(60),
            self.rbac(),
        )
        .await?;
        self.step(
            "a SipMba: Ready, every component's pods Ready, its topics created",
            limit(600),
            self.platform(),
        )
        .await?;
        if let Some(count) = self.bench_things {
            self.step(
                &format!("the Thing controller with {count} Things (benchmark)"),
                limit(7200),
                self.thing_scale(count),
            )
            .await?;
            self.step(
                "kubectl delete sipmba: the garbage collector removes every child",
                limit(240),
                self.delete_platforms(&["demo"]),
            )
            .await?;
            return self
                .step(
                    "helm uninstall: the operator goes, the CRDs stay",
                    limit(180),
                    self.uninstall(),
                )
                .await;
        }
        self.step(
            "an invalid SipMba and an immutable change are refused with the CEL messages",
            limit(60),
            self.refusals(),
        )
        .await?;
        let thing = self
            .step(
                "a Thing whose agent runs as a pod: Registered, TokenIssued, Delivered",
                limit(300),
                self.thing(),
            )
            .await?;
        let cli = self
            .step(
                "the sipmba CLI reads the thing's readings",
                limit(240),
                self.cli_readings(&thing),
            )
            .await?;
        self.step(
            "the sipmba CLI sends agent.ping: ACKED",
            limit(180),
            self.cli_command(&cli, &thing),
        )
        .await?;
        self.step(
            "kubectl rollout restart of collect while the agent streams: one pod at a time, nothing lost or stored twice",
            limit(360),
            self.rollout_collect(&cli, &thing.id),
        )
        .await?;
        let agent = self
            .step(
                "a Thing whose agent runs outside the cluster, the platform not exposed: NoExternalAddress",
                limit(150),
                self.outside_unexposed(&thing),
            )
            .await?;
        self.step(
            "spec.exposure NodePort: status.external, certificates naming the node's address, served without a restart",
            limit(420),
            self.expose(&thing.ca),
        )
        .await?;
        match &self.prometheus_crds {
            Some(_) => {
                self.step(
                    "the chart's ServiceMonitor, PodMonitor and PrometheusRule: valid for the Prometheus Operator's CRDs, scraping each pod once",
                    limit(60),
                    self.monitoring(),
                )
                .await?
            }
            None => println!(
                "monitoring step not run: SIPMBA_E2E_PROMETHEUS_CRDS is not set (.ci/cluster-e2e)"
            ),
        }
        let pi = self
            .step(
                "the agent outside gets the external URLs and streams through them; a silent agent holds nothing up",
                limit(360),
                self.outside_delivered(&thing, &agent, &cli),
            )
            .await?;
        self.step(
            "a command reaches the agent outside: ACKED; deleting its Thing revokes its token; exposure removed",
            limit(300),
            self.outside_command_and_delete(&cli, &pi, &agent),
        )
        .await?;
        drop(agent);
        self.step(
            "kubectl describe tells the story: the platform's and the Things' Events",
            limit(90),
            self.events(),
        )
        .await?;
        self.step(
            "helm upgrade with a changed setting rolls the operator alone",
            limit(300),
            self.upgrade(),
        )
        .await?;
        self.step(
            "a change to collect's resources rolls collect alone",
            limit(300),
            self.roll_collect(),
        )
        .await?;
        self.step(
            "the operator killed mid-reconcile: converges, nothing made twice",
            limit(300),
            self.operator_killed(),
        )
        .await?;
        self.step(
            "a standby operator takes over: the leader's pod deleted, then the leader frozen",
            limit(300),
            self.standby(),
        )
        .await?;
        self.step(
            "what the pods use, beside their requests and limits",
            limit(60),
            self.usage(),
        )
        .await?;
        self.step(
            "kubectl delete thing: finalizer released, collect refuses its token",
            limit(180),
            self.delete_thing(),
        )
        .await?;
        self.step(
            "kubectl delete sipmba: the garbage collector removes every child",
            limit(240),
            self.delete_platforms(&["demo", "second"]),
        )
        .await?;
        self.step(
            "helm uninstall: the operator goes, the CRDs stay",
            limit(180),
            self.uninstall(),
        )
        .await?;
        let Some(previous) = &self.previous else {
            println!("upgrade steps not run: SIPMBA_E2E_PREVIOUS_CHART is not set (.ci/previous)");
            return Ok(());
        };
        let (thing, cli) = self
            .step(
                "the previous release: its chart and images, a SipMba written for its CRD, an agent pod streaming",
                limit(900),
                self.install_previous(previous),
            )
            .await?;
        self.step(
            "helm upgrade to this release, then its image: one pod at a time, nothing acknowledged lost or stored twice",
            limit(900),
            self.upgrade_release(previous, &thing, cli),
        )
        .await?;
        self.step(
            "the upgraded platform removed: its Thing, the SipMba, the release",
            limit(480),
            async {
                self.delete_thing().await?;
                self.delete_platforms(&["demo"]).await?;
                self.uninstall().await
            },
        )
        .await?;
        Ok(())
    }
}
