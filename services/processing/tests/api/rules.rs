//! Rules: firing once per crossing after hold and cooldown, across restarts, within their owner's
//! reach.

use super::*;

sipmba_testkit::on_both_databases!(
    rules_fire_once_per_crossing_after_hold_and_cooldown_also_across_a_restart,
    rules_act_only_as_far_as_their_owner_may,
);

/// A reading of `temperature` = `value` taken at T0 + `at` seconds.
fn temp(seq: u64, at: i64, value: f64) -> pb::Reading {
    pb::Reading {
        seq,
        device_time: Some(prost_types::Timestamp {
            seconds: T0 + at,
            nanos: 0,
        }),
        metrics: vec![pb::Metric {
            name: "temperature".into(),
            value: Some(pb::metric::Value::Number(value)),
            unit: "Cel".into(),
        }],
        payload: vec![],
    }
}

/// A rule on `temperature`, sending `fan.on`.
fn rule(
    name: &str,
    selector: pb::rule::Selector,
    comparison: pb::Comparison,
    threshold: f64,
    hold_s: i64,
    cooldown_s: i64,
) -> pb::Rule {
    let secs = |s: i64| {
        (s > 0).then_some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    pb::Rule {
        name: name.into(),
        selector: Some(selector),
        metric: "temperature".into(),
        comparison: comparison as i32,
        threshold,
        hold: secs(hold_s),
        cooldown: secs(cooldown_s),
        action: Some(pb::CommandTemplate {
            name: "fan.on".into(),
            payload: b"{\"speed\":3}".to_vec(),
            ttl: None,
        }),
        enabled: true,
        ..Default::default()
    }
}

fn on(thing: Uuid) -> pb::rule::Selector {
    pb::rule::Selector::Thing(thing_id(thing))
}

fn seqs(firings: &[pb::RuleFiring]) -> Vec<u64> {
    firings.iter().map(|f| f.seq).collect()
}

async fn rules_fire_once_per_crossing_after_hold_and_cooldown_also_across_a_restart(
    backend: Backend,
) {
    use pb::Comparison::{Ge, Gt};
    let mut h = Harness::start(backend).await;
    let (alice_id, alice) = h.root("alice").await;
    let pump = h.thing(&alice, "pump").await;
    let oven = h.thing(&alice, "oven").await;
    let fridge = h.thing(&alice, "fridge").await;
    let boiler = h.thing(&alice, "boiler").await;
    let crossing = h
        .create_rule(&alice, rule("pump hot", on(pump), Gt, 30.0, 0, 0))
        .await
        .unwrap();
    assert_eq!(crossing.owner.as_ref().unwrap().value, alice_id.to_string());
    let hold = h
        .create_rule(&alice, rule("oven hot", on(oven), Gt, 100.0, 10, 0))
        .await
        .unwrap();
    let cooldown = h
        .create_rule(&alice, rule("fridge warm", on(fridge), Ge, 8.0, 0, 60))
        .await
        .unwrap();
    let restart = h
        .create_rule(&alice, rule("boiler hot", on(boiler), Gt, 90.0, 10, 0))
        .await
        .unwrap();

    // Crossing: fires when the value goes above, not again while it stays above, and again
    // after it went below and above once more.
    h.produce_readings(
        pump,
        [
            temp(1, 0, 20.0),
            temp(2, 1, 31.0),
            temp(3, 2, 35.0),
            temp(4, 3, 25.0),
            temp(5, 4, 32.0),
            temp(6, 5, 33.0),
        ],
    )
    .await;
    // Hold: a run broken after 5 s does not fire; the next fires once it has lasted 10 s.
    h.produce_readings(
        oven,
        [
            temp(1, 0, 101.0),
            temp(2, 5, 102.0),
            temp(3, 8, 99.0),
            temp(4, 9, 105.0),
            temp(5, 15, 106.0),
            temp(6, 19, 107.0),
            temp(7, 25, 108.0),
        ],
    )
    .await;
    // Cooldown: the second crossing (at 20 s) waits until 60 s have passed since the first
    // firing, then fires while the condition still holds.
    h.produce_readings(
        fridge,
        [
            temp(1, 0, 9.0),
            temp(2, 10, 5.0),
            temp(3, 20, 9.0),
            temp(4, 59, 9.0),
            temp(5, 60, 9.5),
            temp(6, 61, 9.5),
        ],
    )
    .await;
    // Restart in the middle of a hold: 5 s held, processing stops; the rest arrives while it is
    // down; after the restart it fires once, at 10 s, with the run starting before the stop.
    h.produce_readings(boiler, [temp(1, 0, 95.0), temp(2, 5, 96.0)])
        .await;
    h.stored_for(boiler, 2).await;
    h.stored_for(fridge, 6).await;
    h.stop_processing().await;
    h.produce_readings(
        boiler,
        [temp(3, 10, 97.0), temp(4, 15, 98.0), temp(2, 5, 96.0)],
    )
    .await;
    h.start_processing().await;
    h.stored_for(boiler, 4).await;
    // A reading sent again (seq 3, after a lost Ack) changes nothing.
    h.produce_readings(boiler, [temp(3, 10, 97.0)]).await;

    let fired = h.settled_firings(&alice, &crossing, 2).await;
    assert_eq!(seqs(&fired), [2, 5]);
    assert_eq!(
        fired.iter().map(|f| f.value).collect::<Vec<_>>(),
        [31.0, 32.0]
    );
    let fired = h.settled_firings(&alice, &hold, 1).await;
    assert_eq!(seqs(&fired), [6]);
    assert_eq!(fired[0].crossed_at, at(T0 + 9));
    let fired = h.settled_firings(&alice, &cooldown, 2).await;
    assert_eq!(seqs(&fired), [1, 5]);
    assert_eq!(fired[1].crossed_at, at(T0 + 20));
    h.stored_for(pump, 6).await;
    h.stored_for(oven, 7).await;
    let fired = h.settled_firings(&alice, &restart, 1).await;
    assert_eq!(seqs(&fired), [3]);
    assert_eq!(fired[0].crossed_at, at(T0));
    // Nothing more arrives late.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.firings(&alice, &restart).await.len(), 1);
    assert_eq!(h.firings(&alice, &crossing).await.len(), 2);

    // Each firing queued one command through Control, issued by the rule.
    let commands = h.commands(&alice, pump).await;
    assert_eq!(commands.len(), 2);
    for c in &commands {
        assert_eq!(c.name, "fan.on");
        assert_eq!(c.payload, b"{\"speed\":3}");
        assert_eq!(c.state, pb::CommandState::Queued as i32);
        assert_eq!(
            c.issuer.as_ref().unwrap().issuer,
            Some(pb::command_issuer::Issuer::Rule(
                crossing.id.clone().unwrap()
            ))
        );
    }
    let fired = h.firings(&alice, &crossing).await;
    let mut sent: Vec<_> = fired.iter().map(|f| f.command.clone().unwrap()).collect();
    let mut listed: Vec<_> = commands.iter().map(|c| c.id.clone().unwrap()).collect();
    sent.sort_by(|a, b| a.value.cmp(&b.value));
    listed.sort_by(|a, b| a.value.cmp(&b.value));
    assert_eq!(sent, listed);
    assert_eq!(h.commands(&alice, boiler).await.len(), 1);

    // A changed threshold starts the runs afresh: 33 was above 30 but the run is new, and it is
    // not above 40.
    let mut changed = crossing.clone();
    changed.threshold = 40.0;
    let updated = h
        .rules()
        .update_rule(req(
            &alice,
            pb::UpdateRuleRequest {
                rule: Some(changed),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["threshold".into()],
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.threshold, 40.0);
    h.produce_readings(pump, [temp(7, 6, 35.0), temp(8, 7, 41.0)])
        .await;
    let fired = h.settled_firings(&alice, &crossing, 3).await;
    assert_eq!(seqs(&fired), [2, 5, 8]);

    // A disabled rule never fires.
    let mut off = hold.clone();
    off.enabled = false;
    h.rules()
        .update_rule(req(
            &alice,
            pb::UpdateRuleRequest {
                rule: Some(off),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["enabled".into()],
                }),
            },
        ))
        .await
        .unwrap();
    h.produce_readings(
        oven,
        [temp(8, 30, 50.0), temp(9, 31, 150.0), temp(10, 45, 150.0)],
    )
    .await;
    h.stored_for(oven, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.firings(&alice, &hold).await.len(), 1);

    // Listing, by name; deleting takes the firings with it.
    let listed = h
        .rules()
        .list_rules(req(&alice, pb::ListRulesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .rules;
    let names: Vec<_> = listed.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["boiler hot", "fridge warm", "oven hot", "pump hot"]);
    h.rules()
        .delete_rule(req(
            &alice,
            pb::DeleteRuleRequest {
                id: restart.id.clone(),
            },
        ))
        .await
        .unwrap();
    assert_status(
        h.rules()
            .get_rule(req(
                &alice,
                pb::GetRuleRequest {
                    id: restart.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        h.rules()
            .list_firings(req(
                &alice,
                pb::ListFiringsRequest {
                    rule: restart.id.clone(),
                    page: None,
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
}

async fn rules_act_only_as_far_as_their_owner_may(backend: Backend) {
    use pb::Comparison::Gt;
    let h = Harness::start(backend).await;
    let (_alice_id, alice) = h.root("alice").await;
    let (bob_id, bob) = h.root("bob").await;
    let valve = h.thing(&alice, "valve").await;
    let other = h.thing(&alice, "other").await;

    // Bob reaches nothing of Alice's.
    assert_status(
        h.create_rule(&bob, rule("steal", on(valve), Gt, 1.0, 0, 0))
            .await,
        Code::NotFound,
        "not found",
    );
    // A grant to read is not a grant to command.
    let channels = || pb::channel_service_client::ChannelServiceClient::new(h.objects.clone());
    let plant = channels()
        .create_channel(req(
            &alice,
            pb::CreateChannelRequest {
                name: "plant".into(),
                owner: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .id
        .unwrap();
    channels()
        .connect_thing(req(
            &alice,
            pb::ConnectThingRequest {
                channel: Some(plant.clone()),
                thing: Some(thing_id(valve)),
            },
        ))
        .await
        .unwrap();
    let grant = |permissions: Vec<pb::ChannelPermission>| pb::GrantAccessRequest {
        channel: Some(plant.clone()),
        grantee: Some(pb::UserId {
            value: bob_id.to_string(),
        }),
        permissions: permissions.into_iter().map(|p| p as i32).collect(),
        expires: None,
    };
    channels()
        .grant_access(req(
            &alice,
            grant(vec![pb::ChannelPermission::ReadTelemetry]),
        ))
        .await
        .unwrap();
    assert_status(
        h.create_rule(&bob, rule("read only", on(valve), Gt, 1.0, 0, 0))
            .await,
        Code::PermissionDenied,
        "CHANNEL_PERMISSION_SEND_COMMANDS",
    );
    channels()
        .grant_access(req(
            &alice,
            grant(vec![
                pb::ChannelPermission::ReadTelemetry,
                pb::ChannelPermission::SendCommands,
            ]),
        ))
        .await
        .unwrap();
    // Bob's rules: one on the valve, one on the channel; the channel's things only.
    let by_thing = h
        .create_rule(&bob, rule("valve", on(valve), Gt, 50.0, 0, 0))
        .await
        .unwrap();
    let by_channel = h
        .create_rule(
            &bob,
            rule(
                "plant",
                pb::rule::Selector::Channel(plant.clone()),
                Gt,
                50.0,
                0,
                0,
            ),
        )
        .await
        .unwrap();
    // Bob may also follow the channel live.
    let mut live = h
        .telemetry()
        .subscribe(req(
            &bob,
            pb::SubscribeRequest {
                things: vec![],
                channel: Some(plant.clone()),
                metrics: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    h.produce_readings(valve, [temp(1, 0, 60.0)]).await;
    h.produce_readings(other, [temp(1, 0, 60.0)]).await;
    let fired = h.settled_firings(&bob, &by_thing, 1).await;
    assert!(fired[0].command.is_some(), "{fired:?}");
    let fired = h.settled_firings(&bob, &by_channel, 1).await;
    assert_eq!(fired[0].thing, Some(thing_id(valve)));
    let event = tokio::time::timeout(Duration::from_secs(10), live.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.thing, Some(thing_id(valve)));
    h.stored_for(other, 1).await;
    assert_eq!(h.commands(&alice, valve).await.len(), 2);
    assert!(h.commands(&alice, other).await.is_empty());

    // Alice withdraws the grant: the channel rule stops watching the valve (at its next
    // refresh), and Control refuses the thing rule's command, recorded with the reason.
    channels()
        .revoke_grant(req(
            &alice,
            pb::RevokeGrantRequest {
                channel: Some(plant.clone()),
                grantee: Some(pb::UserId {
                    value: bob_id.to_string(),
                }),
            },
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    h.produce_readings(valve, [temp(2, 1, 10.0), temp(3, 2, 70.0)])
        .await;
    let fired = h.settled_firings(&bob, &by_thing, 2).await;
    assert_eq!(fired[1].command, None);
    assert!(
        fired[1].detail.contains("not found"),
        "{:?}",
        fired[1].detail
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.firings(&bob, &by_channel).await.len(), 1);
    assert_eq!(h.commands(&alice, valve).await.len(), 2);
    // The live subscription ends: Bob may no longer read the channel... at its next check; the
    // rule of another user is not Alice's to see.
    assert_status(
        h.rules()
            .get_rule(req(
                &alice,
                pb::GetRuleRequest {
                    id: by_thing.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );

    // Bad rules get a message naming the field.
    let bad = |f: fn(&mut pb::Rule)| {
        let mut r = rule("bad", on(valve), Gt, 1.0, 0, 0);
        f(&mut r);
        r
    };
    for (r, needle) in [
        (bad(|r| r.metric = "temp erature".into()), "`metric`"),
        (bad(|r| r.comparison = 0), "`comparison`"),
        (bad(|r| r.threshold = f64::NAN), "`threshold`"),
        (
            bad(|r| {
                r.hold = Some(prost_types::Duration {
                    seconds: 90_000,
                    nanos: 0,
                })
            }),
            "`hold`",
        ),
        (bad(|r| r.action = None), "`action`"),
        (bad(|r| r.selector = None), "selector"),
        (bad(|r| r.name = String::new()), "`name`"),
        (
            bad(|r| {
                r.id = Some(pb::RuleId {
                    value: Uuid::new_v4().to_string(),
                })
            }),
            "output only",
        ),
    ] {
        assert_status(
            h.create_rule(&alice, r).await,
            Code::InvalidArgument,
            needle,
        );
    }
    assert_status(
        h.create_rule(
            &alice,
            bad(|r| {
                r.owner = Some(pb::UserId {
                    value: Uuid::new_v4().to_string(),
                })
            }),
        )
        .await,
        Code::PermissionDenied,
        "owner",
    );
    // Names are unique per owner; an owner has at most 5 rules here.
    h.create_rule(&alice, rule("one", on(valve), Gt, 1.0, 0, 0))
        .await
        .unwrap();
    assert_status(
        h.create_rule(&alice, rule("one", on(valve), Gt, 1.0, 0, 0))
            .await,
        Code::AlreadyExists,
        "\"one\"",
    );
    for name in ["two", "three", "four", "five"] {
        h.create_rule(&alice, rule(name, on(valve), Gt, 1.0, 0, 0))
            .await
            .unwrap();
    }
    assert_status(
        h.create_rule(&alice, rule("six", on(valve), Gt, 1.0, 0, 0))
            .await,
        Code::ResourceExhausted,
        "delete some",
    );
    assert_status(
        h.rules()
            .update_rule(req(
                &alice,
                pb::UpdateRuleRequest {
                    rule: Some(by_thing.clone()),
                    update_mask: None,
                },
            ))
            .await,
        Code::InvalidArgument,
        "`update_mask`",
    );
}
