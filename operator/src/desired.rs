//! The desired state of a platform, built by pure functions from its `SipMba`: for each service a
//! ConfigMap (its `sipmba.toml`), a Deployment (processing: a StatefulSet, one replica per share of
//! the telemetry partitions), a Service and a PodDisruptionBudget. The reconciler only applies
//! what these return.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{
            Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
            StatefulSetSpec,
        },
        core::v1::{
            Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
            HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
            SecretKeySelector, SecretProjection, SecretVolumeSource, SecurityContext, Service,
            ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};

use crate::api::SipMba;

mod config;
use config::digest;
pub use config::{check_settings, config, config_file, config_map};

/// The port every service serves gRPC and HTTP on.
pub const PORT: i32 = 7400;
/// Where the pod finds its files.
pub const ROOT: &str = "/etc/sipmba";
/// The image used when the SipMba names none: this release's.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/sipmba/sipmba:", env!("CARGO_PKG_VERSION"));
/// The non-root user the images run as.
pub const RUN_AS: i64 = 65532;

/// A service of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// OAuth 2.0 tokens.
    Sso,
    /// Users, things, channels.
    Objects,
    /// Device streams.
    Collect,
    /// Commands.
    Control,
    /// Storage, queries, rules.
    Processing,
}

impl Component {
    /// Every service, in start order.
    pub const ALL: [Component; 5] = [
        Component::Objects,
        Component::Sso,
        Component::Collect,
        Component::Control,
        Component::Processing,
    ];

    /// The `--target` name.
    pub fn name(self) -> &'static str {
        match self {
            Component::Sso => "sso",
            Component::Objects => "objects",
            Component::Collect => "collect",
            Component::Control => "control",
            Component::Processing => "processing",
        }
    }

    /// The sso client the service authenticates as, if it calls other services.
    pub fn client(self) -> Option<&'static str> {
        match self {
            Component::Control => Some("sipmba-control"),
            Component::Processing => Some("sipmba-processing"),
            _ => None,
        }
    }
}

/// The sso service clients of a platform: `(client id, key in the clients Secret, scopes)`.
pub const CLIENTS: [(&str, &str, &[&str]); 3] = [
    ("sipmba-control", "control", &["objects:authorize"]),
    (
        "sipmba-processing",
        "processing",
        &["objects:authorize", "commands:write"],
    ),
    (
        "sipmba-operator",
        "operator",
        &[
            "objects:admin",
            "objects:authorize",
            "things:read",
            "things:write",
            "tokens:admin",
        ],
    ),
];

/// Names of a platform's objects.
pub fn name(platform: &SipMba, component: Component) -> String {
    format!("{}-{}", platform.name_any(), component.name())
}

/// The Secret of the service clients' secrets (generated once).
pub fn clients_secret_name(platform: &SipMba) -> String {
    format!("{}-clients", platform.name_any())
}

/// The Secret of a service's certificate, key and the platform CA.
pub fn tls_secret_name(platform: &SipMba, component: Component) -> String {
    format!("{}-tls", name(platform, component))
}

fn tls_enabled(platform: &SipMba) -> bool {
    platform.spec.tls.enabled.unwrap_or(true)
}

/// `https://<platform>-<service>.<namespace>.svc:7400` (http:// without TLS).
pub fn url(platform: &SipMba, component: Component) -> String {
    let scheme = if tls_enabled(platform) {
        "https"
    } else {
        "http"
    };
    format!(
        "{scheme}://{}.{}.svc:{PORT}",
        name(platform, component),
        platform.namespace().unwrap_or_else(|| "default".into())
    )
}

/// The labels selecting a service's pods.
pub fn selector(platform: &SipMba, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sipmba".into()),
        ("app.kubernetes.io/instance".into(), platform.name_any()),
        (
            "app.kubernetes.io/component".into(),
            component.name().into(),
        ),
    ])
}

fn labels(platform: &SipMba, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector(platform, component);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "sipmba-operator".into(),
    );
    labels
}

/// The owner reference making the platform the controller of its children.
pub fn owner(platform: &SipMba) -> OwnerReference {
    OwnerReference {
        api_version: SipMba::api_version(&()).into_owned(),
        kind: SipMba::kind(&()).into_owned(),
        name: platform.name_any(),
        uid: platform.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub(crate) fn meta(platform: &SipMba, name: String, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: platform.namespace(),
        labels: Some(labels(platform, component)),
        owner_references: Some(vec![owner(platform)]),
        ..ObjectMeta::default()
    }
}

/// What the spec says of one service.
fn service_spec(platform: &SipMba, component: Component) -> &crate::api::ServiceSpec {
    let services = &platform.spec.services;
    match component {
        Component::Sso => &services.sso,
        Component::Objects => &services.objects,
        Component::Collect => &services.collect,
        Component::Control => &services.control,
        Component::Processing => &services.processing,
    }
}

/// Replicas of a service: the spec's, or 2 (processing: 1).
pub fn replicas(platform: &SipMba, component: Component) -> i32 {
    let spec = service_spec(platform, component);
    spec.replicas.unwrap_or(match component {
        Component::Processing => 1,
        _ => 2,
    })
}

/// The container's resources: the spec's when it gives any (taken whole, as a pod spec would),
/// otherwise requests from what each service was measured to use under the cluster suite, with
/// headroom (README, "Restricted pods"), and a memory limit well above them. No CPU limit: a
/// throttled service answers late rather than sooner.
pub fn resources(platform: &SipMba, component: Component) -> ResourceRequirements {
    let spec = service_spec(platform, component);
    if let Some(given) = &spec.resources {
        return given.clone();
    }
    let (cpu, memory, limit) = match component {
        // sso holds password hashing's memory (about 43 MiB measured); the others about 4 MiB
        // idle. Collect and processing carry the telemetry.
        Component::Sso => ("25m", "64Mi", "256Mi"),
        Component::Objects => ("25m", "32Mi", "256Mi"),
        Component::Collect => ("50m", "32Mi", "256Mi"),
        Component::Control => ("25m", "32Mi", "256Mi"),
        Component::Processing => ("50m", "64Mi", "512Mi"),
    };
    let quantity = |q: &str| Quantity(q.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(cpu)),
            ("memory".to_owned(), quantity(memory)),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), quantity(limit))])),
        ..ResourceRequirements::default()
    }
}

/// The files of the log's TLS and SASL (`ca.crt`, `tls.crt`, `tls.key`, `password`), projected
/// from the Secrets the spec names into one volume; none without TLS or SASL.
fn log_volume(platform: &SipMba) -> Option<Volume> {
    let queue = &platform.spec.queue;
    let item = |secret: &str, key: &str, path: &str| VolumeProjection {
        secret: Some(SecretProjection {
            name: secret.to_owned(),
            items: Some(vec![KeyToPath {
                key: key.to_owned(),
                path: path.to_owned(),
                mode: None,
            }]),
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    };
    let mut sources = Vec::new();
    if let Some(tls) = &queue.tls {
        sources.push(item(
            &tls.ca_secret_ref.name,
            &tls.ca_secret_ref.key,
            "ca.crt",
        ));
        if let Some(client) = &tls.client_secret_name {
            sources.push(item(client, "tls.crt", "tls.crt"));
            sources.push(item(client, "tls.key", "tls.key"));
        }
    }
    if let Some(sasl) = &queue.sasl {
        let password = &sasl.password_secret_ref;
        sources.push(item(&password.name, &password.key, "password"));
    }
    (!sources.is_empty()).then(|| Volume {
        name: "log".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o400),
        }),
        ..Volume::default()
    })
}

fn pod_template(platform: &SipMba, component: Component) -> PodTemplateSpec {
    let spec = &platform.spec;
    let tls = tls_enabled(platform);
    let scheme = if tls { "HTTPS" } else { "HTTP" };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(PORT),
            scheme: Some(scheme.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let mut env = vec![EnvVar {
        name: "SIPMBA_DATABASE_URL".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: spec.database.url_secret_ref.name.clone(),
                key: spec.database.url_secret_ref.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }];
    if component == Component::Processing {
        // Each pod consumes the share of the partitions its index names.
        env.push(EnvVar {
            name: "SIPMBA_PROCESSING_REPLICA".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.labels['apps.kubernetes.io/pod-index']".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: format!("{ROOT}/config"),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: name(platform, component),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if tls {
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: format!("{ROOT}/tls"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls_secret_name(platform, component)),
                default_mode: Some(0o400),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some(log) = log_volume(platform) {
        mounts.push(VolumeMount {
            name: "log".into(),
            mount_path: format!("{ROOT}/log"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(log);
    }
    let client_keys: &[&str] = match component {
        Component::Sso => &["control", "processing", "operator"],
        Component::Control => &["control"],
        Component::Processing => &["processing"],
        _ => &[],
    };
    if !client_keys.is_empty() {
        mounts.push(VolumeMount {
            name: "clients".into(),
            mount_path: format!("{ROOT}/clients"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "clients".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(clients_secret_name(platform)),
                default_mode: Some(0o400),
                items: Some(
                    client_keys
                        .iter()
                        .map(|k| k8s_openapi::api::core::v1::KeyToPath {
                            key: (*k).into(),
                            path: (*k).into(),
                            mode: None,
                        })
                        .collect(),
                ),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let config = config(platform, component);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(platform, component)),
            annotations: Some(BTreeMap::from([(
                "sipmba.io/config-digest".to_owned(),
                digest(&config),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: component.name().into(),
                image: Some(spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
                image_pull_policy: spec.image_pull_policy.clone(),
                args: Some(vec![
                    "server".into(),
                    "--target".into(),
                    component.name().into(),
                    "--config".into(),
                    format!("{ROOT}/config/sipmba.toml"),
                ]),
                env: Some(env),
                ports: Some(vec![ContainerPort {
                    name: Some("api".into()),
                    container_port: PORT,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                }]),
                // Up to 2 minutes to start (migrations, the first connections to the database
                // and the log); then alive while it answers, ready while what it needs answers.
                startup_probe: Some(Probe {
                    failure_threshold: Some(60),
                    ..probe("/healthz", 2)
                }),
                readiness_probe: Some(probe("/readyz", 5)),
                liveness_probe: Some(probe("/healthz", 10)),
                resources: Some(resources(platform, component)),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Capabilities::default()
                    }),
                    ..SecurityContext::default()
                }),
                volume_mounts: Some(mounts),
                ..Container::default()
            }],
            volumes: Some(volumes),
            // In-flight streams end cleanly within the server's grace period.
            termination_grace_period_seconds: Some(30),
            ..PodSpec::default()
        }),
    }
}

fn label_selector(platform: &SipMba, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector(platform, component)),
        ..LabelSelector::default()
    }
}

/// The Deployment of a stateless service (every one but processing).
pub fn deployment(platform: &SipMba, component: Component) -> Deployment {
    Deployment {
        metadata: meta(platform, name(platform, component), component),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas(platform, component)),
            selector: label_selector(platform, component),
            template: pod_template(platform, component),
            // One pod at a time, a new one Ready before an old one goes: a roll never takes
            // capacity away (devices reconnect to the pods that remain).
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The StatefulSet of processing: pod `i` consumes the telemetry partitions `p % replicas == i`.
pub fn stateful_set(platform: &SipMba) -> StatefulSet {
    let component = Component::Processing;
    StatefulSet {
        metadata: meta(platform, name(platform, component), component),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas(platform, component)),
            selector: label_selector(platform, component),
            service_name: Some(name(platform, component)),
            pod_management_policy: Some("Parallel".into()),
            template: pod_template(platform, component),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The Service in front of a service's pods.
pub fn service(platform: &SipMba, component: Component) -> Service {
    Service {
        metadata: meta(platform, name(platform, component), component),
        spec: Some(ServiceSpec {
            selector: Some(selector(platform, component)),
            ports: Some(vec![ServicePort {
                name: Some("api".into()),
                port: PORT,
                target_port: Some(IntOrString::String("api".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("kubernetes.io/h2c".into()).filter(|_| !tls_enabled(platform)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// At most one pod of a service is evicted at a time (and a single pod can be, so that nodes
/// drain).
pub fn disruption_budget(platform: &SipMba, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(platform, name(platform, component), component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(label_selector(platform, component)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
