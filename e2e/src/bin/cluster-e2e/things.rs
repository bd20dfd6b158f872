//! The steps on a Thing: its agent pod, the CLI, its deletion.

use super::*;

/// A user registered in the platform, to own things.
pub(super) struct Owner {
    pub(super) id: String,
    pub(super) username: String,
    pub(super) password: String,
    /// The platform CA.
    pub(super) ca: String,
}

impl Suite {
    /// Registers a user (as the operator's service client, through a port-forward to sso).
    pub(super) async fn owner(&self) -> anyhow::Result<Owner> {
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
        // Right after the pods are Ready, sso may not reach Objects through its Service yet (the
        // node's proxy rules follow the endpoints a moment later): it answers UNAVAILABLE, and
        // a client tries again, as this one does.
        let owner = wait_for(
            "sso registering the owner",
            Duration::from_secs(60),
            || async {
                let registered = pb::account_service_client::AccountServiceClient::new(sso.clone())
                    .register_user(sipmba_testkit::with_token(
                        &admin,
                        pb::RegisterUserRequest {
                            username: username.clone(),
                            password: password.clone(),
                        },
                    ))
                    .await;
                match registered {
                    Ok(answer) => Ok(Ok(answer
                        .into_inner()
                        .user
                        .context("registered user id")?
                        .value)),
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        Ok(Err(status.to_string()))
                    }
                    Err(status) => Err(status.into()),
                }
            },
        )
        .await?;
        Ok(Owner {
            id: owner,
            username,
            password,
            ca,
        })
    }

    pub(super) async fn thing(&self) -> anyhow::Result<ThingUnderTest> {
        let Owner {
            id: owner,
            username,
            password,
            ca,
        } = self.owner().await?;

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
            "data": {"config.toml": "state_dir = \"/var/lib/sipmba-edge\"\nsample_interval_secs = 1\nupload_interval_secs = 1\n\n[provisioning]\nlisten = \"0.0.0.0:7443\"\nenrollment_secret_file = \"/etc/sipmba-edge/enrollment/secret\"\n\n[[sensors]]\nkind = \"simulated\"\nmetric = \"temperature\"\nunit = \"Cel\"\nmin = 18.0\nmax = 28.0\n"}
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
                        // The restricted Pod Security Standard, as the namespace enforces.
                        "securityContext": {"runAsNonRoot": true, "fsGroup": 65532,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "agent",
                            "image": format!("ghcr.io/sipmba/sipmba-edge:{}", self.tag),
                            "imagePullPolicy": "IfNotPresent",
                            "securityContext": {"allowPrivilegeEscalation": false,
                                                "readOnlyRootFilesystem": true,
                                                "capabilities": {"drop": ["ALL"]}},
                            "args": ["run", "--config", "/etc/sipmba-edge/config/config.toml"],
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                          "limits": {"memory": "64Mi"}},
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
                "agent": {"endpoint": format!("http://e2e-agent.{NS}.svc.cluster.local:7443"),
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
            owner,
            username,
            password,
            ca,
        })
    }

    pub(super) async fn cli_readings(&self, thing: &ThingUnderTest) -> anyhow::Result<Cli> {
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
        let latest = cli
            .latest_temperature(&thing.id, Duration::from_secs(200))
            .await?;
        println!("  sipmba telemetry latest: {}", latest.trim());
        Ok(cli)
    }

    pub(super) async fn cli_command(
        &self,
        cli: &Cli,
        thing: &ThingUnderTest,
    ) -> anyhow::Result<()> {
        self.send_ping(cli, &thing.id).await
    }

    /// `sipmba commands send <thing> agent.ping --wait`, which must end ACKED.
    pub(super) async fn send_ping(&self, cli: &Cli, thing: &str) -> anyhow::Result<()> {
        let out = cli
            .run(
                &[
                    "commands",
                    "send",
                    thing,
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

    pub(super) async fn delete_thing(&self) -> anyhow::Result<()> {
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
}

pub(super) struct ThingUnderTest {
    pub(super) id: String,
    /// Its owner's user id.
    pub(super) owner: String,
    username: String,
    password: String,
    pub(super) ca: String,
}

/// The `sipmba` CLI, logged in through port-forwards.
pub(super) struct Cli {
    program: String,
    global: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cli {
    pub(super) async fn run(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        let mut all: Vec<&str> = self.global.iter().map(String::as_str).collect();
        all.extend(args);
        run(&self.program, &all, input).await
    }

    /// `sipmba telemetry latest <thing> -m temperature`, once it shows a reading (within
    /// `limit`).
    pub(super) async fn latest_temperature(
        &self,
        thing: &str,
        limit: Duration,
    ) -> anyhow::Result<String> {
        wait_for("a temperature reading", limit, || async {
            let out = self
                .run(
                    &[
                        "telemetry",
                        "latest",
                        thing,
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
        })
        .await
    }
}
