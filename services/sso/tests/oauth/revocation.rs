//! Revocation: a disabled subtree's tokens end within a second, here and, through the log, in other
//! services.

use super::*;

sipmba_testkit::on_both_databases!(
    disabling_a_parent_revokes_its_subtree_and_their_things_within_a_second,
    revocations_reach_other_services_through_the_log_within_a_second,
    an_sso_behind_the_pruned_change_feed_replays_what_is_kept,
);

async fn disabling_a_parent_revokes_its_subtree_and_their_things_within_a_second(backend: Backend) {
    let p = start(backend).await;
    let root = p
        .sso
        .register("org-root", "org root password")
        .await
        .unwrap();
    let root_login = p.login("org-root", "org root password").await.unwrap();
    let root_token = root_login.access_token().secret().clone();
    let mut users = pb::user_service_client::UserServiceClient::new(p.channel.clone());
    let team = users
        .create_user(with_token(
            &root_token,
            pb::CreateUserRequest {
                username: "org-team".into(),
                parent: Some(pb::UserId {
                    value: root.to_string(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let team_id = Uuid::parse_str(&team.id.unwrap().value).unwrap();
    let member = users
        .create_user(with_token(
            &root_token,
            pb::CreateUserRequest {
                username: "org-member".into(),
                parent: Some(pb::UserId {
                    value: team_id.to_string(),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let member_id = Uuid::parse_str(&member.id.unwrap().value).unwrap();
    p.sso
        .set_password(member_id, "org-member", "member password")
        .await
        .unwrap();
    let member_login = p.login("org-member", "member password").await.unwrap();
    let member_token = member_login.access_token().secret().clone();
    let thing = pb::thing_service_client::ThingServiceClient::new(p.channel.clone())
        .create_thing(with_token(
            &member_token,
            pb::CreateThingRequest {
                name: "member-pi".into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let thing_id = Uuid::parse_str(&thing.id.unwrap().value).unwrap();
    let member_principal = p.sso.verifier().verify(&member_token).await.unwrap();
    let (client_id, secret) = p
        .sso
        .issue_thing_secret(&member_principal, thing_id)
        .await
        .unwrap();
    let thing_token = p
        .client(&client_id, Some(&secret))
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .unwrap();
    let thing_token = thing_token.access_token().secret().clone();

    // The root disables the team: the member (two levels down) and the member's thing lose
    // their live tokens.
    users
        .disable_user(with_token(
            &root_token,
            pb::DisableUserRequest {
                id: Some(pb::UserId {
                    value: team_id.to_string(),
                }),
            },
        ))
        .await
        .unwrap();
    let disabled_at = std::time::Instant::now();
    let verifier = p.sso.verifier();
    loop {
        let member = verifier.verify(&member_token).await;
        let thing = verifier.verify(&thing_token).await;
        if matches!(member, Err(AuthError::Revoked)) && matches!(thing, Err(AuthError::Revoked)) {
            break;
        }
        assert!(
            disabled_at.elapsed() < Duration::from_secs(1),
            "not revoked within a second: {member:?} {thing:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The refresh token is dead too, and the root is untouched.
    let refresh = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(member_login.refresh_token().unwrap())
        .request_async(&http)
        .await
        .map_err(oauth_error)
        .unwrap_err();
    assert_eq!(refresh, BasicErrorResponseType::InvalidGrant);
    assert!(verifier.verify(&root_token).await.is_ok());
}

async fn revocations_reach_other_services_through_the_log_within_a_second(backend: Backend) {
    use sipmba_queue::{
        Queue,
        revocations::{RevocationPublisher, follow},
    };
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    let p = start(backend).await;
    let broker = sipmba_testkit::TestBroker::start().await.unwrap();
    let queue = Queue::connect(&broker.brokers(), &broker.prefix)
        .await
        .unwrap();
    p.sso.publish_revocations(
        RevocationPublisher::new(queue.clone()).await.unwrap(),
        p.shutdown.clone(),
    );

    // Another service: its own revocation list, fed by the topic, and the JWKS over HTTP.
    let service = |queue: Queue| {
        let revocations = Revocations::default();
        let ready = Arc::new(AtomicBool::new(false));
        tokio::spawn(follow(
            queue,
            revocations.clone(),
            ready.clone(),
            p.shutdown.clone().wait(),
        ));
        let config = VerifierConfig::new(
            JwksSource::Url(format!("{}/.well-known/jwks.json", p.base)),
            &p.base,
            AUDIENCE,
        );
        (Verifier::new(config, revocations).unwrap(), ready)
    };
    let (other, ready) = service(queue.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ready.load(Ordering::Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    p.sso
        .register("log-user", "log user password")
        .await
        .unwrap();
    let first = p.login("log-user", "log user password").await.unwrap();
    let second = p.login("log-user", "log user password").await.unwrap();
    let access = first.access_token().secret().clone();
    assert!(other.verify(&access).await.is_ok());

    let refused_within_a_second = |verifier: Verifier, token: String| async move {
        let started = std::time::Instant::now();
        loop {
            match verifier.verify(&token).await {
                Err(AuthError::Revoked) => return started.elapsed(),
                other => assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "still accepted after a second: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // One token (RFC 7009 over HTTP).
    reqwest::Client::new()
        .post(format!("{}/oauth2/revoke", p.base))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    refused_within_a_second(other.clone(), access.clone()).await;
    assert!(
        other.verify(second.access_token().secret()).await.is_ok(),
        "only that token"
    );

    // A whole subject: disabling the user in Objects.
    let admin = p.admin_token().await;
    let user = p
        .sso
        .verifier()
        .verify(second.access_token().secret())
        .await
        .unwrap()
        .subject;
    pb::user_service_client::UserServiceClient::new(p.channel.clone())
        .disable_user(with_token(
            &admin,
            pb::DisableUserRequest {
                id: Some(pb::UserId {
                    value: user.to_string(),
                }),
            },
        ))
        .await
        .unwrap();
    refused_within_a_second(other.clone(), second.access_token().secret().clone()).await;

    // A service that starts later learns every live revocation before it is ready.
    let (late, late_ready) = service(queue);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !late_ready.load(Ordering::Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the late follower never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        late.verify(&access).await,
        Err(AuthError::Revoked)
    ));
    assert!(matches!(
        late.verify(second.access_token().secret()).await,
        Err(AuthError::Revoked)
    ));
}

/// An sso whose position in Objects' change feed was pruned (it was down longer than
/// `objects.event_retention_secs`) is told so, drops its position and replays the events kept:
/// the disabled user of the kept event has its tokens revoked by that sso too.
async fn an_sso_behind_the_pruned_change_feed_replays_what_is_kept(backend: Backend) {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};
    use sipmba_objects::entity::object_events;
    use sipmba_sso::entity::{cursors, revocations};

    let p = start(backend).await;
    let conn = sipmba_runtime::db::connect(&p._db.url, 5).await.unwrap();
    let now = sipmba_runtime::ids::now_ms();
    let hour = 3_600_000;
    let (old_user, disabled) = (Uuid::new_v4(), Uuid::new_v4());
    let mut sequences = Vec::new();
    for (user, created_ms) in [
        (old_user, now - 3 * hour),
        (old_user, now - 3 * hour),
        (disabled, now),
    ] {
        let event = object_events::ActiveModel {
            kind: Set(pb::ObjectEventKind::UserDisabled as i32),
            subject: Set(user.to_string()),
            users: Set(format!("[\"{user}\"]")),
            things: Set("[]".into()),
            actor: Set("service:test".into()),
            created_ms: Set(created_ms),
            ..Default::default()
        };
        sequences.push(
            object_events::Entity::insert(event)
                .exec(&conn)
                .await
                .unwrap()
                .last_insert_id,
        );
    }
    let newest = sequences[2];
    let cursor = || async {
        cursors::Entity::find_by_id("objects".to_owned())
            .one(&conn)
            .await
            .unwrap()
            .map(|c| c.position)
    };
    let revoked = || async {
        revocations::Entity::find()
            .filter(revocations::Column::Subject.eq(disabled))
            .count(&conn)
            .await
            .unwrap()
    };
    // The running sso reads all three (Objects' signal wakes it at once for its own commits;
    // these rows were written behind its back, so its half-second poll finds them).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cursor().await != Some(newest) {
        assert!(
            std::time::Instant::now() < deadline,
            "the running sso never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(revoked().await, 1);

    // An hour's retention prunes the two old events; the newest stays.
    let pruner = sipmba_runtime::prune::Pruner::new(
        conn.clone(),
        sipmba_objects::prune_rules(Duration::from_secs(3600)),
    );
    assert_eq!(pruner.run_once().await.unwrap(), vec![("object_events", 2)]);

    // A second sso on the same database, its position set back to the first event (as after a
    // long outage): Objects refuses the position, and the sso starts again from the oldest kept.
    cursors::Entity::delete_by_id("objects".to_owned())
        .exec(&conn)
        .await
        .unwrap();
    cursors::Entity::insert(cursors::ActiveModel {
        feed: Set("objects".into()),
        position: Set(sequences[0]),
    })
    .exec_without_returning(&conn)
    .await
    .unwrap();
    let mut config = SsoConfig::new(&p.base, AUDIENCE, &p.base);
    config.password_cost = sipmba_sso::secrets::PasswordCost {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };
    let later = Revocations::default();
    let second = Sso::start(conn.clone(), config, later.clone())
        .await
        .unwrap();
    second.follow_objects(p.shutdown.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(revoked().await == 2 && cursor().await == Some(newest)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the second sso did not replay the kept event: cursor {:?}, revocations {}",
            cursor().await,
            revoked().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(later.is_revoked("any", disabled, now / 1000 - 1));
}

/// On PostgreSQL, a revocation waits for one recorded before it to commit: the publisher reads
/// the outbox past its cursor, and a later row committed first would make it skip the earlier
/// one for ever (a revoked token still accepted by every other service).
#[tokio::test]
async fn postgres_revocations_enter_the_outbox_in_the_order_of_their_numbers() {
    use sea_orm::{ActiveValue::Set, EntityTrait, QueryOrder};
    use sipmba_sso::entity::revocations;
    let p = start(Backend::Postgres).await;
    let conn = sipmba_runtime::db::connect(&p._db.url, 2).await.unwrap();
    // A writer that has its number and has not committed yet.
    let first = sipmba_runtime::db::begin_locked(&conn, sipmba_sso::OUTBOX_LOCK)
        .await
        .unwrap();
    revocations::Entity::insert(revocations::ActiveModel {
        jti: Set(Some("first".into())),
        subject: Set(None),
        not_before_ms: Set(None),
        kind: Set(0),
        expires_ms: Set(i64::MAX / 2),
        ..Default::default()
    })
    .exec_without_returning(&first)
    .await
    .unwrap();
    let sso = p.sso.clone();
    let subject = Uuid::new_v4();
    let second = tokio::spawn(async move {
        sso.revoke_subject(subject, None, sipmba_runtime::ids::now_ms())
            .await
    });
    // The second either waits for the lock or (without it) has committed.
    sipmba_testkit::waiting_for_lock_or(&conn, sipmba_sso::OUTBOX_LOCK, || second.is_finished())
        .await;
    let seen = || async {
        revocations::Entity::find()
            .order_by_asc(revocations::Column::Seq)
            .all(&conn)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.seq, r.jti.is_some()))
            .collect::<Vec<_>>()
    };
    let before = seen().await;
    assert!(
        before.is_empty(),
        "the outbox showed {before:?} while an earlier revocation was still to commit"
    );
    first.commit().await.unwrap();
    second.await.unwrap().unwrap();
    let after = seen().await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after[0].0 < after[1].0 && after[0].1 && !after[1].1,
        "{after:?}"
    );
}
