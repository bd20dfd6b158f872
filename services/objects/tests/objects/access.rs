//! Who sees what: subtrees hide what is not yours; pages and label filters over things.

use super::*;

sipmba_testkit::on_both_databases!(
    authorization_hides_what_is_not_yours,
    things_page_through_subtrees_and_filter_by_labels,
);

async fn authorization_hides_what_is_not_yours(backend: Backend) {
    let h = Harness::start(backend).await;
    let (alice, alice_token) = h.root("alice").await;
    let (bob, bob_token) = h.root("bob").await;
    let (kid, kid_token) = h.child(&alice_token, alice, "alice.kid").await;
    let alice_thing = h.thing(&alice_token, "alice-thing", &[]).await;

    // Another tree: NOT_FOUND, never "denied".
    assert_status(
        h.users()
            .get_user(req(
                &bob_token,
                pb::GetUserRequest {
                    id: Some(user_id(alice)),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        h.things()
            .get_thing(req(
                &bob_token,
                pb::GetThingRequest {
                    id: Some(thing_id(alice_thing)),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    // A child cannot see its parent or the parent's things.
    assert_status(
        h.users()
            .get_user(req(
                &kid_token,
                pb::GetUserRequest {
                    id: Some(user_id(alice)),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        h.things()
            .get_thing(req(
                &kid_token,
                pb::GetThingRequest {
                    id: Some(thing_id(alice_thing)),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    // Nor create users under it.
    assert_status(
        h.users()
            .create_user(req(
                &kid_token,
                pb::CreateUserRequest {
                    username: "sneaky".into(),
                    parent: Some(user_id(alice)),
                },
            ))
            .await,
        Code::NotFound,
        "parent user",
    );
    // A parent sees its child's things.
    let kid_thing = h.thing(&kid_token, "kid-thing", &[]).await;
    assert!(
        h.things()
            .get_thing(req(
                &alice_token,
                pb::GetThingRequest {
                    id: Some(thing_id(kid_thing))
                }
            ))
            .await
            .is_ok()
    );
    // Users cannot make root users.
    assert_status(
        h.users()
            .create_user(req(
                &bob_token,
                pb::CreateUserRequest {
                    username: "root2".into(),
                    parent: None,
                },
            ))
            .await,
        Code::PermissionDenied,
        "registration",
    );
    // No token, a garbage token, a token of another issuer's key.
    assert_status(
        h.users()
            .get_user(tonic::Request::new(pb::GetUserRequest {
                id: Some(user_id(bob)),
            }))
            .await,
        Code::Unauthenticated,
        "missing bearer token",
    );
    assert_status(
        h.users()
            .get_user(req(
                "not-a-jwt",
                pb::GetUserRequest {
                    id: Some(user_id(bob)),
                },
            ))
            .await,
        Code::Unauthenticated,
        "malformed",
    );
    let forger = sipmba_testkit::TestIssuer::with_kid(h.issuer.key.kid());
    assert_status(
        h.users()
            .get_user(req(
                &forger.user_token(bob),
                pb::GetUserRequest {
                    id: Some(user_id(bob)),
                },
            ))
            .await,
        Code::Unauthenticated,
        "signature",
    );
    // A thing token, and a user token without the scope: PERMISSION_DENIED.
    let thing_token = h.issuer.sign(
        &h.issuer
            .claims(Kind::Thing, alice_thing, &["telemetry:write"])
            .with_owner(alice),
    );
    assert_status(
        h.users()
            .get_user(req(
                &thing_token,
                pb::GetUserRequest {
                    id: Some(user_id(alice)),
                },
            ))
            .await,
        Code::PermissionDenied,
        "users:read",
    );
    let read_only = h.issuer.sign(&h.issuer.claims(
        Kind::User,
        alice,
        &["users:read", "things:read"],
    ));
    assert!(
        h.users()
            .get_user(req(
                &read_only,
                pb::GetUserRequest {
                    id: Some(user_id(kid))
                }
            ))
            .await
            .is_ok()
    );
    assert_status(
        h.users()
            .disable_user(req(
                &read_only,
                pb::DisableUserRequest {
                    id: Some(user_id(kid)),
                },
            ))
            .await,
        Code::PermissionDenied,
        "users:write",
    );
    // A service without objects:admin manages nothing.
    let service = h.issuer.sign(
        &h.issuer
            .claims(Kind::Service, Uuid::new_v4(), &["users:read"]),
    );
    assert_status(
        h.users()
            .get_user(req(
                &service,
                pb::GetUserRequest {
                    id: Some(user_id(alice)),
                },
            ))
            .await,
        Code::PermissionDenied,
        "objects:admin",
    );
    // A token for a user that does not exist.
    assert_status(
        h.users()
            .get_user(req(
                &h.issuer.user_token(Uuid::new_v4()),
                pb::GetUserRequest {
                    id: Some(user_id(bob)),
                },
            ))
            .await,
        Code::Unauthenticated,
        "no longer exists",
    );
    // CheckAccess agrees: subtree yes, other tree no.
    let check = |user: Uuid, thing: Uuid| {
        let mut client = h.access();
        let token = h.admin.clone();
        async move {
            client
                .check_access(req(
                    &token,
                    pb::CheckAccessRequest {
                        user: Some(user_id(user)),
                        thing: Some(thing_id(thing)),
                        permission: pb::ChannelPermission::SendCommands as i32,
                    },
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let allowed = check(alice, kid_thing).await;
    assert!(allowed.allowed);
    assert_eq!(allowed.via, "subtree");
    assert!(!check(kid, alice_thing).await.allowed);
    let refused = check(bob, alice_thing).await;
    assert!(!refused.allowed);
    assert_eq!(refused.denial, pb::AccessDenial::NotReachable as i32);
    // CheckAccess itself needs objects:authorize.
    assert_status(
        h.access()
            .check_access(req(
                &alice_token,
                pb::CheckAccessRequest {
                    user: Some(user_id(alice)),
                    thing: Some(thing_id(alice_thing)),
                    permission: 1,
                },
            ))
            .await,
        Code::PermissionDenied,
        "objects:authorize",
    );
}

async fn things_page_through_subtrees_and_filter_by_labels(backend: Backend) {
    let h = Harness::start(backend).await;
    let (root, root_token) = h.root("fleet").await;
    let (site, site_token) = h.child(&root_token, root, "fleet.site").await;
    for i in 0..15 {
        let zone = if i % 3 == 0 { "north" } else { "south" };
        h.thing(
            &root_token,
            &format!("root-{i}"),
            &[("zone", zone), ("kind", "pi")],
        )
        .await;
    }
    for i in 0..10 {
        h.thing(&site_token, &format!("site-{i}"), &[("zone", "north")])
            .await;
    }

    // The whole subtree in pages of 10: 25 distinct things, in id order.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = h
            .things()
            .list_things(req(
                &root_token,
                pb::ListThingsRequest {
                    scope: None,
                    labels: vec![],
                    page: Some(pb::PageRequest {
                        page_size: 10,
                        page_token: token.clone(),
                    }),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.things.iter().map(|t| uuid(&t.id)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "ordered by id, no repeats");

    // By owner only.
    let list = |token: String, scope, labels: Vec<pb::LabelSelector>| {
        let mut client = h.things();
        async move {
            client
                .list_things(req(
                    &token,
                    pb::ListThingsRequest {
                        scope,
                        labels,
                        page: None,
                    },
                ))
                .await
        }
    };
    let site_only = list(
        root_token.clone(),
        Some(pb::list_things_request::Scope::Owner(user_id(site))),
        vec![],
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(site_only.things.len(), 10);
    // Labels: zone=north in the subtree = 5 of root's + 10 of the site's.
    let north = list(
        root_token.clone(),
        None,
        vec![pb::LabelSelector {
            key: "zone".into(),
            value: Some("north".into()),
        }],
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(north.things.len(), 15);
    assert!(
        north
            .things
            .iter()
            .all(|t| t.labels.get("zone").map(String::as_str) == Some("north"))
    );
    // Two selectors, one without value: kind exists AND zone=north.
    let both = list(
        root_token.clone(),
        None,
        vec![
            pb::LabelSelector {
                key: "zone".into(),
                value: Some("north".into()),
            },
            pb::LabelSelector {
                key: "kind".into(),
                value: None,
            },
        ],
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(both.things.len(), 5);
    // The site sees only its own part of the tree.
    let from_site = list(site_token.clone(), None, vec![])
        .await
        .unwrap()
        .into_inner();
    assert_eq!(from_site.things.len(), 10);
    // A page token does not carry over to other filters.
    let first = h
        .things()
        .list_things(req(
            &root_token,
            pb::ListThingsRequest {
                scope: None,
                labels: vec![],
                page: Some(pb::PageRequest {
                    page_size: 5,
                    page_token: String::new(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_status(
        h.things()
            .list_things(req(
                &root_token,
                pb::ListThingsRequest {
                    scope: None,
                    labels: vec![pb::LabelSelector {
                        key: "zone".into(),
                        value: None,
                    }],
                    page: Some(pb::PageRequest {
                        page_size: 5,
                        page_token: first.next_page_token,
                    }),
                },
            ))
            .await,
        Code::InvalidArgument,
        "different filters",
    );
    // Labels can be replaced.
    let some = seen[0];
    let updated = h
        .things()
        .update_thing(req(
            &root_token,
            pb::UpdateThingRequest {
                id: Some(thing_id(some)),
                name: Some("renamed".into()),
                labels: [("zone".to_string(), "east".to_string())].into(),
                replace_labels: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.labels.len(), 1);
}
