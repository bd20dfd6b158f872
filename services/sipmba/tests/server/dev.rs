//! `sipmba server --dev`: embedded defaults, an admin token, rules commanding things.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_on_embedded_defaults_with_a_usable_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // A service client from the configuration, as the operator would get one.
    let secret = "operator-secret-0123456789-abcdefghijklmnop";
    std::fs::write(dir.path().join("operator.secret"), format!("{secret}\n")).unwrap();
    std::fs::write(
        dir.path().join("sipmba.toml"),
        "[[sso.service_clients]]\nid = \"operator\"\nsecret_file = \"operator.secret\"\nscopes = [\"objects:admin\", \"users:write\"]\n",
    )
    .unwrap();
    let config = ["--config", "sipmba.toml"];
    let server = common::dev(dir.path(), port, &config);
    let channel = server.channel().await;
    wait_for_health(&channel, "", ServingStatus::Serving).await;
    // With tansu installed (.ci/test installs it), --dev brings the log and collect.
    wait_for_health(&channel, "sipmba.v1.CollectService", ServingStatus::Serving).await;
    assert!(
        dir.path().join(".sipmba/sipmba.db").is_file(),
        "SQLite is the embedded default"
    );
    let token = std::fs::read_to_string(dir.path().join(".sipmba/dev-admin.token")).unwrap();
    let mut users = pb::user_service_client::UserServiceClient::new(channel.clone());
    let request = with_token(
        &token,
        pb::CreateUserRequest {
            username: "dev-root".into(),
            parent: None,
        },
    );
    let root = users
        .create_user(request)
        .await
        .expect("the dev token works")
        .into_inner();
    // Control runs too, and asks Objects with a client_credentials token of the same process.
    wait_for_health(&channel, "sipmba.v1.ControlService", ServingStatus::Serving).await;
    let thing = pb::thing_service_client::ThingServiceClient::new(channel.clone())
        .create_thing(with_token(
            &token,
            pb::CreateThingRequest {
                name: "dev-thing".into(),
                owner: root.id.clone(),
                labels: Default::default(),
            },
        ))
        .await
        .expect("a thing")
        .into_inner();
    let mut control = pb::control_service_client::ControlServiceClient::new(channel.clone());
    let command = control
        .send_command(with_token(
            &token,
            pb::SendCommandRequest {
                thing: thing.id.clone(),
                name: "ping".into(),
                payload: vec![],
                ttl: None,
                idempotency_key: String::new(),
                on_behalf_of: None,
            },
        ))
        .await
        .expect("the dev platform queues commands")
        .into_inner();
    assert_eq!(command.state, pb::CommandState::Queued as i32);
    let fetched = control
        .get_command(with_token(
            &token,
            pb::GetCommandRequest {
                id: command.id.clone(),
            },
        ))
        .await
        .expect("and shows them")
        .into_inner();
    assert_eq!(fetched.id, command.id);
    // Processing runs too: the new thing has never been heard from.
    wait_for_health(
        &channel,
        "sipmba.v1.TelemetryService",
        ServingStatus::Serving,
    )
    .await;
    let presence = pb::presence_service_client::PresenceServiceClient::new(channel.clone())
        .get_presence(with_token(
            &token,
            pb::GetPresenceRequest {
                things: vec![thing.id.clone().unwrap()],
            },
        ))
        .await
        .expect("processing answers")
        .into_inner();
    assert!(!presence.presences[0].online);
    assert_eq!(presence.presences[0].last_seq, 0);
    let jwks = http_get(listen.parse().unwrap(), "/.well-known/jwks.json").await;
    assert!(
        jwks.contains(r#""kty":"OKP""#) && jwks.contains("Ed25519"),
        "{jwks}"
    );
    let discovery = http_get(listen.parse().unwrap(), "/.well-known/openid-configuration").await;
    assert!(
        discovery.contains(&format!(
            "\"token_endpoint\":\"http://{listen}/oauth2/token\""
        )),
        "{discovery}"
    );
    let body = format!("grant_type=client_credentials&client_id=operator&client_secret={secret}");
    let reply = http_post(listen.parse().unwrap(), "/oauth2/token", &body).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains(r#""scope":"objects:admin users:write""#),
        "{reply}"
    );
    // /metrics: every platform metric the chart's alerts and dashboard use is exported, Control's
    // consumer lag is there and back to zero once the command is applied, and the process is ready.
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let metrics = http_get(addr, "/metrics").await;
    let exported: std::collections::HashSet<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    let used = monitored_metrics();
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the chart's alerts or dashboard use metrics nobody exports: {missing:?}\n{metrics}"
    );
    assert!(metrics.contains("\nsipmba_ready 1\n"), "{metrics}");
    let lag = r#"sipmba_log_consumer_lag_records{consumer="control",topic="sipmba.commands",partition="0"} 0"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(addr, "/metrics").await.contains(lag) {
        assert!(Instant::now() < deadline, "{lag} never seen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::stop_dev(server).await;

    // A restart keeps the key, the data and the token valid.
    let server = common::dev(dir.path(), port, &config);
    let channel = server.channel().await;
    wait_for_health(&channel, "", ServingStatus::Serving).await;
    let request = with_token(
        &token,
        pb::CreateUserRequest {
            username: "dev-root".into(),
            parent: None,
        },
    );
    let err = pb::user_service_client::UserServiceClient::new(channel.clone())
        .create_user(request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    // The command queued before the restart is still there, still waiting for its thing.
    wait_for_health(&channel, "sipmba.v1.ControlService", ServingStatus::Serving).await;
    let kept = pb::control_service_client::ControlServiceClient::new(channel)
        .get_command(with_token(
            &token,
            pb::GetCommandRequest {
                id: command.id.clone(),
            },
        ))
        .await
        .expect("the command survives the restart")
        .into_inner();
    assert_eq!(kept.state, pb::CommandState::Queued as i32);
    common::stop_dev(server).await;
}

/// A token from the process's own sso.
async fn grant(channel: &Channel, grant: pb::token_request::Grant) -> String {
    pb::token_service_client::TokenServiceClient::new(channel.clone())
        .token(pb::TokenRequest { grant: Some(grant) })
        .await
        .expect("a token")
        .into_inner()
        .access_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_rules_command_things_through_control_as_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::dev(dir.path(), free_port(), &[]);
    let channel = server.channel().await;
    for service in [
        "sipmba.v1.CollectService",
        "sipmba.v1.ControlService",
        "sipmba.v1.RuleService",
    ] {
        wait_for_health(&channel, service, ServingStatus::Serving).await;
    }
    let admin = std::fs::read_to_string(dir.path().join(".sipmba/dev-admin.token")).unwrap();
    // A user who logs in with a password, and its thing with a secret of its own.
    pb::account_service_client::AccountServiceClient::new(channel.clone())
        .register_user(with_token(
            &admin,
            pb::RegisterUserRequest {
                username: "greenhouse".into(),
                password: "correct horse battery".into(),
            },
        ))
        .await
        .expect("registered");
    let user = grant(
        &channel,
        pb::token_request::Grant::Password(pb::PasswordGrant {
            username: "greenhouse".into(),
            password: "correct horse battery".into(),
            scope: "things:write rules:read rules:write commands:read".into(),
        }),
    )
    .await;
    let thing = pb::thing_service_client::ThingServiceClient::new(channel.clone())
        .create_thing(with_token(
            &user,
            pb::CreateThingRequest {
                name: "vent".into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await
        .expect("a thing")
        .into_inner();
    let secret = pb::account_service_client::AccountServiceClient::new(channel.clone())
        .issue_thing_secret(with_token(
            &user,
            pb::IssueThingSecretRequest {
                thing: thing.id.clone(),
            },
        ))
        .await
        .expect("a thing secret")
        .into_inner();
    let thing_token = grant(
        &channel,
        pb::token_request::Grant::ClientCredentials(pb::ClientCredentialsGrant {
            client_id: secret.client_id,
            client_secret: secret.client_secret,
            scope: String::new(),
        }),
    )
    .await;
    let mut rules = pb::rule_service_client::RuleServiceClient::new(channel.clone());
    let rule = rules
        .create_rule(with_token(
            &user,
            pb::CreateRuleRequest {
                rule: Some(pb::Rule {
                    name: "open when hot".into(),
                    selector: Some(pb::rule::Selector::Thing(thing.id.clone().unwrap())),
                    metric: "temperature".into(),
                    comparison: pb::Comparison::Gt as i32,
                    threshold: 30.0,
                    action: Some(pb::CommandTemplate {
                        name: "vent.open".into(),
                        payload: vec![],
                        ttl: None,
                    }),
                    enabled: true,
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("a rule")
        .into_inner();
    // The thing reports 35 °C through Collect.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = pb::session_request::Frame::Hello(pb::session_request::Hello {
        agent_version: "test".into(),
        last_acked_seq: Some(0),
        max_commands: 0,
    });
    let reading = pb::session_request::Frame::Telemetry(pb::session_request::TelemetryBatch {
        readings: vec![pb::Reading {
            seq: 1,
            device_time: None,
            metrics: vec![pb::Metric {
                name: "temperature".into(),
                value: Some(pb::metric::Value::Number(35.0)),
                unit: "Cel".into(),
            }],
            payload: vec![],
        }],
    });
    tx.send(pb::SessionRequest { frame: Some(hello) })
        .await
        .unwrap();
    tx.send(pb::SessionRequest {
        frame: Some(reading),
    })
    .await
    .unwrap();
    let mut inbound = pb::collect_service_client::CollectServiceClient::new(channel.clone())
        .session(with_token(
            &thing_token,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .expect("a session")
        .into_inner();
    loop {
        match inbound.message().await.expect("the session answers") {
            Some(pb::SessionResponse {
                frame: Some(pb::session_response::Frame::Ack(a)),
            }) if a.acked_seq == 1 => break,
            Some(_) => {}
            None => panic!("the session ended before the reading was acknowledged"),
        }
    }
    drop(tx);
    // The rule fires; its command is queued by Control, issued by the rule.
    let deadline = Instant::now() + Duration::from_secs(30);
    let command = loop {
        let firings = rules
            .list_firings(with_token(
                &user,
                pb::ListFiringsRequest {
                    rule: rule.id.clone(),
                    page: None,
                },
            ))
            .await
            .expect("firings")
            .into_inner()
            .firings;
        if let Some(command) = firings.first().and_then(|f| f.command.clone()) {
            break command;
        }
        assert!(
            firings
                .iter()
                .all(|f| f.detail.is_empty() || f.detail.contains("being sent")),
            "{firings:?}"
        );
        assert!(Instant::now() < deadline, "the rule never sent its command");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let queued = pb::control_service_client::ControlServiceClient::new(channel.clone())
        .get_command(with_token(
            &user,
            pb::GetCommandRequest { id: Some(command) },
        ))
        .await
        .expect("the owner sees the rule's command")
        .into_inner();
    assert_eq!(queued.name, "vent.open");
    assert_eq!(
        queued.issuer.unwrap().issuer,
        Some(pb::command_issuer::Issuer::Rule(rule.id.unwrap()))
    );
    common::stop_dev(server).await;
}

/// The platform metrics (not the operator's: its own test checks those) that the chart's alert
/// rules and Grafana dashboard use, by the name in a `# TYPE` line.
fn monitored_metrics() -> std::collections::BTreeSet<String> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../charts/sipmba/files/monitoring"
    );
    let mut names = std::collections::BTreeSet::new();
    for file in ["alerts.yaml", "dashboard.json"] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("sipmba_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            if name.starts_with("sipmba_operator_") {
                continue;
            }
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            names.insert(base.to_owned());
        }
    }
    names
}
