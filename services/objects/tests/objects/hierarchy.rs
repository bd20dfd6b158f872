//! The user tree: disabling cascades, effective states follow ancestors, moves never make cycles,
//! the change feed.

use super::*;

sipmba_testkit::on_both_databases!(
    disabling_cascades_through_four_levels_and_effective_state_follows_ancestors,
    moves_stay_inside_the_subtree_and_never_make_cycles,
    events_report_disabled_subtrees_with_their_things,
    the_change_feed_is_pruned_oldest_first_and_a_follower_behind_it_is_told,
);

async fn disabling_cascades_through_four_levels_and_effective_state_follows_ancestors(
    backend: Backend,
) {
    let h = Harness::start(backend).await;
    let (root, root_token) = h.root("acme").await;
    let (a, a_token) = h.child(&root_token, root, "acme.a").await;
    let (b, b_token) = h.child(&a_token, a, "acme.b").await;
    let (c, c_token) = h.child(&b_token, b, "acme.c").await;
    let (d, d_token) = h.child(&c_token, c, "acme.d").await;
    let (sibling, _) = h.child(&root_token, root, "acme.sibling").await;
    assert_eq!(h.user(d).await.depth, 4);

    let thing = h.thing(&d_token, "d-sensor", &[]).await;

    // A parent disables its child's subtree: b, c, d, in one go.
    let resp = h
        .users()
        .disable_user(req(
            &a_token,
            pb::DisableUserRequest {
                id: Some(user_id(b)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.users_disabled, 3);
    for id in [b, c, d] {
        let u = h.user(id).await;
        assert_eq!(state(u.state), pb::ObjectState::Disabled, "{}", u.username);
        assert_eq!(state(u.effective_state), pb::ObjectState::Disabled);
    }
    for id in [root, a, sibling] {
        assert_eq!(
            state(h.user(id).await.effective_state),
            pb::ObjectState::Active
        );
    }
    // The disabled users' tokens stop working here at once.
    assert_status(
        h.users()
            .get_user(req(
                &d_token,
                pb::GetUserRequest {
                    id: Some(user_id(d)),
                },
            ))
            .await,
        Code::Unauthenticated,
        "disabled",
    );
    // The thing of a disabled owner is effectively disabled.
    let t = h
        .things()
        .get_thing(req(
            &a_token,
            pb::GetThingRequest {
                id: Some(thing_id(thing)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(t.state), pb::ObjectState::Active);
    assert_eq!(state(t.effective_state), pb::ObjectState::Disabled);

    // Enabling c alone: its own state is ACTIVE, but b above it is still disabled.
    h.users()
        .enable_user(req(
            &a_token,
            pb::EnableUserRequest {
                id: Some(user_id(c)),
                recursive: false,
            },
        ))
        .await
        .unwrap();
    let cu = h.user(c).await;
    assert_eq!(state(cu.state), pb::ObjectState::Active);
    assert_eq!(state(cu.effective_state), pb::ObjectState::Disabled);
    assert_status(
        h.users()
            .get_user(req(
                &c_token,
                pb::GetUserRequest {
                    id: Some(user_id(c)),
                },
            ))
            .await,
        Code::Unauthenticated,
        "above it",
    );

    // Enabling b recursively brings back the whole subtree.
    let enabled = h
        .users()
        .enable_user(req(
            &a_token,
            pb::EnableUserRequest {
                id: Some(user_id(b)),
                recursive: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enabled.users_enabled, 2, "b and d (c was already enabled)");
    assert_eq!(
        state(h.user(d).await.effective_state),
        pb::ObjectState::Active
    );

    // Nobody disables themselves.
    assert_status(
        h.users()
            .disable_user(req(
                &a_token,
                pb::DisableUserRequest {
                    id: Some(user_id(a)),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "yourself",
    );
    // The store agrees with what the API says.
    let caller = sipmba_objects::Caller::Admin {
        actor: "service:test".into(),
    };
    assert!(h.store.get_user(&caller, d).await.is_ok());
}

async fn moves_stay_inside_the_subtree_and_never_make_cycles(backend: Backend) {
    let h = Harness::start(backend).await;
    let (root, root_token) = h.root("tree").await;
    let (a, a_token) = h.child(&root_token, root, "tree.a").await;
    let (b, b_token) = h.child(&a_token, a, "tree.b").await;
    let (c, _) = h.child(&b_token, b, "tree.c").await;
    let (x, _) = h.child(&root_token, root, "tree.x").await;

    // a under its own grandchild: a cycle.
    assert_status(
        h.users()
            .move_user(req(
                &root_token,
                pb::MoveUserRequest {
                    id: Some(user_id(a)),
                    new_parent: Some(user_id(c)),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "cycle",
    );
    // Under itself: a cycle too.
    assert_status(
        h.users()
            .move_user(req(
                &root_token,
                pb::MoveUserRequest {
                    id: Some(user_id(a)),
                    new_parent: Some(user_id(a)),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "cycle",
    );
    // a cannot move b out of its subtree (x is not a's).
    assert_status(
        h.users()
            .move_user(req(
                &a_token,
                pb::MoveUserRequest {
                    id: Some(user_id(b)),
                    new_parent: Some(user_id(x)),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    // The root moves b (with c) under x; depths and subtree follow.
    let moved = h
        .users()
        .move_user(req(
            &root_token,
            pb::MoveUserRequest {
                id: Some(user_id(b)),
                new_parent: Some(user_id(x)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(uuid(&moved.parent), x);
    assert_eq!(h.user(c).await.depth, 3);
    // a lost b and c; x gained them.
    assert_status(
        h.users()
            .get_user(req(
                &a_token,
                pb::GetUserRequest {
                    id: Some(user_id(c)),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    let x_token = h.issuer.user_token(x);
    let listed = h
        .users()
        .list_users(req(
            &x_token,
            pb::ListUsersRequest {
                root: None,
                children_only: false,
                page: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<Uuid> = listed.users.iter().map(|u| uuid(&u.id)).collect();
    ids.sort();
    let mut want = vec![x, b, c];
    want.sort();
    assert_eq!(ids, want);
    // Disabling x now reaches c through the new path.
    h.users()
        .disable_user(req(
            &root_token,
            pb::DisableUserRequest {
                id: Some(user_id(x)),
            },
        ))
        .await
        .unwrap();
    assert_eq!(state(h.user(c).await.state), pb::ObjectState::Disabled);
    assert_eq!(state(h.user(a).await.state), pb::ObjectState::Active);
}

async fn events_report_disabled_subtrees_with_their_things(backend: Backend) {
    let h = Harness::start(backend).await;
    let (root, root_token) = h.root("events").await;
    let (a, a_token) = h.child(&root_token, root, "events.a").await;
    let (b, b_token) = h.child(&a_token, a, "events.b").await;
    let thing = h.thing(&b_token, "b-thing", &[]).await;

    let mut stream = h
        .events()
        .watch_events(req(&h.admin, pb::WatchEventsRequest { after_sequence: 0 }))
        .await
        .unwrap()
        .into_inner();
    let disabled = h
        .users()
        .disable_user(req(
            &root_token,
            pb::DisableUserRequest {
                id: Some(user_id(a)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let event = next_event(&mut stream).await;
    assert_eq!(event.sequence, disabled.event_sequence);
    assert_eq!(event.kind, pb::ObjectEventKind::UserDisabled as i32);
    assert_eq!(event.subject, a.to_string());
    let mut users: Vec<Uuid> = event
        .users
        .iter()
        .map(|u| Uuid::parse_str(&u.value).unwrap())
        .collect();
    users.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(users, want);
    assert_eq!(event.things, vec![thing_id(thing)]);
    assert_eq!(event.actor, format!("user:{root}"));

    // A reader resuming after that event sees only newer ones.
    let mut resumed = h
        .events()
        .watch_events(req(
            &h.admin,
            pb::WatchEventsRequest {
                after_sequence: event.sequence,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    h.things()
        .delete_thing(req(
            &root_token,
            pb::DeleteThingRequest {
                id: Some(thing_id(thing)),
            },
        ))
        .await
        .unwrap();
    let next = next_event(&mut resumed).await;
    assert_eq!(next.kind, pb::ObjectEventKind::ThingDeleted as i32);
    assert!(next.sequence > event.sequence);
    // User tokens cannot read the feed.
    assert_status(
        h.events()
            .watch_events(req(
                &root_token,
                pb::WatchEventsRequest { after_sequence: 0 },
            ))
            .await,
        Code::PermissionDenied,
        "objects:events",
    );
}

/// Events past the retention go, oldest first, the newest always kept; a follower whose position
/// was pruned is refused with FAILED_PRECONDITION naming the setting, one from 0 gets the oldest
/// kept, one at the newest gets what comes next, and numbers are never handed out again.
async fn the_change_feed_is_pruned_oldest_first_and_a_follower_behind_it_is_told(backend: Backend) {
    use sipmba_runtime::{clock::Clock, prune::Pruner};

    let h = Harness::start(backend).await;
    let (root, root_token) = h.root("feed").await;
    let (a, _) = h.child(&root_token, root, "feed.a").await;
    let toggle = |enable: bool| {
        let mut users = h.users();
        let token = root_token.clone();
        async move {
            let id = Some(user_id(a));
            if enable {
                users
                    .enable_user(req(
                        &token,
                        pb::EnableUserRequest {
                            id,
                            recursive: false,
                        },
                    ))
                    .await
                    .unwrap();
            } else {
                users
                    .disable_user(req(&token, pb::DisableUserRequest { id }))
                    .await
                    .unwrap();
            }
        }
    };
    for enable in [false, true, false, true] {
        toggle(enable).await;
    }
    let all = h.store.events_after(0, 100).await.unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
    let now = sipmba_runtime::ids::now_ms();
    let hour = 3_600_000;
    let clock = Clock::manual(now + hour / 2);
    let pruner = Pruner::new(
        h.store.db().clone(),
        sipmba_objects::prune_rules(Duration::from_secs(3600)),
    )
    .with_clock(clock.clone())
    .with_batch(2);
    // Within the retention nothing goes.
    assert_eq!(pruner.run_once().await.unwrap(), vec![("object_events", 0)]);
    // Past it, all but the newest, in batches of two.
    clock.set(now + 2 * hour);
    assert_eq!(pruner.run_once().await.unwrap(), vec![("object_events", 3)]);
    let newest = all[3].sequence;
    let kept: Vec<u64> = h
        .store
        .events_after(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(kept, vec![newest]);
    // Nothing more to prune: the newest stays however old.
    clock.set(now + 100 * hour);
    assert_eq!(pruner.run_once().await.unwrap(), vec![("object_events", 0)]);

    // A follower at a pruned position is told, over the wire.
    let mut behind = h
        .events()
        .watch_events(req(
            &h.admin,
            pb::WatchEventsRequest {
                after_sequence: all[1].sequence,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let refused = tokio::time::timeout(Duration::from_secs(10), behind.next())
        .await
        .expect("an answer within 10 s")
        .expect("stream open")
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("objects.event_retention_secs")
            && refused
                .message()
                .contains(&format!("position {}", all[1].sequence)),
        "{}",
        refused.message()
    );
    // From 0: the oldest kept.
    let mut fresh = h
        .events()
        .watch_events(req(&h.admin, pb::WatchEventsRequest { after_sequence: 0 }))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut fresh).await;
    assert_eq!(first.sequence, newest);
    // At the newest: the next event, numbered after it (SQLite does not reuse a pruned number).
    let mut current = h
        .events()
        .watch_events(req(
            &h.admin,
            pb::WatchEventsRequest {
                after_sequence: newest,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    toggle(false).await;
    let next = next_event(&mut current).await;
    assert!(next.sequence > newest);
    assert_eq!(next.kind, pb::ObjectEventKind::UserDisabled as i32);
}

/// The next event of a `WatchEvents` stream, within 10 s.
async fn next_event(stream: &mut tonic::Streaming<pb::ObjectEvent>) -> pb::ObjectEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("event within 10 s")
        .expect("stream open")
        .expect("event")
}
