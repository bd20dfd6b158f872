//! The custom resources of `sipmba.io/v1alpha1`: `SipMba` (a platform) and `Thing` (a device
//! provisioned on one). The doc comments are the user's documentation: they become the CRD's
//! field descriptions (`kubectl explain sipmba.spec`).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::ResourceRequirements,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "sipmba.io";

/// A SIP-MBA platform: the operator runs its services (sso, objects, collect, control,
/// processing) from the `sipmba` image (processing as a StatefulSet, the rest as Deployments),
/// creates the topics on the Kafka-protocol log, makes the service clients' secrets, and issues
/// the platform's CA and service certificates (sso keeps its token-signing keys in the database).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sipmba.io",
    version = "v1alpha1",
    kind = "SipMba",
    doc = "A SIP-MBA platform: its services, database, log, token lifetimes and TLS.",
    plural = "sipmbas",
    singular = "sipmba",
    shortname = "smb",
    namespaced,
    status = "SipMbaStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image","priority":1}"#,
    printcolumn = r#"{"name":"Collect","type":"string","jsonPath":".status.external.collect","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.exposure) || !has(self.tls) || !has(self.tls.enabled) || self.tls.enabled").message("exposure needs tls.enabled: agents outside the cluster send their tokens over networks you do not control"))]
pub struct SipMbaSpec {
    /// The `sipmba` container image, as `repository:tag`. Default: the image of the operator's
    /// own release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When the kubelet pulls the image: Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Always', 'IfNotPresent', 'Never']").message("imagePullPolicy must be Always, IfNotPresent or Never"))]
    pub image_pull_policy: Option<String>,
    /// Replicas and resources of each service.
    #[serde(default)]
    pub services: Services,
    /// The PostgreSQL database every service stores in.
    pub database: DatabaseSpec,
    /// The Kafka-protocol log (Redpanda, Kafka, tansu) and its topics.
    pub queue: QueueSpec,
    /// Access-token lifetimes.
    #[serde(default)]
    pub tokens: TokenSpec,
    /// TLS between every client and service: the operator issues a platform CA and a certificate
    /// per service, and renews them before they expire.
    #[serde(default)]
    pub tls: TlsSpec,
    /// How things outside the cluster (devices on their own networks) reach the platform:
    /// Collect's device streams and sso's token service. Without it, agents are given the
    /// in-cluster addresses, which only pods can use. Needs `tls.enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<ExposureSpec>,
}

/// The platform's addresses outside the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExposureSpec {
    /// Collect: agents stream readings and take commands here (gRPC, HTTP/2 over TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect: Option<ExposedService>,
    /// sso: agents renew their access token here (`sipmba.v1.TokenService` over gRPC; the same
    /// port serves `/oauth2/token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso: Option<ExposedService>,
}

/// How one service is reached from outside. The service's pods serve TLS with the platform's
/// certificate, which names `host`; gRPC needs HTTP/2 all the way, so whatever sits in between
/// must pass TCP through (LoadBalancer, NodePort, TLS passthrough) or speak HTTP/2 to the pods
/// (an Ingress or Gateway that re-encrypts with `backend-protocol: GRPCS` or a
/// `BackendTLSPolicy`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'LoadBalancer' || has(self.host)").message("host is required for NodePort, Ingress and External: the name or address agents connect to"))]
#[x_kube(validation = Rule::new("self.type == 'Ingress' || (!has(self.ingressClassName) && !has(self.tlsSecretName))").message("ingressClassName and tlsSecretName apply to type Ingress only"))]
pub struct ExposedService {
    /// - `LoadBalancer`: a Service `<platform>-<service>-external` of type LoadBalancer (TCP,
    ///   TLS from agent to pod); `host` defaults to the address the load balancer reports.
    /// - `NodePort`: the same Service as type NodePort; agents connect to `host` (a node's address,
    ///   or a name resolving to the nodes) at `port` (default: the node port Kubernetes
    ///   allocates).
    /// - `Ingress`: an Ingress `<platform>-<service>` for `host`, for a controller that speaks
    ///   HTTP/2 to gRPC backends: with TLS passthrough (ingress-nginx:
    ///   `nginx.ingress.kubernetes.io/ssl-passthrough: "true"`) agents see the platform's
    ///   certificate; when the controller ends TLS (`tlsSecretName`, and ingress-nginx's
    ///   `nginx.ingress.kubernetes.io/backend-protocol: GRPCS`), give its CA in `caSecretRef`.
    /// - `External`: the operator creates nothing; a route of your own (a Gateway API
    ///   `TLSRoute` or `GRPCRoute`, a load balancer outside Kubernetes) forwards `host`:`port`
    ///   to the Service `<platform>-<service>` port 7400.
    #[serde(rename = "type")]
    #[x_kube(validation = Rule::new("self in ['LoadBalancer', 'NodePort', 'Ingress', 'External']").message("type must be LoadBalancer, NodePort, Ingress or External"))]
    pub type_: String,
    /// The DNS name or IP address agents connect to; the service's certificate names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^[A-Za-z0-9]([-A-Za-z0-9.:]*[A-Za-z0-9])?$')").message("host is a DNS name or an IP address"))]
    pub host: Option<String>,
    /// The port agents connect to: for LoadBalancer the Service's port (default 443); for
    /// NodePort the node port (default: allocated by Kubernetes); for Ingress and External the
    /// port your controller or route listens on (default 443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be 1 to 65535"))]
    pub port: Option<i32>,
    /// Annotations of the Service (LoadBalancer, NodePort) or of the Ingress: your load
    /// balancer's or ingress controller's settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Ingress: the IngressClass (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// Ingress: a `kubernetes.io/tls` Secret with which the controller ends TLS for `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// The Secret key holding the PEM of the CA that signed the certificate agents see at
    /// `host`, when it is not the platform's (a controller or load balancer that ends TLS);
    /// agents are given it beside the platform CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// The services of the platform.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Services {
    /// OAuth 2.0 tokens for users, things and services.
    #[serde(default)]
    pub sso: ServiceSpec,
    /// Users, things, channels and the access decisions.
    #[serde(default)]
    pub objects: ServiceSpec,
    /// The device streams (gRPC), into the log.
    #[serde(default)]
    pub collect: ServiceSpec,
    /// Commands to things.
    #[serde(default)]
    pub control: ServiceSpec,
    /// Telemetry storage, queries and rules. Each replica consumes a fixed share of the
    /// telemetry partitions (its ordinal), so it runs as a StatefulSet.
    #[serde(default)]
    pub processing: ServiceSpec,
}

/// One service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Number of pods (default 2; processing: 1). At most 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 50").message("replicas must be 0 to 50"))]
    pub replicas: Option<i32>,
    /// CPU and memory requests and limits of the service's container, taken whole. Without
    /// them, requests measured for each service and a memory limit (no CPU limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The service's own settings: any key of its section of `sipmba.toml` (`[objects]`,
    /// `[sso]`, `[collect]`, `[control]`, `[processing]`), with the same names and
    /// defaults, checked by the service's own validation (an unknown key or a bad value makes
    /// `Ready` False with `InvalidSpec`, naming it). The operator sets the addresses, client ids
    /// and secrets and the replica count itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An object of any keys, kept as written (checked by the operator, not the API server).
fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A key of a Secret in the platform's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 253").message("a Secret name is 1 to 253 characters"))]
    pub name: String,
    /// The key in the Secret.
    #[x_kube(validation = Rule::new("self.size() > 0").message("key must not be empty"))]
    pub key: String,
}

/// The database.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// The Secret key holding the PostgreSQL URL (`postgres://user:password@host:5432/db`). The
    /// Helm chart's trial PostgreSQL creates one.
    pub url_secret_ref: SecretKeyRef,
    /// Connections each pod keeps open (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 200").message("maxConnections must be 1 to 200"))]
    pub max_connections: Option<i32>,
}

/// The log.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sasl) || self.sasl.mechanism != 'PLAIN' || has(self.tls)").message("sasl.mechanism PLAIN sends the password in the clear: set tls, or use SCRAM-SHA-512"))]
pub struct QueueSpec {
    /// Bootstrap brokers, `host:port`. A host name without a dot is a Service of the platform's
    /// namespace (the operator, in its own, looks it up as `<name>.<namespace>.svc`).
    #[x_kube(validation = Rule::new("self.size() > 0").message("give at least one broker"))]
    pub brokers: Vec<String>,
    /// Prefix of every topic name (`<prefix>sipmba.telemetry`, ...), so that platforms can share
    /// brokers. Immutable: the platform's data lives in these topics, and Processing keeps its
    /// position in them in the platform's database (a database serves one platform).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("topicPrefix is immutable"))]
    pub topic_prefix: String,
    /// Partitions of `sipmba.telemetry` (default 4). May grow, never shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1024").message("telemetryPartitions must be 1 to 1024"))]
    pub telemetry_partitions: Option<i32>,
    /// Partitions of `sipmba.commands` and `sipmba.command-events` (default 4). May grow, never
    /// shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1024").message("commandPartitions must be 1 to 1024"))]
    pub command_partitions: Option<i32>,
    /// How long telemetry stays on the log, in hours (default 168).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("telemetryRetentionHours must be at least 1"))]
    pub telemetry_retention_hours: Option<i64>,
    /// Copies of each partition of the topics the platform creates (default: the brokers'
    /// `default.replication.factor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 16").message("replicationFactor must be 1 to 16"))]
    pub replication_factor: Option<i32>,
    /// TLS to the brokers (their SSL or SASL_SSL listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<QueueTlsSpec>,
    /// SASL towards the brokers (their SASL_PLAINTEXT or SASL_SSL listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<QueueSaslSpec>,
}

/// TLS to the brokers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueTlsSpec {
    /// The Secret key holding the PEM of the CA that signed the brokers' certificates.
    pub ca_secret_ref: SecretKeyRef,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) whose certificate the platform shows
    /// brokers that ask for one (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 253").message("a Secret name is 1 to 253 characters"))]
    pub client_secret_name: Option<String>,
}

/// SASL towards the brokers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueSaslSpec {
    /// `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN` (PLAIN only with `tls`).
    #[x_kube(validation = Rule::new("self in ['PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512']").message("mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"))]
    pub mechanism: String,
    /// The SASL user.
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 256").message("username is 1 to 256 characters"))]
    pub username: String,
    /// The Secret key holding its password.
    pub password_secret_ref: SecretKeyRef,
}

/// Access-token lifetimes, in seconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenSpec {
    /// Users' access tokens (default 900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 60 && self <= 86400").message("userSeconds must be 60 to 86400"))]
    pub user_seconds: Option<i64>,
    /// Things' access tokens (default 3600); a Thing may ask for less.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 60 && self <= 604800").message("thingSeconds must be 60 to 604800"))]
    pub thing_seconds: Option<i64>,
    /// Refresh tokens of users (default 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 3600").message("refreshSeconds must be at least 3600"))]
    pub refresh_seconds: Option<i64>,
}

/// TLS settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Serve every listener and make every call between services over TLS (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Lifetime of the service certificates, in days (default 90); renewed when a third is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 825").message("certificateDays must be 1 to 825"))]
    pub certificate_days: Option<i64>,
}

/// What the operator last saw of a platform.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SipMbaStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    /// Readiness of each service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentStatus>,
    /// Where agents outside the cluster reach the platform (from `spec.exposure`, once each
    /// address is known): the URLs the operator gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalUrls>,
}

/// The platform's URLs outside the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExternalUrls {
    /// Collect, e.g. `https://collect.example.com:443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect: Option<String>,
    /// sso, e.g. `https://sso.example.com:443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso: Option<String>,
}

/// Readiness of one service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// The service: sso, objects, collect, control or processing.
    pub name: String,
    /// Pods wanted.
    pub replicas: i32,
    /// Pods ready.
    pub ready_replicas: i32,
}

/// A thing (device) of a platform: the operator registers it with Objects, gets its credential
/// and access token from sso, keeps them in a Secret it owns, pushes them to the thing's agent
/// (`sipmba-edge`) at its provisioning endpoint, rotates the token before it expires, and on
/// deletion revokes the token and deregisters the thing.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sipmba.io",
    version = "v1alpha1",
    kind = "Thing",
    doc = "A device of a SIP-MBA platform, provisioned by the operator: registered, given its token, kept up to date.",
    plural = "things",
    singular = "thing",
    shortname = "th",
    namespaced,
    status = "ThingStatus",
    printcolumn = r#"{"name":"Platform","type":"string","jsonPath":".spec.platformRef"}"#,
    printcolumn = r#"{"name":"Thing ID","type":"string","jsonPath":".status.thingId"}"#,
    printcolumn = r#"{"name":"Delivered","type":"string","jsonPath":".status.conditions[?(@.type==\"Delivered\")].status"}"#,
    printcolumn = r#"{"name":"Token Expires","type":"date","jsonPath":".status.tokenExpires"}"#,
    printcolumn = r#"{"name":"Last Delivery","type":"date","jsonPath":".status.lastDelivery","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ThingSpec {
    /// The `SipMba` platform, in this namespace, the thing belongs to. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("platformRef is immutable: create another Thing"))]
    pub platform_ref: String,
    /// The id of the user owning the thing in Objects. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("owner is immutable: create another Thing"))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')").message("owner is a user id (a lowercase UUID)"))]
    pub owner: String,
    /// The thing's name in Objects, unique among its owner's things (default: the Thing's
    /// metadata.name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 128").message("displayName is 1 to 128 characters"))]
    pub display_name: Option<String>,
    /// Labels of the thing in Objects (rules and listings select by them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The thing's agent.
    pub agent: AgentSpec,
    /// Longest a token delivered to the agent is used, in seconds (default: the platform's token
    /// lifetime, `tokens.thingSeconds`): the operator delivers a new one when a fifth of it is
    /// left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 300 && self <= 604800").message("tokenSeconds must be 300 to 604800"))]
    pub token_seconds: Option<i64>,
}

/// Where the operator reaches a thing's agent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// The agent's provisioning endpoint (`sipmba.v1.EdgeService`), e.g.
    /// `https://greenhouse-7.local:7443`.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("endpoint is an http:// or https:// URL"))]
    pub endpoint: String,
    /// Where the agent runs. `Cluster`: a pod, given the platform's in-cluster addresses.
    /// `External`: a device on another network (a Raspberry Pi on a LAN), given the addresses
    /// of the platform's `spec.exposure` (the Thing is not delivered until they are known).
    /// Default: `Cluster` when the endpoint's host is a Service name (no dot, or a name under
    /// `.svc`), `External` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Cluster', 'External']").message("network must be Cluster or External"))]
    pub network: Option<String>,
    /// The Secret key holding the enrollment secret shared with the agent
    /// (`provisioning.enrollment_secret_file` in its configuration).
    pub enrollment_secret_ref: SecretKeyRef,
}

/// What the operator last saw of a thing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ThingStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Registered, TokenIssued and Delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions")]
    pub conditions: Vec<Condition>,
    /// The thing's id in Objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thing_id: Option<String>,
    /// When the delivered access token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires: Option<Time>,
    /// When the agent last accepted credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<Time>,
    /// The Secret holding the thing's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// Conditions as a list-map keyed by `type`, as Kubernetes' own resources have them.
fn conditions(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}
