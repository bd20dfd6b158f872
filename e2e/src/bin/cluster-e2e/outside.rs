//! The steps on a thing outside the cluster, as a Raspberry Pi on a LAN is: its agent runs on
//! this host (not in a pod), its provisioning endpoint on the node's address; the platform is
//! exposed through NodePorts.

use std::{
    net::{IpAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command},
};

use super::things::{Cli, ThingUnderTest};
use super::*;

/// The thing outside the cluster, and one whose agent accepts connections but never answers.
const PI: &str = "e2e-pi";
const SILENT: &str = "e2e-silent";

/// The agent process on this host; killed when dropped (and by the kernel when the suite dies).
pub(super) struct HostAgent {
    child: Child,
    log: PathBuf,
    endpoint: String,
    /// Holds the silent agent's port: connections complete, nothing answers.
    _silent: TcpListener,
    silent_endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HostAgent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A free port on `address`.
fn free_port(address: IpAddr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((address, 0))?.local_addr()?.port())
}

impl Suite {
    /// The node's address, where this host's processes and the cluster's pods meet (the
    /// `.ci/cluster` node is this host).
    async fn node_address(&self) -> anyhow::Result<String> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let node = nodes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .next()
            .context("no node")?;
        node.status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
            .context("the node has no InternalIP")
    }

    /// An address of this host that pods reach: `SIPMBA_E2E_HOST_ADDRESS`, or the node's (here
    /// the node is this host; on kind, give the docker network's gateway).
    pub(super) async fn host_address(&self) -> anyhow::Result<String> {
        match std::env::var("SIPMBA_E2E_HOST_ADDRESS") {
            Ok(address) => Ok(address),
            Err(_) => self.node_address().await,
        }
    }

    async fn thing_outside(&self, name: &str, owner: &str, endpoint: &str) -> anyhow::Result<()> {
        apply(&self.client, NS, json!({
            "apiVersion": "sipmba.io/v1alpha1", "kind": "Thing",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "platformRef": "demo", "owner": owner,
                "labels": {"suite": "e2e", "site": "outside"},
                "agent": {"endpoint": endpoint,
                          "enrollmentSecretRef": {"name": "e2e-agent-enrollment", "key": "secret"}}
            }
        }))
        .await?;
        Ok(())
    }

    /// Delivered's (status, reason, message).
    async fn delivered(&self, name: &str) -> anyhow::Result<Option<(String, String, String)>> {
        let things = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "Thing").await?;
        let thing = things.get(name).await?;
        Ok(thing.data["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Delivered"))
            .map(|c| {
                let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                (text("status"), text("reason"), text("message"))
            }))
    }

    /// Starts the agent on this host and a silent one, applies their Things, and sees the
    /// operator say plainly why it cannot deliver while the platform is not exposed.
    pub(super) async fn outside_unexposed(
        &self,
        thing: &ThingUnderTest,
    ) -> anyhow::Result<HostAgent> {
        let node = self.host_address().await?;
        let address: IpAddr = node.parse().context("this host's address")?;
        let dir = tempfile::tempdir()?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let enrollment = secret_value(&secrets.get("e2e-agent-enrollment").await?, "secret")
            .context("the enrollment secret")?;
        std::fs::write(dir.path().join("enrollment.secret"), enrollment)?;
        let port = free_port(address)?;
        let config = format!(
            "state_dir = {state:?}\nsample_interval_secs = 2\nupload_interval_secs = 3\n\n\
             [provisioning]\nlisten = \"{node}:{port}\"\nenrollment_secret_file = {secret:?}\n\n\
             [[sensors]]\nkind = \"simulated\"\nmetric = \"temperature\"\nunit = \"Cel\"\n\
             min = 18.0\nmax = 28.0\n",
            state = dir.path().join("state").display().to_string(),
            secret = dir.path().join("enrollment.secret").display().to_string(),
        );
        let config_file = dir.path().join("config.toml");
        std::fs::write(&config_file, config)?;
        let log = dir.path().join("agent.log");
        let out = std::fs::File::create(&log)?;
        let mut command = if std::path::Path::new("/usr/bin/setpriv").exists() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(&self.edge);
            c
        } else {
            Command::new(&self.edge)
        };
        let child = command
            .args(["run", "--config"])
            .arg(&config_file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", self.edge))?;
        let silent = TcpListener::bind((address, 0))?;
        let agent = HostAgent {
            child,
            log,
            endpoint: format!("http://{node}:{port}"),
            silent_endpoint: format!("http://{node}:{}", silent.local_addr()?.port()),
            _silent: silent,
            _dir: dir,
        };
        wait_for(
            "the agent's provisioning endpoint",
            Duration::from_secs(30),
            || async {
                let log = agent.log();
                Ok(if log.contains("provisioning endpoint listening") {
                    Ok(())
                } else {
                    Err(log.lines().last().unwrap_or_default().to_owned())
                })
            },
        )
        .await?;
        println!(
            "  sipmba-edge on this host, provisioning at {}",
            agent.endpoint
        );

        self.thing_outside(PI, &thing.owner, &agent.endpoint)
            .await?;
        let (reason, message) = wait_for(
            "Delivered False, NoExternalAddress",
            Duration::from_secs(90),
            || async {
                Ok(match self.delivered(PI).await? {
                    Some((status, reason, message))
                        if status == "False" && reason == "NoExternalAddress" =>
                    {
                        Ok((reason, message))
                    }
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
        for expected in ["outside the cluster", "spec.exposure.collect"] {
            if !message.contains(expected) {
                bail!("the message does not say {expected:?}: {message}");
            }
        }
        println!("  {PI}: Delivered False, {reason}: {message}");
        Ok(agent)
    }

    /// Exposes collect and sso through NodePorts on the node's address: the platform's status
    /// gives the URLs, the certificates are re-issued naming the address and served by the
    /// running pods (no restart).
    pub(super) async fn expose(&self, ca: &str) -> anyhow::Result<(String, String)> {
        let node = self.node_address().await?;
        let pods_before = self.pod_names("collect").await?;
        let platforms = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "SipMba").await?;
        let exposed = json!({"type": "NodePort", "host": node});
        platforms
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"exposure": {"collect": exposed, "sso": exposed}}})),
            )
            .await?;
        let (collect, sso) = wait_for(
            "status.external and Exposed True",
            Duration::from_secs(120),
            || async {
                let platform = platforms.get("demo").await?;
                let external = &platform.data["status"]["external"];
                Ok(
                    match (
                        condition(&platform, "Exposed"),
                        external["collect"].as_str(),
                        external["sso"].as_str(),
                    ) {
                        (Some((true, _)), Some(collect), Some(sso)) => {
                            Ok((collect.to_owned(), sso.to_owned()))
                        }
                        (exposed, ..) => Err(format!("Exposed {exposed:?}, external {external}")),
                    },
                )
            },
        )
        .await?;
        println!("  status.external: collect {collect}, sso {sso}");
        let services: Api<Service> = Api::namespaced(self.client.clone(), NS);
        for name in ["demo-collect-external", "demo-sso-external"] {
            let service = services.get(name).await?;
            let spec = service.spec.unwrap_or_default();
            if spec.type_.as_deref() != Some("NodePort") {
                bail!("{name} is {:?}, not a NodePort", spec.type_);
            }
        }
        // The running pods serve the re-issued certificate once the kubelet updates their
        // mounted Secret: the suite verifies it for the node's address, as agents will.
        for url in [&collect, &sso] {
            let served = wait_for(
                "a certificate naming the node's address",
                Duration::from_secs(240),
                || async {
                    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                    let endpoint = Endpoint::from_shared(url.clone())?
                        .tls_config(tls)?
                        .connect_timeout(Duration::from_secs(5));
                    Ok(match endpoint.connect().await {
                        Ok(channel) => {
                            let mut health =
                                tonic_health::pb::health_client::HealthClient::new(channel);
                            match health
                                .check(tonic_health::pb::HealthCheckRequest::default())
                                .await
                            {
                                Ok(answer) => Ok(answer.into_inner().status().as_str_name()),
                                Err(status) => Err(format!("health: {status}")),
                            }
                        }
                        Err(e) => Err(format!("{e:?}")),
                    })
                },
            )
            .await?;
            println!("  {url}: TLS verified for {node} against the platform CA, health {served}");
        }
        let pods_after = self.pod_names("collect").await?;
        if pods_before != pods_after {
            bail!(
                "collect's pods changed ({pods_before:?} -> {pods_after:?}): the certificate must be served without a restart"
            );
        }
        println!("  collect's pods as they were: {pods_after:?}");
        Ok((collect, sso))
    }

    async fn pod_names(&self, component: &str) -> anyhow::Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let mut names: Vec<String> = pods
            .list(&ListParams::default().labels(&format!(
                "app.kubernetes.io/instance=demo,app.kubernetes.io/component={component}"
            )))
            .await?
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The thing outside is delivered the external URLs and streams through them; the silent
    /// agent's Thing fails on its own, without holding it up.
    pub(super) async fn outside_delivered(
        &self,
        thing: &ThingUnderTest,
        agent: &HostAgent,
        cli: &Cli,
    ) -> anyhow::Result<String> {
        self.thing_outside(SILENT, &thing.owner, &agent.silent_endpoint)
            .await?;
        let things = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "Thing").await?;
        let id = wait_for(
            "the thing outside Delivered",
            Duration::from_secs(120),
            || async {
                let pi = things.get(PI).await?;
                let id = pi.data["status"]["thingId"].as_str().unwrap_or_default();
                Ok(match self.delivered(PI).await? {
                    Some((status, ..)) if status == "True" && !id.is_empty() => Ok(id.to_owned()),
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
        println!("  {PI}: Delivered True, thing {id}");
        let (_, reason, message) = wait_for(
            "the silent agent's Thing reported unreachable",
            Duration::from_secs(90),
            || async {
                Ok(match self.delivered(SILENT).await? {
                    Some(d) if d.0 == "False" && d.1 == "AgentUnreachable" => Ok(d),
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
        println!("  {SILENT}: Delivered False, {reason}: {message}");
        let latest = cli
            .latest_temperature(&id, Duration::from_secs(150))
            .await?;
        println!(
            "  its reading, streamed through the NodePort: {}",
            latest.trim()
        );
        Ok(id)
    }

    /// A command reaches the thing outside; deleting its Thing revokes its token.
    pub(super) async fn outside_command_and_delete(
        &self,
        cli: &Cli,
        id: &str,
        agent: &HostAgent,
    ) -> anyhow::Result<()> {
        self.send_ping(cli, id).await?;
        let things = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "Thing").await?;
        let before = agent.log().len();
        for name in [PI, SILENT] {
            things.delete(name, &DeleteParams::default()).await?;
        }
        wait_for("both Things gone", Duration::from_secs(120), || async {
            let left: Vec<String> = things
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .map(|t| t.name_any())
                .filter(|n| n == PI || n == SILENT)
                .collect();
            Ok(if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            })
        })
        .await?;
        let line = wait_for(
            "collect refusing the agent's token",
            Duration::from_secs(60),
            || async {
                let log = agent.log();
                let since = log.get(before..).unwrap_or_default();
                Ok(since
                    .lines()
                    .find(|l| l.contains("collect refused the session: Unauthenticated"))
                    .map(str::to_owned)
                    .ok_or_else(|| since.lines().last().unwrap_or_default().to_owned()))
            },
        )
        .await?;
        println!("  the agent's log: {}", line.trim());

        // Exposure dropped: what it made goes, and the status says nothing of it.
        let platforms = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "SipMba").await?;
        platforms
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"exposure": null}})),
            )
            .await?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), NS);
        wait_for(
            "the exposure's Services deleted, status.external gone",
            Duration::from_secs(120),
            || async {
                let platform = platforms.get("demo").await?;
                let mut left = Vec::new();
                for name in ["demo-collect-external", "demo-sso-external"] {
                    if services.get_opt(name).await?.is_some() {
                        left.push(name);
                    }
                }
                let external = &platform.data["status"]["external"];
                Ok(
                    if left.is_empty()
                        && external.is_null()
                        && condition(&platform, "Exposed").is_none()
                    {
                        Ok(())
                    } else {
                        Err(format!("left {left:?}, status.external {external}"))
                    },
                )
            },
        )
        .await?;
        println!("  spec.exposure removed: its Services deleted, status.external gone");
        Ok(())
    }
}

impl Suite {
    /// The Events about `kind`/`name` in the suite's namespace: `(type, reason, note)`.
    async fn events_of(
        &self,
        kind: &str,
        name: &str,
    ) -> anyhow::Result<Vec<(String, String, String)>> {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), NS);
        let selector = format!("involvedObject.kind={kind},involvedObject.name={name}");
        Ok(events
            .list(&ListParams::default().fields(&selector))
            .await?
            .items
            .into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                )
            })
            .collect())
    }

    /// `kubectl describe` tells what the operator did: the platform's and the Things' Events.
    pub(super) async fn events(&self) -> anyhow::Result<()> {
        let expected: [(&str, &str, &[&str]); 4] = [
            (
                "SipMba",
                "demo",
                &[
                    "Created",
                    "CertificateIssued",
                    "TopicCreated",
                    "Ready",
                    "Exposed",
                    "CertificateRenewed",
                ],
            ),
            ("Thing", "e2e-thing", &["Registered", "TokenDelivered"]),
            (
                "Thing",
                PI,
                &[
                    "NoExternalAddress",
                    "Registered",
                    "TokenDelivered",
                    "CleanedUp",
                ],
            ),
            ("Thing", SILENT, &["AgentUnreachable", "CleanedUp"]),
        ];
        for (kind, name, reasons) in expected {
            let found = wait_for(
                &format!("the Events of {kind} {name}"),
                Duration::from_secs(30),
                || async {
                    let events = self.events_of(kind, name).await?;
                    let missing: Vec<&&str> = reasons
                        .iter()
                        .filter(|r| !events.iter().any(|e| e.1 == **r))
                        .collect();
                    Ok(if missing.is_empty() {
                        Ok(events)
                    } else {
                        Err(format!("missing {missing:?} among {events:?}"))
                    })
                },
            )
            .await?;
            for (kind, reason, note) in found.iter().filter(|e| reasons.contains(&e.1.as_str())) {
                println!("  {name}: {kind} {reason}: {note}");
            }
        }
        // A delivery failure is told once, as AgentUnreachable, not again as ReconcileFailed.
        let silent = self.events_of("Thing", SILENT).await?;
        if silent.iter().any(|e| e.1 == "ReconcileFailed") {
            bail!("the silent agent's failure was told twice: {silent:?}");
        }
        let described = self
            .kubectl(&["describe", "sipmba", "demo", "-n", NS])
            .await?;
        for reason in ["CertificateRenewed", "Exposed", "Ready"] {
            if !described.contains(reason) {
                bail!("`kubectl describe sipmba demo` does not show {reason}:\n{described}");
            }
        }
        println!("  kubectl describe sipmba demo shows them");
        Ok(())
    }
}
