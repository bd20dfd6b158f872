//! What the steps share: processes, server-side apply, waits, owners, port-forwards.

use super::*;

/// Runs `program` with `args` (and `input` on its standard input); its standard output, or an
/// error with everything it said.
pub(super) async fn run(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<String> {
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

pub(super) async fn apply(
    client: &Client,
    ns: &str,
    resource: serde_json::Value,
) -> anyhow::Result<()> {
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

pub(super) async fn dynamic_for(
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

pub(super) async fn dynamic(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> anyhow::Result<Api<DynamicObject>> {
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    Ok(match caps.scope {
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
        kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &ar),
    })
}

/// Polls `check` every second until it gives a value; the last error or state in the failure.
pub(super) async fn wait_for<
    T,
    F: std::future::Future<Output = anyhow::Result<Result<T, String>>>,
>(
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

pub(super) fn condition(object: &DynamicObject, kind: &str) -> Option<(bool, String)> {
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

/// Ready, for the generation it has now.
pub(super) fn converged(platform: &DynamicObject) -> bool {
    condition(platform, "Ready").is_some_and(|(ready, _)| ready)
        && platform.data["status"]["observedGeneration"].as_i64() == platform.metadata.generation
}

pub(super) fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

pub(super) fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// The UIDs of the pods of `platform`'s `component`, and its workload's generation.
pub(super) async fn workload(
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
pub(super) async fn owned_by(client: &Client, uid: &str) -> anyhow::Result<Vec<String>> {
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
pub(super) async fn forward(client: &Client, component: &str) -> anyhow::Result<u16> {
    forward_to(
        client,
        &format!("app.kubernetes.io/instance=demo,app.kubernetes.io/component={component}"),
        7400,
    )
    .await
}

/// A local port forwarded to `port` of a running pod in the platform's namespace that
/// `selector` picks.
pub(super) async fn forward_to(client: &Client, selector: &str, port: u16) -> anyhow::Result<u16> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod = pods
        .list(&ListParams::default().labels(selector))
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
        .with_context(|| format!("no running pod of {selector}"))?
        .name_any();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (pods, pod) = (pods.clone(), pod.clone());
            tokio::spawn(async move {
                let Ok(mut forwarder) = pods.portforward(&pod, &[port]).await else {
                    return;
                };
                if let Some(mut upstream) = forwarder.take_stream(port) {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                }
            });
        }
    });
    Ok(local)
}

pub(super) async fn grpc(port: u16, ca: &str) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://localhost:{port}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}
