//! The Thing reconciler against a mocked Kubernetes API (tower-test), every request asserted in
//! order: the finalizer added first, a missing platform, a transient error, and the finalizer
//! removed when the platform is gone; then, with the real platform (`sipmba server --dev`) and a
//! real agent (`sipmba-edge`) as processes, registration with delivery, an unchanged thing (no
//! writes), a token renewal, and deletion revoking and deregistering the thing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::{path::Path, sync::Arc, time::Duration};

use common::*;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::runtime::controller::Action;
use serde_json::Value;
use sipmba_operator::{
    api::{SipMba, Thing},
    metrics::Metrics,
    provisioning::{self, PlatformAccess},
    reconcile::Failure,
    thing::{self, ThingContext},
};

fn thing_path() -> String {
    format!("/apis/sipmba.io/v1alpha1/namespaces/{NS}/things/greenhouse-7")
}

fn sample_thing(owner: &str) -> Thing {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sipmba/examples/thing.yaml"),
    )
    .unwrap();
    let mut thing: Thing = serde_yaml::from_str(&text).unwrap();
    thing.metadata.namespace = Some(NS.into());
    thing.metadata.uid = Some("7d1f0a52-3b44-4c55-9d66-e77788899900".into());
    thing.metadata.generation = Some(1);
    thing.spec.owner = owner.into();
    thing
}

fn with_finalizer(mut thing: Thing) -> Thing {
    thing.metadata.finalizers = Some(vec![thing::FINALIZER.into()]);
    thing
}

fn context(url: &str) -> (Arc<ThingContext>, Handle) {
    let (client, handle) = mock_client();
    let (sso, collect) = (url.to_owned(), url.to_owned());
    let ctx = ThingContext::new(client, Arc::new(Metrics::default())).with_resolver(
        Arc::new(move |_| PlatformAccess {
            sso_url: sso.clone(),
            objects_url: sso.clone(),
            ca: None,
        }),
        Arc::new(move |_| (collect.clone(), collect.clone())),
    );
    (Arc::new(ctx), handle)
}

fn platform_object() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sipmba/examples/sipmba.yaml"),
    )
    .unwrap();
    let mut platform: SipMba = serde_yaml::from_str(&text).unwrap();
    platform.metadata.namespace = Some(NS.into());
    platform.spec.tls.enabled = Some(false);
    serde_json::to_value(platform).unwrap()
}

fn secret_object(name: &str, data: &[(&str, &str)]) -> Value {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    serde_json::to_value(secret).unwrap()
}

fn platform_path() -> String {
    format!("/apis/sipmba.io/v1alpha1/namespaces/{NS}/sipmbas/demo")
}

/// A JSON patch of the thing (its finalizers); the server answers with the thing.
fn json_patch(thing: &Thing) -> Expect {
    let mut patched = thing.clone();
    patched.metadata.finalizers = None;
    Expect {
        method: "PATCH",
        path: thing_path(),
        reply: Reply::Object(serde_json::to_value(patched).unwrap()),
        apply: false,
    }
}

/// The status write; the server answers with the thing.
fn status_write(thing: &Thing) -> Expect {
    Expect {
        method: "PATCH",
        path: format!("{}/status", thing_path()),
        reply: Reply::Object(serde_json::to_value(thing).unwrap()),
        apply: true,
    }
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status}"))
}

const OWNER: &str = "3f0c9a52-6a1e-4c1b-9a57-2f8d5c0b7e41";

#[tokio::test]
async fn the_finalizer_is_added_before_anything_else() {
    let thing = sample_thing(OWNER);
    let (ctx, handle) = context("http://127.0.0.1:1");
    let mut answered = with_finalizer(thing.clone());
    answered.metadata.resource_version = Some("2".into());
    let verifier = tokio::spawn(serve(
        handle,
        vec![Expect {
            method: "PATCH",
            path: thing_path(),
            reply: Reply::Object(serde_json::to_value(&answered).unwrap()),
            apply: false,
        }],
    ));
    let action = thing::reconcile(Arc::new(thing), ctx).await.unwrap();
    let seen = verifier.await.unwrap();
    assert_eq!(action, Action::await_change());
    let ops = seen[0].2.to_string();
    assert!(
        ops.contains(r#""op":"add""#) && ops.contains(thing::FINALIZER),
        "{ops}"
    );
}

#[tokio::test]
async fn a_missing_platform_is_reported_and_looked_for_again() {
    let thing = with_finalizer(sample_thing(OWNER));
    let (ctx, handle) = context("http://127.0.0.1:1");
    let verifier = tokio::spawn(serve(
        handle,
        vec![get(platform_path(), Reply::Missing), status_write(&thing)],
    ));
    let action = thing::reconcile(Arc::new(thing), ctx).await.unwrap();
    let seen = verifier.await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let status = &seen[1].2;
    assert_eq!(
        condition(status, "Registered")["reason"],
        "PlatformNotFound"
    );
    assert_eq!(condition(status, "Registered")["observedGeneration"], 1);
    assert!(
        condition(status, "Delivered")["message"]
            .as_str()
            .unwrap()
            .contains("no SipMba \"demo\""),
        "{status}"
    );
}

#[tokio::test]
async fn a_transient_failure_backs_off() {
    let thing = Arc::new(with_finalizer(sample_thing(OWNER)));
    let (ctx, handle) = context("http://127.0.0.1:1");
    let verifier = tokio::spawn(serve(
        handle,
        vec![
            get(platform_path(), Reply::Fail(503)),
            get(platform_path(), Reply::Fail(503)),
        ],
    ));
    let mut waits = Vec::new();
    for _ in 0..2 {
        let error = thing::reconcile(thing.clone(), ctx.clone())
            .await
            .unwrap_err();
        assert_eq!(error.category(), "api_server");
        waits.push(thing::error_policy(thing.clone(), &error, ctx.clone()));
    }
    verifier.await.unwrap();
    assert_eq!(
        waits,
        [2, 4].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    let text = ctx.shared.metrics.encode();
    assert!(
        text.contains(
            r#"sipmba_operator_reconciles_total{controller="thing",result="api_server"} 2"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_deleted_thing_of_a_platform_that_is_gone_is_released() {
    let mut thing = with_finalizer(sample_thing(OWNER));
    thing.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    thing.status = Some(sipmba_operator::api::ThingStatus {
        thing_id: Some("0a1b2c3d-0000-4000-8000-000000000001".into()),
        ..Default::default()
    });
    let (ctx, handle) = context("http://127.0.0.1:1");
    let verifier = tokio::spawn(serve(
        handle,
        vec![get(platform_path(), Reply::Missing), json_patch(&thing)],
    ));
    let action = thing::reconcile(Arc::new(thing), ctx).await.unwrap();
    let seen = verifier.await.unwrap();
    assert_eq!(action, Action::await_change());
    let ops = seen[1].2.to_string();
    assert!(
        ops.contains(r#""op":"remove""#),
        "the finalizer is removed: {ops}"
    );
}

// ----- with the real platform and agent ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_is_provisioned_left_alone_renewed_and_cleaned_up() {
    let stack = stack().await;
    let (url, endpoint) = (stack.url.clone(), stack.endpoint.clone());
    let (operator_secret, enrollment) = (OPERATOR_SECRET, ENROLLMENT);
    let mut thing = with_finalizer(sample_thing(&stack.owner.to_string()));
    thing.spec.agent.endpoint = endpoint.clone();

    let clients = || {
        get(
            core("secrets", "demo-clients"),
            Reply::Object(secret_object(
                "demo-clients",
                &[("operator", operator_secret)],
            )),
        )
    };
    let enrollment_secret = || {
        get(
            core("secrets", "greenhouse-7-enrollment"),
            Reply::Object(secret_object(
                "greenhouse-7-enrollment",
                &[("secret", enrollment)],
            )),
        )
    };
    let credentials = core("secrets", "greenhouse-7-credentials");
    // What every reconcile reads first: the platform and the operator's credential.
    let reach = || {
        vec![
            get(platform_path(), Reply::Object(platform_object())),
            clients(),
        ]
    };

    // 1. A new thing: registered, its credential and token kept in a Secret it owns, delivered.
    let (ctx, handle) = context(&url);
    let verifier = tokio::spawn(serve(
        handle,
        [
            reach(),
            vec![
                get(credentials.clone(), Reply::Missing),
                apply(credentials.clone()),
                enrollment_secret(),
                status_write(&thing),
            ],
        ]
        .into_iter()
        .flatten()
        .collect(),
    ));
    let action = thing::reconcile(Arc::new(thing.clone()), ctx)
        .await
        .unwrap();
    let seen = verifier.await.unwrap();
    let stored = &seen[3].2;
    assert_eq!(stored["metadata"]["ownerReferences"][0]["kind"], "Thing");
    for key in [
        "thing",
        "client_id",
        "client_secret",
        "access_token",
        "issued",
        "expires",
    ] {
        assert!(stored["stringData"][key].is_string(), "{key} in {stored}");
    }
    let status = &seen[5].2;
    let thing_id = status["status"]["thingId"].as_str().unwrap().to_owned();
    assert_eq!(stored["stringData"]["thing"], thing_id.as_str());
    for kind in ["Registered", "TokenIssued", "Delivered"] {
        assert_eq!(
            condition(status, kind)["status"],
            "True",
            "{kind}: {status}"
        );
    }
    assert!(status["status"]["lastDelivery"].is_string());
    assert_ne!(
        action,
        Action::await_change(),
        "the reconcile comes back to renew the token"
    );
    // The agent uploads with what it was given.
    sipmba_testkit::eventually("the agent to upload", Duration::from_secs(30), || async {
        let s = provisioning::agent_status(&endpoint, enrollment.as_bytes(), None)
            .await
            .ok()?;
        (s.last_acked_seq >= 2).then_some(())
    })
    .await;

    // 2. Nothing changed: read, and nothing written or delivered.
    let mut current = thing.clone();
    current.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let stored_data: Vec<(String, String)> = stored["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let stored_pairs: Vec<(&str, &str)> = stored_data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (ctx, handle) = context(&url);
    let verifier = tokio::spawn(serve(
        handle,
        [
            reach(),
            vec![get(
                credentials.clone(),
                Reply::Object(secret_object("greenhouse-7-credentials", &stored_pairs)),
            )],
        ]
        .into_iter()
        .flatten()
        .collect(),
    ));
    thing::reconcile(Arc::new(current.clone()), ctx)
        .await
        .unwrap();
    let seen = verifier.await.unwrap();
    assert!(seen.iter().all(|(m, _, _)| m == "GET"), "reads only");

    // 3. The token is due: renewed, stored, delivered, and the status says until when.
    let mut due = stored_pairs.clone();
    let issued_long_ago = (k8s_openapi::jiff::Timestamp::now().as_second() - 3500).to_string();
    let expiring = (k8s_openapi::jiff::Timestamp::now().as_second() + 100).to_string();
    for (k, v) in &mut due {
        match *k {
            "issued" => *v = issued_long_ago.as_str(),
            "expires" => *v = expiring.as_str(),
            _ => {}
        }
    }
    let (ctx, handle) = context(&url);
    let verifier = tokio::spawn(serve(
        handle,
        [
            reach(),
            vec![
                get(
                    credentials.clone(),
                    Reply::Object(secret_object("greenhouse-7-credentials", &due)),
                ),
                apply(credentials.clone()),
                enrollment_secret(),
                status_write(&current),
            ],
        ]
        .into_iter()
        .flatten()
        .collect(),
    ));
    thing::reconcile(Arc::new(current.clone()), ctx)
        .await
        .unwrap();
    let seen = verifier.await.unwrap();
    let renewed = &seen[3].2;
    assert_ne!(
        renewed["stringData"]["access_token"],
        stored["stringData"]["access_token"]
    );
    assert_eq!(
        renewed["stringData"]["client_secret"],
        stored["stringData"]["client_secret"]
    );
    let renewed_status = &seen[5].2;
    assert_ne!(
        renewed_status["status"]["tokenExpires"],
        status["status"]["tokenExpires"]
    );
    let agent = provisioning::agent_status(&endpoint, enrollment.as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(
        agent
            .token_expires
            .map(|t| t.seconds)
            .unwrap_or_default()
            .to_string(),
        renewed["stringData"]["expires"].as_str().unwrap(),
        "the agent has the renewed token"
    );

    // 4. Deleted: the token is revoked, the thing deregistered, the finalizer removed.
    let mut deleted = current.clone();
    deleted.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let (ctx, handle) = context(&url);
    let verifier = tokio::spawn(serve(
        handle,
        [reach(), vec![json_patch(&deleted)]]
            .into_iter()
            .flatten()
            .collect(),
    ));
    thing::reconcile(Arc::new(deleted), ctx).await.unwrap();
    verifier.await.unwrap();
    let operator = stack.operator();
    let client_id = renewed["stringData"]["client_id"].as_str().unwrap();
    let secret = renewed["stringData"]["client_secret"].as_str().unwrap();
    assert!(
        operator.thing_token(client_id, secret).await.is_err(),
        "a deregistered thing gets no token"
    );
}
