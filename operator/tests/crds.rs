//! The CRDs: `crds/` is what the Rust types generate, and the chart's sample resources pass the
//! CRDs' schema and CEL rules (checked offline, as an API server would) — while broken ones fail
//! with the message a user would see.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use serde_json::{Value, json};
use sipmba_operator::api::{SipMba, Thing};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample(name: &str) -> Value {
    let text = std::fs::read_to_string(root().join("charts/sipmba/examples").join(name)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap(),
    )
    .unwrap()
}

/// Errors of `object` against the structural schema (JSON Schema) and the CEL rules.
fn problems<K: CustomResourceExt>(object: &Value, old: Option<&Value>) -> Vec<String> {
    let schema = schema::<K>();
    let structural = jsonschema::draft4::new(&schema).unwrap();
    let mut found: Vec<String> = structural
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if let Err(errors) = kube::core::cel::Validator::new().validate(&schema, object, old) {
        found.extend(errors.iter().map(ToString::to_string));
    }
    found
}

#[test]
fn the_checked_in_crds_are_what_the_types_generate() {
    // In crds/ for kubectl, and in the chart (templates read them: `helm upgrade` upgrades them).
    for dir in ["crds", "charts/sipmba/files/crds"] {
        let stale = sipmba_operator::crdgen::stale(&root().join(dir)).unwrap();
        assert!(
            stale.is_empty(),
            "{stale:?} differ in {dir}: run `cargo run -p sipmba-operator -- crd --out {dir}`"
        );
    }
}

#[test]
fn the_sample_resources_are_valid() {
    let platform = sample("sipmba.yaml");
    assert_eq!(problems::<SipMba>(&platform, None), Vec::<String>::new());
    let exposed = sample("sipmba-exposed.yaml");
    assert_eq!(problems::<SipMba>(&exposed, None), Vec::<String>::new());
    let thing = sample("thing.yaml");
    assert_eq!(problems::<Thing>(&thing, None), Vec::<String>::new());
    // They are what the operator reads.
    let _: SipMba = serde_json::from_value(platform).unwrap();
    let _: SipMba = serde_json::from_value(exposed).unwrap();
    let _: Thing = serde_json::from_value(thing).unwrap();
}

#[test]
fn broken_resources_are_refused_with_a_message_naming_the_field() {
    let mut thing = sample("thing.yaml");
    thing["spec"]["owner"] = json!("bob");
    let found = problems::<Thing>(&thing, None);
    assert!(
        found.iter().any(|p| p.contains("owner is a user id")),
        "{found:?}"
    );

    let mut thing = sample("thing.yaml");
    thing["spec"]["agent"]["endpoint"] = json!("greenhouse-7.local:7443");
    let found = problems::<Thing>(&thing, None);
    assert!(
        found.iter().any(|p| p.contains("http:// or https://")),
        "{found:?}"
    );

    let mut thing = sample("thing.yaml");
    thing["spec"].as_object_mut().unwrap().remove("agent");
    let found = problems::<Thing>(&thing, None);
    assert!(found.iter().any(|p| p.contains("agent")), "{found:?}");

    let mut platform = sample("sipmba.yaml");
    platform["spec"]["queue"]["brokers"] = json!([]);
    platform["spec"]["services"]["collect"]["replicas"] = json!(80);
    let found = problems::<SipMba>(&platform, None);
    assert!(
        found.iter().any(|p| p.contains("at least one broker")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains("replicas must be 0 to 50")),
        "{found:?}"
    );

    // SASL towards the log: a mechanism the platform speaks, and PLAIN only over TLS.
    let mut platform = sample("sipmba.yaml");
    platform["spec"]["queue"]["sasl"] = json!({
        "mechanism": "PLAIN",
        "username": "sipmba",
        "passwordSecretRef": {"name": "kafka-user", "key": "password"},
    });
    let found = problems::<SipMba>(&platform, None);
    assert!(
        found
            .iter()
            .any(|p| p.contains("PLAIN sends the password in the clear")),
        "{found:?}"
    );
    platform["spec"]["queue"]["tls"] =
        json!({"caSecretRef": {"name": "kafka-ca", "key": "ca.crt"}});
    assert_eq!(problems::<SipMba>(&platform, None), Vec::<String>::new());
    platform["spec"]["queue"]["sasl"]["mechanism"] = json!("GSSAPI");
    let found = problems::<SipMba>(&platform, None);
    assert!(
        found
            .iter()
            .any(|p| p.contains("mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")),
        "{found:?}"
    );

    // Exposure: a known type, a host where the operator cannot learn one, the Ingress settings
    // only on an Ingress, and never without TLS.
    let refused = |change: &dyn Fn(&mut Value), message: &str| {
        let mut platform = sample("sipmba-exposed.yaml");
        change(&mut platform);
        let found = problems::<SipMba>(&platform, None);
        assert!(
            found.iter().any(|p| p.contains(message)),
            "{message:?} in {found:?}"
        );
    };
    refused(
        &|p| p["spec"]["exposure"]["collect"]["type"] = json!("ClusterIP"),
        "type must be LoadBalancer, NodePort, Ingress or External",
    );
    refused(
        &|p| p["spec"]["exposure"]["sso"] = json!({"type": "NodePort"}),
        "host is required for NodePort, Ingress and External",
    );
    refused(
        &|p| p["spec"]["exposure"]["collect"]["ingressClassName"] = json!("nginx"),
        "ingressClassName and tlsSecretName apply to type Ingress only",
    );
    refused(
        &|p| p["spec"]["exposure"]["collect"]["host"] = json!("https://collect.example.com/"),
        "host is a DNS name or an IP address",
    );
    refused(
        &|p| p["spec"]["tls"]["enabled"] = json!(false),
        "exposure needs tls.enabled",
    );
    let mut platform = sample("sipmba-exposed.yaml");
    platform["spec"]["exposure"]["collect"] = json!({"type": "LoadBalancer"});
    platform["spec"]["exposure"]["sso"] =
        json!({"type": "Ingress", "host": "sso.iot.example.com", "ingressClassName": "nginx"});
    assert_eq!(problems::<SipMba>(&platform, None), Vec::<String>::new());

    let mut thing = sample("thing.yaml");
    thing["spec"]["agent"]["network"] = json!("LAN");
    let found = problems::<Thing>(&thing, None);
    assert!(
        found
            .iter()
            .any(|p| p.contains("network must be Cluster or External")),
        "{found:?}"
    );
}

#[test]
fn immutable_fields_cannot_change() {
    let old = sample("thing.yaml");
    let mut moved = old.clone();
    moved["spec"]["platformRef"] = json!("another");
    moved["spec"]["owner"] = json!("00000000-0000-4000-8000-000000000001");
    let found = problems::<Thing>(&moved, Some(&old));
    assert!(
        found.iter().any(|p| p.contains("platformRef is immutable")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains("owner is immutable")),
        "{found:?}"
    );
    // Other fields may change.
    let mut relabelled = old.clone();
    relabelled["spec"]["labels"]["site"] = json!("south");
    assert_eq!(
        problems::<Thing>(&relabelled, Some(&old)),
        Vec::<String>::new()
    );

    let old = sample("sipmba.yaml");
    let mut renamed = old.clone();
    renamed["spec"]["queue"]["topicPrefix"] = json!("other.");
    let found = problems::<SipMba>(&renamed, Some(&old));
    assert!(
        found.iter().any(|p| p.contains("topicPrefix is immutable")),
        "{found:?}"
    );
}
