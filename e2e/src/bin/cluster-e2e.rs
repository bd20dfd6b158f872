//! The cluster suite, for any Kubernetes cluster at `KUBECONFIG` (the one `.ci/cluster-e2e` builds
//! here, kind or k3s) where our three images are present. Each step has a deadline; when one
//! fails, the suite prints `kubectl describe` of what it made, the events and the logs, and exits
//! 1. Without a reachable cluster it says so and exits 77 ("not run"), never 0.
//!
//! 1. `helm install` (the real helm) with `--wait`: the operator runs as its pod, under the
//!    chart's ServiceAccount, which may do what the operator does and nothing broader.
//! 2. A `SipMba` applied: Ready, every component's pods Ready, its topics on the log.
//! 3. An invalid `SipMba` and a change to an immutable field are refused by the API server with
//!    the CEL rules' messages.
//! 4. A `Thing` whose agent runs as a pod (the `sipmba-edge` image, simulated sensor): Registered,
//!    TokenIssued, Delivered.
//! 5. The `sipmba` CLI, through port-forwards: logs in as the thing's owner, reads its readings,
//!    sends `agent.ping` and waits until it is ACKED.
//! 6. `helm upgrade` with a changed setting rolls the operator alone; a change to collect's
//!    resources rolls collect alone.
//! 7. The operator pod killed in the middle of a new platform's first reconcile: after its
//!    restart the platform converges, and what is made once (its client secrets, its CA) was not
//!    made twice.
//! 8. `kubectl delete thing`: the finalizer revokes and deregisters, collect refuses the agent's
//!    token. `kubectl delete sipmba`: the garbage collector removes every child.
//! 9. `helm uninstall` removes the operator and leaves the CRDs.
//!
//! The platform's PostgreSQL and log: with `SIPMBA_E2E_DATABASE` (`ip:port`),
//! `SIPMBA_E2E_DATABASE_URL` (naming the host `postgresql`) and `SIPMBA_E2E_KAFKA` (`ip:port`),
//! servers outside the cluster, named to the platform as Services without selectors; without
//! them, the chart's trial PostgreSQL and Redpanda (images pulled from their registries). Other
//! settings: `SIPMBA_E2E_HELM` (default `helm`), `SIPMBA_E2E_CLI` (default
//! `target/release/sipmba`), `SIPMBA_E2E_IMAGE_TAG` (default `e2e`), `SIPMBA_E2E_CHART` (default
//! `charts/sipmba`).
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
    kafka: String,
}

struct Suite {
    client: Client,
    helm: String,
    cli: String,
    chart: String,
    tag: String,
    external: Option<External>,
    /// Where the chart is installed: its own namespace with external services, the platform's
    /// with the trial ones (their Secret must be in the platform's namespace).
    operator_ns: String,
    started: Instant,
    step: std::cell::Cell<usize>,
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
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
        std::env::var("SIPMBA_E2E_KAFKA"),
    ) {
        (Ok(database), Ok(database_url), Ok(kafka)) => Some(External {
            database,
            database_url,
            kafka,
        }),
        _ => None,
    };
    let suite = Suite {
        client,
        helm: env("SIPMBA_E2E_HELM", "helm"),
        cli: env("SIPMBA_E2E_CLI", "target/release/sipmba"),
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

/// Runs `program` with `args` (and `input` on its standard input); its standard output, or an
/// error with everything it said.
async fn run(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

async fn apply(client: &Client, ns: &str, resource: serde_json::Value) -> anyhow::Result<()> {
    let kind = resource["kind"].as_str().unwrap_or_default().to_owned();
    let name = resource["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let api = dynamic_for(client, ns, &resource).await?;
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&resource),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

async fn dynamic_for(
    client: &Client,
    ns: &str,
    resource: &serde_json::Value,
) -> anyhow::Result<Api<DynamicObject>> {
    let api_version = resource["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    dynamic(
        client,
        ns,
        group,
        version,
        resource["kind"].as_str().unwrap_or_default(),
    )
    .await
}

async fn dynamic(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> anyhow::Result<Api<DynamicObject>> {
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await?;
    Ok(Api::namespaced_with(client.clone(), ns, &ar))
}

/// Polls `check` every second until it gives a value; the last error or state in the failure.
async fn wait_for<T, F: std::future::Future<Output = anyhow::Result<Result<T, String>>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(Ok(found)) => return Ok(found),
            Ok(Err(state)) => state,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what}: not within {} s (last: {last})", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn condition(object: &DynamicObject, kind: &str) -> Option<(bool, String)> {
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"] == "True",
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

fn bearer<T>(token: &str, msg: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(msg);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// The UIDs of the pods of `platform`'s `component`, and its workload's generation.
async fn workload(
    client: &Client,
    platform: &str,
    component: &str,
) -> anyhow::Result<(i64, Vec<String>)> {
    let name = format!("{platform}-{component}");
    let generation = if component == "processing" {
        let api: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
        api.get(&name).await?.metadata.generation
    } else {
        let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
        api.get(&name).await?.metadata.generation
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut uids: Vec<String> = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={platform},app.kubernetes.io/component={component}"
        )))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    uids.sort();
    Ok((generation.unwrap_or_default(), uids))
}

/// Every object of the kinds a platform owns whose owner is `uid`, as `Kind/name`.
async fn owned_by(client: &Client, uid: &str) -> anyhow::Result<Vec<String>> {
    async fn of<K>(client: &Client, uid: &str, out: &mut Vec<String>) -> anyhow::Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + k8s_openapi::serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(client.clone(), NS);
        for item in api.list(&ListParams::default()).await?.items {
            if item.owner_references().iter().any(|o| o.uid == uid) {
                out.push(format!(
                    "{}/{}",
                    K::kind(&K::DynamicType::default()),
                    item.name_any()
                ));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    of::<Deployment>(client, uid, &mut out).await?;
    of::<StatefulSet>(client, uid, &mut out).await?;
    of::<Service>(client, uid, &mut out).await?;
    of::<ConfigMap>(client, uid, &mut out).await?;
    of::<Secret>(client, uid, &mut out).await?;
    of::<PodDisruptionBudget>(client, uid, &mut out).await?;
    out.sort();
    Ok(out)
}

/// A local port forwarded to port 7400 of a running pod of `component` (kube's port-forward,
/// one per connection, as `kubectl port-forward` does).
async fn forward(client: &Client, component: &str) -> anyhow::Result<u16> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance=demo,app.kubernetes.io/component={component}"
        )))
        .await?
        .items
        .into_iter()
        .find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|phase| phase == "Running")
        })
        .with_context(|| format!("no running {component} pod"))?
        .name_any();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (pods, pod) = (pods.clone(), pod.clone());
            tokio::spawn(async move {
                let Ok(mut forwarder) = pods.portforward(&pod, &[7400]).await else {
                    return;
                };
                if let Some(mut upstream) = forwarder.take_stream(7400) {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                }
            });
        }
    });
    Ok(port)
}

async fn grpc(port: u16, ca: &str) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://localhost:{port}"))?
        .tls_config(tls)?
        .connect()
        .await?)
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
                    &Patch::Apply(
                        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                    ),
                )
                .await?;
        }
        let limit = Duration::from_secs;
        self.step(
            "helm install --wait: the operator runs as its pod",
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
            "kubectl delete thing: finalizer released, collect refuses its token",
            limit(180),
            self.delete_thing(),
        )
        .await?;
        self.step(
            "kubectl delete sipmba: the garbage collector removes every child",
            limit(240),
            self.delete_platforms(),
        )
        .await?;
        self.step(
            "helm uninstall: the operator goes, the CRDs stay",
            limit(180),
            self.uninstall(),
        )
        .await?;
        Ok(())
    }

    async fn install(&self) -> anyhow::Result<()> {
        let tag = format!("operator.image.tag={}", self.tag);
        let mut args = vec![
            "install",
            RELEASE,
            &self.chart,
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
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_ns);
        let operator = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
            .await?
            .items;
        let [pod] = operator.as_slice() else {
            bail!("{} operator pods, not 1", operator.len());
        };
        let spec = pod.spec.clone().unwrap_or_default();
        if spec.service_account_name.as_deref() != Some(OPERATOR) {
            bail!(
                "the operator runs as {:?}, not {OPERATOR}",
                spec.service_account_name
            );
        }
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            bail!("the operator pod {} is not Ready", pod.name_any());
        }
        println!(
            "  operator pod {} Ready, ServiceAccount {OPERATOR}",
            pod.name_any()
        );
        Ok(())
    }

    async fn rbac(&self) -> anyhow::Result<()> {
        let who = format!("--as=system:serviceaccount:{}:{OPERATOR}", self.operator_ns);
        let allowed = [
            ("patch", "sipmbas.sipmba.io"),
            ("patch", "things.sipmba.io/status"),
            ("update", "things.sipmba.io/finalizers"),
            ("create", "deployments.apps"),
            ("create", "statefulsets.apps"),
            ("patch", "secrets"),
            ("create", "poddisruptionbudgets.policy"),
        ];
        let refused = [
            ("create", "pods"),
            ("delete", "secrets"),
            ("delete", "deployments.apps"),
            ("create", "pods/exec"),
            ("list", "nodes"),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
            ("update", "customresourcedefinitions.apiextensions.k8s.io"),
            ("create", "sipmbas.sipmba.io"),
        ];
        for (verb, resource) in allowed.iter().chain(&refused) {
            let expected = allowed.contains(&(verb, resource));
            // `kubectl auth can-i` answers yes (exit 0) or no (exit 1).
            let (kind, subresource) = resource.split_once('/').unwrap_or((resource, ""));
            let subresource = format!("--subresource={subresource}");
            let mut args = vec!["auth", "can-i", verb, kind, "-n", NS, &who];
            if kind != *resource {
                args.push(&subresource);
            }
            let answer = run("kubectl", &args, None).await.is_ok();
            if answer != expected {
                bail!(
                    "the operator {} {verb} {resource}",
                    if answer { "may" } else { "may not" }
                );
            }
            println!("  {verb} {resource}: {}", if answer { "yes" } else { "no" });
        }
        Ok(())
    }

    fn platform_spec(&self, topic_prefix: &str, replicas: i32) -> serde_json::Value {
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
    async fn externals(&self, external: &External) -> anyhow::Result<()> {
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

    async fn platform(&self) -> anyhow::Result<()> {
        if let Some(external) = &self.external {
            self.externals(external).await?;
        }
        apply(
            &self.client,
            NS,
            json!({
                "apiVersion": "sipmba.io/v1alpha1", "kind": "SipMba",
                "metadata": {"name": "demo", "namespace": NS},
                "spec": self.platform_spec("", 1)
            }),
        )
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
            let ready = list
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .into_iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
                .count();
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

    async fn refusals(&self) -> anyhow::Result<()> {
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

    async fn thing(&self) -> anyhow::Result<ThingUnderTest> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let ca =
            secret_value(&secrets.get("demo-ca").await?, "ca.crt").context("the platform CA")?;
        let operator = secret_value(&secrets.get("demo-clients").await?, "operator")
            .context("the operator's credential")?;
        let sso = grpc(forward(&self.client, "sso").await?, &ca).await?;
        let admin = pb::token_service_client::TokenServiceClient::new(sso.clone())
            .token(pb::TokenRequest {
                grant: Some(pb::token_request::Grant::ClientCredentials(
                    pb::ClientCredentialsGrant {
                        client_id: OPERATOR.into(),
                        client_secret: operator,
                        scope: String::new(),
                    },
                )),
            })
            .await?
            .into_inner()
            .access_token;
        let password = format!("e2e-{}", uuid::Uuid::new_v4().simple());
        let username = format!("e2e-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let owner = pb::account_service_client::AccountServiceClient::new(sso.clone())
            .register_user(bearer(
                &admin,
                pb::RegisterUserRequest {
                    username: username.clone(),
                    password: password.clone(),
                },
            )?)
            .await?
            .into_inner()
            .user
            .context("registered user id")?
            .value;

        // The agent, as a pod with its provisioning endpoint.
        let enrollment = uuid::Uuid::new_v4().simple().to_string();
        let client = &self.client;
        apply(
            client,
            NS,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "e2e-agent-enrollment", "namespace": NS},
                "stringData": {"secret": enrollment}
            }),
        )
        .await?;
        apply(client, NS, json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "e2e-agent", "namespace": NS},
            "data": {"config.toml": "state_dir = \"/var/lib/sipmba-edge\"\nsample_interval_secs = 2\nupload_interval_secs = 3\n\n[provisioning]\nlisten = \"0.0.0.0:7443\"\nenrollment_secret_file = \"/etc/sipmba-edge/enrollment/secret\"\n\n[[sensors]]\nkind = \"simulated\"\nmetric = \"temperature\"\nunit = \"Cel\"\nmin = 18.0\nmax = 28.0\n"}
        }))
        .await?;
        apply(client, NS, json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "e2e-agent", "namespace": NS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "e2e-agent"}},
                "template": {
                    "metadata": {"labels": {"app": "e2e-agent"}},
                    "spec": {
                        "securityContext": {"runAsNonRoot": true, "fsGroup": 65532},
                        "containers": [{
                            "name": "agent",
                            "image": format!("ghcr.io/sipmba/sipmba-edge:{}", self.tag),
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["run", "--config", "/etc/sipmba-edge/config/config.toml"],
                            "env": [{"name": "RUST_LOG", "value": "info"}],
                            "ports": [{"containerPort": 7443, "name": "provisioning"}],
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/sipmba-edge/config"},
                                {"name": "enrollment", "mountPath": "/etc/sipmba-edge/enrollment"},
                                {"name": "state", "mountPath": "/var/lib/sipmba-edge"}
                            ]
                        }],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "e2e-agent"}},
                            {"name": "enrollment", "secret": {"secretName": "e2e-agent-enrollment"}},
                            {"name": "state", "emptyDir": {}}
                        ]
                    }
                }
            }
        }))
        .await?;
        apply(client, NS, json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "e2e-agent", "namespace": NS},
            "spec": {"selector": {"app": "e2e-agent"}, "ports": [{"port": 7443, "targetPort": "provisioning"}]}
        }))
        .await?;

        // The Thing: the operator registers it, issues its token and delivers it to the agent.
        apply(client, NS, json!({
            "apiVersion": "sipmba.io/v1alpha1", "kind": "Thing",
            "metadata": {"name": "e2e-thing", "namespace": NS},
            "spec": {
                "platformRef": "demo", "owner": owner,
                "labels": {"suite": "e2e"},
                "agent": {"endpoint": format!("http://e2e-agent.{NS}.svc:7443"),
                          "enrollmentSecretRef": {"name": "e2e-agent-enrollment", "key": "secret"}}
            }
        }))
        .await?;
        let things = dynamic(client, NS, "sipmba.io", "v1alpha1", "Thing").await?;
        let seen = std::cell::RefCell::new(Vec::new());
        let id = wait_for(
            "Registered, TokenIssued and Delivered",
            Duration::from_secs(290),
            || {
                let things = things.clone();
                let seen = &seen;
                async move {
                    let thing = things.get("e2e-thing").await?;
                    let mut missing = Vec::new();
                    for kind in ["Registered", "TokenIssued", "Delivered"] {
                        match condition(&thing, kind) {
                            Some((true, _)) => {
                                if !seen.borrow().contains(&kind) {
                                    println!("  {kind}");
                                    seen.borrow_mut().push(kind);
                                }
                            }
                            other => missing.push(format!("{kind}: {other:?}")),
                        }
                    }
                    let id = thing.data["status"]["thingId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    Ok(if missing.is_empty() && !id.is_empty() {
                        Ok(id)
                    } else {
                        Err(missing.join("; "))
                    })
                }
            },
        )
        .await?;
        println!("  thing {id}");
        Ok(ThingUnderTest {
            id,
            username,
            password,
            ca,
        })
    }

    async fn cli_readings(&self, thing: &ThingUnderTest) -> anyhow::Result<Cli> {
        let dir = tempfile::tempdir()?;
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, &thing.ca)?;
        let mut global = vec![
            "--ca-file".to_owned(),
            ca_file.display().to_string(),
            "--config-dir".to_owned(),
            dir.path().join("config").display().to_string(),
        ];
        for component in ["sso", "objects", "control", "processing"] {
            let port = forward(&self.client, component).await?;
            if component == "sso" {
                global.push("--server".into());
                global.push(format!("https://localhost:{port}"));
            }
            global.push("--endpoint".into());
            global.push(format!("{component}=https://localhost:{port}"));
        }
        let cli = Cli {
            program: self.cli.clone(),
            global,
            _dir: dir,
        };
        cli.run(
            &["login", "-u", &thing.username, "--password-stdin"],
            Some(&format!("{}\n", thing.password)),
        )
        .await?;
        let listed = cli.run(&["things", "list", "-o", "json"], None).await?;
        if !listed.contains(&thing.id) {
            bail!("`things list` does not show {}: {listed}", thing.id);
        }
        println!("  sipmba things list: {}", listed.trim());
        let latest = wait_for(
            "a temperature reading",
            Duration::from_secs(200),
            || async {
                let out = cli
                    .run(
                        &[
                            "telemetry",
                            "latest",
                            &thing.id,
                            "-m",
                            "temperature",
                            "-o",
                            "json",
                        ],
                        None,
                    )
                    .await?;
                Ok(if out.contains("temperature") {
                    Ok(out)
                } else {
                    Err(out)
                })
            },
        )
        .await?;
        println!("  sipmba telemetry latest: {}", latest.trim());
        Ok(cli)
    }

    async fn cli_command(&self, cli: &Cli, thing: &ThingUnderTest) -> anyhow::Result<()> {
        let out = cli
            .run(
                &[
                    "commands",
                    "send",
                    &thing.id,
                    "agent.ping",
                    "--wait",
                    "--timeout",
                    "150s",
                    "-o",
                    "json",
                ],
                None,
            )
            .await?;
        if !out.contains("ACKED") {
            bail!("the command did not end ACKED: {out}");
        }
        println!(
            "  sipmba commands send agent.ping --wait: {}",
            out.trim().lines().last().unwrap_or_default()
        );
        Ok(())
    }

    async fn platform_workloads(
        &self,
    ) -> anyhow::Result<BTreeMap<&'static str, (i64, Vec<String>)>> {
        let mut out = BTreeMap::new();
        for component in COMPONENTS {
            out.insert(component, workload(&self.client, "demo", component).await?);
        }
        Ok(out)
    }

    async fn operator_pods(&self) -> anyhow::Result<Vec<String>> {
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

    async fn upgrade(&self) -> anyhow::Result<()> {
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
            "the old operator pod to go",
            Duration::from_secs(120),
            || async {
                let pods = self.operator_pods().await?;
                Ok(if pods.len() == 1 && !operator_before.contains(&pods[0]) {
                    Ok(pods)
                } else {
                    Err(format!("{pods:?}"))
                })
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

    async fn roll_collect(&self) -> anyhow::Result<()> {
        let before = self.platform_workloads().await?;
        let mut spec = self.platform_spec("", 1);
        spec["services"]["collect"]["resources"] =
            json!({"requests": {"cpu": "20m", "memory": "40Mi"}});
        apply(
            &self.client,
            NS,
            json!({
                "apiVersion": "sipmba.io/v1alpha1", "kind": "SipMba",
                "metadata": {"name": "demo", "namespace": NS}, "spec": spec
            }),
        )
        .await?;
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
                let ready = condition(&platform, "Ready").is_some_and(|(ready, _)| ready)
                    && platform.data["status"]["observedGeneration"].as_i64()
                        == platform.metadata.generation;
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

    async fn operator_killed(&self) -> anyhow::Result<()> {
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
        apply(
            &self.client,
            NS,
            json!({
                "apiVersion": "sipmba.io/v1alpha1", "kind": "SipMba",
                "metadata": {"name": "second", "namespace": NS}, "spec": spec
            }),
        )
        .await?;
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
                let ready = condition(&platform, "Ready").is_some_and(|(ready, _)| ready)
                    && platform.data["status"]["observedGeneration"].as_i64()
                        == platform.metadata.generation;
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
            "  {} children, each once; the client secrets kept",
            children.len()
        );
        Ok(())
    }

    async fn delete_thing(&self) -> anyhow::Result<()> {
        let things = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "Thing").await?;
        let deleted_at = k8s_openapi::jiff::Timestamp::now();
        things.delete("e2e-thing", &DeleteParams::default()).await?;
        wait_for(
            "the finalizer released",
            Duration::from_secs(120),
            || async {
                Ok(match things.get_opt("e2e-thing").await? {
                    None => Ok(()),
                    Some(t) => Err(format!("finalizers {:?}", t.finalizers())),
                })
            },
        )
        .await?;
        println!("  Thing gone: its finalizer released");
        let since = deleted_at.to_string();
        let line = wait_for(
            "collect refusing the agent's token",
            Duration::from_secs(50),
            || async {
                let logs = self
                    .kubectl(&["logs", "-n", NS, "deploy/e2e-agent", "--since-time", &since])
                    .await?;
                Ok(logs
                    .lines()
                    .find(|l| l.contains("collect refused the session: Unauthenticated"))
                    .map(str::to_owned)
                    .ok_or_else(|| logs.lines().last().unwrap_or_default().to_owned()))
            },
        )
        .await?;
        println!("  the agent's log: {}", line.trim());
        Ok(())
    }

    async fn delete_platforms(&self) -> anyhow::Result<()> {
        let sipmbas = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "SipMba").await?;
        let mut uids = Vec::new();
        for name in ["demo", "second"] {
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

    async fn uninstall(&self) -> anyhow::Result<()> {
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

struct ThingUnderTest {
    id: String,
    username: String,
    password: String,
    ca: String,
}

/// The `sipmba` CLI, logged in through port-forwards.
struct Cli {
    program: String,
    global: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cli {
    async fn run(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        let mut all: Vec<&str> = self.global.iter().map(String::as_str).collect();
        all.extend(args);
        run(&self.program, &all, input).await
    }
}
