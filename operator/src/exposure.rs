//! The platform outside the cluster (`spec.exposure`): the Services of type LoadBalancer or
//! NodePort and the Ingresses that let devices on other networks reach Collect and sso, the
//! URLs agents are given, and the names the services' certificates carry for them. Pure
//! functions; the platform reconciler applies and reads back what they describe.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        networking::v1::{
            HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
            IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
        },
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::{
    api::{ExposedService, SipMba},
    desired::{self, Component, PORT},
};

/// The label on the Services `spec.exposure` makes (its value the Service's type). The chart's
/// ServiceMonitor selects the platform's Services without it, so that each pod is scraped once,
/// through its ClusterIP Service, however it is exposed.
pub const EXPOSURE_LABEL: &str = "sipmba.io/exposure";

/// The services agents outside the cluster use.
pub const EXPOSABLE: [Component; 2] = [Component::Collect, Component::Sso];

/// How `component` is exposed, if it is.
pub fn exposed(platform: &SipMba, component: Component) -> Option<&ExposedService> {
    let exposure = platform.spec.exposure.as_ref()?;
    match component {
        Component::Collect => exposure.collect.as_ref(),
        Component::Sso => exposure.sso.as_ref(),
        _ => None,
    }
}

/// The Service of type LoadBalancer or NodePort: `<platform>-<service>-external`.
pub fn service_name(platform: &SipMba, component: Component) -> String {
    format!("{}-external", desired::name(platform, component))
}

/// The Ingress: `<platform>-<service>`.
pub fn ingress_name(platform: &SipMba, component: Component) -> String {
    desired::name(platform, component)
}

/// The object a mode needs: a Service (LoadBalancer, NodePort), an Ingress, or nothing
/// (External, or not exposed).
#[derive(Debug, Clone, PartialEq)]
pub enum Exposer {
    /// A Service of type LoadBalancer or NodePort.
    Service(Box<Service>),
    /// An Ingress.
    Ingress(Box<Ingress>),
    /// Nothing the operator makes.
    Nothing,
}

/// What exposes `component`.
pub fn exposer(platform: &SipMba, component: Component) -> Exposer {
    let Some(exposed) = exposed(platform, component) else {
        return Exposer::Nothing;
    };
    match exposed.type_.as_str() {
        "LoadBalancer" | "NodePort" => {
            Exposer::Service(Box::new(service(platform, component, exposed)))
        }
        "Ingress" => Exposer::Ingress(Box::new(ingress(platform, component, exposed))),
        _ => Exposer::Nothing,
    }
}

fn annotations(exposed: &ExposedService) -> Option<BTreeMap<String, String>> {
    Some(exposed.annotations.clone()).filter(|a| !a.is_empty())
}

fn service(platform: &SipMba, component: Component, exposed: &ExposedService) -> Service {
    let node_port = exposed.type_ == "NodePort";
    let mut meta = desired::meta(platform, service_name(platform, component), component);
    meta.annotations = annotations(exposed);
    meta.labels
        .get_or_insert_default()
        .insert(EXPOSURE_LABEL.into(), exposed.type_.clone());
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(exposed.type_.clone()),
            selector: Some(desired::selector(platform, component)),
            // Agents reconnect to whichever pod; their source address is kept for the logs.
            external_traffic_policy: Some("Cluster".into()),
            ports: Some(vec![ServicePort {
                name: Some("api".into()),
                port: if node_port {
                    PORT
                } else {
                    exposed.port.unwrap_or(443)
                },
                node_port: exposed.port.filter(|_| node_port),
                target_port: Some(IntOrString::String("api".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn ingress(platform: &SipMba, component: Component, exposed: &ExposedService) -> Ingress {
    let mut meta = desired::meta(platform, ingress_name(platform, component), component);
    meta.annotations = annotations(exposed);
    let host = exposed.host.clone();
    Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: exposed.ingress_class_name.clone(),
            rules: Some(vec![IngressRule {
                host: host.clone(),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: desired::name(platform, component),
                                port: Some(ServiceBackendPort {
                                    name: Some("api".into()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            tls: exposed.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: host.map(|h| vec![h]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}

/// Why an exposed service has no external URL yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pending {
    /// The load balancer has not reported an address.
    #[error("waiting for the load balancer of Service {0} to report its address")]
    LoadBalancer(String),
    /// Kubernetes has not allocated the node port.
    #[error("waiting for Service {0} to be given its node port")]
    NodePort(String),
}

/// The host (DNS name or IP) agents connect to: the spec's, or the address a load balancer
/// reports on `live` (its Service as read back).
pub fn host(exposed: &ExposedService, live: Option<&Service>) -> Option<String> {
    if let Some(host) = &exposed.host {
        return Some(host.clone());
    }
    let ingress = live?
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?;
    ingress
        .iter()
        .find_map(|i| i.hostname.clone().or_else(|| i.ip.clone()))
}

/// The URL agents are given for `component`, from the spec and the exposing Service as read
/// back (`live`); `None` when the service is not exposed.
pub fn url(
    platform: &SipMba,
    component: Component,
    live: Option<&Service>,
) -> Option<Result<String, Pending>> {
    let exposed = exposed(platform, component)?;
    let name = service_name(platform, component);
    let Some(host) = host(exposed, live) else {
        return Some(Err(Pending::LoadBalancer(name)));
    };
    let port = match exposed.type_.as_str() {
        "NodePort" => match exposed
            .port
            .or_else(|| live?.spec.as_ref()?.ports.as_ref()?.first()?.node_port)
        {
            Some(port) => port,
            None => return Some(Err(Pending::NodePort(name))),
        },
        _ => exposed.port.unwrap_or(443),
    };
    // An IPv6 address is bracketed in a URL.
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Some(Ok(format!("https://{host}:{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ExposureSpec, SipMba};
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};

    fn platform(collect: ExposedService) -> SipMba {
        let mut platform: SipMba =
            serde_yaml::from_str(include_str!("../../charts/sipmba/examples/sipmba.yaml"))
                .expect("the example platform");
        platform.metadata.namespace = Some("iot".into());
        platform.spec.exposure = Some(ExposureSpec {
            collect: Some(collect),
            sso: None,
        });
        platform
    }

    fn exposed(type_: &str, host: Option<&str>, port: Option<i32>) -> ExposedService {
        ExposedService {
            type_: type_.into(),
            host: host.map(Into::into),
            port,
            annotations: BTreeMap::new(),
            ingress_class_name: None,
            tls_secret_name: None,
            ca_secret_ref: None,
        }
    }

    #[test]
    fn a_node_port_url_takes_the_allocated_port_until_one_is_given() {
        let p = platform(exposed("NodePort", Some("10.0.0.7"), None));
        let Exposer::Service(service) = exposer(&p, Component::Collect) else {
            panic!("a NodePort is a Service");
        };
        assert_eq!(
            service.metadata.name.as_deref(),
            Some("demo-collect-external")
        );
        let spec = service.spec.clone().unwrap_or_default();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.ports.as_ref().unwrap()[0].node_port, None);
        // Marked, so that the ServiceMonitor scrapes the pods through their ClusterIP Service only.
        let labels = service.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(EXPOSURE_LABEL).map(String::as_str),
            Some("NodePort")
        );
        let internal = desired::service(&p, Component::Collect);
        assert!(
            !internal
                .metadata
                .labels
                .unwrap_or_default()
                .contains_key(EXPOSURE_LABEL)
        );
        assert_eq!(
            url(&p, Component::Collect, None),
            Some(Err(Pending::NodePort("demo-collect-external".into())))
        );
        let mut live = (*service).clone();
        live.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(31_443);
        assert_eq!(
            url(&p, Component::Collect, Some(&live)),
            Some(Ok("https://10.0.0.7:31443".into()))
        );
        assert_eq!(
            url(&p, Component::Sso, Some(&live)),
            None,
            "sso is not exposed"
        );

        let fixed = platform(exposed("NodePort", Some("fe80::7"), Some(30_443)));
        assert_eq!(
            url(&fixed, Component::Collect, None),
            Some(Ok("https://[fe80::7]:30443".into()))
        );
    }

    #[test]
    fn a_load_balancer_url_takes_the_reported_address_unless_a_host_is_given() {
        let p = platform(exposed("LoadBalancer", None, None));
        let Exposer::Service(service) = exposer(&p, Component::Collect) else {
            panic!("a LoadBalancer is a Service");
        };
        let mut live = *service;
        assert_eq!(
            live.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
            443
        );
        assert_eq!(
            url(&p, Component::Collect, Some(&live)),
            Some(Err(Pending::LoadBalancer("demo-collect-external".into())))
        );
        live.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("203.0.113.9".into()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            ..ServiceStatus::default()
        });
        assert_eq!(
            url(&p, Component::Collect, Some(&live)),
            Some(Ok("https://203.0.113.9:443".into()))
        );
        let named = platform(exposed(
            "LoadBalancer",
            Some("collect.example.com"),
            Some(8443),
        ));
        assert_eq!(
            url(&named, Component::Collect, Some(&live)),
            Some(Ok("https://collect.example.com:8443".into()))
        );
    }

    #[test]
    fn an_ingress_routes_its_host_to_the_service_and_external_makes_nothing() {
        let mut spec = exposed("Ingress", Some("collect.example.com"), None);
        spec.ingress_class_name = Some("nginx".into());
        spec.tls_secret_name = Some("collect-example-tls".into());
        spec.annotations = BTreeMap::from([(
            "nginx.ingress.kubernetes.io/backend-protocol".into(),
            "GRPCS".into(),
        )]);
        let p = platform(spec);
        let Exposer::Ingress(ingress) = exposer(&p, Component::Collect) else {
            panic!("an Ingress");
        };
        let yaml = serde_yaml::to_string(&ingress).unwrap();
        for expected in [
            "name: demo-collect",
            "ingressClassName: nginx",
            "host: collect.example.com",
            "secretName: collect-example-tls",
            "backend-protocol: GRPCS",
            "name: api",
        ] {
            assert!(yaml.contains(expected), "{expected:?} in\n{yaml}");
        }
        assert_eq!(
            url(&p, Component::Collect, None),
            Some(Ok("https://collect.example.com:443".into()))
        );
        let external = platform(exposed("External", Some("iot.example.com"), Some(9443)));
        assert_eq!(exposer(&external, Component::Collect), Exposer::Nothing);
        assert_eq!(
            url(&external, Component::Collect, None),
            Some(Ok("https://iot.example.com:9443".into()))
        );
    }
}
