//! The desired state built from a `SipMba`: every service's configuration is one the `sipmba`
//! binary accepts (parsed by its own loader), and the workloads run it as the platform needs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::Path;

use sipmba_operator::{
    api::SipMba,
    desired::{self, Component},
};

fn platform() -> SipMba {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sipmba/examples/sipmba.yaml"),
    )
    .unwrap();
    let mut platform: SipMba = serde_yaml::from_str(&text).unwrap();
    platform.metadata.namespace = Some("iot".into());
    platform.metadata.uid = Some("0f6a3c1e-1111-4222-8333-944455556666".into());
    platform
}

/// Loads a service's generated configuration with the binary's loader, its files in `dir`.
fn load(
    platform: &SipMba,
    component: Component,
    dir: &Path,
    replica: Option<u32>,
) -> Result<sipmba::config::Loaded, sipmba_runtime::ConfigError> {
    sipmba_testkit::operator_mounted_files(dir).unwrap();
    let text = desired::config(platform, component).replace(desired::ROOT, dir.to_str().unwrap());
    let args = sipmba::config::Args {
        shared: sipmba_runtime::ConfigArgs {
            // The Deployment gives it from the Secret.
            database_url: Some("postgres://sipmba@db:5432/sipmba".into()),
            ..Default::default()
        },
        processing: sipmba_processing::settings::Args {
            processing_replica: replica,
        },
        ..Default::default()
    };
    // As `sipmba server --target sso` does: sso verifies with its own keys.
    let defaults = sipmba_runtime::Defaults {
        own_keys: component == Component::Sso,
        ..Default::default()
    };
    sipmba::config::from_toml(&text, &args, &defaults)
}

#[test]
fn every_service_gets_a_configuration_the_binary_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let p = platform();
    let sso = "https://demo-sso.iot.svc:7400";
    for component in Component::ALL {
        let loaded = load(&p, component, dir.path(), Some(0)).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\n{}",
                component.name(),
                desired::config(&p, component)
            )
        });
        let (config, services) = (&loaded.config, &loaded.services);
        assert_eq!(config.listen.to_string(), "0.0.0.0:7400");
        assert!(config.tls.is_some(), "TLS by default");
        assert_eq!(config.auth.issuer, sso);
        assert_eq!(
            config.queue.brokers,
            vec!["sipmba-trial-redpanda:9092".to_owned()]
        );
        if component == Component::Sso {
            assert_eq!(config.auth.jwks_url, None, "sso verifies with its own keys");
            let ids: Vec<&str> = services
                .sso
                .service_clients
                .iter()
                .map(|c| c.id.as_str())
                .collect();
            assert_eq!(
                ids,
                ["sipmba-control", "sipmba-processing", "sipmba-operator"]
            );
            assert_eq!(
                services.sso.objects_url.as_deref(),
                Some("https://demo-objects.iot.svc:7400")
            );
            assert_eq!(services.sso.thing_token_lifetime_secs, 3600);
        } else {
            assert_eq!(
                config.auth.jwks_url.as_deref(),
                Some("https://demo-sso.iot.svc:7400/.well-known/jwks.json")
            );
        }
    }
    let control = load(&p, Component::Control, dir.path(), None).unwrap();
    assert_eq!(
        control.services.control.token_url.as_deref(),
        Some("https://demo-sso.iot.svc:7400/oauth2/token")
    );
    assert_eq!(control.services.control.client_id, "sipmba-control");
    assert_eq!(
        load(&p, Component::Collect, dir.path(), None)
            .unwrap()
            .services
            .collect
            .partitions(),
        4
    );

    // Processing: one share of the partitions per pod, its index from the StatefulSet.
    let mut three = platform();
    three.spec.services.processing.replicas = Some(3);
    let second = load(&three, Component::Processing, dir.path(), Some(2)).unwrap();
    assert_eq!(
        (
            second.services.processing.replica,
            second.services.processing.replicas
        ),
        (2, 3)
    );
    assert_eq!(
        second.services.processing.control_url.as_deref(),
        Some("https://demo-control.iot.svc:7400")
    );
    let err = load(&three, Component::Processing, dir.path(), Some(3)).unwrap_err();
    assert!(err.to_string().contains("processing.replica"), "{err}");

    // An external log with TLS (and a client certificate) and SASL: the files come from the
    // Secrets the spec names, projected into one volume.
    let mut secure = platform();
    secure.spec.queue.replication_factor = Some(3);
    secure.spec.queue.tls = Some(sipmba_operator::api::QueueTlsSpec {
        ca_secret_ref: sipmba_operator::api::SecretKeyRef {
            name: "kafka-ca".into(),
            key: "ca.crt".into(),
        },
        client_secret_name: Some("kafka-client".into()),
    });
    secure.spec.queue.sasl = Some(sipmba_operator::api::QueueSaslSpec {
        mechanism: "SCRAM-SHA-512".into(),
        username: "sipmba".into(),
        password_secret_ref: sipmba_operator::api::SecretKeyRef {
            name: "kafka-user".into(),
            key: "password".into(),
        },
    });
    for component in Component::ALL {
        let config = load(&secure, component, dir.path(), Some(0)).unwrap();
        let queue = &config.config.queue;
        assert_eq!(queue.replication_factor, Some(3));
        let tls = queue.tls.as_ref().unwrap();
        assert_eq!(tls.ca_file, dir.path().join("log/ca.crt"));
        assert_eq!(
            tls.client,
            Some((
                dir.path().join("log/tls.crt"),
                dir.path().join("log/tls.key")
            ))
        );
        let sasl = queue.sasl.as_ref().unwrap();
        assert_eq!(
            (sasl.mechanism.as_str(), sasl.username.as_str()),
            ("SCRAM-SHA-512", "sipmba")
        );
        assert_eq!(sasl.password_file, dir.path().join("log/password"));
    }
    let deployment = desired::deployment(&secure, Component::Collect);
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let log = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "log")
        .expect("a log volume");
    let projected: Vec<(String, String, String)> = log
        .projected
        .unwrap()
        .sources
        .unwrap()
        .into_iter()
        .map(|s| {
            let s = s.secret.unwrap();
            let item = s.items.unwrap().remove(0);
            (s.name, item.key, item.path)
        })
        .collect();
    assert_eq!(
        projected,
        [
            ("kafka-ca".into(), "ca.crt".into(), "ca.crt".into()),
            ("kafka-client".into(), "tls.crt".into(), "tls.crt".into()),
            ("kafka-client".into(), "tls.key".into(), "tls.key".into()),
            ("kafka-user".into(), "password".into(), "password".into()),
        ]
    );
    assert!(
        pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "log" && m.mount_path == "/etc/sipmba/log")
    );
    // Without TLS or SASL towards the log, no such volume.
    let plain_log = desired::deployment(&platform(), Component::Collect);
    assert!(
        !plain_log
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .volumes
            .unwrap()
            .iter()
            .any(|v| v.name == "log")
    );

    // Without TLS: plaintext everywhere, http:// URLs.
    let mut plain = platform();
    plain.spec.tls.enabled = Some(false);
    let loaded = load(&plain, Component::Control, dir.path(), None).unwrap();
    assert!(loaded.config.tls.is_none());
    assert_eq!(
        loaded.services.control.objects_url.as_deref(),
        Some("http://demo-objects.iot.svc:7400")
    );
}

#[test]
fn workloads_run_each_service_non_root_with_its_config_secrets_and_probes() {
    let p = platform();
    let deployment = desired::deployment(&p, Component::Collect);
    assert_eq!(deployment.metadata.name.as_deref(), Some("demo-collect"));
    assert_eq!(deployment.metadata.namespace.as_deref(), Some("iot"));
    let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("SipMba", Some(true))
    );
    assert_eq!(owner.uid, "0f6a3c1e-1111-4222-8333-944455556666");
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some(desired::DEFAULT_IMAGE));
    assert_eq!(
        container.args.as_ref().unwrap().join(" "),
        "server --target collect --config /etc/sipmba/config/sipmba.toml"
    );
    let readiness = container
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        (readiness.path.as_deref(), readiness.scheme.as_deref()),
        (Some("/readyz"), Some("HTTPS"))
    );
    let db = &container.env.as_ref().unwrap()[0];
    assert_eq!(db.name, "SIPMBA_DATABASE_URL");
    let from = db
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (from.name.as_str(), from.key.as_str()),
        ("sipmba-trial-postgresql", "url")
    );
    assert_eq!(
        container
            .security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(true)
    );
    let volumes: Vec<&str> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["config", "tls"], "collect holds no client secret");

    // sso holds every client secret; control only its own.
    let sso = desired::deployment(&p, Component::Sso)
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let clients = sso
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "clients")
        .unwrap();
    assert_eq!(clients.secret.unwrap().items.unwrap().len(), 3);
    let control = desired::deployment(&p, Component::Control)
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let clients = control
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "clients")
        .unwrap();
    let keys: Vec<String> = clients
        .secret
        .unwrap()
        .items
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(keys, ["control"]);

    // Processing is a StatefulSet whose pods know their index.
    let set = desired::stateful_set(&p).spec.unwrap();
    assert_eq!(set.replicas, Some(1));
    let env = set.template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let replica = env
        .iter()
        .find(|e| e.name == "SIPMBA_PROCESSING_REPLICA")
        .unwrap();
    assert_eq!(
        replica
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );

    let service = desired::service(&p, Component::Sso).spec.unwrap();
    assert_eq!(service.ports.unwrap()[0].port, 7400);
    assert_eq!(
        service.selector.unwrap()["app.kubernetes.io/component"],
        "sso"
    );
    // Without resources in the spec, each service gets requests and a memory limit, no CPU
    // limit; resources in the spec are taken whole.
    let defaults = desired::resources(&p, Component::Collect);
    let requests = defaults.requests.unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    let limits = defaults.limits.unwrap();
    assert_eq!(limits.keys().collect::<Vec<_>>(), ["memory"]);
    assert_eq!(
        container.resources.as_ref().unwrap().limits.as_ref(),
        Some(&limits)
    );
    let mut given = p.clone();
    let only = k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some(
            [(
                "cpu".to_owned(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".to_owned()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    given.spec.services.collect.resources = Some(only.clone());
    assert_eq!(desired::resources(&given, Component::Collect), only);

    let budget = desired::disruption_budget(&p, Component::Sso).spec.unwrap();
    assert_eq!(
        budget.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
}

#[test]
fn a_configuration_change_rolls_the_pods_and_nothing_else_does() {
    let digest = |p: &SipMba| {
        desired::deployment(p, Component::Control)
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()["sipmba.io/config-digest"]
            .clone()
    };
    let p = platform();
    assert_eq!(
        digest(&p),
        digest(&platform()),
        "the same spec builds the same pods"
    );
    let mut more = platform();
    more.spec.services.control.replicas = Some(5);
    assert_eq!(digest(&p), digest(&more), "scaling does not restart pods");
    let mut moved = platform();
    moved.spec.queue.brokers = vec!["redpanda-0:9092".into(), "redpanda-1:9092".into()];
    assert_ne!(digest(&p), digest(&moved));
    assert!(
        desired::config(&moved, Component::Control)
            .contains(r#"brokers = ["redpanda-0:9092", "redpanda-1:9092"]"#)
    );
}

#[test]
fn a_services_settings_in_the_spec_reach_its_file_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = platform();
    let settings = |value: serde_json::Value| match value {
        serde_json::Value::Object(map) => Some(map),
        _ => unreachable!("an object"),
    };
    p.spec.services.sso.settings = settings(serde_json::json!({"failed_logins_per_account": 3}));
    p.spec.services.collect.settings = settings(serde_json::json!({"max_commands": 32}));
    // The operator's own wiring wins over the spec's.
    p.spec.services.control.settings = settings(serde_json::json!({
        "commands_per_second": 50, "objects_url": "http://elsewhere:1"
    }));
    for component in Component::ALL {
        assert_eq!(desired::check_settings(&p, component), Ok(()));
    }
    // Only what differs from a service's defaults is written, and only in its own file: an
    // image of an earlier release (refusing keys it does not know) runs the unchanged ones.
    let plain = platform();
    let objects = desired::config(&plain, Component::Objects);
    for section in ["[sso]", "[collect]", "[control]", "[processing]"] {
        assert!(!objects.contains(section), "{objects}");
    }
    let sso = desired::config(&plain, Component::Sso);
    assert!(!sso.contains("failed_logins_per_account"), "{sso}");
    assert!(
        desired::config(&p, Component::Sso).contains("failed_logins_per_account = 3"),
        "{}",
        desired::config(&p, Component::Sso)
    );
    let sso = load(&p, Component::Sso, dir.path(), None).unwrap();
    assert_eq!(sso.services.sso.failed_logins_per_account, 3);
    let collect = load(&p, Component::Collect, dir.path(), None).unwrap();
    assert_eq!(collect.services.collect.max_commands, 32);
    let control = load(&p, Component::Control, dir.path(), None).unwrap();
    assert_eq!(control.services.control.commands_per_second, 50);
    assert_eq!(
        control.services.control.objects_url.as_deref(),
        Some("https://demo-objects.iot.svc:7400")
    );

    p.spec.services.sso.settings = settings(serde_json::json!({"failed_logins_per_account": 0}));
    let problem = desired::check_settings(&p, Component::Sso).unwrap_err();
    assert!(
        problem.contains("services.sso.settings") && problem.contains("failed_logins_per_account"),
        "{problem}"
    );
    assert_eq!(sipmba_operator::platform::invalid(&p), Some(problem));
    p.spec.services.sso.settings = None;
    p.spec.services.collect.settings = settings(serde_json::json!({"max_comands": 32}));
    let problem = desired::check_settings(&p, Component::Collect).unwrap_err();
    assert!(problem.contains("unknown field `max_comands`"), "{problem}");
    p.spec.services.collect.settings = None;
    p.spec.services.objects.settings = settings(serde_json::json!({"x": 1}));
    let problem = desired::check_settings(&p, Component::Objects).unwrap_err();
    assert!(problem.contains("unknown field `x`"), "{problem}");
    p.spec.services.objects.settings = settings(serde_json::json!({"event_retention_secs": 59}));
    let problem = desired::check_settings(&p, Component::Objects).unwrap_err();
    assert!(
        problem.contains("services.objects.settings")
            && problem.contains("objects.event_retention_secs"),
        "{problem}"
    );
    p.spec.services.objects.settings =
        settings(serde_json::json!({"event_retention_secs": 86_400}));
    desired::check_settings(&p, Component::Objects).unwrap();
    // Not shorter than the longest token and the leeway, which sso's file sets.
    p.spec.tokens.thing_seconds = Some(2 * 86_400);
    let problem = desired::check_settings(&p, Component::Objects).unwrap_err();
    assert!(
        problem.contains("objects.event_retention_secs") && problem.contains("(172800 s)"),
        "{problem}"
    );
    // Shorter than the default lifetimes once every token is short: the binary, reading the
    // lifetimes in Objects' file, accepts what the operator accepted.
    p.spec.tokens.thing_seconds = Some(600);
    p.spec.tokens.user_seconds = Some(600);
    p.spec.services.sso.settings =
        settings(serde_json::json!({"service_token_lifetime_secs": 600}));
    p.spec.services.objects.settings = settings(serde_json::json!({"event_retention_secs": 900}));
    desired::check_settings(&p, Component::Objects).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let loaded = load(&p, Component::Objects, dir.path(), None).unwrap();
    assert_eq!(loaded.services.objects.event_retention_secs, 900);
    p.spec.tokens = Default::default();
    p.spec.services.sso.settings = None;
    p.spec.services.objects.settings =
        settings(serde_json::json!({"event_retention_secs": 86_400}));
    let file = desired::config_file(&p, Component::Objects).unwrap();
    assert_eq!(file.objects.event_retention_secs, 86_400);
}

/// Found by the `operator_spec` fuzz target: a spec whose log settings every service refuses at
/// start (a broker without a port) was accepted, and its pods would have crash-looped. The
/// operator now refuses each such setting, naming it, and accepts what the binary loads.
#[test]
fn log_settings_the_services_refuse_are_refused_by_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |adjust: &dyn Fn(&mut SipMba), field: &str| {
        let mut p = platform();
        adjust(&mut p);
        let problem =
            sipmba_operator::platform::invalid(&p).unwrap_or_else(|| panic!("{field}: accepted"));
        assert!(problem.starts_with(&format!("queue.{field}")), "{problem}");
        // And the binary refuses what the operator refuses.
        assert!(
            load(&p, Component::Collect, dir.path(), None).is_err(),
            "{field}"
        );
    };
    refused(
        &|p| p.spec.queue.brokers = vec!["sipmba-trial-redpanda:9p92".into()],
        "brokers",
    );
    refused(
        &|p| p.spec.queue.replication_factor = Some(0),
        "replicationFactor",
    );
    refused(
        &|p| p.spec.queue.command_partitions = Some(0),
        "commandPartitions",
    );
    // Found by fuzzing: the partitions go into Collect's settings, which were checked before.
    refused(
        &|p| p.spec.queue.telemetry_partitions = Some(0),
        "telemetryPartitions",
    );
    refused(
        &|p| p.spec.queue.telemetry_retention_hours = Some(1_000_000_000),
        "telemetryRetentionHours",
    );
    let p = platform();
    assert_eq!(sipmba_operator::platform::invalid(&p), None);
    assert!(load(&p, Component::Collect, dir.path(), None).is_ok());
    // Token lifetimes go into sso's settings: checked there, named under `tokens`.
    let mut zero = platform();
    zero.spec.tokens.thing_seconds = Some(0);
    let problem = sipmba_operator::platform::invalid(&zero).expect("a zero lifetime accepted");
    assert!(problem.starts_with("tokens.thingSeconds"), "{problem}");
    assert!(load(&zero, Component::Sso, dir.path(), None).is_err());
}
