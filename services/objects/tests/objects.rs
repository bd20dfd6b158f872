//! The Objects service over gRPC on loopback, on PostgreSQL and on SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use std::time::{Duration, Instant};

use common::*;
use sipmba_auth::Kind;
use sipmba_proto::v1 as pb;
use sipmba_testkit::Backend;
use tokio_stream::StreamExt;
use tonic::Code;
use uuid::Uuid;

sipmba_testkit::on_both_databases!(
    disabling_cascades_through_four_levels_and_effective_state_follows_ancestors,
    moves_stay_inside_the_subtree_and_never_make_cycles,
    authorization_hides_what_is_not_yours,
    things_page_through_subtrees_and_filter_by_labels,
    channel_grants_share_things_until_they_expire,
    bad_input_gets_an_actionable_status,
    events_report_disabled_subtrees_with_their_things,
);

fn state(v: i32) -> pb::ObjectState {
    pb::ObjectState::try_from(v).unwrap()
}

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

async fn channel_grants_share_things_until_they_expire(backend: Backend) {
    let h = Harness::start(backend).await;
    let (owner, owner_token) = h.root("owner").await;
    let (friend, friend_token) = h.root("friend").await;
    let (other, other_token) = h.root("other").await;
    let thing = h.thing(&owner_token, "shared-sensor", &[]).await;
    let channel = h
        .channels()
        .create_channel(req(
            &owner_token,
            pb::CreateChannelRequest {
                name: "share".into(),
                owner: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let channel_id = channel.id.clone();
    h.channels()
        .connect_thing(req(
            &owner_token,
            pb::ConnectThingRequest {
                channel: channel_id.clone(),
                thing: Some(thing_id(thing)),
            },
        ))
        .await
        .unwrap();

    let check = |user: Uuid, permission: pb::ChannelPermission| {
        let mut client = h.access();
        let token = h.admin.clone();
        async move {
            client
                .check_access(req(
                    &token,
                    pb::CheckAccessRequest {
                        user: Some(user_id(user)),
                        thing: Some(thing_id(thing)),
                        permission: permission as i32,
                    },
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(
        !check(friend, pb::ChannelPermission::ReadTelemetry)
            .await
            .allowed
    );

    // A permanent read grant to friend; a short grant to other.
    h.channels()
        .grant_access(req(
            &owner_token,
            pb::GrantAccessRequest {
                channel: channel_id.clone(),
                grantee: Some(user_id(friend)),
                permissions: vec![pb::ChannelPermission::ReadTelemetry as i32],
                expires: None,
            },
        ))
        .await
        .unwrap();
    let expires_at = std::time::SystemTime::now() + Duration::from_millis(1500);
    let expires = prost_types::Timestamp::from(expires_at);
    let shared = h
        .channels()
        .grant_access(req(
            &owner_token,
            pb::GrantAccessRequest {
                channel: channel_id.clone(),
                grantee: Some(user_id(other)),
                permissions: vec![
                    pb::ChannelPermission::ReadTelemetry as i32,
                    pb::ChannelPermission::SendCommands as i32,
                ],
                expires: Some(expires),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shared.grants.len(), 2);

    // Selections for Processing (rules and channel subscriptions): the things of a channel, or
    // matching labels, on which a user may do what is asked.
    let north_a = h.thing(&owner_token, "north-a", &[("zone", "north")]).await;
    let north_b = h.thing(&owner_token, "north-b", &[("zone", "north")]).await;
    h.channels()
        .connect_thing(req(
            &owner_token,
            pb::ConnectThingRequest {
                channel: channel_id.clone(),
                thing: Some(thing_id(north_a)),
            },
        ))
        .await
        .unwrap();
    let select = |user: Uuid,
                  selection: pb::list_accessible_things_request::Selection,
                  permissions: &[pb::ChannelPermission]| {
        let mut client = h.access();
        let request = req(
            &h.admin,
            pb::ListAccessibleThingsRequest {
                user: Some(user_id(user)),
                selection: Some(selection),
                permissions: permissions.iter().map(|p| *p as i32).collect(),
            },
        );
        async move {
            client.list_accessible_things(request).await.map(|r| {
                let mut things: Vec<Uuid> = r
                    .into_inner()
                    .things
                    .iter()
                    .map(|t| Uuid::parse_str(&t.value).unwrap())
                    .collect();
                things.sort();
                things
            })
        }
    };
    let sorted = |mut v: Vec<Uuid>| {
        v.sort();
        v
    };
    let of_channel =
        || pb::list_accessible_things_request::Selection::Channel(channel_id.clone().unwrap());
    let north = || {
        pb::list_accessible_things_request::Selection::Labels(pb::LabelSelectorSet {
            selectors: vec![pb::LabelSelector {
                key: "zone".into(),
                value: Some("north".into()),
            }],
        })
    };
    use pb::ChannelPermission::{ReadTelemetry, SendCommands};
    assert_eq!(
        select(friend, of_channel(), &[ReadTelemetry])
            .await
            .unwrap(),
        sorted(vec![thing, north_a])
    );
    assert_eq!(
        select(friend, of_channel(), &[ReadTelemetry, SendCommands])
            .await
            .unwrap(),
        Vec::<Uuid>::new(),
        "a read grant does not select for commands"
    );
    assert_eq!(
        select(friend, north(), &[ReadTelemetry]).await.unwrap(),
        vec![north_a],
        "labels select among the things granted to the user"
    );
    assert_eq!(
        select(owner, north(), &[ReadTelemetry, SendCommands])
            .await
            .unwrap(),
        sorted(vec![north_a, north_b]),
        "and among those of its subtree"
    );
    let (stranger, _) = h.root("stranger").await;
    assert_eq!(
        select(stranger, of_channel(), &[ReadTelemetry])
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        select(owner, north(), &[]).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let read = check(friend, pb::ChannelPermission::ReadTelemetry).await;
    assert!(read.allowed);
    assert_eq!(read.via, "grant");
    let read_only = check(friend, pb::ChannelPermission::SendCommands).await;
    assert!(!read_only.allowed, "read grant only");
    assert_eq!(
        read_only.denial,
        pb::AccessDenial::PermissionMissing as i32,
        "the friend sees the thing, without the permission"
    );
    assert!(
        check(other, pb::ChannelPermission::SendCommands)
            .await
            .allowed
    );

    // Listed by reach, in one query: the grantee's own things and those shared with it, the
    // shared ones named; the owner's are its own.
    let reachable = |token: String, user: Uuid| {
        let mut client = h.things();
        async move {
            let answer = client
                .list_things(req(
                    &token,
                    pb::ListThingsRequest {
                        scope: Some(pb::list_things_request::Scope::Reachable(user_id(user))),
                        labels: vec![],
                        page: None,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            let ids = |list: &[pb::ThingId]| {
                let mut ids: Vec<Uuid> = list
                    .iter()
                    .map(|t| Uuid::parse_str(&t.value).unwrap())
                    .collect();
                ids.sort();
                ids
            };
            let things: Vec<pb::ThingId> =
                answer.things.iter().filter_map(|t| t.id.clone()).collect();
            (ids(&things), ids(&answer.shared))
        }
    };
    let own = h.thing(&friend_token, "friends-own", &[]).await;
    assert_eq!(
        reachable(friend_token.clone(), friend).await,
        (
            sorted(vec![thing, north_a, own]),
            sorted(vec![thing, north_a])
        )
    );
    assert_eq!(
        reachable(owner_token.clone(), owner).await,
        (sorted(vec![thing, north_a, north_b]), vec![])
    );
    assert_eq!(
        h.things()
            .list_things(req(
                &friend_token,
                pb::ListThingsRequest {
                    scope: Some(pb::list_things_request::Scope::Reachable(user_id(owner))),
                    labels: vec![],
                    page: None,
                },
            ))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "only one's own reach, or that of a user of one's subtree"
    );

    // The grantee sees the thing but cannot change it.
    assert!(
        h.things()
            .get_thing(req(
                &friend_token,
                pb::GetThingRequest {
                    id: Some(thing_id(thing))
                }
            ))
            .await
            .is_ok()
    );
    assert_status(
        h.things()
            .delete_thing(req(
                &friend_token,
                pb::DeleteThingRequest {
                    id: Some(thing_id(thing)),
                },
            ))
            .await,
        Code::PermissionDenied,
        "shared with you",
    );
    // Nor the channel.
    assert_status(
        h.channels()
            .get_channel(req(
                &friend_token,
                pb::GetChannelRequest {
                    id: channel_id.clone(),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );

    // Once the short grant expires, it is as if it never existed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while check(other, pb::ChannelPermission::SendCommands)
        .await
        .allowed
    {
        assert!(Instant::now() < deadline, "grant did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(std::time::SystemTime::now() >= expires_at);
    assert_eq!(
        reachable(other_token.clone(), other).await,
        (vec![], vec![]),
        "an expired grant shares nothing"
    );
    assert_status(
        h.things()
            .get_thing(req(
                &other_token,
                pb::GetThingRequest {
                    id: Some(thing_id(thing)),
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );
    let after = h
        .channels()
        .get_channel(req(
            &owner_token,
            pb::GetChannelRequest {
                id: channel_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.grants.len(), 1, "the expired grant is not listed");

    // Revoking and disconnecting end the sharing.
    h.channels()
        .revoke_grant(req(
            &owner_token,
            pb::RevokeGrantRequest {
                channel: channel_id.clone(),
                grantee: Some(user_id(friend)),
            },
        ))
        .await
        .unwrap();
    assert!(
        !check(friend, pb::ChannelPermission::ReadTelemetry)
            .await
            .allowed
    );
    // A disabled owner's thing is not accessible through a grant either.
    h.channels()
        .grant_access(req(
            &owner_token,
            pb::GrantAccessRequest {
                channel: channel_id.clone(),
                grantee: Some(user_id(friend)),
                permissions: vec![pb::ChannelPermission::ReadTelemetry as i32],
                expires: None,
            },
        ))
        .await
        .unwrap();
    assert!(
        check(friend, pb::ChannelPermission::ReadTelemetry)
            .await
            .allowed
    );
    h.things()
        .disable_thing(req(
            &owner_token,
            pb::DisableThingRequest {
                id: Some(thing_id(thing)),
            },
        ))
        .await
        .unwrap();
    assert!(
        !check(friend, pb::ChannelPermission::ReadTelemetry)
            .await
            .allowed
    );
    let _ = owner;
}

async fn bad_input_gets_an_actionable_status(backend: Backend) {
    let h = Harness::start(backend).await;
    let (root, root_token) = h.root("inputs").await;
    let (a, a_token) = h.child(&root_token, root, "inputs.a").await;
    let bad_id = pb::UserId {
        value: "12345".into(),
    };

    assert_status(
        h.users()
            .get_user(req(
                &root_token,
                pb::GetUserRequest {
                    id: Some(bad_id.clone()),
                },
            ))
            .await,
        Code::InvalidArgument,
        "`id.value` is not a UUID",
    );
    assert_status(
        h.users()
            .get_user(req(&root_token, pb::GetUserRequest { id: None }))
            .await,
        Code::InvalidArgument,
        "`id` is required",
    );
    for (name, needle) in [
        ("", "3 to 64"),
        ("ab", "3 to 64"),
        (&"x".repeat(65)[..], "3 to 64"),
        ("has space", "only letters"),
    ] {
        assert_status(
            h.users()
                .create_user(req(
                    &root_token,
                    pb::CreateUserRequest {
                        username: name.into(),
                        parent: Some(user_id(root)),
                    },
                ))
                .await,
            Code::InvalidArgument,
            needle,
        );
    }
    assert_status(
        h.users()
            .create_user(req(
                &root_token,
                pb::CreateUserRequest {
                    username: "inputs.a".into(),
                    parent: Some(user_id(root)),
                },
            ))
            .await,
        Code::AlreadyExists,
        "taken",
    );
    assert_status(
        h.users()
            .create_user(req(
                &root_token,
                pb::CreateUserRequest {
                    username: "orphan".into(),
                    parent: Some(user_id(Uuid::new_v4())),
                },
            ))
            .await,
        Code::NotFound,
        "parent user",
    );
    assert_status(
        h.users()
            .move_user(req(
                &root_token,
                pb::MoveUserRequest {
                    id: Some(user_id(root)),
                    new_parent: Some(user_id(a)),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "yourself",
    );
    assert_status(
        h.users()
            .list_users(req(
                &root_token,
                pb::ListUsersRequest {
                    root: None,
                    children_only: false,
                    page: Some(pb::PageRequest {
                        page_size: 1_000_000,
                        page_token: String::new(),
                    }),
                },
            ))
            .await,
        Code::InvalidArgument,
        "maximum of 1000",
    );
    assert_status(
        h.users()
            .list_users(req(
                &root_token,
                pb::ListUsersRequest {
                    root: None,
                    children_only: false,
                    page: Some(pb::PageRequest {
                        page_size: 10,
                        page_token: "garbage".into(),
                    }),
                },
            ))
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    for (name, needle) in [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        (&"n".repeat(129)[..], "at most 128"),
        ("tab\there", "control"),
    ] {
        assert_status(
            h.things()
                .create_thing(req(
                    &a_token,
                    pb::CreateThingRequest {
                        name: name.into(),
                        owner: None,
                        labels: Default::default(),
                    },
                ))
                .await,
            Code::InvalidArgument,
            needle,
        );
    }
    let too_many: std::collections::HashMap<String, String> = (0..33)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    assert_status(
        h.things()
            .create_thing(req(
                &a_token,
                pb::CreateThingRequest {
                    name: "labels".into(),
                    owner: None,
                    labels: too_many,
                },
            ))
            .await,
        Code::InvalidArgument,
        "at most 32",
    );
    assert_status(
        h.things()
            .create_thing(req(
                &a_token,
                pb::CreateThingRequest {
                    name: "labels".into(),
                    owner: None,
                    labels: [("bad key!".to_string(), "v".to_string())].into(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "label key",
    );
    h.thing(&a_token, "dup", &[]).await;
    assert_status(
        h.things()
            .create_thing(req(
                &a_token,
                pb::CreateThingRequest {
                    name: "dup".into(),
                    owner: None,
                    labels: Default::default(),
                },
            ))
            .await,
        Code::AlreadyExists,
        "already has a thing named",
    );
    assert_status(
        h.things()
            .update_thing(req(
                &a_token,
                pb::UpdateThingRequest {
                    id: Some(thing_id(Uuid::new_v4())),
                    name: None,
                    labels: Default::default(),
                    replace_labels: false,
                },
            ))
            .await,
        Code::InvalidArgument,
        "nothing to update",
    );
    // Admins must say whose objects they mean.
    assert_status(
        h.things()
            .create_thing(req(
                &h.admin,
                pb::CreateThingRequest {
                    name: "x".into(),
                    owner: None,
                    labels: Default::default(),
                },
            ))
            .await,
        Code::InvalidArgument,
        "`owner` is required",
    );
    let channel = h
        .channels()
        .create_channel(req(
            &a_token,
            pb::CreateChannelRequest {
                name: "c".into(),
                owner: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_status(
        h.channels()
            .grant_access(req(
                &a_token,
                pb::GrantAccessRequest {
                    channel: channel.id.clone(),
                    grantee: Some(user_id(root)),
                    permissions: vec![],
                    expires: None,
                },
            ))
            .await,
        Code::InvalidArgument,
        "at least one",
    );
    assert_status(
        h.channels()
            .grant_access(req(
                &a_token,
                pb::GrantAccessRequest {
                    channel: channel.id.clone(),
                    grantee: Some(user_id(root)),
                    permissions: vec![7],
                    expires: None,
                },
            ))
            .await,
        Code::InvalidArgument,
        "READ_TELEMETRY",
    );
    assert_status(
        h.channels()
            .grant_access(req(
                &a_token,
                pb::GrantAccessRequest {
                    channel: channel.id.clone(),
                    grantee: Some(user_id(root)),
                    permissions: vec![1],
                    expires: Some(prost_types::Timestamp {
                        seconds: 1,
                        nanos: 0,
                    }),
                },
            ))
            .await,
        Code::InvalidArgument,
        "in the past",
    );
    assert_status(
        h.access()
            .get_effective_state(req(
                &h.admin,
                pb::GetEffectiveStateRequest { subject: None },
            ))
            .await,
        Code::InvalidArgument,
        "`subject` is required",
    );
    // Nothing above broke what was already there.
    assert_eq!(h.user(a).await.username, "inputs.a");
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
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("event within 10 s")
        .expect("stream open")
        .expect("event");
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
    let next = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .expect("event within 10 s")
        .expect("stream open")
        .expect("event");
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
