//! The Thing provisioning path against the real services and a real agent, each a process: a
//! `sipmba server --dev` platform (Objects, sso, Collect) and a `sipmba-edge` agent with its
//! provisioning endpoint. The operator registers the thing, gets its credential and token,
//! pushes them to the agent (whose Collect session then works), rotates them, and at the end
//! revokes the token and deregisters the thing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use sipmba_operator::provisioning;
use sipmba_proto::v1 as pb;

/// Whether Collect accepts `token` (a Publish of a reading it has already: accepted, dropped).
async fn collect_accepts(url: &str, token: &str) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reading = pb::PublishRequest {
        readings: vec![pb::Reading {
            seq: 1,
            device_time: Some(std::time::SystemTime::now().into()),
            metrics: vec![pb::Metric {
                name: "probe".into(),
                value: Some(pb::metric::Value::Number(1.0)),
                unit: String::new(),
            }],
            ..Default::default()
        }],
    };
    let mut request = tonic::Request::new(tokio_stream::iter(vec![reading]));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    pb::collect_service_client::CollectServiceClient::new(channel)
        .publish(request)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_is_registered_provisioned_rotated_revoked_and_deregistered() {
    let stack = stack().await;
    let (url, owner, endpoint) = (stack.url.clone(), stack.owner, stack.endpoint.clone());
    let enrollment = ENROLLMENT.as_bytes();
    let operator = stack.operator();
    // Registered once: a second registration finds the same thing.
    let labels = BTreeMap::from([("site".to_owned(), "north".to_owned())]);
    let thing = sipmba_testkit::eventually(
        "the platform to register things",
        Duration::from_secs(60),
        || async { operator.register(owner, "greenhouse-7", &labels).await.ok() },
    )
    .await;
    assert_eq!(
        operator
            .register(owner, "greenhouse-7", &labels)
            .await
            .unwrap(),
        thing
    );

    // Credential, token, delivery: the agent's Collect session works with it.
    let (client_id, thing_secret) = operator.credential(thing).await.unwrap();
    let token = operator
        .thing_token(&client_id, &thing_secret)
        .await
        .unwrap();
    let provision = |token: &provisioning::ThingToken| pb::ProvisionRequest {
        thing: Some(pb::ThingId {
            value: thing.to_string(),
        }),
        access_token: token.access_token.clone(),
        token_expires: Some(token.expires),
        collect_endpoint: url.clone(),
        client_id: client_id.clone(),
        ..Default::default()
    };
    let accepted =
        sipmba_testkit::eventually("the agent's endpoint", Duration::from_secs(30), || async {
            provisioning::deliver(&endpoint, enrollment, None, provision(&token))
                .await
                .ok()
        })
        .await;
    assert!(accepted.accepted);
    let uploaded = sipmba_testkit::eventually(
        "an upload with the delivered token",
        Duration::from_secs(30),
        || async {
            let status = provisioning::agent_status(&endpoint, enrollment, None)
                .await
                .ok()?;
            (status.last_acked_seq >= 2).then_some(status.last_acked_seq)
        },
    )
    .await;

    // A wrong enrollment secret is refused.
    let forged = provisioning::deliver(&endpoint, b"not the secret", None, provision(&token)).await;
    assert!(forged.is_err(), "a forged proof is refused");

    // Rotation: a new credential and token replace the old; the agent goes on uploading.
    let (_, rotated_secret) = operator.credential(thing).await.unwrap();
    assert!(
        operator
            .thing_token(&client_id, &thing_secret)
            .await
            .is_err(),
        "the old secret stops working at once"
    );
    let rotated = operator
        .thing_token(&client_id, &rotated_secret)
        .await
        .unwrap();
    assert!(
        provisioning::deliver(&endpoint, enrollment, None, provision(&rotated))
            .await
            .unwrap()
            .accepted
    );
    sipmba_testkit::eventually(
        "uploads with the rotated token",
        Duration::from_secs(30),
        || async {
            let status = provisioning::agent_status(&endpoint, enrollment, None)
                .await
                .ok()?;
            (status.token_expires == Some(rotated.expires) && status.last_acked_seq > uploaded + 1)
                .then_some(())
        },
    )
    .await;
    collect_accepts(&url, &rotated.access_token).await.unwrap();

    // Deletion: the token is refused within a second or so, and the thing is gone (twice: a
    // thing already gone counts as deregistered).
    operator.revoke(thing).await.unwrap();
    sipmba_testkit::eventually(
        "Collect to refuse the revoked token",
        Duration::from_secs(10),
        || async {
            match collect_accepts(&url, &rotated.access_token).await {
                Err(status) if status.code() == tonic::Code::Unauthenticated => Some(()),
                _ => None,
            }
        },
    )
    .await;
    operator.deregister(thing).await.unwrap();
    operator.deregister(thing).await.unwrap();
    assert!(
        operator
            .thing_token(&client_id, &rotated_secret)
            .await
            .is_err(),
        "a deregistered thing gets no token"
    );
}
