use super::{agent_outside, agent_urls, renew_at};
use crate::api::{ExposedService, ExposureSpec, ExternalUrls, SipMba, SipMbaStatus, Thing};

fn thing(endpoint: &str, network: Option<&str>) -> Thing {
    let mut thing: Thing =
        serde_yaml::from_str(include_str!("../../../charts/sipmba/examples/thing.yaml"))
            .expect("the example thing");
    thing.spec.agent.endpoint = endpoint.into();
    thing.spec.agent.network = network.map(Into::into);
    thing
}

fn platform() -> SipMba {
    let mut platform: SipMba =
        serde_yaml::from_str(include_str!("../../../charts/sipmba/examples/sipmba.yaml"))
            .expect("the example platform");
    platform.metadata.namespace = Some("iot".into());
    platform.spec.exposure = None;
    platform
}

#[test]
fn an_agent_is_outside_unless_its_endpoint_names_a_service() {
    for inside in [
        "http://e2e-agent:7443",
        "http://e2e-agent.iot.svc:7443",
        "https://e2e-agent.iot.svc.cluster.local:7443",
    ] {
        assert!(!agent_outside(&thing(inside, None)), "{inside}");
    }
    for outside in [
        "https://greenhouse-7.local:7443",
        "https://192.168.1.20:7443",
        "http://pi.example.com:7443",
    ] {
        assert!(agent_outside(&thing(outside, None)), "{outside}");
    }
    assert!(!agent_outside(&thing(
        "https://192.168.1.20:7443",
        Some("Cluster")
    )));
    assert!(agent_outside(&thing(
        "http://e2e-agent:7443",
        Some("External")
    )));
}

#[test]
fn an_agent_outside_gets_the_external_urls_or_a_plain_reason() {
    let mut p = platform();
    let inside = thing("http://e2e-agent.iot.svc:7443", None);
    assert_eq!(
        agent_urls(&inside, &p),
        Ok((
            "https://demo-collect.iot.svc:7400".into(),
            "https://demo-sso.iot.svc:7400".into()
        ))
    );
    let pi = thing("https://192.168.1.20:7443", None);
    let why = agent_urls(&pi, &p).expect_err("no exposure");
    assert!(
        why.contains("outside the cluster") && why.contains("spec.exposure.collect"),
        "{why}"
    );

    let node_port = |host: &str| ExposedService {
        type_: "NodePort".into(),
        host: Some(host.into()),
        port: None,
        annotations: Default::default(),
        ingress_class_name: None,
        tls_secret_name: None,
        ca_secret_ref: None,
    };
    p.spec.exposure = Some(ExposureSpec {
        collect: Some(node_port("203.0.113.5")),
        sso: Some(node_port("203.0.113.5")),
    });
    let why = agent_urls(&pi, &p).expect_err("the node ports are not known yet");
    assert!(why.contains("not known yet"), "{why}");
    p.status = Some(SipMbaStatus {
        external: Some(ExternalUrls {
            collect: Some("https://203.0.113.5:31001".into()),
            sso: Some("https://203.0.113.5:31002".into()),
        }),
        ..SipMbaStatus::default()
    });
    assert_eq!(
        agent_urls(&pi, &p),
        Ok((
            "https://203.0.113.5:31001".into(),
            "https://203.0.113.5:31002".into()
        ))
    );
    assert_eq!(
        agent_urls(&inside, &p).map(|u| u.0),
        Ok("https://demo-collect.iot.svc:7400".into()),
        "an agent in the cluster keeps the in-cluster address"
    );
}

#[test]
fn a_token_is_renewed_when_a_fifth_of_its_life_is_left_capped_by_token_seconds() {
    assert_eq!(renew_at(1_000, 4_600, None, 0), 3_880);
    assert_eq!(renew_at(1_000, 4_600, Some(600), 0), 1_480);
    assert_eq!(
        renew_at(1_000, 4_600, Some(86_400), 0),
        3_880,
        "a cap above the lifetime changes nothing"
    );
    // Spread over a tenth of the life before that: 3,600 s of life, up to 360 s earlier.
    assert_eq!(renew_at(1_000, 4_600, None, 500), 3_700);
    assert_eq!(renew_at(1_000, 4_600, None, 999), 3_521);
}

#[test]
fn things_created_together_renew_spread_over_a_tenth_of_the_life() {
    let mut places = std::collections::BTreeSet::new();
    for n in 0..1000 {
        let mut t = thing("https://192.168.1.20:7443", None);
        t.metadata.uid = Some(format!("7d1f0a52-3b44-4c55-9d66-{n:012}"));
        let place = super::spread(&t);
        assert!(place < 1000);
        assert_eq!(place, super::spread(&t), "fixed per thing");
        places.insert(renew_at(0, 3_600, None, place));
    }
    // 1,000 things issued at once renew over 360 s, no second taking more than a few.
    assert!(
        places.len() > 250,
        "{} distinct renewal seconds",
        places.len()
    );
    assert!(*places.first().unwrap() >= 2_880 - 360 && *places.last().unwrap() <= 2_880);
}
