//! Bad input gets a status that says what to change.

use super::*;

sipmba_testkit::on_both_databases!(bad_input_gets_an_actionable_status,);

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
