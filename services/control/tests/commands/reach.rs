//! Commands outside the user's reach are refused.

use super::*;

sipmba_testkit::on_both_databases!(commands_outside_the_users_reach_are_refused,);

async fn commands_outside_the_users_reach_are_refused(backend: Backend) {
    let limits = Settings {
        commands_per_second: 1,
        burst_commands: 5,
        ..Settings::default()
    };
    let h = Harness::start(backend, limits).await;
    let (alice, alice_token) = h.root("alice").await;
    let (bob, bob_token) = h.root("bob").await;
    let (_carol, carol_token) = h.root("carol").await;
    let alice_thing = h.thing(&alice_token, "door").await;
    let hour = Duration::from_secs(3600);

    // Someone else's thing does not exist for bob.
    assert_status(
        h.send(&bob_token, alice_thing, "open", hour).await,
        Code::NotFound,
        "not found",
    );
    // A read-only grant shows the thing, without the right to command it.
    let channels = pb::channel_service_client::ChannelServiceClient::new(h.objects.clone());
    let channel = channels
        .clone()
        .create_channel(req(
            &alice_token,
            pb::CreateChannelRequest {
                name: "shared".into(),
                owner: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    channels
        .clone()
        .connect_thing(req(
            &alice_token,
            pb::ConnectThingRequest {
                channel: channel.id.clone(),
                thing: Some(thing_id(alice_thing)),
            },
        ))
        .await
        .unwrap();
    channels
        .clone()
        .grant_access(req(
            &alice_token,
            pb::GrantAccessRequest {
                channel: channel.id.clone(),
                grantee: Some(pb::UserId {
                    value: bob.to_string(),
                }),
                permissions: vec![pb::ChannelPermission::ReadTelemetry as i32],
                expires: None,
            },
        ))
        .await
        .unwrap();
    assert_status(
        h.send(&bob_token, alice_thing, "open", hour).await,
        Code::PermissionDenied,
        "CHANNEL_PERMISSION_SEND_COMMANDS",
    );
    // A rule's command (Processing, a service, on behalf of the rule's owner) is authorized as
    // the owner, and only services may send one.
    let rule = Uuid::new_v4();
    let on_behalf = |token: &str, owner: Uuid| {
        let mut control = h.control();
        let request = req(
            token,
            pb::SendCommandRequest {
                thing: Some(thing_id(alice_thing)),
                name: "close".into(),
                payload: vec![],
                ttl: None,
                idempotency_key: "firing:1".into(),
                on_behalf_of: Some(pb::RuleDelegation {
                    rule: Some(pb::RuleId {
                        value: rule.to_string(),
                    }),
                    owner: Some(pb::UserId {
                        value: owner.to_string(),
                    }),
                }),
            },
        );
        async move { control.send_command(request).await }
    };
    let processing = h.issuer.sign(&h.issuer.claims(
        Kind::Service,
        Uuid::new_v4(),
        &[scopes::COMMANDS_WRITE],
    ));
    assert_status(
        on_behalf(&alice_token, alice).await,
        Code::PermissionDenied,
        "service principals",
    );
    assert_status(
        on_behalf(&processing, bob).await,
        Code::PermissionDenied,
        "the rule owner's grant",
    );
    let by_rule = on_behalf(&processing, alice).await.unwrap().into_inner();
    assert_eq!(
        by_rule.issuer.unwrap().issuer,
        Some(pb::command_issuer::Issuer::Rule(pb::RuleId {
            value: rule.to_string()
        }))
    );
    // Sent again (a retry after a restart), it is the same command.
    let again = on_behalf(&processing, alice).await.unwrap().into_inner();
    assert_eq!(again.id, by_rule.id);
    // A thing's token sends nothing; a token without the scope neither.
    assert_status(
        h.send(&h.thing_token(alice_thing), alice_thing, "open", hour)
            .await,
        Code::PermissionDenied,
        "commands:write",
    );
    let read_only = h
        .issuer
        .sign(&h.issuer.claims(Kind::User, alice, &[scopes::COMMANDS_READ]));
    assert_status(
        h.send(&read_only, alice_thing, "open", hour).await,
        Code::PermissionDenied,
        "commands:write",
    );
    // Malformed requests.
    assert_status(
        h.send(&alice_token, alice_thing, "no spaces", hour).await,
        Code::InvalidArgument,
        "`name`",
    );
    assert_status(
        h.send(&alice_token, alice_thing, "ok", Duration::ZERO)
            .await,
        Code::InvalidArgument,
        "`ttl`",
    );
    assert_status(
        h.send(
            &alice_token,
            alice_thing,
            "ok",
            Duration::from_secs(8 * 24 * 3600),
        )
        .await,
        Code::InvalidArgument,
        "`ttl`",
    );
    let big = h
        .control()
        .send_command(req(
            &alice_token,
            pb::SendCommandRequest {
                thing: Some(thing_id(alice_thing)),
                name: "firmware".into(),
                payload: vec![0; 64 * 1024 + 1],
                ttl: None,
                idempotency_key: String::new(),
                on_behalf_of: None,
            },
        ))
        .await;
    assert_status(big, Code::InvalidArgument, "`payload`");
    assert_status(
        h.control()
            .get_command(req(
                &alice_token,
                pb::GetCommandRequest {
                    id: Some(pb::CommandId {
                        value: "nope".into(),
                    }),
                },
            ))
            .await,
        Code::InvalidArgument,
        "id",
    );

    // Idempotency: the same key gives the same command; another request under it is refused.
    let keyed = |name: &str| pb::SendCommandRequest {
        thing: Some(thing_id(alice_thing)),
        name: name.into(),
        payload: vec![1],
        ttl: None,
        idempotency_key: "k-1".into(),
        on_behalf_of: None,
    };
    let first = h
        .control()
        .send_command(req(&alice_token, keyed("unlock")))
        .await
        .unwrap()
        .into_inner();
    let again = h
        .control()
        .send_command(req(&alice_token, keyed("unlock")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.id, again.id);
    assert_status(
        h.control()
            .send_command(req(&alice_token, keyed("lock")))
            .await,
        Code::AlreadyExists,
        "idempotency_key",
    );
    // Other users see neither the command nor its list.
    assert_status(
        h.control()
            .get_command(req(
                &carol_token,
                pb::GetCommandRequest {
                    id: first.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    let carol_list = h
        .control()
        .list_commands(req(&carol_token, pb::ListCommandsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(carol_list.commands.is_empty());

    // The per-issuer rate: a burst of 5, then RESOURCE_EXHAUSTED saying when to retry.
    let mut refused = None;
    for i in 0..10 {
        if let Err(status) = h
            .send(&alice_token, alice_thing, &format!("tick-{i}"), hour)
            .await
        {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("the rate limit answered");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    use tonic_types::StatusExt;
    let retry = refused.get_details_retry_info().expect("RetryInfo detail");
    assert!(
        retry
            .retry_delay
            .is_some_and(|d| d <= Duration::from_secs(1))
    );

    // A disabled thing takes no commands.
    pb::thing_service_client::ThingServiceClient::new(h.objects.clone())
        .disable_thing(req(
            &alice_token,
            pb::DisableThingRequest {
                id: Some(thing_id(alice_thing)),
            },
        ))
        .await
        .unwrap();
    assert_status(
        h.send(&alice_token, alice_thing, "open", hour).await,
        Code::FailedPrecondition,
        "disabled",
    );

    // A thing reads only its own commands: acknowledging another thing's changes nothing, and a
    // malformed acknowledgement ends the session with INVALID_ARGUMENT.
    let other = h.thing(&alice_token, "window").await;
    let mut s = h.session(0, other, 4).await;
    s.ack(first.id.as_ref().unwrap(), pb::CommandOutcome::Acked, "")
        .await;
    s.ack(
        first.id.as_ref().unwrap(),
        pb::CommandOutcome::Unspecified,
        "",
    )
    .await;
    let mut ended = None;
    while let Some(frame) = s.inbound.message().await.transpose() {
        if let Err(status) = frame {
            ended = Some(status);
            break;
        }
    }
    let ended = ended.expect("the session ended with an error");
    assert_eq!(ended.code(), Code::InvalidArgument);
    assert!(ended.message().contains("outcome"), "{ended:?}");
    assert_eq!(
        state(&h.get(&alice_token, first.id.as_ref().unwrap()).await),
        pb::CommandState::Queued
    );
    let _ = bob;
}
