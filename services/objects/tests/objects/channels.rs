//! Channel grants share things until they expire.

use super::*;

sipmba_testkit::on_both_databases!(channel_grants_share_things_until_they_expire,);

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
