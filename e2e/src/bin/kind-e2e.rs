//! The cluster e2e suite: on a kind or k3s cluster where the chart is installed (with its trial
//! PostgreSQL and Redpanda), it creates a `SipMba` platform, waits for it to be Ready, registers
//! a user, runs a `sipmba-edge` agent as a pod, applies a `Thing` for it, waits for the operator
//! to deliver its token, checks that the agent's telemetry arrives in processing, and deletes the
//! Thing. `.github/workflows/e2e.yml` builds the images, creates the cluster and runs it:
//!
//! ```sh
//! helm install sipmba charts/sipmba -n sipmba-e2e --create-namespace -f charts/sipmba/ci/trial-values.yaml
//! cargo run -p sipmba-e2e --bin kind-e2e
//! ```
//!
//! Without a reachable cluster it says so and exits with 77 ("not run"), never 0.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::{
    api::core::v1::{Namespace, Pod, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;
use sipmba_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const NS: &str = "sipmba-e2e";
const MANAGER: &str = "sipmba-e2e";
/// Exit code of a suite that did not run.
const NOT_RUN: i32 = 77;

fn image(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            println!(
                "NOT RUN: no Kubernetes cluster is reachable ({e}); set KUBECONFIG to a kind or k3s cluster"
            );
            std::process::exit(NOT_RUN);
        }
    };
    if let Err(e) = client.apiserver_version().await {
        println!("NOT RUN: the Kubernetes API server does not answer ({e})");
        std::process::exit(NOT_RUN);
    }
    let started = Instant::now();
    match run(client).await {
        Ok(()) => println!(
            "PASSED: platform Ready, token delivered to the agent, telemetry stored ({} s)",
            started.elapsed().as_secs()
        ),
        Err(e) => {
            eprintln!("FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn apply(client: &Client, resource: serde_json::Value) -> anyhow::Result<()> {
    let kind = resource["kind"].as_str().unwrap_or_default().to_owned();
    let name = resource["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let api_version = resource["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&resource),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(())
}

async fn wait_for<T, F: std::future::Future<Output = anyhow::Result<Option<T>>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {} s {last}", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// A gRPC channel to a pod of `component` through a port-forward, verifying the platform CA
/// for the service's cluster name.
async fn forward(client: &Client, component: &str, ca: &str) -> anyhow::Result<Channel> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance=demo,app.kubernetes.io/component={component}"
        )))
        .await?
        .items
        .into_iter()
        .find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|phase| phase == "Running")
        })
        .with_context(|| format!("no running {component} pod"))?
        .name_any();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
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
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(format!("demo-{component}.{NS}.svc"));
    Ok(Endpoint::from_shared(format!("https://{local}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}

fn bearer<T>(token: &str, msg: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(msg);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn token(sso: &Channel, grant: pb::token_request::Grant) -> anyhow::Result<String> {
    Ok(
        pb::token_service_client::TokenServiceClient::new(sso.clone())
            .token(pb::TokenRequest { grant: Some(grant) })
            .await?
            .into_inner()
            .access_token,
    )
}

async fn run(client: Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds.get_opt("sipmbas.sipmba.io").await?.is_none() {
        bail!(
            "the SipMba CRD is missing: install the chart first (helm install sipmba charts/sipmba -n {NS} \
             --create-namespace -f charts/sipmba/ci/trial-values.yaml)"
        );
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            NS,
            &PatchParams::apply(MANAGER),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            ),
        )
        .await?;

    // 1. The platform, on the chart's trial PostgreSQL and Redpanda.
    let sipmba_image = image("SIPMBA_E2E_IMAGE", "ghcr.io/sipmba/sipmba:e2e");
    apply(
        &client,
        json!({
            "apiVersion": "sipmba.io/v1alpha1", "kind": "SipMba",
            "metadata": {"name": "demo", "namespace": NS},
            "spec": {
                "image": sipmba_image, "imagePullPolicy": "IfNotPresent",
                "database": {"urlSecretRef": {"name": "sipmba-trial-postgresql", "key": "url"}},
                "queue": {"brokers": ["sipmba-trial-redpanda:9092"]},
                "services": {"sso": {"replicas": 1}, "objects": {"replicas": 1},
                             "collect": {"replicas": 1}, "control": {"replicas": 1}}
            }
        }),
    )
    .await?;
    let sipmbas = dynamic(&client, "sipmba.io", "v1alpha1", "SipMba").await?;
    wait_for(
        "the platform to be Ready",
        Duration::from_secs(600),
        || async {
            let platform = sipmbas.get("demo").await?;
            let ready = platform.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            println!(
                "platform: {}",
                platform.data["status"]["conditions"][0]["message"]
                    .as_str()
                    .unwrap_or("…")
            );
            Ok(ready.then_some(()))
        },
    )
    .await?;

    // 2. A user to own the thing, registered with the operator's credential.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let ca = secret_value(&secrets.get("demo-ca").await?, "ca.crt").context("the platform CA")?;
    let operator = secret_value(&secrets.get("demo-clients").await?, "operator")
        .context("the operator's credential")?;
    let sso = forward(&client, "sso", &ca).await?;
    let admin = token(
        &sso,
        pb::token_request::Grant::ClientCredentials(pb::ClientCredentialsGrant {
            client_id: "sipmba-operator".into(),
            client_secret: operator,
            scope: String::new(),
        }),
    )
    .await?;
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

    // 3. The agent, as a pod with its provisioning endpoint.
    let enrollment = uuid::Uuid::new_v4().simple().to_string();
    let edge_image = image("SIPMBA_EDGE_E2E_IMAGE", "ghcr.io/sipmba/sipmba-edge:e2e");
    apply(
        &client,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "e2e-agent-enrollment", "namespace": NS},
            "stringData": {"secret": enrollment}
        }),
    )
    .await?;
    apply(&client, json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "e2e-agent", "namespace": NS},
        "data": {"config.toml": "state_dir = \"/var/lib/sipmba-edge\"\nsample_interval_secs = 2\nupload_interval_secs = 5\n\n[provisioning]\nlisten = \"0.0.0.0:7443\"\nenrollment_secret_file = \"/etc/sipmba-edge/enrollment/secret\"\n\n[[sensors]]\nkind = \"simulated\"\nmetric = \"temperature\"\nunit = \"Cel\"\nmin = 18.0\nmax = 28.0\n"}
    })).await?;
    apply(&client, json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "e2e-agent", "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "e2e-agent"}},
            "template": {
                "metadata": {"labels": {"app": "e2e-agent"}},
                "spec": {
                    "containers": [{
                        "name": "agent", "image": edge_image, "imagePullPolicy": "IfNotPresent",
                        "args": ["run", "--config", "/etc/sipmba-edge/config/config.toml"],
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
    })).await?;
    apply(&client, json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "e2e-agent", "namespace": NS},
        "spec": {"selector": {"app": "e2e-agent"}, "ports": [{"port": 7443, "targetPort": "provisioning"}]}
    })).await?;

    // 4. The Thing: the operator registers it and delivers its token to the agent.
    apply(
        &client,
        json!({
            "apiVersion": "sipmba.io/v1alpha1", "kind": "Thing",
            "metadata": {"name": "e2e-thing", "namespace": NS},
            "spec": {
                "platformRef": "demo", "owner": owner,
                "labels": {"suite": "e2e"},
                "agent": {"endpoint": format!("http://e2e-agent.{NS}.svc:7443"),
                          "enrollmentSecretRef": {"name": "e2e-agent-enrollment", "key": "secret"}}
            }
        }),
    )
    .await?;
    let things = dynamic(&client, "sipmba.io", "v1alpha1", "Thing").await?;
    let thing_id = wait_for(
        "the token delivered to the agent",
        Duration::from_secs(300),
        || async {
            let thing = things.get("e2e-thing").await?;
            let status = &thing.data["status"];
            let delivered = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Delivered" && c["status"] == "True");
            Ok(delivered.then(|| status["thingId"].as_str().unwrap_or_default().to_owned()))
        },
    )
    .await?;
    println!("thing {thing_id}: token delivered");

    // 5. Its telemetry arrives in processing, readable by its owner.
    let owner_token = token(
        &sso,
        pb::token_request::Grant::Password(pb::PasswordGrant {
            username,
            password,
            scope: String::new(),
        }),
    )
    .await?;
    let processing = forward(&client, "processing", &ca).await?;
    wait_for(
        "the agent's readings in processing",
        Duration::from_secs(180),
        || async {
            let latest =
                pb::telemetry_service_client::TelemetryServiceClient::new(processing.clone())
                    .get_latest(bearer(
                        &owner_token,
                        pb::GetLatestRequest {
                            things: vec![pb::ThingId {
                                value: thing_id.clone(),
                            }],
                            metrics: vec![],
                        },
                    )?)
                    .await?
                    .into_inner();
            Ok(latest
                .values
                .iter()
                .any(|v| v.metric.as_ref().is_some_and(|m| m.name == "temperature"))
                .then_some(()))
        },
    )
    .await?;
    println!("telemetry of {thing_id} stored");

    // 6. Deleted: the finalizer revokes and deregisters, then lets it go.
    things.delete("e2e-thing", &DeleteParams::default()).await?;
    wait_for(
        "the Thing to be deleted",
        Duration::from_secs(120),
        || async { Ok(things.get_opt("e2e-thing").await?.is_none().then_some(())) },
    )
    .await?;
    Ok(())
}

async fn dynamic(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
) -> anyhow::Result<Api<kube::api::DynamicObject>> {
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await?;
    Ok(Api::namespaced_with(client.clone(), NS, &ar))
}
