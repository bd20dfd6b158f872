//! The SipMba reconciler against a mocked Kubernetes API (tower-test): every request's method,
//! path, field manager and body is asserted, in order, for a new platform, an unchanged one (no
//! writes), a change, an invalid spec, a transient error and the certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, runtime::controller::Action};
use serde_json::{Value, json};
use sipmba_operator::{
    api::{ComponentStatus, SipMba, SipMbaStatus},
    certs,
    desired::{self, Component},
    platform::{self, Context},
    reconcile::Failure,
};

mod common;
use common::*;

fn platform(tls: bool) -> SipMba {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/sipmba/examples/sipmba.yaml"),
    )
    .unwrap();
    let mut p: SipMba = serde_yaml::from_str(&text).unwrap();
    p.metadata.namespace = Some(NS.into());
    p.metadata.uid = Some("0f6a3c1e-1111-4222-8333-944455556666".into());
    p.metadata.generation = Some(1);
    p.spec.tls.enabled = Some(tls);
    p
}

/// A platform whose log is a real broker of its own.
async fn with_broker(mut p: SipMba) -> (SipMba, sipmba_testkit::TestBroker) {
    let broker = sipmba_testkit::TestBroker::start().await.unwrap();
    p.spec.queue.brokers = vec![broker.addr.clone()];
    p.spec.queue.topic_prefix = broker.prefix.clone();
    (p, broker)
}

fn context() -> (Arc<Context>, Handle) {
    let (client, handle) = mock_client();
    (
        Arc::new(Context::new(
            client,
            Arc::new(sipmba_operator::metrics::Metrics::default()),
        )),
        handle,
    )
}

/// The status write: the server answers with the whole resource.
fn apply_status(p: &SipMba) -> Expect {
    Expect {
        method: "PATCH",
        path: status_path(),
        reply: Reply::Object(serde_json::to_value(p).unwrap()),
        apply: true,
    }
}

fn status_path() -> String {
    format!("/apis/sipmba.io/v1alpha1/namespaces/{NS}/sipmbas/demo/status")
}

/// The children of a component as the reconciler reads them: `(path, live object)`; `ready`
/// gives workloads all their replicas ready.
fn children(p: &SipMba, component: Component, ready: bool) -> Vec<(String, Value)> {
    let name = desired::name(p, component);
    let config =
        serde_json::to_value(platform::as_applied(desired::config_map(p, component))).unwrap();
    let replicas = desired::replicas(p, component);
    let workload = if component == Component::Processing {
        let mut set = serde_json::to_value(platform::as_applied(desired::stateful_set(p))).unwrap();
        if ready {
            set["status"] = json!({"replicas": replicas, "readyReplicas": replicas});
        }
        (apps("statefulsets", &name), set)
    } else {
        let mut deployment =
            serde_json::to_value(platform::as_applied(desired::deployment(p, component))).unwrap();
        if ready {
            deployment["status"] = json!({"replicas": replicas, "readyReplicas": replicas});
        }
        (apps("deployments", &name), deployment)
    };
    vec![
        (core("configmaps", &name), config),
        workload,
        (
            core("services", &name),
            serde_json::to_value(platform::as_applied(desired::service(p, component))).unwrap(),
        ),
        (
            policy(&name),
            serde_json::to_value(platform::as_applied(desired::disruption_budget(
                p, component,
            )))
            .unwrap(),
        ),
    ]
}

fn existing_clients() -> Reply {
    Reply::Object(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "demo-clients", "namespace": NS},
        "data": {"control": "c2VjcmV0", "processing": "c2VjcmV0", "operator": "c2VjcmV0"},
    }))
}

/// The status of a platform whose services are all ready.
fn ready_status(p: &SipMba) -> SipMbaStatus {
    let conditions = [
        ("Ready", "True", "every service is ready"),
        ("Progressing", "False", "every service is ready"),
        ("Degraded", "False", "nothing is degraded"),
    ]
    .into_iter()
    .map(
        |(kind, status, message)| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: kind.into(),
            status: status.into(),
            reason: "AllReady".into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-20T10:00:00Z".parse().unwrap(),
            ),
        },
    )
    .collect();
    SipMbaStatus {
        observed_generation: Some(1),
        conditions,
        components: Component::ALL
            .iter()
            .map(|c| ComponentStatus {
                name: c.name().into(),
                replicas: desired::replicas(p, *c),
                ready_replicas: desired::replicas(p, *c),
            })
            .collect(),
        external: None,
    }
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()
}

#[tokio::test]
async fn a_new_platform_gets_its_secret_and_every_child_then_a_status() {
    let (p, broker) = with_broker(platform(false)).await;
    let (ctx, handle) = context();
    let mut expected = vec![
        get(core("secrets", "demo-clients"), Reply::Missing),
        create(format!("/api/v1/namespaces/{NS}/secrets")),
    ];
    for component in Component::ALL {
        for (path, _) in children(&p, component, false) {
            expected.push(get(path.clone(), Reply::Missing));
            expected.push(apply(path));
        }
    }
    expected.push(apply_status(&p));
    let verifier = tokio::spawn(serve(handle, expected));
    let action = platform::reconcile(Arc::new(p.clone()), ctx).await.unwrap();
    let seen = verifier.await.unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(15)),
        "services are starting"
    );

    // The clients' secrets: generated, 256 bits each, owned by the platform.
    let secret = &seen[1].2;
    for key in ["control", "processing", "operator"] {
        assert_eq!(
            secret["stringData"][key].as_str().unwrap().len(),
            43,
            "{key}"
        );
    }
    assert_eq!(secret["metadata"]["ownerReferences"][0]["controller"], true);
    // Every child is applied with its digest and the platform as controller.
    let applies: Vec<&(String, String, Value)> =
        seen.iter().filter(|(m, _, _)| m == "PATCH").collect();
    assert_eq!(applies.len(), 5 * 4 + 1);
    for (_, uri, body) in &applies[..20] {
        assert!(
            body["metadata"]["annotations"][platform::APPLIED].is_string(),
            "{uri}"
        );
        assert_eq!(
            body["metadata"]["ownerReferences"][0]["kind"], "SipMba",
            "{uri}"
        );
        assert_eq!(
            body["metadata"]["ownerReferences"][0]["uid"],
            "0f6a3c1e-1111-4222-8333-944455556666"
        );
    }
    let config = &seen[3].2;
    assert_eq!(config["kind"], "ConfigMap");
    assert!(
        config["data"]["sipmba.toml"]
            .as_str()
            .unwrap()
            .contains("plaintext = true")
    );
    // The status: starting, for the generation seen, with each service's readiness.
    let status = &seen.last().unwrap().2;
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Ready")["reason"], "ServicesStarting");
    assert_eq!(condition(status, "Ready")["observedGeneration"], 1);
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(status["status"]["components"].as_array().unwrap().len(), 5);
    // The topics are on the log, with the spec's partitions.
    let queue = sipmba_queue::Queue::connect(&broker.brokers(), &broker.prefix)
        .await
        .unwrap();
    assert_eq!(queue.partition_count("sipmba.telemetry").await.unwrap(), 4);
    assert_eq!(queue.partition_count("sipmba.commands").await.unwrap(), 4);
    assert_eq!(
        queue
            .partition_count("sipmba.command-events")
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        queue.partition_count("sipmba.revocations").await.unwrap(),
        1
    );
}

#[tokio::test]
async fn an_unchanged_platform_is_read_and_nothing_is_written() {
    let (mut p, _broker) = with_broker(platform(false)).await;
    p.status = Some(ready_status(&p));
    let (ctx, handle) = context();
    let mut expected = vec![get(core("secrets", "demo-clients"), existing_clients())];
    for component in Component::ALL {
        for (path, live) in children(&p, component, true) {
            expected.push(get(path, Reply::Object(live)));
        }
    }
    let verifier = tokio::spawn(serve(handle, expected));
    let action = platform::reconcile(Arc::new(p), ctx).await.unwrap();
    let seen = verifier.await.unwrap();
    assert!(
        seen.iter().all(|(method, _, _)| method == "GET"),
        "reads only"
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
}

#[tokio::test]
async fn a_change_applies_what_it_changes_and_the_status() {
    let (old, _broker) = with_broker(platform(false)).await;
    let mut p = old.clone();
    p.status = Some(ready_status(&old));
    p.metadata.generation = Some(2);
    p.spec.services.collect.replicas = Some(3);
    let (ctx, handle) = context();
    let mut expected = vec![get(core("secrets", "demo-clients"), existing_clients())];
    for component in Component::ALL {
        // What the cluster holds was applied from the old spec.
        for (path, live) in children(&old, component, true) {
            let changed = component == Component::Collect && path.contains("/deployments/");
            expected.push(get(path.clone(), Reply::Object(live.clone())));
            if changed {
                // The server answers with the live object: two pods ready, a third to come.
                let mut scaled = live;
                scaled["spec"]["replicas"] = json!(3);
                expected.push(Expect {
                    method: "PATCH",
                    path,
                    reply: Reply::Object(scaled),
                    apply: true,
                });
            }
        }
    }
    expected.push(apply_status(&p));
    let verifier = tokio::spawn(serve(handle, expected));
    platform::reconcile(Arc::new(p), ctx).await.unwrap();
    let seen = verifier.await.unwrap();
    let deployment = &seen.iter().find(|(m, _, _)| m == "PATCH").unwrap().2;
    assert_eq!(deployment["spec"]["replicas"], 3);
    let status = &seen.last().unwrap().2;
    assert_eq!(status["status"]["observedGeneration"], 2);
    // Scaling up: collect waits for its third pod.
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert!(
        condition(status, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("collect 2/3"),
        "{status}"
    );
}

#[tokio::test]
async fn an_invalid_spec_sets_a_condition_and_waits_for_a_change() {
    let mut p = platform(false);
    p.spec.services.processing.replicas = Some(8);
    let (ctx, handle) = context();
    let ctx_metrics = ctx.clone();
    let verifier = tokio::spawn(serve(handle, vec![apply_status(&p)]));
    let action = platform::reconcile(Arc::new(p), ctx).await.unwrap();
    let seen = verifier.await.unwrap();
    assert_eq!(action, Action::await_change());
    let status = &seen[0].2;
    assert_eq!(condition(status, "Ready")["reason"], "InvalidSpec");
    assert!(
        condition(status, "Ready")["message"]
            .as_str()
            .unwrap()
            .contains("services.processing.replicas (8) exceeds queue.telemetryPartitions (4)"),
        "{status}"
    );
    assert_eq!(condition(status, "Degraded")["status"], "True");
    assert!(
        ctx_metrics
            .metrics
            .encode()
            .contains(r#"sipmba_operator_reconciles_total{controller="sipmba",result="ok"} 1"#),
        "{}",
        ctx_metrics.metrics.encode()
    );
}

#[tokio::test]
async fn a_transient_failure_backs_off_exponentially_and_a_success_resets_it() {
    let p = Arc::new(platform(false));
    let (ctx, handle) = context();
    let verifier = tokio::spawn(serve(
        handle,
        (0..4)
            .map(|_| get(core("secrets", "demo-clients"), Reply::Fail(500)))
            .collect(),
    ));
    let mut waits = Vec::new();
    for _ in 0..4 {
        let error = platform::reconcile(p.clone(), ctx.clone())
            .await
            .unwrap_err();
        assert_eq!(error.category(), "api_server");
        waits.push(platform::error_policy(p.clone(), &error, ctx.clone()));
    }
    verifier.await.unwrap();
    let secs = [2, 4, 8, 16].map(|s| Action::requeue(Duration::from_secs(s)));
    assert_eq!(waits, secs);
    // Counted by category, a bounded label.
    let text = ctx.metrics.encode();
    assert!(
        text.contains(
            r#"sipmba_operator_reconciles_total{controller="sipmba",result="api_server"} 4"#
        ),
        "{text}"
    );
    assert!(
        text.contains("sipmba_operator_reconcile_duration_seconds_count"),
        "{text}"
    );
    assert_eq!(
        platform::backoff(30),
        Duration::from_secs(300),
        "at most five minutes"
    );
    ctx.succeeded(&*p);
    let error = platform::Error::NoNamespace;
    assert_eq!(
        platform::error_policy(p, &error, ctx),
        Action::requeue(Duration::from_secs(2)),
        "a success starts the backoff again"
    );
}

#[tokio::test]
async fn tls_gets_a_ca_once_and_a_certificate_per_service_renewed_when_due() {
    let (mut p, _broker) = with_broker(platform(true)).await;
    p.status = Some(ready_status(&p));
    let (ctx, handle) = context();
    let mut expected = vec![
        get(core("secrets", "demo-clients"), existing_clients()),
        get(core("secrets", "demo-ca"), Reply::Missing),
        create(format!("/api/v1/namespaces/{NS}/secrets")),
    ];
    for component in Component::ALL {
        let name = desired::tls_secret_name(&p, component);
        expected.push(get(core("secrets", &name), Reply::Missing));
        expected.push(apply(core("secrets", &name)));
    }
    for component in Component::ALL {
        for (path, live) in children(&p, component, true) {
            expected.push(get(path, Reply::Object(live)));
        }
    }
    let verifier = tokio::spawn(serve(handle, expected));
    platform::reconcile(Arc::new(p.clone()), ctx).await.unwrap();
    let seen = verifier.await.unwrap();
    let ca_secret: Secret = serde_json::from_value(seen[2].2.clone()).unwrap();
    assert!(
        ca_secret
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(certs::CA_NAME)
    );
    let ca = certs::Ca::from_secret(&ca_secret).unwrap();
    let issued: Vec<Secret> = seen
        .iter()
        .filter(|(m, uri, _)| m == "PATCH" && uri.contains("-tls"))
        .map(|(_, _, body)| serde_json::from_value(body.clone()).unwrap())
        .collect();
    assert_eq!(issued.len(), 5);
    let now = k8s_openapi::jiff::Timestamp::now();
    for secret in &issued {
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = secret.string_data.as_ref().unwrap();
        assert!(data["tls.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(data["tls.key"].contains("PRIVATE KEY"));
        assert_eq!(
            data["ca.crt"], ca.cert_pem,
            "each service gets the CA to trust its peers"
        );
        assert!(
            !certs::renewal_due(secret, &ca, &names(secret), now),
            "fresh"
        );
    }
    // 90 days: renewed after 60, at once when another CA signed it, or when it must name
    // another host (the platform exposed outside the cluster).
    let later = now + k8s_openapi::jiff::SignedDuration::from_hours(61 * 24);
    let first = names(&issued[0]);
    assert!(first.contains(&"localhost".to_owned()));
    assert!(certs::renewal_due(&issued[0], &ca, &first, later));
    let mut exposed = first.clone();
    exposed.push("collect.example.com".into());
    assert!(certs::renewal_due(&issued[0], &ca, &exposed, now));
    let other = certs::new_ca("another").unwrap();
    let mut other_secret = ca_secret.clone();
    other_secret.string_data = Some(
        [
            ("ca.crt".to_owned(), other.cert_pem),
            ("ca.key".to_owned(), other.key_pem),
        ]
        .into(),
    );
    let other = certs::Ca::from_secret(&other_secret).unwrap();
    assert!(certs::renewal_due(&issued[0], &other, &first, now));
    // The certificate verifies against the CA for the service's cluster name.
    let sso = issued
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("demo-sso-tls"))
        .unwrap();
    let _ = sso.meta();
    assert!(chains(
        &sso.string_data.as_ref().unwrap()["tls.crt"],
        &ca.cert_pem,
        "demo-sso.iot.svc"
    ));
}

/// Whether `cert` is valid for `name` under `ca` (rustls' verifier, as a service client checks).
fn chains(cert: &str, ca: &str, name: &str) -> bool {
    use rustls::{
        client::danger::ServerCertVerifier,
        pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

/// The names a certificate's Secret says it carries.
fn names(secret: &Secret) -> Vec<String> {
    secret.metadata.annotations.as_ref().unwrap()[certs::NAMES]
        .split(',')
        .map(str::to_owned)
        .collect()
}
