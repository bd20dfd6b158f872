//! The `sipmba` binary as a process: configuration errors, health that waits for the database,
//! reflection, metrics, TLS, `--dev`, and graceful shutdown on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use sipmba_proto::v1 as pb;
use sipmba_testkit::{Backend, TestDb, TestIssuer, serve_jwks, with_token};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::Command,
};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

mod common;
use common::*;

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

async fn http_post(addr: SocketAddr, path: &str, form: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

/// Forwards `listen` to PostgreSQL: the database "comes up" when this starts.
async fn forward(listener: TcpListener, to: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn bad_invocations_exit_with_a_message_that_names_the_problem() {
    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "processing",
        "--plaintext",
        "--database-url",
        "sqlite::memory:",
        "--jwks-url",
        "http://127.0.0.1:9/jwks",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue.brokers"), "{err}");
    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "control",
        "--plaintext",
        "--database-url",
        "sqlite::memory:",
        "--jwks-url",
        "http://127.0.0.1:9/jwks",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue.brokers"), "{err}");
    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "control",
        "--plaintext",
        "--database-url",
        "sqlite::memory:",
        "--jwks-url",
        "http://127.0.0.1:9/jwks",
        "--brokers",
        "127.0.0.1:9",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("control.client_secret_file"), "{err}");
    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "collect",
        "--plaintext",
        "--database-url",
        "sqlite::memory:",
        "--jwks-url",
        "http://127.0.0.1:1/jwks",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue.brokers"), "{err}");
    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "sso",
        "--plaintext",
        "--database-url",
        "sqlite::memory:",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sso.objects_url"), "{err}");

    let base = [
        "server",
        "--target",
        "objects",
        "--database-url",
        "sqlite::memory:",
        "--jwks-url",
        "http://127.0.0.1:1/jwks",
    ];
    let (code, err) = run_to_end(&base).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("server.tls_cert") && err.contains("plaintext"),
        "{err}"
    );

    let mut args = base.to_vec();
    args.extend(["--plaintext", "--listen", "not-an-address"]);
    let (code, err) = run_to_end(&args).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("server.listen") && err.contains("SIPMBA_LISTEN"),
        "{err}"
    );

    let (code, err) = run_to_end(&[
        "server",
        "--target",
        "objects",
        "--plaintext",
        "--database-url",
        "mysql://x",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("database.url"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sipmba.toml");
    std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:1\"\ntypo = 1\n").unwrap();
    let (code, err) = run_to_end(&["server", "--config", file.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("typo"), "{err}");

    let (code, err) = run_to_end(&["server", "--target", "nonsense"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nonsense"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_waits_for_its_database_then_serves_reflection_metrics_and_stops_on_sigterm() {
    sipmba_testkit::init_logs();
    let db = TestDb::new(Backend::Postgres).await.unwrap();
    let issuer = TestIssuer::new();
    let (jwks_url, _jwks) = serve_jwks(serde_json::to_value(issuer.key.jwks()).unwrap())
        .await
        .unwrap();
    // The database is reached through a port where nothing listens yet.
    let db_port = free_port();
    let url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{db_port}"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let child = spawn(
        &[
            "server",
            "--target",
            "objects",
            "--plaintext",
            "--listen",
            &listen,
            "--database-url",
            &url,
            "--jwks-url",
            &jwks_url,
            "--issuer",
            &issuer.issuer,
            "--audience",
            &issuer.audience,
        ],
        dir.path(),
    );
    let channel = connect(Endpoint::from_shared(format!("http://{listen}")).unwrap()).await;
    for service in ["", "sipmba.v1.UserService", "sipmba.v1.ThingService"] {
        assert_eq!(
            health(&channel, service).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    let ready = http_get(listen.parse().unwrap(), "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");

    // The database comes up: health follows, without a restart.
    let proxy = TcpListener::bind(("127.0.0.1", db_port)).await.unwrap();
    tokio::spawn(forward(proxy, "127.0.0.1:5432".parse().unwrap()));
    wait_for_health(&channel, "sipmba.v1.UserService", ServingStatus::Serving).await;
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);

    // A real call with a real token.
    let request = with_token(
        &issuer.admin_token(),
        pb::CreateUserRequest {
            username: "proc-root".into(),
            parent: None,
        },
    );
    let user = pb::user_service_client::UserServiceClient::new(channel.clone())
        .create_user(request)
        .await
        .expect("create user")
        .into_inner();
    assert_eq!(user.username, "proc-root");

    // Reflection lists the services with no proto files at hand.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let responses = reflection
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    let Some(Ok(first)) = responses.first() else {
        panic!("no reflection answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = &first.message_response else {
        panic!("unexpected reflection answer {first:?}")
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "sipmba.v1.UserService",
        "sipmba.v1.ThingService",
        "sipmba.v1.ChannelService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    // A change-feed stream is open when the shutdown starts: it must end cleanly, not break.
    let watch = with_token(
        &issuer.admin_token(),
        pb::WatchEventsRequest { after_sequence: 0 },
    );
    let mut events = pb::event_service_client::EventServiceClient::new(channel.clone())
        .watch_events(watch)
        .await
        .unwrap()
        .into_inner();

    // Metrics over plain HTTP/1.1 on the same port, with bounded labels.
    let metrics = http_get(listen.parse().unwrap(), "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains(
            r#"sipmba_grpc_requests_total{method="/sipmba.v1.UserService/CreateUser",code="0"} 1"#
        ),
        "{metrics}"
    );

    sigterm_and_wait(child).await;
    let end = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the stream ends with the server");
    assert!(end.is_none(), "a clean end of stream, got {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_spoken_on_every_listener_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.path().join("tls.crt"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = spawn(
        &[
            "server",
            "--target",
            "objects",
            "--listen",
            &listen,
            "--tls-cert",
            "tls.crt",
            "--tls-key",
            "tls.key",
            "--database-url",
            "sqlite://objects.db",
            "--jwks-url",
            "http://127.0.0.1:1/jwks",
        ],
        dir.path(),
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://{listen}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let channel = connect(endpoint).await;
    wait_for_health(&channel, "sipmba.v1.UserService", ServingStatus::Serving).await;

    // Plaintext HTTP/2 is not answered.
    let plain = Endpoint::from_shared(format!("http://{listen}"))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_err(),
    };
    assert!(
        refused,
        "plaintext must not be served when TLS is configured"
    );

    // A client without HTTP/2 (a probe, a scraper) still gets /healthz over TLS.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            cert.cert.der().to_vec(),
        ))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(&listen).await.unwrap();
    let mut stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS with HTTP/1.1 only");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
        "{out}"
    );

    sigterm_and_wait(child).await;
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_at_sso_is_refused_by_objects_in_another_process_within_a_second() {
    let broker = sipmba_testkit::TestBroker::start().await.unwrap();
    let db = TestDb::new(Backend::Postgres).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sso_port, objects_port) = (free_port(), free_port());
    let sso_addr = format!("127.0.0.1:{sso_port}");
    let objects_addr = format!("127.0.0.1:{objects_port}");
    let issuer = format!("http://{sso_addr}");
    let config = dir.path().join("sipmba.toml");
    std::fs::write(&config, broker.queue_toml()).unwrap();
    let config = config.to_str().unwrap();
    let objects = spawn(
        &[
            "server",
            "--target",
            "objects",
            "--plaintext",
            "--config",
            config,
            "--listen",
            &objects_addr,
            "--database-url",
            &db.url,
            "--issuer",
            &issuer,
            "--jwks-url",
            &format!("{issuer}/.well-known/jwks.json"),
        ],
        dir.path(),
    );
    let sso = spawn(
        &[
            "server",
            "--target",
            "sso",
            "--plaintext",
            "--config",
            config,
            "--listen",
            &sso_addr,
            "--database-url",
            &db.url,
            "--objects-url",
            &format!("http://{objects_addr}"),
            "--open-registration",
        ],
        dir.path(),
    );
    let objects_channel =
        connect(Endpoint::from_shared(format!("http://{objects_addr}")).unwrap()).await;
    let sso_channel = connect(Endpoint::from_shared(issuer.clone()).unwrap()).await;
    wait_for_health(&objects_channel, "", ServingStatus::Serving).await;
    wait_for_health(&sso_channel, "", ServingStatus::Serving).await;

    let user = pb::account_service_client::AccountServiceClient::new(sso_channel.clone())
        .register_user(pb::RegisterUserRequest {
            username: "two-proc".into(),
            password: "two process password".into(),
        })
        .await
        .expect("open registration")
        .into_inner()
        .user
        .unwrap();
    let token = pb::token_service_client::TokenServiceClient::new(sso_channel.clone())
        .token(pb::TokenRequest {
            grant: Some(pb::token_request::Grant::Password(pb::PasswordGrant {
                username: "two-proc".into(),
                password: "two process password".into(),
                scope: String::new(),
            })),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let mut users = pb::user_service_client::UserServiceClient::new(objects_channel.clone());
    let get = || {
        with_token(
            &token,
            pb::GetUserRequest {
                id: Some(user.clone()),
            },
        )
    };
    assert_eq!(
        users.get_user(get()).await.unwrap().into_inner().username,
        "two-proc"
    );

    pb::token_service_client::TokenServiceClient::new(sso_channel.clone())
        .revoke(pb::RevokeRequest {
            token: token.clone(),
            token_type_hint: 0,
        })
        .await
        .unwrap();
    let revoked_at = Instant::now();
    loop {
        match users.get_user(get()).await {
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                assert!(status.message().contains("revoked"), "{status:?}");
                break;
            }
            other => assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "objects still accepts the token a second after its revocation: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sigterm_and_wait(sso).await;
    sigterm_and_wait(objects).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_killed_mid_stream_loses_no_acknowledged_reading() {
    let p = CollectProcess::new(sipmba_testkit::TestBroker::start().await.unwrap()).await;
    let mut collect = p.spawn();
    let total = 20_000;
    let (thing, sender, progress) = p.stream(total);
    // SIGKILL collect in the middle of the stream, then start it again.
    until_acked(&progress, total / 3).await;
    collect.kill().await.unwrap();
    let killed_at = progress.acked();
    let collect = p.spawn();
    let breaks = sender.await.unwrap();
    assert!(!breaks.is_empty(), "the kill broke the session");
    assert!(killed_at < total, "killed before the end");
    let seqs = p.logged(thing, total).await;
    assert_eq!(
        seqs,
        (1..=total).collect(),
        "every reading, acknowledged before the kill or after"
    );
    sigterm_and_wait(collect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_mid_stream_loses_no_acknowledged_reading() {
    let mut p = CollectProcess::new(sipmba_testkit::TestBroker::start_own().await.unwrap()).await;
    let collect = p.spawn();
    let total = 20_000;
    let (thing, sender, progress) = p.stream(total);
    until_acked(&progress, total / 3).await;
    // SIGKILL the broker and bring it back on the same storage.
    p.broker.kill();
    tokio::time::sleep(Duration::from_millis(300)).await; // the broker stays down a moment
    p.broker.restart().await.unwrap();
    sender.await.unwrap();
    let seqs = p.logged(thing, total).await;
    assert_eq!(seqs, (1..=total).collect());
    sigterm_and_wait(collect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_killed_mid_stream_stores_every_reading_once() {
    let p = CollectProcess::new(sipmba_testkit::TestBroker::start().await.unwrap()).await;
    let args = p.processing_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let collect = p.spawn();
    let dir = p.dir.path();
    let mut processing = spawn(&args, dir);

    // The paper's broken-connection test (Fig. 8), with the consumer killed rather than stopped.
    let total = 100_000;
    let (thing, sender, _progress) = p.stream(total);
    let stored = async |at_least: u64| p.stored(thing, at_least).await;
    // SIGKILL processing once it has stored a third, while readings keep arriving.
    stored(total / 3).await;
    processing.kill().await.unwrap();
    let killed_at = stored(0).await;
    assert!(
        killed_at < total,
        "killed before the end ({killed_at} stored)"
    );
    let processing = spawn(&args, dir);
    sender.await.unwrap();
    assert_eq!(stored(total).await, total, "every reading stored");
    // Nothing stored twice: the count stays put.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored(total).await, total, "no reading stored twice");
    sigterm_and_wait(processing).await;
    sigterm_and_wait(collect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_call_each_other_over_tls_trusting_the_platform_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = sipmba_testkit::test_ca();
    std::fs::write(dir.path().join("ca.crt"), &ca).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), &key).unwrap();
    // Another CA, which signed nothing here.
    let (other_ca, _, _) = sipmba_testkit::test_ca();
    std::fs::write(dir.path().join("other-ca.crt"), &other_ca).unwrap();
    for (file, ca) in [("tls.toml", "ca.crt"), ("wrong-ca.toml", "other-ca.crt")] {
        std::fs::write(
            dir.path().join(file),
            format!(
                "[server]\ntls_cert = \"tls.crt\"\ntls_key = \"tls.key\"\npeer_ca_file = \"{ca}\"\n"
            ),
        )
        .unwrap();
    }
    let (objects_addr, sso_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let sso_url = format!("https://{sso_addr}");
    let jwks = format!("{sso_url}/.well-known/jwks.json");
    // Objects verifies tokens with sso's keys, fetched over https://.
    let objects = spawn(
        &[
            "server",
            "--target",
            "objects",
            "--config",
            "tls.toml",
            "--listen",
            &objects_addr,
            "--database-url",
            "sqlite://objects.db?mode=rwc",
            "--jwks-url",
            &jwks,
            "--issuer",
            &sso_url,
        ],
        dir.path(),
    );
    // sso creates users in Objects over https://.
    let objects_url = format!("https://{objects_addr}");
    // sso, with the CA its configuration file trusts.
    let start_sso = |config: &str, sso_addr: &str| {
        spawn(
            &[
                "server",
                "--target",
                "sso",
                "--config",
                config,
                "--listen",
                sso_addr,
                "--database-url",
                "sqlite://sso.db?mode=rwc",
                "--objects-url",
                &objects_url,
                "--issuer",
                &sso_url,
                "--open-registration",
            ],
            dir.path(),
        )
    };
    let sso = start_sso("tls.toml", &sso_addr);
    let tls = ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&ca));
    let channel = |addr: &str| {
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls.clone())
            .unwrap()
    };
    let sso_channel = connect(channel(&sso_addr)).await;
    let objects_channel = connect(channel(&objects_addr)).await;
    wait_for_health(&sso_channel, "", ServingStatus::Serving).await;
    wait_for_health(&objects_channel, "", ServingStatus::Serving).await;

    let registered = pb::account_service_client::AccountServiceClient::new(sso_channel.clone())
        .register_user(pb::RegisterUserRequest {
            username: "tls-user".into(),
            password: "tls password 1".into(),
        })
        .await
        .expect("sso reaches Objects over TLS")
        .into_inner();
    let token = pb::token_service_client::TokenServiceClient::new(sso_channel.clone())
        .token(pb::TokenRequest {
            grant: Some(pb::token_request::Grant::Password(pb::PasswordGrant {
                username: "tls-user".into(),
                password: "tls password 1".into(),
                scope: String::new(),
            })),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let me = pb::user_service_client::UserServiceClient::new(objects_channel)
        .get_user(with_token(
            &token,
            pb::GetUserRequest {
                id: registered.user.clone(),
            },
        ))
        .await
        .expect("Objects verifies the token with keys it fetched from sso over TLS")
        .into_inner();
    assert_eq!(me.username, "tls-user");
    sigterm_and_wait(sso).await;

    // An sso trusting another CA cannot reach Objects: registration fails, nothing half-made.
    let sso_addr = format!("127.0.0.1:{}", free_port());
    let wrong = start_sso("wrong-ca.toml", &sso_addr);
    let wrong_channel = connect(channel(&sso_addr)).await;
    wait_for_health(&wrong_channel, "", ServingStatus::Serving).await;
    let refused = pb::account_service_client::AccountServiceClient::new(wrong_channel)
        .register_user(pb::RegisterUserRequest {
            username: "untrusted".into(),
            password: "tls password 2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    sigterm_and_wait(wrong).await;
    sigterm_and_wait(objects).await;

    // An https:// service URL without the platform CA is refused at start, naming the setting.
    let out = Command::new(BIN)
        .args([
            "server",
            "--target",
            "sso",
            "--listen",
            "127.0.0.1:0",
            "--plaintext",
            "--database-url",
            "sqlite://x.db?mode=rwc",
            "--objects-url",
            &objects_url,
        ])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.peer_ca_file"), "{stderr}");
}
