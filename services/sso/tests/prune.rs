#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

//! Pruning sso's tables on both databases, time moved by hand: authorization codes go at their
//! expiry; issued-token records, revocations and refresh tokens only once their expiry and any
//! verifier's leeway are over.

use sea_orm::{EntityTrait, PaginatorTrait, Set};
use sipmba_runtime::{clock::Clock, prune::Pruner};
use sipmba_sso::entity::{authorization_codes, issued, refresh_tokens, revocations};
use sipmba_testkit::{Backend, TestDb};
use uuid::Uuid;

const GRACE_MS: i64 = sipmba_auth::GRACE_SECS * 1000;

async fn rows_go_once_they_can_no_longer_matter(backend: Backend) {
    let db = TestDb::new(backend).await.unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    sipmba_objects::migrate(&conn).await.unwrap();
    sipmba_sso::migrate(&conn).await.unwrap();
    let expiry = 1_000_000_000;
    let user = Uuid::new_v4();
    for (i, expires_ms) in [expiry, expiry + 10 * GRACE_MS].into_iter().enumerate() {
        authorization_codes::Entity::insert(authorization_codes::ActiveModel {
            code_hash: Set(format!("code-{i}")),
            client_id: Set("sipmba-console".into()),
            redirect_uri: Set("http://127.0.0.1/".into()),
            user_id: Set(user),
            scopes: Set(String::new()),
            code_challenge: Set("c".into()),
            family: Set(Uuid::new_v4()),
            created_ms: Set(expires_ms - 60_000),
            expires_ms: Set(expires_ms),
            used_ms: Set(None),
        })
        .exec_without_returning(&conn)
        .await
        .unwrap();
        issued::Entity::insert(issued::ActiveModel {
            jti: Set(Uuid::new_v4()),
            subject: Set(user),
            family: Set(None),
            expires_ms: Set(expires_ms),
        })
        .exec_without_returning(&conn)
        .await
        .unwrap();
        revocations::Entity::insert(revocations::ActiveModel {
            jti: Set(Some(format!("jti-{i}"))),
            subject: Set(None),
            not_before_ms: Set(None),
            kind: Set(0),
            expires_ms: Set(expires_ms),
            ..Default::default()
        })
        .exec_without_returning(&conn)
        .await
        .unwrap();
        refresh_tokens::Entity::insert(refresh_tokens::ActiveModel {
            id: Set(Uuid::new_v4()),
            family: Set(Uuid::new_v4()),
            user_id: Set(user),
            token_hash: Set(format!("hash-{i}")),
            scopes: Set(String::new()),
            created_ms: Set(expires_ms - 60_000),
            expires_ms: Set(expires_ms),
            used_ms: Set(None),
            revoked: Set(false),
        })
        .exec_without_returning(&conn)
        .await
        .unwrap();
    }
    let clock = Clock::manual(expiry + 1);
    let pruner = Pruner::new(conn.clone(), sipmba_sso::prune_rules()).with_clock(clock.clone());
    // Past the first expiry, within the leeway: only the code goes.
    assert_eq!(
        pruner.run_once().await.unwrap(),
        vec![
            ("sso_authorization_codes", 1),
            ("sso_issued", 0),
            ("sso_revocations", 0),
            ("sso_refresh_tokens", 0),
        ]
    );
    // Past the leeway: the rest of the first go, the second stay.
    clock.set(expiry + GRACE_MS + 1);
    assert_eq!(
        pruner.run_once().await.unwrap(),
        vec![
            ("sso_authorization_codes", 0),
            ("sso_issued", 1),
            ("sso_revocations", 1),
            ("sso_refresh_tokens", 1),
        ]
    );
    assert_eq!(issued::Entity::find().count(&conn).await.unwrap(), 1);
    assert_eq!(revocations::Entity::find().count(&conn).await.unwrap(), 1);
    assert_eq!(
        refresh_tokens::Entity::find().count(&conn).await.unwrap(),
        1
    );
    assert_eq!(
        authorization_codes::Entity::find()
            .count(&conn)
            .await
            .unwrap(),
        1
    );
}

sipmba_testkit::on_both_databases!(rows_go_once_they_can_no_longer_matter);
